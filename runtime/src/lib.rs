//! The node runtime's task model: ECS task definitions as users register them, validated, and
//! the task lifecycle as one explicit state machine. skiffd (issue 3) builds on these; they are
//! pure logic, unit-tested without a kernel.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cgroups;
pub mod console;
pub mod lifecycle;
pub mod logs;
pub mod orchestration;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod stats;
pub mod taskdef;

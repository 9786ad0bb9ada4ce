//! skiffd, the node runtime: ECS task definitions as users register them, validated; the task
//! lifecycle as one explicit state machine; OCI specs, cgroups, seccomp, logs and the per-container
//! shim; the daemon that supervises tasks (`daemon`, `runner`, `provision`) behind a local API
//! (`api`, `client`); the ECS task metadata endpoint that tasks query (`metadata`); and the
//! operator's client of apid (`control`, signing with `sigv4`). The binaries (`skiffd`, `skiff`,
//! `skiff-shim`) are thin adapters.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod api;
pub mod cgroups;
pub mod client;
pub mod config;
pub mod console;
pub mod control;
pub mod daemon;
pub mod ipcns;
pub mod lifecycle;
pub mod logs;
pub mod metadata;
pub mod orchestration;
pub mod process;
pub mod protocol;
pub mod provision;
pub mod record;
pub mod runner;
pub mod seccomp;
pub mod shim;
pub mod sigv4;
pub mod spec;
pub mod stats;
mod sys;
pub mod taskdef;
pub mod tasknet;
pub mod vm;
pub mod volumes;

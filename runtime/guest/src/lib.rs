//! Skiff's microVM guest: the agent that is a task VM's init ([`agent`]) and sets its network
//! up ([`net`]), and the wire protocol it speaks with the host's VM shim ([`proto`]), which
//! skiffd's side uses too.
//!
//! A crate of its own, with few dependencies, because the agent is copied into every VM's
//! initramfs: it must stay small and must not drag the node daemon's stack into the guest.
#![deny(unsafe_code)]

pub mod agent;
pub mod mounts;
pub mod net;
pub mod proto;
mod sys;

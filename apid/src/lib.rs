//! apid, Skiff's control plane. Its operator API is the Amazon ECS API, on the wire (AWS JSON
//! 1.1, SigV4 with access keys apid issues), so the `aws ecs` CLI, boto3 and the SDKs work
//! against it with `--endpoint-url`. State lives in an embedded SQLite database.
//!
//! Layers: [`protocol`] (HTTP: authentication, the target header, error bodies) over [`ecs`]
//! (the actions, typed requests and responses) and [`control`] (Skiff's own operator actions:
//! activations, access keys, node certificates) over the store ([`store`], [`keys`]). Nodes join
//! through [`identity`]: activations, registration with a CSR, and the mTLS node channel. The
//! binary (`skiff-apid serve`, `skiff-apid keys ...`, `skiff-apid activations ...`) is a thin adapter; `skiff
//! control` is the remote client of the same admin actions.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod control;
pub mod ecs;
pub mod error;
pub mod identity;
pub mod keys;
pub mod nodes;
pub mod protocol;
pub mod scheduler;
pub mod sigv4;
pub mod store;
pub mod tls;

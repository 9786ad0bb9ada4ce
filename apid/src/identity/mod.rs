//! Node identity: the cluster CA ([`ca`]), activations ([`activations`]), registration
//! ([`register`]) and the node channel's mTLS listener ([`channel`]).
//!
//! A node joins as on ECS Anywhere: the operator creates an activation for a cluster, the node
//! presents it with a CSR for a key it made and keeps, and gets back a client certificate naming
//! its container instance. From then on it dials the node channel with that certificate;
//! deregistering the instance revokes it.

pub mod activations;
pub mod ca;
pub mod channel;
pub mod register;

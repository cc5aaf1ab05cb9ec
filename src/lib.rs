//! trustgate: admit only container images from trusted registries.
//!
//! The folders are the layers. `engine` is pure (no I/O, no tokio, hyper or kube) and `api` is
//! what users write; `admission` and `cluster` are thin I/O shells around them, and `cli`
//! wires everything into the `trustgate` binary. No module imports from a layer above it.

pub mod admission;
pub mod api;
pub mod cli;
pub mod cluster;
pub mod engine;

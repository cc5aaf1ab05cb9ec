//! trustgate: admit only container images from trusted registries.
//!
//! The pure core (`reference`, `pattern`, `policy`, `workload`, `review`) has no I/O; the
//! server, the Kubernetes watchers and the CLI are thin shells around it.

pub mod check;
pub mod cli;
pub mod manifest;
pub mod pattern;
pub mod policy;
pub mod reference;
pub mod state;
pub mod workload;

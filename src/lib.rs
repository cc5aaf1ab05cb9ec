//! trustgate: admit only container images from trusted registries.
//!
//! The pure core (`reference`, `pattern`, `policy`, `workload`, `review`) has no I/O; the
//! server, the Kubernetes watchers and the CLI are thin shells around it.

pub mod admin;
pub mod audit;
pub mod check;
pub mod cli;
pub mod index;
pub mod lease;
pub mod manifest;
pub mod metrics;
pub mod pattern;
pub mod policy;
pub mod reference;
pub mod review;
pub mod serve;
pub mod server;
pub mod source;
pub mod state;
pub mod status;
pub mod tls;
pub mod watch;
pub mod workload;

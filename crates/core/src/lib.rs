//! trustgate's pure core: what users write (the TrustedRegistryPolicy CRD types, `api`) and
//! the engine that decides (`reference`, `pattern`, `selector`, `workload`, then `engine`).
//!
//! PURE: no tokio, hyper, kube client, file or network I/O (`.ci/layers.py` checks the
//! dependency tree). Modules import only those listed before them here.

pub mod api;
pub mod engine;
pub mod pattern;
pub mod reference;
pub mod selector;
pub mod workload;

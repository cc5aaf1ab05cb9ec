//! trustgate: admit only container images from trusted registries.
//!
//! This package is the `trustgate` binary and its command line (`cli`), wired from the
//! workspace's crates (README "Code map"): `trustgate-core` (pure: CRD types and the engine),
//! `trustgate-manifest` (reading manifests), `trustgate-runtime` (shared process plumbing),
//! `trustgate-admission` (the HTTPS server) and `trustgate-cluster` (kube-rs watchers, status,
//! Lease and audit).

pub mod cli;

//! Process plumbing that both the admission server and the cluster runtime need, so that
//! neither imports the other: the poll loop that picks up changed files (TLS credentials,
//! policy files), the metrics registry and the batching log writer. Imports no other trustgate
//! crate.

pub mod log_writer;
pub mod metrics;
pub mod poll;

//! Where policies come from and what the leader writes back: kube-rs watchers feeding a pure
//! `index`, the file source, policy status, the Lease and the audit. Imports `engine`, `api`,
//! and the process plumbing of `admission` (`metrics`, `poll`); never the admission server.

pub mod audit;
pub mod auditor;
pub mod election;
pub mod file_source;
pub mod index;
pub mod lease;
pub mod pager;
pub mod policy_report;
pub mod status;
pub mod status_writer;
pub mod watch;

/// How trustgate names itself to the API server: the field manager of every write, the
/// `app.kubernetes.io/managed-by` value and the result `source` of its PolicyReports.
pub const MANAGER: &str = "trustgate";

#[cfg(test)]
mod mock_api;

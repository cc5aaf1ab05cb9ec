//! PURE: image references, registry patterns, label selectors, compiled policies, workloads
//! and the Decision they produce. Imports `api` types only; no tokio, hyper, kube client or I/O.

pub mod decision;
pub mod pattern;
pub mod policy;
pub mod policy_set;
pub mod reference;
pub mod selector;
pub mod snapshot;
pub mod workload;

pub use decision::{Decision, Subject, Verdict, Violation, ViolationKind};
pub use policy::{CompiledPolicy, PolicyError};
pub use policy_set::PolicySet;
pub use selector::{NAMESPACE_NAME_LABEL, Namespace};
pub use snapshot::{NamespaceLabels, Snapshot, Store};

//! PURE: compiled policies, the policy set and its snapshot, and the Decision they produce for
//! a workload. Imports `api`, `reference`, `pattern`, `selector` and `workload`.

pub mod decision;
pub mod policy;
pub mod policy_set;
pub mod snapshot;

pub use crate::selector::{NAMESPACE_NAME_LABEL, Namespace};
pub use decision::{Decision, Inheritance, Subject, Verdict, Violation, ViolationKind};
pub use policy::{CompiledPolicy, PolicyError};
pub use policy_set::PolicySet;
pub use snapshot::{NamespaceLabels, Snapshot, Store};

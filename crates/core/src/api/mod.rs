//! What users write and read back: the TrustedRegistryPolicy CRD types, their status and the
//! generated CRD. Imports `pattern` (to bound pattern lengths) and nothing of the engine.

pub mod crd;
mod policy;
mod status;

pub use crd::{crd, crd_yaml};
pub use policy::{
    API_VERSION, Exception, ExistingImages, GROUP, Mode, RegistryPattern, RegistryRule, RequiredPullPolicy, TagRules,
    TrustedRegistryPolicy, TrustedRegistryPolicySpec, UnqualifiedImages, VERSION,
};
pub use status::{AuditSample, AuditStatus, TrustedRegistryPolicyStatus};

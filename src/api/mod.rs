//! What users write and read back: the TrustedRegistryPolicy CRD types, their status, the
//! generated CRD, and the reading of manifests (YAML/JSON documents). Imports no runtime.

pub mod block_yaml;
pub mod crd;
pub mod manifest;
mod policy;
mod status;
pub mod stream;

pub use crd::{crd, crd_yaml};
pub use policy::{
    API_VERSION, Exception, ExistingImages, GROUP, Mode, RegistryPattern, RegistryRule, RequiredPullPolicy, TagRules,
    TrustedRegistryPolicy, TrustedRegistryPolicySpec, UnqualifiedImages, VERSION,
};
pub use status::{AuditSample, AuditStatus, TrustedRegistryPolicyStatus};

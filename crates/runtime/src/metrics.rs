//! The metrics registry every subsystem registers its families into, under its own prefix
//! (`trustgate_admission_*`, `trustgate_policy_source_*`, `trustgate_watch_*`, ...), and its
//! OpenMetrics text encoding for `/metrics`.

use prometheus_client::registry::Registry;

/// The root registry every subsystem registers into.
pub fn registry() -> Registry {
    Registry::with_prefix("trustgate")
}

/// The registry as OpenMetrics text.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

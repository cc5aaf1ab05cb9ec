//! The committed CRD must be exactly what the Rust types generate (`just crds` regenerates it).

#[test]
fn committed_crd_matches_the_rust_types() {
    let generated = trustgate_core::api::crd_yaml();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/trustedregistrypolicies.trustgate.dev.yaml");
    let committed = std::fs::read_to_string(path).expect("crds/trustedregistrypolicies.trustgate.dev.yaml exists");
    assert!(
        committed.trim_end() == generated.trim_end(),
        "crds/ is stale: run `just crds` (or `cargo run -q -- crd > {path}`)"
    );
}

#[test]
fn crd_round_trips_through_the_api_types() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let generated = trustgate_core::api::crd_yaml();
    let crd: CustomResourceDefinition = serde_saphyr::from_str(generated.split_once("---\n").unwrap().1).unwrap();
    assert_eq!(crd.spec.names.short_names.as_deref(), Some(&["trp".to_owned()][..]));
    assert_eq!(crd.spec.scope, "Cluster");
    let version = &crd.spec.versions[0];
    assert!(version.subresources.as_ref().is_some_and(|s| s.status.is_some()));
    let columns: Vec<&str> = version.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
    assert_eq!(columns, ["Mode", "Registries", "Violations", "Ready", "Age"]);
}

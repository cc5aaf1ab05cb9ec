//! Reading Kubernetes manifests as `kubectl apply -f` would: files and directories, YAML
//! (multi-document, Helm output) and JSON, `List` objects, with errors that name the file and
//! line. Imports `trustgate-core`; no async runtime (it reads on every core with threads).

pub mod block_yaml;
pub mod manifest;
pub mod stream;

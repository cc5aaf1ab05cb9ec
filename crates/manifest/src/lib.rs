//! Reading Kubernetes manifests as `kubectl apply -f` would: files and directories, YAML
//! (multi-document, Helm output) and JSON, `List` objects, with errors that name the file and
//! line. Imports `trustgate-core`; no async runtime (it reads on every core with threads).
//!
//! `manifest` walks paths and parses documents; `inputs` reads the manifests of a run in bounded
//! memory, a window at a time (`window`); `workloads` reads each object's pod spec. The
//! document cutter (`stream`), the windows and the block-YAML shortcut (`block_yaml`) are
//! internal: the shortcut is only reachable through `workloads`, behind its `List` and
//! `Namespace` guard.

mod block_yaml;
pub mod inputs;
pub mod manifest;
mod stream;
mod window;
pub mod workloads;

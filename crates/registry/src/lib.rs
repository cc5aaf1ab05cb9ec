//! The layer that will talk to OCI registries: the registry client, credentials, signature and
//! bundle fetching, verification and the verdict cache (SPEC 3a; the signed-images issue).
//!
//! It sits above `trustgate-core`: the engine returns the signature obligations it cannot
//! settle offline, this crate settles them, and a pure function of the core folds the verdicts
//! into the decision. The admission server and the CLI will depend on it; nothing below them
//! may. It holds no code until that issue lands.

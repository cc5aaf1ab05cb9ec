//! The admission shell: `review` (PURE: AdmissionReview/ImageReview in, response out), the HTTPS
//! server and its connection table, TLS credentials and their reload, the admin port and
//! metrics. Imports `engine`, `api`.

pub mod admin;
pub mod body_budget;
mod connections;
pub mod inheritance;
pub mod metrics;

pub mod review;
pub mod server;
pub mod tls;

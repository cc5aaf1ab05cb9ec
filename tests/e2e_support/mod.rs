//! The e2e harness, shared by every tests/e2e*.rs file (`mod e2e_support;`): the cluster and
//! what a test makes in it ([`cluster`]), `trustgate serve` processes on 127.0.0.1 ([`serve`]),
//! the webhook under test, local or the chart's, with policies and waits ([`harness`]), and the
//! chart's release and logs ([`chart`]).
//!
//! `TRUSTGATE_E2E_MODE` picks the webhook: `local` (the default) starts one per test on
//! 127.0.0.1, `in-cluster` uses the one the Helm chart installed (`.ci/e2e.sh node`).
// Each test file uses its own part of this module.
#![allow(dead_code)]

pub mod chart;
pub mod cluster;
pub mod harness;
pub mod serve;

use std::time::Duration;

/// Field manager of everything the tests write.
pub const MANAGER: &str = "trustgate-e2e";
/// The label every test namespace carries: `.ci/e2e.sh` deletes what an earlier run left by it.
pub const NAMESPACE_LABEL: (&str, &str) = ("trustgate.dev/e2e", "true");

/// Which webhook the tests send their requests to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Start the webhook on 127.0.0.1 and register it by URL.
    Local,
    /// Use the webhook the Helm chart installed.
    InCluster,
}

/// The mode `TRUSTGATE_E2E_MODE` asks for.
pub fn mode() -> Mode {
    match std::env::var("TRUSTGATE_E2E_MODE").as_deref() {
        Err(_) | Ok("") | Ok("local") => Mode::Local,
        Ok("in-cluster") => Mode::InCluster,
        Ok(other) => panic!("TRUSTGATE_E2E_MODE={other:?}: expected \"local\" (the default) or \"in-cluster\""),
    }
}

/// A suffix that makes the names of one test run unique in a shared cluster.
pub fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{:x}{:05x}", std::process::id() % 0x100, nanos % 0x100000)
}

/// Right answers in a row: in a cluster the Service spreads reviews over replicas that each
/// learn of a policy edit on their own, so one right answer does not mean the next is.
#[derive(Debug, Default)]
pub struct InARow {
    /// When the first of the current run of right answers came back.
    began: Option<Duration>,
    count: usize,
}

impl InARow {
    /// How many right answers in a row a wait needs.
    pub const NEEDED: usize = 10;

    /// Records one answer that came back at `at`; once [`Self::NEEDED`] right ones came in a
    /// row, returns when the first of them came.
    pub fn record(&mut self, right: bool, at: Duration) -> Option<Duration> {
        if !right {
            *self = Self::default();
            return None;
        }
        let began = *self.began.get_or_insert(at);
        self.count += 1;
        (self.count == Self::NEEDED).then_some(began)
    }
}

//! Shared by tests/e2e.rs and tests/e2e_semantics.rs: where the chart under test is, its Pods'
//! logs for failure messages, and the count of right answers in a row that waits use.
// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::process::Command;
use std::time::Duration;

/// Where the chart under test is installed (in-cluster mode): (namespace, release name), from
/// `TRUSTGATE_E2E_RELEASE` (`namespace/name`, default `trustgate-system/trustgate`).
pub fn release() -> (String, String) {
    let value = std::env::var("TRUSTGATE_E2E_RELEASE").unwrap_or_else(|_| "trustgate-system/trustgate".to_owned());
    let (namespace, name) =
        value.split_once('/').unwrap_or_else(|| panic!("TRUSTGATE_E2E_RELEASE={value:?}: expected namespace/name"));
    (namespace.to_owned(), name.to_owned())
}

/// The last lines of the chart's Pods' logs, for a failure message (through kubectl, as the e2e
/// scripts run the tests).
pub fn chart_pod_logs() -> String {
    let (namespace, name) = release();
    let selector = format!("app.kubernetes.io/instance={name}");
    match Command::new("kubectl").args(["logs", "-n", &namespace, "-l", &selector, "--tail=40", "--prefix"]).output() {
        Ok(out) => format!(
            "\nwebhook Pods' logs (kubectl logs -n {namespace} -l {selector} --tail=40):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(error) => format!("\n(no webhook logs: kubectl: {error})"),
    }
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

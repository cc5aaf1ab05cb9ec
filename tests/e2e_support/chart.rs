//! The Helm release under test in in-cluster mode, and its Pods' logs for failure messages.

use std::process::Command;

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

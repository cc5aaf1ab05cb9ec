//! Which CREATEs inherit the admission of the template they were made from (SPEC 3,
//! existingImages): a Pod, ReplicaSet or Job created by a kube-controller-manager identity and
//! owned, through a `controller: true` ownerReference, by a kind trustgate checks whose
//! controller creates exactly that kind. PURE: the request's user, kind and owner references in,
//! an [`Inheritance`] for the engine out.
//!
//! Why no lookup of the owner is needed: only the controller-manager holds these identities (a
//! user needs impersonation rights to act as one), and the owner's pod template was admitted by
//! trustgate when the owner was created or last updated. An ownerReference alone proves nothing
//! (anyone who may create a Pod may write one), so any other requester is checked in full.

use trustgate_core::engine::Inheritance;

/// The identity kube-controller-manager uses when it runs without
/// `--use-service-account-credentials`: every controller acts as it.
const CONTROLLER_MANAGER: &str = "system:kube-controller-manager";
/// The prefix of the controllers' own ServiceAccounts (`--use-service-account-credentials`, the
/// default of kubeadm and most distributions).
const CONTROLLER_ACCOUNT: &str = "system:serviceaccount:kube-system:";

/// A controller's owner kind and the kind it creates from that owner's template, with the API
/// groups both are served in: `(owner group, owner kind, created group, created kind)`.
const CREATES: [(&str, &str, &str, &str); 7] = [
    ("apps", "Deployment", "apps", "ReplicaSet"),
    ("apps", "ReplicaSet", "", "Pod"),
    ("", "ReplicationController", "", "Pod"),
    ("apps", "StatefulSet", "", "Pod"),
    ("apps", "DaemonSet", "", "Pod"),
    ("batch", "Job", "", "Pod"),
    ("batch", "CronJob", "batch", "Job"),
];

/// The built-in controllers' ServiceAccounts, each with the owner kind it creates objects for.
const CONTROLLER_ACCOUNTS: [(&str, &str); 7] = [
    ("deployment-controller", "Deployment"),
    ("replicaset-controller", "ReplicaSet"),
    ("replication-controller", "ReplicationController"),
    ("statefulset-controller", "StatefulSet"),
    ("daemon-set-controller", "DaemonSet"),
    ("job-controller", "Job"),
    ("cronjob-controller", "CronJob"),
];

/// The identities whose CREATEs may inherit (`--controller-identity`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ControllerIdentities {
    /// kube-controller-manager's own identities: `system:kube-controller-manager` for any
    /// controller, and each built-in controller's ServiceAccount for its own owner kind only
    /// (the ReplicaSet controller's account inherits for Pods of ReplicaSets, not of Jobs).
    #[default]
    BuiltIn,
    /// The identities a distribution runs its controllers as, given on the command line: each
    /// may inherit for any owner kind of the table.
    Listed(Vec<String>),
}

impl ControllerIdentities {
    /// The built-in identities when `names` is empty (no flag), else exactly `names`.
    pub fn from_flags(names: Vec<String>) -> Self {
        if names.is_empty() { ControllerIdentities::BuiltIn } else { ControllerIdentities::Listed(names) }
    }

    /// The built-in list, one identity a line (for `--help` and the docs).
    pub fn built_in_names() -> Vec<String> {
        std::iter::once(CONTROLLER_MANAGER.to_owned())
            .chain(CONTROLLER_ACCOUNTS.iter().map(|(account, _)| format!("{CONTROLLER_ACCOUNT}{account}")))
            .collect()
    }

    /// Whether `username` is a controller identity that creates objects owned by `owner_kind`.
    fn creates_for(&self, username: &str, owner_kind: &str) -> bool {
        match self {
            ControllerIdentities::BuiltIn => {
                username == CONTROLLER_MANAGER
                    || username.strip_prefix(CONTROLLER_ACCOUNT).is_some_and(|account| {
                        CONTROLLER_ACCOUNTS.iter().any(|(a, kind)| *a == account && *kind == owner_kind)
                    })
            }
            ControllerIdentities::Listed(names) => names.iter().any(|n| n == username),
        }
    }
}

/// A `controller: true` ownerReference of the object being created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControllerRef<'a> {
    /// `apiVersion`, `group/version` or `version` for the core group.
    pub api_version: &'a str,
    pub kind: &'a str,
    pub name: &'a str,
}

/// The inheritance of a CREATE of `(group, kind)` by `username` whose controller
/// ownerReference is `owner`, if it has one.
pub fn inheritance<'a>(
    identities: &ControllerIdentities,
    username: &'a str,
    group: &str,
    kind: &str,
    owner: Option<ControllerRef<'a>>,
) -> Option<Inheritance<'a>> {
    let owner = owner?;
    let owner_group = owner.api_version.rsplit_once('/').map_or("", |(group, _)| group);
    let known =
        CREATES.iter().any(|(og, ok, cg, ck)| *og == owner_group && *ok == owner.kind && *cg == group && *ck == kind);
    (known && identities.creates_for(username, owner.kind)).then_some(Inheritance {
        controller: username,
        owner_kind: owner.kind,
        owner_name: owner.name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RS_CONTROLLER: &str = "system:serviceaccount:kube-system:replicaset-controller";

    fn owner<'a>(api_version: &'a str, kind: &'a str) -> Option<ControllerRef<'a>> {
        Some(ControllerRef { api_version, kind, name: "owner" })
    }

    #[test]
    fn the_built_in_identities_inherit_for_the_objects_their_controller_creates() {
        let ids = ControllerIdentities::default();
        let cases = [
            // (user, created group, created kind, owner apiVersion, owner kind, inherits)
            (RS_CONTROLLER, "", "Pod", "apps/v1", "ReplicaSet", true),
            (
                "system:serviceaccount:kube-system:deployment-controller",
                "apps",
                "ReplicaSet",
                "apps/v1",
                "Deployment",
                true,
            ),
            ("system:serviceaccount:kube-system:statefulset-controller", "", "Pod", "apps/v1", "StatefulSet", true),
            ("system:serviceaccount:kube-system:daemon-set-controller", "", "Pod", "apps/v1", "DaemonSet", true),
            (
                "system:serviceaccount:kube-system:replication-controller",
                "",
                "Pod",
                "v1",
                "ReplicationController",
                true,
            ),
            ("system:serviceaccount:kube-system:job-controller", "", "Pod", "batch/v1", "Job", true),
            ("system:serviceaccount:kube-system:cronjob-controller", "batch", "Job", "batch/v1", "CronJob", true),
            // Without per-controller accounts, the controller-manager creates them all.
            ("system:kube-controller-manager", "", "Pod", "batch/v1", "Job", true),
            ("system:kube-controller-manager", "apps", "ReplicaSet", "apps/v1", "Deployment", true),
            // A controller's account inherits for its own owner kind only.
            (RS_CONTROLLER, "", "Pod", "batch/v1", "Job", false),
            ("system:serviceaccount:kube-system:job-controller", "apps", "ReplicaSet", "apps/v1", "Deployment", false),
            // Any other requester, whatever the owner says.
            ("alice", "", "Pod", "apps/v1", "ReplicaSet", false),
            ("system:serviceaccount:default:replicaset-controller", "", "Pod", "apps/v1", "ReplicaSet", false),
            ("system:serviceaccount:kube-system:replicaset-controller-evil", "", "Pod", "apps/v1", "ReplicaSet", false),
            ("system:serviceaccount:kube-system:generic-garbage-collector", "", "Pod", "apps/v1", "ReplicaSet", false),
            // Owners trustgate does not check, or a kind the owner's controller never creates.
            ("system:kube-controller-manager", "", "Pod", "example.com/v1", "ReplicaSet", false),
            ("system:kube-controller-manager", "", "Pod", "argoproj.io/v1alpha1", "Rollout", false),
            ("system:kube-controller-manager", "", "Pod", "apps/v1", "Deployment", false),
            ("system:kube-controller-manager", "apps", "Deployment", "apps/v1", "Deployment", false),
            ("system:kube-controller-manager", "batch", "Job", "batch/v1", "Job", false),
            ("system:kube-controller-manager", "", "Pod", "v1", "Pod", false),
        ];
        for (user, group, kind, api_version, owner_kind, inherits) in cases {
            let got = inheritance(&ids, user, group, kind, owner(api_version, owner_kind));
            assert_eq!(got.is_some(), inherits, "{user} creating {group}/{kind} owned by {api_version} {owner_kind}");
            if let Some(got) = got {
                assert_eq!((got.controller, got.owner_kind, got.owner_name), (user, owner_kind, "owner"));
            }
        }
        // No controller ownerReference: checked in full, whoever asks.
        assert!(inheritance(&ids, "system:kube-controller-manager", "", "Pod", None).is_none());
    }

    #[test]
    fn the_flag_replaces_the_list() {
        assert_eq!(ControllerIdentities::from_flags(Vec::new()), ControllerIdentities::BuiltIn);
        let ids = ControllerIdentities::from_flags(vec!["system:k3s-controller".to_owned()]);
        assert!(inheritance(&ids, "system:k3s-controller", "", "Pod", owner("batch/v1", "Job")).is_some());
        assert!(
            inheritance(&ids, "system:k3s-controller", "apps", "ReplicaSet", owner("apps/v1", "Deployment")).is_some()
        );
        // The built-in identities no longer count once replaced.
        assert!(inheritance(&ids, "system:kube-controller-manager", "", "Pod", owner("batch/v1", "Job")).is_none());
        assert!(inheritance(&ids, RS_CONTROLLER, "", "Pod", owner("apps/v1", "ReplicaSet")).is_none());
        // The table still holds: a listed identity cannot make a Deployment own a Pod.
        assert!(inheritance(&ids, "system:k3s-controller", "", "Pod", owner("apps/v1", "Deployment")).is_none());
        assert_eq!(ControllerIdentities::built_in_names().len(), 8);
        assert!(ControllerIdentities::built_in_names().contains(&RS_CONTROLLER.to_owned()));
    }
}

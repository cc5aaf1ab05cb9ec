//! The compiled policies of one snapshot, indexed for the hot path: `evaluate()` returns the
//! [`Decision`] for a workload's containers in a namespace.

use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;

use crate::api::{Mode, TrustedRegistryPolicy};
use crate::engine::decision::{Decision, Inheritance};
use crate::engine::policy::{CompiledPolicy, Image, PolicyError};
use crate::pattern::Pattern;
use crate::reference::{self, Reference};
use crate::selector::Namespace;
use crate::workload::{Container, Workload};

/// Compiled policies, sorted by name: the immutable snapshot admission reads.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    /// Shared with the policy source's own copies: a new snapshot after one policy changed
    /// recompiles that policy only.
    policies: Vec<Arc<CompiledPolicy>>,
    /// Every distinct trusted pattern of the set, once: policies commonly share registries,
    /// and each image is matched against each distinct pattern at most once.
    patterns: Vec<Pattern>,
    /// For each policy, the indexes of its trusted patterns in `patterns`.
    trusted: Vec<Vec<usize>>,
    /// Policies whose selector only names namespaces, by namespace name: with many per-team
    /// policies, a review looks up its namespace instead of testing every selector.
    by_namespace: HashMap<String, Vec<usize>, foldhash::fast::RandomState>,
    /// The other policies, tested one by one.
    scanned: Vec<usize>,
}

impl PolicySet {
    pub fn new(policies: Vec<CompiledPolicy>) -> Self {
        Self::shared(policies.into_iter().map(Arc::new).collect())
    }

    /// Indexes policies compiled earlier (a watcher keeps each one compiled until it changes).
    pub fn shared(mut policies: Vec<Arc<CompiledPolicy>>) -> Self {
        policies.sort_by(|a, b| a.name().cmp(b.name()));
        let mut patterns: Vec<Pattern> = Vec::new();
        // Keyed by borrowed parts: a snapshot is rebuilt on every policy change, and copying
        // every pattern's key was most of that cost.
        let mut index = HashMap::with_capacity_and_hasher(policies.len() * 4, foldhash::fast::RandomState::default());
        let trusted = policies
            .iter()
            .map(|policy| {
                policy
                    .trusted()
                    .iter()
                    .map(|p| {
                        *index.entry(p.key()).or_insert_with(|| {
                            patterns.push(p.clone());
                            patterns.len() - 1
                        })
                    })
                    .collect()
            })
            .collect();
        let mut by_namespace = HashMap::<String, Vec<usize>, _>::with_hasher(foldhash::fast::RandomState::default());
        let mut scanned = Vec::new();
        for (i, policy) in policies.iter().enumerate() {
            match policy.named_namespaces() {
                Some(names) => names.iter().for_each(|n| by_namespace.entry(n.clone()).or_default().push(i)),
                None => scanned.push(i),
            }
        }
        PolicySet { policies, patterns, trusted, by_namespace, scanned }
    }

    /// Indexes of the policies that apply in `namespace`, in policy order.
    fn applicable(&self, namespace: &Namespace<'_>) -> Vec<usize> {
        let mut applicable: Vec<usize> =
            self.scanned.iter().copied().filter(|&i| self.policies[i].applies_to(namespace)).collect();
        if let Some(named) = self.by_namespace.get(namespace.name) {
            // A name listed twice in one selector indexes the policy twice: dedup after sorting.
            applicable.extend(named.iter().copied().filter(|&i| self.policies[i].applies_to(namespace)));
            applicable.sort_unstable();
            applicable.dedup();
        }
        applicable
    }

    /// Compiles every policy; invalid ones are left out and returned as errors.
    pub fn compile<'p>(policies: impl IntoIterator<Item = &'p TrustedRegistryPolicy>) -> (Self, Vec<PolicyError>) {
        let mut compiled = Vec::new();
        let mut errors = Vec::new();
        for policy in policies {
            match CompiledPolicy::compile(policy) {
                Ok(p) => compiled.push(p),
                Err(e) => errors.push(e),
            }
        }
        (PolicySet::new(compiled), errors)
    }

    pub fn policies(&self) -> &[Arc<CompiledPolicy>] {
        &self.policies
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// How many policies run in each mode.
    pub fn count_by_mode(&self, mode: Mode) -> usize {
        self.policies.iter().filter(|p| p.mode() == mode).count()
    }

    /// Evaluates every container against every applicable policy.
    pub fn evaluate(&self, namespace: &Namespace<'_>, containers: &[Container<'_>], now: Timestamp) -> Decision {
        self.evaluate_update(namespace, containers, &[], now)
    }

    /// Evaluates an UPDATE: like [`Self::evaluate`], but an image string that one of `old` (the
    /// old object's containers, every list) already had is admitted with a warning by the
    /// policies whose existingImages is Allow. An unparseable image is never admitted so.
    pub fn evaluate_update(
        &self,
        namespace: &Namespace<'_>,
        containers: &[Container<'_>],
        old: &[Container<'_>],
        now: Timestamp,
    ) -> Decision {
        self.evaluate_admission(namespace, containers, old, None, now)
    }

    /// Evaluates an admission request: [`Self::evaluate_update`], and, for a controller's
    /// CREATE from an admitted template (`inherited`), every violation of a policy whose
    /// existingImages is Allow admitted with a warning. An unparseable image is never admitted
    /// so: the runtime could not pull it anyway.
    pub fn evaluate_admission(
        &self,
        namespace: &Namespace<'_>,
        containers: &[Container<'_>],
        old: &[Container<'_>],
        inherited: Option<&Inheritance<'_>>,
        now: Timestamp,
    ) -> Decision {
        let mut violations = Vec::new();
        let applicable = self.applicable(namespace);
        if applicable.is_empty() {
            return Decision { violations };
        }
        // Per image: 0 = pattern not tried yet, 1 = no match, 2 = match.
        let mut memo = vec![0u8; self.patterns.len()];
        for container in containers {
            let text = container.image.as_deref().unwrap_or("");
            let image = Image { container, text, parsed: Reference::parse(text) };
            let parts = image.parsed.as_ref().ok().map(|r| {
                let (host, port) = reference::split_port(r.domain());
                (host, port, r.path())
            });
            memo.fill(0);
            let existing = parts.is_some() && old.iter().any(|o| o.image.as_deref() == Some(text));
            for &i in &applicable {
                let trusted = parts.is_some_and(|(host, port, path)| {
                    self.trusted[i].iter().any(|&p| match memo[p] {
                        0 => {
                            let hit = self.patterns[p].matches_parts(host, port, path);
                            memo[p] = 1 + u8::from(hit);
                            hit
                        }
                        seen => seen == 2,
                    })
                });
                self.policies[i].check(&image, trusted, existing, inherited, namespace.name, now, &mut violations);
            }
        }
        Decision { violations }
    }

    /// Evaluates a whole workload in its namespace.
    pub fn evaluate_workload(&self, workload: &Workload<'_>, namespace: &Namespace<'_>, now: Timestamp) -> Decision {
        self.evaluate(namespace, &workload.containers, now)
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;

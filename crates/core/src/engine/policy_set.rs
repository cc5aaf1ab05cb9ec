//! The compiled policies of one snapshot, indexed for the hot path: `evaluate()` returns the
//! [`Decision`] for a workload's containers in a namespace.
//!
//! The set is persistent: cloning it is O(1), and [`PolicySet::insert`] or
//! [`PolicySet::remove`] copies only the paths of the maps that one policy's name, patterns
//! and namespaces touch, sharing the rest with earlier clones. A watcher keeps one set, applies
//! each change to it, and publishes a clone as the next snapshot, so one update costs that
//! policy, not the whole set.

use std::sync::Arc;

use imbl::{GenericHashMap, OrdMap, Vector};
use jiff::Timestamp;

use crate::api::{Mode, TrustedRegistryPolicy};
use crate::engine::decision::{Decision, Inheritance};
use crate::engine::policy::{CompiledPolicy, Image, PolicyError};
use crate::pattern::{Pattern, PatternKey};
use crate::reference::{self, Reference};
use crate::selector::Namespace;
use crate::workload::{Container, Workload};

type FastHashMap<K, V> = GenericHashMap<K, V, foldhash::fast::RandomState, imbl::shared_ptr::DefaultSharedPtr>;

/// Policies by name: the order violations are reported in.
type ByName = OrdMap<Arc<str>, Arc<Member>>;

/// Compiled policies, sorted by name: the immutable snapshot admission reads.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    /// Every policy.
    policies: ByName,
    /// Policies whose selector only names namespaces, by namespace name: with many per-team
    /// policies, a review looks up its namespace instead of testing every selector.
    by_namespace: FastHashMap<String, ByName>,
    /// The other policies, tested one by one.
    scanned: ByName,
    /// Every distinct trusted pattern of the set, once, with the slot of its match result in a
    /// review's memo: policies commonly share registries, and each image is matched against
    /// each distinct pattern at most once.
    patterns: FastHashMap<PatternKey, Slot>,
    /// Slots whose pattern is gone, reused first so that the memo stays as long as the most
    /// distinct patterns the set has held at once.
    free: Vector<usize>,
    /// Slots handed out: the length of a review's memo.
    slots: usize,
    /// Policies by mode, in [`Mode::ALL`] order.
    by_mode: [usize; 3],
}

/// One policy and the memo slot of each of its trusted patterns, in the order written.
#[derive(Debug)]
struct Member {
    policy: Arc<CompiledPolicy>,
    slots: Box<[usize]>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    index: usize,
    /// Trusted patterns of the set's policies that have this key.
    users: usize,
}

impl PolicySet {
    pub fn new(policies: Vec<CompiledPolicy>) -> Self {
        Self::shared(policies.into_iter().map(Arc::new).collect())
    }

    /// Indexes policies compiled earlier. Policy names are unique: of two with one name, the
    /// later one is kept.
    pub fn shared(policies: Vec<Arc<CompiledPolicy>>) -> Self {
        let mut set = PolicySet::default();
        for policy in policies {
            set.insert(policy);
        }
        set
    }

    /// Adds `policy`, replacing the one of its name if there is one. Costs the policy's
    /// patterns and namespaces (each O(log n)), whatever the size of the set.
    pub fn insert(&mut self, policy: Arc<CompiledPolicy>) {
        self.remove(policy.name());
        let slots = policy.trusted().iter().map(|p| self.claim(p)).collect();
        let name = policy.shared_name();
        let member = Arc::new(Member { policy, slots });
        self.by_mode[mode_index(member.policy.mode())] += 1;
        match member.policy.named_namespaces() {
            Some(names) => {
                for n in names {
                    self.by_namespace.entry(n.clone()).or_default().insert(name.clone(), member.clone());
                }
            }
            None => {
                self.scanned.insert(name.clone(), member.clone());
            }
        }
        self.policies.insert(name, member);
    }

    /// Removes the policy named `name`; returns whether there was one.
    pub fn remove(&mut self, name: &str) -> bool {
        let Some(member) = self.policies.remove(name) else { return false };
        self.by_mode[mode_index(member.policy.mode())] -= 1;
        match member.policy.named_namespaces() {
            Some(names) => {
                for n in names {
                    if let Some(named) = self.by_namespace.get_mut(n.as_str()) {
                        named.remove(name);
                        if named.is_empty() {
                            self.by_namespace.remove(n.as_str());
                        }
                    }
                }
            }
            None => {
                self.scanned.remove(name);
            }
        }
        for pattern in member.policy.trusted() {
            self.release(pattern);
        }
        true
    }

    /// The memo slot of `pattern`'s key, taken by one more user.
    fn claim(&mut self, pattern: &Pattern) -> usize {
        if let Some(slot) = self.patterns.get_mut(&pattern.key()) {
            slot.users += 1;
            return slot.index;
        }
        let index = self.free.pop_back().unwrap_or_else(|| {
            self.slots += 1;
            self.slots - 1
        });
        self.patterns.insert(pattern.key(), Slot { index, users: 1 });
        index
    }

    /// One user of `pattern`'s key is gone; its slot is freed with the last one.
    fn release(&mut self, pattern: &Pattern) {
        let key = pattern.key();
        let Some(slot) = self.patterns.get_mut(&key) else { return };
        slot.users -= 1;
        if slot.users == 0 {
            let index = slot.index;
            self.patterns.remove(&key);
            self.free.push_back(index);
        }
    }

    /// The policies that apply in `namespace`, in name order.
    fn applicable(&self, namespace: &Namespace<'_>) -> Vec<&Member> {
        let applies = |m: &&Arc<Member>| m.policy.applies_to(namespace);
        let mut applicable: Vec<&Member> = self.scanned.values().filter(applies).map(Arc::as_ref).collect();
        if let Some(named) = self.by_namespace.get(namespace.name) {
            // Each policy is in one of the two maps, and once in each map: merge, no dedup.
            let from_scan = applicable.len();
            applicable.extend(named.values().filter(applies).map(Arc::as_ref));
            if from_scan > 0 && applicable.len() > from_scan {
                applicable.sort_unstable_by(|a, b| a.policy.name().cmp(b.policy.name()));
            }
        }
        applicable
    }

    /// Compiles every policy; invalid ones, and every policy after the first of one name, are
    /// left out and returned as errors.
    pub fn compile<'p>(policies: impl IntoIterator<Item = &'p TrustedRegistryPolicy>) -> (Self, Vec<PolicyError>) {
        let mut set = PolicySet::default();
        let mut errors = Vec::new();
        for policy in policies {
            match CompiledPolicy::compile(policy) {
                Ok(p) if set.policies.contains_key(p.name()) => errors.push(PolicyError {
                    policy: p.name().to_owned(),
                    problems: vec!["metadata.name: another policy has this name".to_owned()],
                }),
                Ok(p) => set.insert(Arc::new(p)),
                Err(e) => errors.push(e),
            }
        }
        (set, errors)
    }

    /// Every policy, in name order.
    pub fn policies(&self) -> impl ExactSizeIterator<Item = &Arc<CompiledPolicy>> + '_ {
        self.policies.values().map(|m| &m.policy)
    }

    /// The policy named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<CompiledPolicy>> {
        self.policies.get(name).map(|m| &m.policy)
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// How many policies run in each mode.
    pub fn count_by_mode(&self, mode: Mode) -> usize {
        self.by_mode[mode_index(mode)]
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
        let mut memo = vec![0u8; self.slots];
        for container in containers {
            let text = container.image.as_deref().unwrap_or("");
            let image = Image { container, text, parsed: Reference::parse(text) };
            let parts = image.parsed.as_ref().ok().map(|r| {
                let (host, port) = reference::split_port(r.domain());
                (host, port, r.path())
            });
            memo.fill(0);
            let existing = parts.is_some() && old.iter().any(|o| o.image.as_deref() == Some(text));
            for member in &applicable {
                let trusted = parts.is_some_and(|(host, port, path)| {
                    let patterns = member.policy.trusted().iter().zip(&member.slots);
                    patterns.into_iter().any(|(pattern, &slot)| match memo[slot] {
                        0 => {
                            let hit = pattern.matches_parts(host, port, path);
                            memo[slot] = 1 + u8::from(hit);
                            hit
                        }
                        seen => seen == 2,
                    })
                });
                member.policy.check(&image, trusted, existing, inherited, namespace.name, now, &mut violations);
            }
        }
        Decision { violations }
    }

    /// Evaluates a whole workload in its namespace.
    pub fn evaluate_workload(&self, workload: &Workload<'_>, namespace: &Namespace<'_>, now: Timestamp) -> Decision {
        self.evaluate(namespace, &workload.containers, now)
    }
}

fn mode_index(mode: Mode) -> usize {
    Mode::ALL.iter().position(|&m| m == mode).expect("Mode::ALL lists every mode")
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;

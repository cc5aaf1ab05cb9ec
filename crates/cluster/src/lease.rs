//! Leader election over a `coordination.k8s.io/v1` Lease: one replica writes policy status and
//! runs the audit.
//!
//! Every write is a create or a `resourceVersion`-guarded replace, so two replicas can never both
//! believe they took the lease: the loser gets a conflict. A lease counts as expired when its
//! holder record has not changed for `leaseDurationSeconds` by *our* clock (as client-go does),
//! so replicas need not agree on the time. A leader that cannot renew steps down after
//! `renew_deadline`, well before anyone else may take over; on shutdown it releases the lease so
//! that another replica takes over at once.
//!
//! A hung API server (frozen, or a connection that died without a reset) cannot stretch that
//! deadline: every round is cut short when it comes, a leader's round never outlasts it, and
//! the leader steps down at the deadline measured when the round ends. A follower counts a
//! record as seen from when the answer showing it arrived, so a slow answer can only make it
//! wait longer before taking over.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;

/// Timing of the election.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Who we are in `holderIdentity` (the pod name).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub lease_duration: Duration,
    /// How often the leader renews.
    pub renew_interval: Duration,
    /// How often a follower tries to acquire.
    pub retry_interval: Duration,
    /// How long the leader keeps leading when renewals fail; shorter than `lease_duration`.
    pub renew_deadline: Duration,
}

impl LeaseConfig {
    /// The defaults of client-go's leader election, scaled down a little: 15s lease, 5s renew.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
            retry_interval: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(10),
        }
    }
}

/// A failed call to the API server.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("failed to read lease {namespace}/{name}")]
    Get {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("no answer about lease {namespace}/{name} within {after:?}")]
    Timeout { namespace: String, name: String, after: Duration },
    #[error("failed to write lease {namespace}/{name}")]
    Write {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What to do about the lease as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// No lease exists: create it, holding it.
    Create,
    /// We hold it: renew it.
    Renew,
    /// Nobody holds it, or the holder let it expire: take it over.
    Acquire,
    /// Someone else holds it.
    Follow,
}

/// Decides from the lease and whether its holder record has gone stale.
pub(crate) fn next_action(lease: Option<&LeaseSpec>, identity: &str, expired: bool) -> Action {
    let Some(spec) = lease else { return Action::Create };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == identity => Action::Renew,
        None | Some("") => Action::Acquire,
        Some(_) if expired => Action::Acquire,
        Some(_) => Action::Follow,
    }
}

/// The lease spec after `action` by `identity` at `now`; `None` when we only follow.
pub(crate) fn updated_spec(
    current: Option<&LeaseSpec>,
    action: Action,
    identity: &str,
    duration: Duration,
    now: Timestamp,
) -> Option<LeaseSpec> {
    let seconds = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX);
    let mut spec = current.cloned().unwrap_or_default();
    match action {
        Action::Follow => return None,
        Action::Create => {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(0);
        }
        Action::Acquire => {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        Action::Renew => {}
    }
    spec.holder_identity = Some(identity.to_owned());
    spec.lease_duration_seconds = Some(seconds);
    spec.renew_time = Some(MicroTime(now));
    Some(spec)
}

/// What the other side last showed us, and when we first saw it so.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    duration_seconds: Option<i32>,
}

/// The state of one replica in the election.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    observed: Option<(Record, Instant)>,
    /// When we last renewed successfully, while we lead.
    renewed_at: Option<Instant>,
    /// The lease as we last wrote it, for the release.
    written: Option<Lease>,
}

impl Elector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            clock: Arc::new(Timestamp::now),
            observed: None,
            renewed_at: None,
            written: None,
        }
    }

    /// Replaces the wall clock written into the lease (tests).
    pub fn with_clock(mut self, clock: impl Fn() -> Timestamp + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Whether we lead as of the last [`Elector::tick`].
    pub fn is_leader(&self) -> bool {
        self.renewed_at.is_some()
    }

    /// While we lead: when we stop leading unless a renewal succeeds before.
    pub fn leading_until(&self) -> Option<Instant> {
        self.renewed_at.map(|at| at + self.config.renew_deadline)
    }

    /// One round of the election at `now`; returns whether we lead afterwards. An error from
    /// the API server keeps a leader leading until `renew_deadline` has passed since its last
    /// renewal, and is returned for logging. The round takes at most `renew_deadline / 2`, and
    /// a leader's round ends by its deadline at the latest.
    pub async fn tick(&mut self, now: Instant) -> (bool, Option<LeaseError>) {
        // `now` is the caller's clock (tests run it ahead); how long the round took is measured.
        let started = Instant::now();
        if self.leading_until().is_some_and(|until| now >= until) {
            self.renewed_at = None;
        }
        let mut limit = self.config.renew_deadline / 2;
        if let Some(until) = self.leading_until() {
            limit = limit.min(until.saturating_duration_since(now));
        }
        let result = tokio::time::timeout(limit, self.try_acquire_or_renew(now, started)).await.unwrap_or_else(|_| {
            Err(LeaseError::Timeout {
                namespace: self.config.namespace.clone(),
                name: self.config.name.clone(),
                after: limit,
            })
        });
        match result {
            Ok(true) => self.renewed_at = Some(now),
            Ok(false) => self.renewed_at = None,
            Err(e) => {
                let ended = now + started.elapsed();
                if self.leading_until().is_some_and(|until| ended >= until) {
                    self.renewed_at = None;
                }
                return (self.is_leader(), Some(e));
            }
        }
        (self.is_leader(), None)
    }

    async fn try_acquire_or_renew(&mut self, now: Instant, started: Instant) -> Result<bool, LeaseError> {
        let name = self.config.name.clone();
        let current = self.api.get_opt(&name).await.map_err(|source| self.get_error(source))?;
        let answered = now + started.elapsed();
        let unset = LeaseSpec::default();
        let spec = current.as_ref().map(|l| l.spec.as_ref().unwrap_or(&unset));
        let expired = spec.is_some_and(|s| self.expired(s, now, answered));
        let action = next_action(spec, &self.config.identity, expired);
        let Some(spec) = updated_spec(spec, action, &self.config.identity, self.config.lease_duration, (self.clock)())
        else {
            self.written = None;
            return Ok(false);
        };
        let result = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                // metadata.resourceVersion is kept from the read: the replace fails with a
                // conflict if anyone wrote the lease in between.
                lease.spec = Some(spec);
                self.api.replace(&name, &PostParams::default(), &lease).await
            }
        };
        match result {
            Ok(lease) => {
                self.written = Some(lease);
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_already_exists() => {
                self.written = None;
                Ok(false)
            }
            Err(source) => Err(self.write_error(source)),
        }
    }

    /// Whether the holder record has stayed the same for a whole lease duration: from when an
    /// answer first showed it (`answered`) to when the request that shows it again was sent
    /// (`now`), so that the time a request takes never counts towards expiry.
    fn expired(&mut self, spec: &LeaseSpec, now: Instant, answered: Instant) -> bool {
        let record = Record {
            holder: spec.holder_identity.clone(),
            renew_time: spec.renew_time.clone(),
            duration_seconds: spec.lease_duration_seconds,
        };
        let seen_at = match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => {
                self.observed = Some((record.clone(), answered));
                answered
            }
        };
        let seconds = record.duration_seconds.and_then(|s| u64::try_from(s).ok()).unwrap_or(15);
        now.saturating_duration_since(seen_at) >= Duration::from_secs(seconds)
    }

    /// Gives the lease up so that another replica takes over without waiting for it to expire;
    /// returns whether there was a lease of ours to give up. Like a round, it waits at most
    /// `renew_deadline / 2` for the API server: shutdown must not hang on it.
    pub async fn release(&mut self) -> Result<bool, LeaseError> {
        self.renewed_at = None;
        let Some(mut lease) = self.written.take() else { return Ok(false) };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime((self.clock)()));
        let limit = self.config.renew_deadline / 2;
        let params = PostParams::default();
        let write = self.api.replace(&self.config.name, &params, &lease);
        let Ok(result) = tokio::time::timeout(limit, write).await else {
            return Err(LeaseError::Timeout {
                namespace: self.config.namespace.clone(),
                name: self.config.name.clone(),
                after: limit,
            });
        };
        match result {
            Ok(_) => Ok(true),
            // Someone wrote it since our last renewal: it is not ours to release any more.
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(false),
            Err(source) => Err(self.write_error(source)),
        }
    }

    fn get_error(&self, source: kube::Error) -> LeaseError {
        LeaseError::Get { namespace: self.config.namespace.clone(), name: self.config.name.clone(), source }
    }

    fn write_error(&self, source: kube::Error) -> LeaseError {
        LeaseError::Write { namespace: self.config.namespace.clone(), name: self.config.name.clone(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(4),
            acquire_time: Some(MicroTime("2026-01-01T00:00:00Z".parse().unwrap())),
            renew_time: Some(MicroTime("2026-01-01T00:00:10Z".parse().unwrap())),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn actions() {
        let cases = [
            (None, false, Action::Create),
            (Some(spec(Some("me"))), false, Action::Renew),
            (Some(spec(Some("me"))), true, Action::Renew),
            (Some(spec(None)), false, Action::Acquire),
            (Some(spec(Some(""))), false, Action::Acquire),
            (Some(spec(Some("other"))), false, Action::Follow),
            (Some(spec(Some("other"))), true, Action::Acquire),
        ];
        for (lease, expired, want) in cases {
            assert_eq!(next_action(lease.as_ref(), "me", expired), want, "{lease:?} expired={expired}");
        }
    }

    #[test]
    fn updated_specs() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let d = Duration::from_secs(15);
        let created = updated_spec(None, Action::Create, "me", d, now).unwrap();
        assert_eq!(created.holder_identity.as_deref(), Some("me"));
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.acquire_time, Some(MicroTime(now)));
        assert_eq!(created.renew_time, Some(MicroTime(now)));
        assert_eq!(created.lease_duration_seconds, Some(15));

        let held = spec(Some("me"));
        let renewed = updated_spec(Some(&held), Action::Renew, "me", d, now).unwrap();
        assert_eq!(renewed.acquire_time, held.acquire_time, "a renewal keeps the acquire time");
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));

        let taken = updated_spec(Some(&spec(Some("other"))), Action::Acquire, "me", d, now).unwrap();
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.lease_transitions, Some(5));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));

        assert_eq!(updated_spec(Some(&spec(Some("other"))), Action::Follow, "me", d, now), None);
    }
}

//! The memory budget for request bodies: how many body bytes the server holds at once, in all
//! (`--max-body-bytes-in-flight`) and per client address (`--max-body-bytes-per-source`).
//!
//! A request reserves the bytes of its body before it reads them ([`Lease::grow`]). When a
//! budget is full it waits, and while it waits its body is not read from the socket: HTTP/1.1
//! leaves the bytes in the kernel's receive buffer, and HTTP/2 sends no WINDOW_UPDATE, so the
//! client's own flow control stops it. A wait that outlasts the request's deadline is refused
//! (the server answers 503).
//!
//! Addresses share the global budget max-min fairly: a request whose address holds less than
//! another address would still hold after the request's reservation may take room from that
//! heavier address, whose largest body still being read is refused at once ([`Refusal::Preempted`]).
//! So however many other addresses upload, the API server's address (light: reviews are 2 to
//! 100 KB) gets room without waiting for an attacker's request timeout. The room a preemption
//! frees goes to the request that made it; other room goes to the first waiter of the address
//! that holds least (the one that has waited longest among equals), first come first served
//! within one address.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Default of `--max-body-bytes-in-flight`.
pub const DEFAULT_GLOBAL: usize = 64 * 1024 * 1024;
/// Default of `--max-body-bytes-per-source`.
pub const DEFAULT_PER_SOURCE: usize = 16 * 1024 * 1024;

/// The two budgets, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetLimits {
    /// Body bytes held at once by all requests.
    pub global: usize,
    /// Body bytes held at once by the requests of one client address.
    pub per_source: usize,
}

impl Default for BudgetLimits {
    fn default() -> Self {
        BudgetLimits { global: DEFAULT_GLOBAL, per_source: DEFAULT_PER_SOURCE }
    }
}

/// Why a reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The budget had no room before the request's deadline.
    #[error("the server's memory budget for request bodies had no room for this body in time")]
    Timeout,
    /// A request from a lighter address needed the room this one held.
    #[error("the server's memory budget for request bodies is full, and this address holds more of it than others")]
    Preempted,
    /// The body alone is larger than the budget of one address: it can never fit.
    #[error("the request body is larger than the memory budget of one client address")]
    TooLarge,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Timeout => "timeout",
            Refusal::Preempted => "preempted",
            Refusal::TooLarge => "too_large",
        }
    }
}

/// The server's body budget; shared by every connection.
#[derive(Debug)]
pub struct BodyBudget {
    limits: BudgetLimits,
    state: Mutex<State>,
    metrics: BodyBudgetMetrics,
}

#[derive(Debug, Default)]
struct State {
    /// Bytes reserved by all leases.
    used: usize,
    /// Of `used`, bytes of preempted leases not given back yet: already on their way out.
    releasing: usize,
    sources: HashMap<IpAddr, Source>,
    /// Addresses with a waiting request, in the order they wait (ties of the lightest-first
    /// order go to the one that has waited longest).
    rotation: VecDeque<IpAddr>,
    /// Waiting requests that took room from heavier addresses: they get the room that comes
    /// back first, so that no other waiter takes what was freed for them.
    claims: Vec<(IpAddr, u64)>,
    next_id: u64,
}

#[derive(Debug, Default)]
struct Source {
    used: usize,
    releasing: usize,
    holds: HashMap<u64, Hold>,
    waiters: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Hold {
    bytes: usize,
    /// Cancelled when a lighter address takes this hold's room.
    preempt: CancellationToken,
    /// Still reading its body (a body fully read is about to be answered and freed).
    preemptible: bool,
    preempted: bool,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    bytes: usize,
    granted: oneshot::Sender<()>,
}

impl BodyBudget {
    pub fn new(limits: BudgetLimits, metrics: BodyBudgetMetrics) -> Arc<Self> {
        Arc::new(BodyBudget { limits, state: Mutex::new(State::default()), metrics })
    }

    pub fn limits(&self) -> BudgetLimits {
        self.limits
    }

    /// A lease of no bytes yet for a request from `source`.
    pub fn lease(self: &Arc<Self>, source: IpAddr) -> Lease {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        let preempt = CancellationToken::new();
        let hold = Hold { bytes: 0, preempt: preempt.clone(), preemptible: true, preempted: false };
        state.sources.entry(source).or_default().holds.insert(id, hold);
        Lease { budget: self.clone(), source, id, bytes: 0, preempt }
    }

    /// Bytes reserved now, in all.
    pub fn in_flight(&self) -> usize {
        self.lock().used
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a few counters updated together: a panic cannot leave it half-written,
        // so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Grants `bytes` to hold `id` of `source` if both budgets have room.
    fn try_grant(&self, state: &mut State, source: IpAddr, id: u64, bytes: usize) -> bool {
        let global_room = state.used + bytes <= self.limits.global;
        let Some(src) = state.sources.get_mut(&source) else { return false };
        if !global_room || src.used + bytes > self.limits.per_source {
            return false;
        }
        let Some(hold) = src.holds.get_mut(&id).filter(|h| !h.preempted) else { return false };
        hold.bytes += bytes;
        src.used += bytes;
        state.used += bytes;
        self.metrics.set_in_flight(state.used);
        true
    }

    /// Makes room in the global budget for `bytes` more of `source`, which would then hold
    /// `after`: cancels the largest body still being read of each address that holds more than
    /// `after`, heaviest address first, until the room that is on its way covers `bytes`.
    /// Whether anything was cancelled.
    fn preempt(&self, state: &mut State, source: IpAddr, bytes: usize, after: usize) -> bool {
        let mut cancelled = false;
        loop {
            let free = self.limits.global.saturating_sub(state.used) + state.releasing;
            if free >= bytes {
                return cancelled;
            }
            let victim = state
                .sources
                .iter_mut()
                .filter(|(ip, s)| **ip != source && s.used - s.releasing > after)
                .max_by_key(|(_, s)| s.used - s.releasing)
                .and_then(|(_, s)| {
                    let (_, hold) = s
                        .holds
                        .iter_mut()
                        .filter(|(_, h)| h.preemptible && !h.preempted && h.bytes > 0)
                        .max_by_key(|(_, h)| h.bytes)?;
                    hold.preempted = true;
                    hold.preempt.cancel();
                    self.metrics.refused(Refusal::Preempted);
                    s.releasing += hold.bytes;
                    Some(hold.bytes)
                });
            let Some(freed) = victim else { return cancelled };
            state.releasing += freed;
            cancelled = true;
        }
    }

    /// Serves waiting requests while there is room: first those that took room from heavier
    /// addresses, then, max-min fairly, the first waiter of the address that holds least.
    fn pump(&self, state: &mut State) {
        let mut i = 0;
        while i < state.claims.len() {
            let (ip, id) = state.claims[i];
            let waiting = state.sources.get(&ip).and_then(|s| s.waiters.iter().find(|w| w.id == id)).map(|w| w.bytes);
            match waiting {
                // Granted or given up meanwhile.
                None => {
                    state.claims.swap_remove(i);
                }
                Some(bytes) if self.try_grant(state, ip, id, bytes) => {
                    state.claims.swap_remove(i);
                    self.hand_over(state, ip, id);
                }
                Some(_) => i += 1,
            }
        }
        loop {
            let lightest = state
                .rotation
                .iter()
                .enumerate()
                .filter_map(|(order, ip)| {
                    let src = state.sources.get(ip)?;
                    let head = src.waiters.front()?;
                    // A preempted hold still in line is on its way out: never granted.
                    let live = src.holds.get(&head.id).is_some_and(|h| !h.preempted);
                    let fits = live
                        && state.used + head.bytes <= self.limits.global
                        && src.used + head.bytes <= self.limits.per_source;
                    fits.then_some((src.used, order, *ip, head.id, head.bytes))
                })
                .min_by_key(|&(used, order, ..)| (used, order));
            let Some((_, _, ip, id, bytes)) = lightest else { break };
            let granted = self.try_grant(state, ip, id, bytes);
            debug_assert!(granted, "the lightest waiter was checked to fit");
            self.hand_over(state, ip, id);
        }
    }

    /// Tells waiter `id` of `ip`, just granted, that it may go on, and keeps the order of the
    /// waiting addresses: an address with more waiters goes to the back.
    fn hand_over(&self, state: &mut State, ip: IpAddr, id: u64) {
        let src = state.sources.get_mut(&ip).expect("a granted source is in the table");
        let Some(at) = src.waiters.iter().position(|w| w.id == id) else { return };
        let waiter = src.waiters.remove(at).expect("the position was just found");
        // A waiter that gave up in the meantime releases the bytes when its lease drops.
        let _ = waiter.granted.send(());
        let more = !src.waiters.is_empty();
        state.rotation.retain(|other| *other != ip);
        if more {
            state.rotation.push_back(ip);
        }
    }

    fn release(&self, source: IpAddr, id: u64) {
        let mut state = self.lock();
        let Some(src) = state.sources.get_mut(&source) else { return };
        let Some(hold) = src.holds.remove(&id) else { return };
        src.used -= hold.bytes;
        if hold.preempted {
            src.releasing -= hold.bytes;
        }
        src.waiters.retain(|w| w.id != id);
        let (remove, idle) = (src.holds.is_empty() && src.waiters.is_empty(), src.waiters.is_empty());
        if remove {
            state.sources.remove(&source);
        }
        if idle {
            state.rotation.retain(|ip| *ip != source);
        }
        state.used -= hold.bytes;
        if hold.preempted {
            state.releasing -= hold.bytes;
        }
        self.metrics.set_in_flight(state.used);
        self.pump(&mut state);
    }

    fn shrink(&self, source: IpAddr, id: u64, bytes: usize) {
        let mut state = self.lock();
        let Some(src) = state.sources.get_mut(&source) else { return };
        let Some(hold) = src.holds.get_mut(&id) else { return };
        let bytes = bytes.min(hold.bytes);
        hold.bytes -= bytes;
        if hold.preempted {
            src.releasing -= bytes;
        }
        src.used -= bytes;
        let preempted = hold.preempted;
        state.used -= bytes;
        if preempted {
            state.releasing -= bytes;
        }
        self.metrics.set_in_flight(state.used);
        self.pump(&mut state);
    }
}

/// The bytes one request holds in the budget; given back when dropped.
#[derive(Debug)]
pub struct Lease {
    budget: Arc<BodyBudget>,
    source: IpAddr,
    id: u64,
    bytes: usize,
    preempt: CancellationToken,
}

impl Lease {
    /// Bytes this lease holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Reserves `bytes` more, waiting for room until `deadline`.
    pub async fn grow(&mut self, bytes: usize, deadline: Instant) -> Result<(), Refusal> {
        if bytes == 0 {
            return Ok(());
        }
        let budget = self.budget.clone();
        let receiver = {
            let mut state = budget.lock();
            if self.preempt.is_cancelled() {
                return Err(Refusal::Preempted);
            }
            if self.bytes + bytes > budget.limits.per_source || bytes > budget.limits.global {
                budget.metrics.refused(Refusal::TooLarge);
                return Err(Refusal::TooLarge);
            }
            let src = state.sources.get(&self.source).expect("a live lease's source is in the table");
            let (queued, after) = (!src.waiters.is_empty(), src.used + bytes);
            // Behind others of the same address: wait in line, even if this one would fit.
            if !queued && budget.try_grant(&mut state, self.source, self.id, bytes) {
                self.bytes += bytes;
                return Ok(());
            }
            // Only the global budget is taken from others; an address's own is its own.
            let claimed = budget.preempt(&mut state, self.source, bytes, after);
            if claimed {
                state.claims.push((self.source, self.id));
            }
            let (granted, receiver) = oneshot::channel();
            let src = state.sources.get_mut(&self.source).expect("a live lease's source is in the table");
            src.waiters.push_back(Waiter { id: self.id, bytes, granted });
            if src.waiters.len() == 1 {
                state.rotation.push_back(self.source);
            }
            budget.metrics.waited();
            receiver
        };
        let outcome = tokio::select! {
            biased;
            granted = receiver => match granted {
                Ok(()) => Ok(()),
                // The sender is dropped only with its waiter, which only this lease removes.
                Err(_) => Err(Refusal::Timeout),
            },
            () = self.preempt.cancelled() => Err(Refusal::Preempted),
            () = tokio::time::sleep_until(deadline) => Err(Refusal::Timeout),
        };
        match outcome {
            Ok(()) => {
                self.bytes += bytes;
                Ok(())
            }
            Err(refusal) => {
                let mut state = budget.lock();
                let src = state.sources.get_mut(&self.source).expect("a live lease's source is in the table");
                let before = src.waiters.len();
                src.waiters.retain(|w| w.id != self.id);
                let (was_waiting, none_left) = (src.waiters.len() != before, src.waiters.is_empty());
                if !was_waiting {
                    // Granted just as the wait ended: the bytes are this lease's.
                    self.bytes = src.holds.get(&self.id).map_or(0, |h| h.bytes);
                    if refusal == Refusal::Timeout {
                        return Ok(());
                    }
                }
                if none_left {
                    state.rotation.retain(|ip| *ip != self.source);
                }
                if refusal == Refusal::Timeout {
                    // (Preemptions are counted when they are made.)
                    budget.metrics.refused(refusal);
                }
                // Others may now fit where this waiter stood in line.
                budget.pump(&mut state);
                Err(refusal)
            }
        }
    }

    /// Gives back `bytes` of this lease.
    pub fn shrink(&mut self, bytes: usize) {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        self.budget.shrink(self.source, self.id, bytes);
    }

    /// The body is read whole: from now on this lease is never preempted (its request is
    /// decided and answered without waiting on anything).
    pub fn settle(&self) {
        let mut state = self.budget.lock();
        if let Some(hold) = state.sources.get_mut(&self.source).and_then(|s| s.holds.get_mut(&self.id)) {
            hold.preemptible = false;
        }
    }

    /// Resolves when a lighter address took this lease's room: the request must give up.
    pub fn preempted(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.preempt.cancelled()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.release(self.source, self.id);
    }
}

/// The request-body memory budget's metrics (`trustgate_admission_body_*`).
#[derive(Clone, Debug, Default)]
pub struct BodyBudgetMetrics {
    pub(crate) in_flight: Gauge,
    pub(crate) waits: Counter,
    pub(crate) refusals: Family<RefusalLabels, Counter>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RefusalLabels {
    reason: &'static str,
}

impl BodyBudgetMetrics {
    pub(crate) fn set_in_flight(&self, bytes: usize) {
        self.in_flight.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub(crate) fn waited(&self) {
        self.waits.inc();
    }

    pub(crate) fn refused(&self, reason: Refusal) {
        self.refusals.get_or_create(&RefusalLabels { reason: reason.as_str() }).inc();
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::*;
    use crate::metrics::{self, AdmissionMetrics};

    const MIB: usize = 1024 * 1024;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    fn budget(global: usize, per_source: usize) -> (Arc<BodyBudget>, prometheus_client::registry::Registry) {
        let mut registry = metrics::registry();
        let admission = AdmissionMetrics::register(&mut registry);
        (BodyBudget::new(BudgetLimits { global, per_source }, admission.body_budget()), registry)
    }

    fn later(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test(start_paused = true)]
    async fn reservations_within_both_budgets_are_granted_at_once_and_given_back_on_drop() {
        let (budget, _) = budget(8 * MIB, 4 * MIB);
        let mut a = budget.lease(ip(2));
        let mut b = budget.lease(ip(3));
        a.grow(3 * MIB, later(10)).await.unwrap();
        b.grow(4 * MIB, later(10)).await.unwrap();
        assert_eq!(budget.in_flight(), 7 * MIB);
        a.shrink(MIB);
        assert_eq!((a.bytes(), budget.in_flight()), (2 * MIB, 6 * MIB));
        drop(a);
        drop(b);
        assert_eq!(budget.in_flight(), 0);
        assert!(budget.lock().sources.is_empty(), "an address with no lease leaves no entry");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_address_waits_for_its_own_room_then_is_refused_at_the_deadline() {
        let (budget, registry) = budget(64 * MIB, 4 * MIB);
        let mut first = budget.lease(ip(2));
        first.grow(3 * MIB, later(10)).await.unwrap();
        let mut second = budget.lease(ip(2));
        let started = tokio::time::Instant::now();
        assert_eq!(second.grow(2 * MIB, later(500)).await, Err(Refusal::Timeout));
        let waited = started.elapsed();
        assert!((500..=502).contains(&waited.as_millis()), "it waited until the deadline: {waited:?}");
        assert_eq!(second.bytes(), 0);
        // Another address is not held up by the full one.
        let mut other = budget.lease(ip(3));
        other.grow(4 * MIB, later(10)).await.unwrap();
        let text = metrics::encode(&registry).unwrap();
        assert!(text.contains("trustgate_admission_body_budget_waits_total 1"), "{text}");
        assert!(text.contains(r#"trustgate_admission_body_budget_refusals_total{reason="timeout"} 1"#), "{text}");
        assert!(text.contains(&format!("trustgate_admission_body_bytes_in_flight {}", 7 * MIB)), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_reservation_is_granted_when_room_is_given_back() {
        let (budget, _) = budget(4 * MIB, 4 * MIB);
        let mut first = budget.lease(ip(2));
        first.grow(3 * MIB, later(10)).await.unwrap();
        let mut second = budget.lease(ip(2));
        let waiting = tokio::spawn(async move { second.grow(2 * MIB, later(5_000)).await.map(|()| second.bytes()) });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "no room yet");
        drop(first);
        assert_eq!(waiting.await.unwrap(), Ok(2 * MIB));
    }

    #[tokio::test(start_paused = true)]
    async fn a_light_address_takes_room_from_the_heaviest_at_once() {
        let (budget, registry) = budget(7 * MIB, 4 * MIB);
        // Two attackers fill the global budget, one with more than the other.
        let mut heavy = budget.lease(ip(2));
        heavy.grow(4 * MIB, later(10)).await.unwrap();
        let mut other = budget.lease(ip(3));
        other.grow(2 * MIB, later(10)).await.unwrap();
        let mut other_small = budget.lease(ip(3));
        other_small.grow(MIB, later(10)).await.unwrap();
        // The API server's review: room comes from the heaviest address's largest body.
        let mut review = budget.lease(ip(1));
        let granted = tokio::spawn(async move { review.grow(100_000, later(10_000)).await.map(|()| review) });
        tokio::time::timeout(Duration::from_millis(1), heavy.preempted()).await.expect("the heaviest is preempted");
        assert!(!other.preempt.is_cancelled() && !other_small.preempt.is_cancelled(), "only as much as needed");
        let started = tokio::time::Instant::now();
        drop(heavy);
        let review = granted.await.unwrap().unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO, "granted as soon as the room was given back");
        assert_eq!(review.bytes(), 100_000);
        let text = metrics::encode(&registry).unwrap();
        assert!(text.contains(r#"trustgate_admission_body_budget_refusals_total{reason="preempted"} 1"#), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_room_a_light_address_freed_goes_to_it_not_to_those_waiting_before_it() {
        let (budget, _) = budget(4 * MIB, 8 * MIB);
        let mut a = budget.lease(ip(2));
        a.grow(MIB, later(10)).await.unwrap();
        let mut b = budget.lease(ip(3));
        b.grow(3 * MIB, later(10)).await.unwrap();
        // The heavy address's next upload waits first (no one holds more than it would).
        let mut next = budget.lease(ip(3));
        let queued = tokio::spawn(async move { next.grow(3 * MIB, later(60_000)).await.map(|()| next) });
        tokio::task::yield_now().await;
        // The API server's review takes room from the heaviest address...
        let mut review = budget.lease(ip(1));
        let granted = tokio::spawn(async move { review.grow(2 * MIB, later(60_000)).await.map(|()| review) });
        tokio::task::yield_now().await;
        assert!(b.preempt.is_cancelled() && !a.preempt.is_cancelled());
        drop(b);
        // ...and gets it, though the other upload waited longer and would have fitted first.
        let review = tokio::time::timeout(Duration::from_millis(1), granted).await.expect("granted at once");
        let review = review.unwrap().unwrap();
        assert_eq!(review.bytes(), 2 * MIB);
        tokio::task::yield_now().await;
        assert!(!queued.is_finished(), "the earlier waiter is still waiting: no room for it");
        // It gets its room once there is some.
        drop(review);
        let next = queued.await.unwrap().unwrap();
        assert_eq!(next.bytes(), 3 * MIB);
        assert_eq!(budget.in_flight(), 4 * MIB);
        drop((a, next));
    }

    #[tokio::test(start_paused = true)]
    async fn addresses_of_equal_weight_never_preempt_each_other() {
        let (budget, _) = budget(8 * MIB, 4 * MIB);
        let mut a = budget.lease(ip(2));
        a.grow(4 * MIB, later(10)).await.unwrap();
        let mut b = budget.lease(ip(3));
        b.grow(4 * MIB, later(10)).await.unwrap();
        // A third address asking for as much as the others hold would be no lighter after.
        let mut c = budget.lease(ip(4));
        assert_eq!(c.grow(4 * MIB, later(200)).await, Err(Refusal::Timeout));
        assert!(!a.preempt.is_cancelled() && !b.preempt.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_preempted_waiter_and_a_settled_body_behave_as_documented() {
        let (budget, registry) = budget(4 * MIB, 4 * MIB);
        let mut settled = budget.lease(ip(2));
        settled.grow(2 * MIB, later(10)).await.unwrap();
        settled.settle();
        let mut reading = budget.lease(ip(2));
        reading.grow(2 * MIB, later(10)).await.unwrap();
        let mut light = budget.lease(ip(1));
        let waiter = tokio::spawn(async move { light.grow(MIB, later(10_000)).await.map(|()| light) });
        tokio::task::yield_now().await;
        assert_eq!(reading.grow(MIB, later(10_000)).await, Err(Refusal::Preempted), "the body being read gives way");
        assert!(!settled.preempt.is_cancelled(), "a body read whole is never preempted");
        drop(reading);
        assert_eq!(waiter.await.unwrap().unwrap().bytes(), MIB);
        let text = metrics::encode(&registry).unwrap();
        assert!(text.contains(r#"trustgate_admission_body_budget_refusals_total{reason="preempted"} 1"#), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_larger_than_one_address_may_hold_is_refused_without_waiting() {
        let (budget, _) = budget(64 * MIB, 2 * MIB);
        let mut lease = budget.lease(ip(2));
        assert_eq!(lease.grow(3 * MIB, later(10_000)).await, Err(Refusal::TooLarge));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_addresses_are_served_in_turn() {
        let (budget, _) = budget(2 * MIB, 2 * MIB);
        let mut holder = budget.lease(ip(9));
        holder.grow(2 * MIB, later(10)).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Address 2 queues three requests before address 3 queues one.
        for (n, source) in [(0, 2), (1, 2), (2, 2), (3, 3)] {
            let (budget, order) = (budget.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let mut lease = budget.lease(ip(source));
                lease.grow(2 * MIB, later(60_000)).await.unwrap();
                order.lock().unwrap().push(n);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }));
            tokio::task::yield_now().await;
        }
        drop(holder);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 3, 1, 2], "address 3 is served before address 2's second request");
    }
}

//! Who holds the admission port's connections, and which one gives way when they run out.
//!
//! The port is open to every Pod of the cluster, so one client must not be able to take the
//! slots the API server needs. The accept loop therefore never waits for a free slot: it
//! accepts every connection and asks this table at once whether to serve it.
//!
//! - A source address already holding `max_per_source` connections is refused.
//! - At `max_total`, a connection that is still in its TLS handshake, or established with no
//!   request in flight, is shed to make room, taken from the address holding the most
//!   connections (handshakes first, the oldest first). Only when every connection is busy is
//!   the new one refused.
//!
//! The API server holds a few connections per address, each busy or recently used, so it is
//! neither over the per-source limit nor the one shed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Why a new connection was closed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Its source address already holds `max_per_source` connections.
    PerSourceLimit,
    /// `max_total` connections are open and every one has a request in flight.
    GlobalLimit,
}

impl Refusal {
    /// The `reason` label of `trustgate_admission_connections_refused_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::PerSourceLimit => "per_source_limit",
            Refusal::GlobalLimit => "global_limit",
        }
    }
}

/// Why an open connection was closed before its client was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shed {
    /// Its TLS handshake did not finish within the handshake timeout.
    HandshakeTimeout,
    /// Still in its TLS handshake when a slot was needed for a new connection.
    Handshaking,
    /// Established with no request in flight when a slot was needed for a new connection.
    Idle,
}

impl Shed {
    /// The `reason` label of `trustgate_admission_connections_shed_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Shed::HandshakeTimeout => "handshake_timeout",
            Shed::Handshaking => "handshaking",
            Shed::Idle => "idle",
        }
    }
}

/// When a connection last finished a request, and how many it has in flight.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    last_millis: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity { opened: Instant::now(), in_flight: AtomicUsize::new(0), last_millis: AtomicU64::new(0) })
    }

    /// Marks a request in flight until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// When the connection will have been idle for `idle`, or `None` if a request is in flight.
    pub fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(self.opened + Duration::from_millis(self.last_millis.load(Ordering::Relaxed)) + idle)
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
    }
}

/// A request in flight on a connection until dropped (completed or cancelled).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let millis = u64::try_from(self.0.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_millis.store(millis, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The open connections of the admission port, by source address.
#[derive(Debug)]
pub struct ConnectionTable {
    max_total: usize,
    max_per_source: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// Connections counted against the limits (a shed connection no longer is).
    live: usize,
    per_source: HashMap<IpAddr, usize>,
    entries: HashMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    source: IpAddr,
    opened: Instant,
    /// `None` while the TLS handshake runs.
    activity: Option<Arc<Activity>>,
    shed: CancellationToken,
}

/// What the table decided about a new connection.
#[derive(Debug)]
pub enum Arrival {
    /// Serve it; `shed` names the connection that was closed to make room, if any.
    Admitted { slot: Slot, shed: Option<Shed> },
    /// Close it at once.
    Refused(Refusal),
}

impl ConnectionTable {
    /// A table for at most `max_total` connections, `max_per_source` from any one address.
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(ConnectionTable {
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
            state: Mutex::new(State::default()),
        })
    }

    /// Decides about a connection just accepted from `source`.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Arrival {
        let mut state = self.state.lock().expect("the connection table lock is never poisoned");
        if state.per_source.get(&source).copied().unwrap_or(0) >= self.max_per_source {
            return Arrival::Refused(Refusal::PerSourceLimit);
        }
        let mut shed = None;
        if state.live >= self.max_total {
            let Some((victim, reason)) = state.victim() else {
                return Arrival::Refused(Refusal::GlobalLimit);
            };
            state.uncount(victim);
            if let Some(entry) = state.entries.get(&victim) {
                entry.shed.cancel();
            }
            shed = Some(reason);
        }
        let id = state.next_id;
        state.next_id += 1;
        let token = CancellationToken::new();
        state.entries.insert(id, Entry { source, opened: Instant::now(), activity: None, shed: token.clone() });
        state.live += 1;
        *state.per_source.entry(source).or_insert(0) += 1;
        Arrival::Admitted { slot: Slot { table: self.clone(), id, shed: token }, shed }
    }

    /// Connections counted against the limits now.
    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.state.lock().expect("the connection table lock is never poisoned").live
    }

    fn established(&self, id: u64, activity: Arc<Activity>) {
        let mut state = self.state.lock().expect("the connection table lock is never poisoned");
        if let Some(entry) = state.entries.get_mut(&id) {
            entry.activity = Some(activity);
        }
    }

    fn release(&self, id: u64) {
        let mut state = self.state.lock().expect("the connection table lock is never poisoned");
        state.uncount(id);
        state.entries.remove(&id);
    }
}

impl State {
    /// The connection to shed for a newcomer: from the address holding the most, a handshake
    /// before an idle connection, the oldest first. Busy connections are never chosen.
    fn victim(&self) -> Option<(u64, Shed)> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.shed.is_cancelled())
            .filter_map(|(id, e)| match &e.activity {
                None => Some((*id, e, Shed::Handshaking)),
                Some(activity) if activity.is_idle() => Some((*id, e, Shed::Idle)),
                Some(_) => None,
            })
            .max_by_key(|(_, e, reason)| {
                let held = self.per_source.get(&e.source).copied().unwrap_or(0);
                (held, *reason == Shed::Handshaking, std::cmp::Reverse(e.opened))
            })
            .map(|(id, _, reason)| (id, reason))
    }

    /// Stops counting a connection against the limits (once: shed, then released).
    fn uncount(&mut self, id: u64) {
        let Some(entry) = self.entries.get(&id) else { return };
        if entry.shed.is_cancelled() {
            return;
        }
        let source = entry.source;
        self.live -= 1;
        if let Some(held) = self.per_source.get_mut(&source) {
            *held -= 1;
            if *held == 0 {
                self.per_source.remove(&source);
            }
        }
    }
}

/// One admitted connection's place in the table, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    table: Arc<ConnectionTable>,
    id: u64,
    shed: CancellationToken,
}

impl Slot {
    /// Cancelled when the table sheds this connection to make room for another.
    pub fn shed(&self) -> &CancellationToken {
        &self.shed
    }

    /// The TLS handshake is done: from now on the connection is shed only while idle.
    pub fn established(&self, activity: Arc<Activity>) {
        self.table.established(self.id, activity);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.release(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn admitted(arrival: Arrival) -> (Slot, Option<Shed>) {
        match arrival {
            Arrival::Admitted { slot, shed } => (slot, shed),
            Arrival::Refused(reason) => panic!("refused: {reason:?}"),
        }
    }

    #[test]
    fn a_source_over_its_limit_is_refused_and_others_are_not() {
        let table = ConnectionTable::new(10, 2);
        let _a = admitted(table.admit(ip(1)));
        let b = admitted(table.admit(ip(1)));
        assert!(matches!(table.admit(ip(1)), Arrival::Refused(Refusal::PerSourceLimit)));
        let (_c, shed) = admitted(table.admit(ip(2)));
        assert_eq!(shed, None);
        drop(b);
        let _d = admitted(table.admit(ip(1)));
        assert_eq!(table.live(), 3);
    }

    #[test]
    fn at_the_cap_the_biggest_holders_oldest_handshake_is_shed_first() {
        let table = ConnectionTable::new(4, 4);
        let hog_old = admitted(table.admit(ip(1))).0;
        let hog_new = admitted(table.admit(ip(1))).0;
        let hog_idle = admitted(table.admit(ip(1))).0;
        hog_idle.established(Activity::new());
        let other = admitted(table.admit(ip(2))).0;

        let (_newcomer, shed) = admitted(table.admit(ip(3)));
        assert_eq!(shed, Some(Shed::Handshaking));
        assert!(hog_old.shed().is_cancelled(), "the hog's oldest handshake goes first");
        assert!(!hog_new.shed().is_cancelled() && !other.shed().is_cancelled());
        assert_eq!(table.live(), 4);

        let (_next, shed) = admitted(table.admit(ip(3)));
        assert_eq!(shed, Some(Shed::Handshaking));
        assert!(hog_new.shed().is_cancelled());
        drop(hog_old);
        drop(hog_new);
        assert_eq!(table.live(), 4);
    }

    #[test]
    fn busy_connections_are_never_shed() {
        let table = ConnectionTable::new(2, 2);
        let busy = Activity::new();
        let a = admitted(table.admit(ip(1))).0;
        a.established(busy.clone());
        let _request = busy.begin();
        let idle = admitted(table.admit(ip(2))).0;
        idle.established(Activity::new());

        let (c, shed) = admitted(table.admit(ip(3)));
        assert_eq!(shed, Some(Shed::Idle));
        assert!(idle.shed().is_cancelled() && !a.shed().is_cancelled());
        let also_busy = Activity::new();
        c.established(also_busy.clone());
        let _other_request = also_busy.begin();
        assert!(matches!(table.admit(ip(4)), Arrival::Refused(Refusal::GlobalLimit)));
        // A shed connection is counted once, not again when its task ends.
        drop(idle);
        assert_eq!(table.live(), 2);
    }
}

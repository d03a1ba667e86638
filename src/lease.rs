//! The lease this node holds and the name it holds on it, as plain data: what each answer of etcd
//! about the lease means (renewed, gone, run out while etcd was unreachable) and what a loss is to
//! be told as. The etcd thread asks etcd and acts on the verdicts; each verdict is tested here.

use std::fmt;
use std::time::{Duration, Instant};

use crate::view::Slot;

/// Lease TTLs beyond this are not believed (they would overflow deadlines).
const MAX_LEASE_TTL: i64 = 7 * 24 * 3600;

/// A lease granted to this node, and what is known of its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: Duration,
    /// When etcd will let it expire at the latest (`boottime`), counted from before the request
    /// that last granted or renewed it.
    pub expires: Duration,
    /// When it was last granted or renewed.
    pub renewed: Instant,
}

impl Lease {
    /// A lease etcd granted or renewed for `ttl` seconds; `before` (`boottime`) and `asked` were
    /// read before the request went out, so the deadline errs early, never late.
    pub fn answered(id: i64, ttl: i64, before: Duration, asked: Instant) -> Lease {
        let ttl = Duration::from_secs(ttl.clamp(1, MAX_LEASE_TTL) as u64);
        Lease { id, ttl, expires: before + ttl, renewed: asked }
    }

    /// When to renew it next: at a third of the TTL, so two renewals can fail before it is at risk.
    pub fn renew_at(&self) -> Instant {
        self.renewed + renew_interval(self.ttl)
    }

    /// Whether the next renewal is due already (a claim that waited may have let it come due).
    pub fn renewal_due(&self, now: Instant) -> bool {
        now >= self.renew_at()
    }
}

pub fn renew_interval(ttl: Duration) -> Duration {
    ttl / 3
}

/// What etcd says, or cannot say, of the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    Alive,
    /// etcd says it no longer knows the lease.
    Gone,
    /// Our own clock says it expired, while etcd could not be asked.
    RanOut,
}

/// The lease, the name held on it, and the slot held last.
#[derive(Debug, Default)]
pub struct Holding {
    pub lease: Option<Lease>,
    /// The name held, if any.
    pub held: Option<String>,
    /// The slot held last, to ask for again after losing the lease; set once a name was held.
    pub last: Option<Slot>,
}

/// What a loss of the name (or of a lease that held none) comes to.
#[derive(Debug, PartialEq, Eq)]
pub enum Loss {
    /// No name was held: nothing is lost. `lease_dropped` when the lease is gone too and the next
    /// claim needs a new one.
    Nothing { lease: i64, lease_dropped: bool },
    /// The name is lost; the lease too unless it is alive (the key was deleted or moved off it).
    Name { name: String, lease: i64, state: LeaseState },
}

impl Holding {
    /// The name was claimed on the lease held.
    pub fn claimed(&mut self, name: String, slot: Slot) {
        self.held = Some(name);
        self.last = Some(slot);
    }

    /// How long the answers may name this node: until the lease may expire, while a name is held.
    pub fn held_until(&self) -> Option<Duration> {
        self.held.as_ref().and(self.lease.map(|l| l.expires))
    }

    /// etcd renewed the lease.
    pub fn renewed(&mut self, lease: Lease) {
        self.lease = Some(lease);
    }

    /// A renewal failed: whether the lease has run out by now (`boottime`), counted from before
    /// the last renewal was asked for, so that etcd has surely let it go.
    pub fn ran_out(&self, now: Duration) -> bool {
        self.lease.is_some_and(|l| now >= l.expires)
    }

    /// Forgets the name, and the lease unless it is alive; the next claim prefers `last`.
    pub fn lose(&mut self, state: LeaseState) -> Loss {
        let lease = self.lease.map_or(0, |l| l.id);
        if state != LeaseState::Alive {
            self.lease = None;
        }
        match self.held.take() {
            // A lease kept through failed claims: nothing was held, so nothing is lost.
            None => Loss::Nothing { lease, lease_dropped: state != LeaseState::Alive },
            Some(name) => Loss::Name { name, lease, state },
        }
    }
}

/// The log line of a lost name.
impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loss::Nothing { lease, lease_dropped: true } => {
                write!(f, "lease {lease:x} is gone; claiming with a new one")
            }
            Loss::Nothing { lease, lease_dropped: false } => write!(f, "lease {lease:x} is kept"),
            Loss::Name { name, lease, state: LeaseState::Gone } => write!(
                f,
                "lease {lease:x} for {name} is gone (expired or revoked): {name} is lost; claiming a name again"
            ),
            Loss::Name { name, lease, state: LeaseState::RanOut } => write!(
                f,
                "lease {lease:x} for {name} ran out while etcd could not be reached: {name} is lost and may go to another node; claiming a name again once etcd answers"
            ),
            Loss::Name { name, lease, state: LeaseState::Alive } => {
                write!(f, "{name} was deleted from etcd or moved off lease {lease:x}; claiming a name again")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: i64, expires_s: u64) -> Lease {
        Lease { id, ttl: Duration::from_secs(9), expires: Duration::from_secs(expires_s), renewed: Instant::now() }
    }

    fn holding(held: Option<&str>) -> Holding {
        let slot = Slot { role: 0, id: 3 };
        Holding { lease: Some(lease(0xab, 100)), held: held.map(String::from), last: held.map(|_| slot) }
    }

    #[test]
    fn a_loss_with_no_name_held_loses_nothing() {
        for (state, lease_dropped) in [(LeaseState::Gone, true), (LeaseState::RanOut, true), (LeaseState::Alive, false)]
        {
            let mut h = holding(None);
            assert_eq!(h.lose(state), Loss::Nothing { lease: 0xab, lease_dropped }, "{state:?}");
            assert_eq!(h.lease.is_some(), !lease_dropped, "{state:?}");
        }
    }

    #[test]
    fn a_loss_of_the_name_keeps_the_lease_only_while_it_lives() {
        for (state, kept, says) in [
            (LeaseState::Gone, false, "lease ab for w3. is gone (expired or revoked): w3. is lost"),
            (LeaseState::RanOut, false, "lease ab for w3. ran out while etcd could not be reached"),
            (LeaseState::Alive, true, "w3. was deleted from etcd or moved off lease ab"),
        ] {
            let mut h = holding(Some("w3."));
            let loss = h.lose(state);
            assert_eq!(loss, Loss::Name { name: "w3.".into(), lease: 0xab, state });
            assert!(loss.to_string().starts_with(says), "{loss}");
            assert_eq!((h.held.as_deref(), h.lease.is_some(), h.last), (None, kept, Some(Slot { role: 0, id: 3 })));
            assert_eq!(h.held_until(), None, "no answer names this node any more");
        }
    }

    #[test]
    fn the_answers_name_this_node_until_its_lease_may_expire() {
        assert_eq!(holding(None).held_until(), None);
        assert_eq!(holding(Some("w3.")).held_until(), Some(Duration::from_secs(100)));
        let mut h = holding(Some("w3."));
        h.renewed(lease(0xab, 130));
        assert_eq!(h.held_until(), Some(Duration::from_secs(130)));
    }

    #[test]
    fn a_lease_runs_out_at_its_deadline_as_counted_before_it_was_renewed() {
        let h = holding(Some("w3."));
        assert!(!h.ran_out(Duration::from_secs(99)));
        assert!(h.ran_out(Duration::from_secs(100)));
        assert!(!Holding::default().ran_out(Duration::from_secs(1000)), "no lease, nothing to run out");
        let asked = Instant::now();
        let granted = Lease::answered(1, 30, Duration::from_secs(5), asked);
        assert_eq!(
            (granted.ttl, granted.expires, granted.renew_at()),
            (Duration::from_secs(30), Duration::from_secs(35), asked + Duration::from_secs(10))
        );
        assert_eq!(Lease::answered(1, 0, Duration::ZERO, asked).ttl, Duration::from_secs(1), "at least a second");
        assert_eq!(Lease::answered(1, i64::MAX, Duration::ZERO, asked).ttl, Duration::from_secs(MAX_LEASE_TTL as u64));
        assert!(!granted.renewal_due(asked) && granted.renewal_due(asked + Duration::from_secs(10)));
    }
}

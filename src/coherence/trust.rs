//! The trust gate: until when this replica may answer from its caches, written to the
//! `auth::Trust` deadline they read. The earlier of the lease's and the credential watch's bounds, and "not at
//! all" before a registration completed and the watch caught up with it.

use std::sync::Mutex;

use tokio::time::Instant;

use crate::auth::Trust;
use crate::meta::Revision;

/// Decides until when this replica may answer and writes that deadline to `Trust`:
/// the earlier of what the session's lease and the credential watch's liveness allow, and
/// "not at all" before a registration completed and the watch caught up with it.
pub(super) struct TrustGate {
    trust: Trust,
    state: Mutex<TrustGateState>,
}

struct TrustGateState {
    /// The revision of the completed registration, if there is one.
    registered_at: Option<Revision>,
    lease_until: Instant,
    /// The newest revision the credential watch has confirmed.
    followed: Revision,
    watch_until: Instant,
}

impl TrustGate {
    pub(super) fn new(trust: Trust) -> TrustGate {
        let now = Instant::now();
        let gate = TrustGate {
            trust,
            state: Mutex::new(TrustGateState {
                registered_at: None,
                lease_until: now,
                followed: 0,
                watch_until: now,
            }),
        };
        gate.update(|_| {});
        gate
    }

    fn update(&self, change: impl FnOnce(&mut TrustGateState)) {
        // Held only for these few assignments; poisoning would mean a panic in them: a bug.
        let mut state = self.state.lock().expect("trust gate lock poisoned");
        change(&mut state);
        let until = match state.registered_at {
            Some(at) if state.followed >= at => state.lease_until.min(state.watch_until),
            _ => Instant::now(),
        };
        self.trust.until(Some(until));
    }

    pub(super) fn registered(&self, at: Revision, lease_until: Instant) {
        self.update(|s| {
            s.registered_at = Some(at);
            s.lease_until = lease_until;
        });
    }

    pub(super) fn unregistered(&self) {
        self.update(|s| s.registered_at = None);
    }

    pub(super) fn lease_renewed(&self, until: Instant) {
        self.update(|s| s.lease_until = until);
    }

    pub(super) fn watch_heard(&self, followed: Revision, until: Instant) {
        self.update(|s| {
            s.followed = s.followed.max(followed);
            s.watch_until = until;
        });
    }

    /// Whether the credential watch has answered within its bound.
    pub(super) fn watch_live(&self) -> bool {
        let state = self.state.lock().expect("trust gate lock poisoned");
        state.watch_until > Instant::now()
    }

    pub(super) fn watch_lost(&self) {
        self.update(|s| s.watch_until = Instant::now());
    }
}

//! Single-flight: concurrent misses on one key in one process run the handler (or loader) once.
//!
//! The first caller for a key becomes the **leader** and gets a [`Lead`]; later callers become
//! **followers** and wait, bounded, for what the leader lands: an entry to answer with, word that
//! the result was not shareable (they then run the handler themselves), or word that the leader
//! was cancelled (they race to become the next leader). Dropping a [`Lead`] without landing it
//! counts as cancellation, so a leader whose client went away never leaves followers hanging.

use crate::entry::Entry;
use crate::stats::Counters;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// What a leader hands its followers.
#[derive(Clone, Debug)]
pub(crate) enum Landing {
    /// The entry the leader stored (or served), and the invalidation clock its fill read.
    /// A follower answers with it only if its own read saw the same clock: otherwise an
    /// invalidation happened in between and the entry may predate a write the follower must see.
    Entry(Arc<Entry>, Stamp),
    /// The leader's result is not shareable (not cacheable, failed): followers run on their own.
    Unshareable,
    /// The leader went away before landing: followers try to lead.
    Cancelled,
}

/// When a fill's read happened: the store's invalidation clock (None when the store could not be
/// read) and this process's invalidation epoch. Equal stamps mean no invalidation in between.
pub(crate) type Stamp = (Option<u64>, u64);

type Slot = watch::Receiver<Option<Landing>>;

#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Arc<Mutex<HashMap<String, Slot>>>,
}

/// The outcome of [`Flights::join`].
pub(crate) enum Join {
    Lead(Lead),
    Follow(Slot),
}

/// Held by the leader of a flight; see the module docs.
#[derive(Debug)]
pub(crate) struct Lead {
    map: Arc<Mutex<HashMap<String, Slot>>>,
    key: String,
    tx: watch::Sender<Option<Landing>>,
    landed: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The map only holds channel handles; a panic while it was held cannot corrupt it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Flights {
    /// Leads the flight for `key`, or follows the one in progress.
    pub(crate) fn join(&self, key: &str) -> Join {
        let mut map = lock(&self.map);
        if let Some(rx) = map.get(key) {
            // A finished flight whose leader has not removed it yet is as good as absent.
            if rx.borrow().is_none() && rx.has_changed().is_ok() {
                return Join::Follow(rx.clone());
            }
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.to_owned(), rx);
        Join::Lead(Lead {
            map: self.map.clone(),
            key: key.to_owned(),
            tx,
            landed: false,
        })
    }

    /// Leads the flight for `key` only if none is in progress (background refreshes).
    pub(crate) fn try_lead(&self, key: &str) -> Option<Lead> {
        match self.join(key) {
            Join::Lead(l) => Some(l),
            Join::Follow(_) => None,
        }
    }
}

/// Waits up to `wait` for the leader, counted in [`Stats::waiting`](crate::Stats::waiting)
/// meanwhile; a timeout reads as [`Landing::Unshareable`] (run alone).
pub(crate) async fn follow(mut rx: Slot, wait: Duration, counters: &Counters) -> Landing {
    let _waiting = counters.waiting();
    match tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await {
        Ok(Ok(v)) => v.clone().unwrap_or(Landing::Cancelled),
        Ok(Err(_)) => Landing::Cancelled,
        Err(_) => Landing::Unshareable,
    }
}

impl Lead {
    /// Hands `landing` to the followers and ends the flight.
    pub(crate) fn land(mut self, landing: Landing) {
        self.finish(landing);
    }

    fn finish(&mut self, landing: Landing) {
        if self.landed {
            return;
        }
        self.landed = true;
        let mut map = lock(&self.map);
        // Remove our slot (not a newer flight's) so the next miss starts a new flight.
        if map
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            map.remove(&self.key);
        }
        drop(map);
        self.tx.send_replace(Some(landing));
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        self.finish(Landing::Cancelled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_landing() {
        let f = Flights::default();
        let Join::Lead(lead) = f.join("k") else {
            panic!("first caller leads")
        };
        let Join::Follow(rx) = f.join("k") else {
            panic!("second caller follows")
        };
        let waiter =
            tokio::spawn(
                async move { follow(rx, Duration::from_secs(5), &Counters::default()).await },
            );
        lead.land(Landing::Unshareable);
        assert!(matches!(waiter.await.unwrap(), Landing::Unshareable));
        assert!(
            matches!(f.join("k"), Join::Lead(_)),
            "a landed flight is over"
        );
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_followers() {
        let f = Flights::default();
        let lead = f.join("k");
        let Join::Follow(rx) = f.join("k") else {
            panic!()
        };
        drop(lead);
        assert!(matches!(
            follow(rx, Duration::from_secs(5), &Counters::default()).await,
            Landing::Cancelled
        ));
    }

    #[tokio::test]
    async fn follow_is_bounded() {
        let f = Flights::default();
        let _lead = f.join("k");
        let Join::Follow(rx) = f.join("k") else {
            panic!()
        };
        assert!(matches!(
            follow(rx, Duration::from_millis(10), &Counters::default()).await,
            Landing::Unshareable
        ));
    }
}

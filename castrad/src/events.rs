//! The daemon-wide event bus.
//!
//! Every event gets a strictly increasing `seq` and a timestamp, goes into a bounded ring
//! buffer (so a client that subscribes late can replay what it missed) and to every live
//! subscriber. Publishing never blocks: live delivery is a `broadcast` channel, and a
//! subscriber that falls behind recovers the gap from the ring (or learns it was lost).
//!
//! Invariant: a subscription sees each matching event at most once and in `seq` order. The
//! ring append and the broadcast send happen under one lock, and a subscription takes its
//! replay snapshot and its broadcast receiver under the same lock, so nothing falls between
//! replay and live delivery.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use castra_api::{Event, EventEnvelope};

use tokio::sync::broadcast;

/// How many events the replay buffer keeps.
pub const RING_CAPACITY: usize = 16_384;
/// How many events a live subscriber may lag before it falls back to the ring.
const LIVE_CAPACITY: usize = 4_096;

#[derive(Debug)]
struct Inner {
    next_seq: u64,
    ring: VecDeque<Arc<EventEnvelope>>,
}

#[derive(Debug, Clone)]
pub struct EventBus {
    inner: Arc<Mutex<Inner>>,
    live: broadcast::Sender<Arc<EventEnvelope>>,
    capacity: usize,
}

/// Which events a subscriber wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub operation: Option<String>,
    pub vm: Option<String>,
}

impl Filter {
    pub fn matches(&self, e: &EventEnvelope) -> bool {
        self.operation
            .as_ref()
            .is_none_or(|op| e.operation.as_ref() == Some(op))
            && self.vm.as_ref().is_none_or(|vm| e.event.vm() == vm)
    }
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::with_capacity(RING_CAPACITY)
    }
}

impl EventBus {
    pub fn with_capacity(capacity: usize) -> EventBus {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        EventBus {
            inner: Arc::new(Mutex::new(Inner {
                next_seq: 1,
                ring: VecDeque::new(),
            })),
            live,
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Held only for push/pop/clone; a panic there cannot leave the ring inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every event still in the ring, oldest first (for tests that inspect what was said).
    #[cfg(test)]
    pub fn history(&self) -> Vec<Arc<EventEnvelope>> {
        self.lock().ring.iter().cloned().collect()
    }

    /// Publishes `event`, returns its seq.
    pub fn publish(&self, operation: Option<&str>, event: Event) -> u64 {
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let envelope = Arc::new(EventEnvelope {
            seq,
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            operation: operation.map(str::to_owned),
            event,
        });
        if inner.ring.len() == self.capacity {
            inner.ring.pop_front();
        }
        inner.ring.push_back(envelope.clone());
        // No receivers is fine: nobody is listening.
        let _ = self.live.send(envelope);
        seq
    }

    /// Subscribes; with `since`, first replays buffered events with a greater seq.
    pub fn subscribe(&self, filter: Filter, since: Option<u64>) -> Subscription {
        let inner = self.lock();
        let backlog: VecDeque<_> = match since {
            Some(since) => inner
                .ring
                .iter()
                .filter(|e| e.seq > since && filter.matches(e))
                .cloned()
                .collect(),
            None => VecDeque::new(),
        };
        let last_seq = inner.next_seq - 1;
        let live = self.live.subscribe();
        drop(inner);
        Subscription {
            bus: self.clone(),
            filter,
            backlog,
            live,
            last_seq,
        }
    }

    /// The seq of the newest event published so far.
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }
}

/// A stream of matching events, replay first.
#[derive(Debug)]
pub struct Subscription {
    bus: EventBus,
    filter: Filter,
    backlog: VecDeque<Arc<EventEnvelope>>,
    live: broadcast::Receiver<Arc<EventEnvelope>>,
    /// Highest seq already delivered or skipped (by the replay snapshot or live delivery).
    last_seq: u64,
}

/// A subscriber fell so far behind that events left the ring before it could read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("subscriber fell behind: events {from}..={to} were dropped from the replay buffer")]
pub struct Lost {
    pub from: u64,
    pub to: u64,
}

impl Subscription {
    /// The next matching event; `Ok(None)` when the bus is gone.
    pub async fn next(&mut self) -> Result<Option<Arc<EventEnvelope>>, Lost> {
        if let Some(e) = self.backlog.pop_front() {
            return Ok(Some(e));
        }
        loop {
            match self.live.recv().await {
                Ok(e) => {
                    if e.seq <= self.last_seq {
                        continue;
                    }
                    self.last_seq = e.seq;
                    if self.filter.matches(&e) {
                        return Ok(Some(e));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Refill from the ring what the live channel dropped.
                    let inner = self.bus.lock();
                    let oldest = inner.ring.front().map_or(inner.next_seq, |e| e.seq);
                    let missed_from = self.last_seq + 1;
                    self.backlog = inner
                        .ring
                        .iter()
                        .filter(|e| e.seq > self.last_seq && self.filter.matches(e))
                        .cloned()
                        .collect();
                    let newest = inner.next_seq - 1;
                    drop(inner);
                    // Live messages up to `newest` are now in the backlog; skip them later.
                    self.last_seq = newest;
                    if oldest > missed_from {
                        return Err(Lost {
                            from: missed_from,
                            to: oldest - 1,
                        });
                    }
                    if let Some(e) = self.backlog.pop_front() {
                        return Ok(Some(e));
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use castra_api::Event;

    fn failed(vm: &str) -> Event {
        Event::BootstrapFailed {
            vm: vm.into(),
            duration_ms: 1,
            error: "x".into(),
        }
    }

    #[tokio::test]
    async fn seq_increases_and_late_subscribers_replay_from_since() {
        let bus = EventBus::with_capacity(100);
        let a = bus.publish(Some("op1"), failed("a"));
        let b = bus.publish(Some("op2"), failed("b"));
        let c = bus.publish(Some("op1"), failed("c"));
        assert!(a < b && b < c);

        let mut sub = bus.subscribe(
            Filter {
                operation: Some("op1".into()),
                vm: None,
            },
            Some(0),
        );
        assert_eq!(sub.next().await.unwrap().unwrap().seq, a);
        assert_eq!(sub.next().await.unwrap().unwrap().seq, c);
        let d = bus.publish(Some("op1"), failed("d"));
        bus.publish(Some("op2"), failed("e"));
        assert_eq!(sub.next().await.unwrap().unwrap().seq, d);

        let mut from_b = bus.subscribe(Filter::default(), Some(b));
        let seqs: Vec<u64> = [
            from_b.next().await,
            from_b.next().await,
            from_b.next().await,
        ]
        .into_iter()
        .map(|e| e.unwrap().unwrap().seq)
        .collect();
        assert_eq!(seqs, vec![c, d, d + 1]);
    }

    #[tokio::test]
    async fn without_since_only_new_events_arrive() {
        let bus = EventBus::with_capacity(100);
        bus.publish(None, failed("old"));
        let mut sub = bus.subscribe(
            Filter {
                operation: None,
                vm: Some("new".into()),
            },
            None,
        );
        bus.publish(None, failed("other"));
        let seq = bus.publish(None, failed("new"));
        let e = sub.next().await.unwrap().unwrap();
        assert_eq!((e.seq, e.event.vm()), (seq, "new"));
    }

    #[tokio::test]
    async fn a_lagging_subscriber_recovers_from_the_ring_without_duplicates() {
        let bus = EventBus::with_capacity(LIVE_CAPACITY * 4);
        let mut sub = bus.subscribe(Filter::default(), None);
        let n = LIVE_CAPACITY as u64 * 2;
        for i in 0..n {
            bus.publish(None, failed(&format!("vm{i}")));
        }
        let mut seen = Vec::new();
        for _ in 0..n {
            seen.push(sub.next().await.unwrap().unwrap().seq);
        }
        let want: Vec<u64> = (1..=n).collect();
        assert_eq!(seen, want);
        let last = bus.publish(None, failed("after"));
        assert_eq!(sub.next().await.unwrap().unwrap().seq, last);
    }

    #[tokio::test]
    async fn losing_events_beyond_the_ring_is_reported() {
        let bus = EventBus::with_capacity(10);
        let mut sub = bus.subscribe(Filter::default(), None);
        for i in 0..(LIVE_CAPACITY as u64 + 50) {
            bus.publish(None, failed(&format!("vm{i}")));
        }
        let err = sub.next().await.unwrap_err();
        assert_eq!(err.from, 1);
        assert!(err.to >= LIVE_CAPACITY as u64, "{err:?}");
        // After the report, delivery continues from what the ring still holds.
        assert!(sub.next().await.unwrap().unwrap().seq > err.to);
    }
}

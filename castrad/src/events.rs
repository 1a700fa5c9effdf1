//! The daemon-wide event bus.
//!
//! Every event gets a strictly increasing `seq` and a timestamp and goes into a ring buffer
//! bounded both by count ([`RING_CAPACITY`]) and by size ([`RING_BYTES`], what its events hold
//! in memory, about), so that a client that subscribes late can replay what it missed and a
//! guest that floods its output cannot grow castrad. The ring is the only place events are
//! kept: a subscriber reads its next event from the ring, and a `watch` channel holding the
//! newest seq wakes subscribers that are waiting. Publishing never blocks; a subscriber that
//! falls behind further than the ring reaches learns which events it lost.
//!
//! Invariant: a subscription sees each matching event at most once and in `seq` order. The
//! ring is appended and read under one lock, and a subscriber remembers the last seq it
//! passed, so nothing falls between replay and live delivery.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use castra_api::{Event, EventEnvelope};

use tokio::sync::watch;

/// How many events the replay buffer keeps at most.
pub const RING_CAPACITY: usize = 16_384;
/// How many bytes the replay buffer's events may hold, about (8 MiB): as many as 128 lines of
/// guest output at their longest (`ssh::LINE_CAP`), or the whole count of ordinary events.
pub const RING_BYTES: usize = 8 << 20;
/// What an event costs beyond the text it carries (the envelope, its time, the Arc), about.
const EVENT_OVERHEAD: usize = 256;

#[derive(Debug)]
struct Inner {
    next_seq: u64,
    ring: VecDeque<Arc<EventEnvelope>>,
    /// The sum of the ring's events' [`weight`]s.
    bytes: usize,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    /// The newest seq, for subscribers waiting on the next event.
    newest: watch::Sender<u64>,
    capacity: usize,
    max_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct EventBus {
    shared: Arc<Shared>,
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
        EventBus::with_limits(RING_CAPACITY, RING_BYTES)
    }
}

/// About how many bytes `e` holds in memory: the text it carries and a fixed overhead.
fn weight(e: &EventEnvelope) -> usize {
    let text = match &e.event {
        Event::BootstrapOutput { line, .. } => line.len(),
        Event::BootstrapStep { detail, .. } => detail.as_ref().map_or(0, String::len),
        Event::BootstrapProgress { waiting_on, .. } => waiting_on.len(),
        Event::BootstrapFailed { error, .. } => error.len(),
        Event::VizierLost { reason, .. }
        | Event::VmExited { reason, .. }
        | Event::CooperativeTimedOut { reason, .. } => reason.len(),
        _ => 0,
    };
    let operation = e.operation.as_ref().map_or(0, String::len);
    EVENT_OVERHEAD + e.event.vm().len() + operation + text
}

impl EventBus {
    /// A bus whose ring keeps at most `capacity` events and about `max_bytes` of them (always
    /// the newest event, however large).
    pub fn with_limits(capacity: usize, max_bytes: usize) -> EventBus {
        let (newest, _) = watch::channel(0);
        EventBus {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    next_seq: 1,
                    ring: VecDeque::new(),
                    bytes: 0,
                }),
                newest,
                capacity: capacity.max(1),
                max_bytes,
            }),
        }
    }

    pub fn with_capacity(capacity: usize) -> EventBus {
        EventBus::with_limits(capacity, RING_BYTES)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Held only for push/pop/clone; a panic there cannot leave the ring inconsistent.
        self.shared.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every event still in the ring, oldest first (for tests that inspect what was said).
    #[cfg(test)]
    pub fn history(&self) -> Vec<Arc<EventEnvelope>> {
        self.lock().ring.iter().cloned().collect()
    }

    /// How many events the ring holds and about how many bytes they hold.
    pub fn ring_size(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.ring.len(), inner.bytes)
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
        inner.bytes += weight(&envelope);
        inner.ring.push_back(envelope);
        while inner.ring.len() > self.shared.capacity
            || (inner.bytes > self.shared.max_bytes && inner.ring.len() > 1)
        {
            let Some(old) = inner.ring.pop_front() else {
                break;
            };
            inner.bytes -= weight(&old);
        }
        drop(inner);
        // Stored even when nobody waits (a later subscriber reads the ring).
        self.shared.newest.send_replace(seq);
        seq
    }

    /// Subscribes; with `since`, first replays buffered events with a greater seq (those
    /// still in the ring).
    pub fn subscribe(&self, filter: Filter, since: Option<u64>) -> Subscription {
        let inner = self.lock();
        let newest = inner.next_seq - 1;
        let oldest = inner.ring.front().map_or(inner.next_seq, |e| e.seq);
        let last_seq = match since {
            Some(since) => since.min(newest).max(oldest - 1),
            None => newest,
        };
        drop(inner);
        Subscription {
            bus: self.clone(),
            filter,
            newest: self.shared.newest.subscribe(),
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
    newest: watch::Receiver<u64>,
    /// Highest seq already delivered or passed over.
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
    /// The next matching event; `Ok(None)` when the bus is gone; `Err` once for each run of
    /// events that left the ring before this subscriber got to them (delivery then goes on
    /// from the oldest event the ring still has).
    pub async fn next(&mut self) -> Result<Option<Arc<EventEnvelope>>, Lost> {
        loop {
            // Seen before looking, so a publish after the look wakes the wait below.
            self.newest.borrow_and_update();
            {
                let inner = self.bus.lock();
                let oldest = inner.ring.front().map_or(inner.next_seq, |e| e.seq);
                if self.last_seq + 1 < oldest {
                    let lost = Lost {
                        from: self.last_seq + 1,
                        to: oldest - 1,
                    };
                    self.last_seq = oldest - 1;
                    return Err(lost);
                }
                // The ring holds consecutive seqs from `oldest`.
                let start = (self.last_seq + 1 - oldest) as usize;
                for e in inner.ring.range(start.min(inner.ring.len())..) {
                    self.last_seq = e.seq;
                    if self.filter.matches(e) {
                        return Ok(Some(e.clone()));
                    }
                }
            }
            if self.newest.changed().await.is_err() {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use castra_api::{BootstrapStepKind, Event, OutputStream};

    fn failed(vm: &str) -> Event {
        Event::BootstrapFailed {
            vm: vm.into(),
            duration_ms: 1,
            error: "x".into(),
        }
    }

    fn output(line: String) -> Event {
        Event::BootstrapOutput {
            vm: "v".into(),
            step: BootstrapStepKind::Apply,
            stream: OutputStream::Stdout,
            line,
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
    async fn a_waiting_subscriber_wakes_for_the_next_event() {
        let bus = EventBus::with_capacity(100);
        let mut sub = bus.subscribe(Filter::default(), None);
        let publisher = bus.clone();
        let later = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            publisher.publish(None, failed("late"))
        });
        let e = sub.next().await.unwrap().unwrap();
        assert_eq!(e.seq, later.await.unwrap());
    }

    #[tokio::test]
    async fn a_slow_subscriber_gets_everything_the_ring_still_holds_without_duplicates() {
        let bus = EventBus::with_capacity(10_000);
        let mut sub = bus.subscribe(Filter::default(), None);
        let n = 8_000;
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
        for i in 0..50 {
            bus.publish(None, failed(&format!("vm{i}")));
        }
        let err = sub.next().await.unwrap_err();
        assert_eq!((err.from, err.to), (1, 40));
        // After the report, delivery continues from what the ring still holds.
        assert_eq!(sub.next().await.unwrap().unwrap().seq, 41);
    }

    /// Issue 14 item 8: a flood of long output lines keeps the ring within its byte bound
    /// (not 16 384 lines of 64 KiB = 1 GiB), and the newest events stay replayable.
    #[tokio::test]
    async fn the_ring_is_bounded_by_bytes_as_well_as_count() {
        let bus = EventBus::with_limits(RING_CAPACITY, 1 << 20);
        let line = "x".repeat(64 << 10);
        let mut last = 0;
        for _ in 0..100 {
            last = bus.publish(Some("op"), output(line.clone()));
        }
        let (count, bytes) = bus.ring_size();
        assert!(bytes <= 1 << 20, "{bytes} bytes");
        assert_eq!(count, 15, "as many 64 KiB lines as fit in 1 MiB");
        let mut sub = bus.subscribe(Filter::default(), Some(0));
        let first = sub.next().await.unwrap().unwrap().seq;
        assert_eq!(first, last - 14);
        // A single event over the bound is kept (it is the newest).
        let tiny = EventBus::with_limits(10, 100);
        let only = tiny.publish(None, output(line));
        assert_eq!(
            tiny.history().iter().map(|e| e.seq).collect::<Vec<_>>(),
            [only]
        );
        assert_eq!(tiny.ring_size().0, 1);
    }
}

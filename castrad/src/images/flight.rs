//! Transfers in flight in this castrad: one task per source, however many callers wait for it.
//!
//! [`Flights`] maps a source's key to a [`Weak`] of its [`Flight`]; every caller waiting holds
//! an [`Arc`] of it. The transfer runs in a task of its own and publishes its progress and
//! then its result on a `watch` channel, which each waiter follows at its own pace (a slow
//! progress callback only skips intermediate values). When the last waiter drops its future,
//! the `Flight` drops: the task is aborted and blocking work sees [`Reporter::cancelled`], so
//! nobody's bandwidth or disk is spent on an image no one waits for. What the transfer had
//! written stays as its partial file (resumed next time).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{ImageError, Phase, Progress, Stored};

/// The least time between two progress reports.
pub(super) const REPORT_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub(super) enum Status {
    Running(Option<Progress>),
    Finished(Result<Stored, Arc<ImageError>>),
}

/// The transfer's side: progress out (at most every [`REPORT_EVERY`]), cancellation in.
#[derive(Debug)]
pub(super) struct Reporter {
    tx: watch::Sender<Status>,
    cancel: AtomicBool,
    source: String,
    rate: Mutex<Rate>,
}

#[derive(Debug)]
struct Rate {
    last_sent: Option<Instant>,
    phase: Option<Phase>,
    /// When the phase began, and how much was done then (a resumed download's rate counts
    /// only what it fetched).
    since: Instant,
    base: u64,
    last_rate: u64,
}

impl Reporter {
    fn new(source: String) -> (Arc<Reporter>, watch::Receiver<Status>) {
        let (tx, rx) = watch::channel(Status::Running(None));
        let reporter = Reporter {
            tx,
            cancel: AtomicBool::new(false),
            source,
            rate: Mutex::new(Rate {
                last_sent: None,
                phase: None,
                since: Instant::now(),
                base: 0,
                last_rate: 0,
            }),
        };
        (Arc::new(reporter), rx)
    }

    /// Where the transfer is; published unless the last report is younger than
    /// [`REPORT_EVERY`]. Callable from any thread.
    pub fn progress(&self, phase: Phase, done: u64, total: Option<u64>) {
        let now = Instant::now();
        let mut rate = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        if rate.phase != Some(phase) {
            rate.phase = Some(phase);
            rate.since = now;
            rate.base = done;
        }
        if rate
            .last_sent
            .is_some_and(|t| now.duration_since(t) < REPORT_EVERY)
        {
            return;
        }
        let secs = now.duration_since(rate.since).as_secs_f64();
        let bytes_per_sec = if secs > 0.0 {
            (done.saturating_sub(rate.base) as f64 / secs) as u64
        } else {
            0
        };
        rate.last_sent = Some(now);
        rate.last_rate = bytes_per_sec;
        drop(rate);
        let progress = Progress {
            source: self.source.clone(),
            phase,
            done,
            total,
            rate: bytes_per_sec,
        };
        // Never over a result (blocking work may report once more after an abort).
        self.tx.send_if_modified(|status| match status {
            Status::Finished(_) => false,
            Status::Running(_) => {
                *status = Status::Running(Some(progress));
                true
            }
        });
    }

    /// True once no one waits for the transfer any more.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn last_rate(&self) -> u64 {
        self.rate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_rate
    }

    fn finish(&self, result: Result<Stored, ImageError>) {
        self.tx
            .send_replace(Status::Finished(result.map_err(Arc::new)));
    }
}

/// One transfer and its waiters' view of it. Dropping the last `Arc` stops the transfer.
#[derive(Debug)]
pub(super) struct Flight {
    reporter: Arc<Reporter>,
    rx: watch::Receiver<Status>,
    task: tokio::task::AbortHandle,
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.reporter.cancel.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

/// Sends a result when the task ends without one (it panicked, or was aborted), so that no
/// waiter waits forever.
struct FinishOnDrop(Arc<Reporter>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        if !matches!(*self.0.tx.borrow(), Status::Finished(_)) {
            self.0.finish(Err(ImageError::Transfer {
                url: self.0.source.clone(),
                message: "the transfer stopped before it was done".into(),
            }));
        }
    }
}

impl Flight {
    fn start<F>(source: String, work: impl FnOnce(Arc<Reporter>) -> F) -> Arc<Flight>
    where
        F: Future<Output = Result<Stored, ImageError>> + Send + 'static,
    {
        let (reporter, rx) = Reporter::new(source);
        let fut = work(Arc::clone(&reporter));
        let guard = FinishOnDrop(Arc::clone(&reporter));
        let task = tokio::spawn(async move {
            let result = fut.await;
            guard.0.finish(result);
            drop(guard);
        });
        Arc::new(Flight {
            reporter,
            rx,
            task: task.abort_handle(),
        })
    }

    fn finished(&self) -> bool {
        matches!(*self.rx.borrow(), Status::Finished(_))
    }

    /// Follows the transfer to its end: each progress `progress` has not seen yet, then a
    /// last one with [`Phase::Done`] when the image is in the store.
    pub async fn wait(
        &self,
        progress: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<Stored, ImageError> {
        let mut rx = self.rx.clone();
        let mut seen: Option<Progress> = None;
        loop {
            let status = rx.borrow_and_update().clone();
            match status {
                Status::Finished(result) => {
                    let stored = result.map_err(|e| e.duplicate())?;
                    let size = stored.record.size;
                    progress(&Progress {
                        source: self.reporter.source.clone(),
                        phase: Phase::Done,
                        done: size,
                        total: Some(size),
                        rate: self.reporter.last_rate(),
                    });
                    return Ok(stored);
                }
                Status::Running(Some(p)) if seen.as_ref() != Some(&p) => {
                    progress(&p);
                    seen = Some(p);
                }
                Status::Running(_) => {}
            }
            if rx.changed().await.is_err() && !matches!(*rx.borrow(), Status::Finished(_)) {
                return Err(ImageError::Transfer {
                    url: self.reporter.source.clone(),
                    message: "the transfer stopped before it was done".into(),
                });
            }
        }
    }
}

/// The transfers in flight, by source key.
#[derive(Debug, Default)]
pub(super) struct Flights {
    map: Mutex<HashMap<String, Weak<Flight>>>,
}

impl Flights {
    /// The transfer of `key` in flight, or a new one running `work` (a finished transfer is
    /// not joined: its result may be stale, e.g. an error since fixed).
    pub fn join_or_start<F>(
        &self,
        key: &str,
        source: String,
        work: impl FnOnce(Arc<Reporter>) -> F,
    ) -> Arc<Flight>
    where
        F: Future<Output = Result<Stored, ImageError>> + Send + 'static,
    {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(flight) = map.get(key).and_then(Weak::upgrade)
            && !flight.finished()
        {
            return flight;
        }
        let flight = Flight::start(source, work);
        map.insert(key.to_owned(), Arc::downgrade(&flight));
        flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> Stored {
        Stored {
            path: "/s/sha256-x".into(),
            record: super::super::Record {
                sha256: "x".into(),
                sha512: None,
                size: 3,
                format: "raw".into(),
                virtual_size: 3,
                origins: vec![],
                identity: super::super::FileIdentity {
                    dev: 0,
                    ino: 0,
                    size: 3,
                    mtime_ns: 0,
                    ctime_ns: 0,
                },
            },
        }
    }

    #[tokio::test]
    async fn waiters_share_one_run_and_each_sees_done() {
        let flights = Flights::default();
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let start = |runs: Arc<std::sync::atomic::AtomicUsize>| {
            move |r: Arc<Reporter>| async move {
                runs.fetch_add(1, Ordering::SeqCst);
                r.progress(Phase::Download, 1, Some(3));
                tokio::time::sleep(Duration::from_millis(30)).await;
                Ok(stored())
            }
        };
        let a = flights.join_or_start("k", "src".into(), start(runs.clone()));
        let b = flights.join_or_start("k", "src".into(), start(runs.clone()));
        let (mut pa, mut pb) = (Vec::new(), Vec::new());
        let (mut ca, mut cb) = (
            |p: &Progress| pa.push(p.phase),
            |p: &Progress| pb.push(p.phase),
        );
        let (ra, rb) = tokio::join!(a.wait(&mut ca), b.wait(&mut cb));
        assert_eq!((ra.unwrap(), rb.unwrap()), (stored(), stored()));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(pa, [Phase::Download, Phase::Done]);
        assert_eq!(pb, pa);
    }

    #[tokio::test]
    async fn the_last_waiter_gone_stops_the_run() {
        let flights = Flights::default();
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<Arc<Reporter>>();
        let flight = flights.join_or_start("k", "src".into(), move |r| async move {
            let _ = seen_tx.send(Arc::clone(&r));
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(stored())
        });
        let reporter = seen_rx.await.unwrap();
        assert!(!reporter.cancelled());
        drop(flight);
        assert!(reporter.cancelled());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(matches!(*reporter.tx.borrow(), Status::Finished(Err(_))));
    }
}

//! Image fetches (`ImageFetch` events) as they go: a byte bar with the size, speed and time
//! left on a terminal (a VM's line of `up`'s board turns into one while its image is fetched;
//! `castractl image pull` draws one per image), thinned plain lines otherwise, JSON lines with
//! `--json`. The numbers are castrad's (`bytes_done`, `bytes_total`, `rate_bps`), so what the
//! bar says does not depend on how often events arrive.

use std::time::{Duration, Instant};

use castra_api as api;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};
use serde_json::value::RawValue;

use super::{DONE_TEMPLATE, PlainFeed, json_line, style};
use crate::{render, term};

/// A VM's line of `up`'s board while its image is fetched: the bar, then what
/// [`render::event_tail`] says.
pub(super) const BOARD_TEMPLATE: &str =
    "{spinner:.cyan} {prefix}  {elapsed:>4}  [{bar:24.cyan/blue}] {wide_msg}";

/// An image's line of `image pull`: its VM (when a project's), the bar, the numbers, the
/// source. Before the size is known (or when the server does not say it), a spinner.
const PULL_TEMPLATE: &str = "{spinner:.cyan} {prefix}[{bar:24.cyan/blue}] {wide_msg}";
const PULL_SPINNER_TEMPLATE: &str = "{spinner:.cyan} {prefix}{wide_msg}";

/// Shows a fetch of `total` bytes, `done` of them so far, on `bar` (`styled`: it already is a
/// byte bar). Returns false, leaving the bar as it is, when the size is not known.
pub(super) fn on_bar(bar: &ProgressBar, styled: bool, done: u64, total: Option<u64>) -> bool {
    let Some(total) = total.filter(|t| *t > 0) else {
        return false;
    };
    if !styled {
        bar.set_style(style(BOARD_TEMPLATE));
    }
    bar.set_length(total);
    bar.set_position(done.min(total));
    true
}

/// `image pull`'s live display: one line per (VM, source), in the order they first report.
struct FetchBoard {
    multi: MultiProgress,
    /// Per fetch: its key, its bar, whether the bar is a byte bar, whether it is done.
    bars: Vec<((String, String), ProgressBar, bool, bool)>,
}

impl FetchBoard {
    fn new(target: ProgressDrawTarget) -> FetchBoard {
        FetchBoard {
            multi: MultiProgress::with_draw_target(target),
            bars: Vec::new(),
        }
    }

    fn event(&mut self, event: &api::Event) {
        let api::Event::ImageFetch {
            vm,
            source,
            phase,
            bytes_done,
            bytes_total,
            rate_bps,
        } = event
        else {
            return;
        };
        let key = (vm.clone(), source.clone());
        let i = match self.bars.iter().position(|(k, ..)| *k == key) {
            Some(i) => i,
            None => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(style(PULL_SPINNER_TEMPLATE));
                if !vm.is_empty() {
                    bar.set_prefix(format!("{}  ", render::escape_line(vm)));
                }
                bar.enable_steady_tick(Duration::from_millis(120));
                self.bars.push((key, bar, false, false));
                self.bars.len() - 1
            }
        };
        let (_, bar, styled, done) = &mut self.bars[i];
        if *done {
            return;
        }
        let tail = render::fetch_tail(phase, source, *bytes_done, *bytes_total, *rate_bps);
        if phase == "done" {
            bar.set_style(style(DONE_TEMPLATE));
            let line = match vm.as_str() {
                "" => format!("✓ {tail}"),
                vm => format!("✓ {vm}  {tail}"),
            };
            bar.finish_with_message(render::escape_line(&line).into_owned());
            *done = true;
            return;
        }
        match bytes_total.filter(|t| *t > 0) {
            Some(total) => {
                if !*styled {
                    bar.set_style(style(PULL_TEMPLATE));
                    *styled = true;
                }
                bar.set_length(total);
                bar.set_position((*bytes_done).min(total));
            }
            None if *styled => {
                bar.set_style(style(PULL_SPINNER_TEMPLATE));
                bar.unset_length();
                *styled = false;
            }
            None => {}
        }
        bar.set_message(render::escape_line(&tail).into_owned());
    }

    /// Leaves every line as it is (those not done stop moving).
    fn abandon(self) {
        for (_, bar, _, done) in &self.bars {
            if !done {
                bar.abandon();
            }
        }
    }
}

/// How `castractl image pull` shows the pull's `ImageFetch` events while it waits for its
/// result.
pub struct PullDisplay {
    kind: Kind,
}

enum Kind {
    Json,
    Plain(PlainFeed),
    Live(FetchBoard),
}

impl PullDisplay {
    /// `--json` wins; otherwise a byte bar per image when stdout is a terminal, plain lines
    /// when not.
    pub fn new(json: bool) -> PullDisplay {
        let kind = if json {
            Kind::Json
        } else if term::stdout_is_terminal() {
            Kind::Live(FetchBoard::new(term::board_target()))
        } else {
            Kind::Plain(PlainFeed::new(0))
        };
        PullDisplay { kind }
    }

    /// Shows one `ImageFetch` notification (`raw`, decoded as `envelope`).
    pub fn event(&mut self, raw: &RawValue, envelope: &api::EventEnvelope) {
        self.event_at(raw, envelope, Instant::now());
    }

    fn event_at(&mut self, raw: &RawValue, envelope: &api::EventEnvelope, now: Instant) {
        match &mut self.kind {
            Kind::Json => {
                let _ = term::json_line(&json_line(raw));
            }
            Kind::Plain(feed) => {
                if let Some(line) = plain_line(feed, &envelope.event, now) {
                    let _ = term::line(&line);
                }
            }
            Kind::Live(board) => board.event(&envelope.event),
        }
    }

    /// A note for people, on stderr (above the bars when there are any).
    pub fn warn(&self, message: &str) {
        let print = || term::warn(message);
        match &self.kind {
            Kind::Live(board) => board.multi.suspend(print),
            Kind::Json | Kind::Plain(_) => print(),
        }
    }

    /// Stops drawing: every line stays as it was.
    pub fn finish(self) {
        if let Kind::Live(board) = self.kind {
            board.abandon();
        }
    }

    /// Whether JSON lines are printed (then the result is a JSON line too).
    pub fn is_json(&self) -> bool {
        matches!(self.kind, Kind::Json)
    }
}

/// A plain line for a pull's event, when `feed` says it is news: the fetch alone for a pull
/// by image, after its VM for a project's.
fn plain_line(feed: &mut PlainFeed, event: &api::Event, now: Instant) -> Option<String> {
    let api::Event::ImageFetch {
        vm,
        source,
        phase,
        bytes_done,
        bytes_total,
        rate_bps,
    } = event
    else {
        return None;
    };
    if !feed.news_at(event, now) {
        return None;
    }
    let tail = render::fetch_tail(phase, source, *bytes_done, *bytes_total, *rate_bps);
    Some(match vm.as_str() {
        "" => tail,
        vm => format!("{vm}  {tail}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetch(vm: &str, phase: &str, done: u64, total: Option<u64>) -> api::Event {
        api::Event::ImageFetch {
            vm: vm.into(),
            source: "https://h/d/debian.qcow2".into(),
            phase: phase.into(),
            bytes_done: done,
            bytes_total: total,
            rate_bps: 2 * 1024 * 1024,
        }
    }

    #[test]
    fn templates_are_valid() {
        for t in [BOARD_TEMPLATE, PULL_TEMPLATE, PULL_SPINNER_TEMPLATE] {
            assert!(indicatif::ProgressStyle::with_template(t).is_ok(), "{t}");
        }
    }

    #[test]
    fn a_pull_draws_a_byte_bar_per_image_and_ends_it_when_done() {
        let mut board = FetchBoard::new(ProgressDrawTarget::hidden());
        board.event(&fetch("", "checksums", 0, None));
        board.event(&fetch("", "download", 1024 * 1024, Some(4 * 1024 * 1024)));
        let (_, bar, styled, done) = &board.bars[0];
        assert!(*styled && !*done);
        assert_eq!(
            (bar.position(), bar.length()),
            (1024 * 1024, Some(4 * 1024 * 1024))
        );
        assert_eq!(
            bar.message(),
            "download  1.0 MiB of 4.0 MiB (25%), 2.0 MiB/s, 1.50s left  https://h/d/debian.qcow2"
        );
        // A project's image is another line, named after its VM.
        board.event(&fetch("web-0", "download", 0, None));
        assert_eq!(board.bars.len(), 2);
        assert_eq!(board.bars[1].1.prefix(), "web-0  ");
        assert!(!board.bars[1].2, "no size yet: a spinner");

        board.event(&fetch("", "done", 4 * 1024 * 1024, Some(4 * 1024 * 1024)));
        let (_, bar, _, done) = &board.bars[0];
        assert!(*done && bar.is_finished());
        assert_eq!(bar.message(), "✓ done  4.0 MiB  https://h/d/debian.qcow2");
        // Nothing after the end changes it.
        board.event(&fetch("", "download", 1, Some(2)));
        assert_eq!(
            board.bars[0].1.message(),
            "✓ done  4.0 MiB  https://h/d/debian.qcow2"
        );
        board.abandon();
    }

    #[test]
    fn plain_pull_lines_are_one_per_few_seconds_and_the_last() {
        let mut feed = PlainFeed::new(0);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let total = Some(8 * 1024 * 1024);
        let mut lines = Vec::new();
        for (s, event) in [
            (0, fetch("", "checksums", 0, None)),
            (0, fetch("", "download", 0, total)),
            (1, fetch("", "download", 1024 * 1024, total)),
            (2, fetch("", "download", 2 * 1024 * 1024, total)),
            (5, fetch("", "download", 5 * 1024 * 1024, total)),
            (6, fetch("", "download", 6 * 1024 * 1024, total)),
            (7, fetch("", "done", 8 * 1024 * 1024, total)),
        ] {
            lines.extend(plain_line(&mut feed, &event, at(s)));
        }
        assert_eq!(
            lines,
            [
                "checksums  https://h/d/debian.qcow2",
                "download  0 B of 8.0 MiB (0%), 2.0 MiB/s, 4.00s left  https://h/d/debian.qcow2",
                "download  5.0 MiB of 8.0 MiB (62%), 2.0 MiB/s, 1.50s left  \
                 https://h/d/debian.qcow2",
                "done  8.0 MiB  https://h/d/debian.qcow2",
            ]
        );
        // A project's pull names the VM.
        let line = plain_line(&mut feed, &fetch("db", "import", 0, None), at(8));
        assert_eq!(
            line.as_deref(),
            Some("db  import  0 B, 2.0 MiB/s  https://h/d/debian.qcow2")
        );
    }
}

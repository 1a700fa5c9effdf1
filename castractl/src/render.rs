//! Human-readable output: aligned tables, short hashes, durations, the one-line form of
//! events shared by `up` (piped and live) and `events`, and [`escape`], which makes text
//! from castrad safe for a terminal.
//!
//! Much of what castrad reports comes from the guest (script output, error details, the
//! agent's words) and the guest is not trusted: a raw escape sequence could retitle, clear or
//! rewrite the user's terminal. Everything this module renders passes through [`escape`]:
//! one-line forms (events, table cells, error lines) escape newlines too, so a value cannot
//! forge a line of its own; `term` escapes whole texts again on their way out.

use std::borrow::Cow;
use std::fmt::Write;
use std::time::Duration;

use castra_api as api;

/// Left-aligned columns separated by two spaces; the last column is not padded. Each cell is
/// one line, escaped.
pub fn table(rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<Cow<'_, str>>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| escape_line(cell)).collect())
        .collect();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn short(hash: &Option<String>) -> String {
    hash.as_deref().map_or_else(|| "-".to_owned(), short_str)
}

pub fn short_str(hash: &str) -> String {
    hash.chars().take(12).collect()
}

fn path_or_dash(path: Option<&std::path::Path>) -> String {
    path.map_or_else(|| "-".to_owned(), |p| p.display().to_string())
}

/// A configured disk size for people: `20 GiB`, `512 MiB`, `-` for the base image's.
fn disk(mib: Option<u64>) -> String {
    match mib {
        None => "-".into(),
        Some(m) if m % 1024 == 0 => format!("{} GiB", m / 1024),
        Some(m) => format!("{m} MiB"),
    }
}

/// A duration for people: `85ms`, `1.24s`, `12.3s`, `2m03s`, `1h05m` (truncated, never rounded
/// up into the next unit).
pub fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..10_000 => format!("{}.{:02}s", ms / 1_000, ms % 1_000 / 10),
        10_000..60_000 => format!("{}.{}s", ms / 1_000, ms % 1_000 / 100),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1_000),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// `text` as a terminal may show it: control characters (C0 but tab and, with
/// `keep_newlines`, newline; DEL; C1) and the bidirectional overrides and isolates (U+202A-U+202E,
/// U+2066-U+2069, which reorder what follows) become visible escapes: `\x1b`, `\r`, `\n`,
/// `\u{9b}`, `\u{202e}`. Backslashes are left alone, so this is idempotent; the exact bytes
/// are in `--json` output and in the logs.
fn escape_with(text: &str, keep_newlines: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\t' && !(keep_newlines && c == '\n'))
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.contains(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            _ if !unsafe_char(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\0'..='\x1f' | '\x7f' => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            _ => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    Cow::Owned(out)
}

/// A text of several lines for a terminal: see [`escape_with`]; newlines and tabs stay.
pub fn escape(text: &str) -> Cow<'_, str> {
    escape_with(text, true)
}

/// One line for a terminal: like [`escape`], and a newline becomes `\n`.
pub fn escape_line(text: &str) -> Cow<'_, str> {
    escape_with(text, false)
}

/// An event without its VM: `apply  | line`, `wait-handshake  waiting: ...`, `FAILED  error`.
/// This is also the live display's status text. One line, escaped.
pub fn event_tail(event: &api::Event) -> String {
    escape_line(&describe(event)).into_owned()
}

/// [`event_tail`] before escaping.
fn describe(event: &api::Event) -> String {
    use api::Event;
    match event {
        Event::BootstrapPlanned(p) => format!("planned  {} ({})", lower(&p.action), p.reason),
        Event::ImageFetch {
            source,
            phase,
            bytes_done,
            bytes_total,
            rate_bps,
            ..
        } => format!(
            "image  {}",
            fetch_tail(phase, source, *bytes_done, *bytes_total, *rate_bps)
        ),
        Event::BootstrapStarted {
            trigger,
            artifact_hash,
            ..
        } => format!(
            "started  trigger={} artifact={}",
            lower(trigger),
            short_str(artifact_hash)
        ),
        Event::BootstrapStep {
            step,
            status,
            duration_ms,
            detail,
            ..
        } => {
            let mut line = format!(
                "{}  {}  {}",
                step.as_str(),
                lower(status),
                duration(*duration_ms)
            );
            if let Some(detail) = detail {
                let _ = write!(line, "  {}", detail);
            }
            line
        }
        Event::BootstrapProgress {
            step, waiting_on, ..
        } => format!("{}  waiting: {}", step.as_str(), waiting_on),
        Event::BootstrapOutput {
            step, stream, line, ..
        } => {
            let mark = match stream {
                api::OutputStream::Stdout => '|',
                api::OutputStream::Stderr => '!',
            };
            format!("{}  {mark} {}", step.as_str(), line)
        }
        Event::BootstrapCompleted {
            status,
            duration_ms,
            ..
        } => format!("completed  {}  {}", lower(status), duration(*duration_ms)),
        Event::BootstrapFailed { error, .. } => format!("FAILED  {}", error),
        Event::OverlayPrepared { overlay_path, .. } => {
            format!("disk  new overlay {}", overlay_path.display())
        }
        Event::VmLaunched {
            pid,
            accel,
            accel_reason,
            ssh_port,
            ..
        } => {
            format!("launched  pid {pid}, {accel} ({accel_reason}), ssh on 127.0.0.1:{ssh_port}")
        }
        Event::VmAdopted { pid, ssh_port, .. } => {
            format!("adopted  pid {pid} still running, ssh on 127.0.0.1:{ssh_port}")
        }
        Event::VmUnresponsive { pid, reason, .. } => {
            format!("UNRESPONSIVE  pid {pid} kept: {reason}")
        }
        Event::VmExited { reason, .. } => format!("exited  {}", reason),
        Event::ShutdownRequested { .. } => "shutdown  requested".to_owned(),
        Event::CooperativeAttempted {
            method, timeout_ms, ..
        } => {
            format!(
                "shutdown  {method}, waiting up to {}",
                duration(*timeout_ms)
            )
        }
        Event::CooperativeSucceeded { elapsed_ms, .. } => {
            format!(
                "shutdown  guest powered off after {}",
                duration(*elapsed_ms)
            )
        }
        Event::CooperativeTimedOut {
            waited_ms, reason, ..
        } => {
            format!(
                "shutdown  no power-off after {}: {}",
                duration(*waited_ms),
                reason
            )
        }
        Event::ShutdownEscalated {
            signal, timeout_ms, ..
        } => {
            format!(
                "shutdown  sending {signal}, waiting up to {}",
                duration(*timeout_ms)
            )
        }
        Event::ShutdownComplete {
            outcome, total_ms, ..
        } => {
            format!("stopped  {outcome}  {}", duration(*total_ms))
        }
        Event::VizierConnected { version, .. } => format!("vizier  connected, version {version}"),
        Event::VizierLost { reason, .. } => format!("vizier  LOST: {}", reason),
        Event::EphemeralLayerDiscarded {
            overlay_path,
            reclaimed_bytes,
            ..
        } => {
            format!(
                "disk  discarded {} ({reclaimed_bytes} bytes)",
                overlay_path.display()
            )
        }
    }
}

/// A size for people, in binary units: `512 B`, `1.5 KiB`, `340.0 MiB`, `2.1 GiB` (one decimal,
/// truncated).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let (mut unit, mut scaled) = (0, u128::from(n) * 10 / 1024);
    while scaled >= 10 * 1024 && unit + 1 < UNITS.len() {
        scaled /= 1024;
        unit += 1;
    }
    format!("{}.{} {}", scaled / 10, scaled % 10, UNITS[unit])
}

/// An image fetch without its VM (`ImageFetch`): its phase, how far it is and the source:
/// `download  120.5 MiB of 340.0 MiB (35%), 12.3 MiB/s, 18.2s left  https://...`. Not escaped.
pub fn fetch_tail(phase: &str, source: &str, done: u64, total: Option<u64>, rate: u64) -> String {
    match phase {
        "checksums" => format!("checksums  {source}"),
        "done" => format!("done  {}  {source}", bytes(done)),
        _ => format!("{phase}  {}  {source}", fetch_progress(done, total, rate)),
    }
}

/// `120.5 MiB of 340.0 MiB (35%), 12.3 MiB/s, 18.2s left`: what is known of it (no total: the
/// bytes so far; no rate yet: no speed and no time left).
pub fn fetch_progress(done: u64, total: Option<u64>, rate: u64) -> String {
    let mut out = match total {
        Some(total) if total > 0 => {
            let percent = u128::from(done.min(total)) * 100 / u128::from(total);
            format!("{} of {} ({percent}%)", bytes(done), bytes(total))
        }
        _ => bytes(done),
    };
    if rate > 0 {
        let _ = write!(out, ", {}/s", bytes(rate));
        if let Some(left) = total.filter(|t| *t > done).map(|t| t - done) {
            let ms = u128::from(left) * 1000 / u128::from(rate);
            let _ = write!(
                out,
                ", {} left",
                duration(ms.try_into().unwrap_or(u64::MAX))
            );
        }
    }
    out
}

/// One event as a line: the VM (padded to `width`) then [`event_tail`].
pub fn event_line(event: &api::Event, width: usize) -> String {
    // `castra.imagePull`'s events are about no VM.
    let vm = match event.vm() {
        "" => "-",
        vm => vm,
    };
    format!("{:<width$}  {}", escape_line(vm), event_tail(event))
}

/// The live display's last line for a VM: `✓ web-0  Success  1.24s`, `✗ db  Failed  30.0s  why`.
pub fn finish_line(
    ok: bool,
    vm: &str,
    width: usize,
    status: &str,
    duration_ms: Option<u64>,
    error: Option<&str>,
) -> String {
    let mark = if ok { '✓' } else { '✗' };
    let mut line = format!("{mark} {vm:<width$}  {status}");
    if let Some(ms) = duration_ms {
        let _ = write!(line, "  {}", duration(ms));
    }
    if let Some(error) = error {
        let _ = write!(line, "  {}", error);
    }
    escape_line(&line).into_owned()
}

/// The end of `up`: one row per VM in operation order, then the errors.
pub fn summary(o: &api::OutcomeResult) -> String {
    let mut rows = vec![vec![
        "VM".into(),
        "STATUS".into(),
        "DURATION".into(),
        "LOG".into(),
    ]];
    for vm in &o.outcomes {
        let took = match vm.status {
            // Never attempted: a duration would suggest it was.
            api::OutcomeStatus::Rejected => "-".to_owned(),
            _ => duration(vm.duration_ms),
        };
        rows.push(vec![
            vm.vm.clone(),
            lower(&vm.status),
            took,
            path_or_dash(vm.log_path.as_deref()),
        ]);
    }
    let mut out = table(&rows);
    let errors: Vec<_> = o
        .outcomes
        .iter()
        .filter_map(|vm| vm.error.as_ref().map(|e| (&vm.vm, e)))
        .collect();
    if !errors.is_empty() {
        out.push('\n');
        for (vm, error) in errors {
            let _ = writeln!(out, "{}", escape_line(&format!("{vm}: {error}")));
        }
    }
    out
}

/// `castractl logs`: the VM's runs, then the selected run's steps and files.
pub fn logs(l: &api::LogsResult) -> String {
    if l.runs.is_empty() && l.log.is_none() {
        return format!("no bootstrap runs recorded for {}\n", l.vm);
    }
    let mut rows = vec![vec![
        "RUN".into(),
        "STATUS".into(),
        "DURATION".into(),
        "STARTED".into(),
    ]];
    for run in &l.runs {
        rows.push(vec![
            run.run_id.clone(),
            lower(&run.status),
            duration(run.duration_ms),
            run.started_at.clone(),
        ]);
    }
    let mut out = format!("vm {}\n\n", l.vm);
    out.push_str(&table(&rows));
    let Some(log) = &l.log else {
        return out;
    };
    let _ = writeln!(
        out,
        "\nrun {}  {}  {}  trigger {}  started {}",
        log.run_id,
        lower(&log.status),
        duration(log.duration_ms),
        lower(&log.trigger),
        log.started_at
    );
    let _ = writeln!(
        out,
        "artifact {}  base {}  operation {}",
        short_str(&log.artifact_hash),
        short_str(&log.base_hash),
        log.operation.as_deref().unwrap_or("-")
    );
    let mut rows = vec![vec![
        "STEP".into(),
        "STATUS".into(),
        "DURATION".into(),
        "DETAIL".into(),
    ]];
    for step in &log.steps {
        rows.push(vec![
            step.step.as_str().to_owned(),
            lower(&step.status),
            duration(step.duration_ms),
            step.detail.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    out.push('\n');
    out.push_str(&table(&rows));
    let _ = write!(
        out,
        "\nlog     {}\noutput  {}",
        path_or_dash(l.log_path.as_deref()),
        path_or_dash(log.output_path.as_deref())
    );
    if log.output_dropped_bytes > 0 {
        let _ = write!(
            out,
            " (cut at its cap: {} bytes dropped)",
            log.output_dropped_bytes
        );
    }
    out.push('\n');
    out
}

/// A unit enum's wire name (`run`, `Success`, `wait-handshake`).
pub fn lower<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub fn plan(p: &api::PlanResult) -> String {
    let mut out = format!(
        "project {} ({})\nstate   {}\n\n",
        p.project,
        p.config.display(),
        p.state_root.display()
    );
    let mut rows = vec![vec![
        "VM".into(),
        "MODE".into(),
        "ACTION".into(),
        "ARTIFACT".into(),
        "DISK".into(),
        "REASON".into(),
    ]];
    for vm in &p.vms {
        rows.push(vec![
            vm.vm.clone(),
            lower(&vm.mode),
            lower(&vm.action),
            short(&vm.artifact_hash),
            disk(vm.disk_mib),
            vm.reason.clone(),
        ]);
    }
    with_addresses(&mut rows, 5, p.vms.iter().map(|vm| &vm.network_address));
    out.push_str(&table(&rows));
    out.push_str(&base_images(&p.vms));
    out.push_str(&mounts(p.vms.iter().map(|vm| (&vm.vm, &vm.mounts))));
    out.push_str(&host_paths(&p.host_paths));
    let warnings: Vec<String> = p
        .vms
        .iter()
        .flat_map(|vm| {
            vm.warnings
                .iter()
                .map(move |w| format!("  {}", escape_line(&format!("{}: {w}", vm.vm))))
        })
        .collect();
    if !warnings.is_empty() {
        out.push_str("\nwarnings:\n");
        for w in warnings {
            out.push_str(&w);
            out.push('\n');
        }
    }
    let drift: Vec<&api::Drift> = p.vms.iter().flat_map(|vm| &vm.drift).collect();
    if !drift.is_empty() {
        out.push_str("\ndrift (running VMs that castra.toml has changed):\n");
        for d in drift {
            let _ = writeln!(out, "  {}", escape_line(&d.message));
        }
    }
    out
}

/// What the project reads or shares on this machine, and why it may.
fn host_paths(paths: &[api::HostPathPlanned]) -> String {
    if paths.is_empty() {
        return String::new();
    }
    let mut rows = vec![vec![
        "ACCESS".to_owned(),
        "PATH".to_owned(),
        "ALLOWED BY".to_owned(),
        "KEY".to_owned(),
    ]];
    for h in paths {
        let why = match (&h.allowed_by, h.grant.as_str()) {
            (Some(dir), _) => format!("allowed_paths {}", dir.display()),
            (None, "project") => "inside the project".to_owned(),
            (None, "trusted_project") => "trusted_projects".to_owned(),
            (None, "public_key") => "a public key".to_owned(),
            (None, other) => other.to_owned(),
        };
        rows.push(vec![
            lower(&h.access),
            escape_line(&h.path.display().to_string()).into_owned(),
            why,
            h.key.clone(),
        ]);
    }
    let mut out = "\nhost paths (what the project reads or shares here):\n".to_owned();
    for line in table(&rows).lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

pub fn status(s: &api::StatusResult) -> String {
    let d = &s.daemon;
    let uptime = humantime::format_duration(Duration::from_secs(d.uptime_ms / 1000));
    let mut out = format!(
        "castrad {}  pid {}  up {uptime}\nsocket  {}\nstate   {}\n",
        d.version,
        d.pid,
        d.socket.display(),
        d.state_dir.display()
    );
    if s.projects.is_empty() {
        out.push_str(
            "\nno projects loaded (run `castractl plan` or `castractl status` inside one)\n",
        );
    }
    for p in &s.projects {
        let _ = writeln!(out, "\nproject {} ({})", p.name, p.config.display());
        let mut rows = vec![
            [
                "VM",
                "BACKEND",
                "STATE",
                "PID",
                "ACCEL",
                "SSH",
                "DISK",
                "UP",
                "NOW",
                "LAST BOOTSTRAP",
            ]
            .map(String::from)
            .to_vec(),
        ];
        let dash = || "-".to_owned();
        for vm in &p.vms {
            // What it is doing now: the step, and what that step waits on.
            // Or why it is in its state (an unresponsive QEMU).
            let now = match (&vm.current_step, &vm.waiting_on, &vm.state_reason) {
                (Some(step), Some(w), _) => format!("{}: {}", step.as_str(), w),
                (Some(step), None, _) => step.as_str().to_owned(),
                (None, _, Some(reason)) => reason.clone(),
                _ => dash(),
            };
            let last = vm.last_bootstrap.as_ref().map_or_else(dash, |o| {
                let mut s = format!("{} {}", lower(&o.status), duration(o.duration_ms));
                if let Some(e) = &o.error {
                    let _ = write!(s, ": {}", e);
                }
                s
            });
            rows.push(vec![
                vm.name.clone(),
                lower(&vm.backend),
                lower(&vm.state),
                vm.pid.map_or_else(dash, |p| p.to_string()),
                vm.accel.clone().unwrap_or_else(dash),
                vm.ssh_endpoint.clone().unwrap_or_else(dash),
                disk(vm.disk_mib),
                vm.uptime_ms.map_or_else(dash, |ms| {
                    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
                }),
                now,
                last,
            ]);
        }
        with_addresses(&mut rows, 6, p.vms.iter().map(|vm| &vm.network_address));
        out.push_str(&table(&rows));
        out.push_str(&mounts(p.vms.iter().map(|vm| (&vm.name, &vm.mounts))));
    }
    out
}

/// Each VM's base image as the plan sees it (`web-0  fetch  debian-12: ...`), an image without
/// a checksum marked unverified; nothing when no VM has one.
fn base_images(vms: &[api::BootstrapPlanned]) -> String {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .filter_map(|vm| {
            let image = vm.base_image.as_ref()?;
            let mut status = lower(&image.status);
            if !image.verified {
                status.push_str(", UNVERIFIED");
            }
            Some(vec![format!("  {}", vm.vm), status, image.message.clone()])
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    format!("\nbase images:\n{}", table(&rows))
}

/// An ADDRESS column (the project network's) at `at`, only when some VM has an address.
fn with_addresses<'a>(
    rows: &mut [Vec<String>],
    at: usize,
    addresses: impl Iterator<Item = &'a Option<String>>,
) {
    let addresses: Vec<&Option<String>> = addresses.collect();
    if addresses.iter().all(|a| a.is_none()) {
        return;
    }
    rows[0].insert(at, "ADDRESS".into());
    for (row, address) in rows[1..].iter_mut().zip(addresses) {
        row.insert(at, address.clone().unwrap_or_else(|| "-".into()));
    }
}

/// The shared folders of `vms`, one line each (`web: /p/src -> /src (rw, virtiofs)`); nothing
/// when there are none.
fn mounts<'a>(vms: impl Iterator<Item = (&'a String, &'a Vec<api::VmMount>)>) -> String {
    let mut out = String::new();
    for (vm, mounts) in vms {
        for m in mounts {
            let transport = m
                .transport
                .as_ref()
                .map_or_else(|| "transport chosen at launch".to_owned(), lower);
            let mode = if m.readonly { "ro" } else { "rw" };
            let line = format!(
                "{vm}: {} -> {} ({mode}, {transport})",
                m.host.display(),
                m.guest
            );
            let _ = writeln!(out, "  {}", escape_line(&line));
        }
    }
    if out.is_empty() {
        return out;
    }
    format!("\nmounts:\n{out}")
}

/// The result of `down`: one row per VM, then the errors.
pub fn cancel(c: &api::CancelResult) -> String {
    let mut out = String::new();
    for v in &c.vms {
        let _ = match &v.operation {
            Some(op) => writeln!(out, "{}: cancelling the run of operation {op}", v.vm),
            None => writeln!(out, "{}: no run in flight", v.vm),
        };
    }
    out
}

pub fn down(d: &api::DownResult) -> String {
    let mut rows = vec![vec![
        "VM".to_owned(),
        "STOPPED".to_owned(),
        "TOOK".to_owned(),
        "DISK".to_owned(),
    ]];
    for v in &d.vms {
        let disk = if v.discarded { "discarded" } else { "kept" };
        rows.push(vec![
            v.vm.clone(),
            v.outcome.as_str().to_owned(),
            duration(v.total_ms),
            disk.to_owned(),
        ]);
    }
    let mut out = table(&rows);
    for v in d.vms.iter().filter(|v| v.error.is_some()) {
        let error = v.error.as_deref().unwrap_or_default();
        let _ = writeln!(out, "{}", escape_line(&format!("{}: {error}", v.vm)));
    }
    out
}

#[cfg(test)]
mod tests;

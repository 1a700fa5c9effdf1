//! Human-readable output: aligned tables, short hashes, durations.

use std::fmt::Write;
use std::time::Duration;

use castra_api as api;

/// Left-aligned columns separated by two spaces; the last column is not padded.
fn table(rows: &[Vec<String>]) -> String {
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
    hash.as_deref()
        .map_or_else(|| "-".to_owned(), |h| h.chars().take(12).collect())
}

fn lower<T: serde::Serialize>(v: &T) -> String {
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
        "REASON".into(),
    ]];
    for vm in &p.vms {
        rows.push(vec![
            vm.vm.clone(),
            lower(&vm.mode),
            lower(&vm.action),
            short(&vm.artifact_hash),
            vm.reason.clone(),
        ]);
    }
    out.push_str(&table(&rows));
    let warnings: Vec<String> = p
        .vms
        .iter()
        .flat_map(|vm| vm.warnings.iter().map(move |w| format!("  {}: {w}", vm.vm)))
        .collect();
    if !warnings.is_empty() {
        out.push_str("\nwarnings:\n");
        for w in warnings {
            out.push_str(&w);
            out.push('\n');
        }
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
        let mut rows = vec![vec![
            "VM".into(),
            "BACKEND".into(),
            "STATE".into(),
            "STAMP".into(),
        ]];
        for vm in &p.vms {
            let stamp = vm
                .stamp_path
                .as_ref()
                .map_or_else(|| "-".to_owned(), |p| p.display().to_string());
            rows.push(vec![
                vm.name.clone(),
                lower(&vm.backend),
                lower(&vm.state),
                stamp,
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_trims_the_last() {
        let rows = vec![
            vec!["VM".to_owned(), "MODE".to_owned(), "REASON".to_owned()],
            vec!["web-0".to_owned(), "always".to_owned(), "forced".to_owned()],
        ];
        assert_eq!(
            table(&rows),
            "VM     MODE    REASON\nweb-0  always  forced\n"
        );
    }

    #[test]
    fn short_hash_is_twelve_chars_or_dash() {
        assert_eq!(short(&Some("0123456789abcdef".into())), "0123456789ab");
        assert_eq!(short(&None), "-");
    }
}

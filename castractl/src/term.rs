//! The only code that writes to castractl's stdout and stderr (a test checks that no other
//! module does). Text for people leaves through [`text`], [`line`], [`warn`] and [`error`],
//! which escape control characters on the way out ([`render::escape`]): whatever castrad
//! sends, and the guest behind it, cannot drive the terminal. JSON leaves through
//! [`json_line`] and [`json_pretty`] byte for byte. The live board (indicatif) draws on
//! [`board_target`] with text made by `render`, which escapes it.

use std::io::{IsTerminal, Write};

use indicatif::ProgressDrawTarget;

use crate::render;

/// castractl's stdout. Unit tests get a sink: what they display is not theirs to print
/// (the test harness captures `print!`, not writes to the stdout handle).
#[cfg(not(test))]
fn stdout() -> std::io::StdoutLock<'static> {
    std::io::stdout().lock()
}

#[cfg(test)]
fn stdout() -> std::io::Sink {
    std::io::sink()
}

/// Prints `text` (any number of lines, escaped, newlines kept) to stdout.
pub fn text(text: &str) {
    let mut out = stdout();
    let _ = out.write_all(render::escape(text).as_bytes());
    let _ = out.flush();
}

/// Writes one line of text (escaped, a newline in it too) to stdout and flushes it, so that
/// consumers of a pipe see each event at once.
pub fn line(line: &str) -> std::io::Result<()> {
    write_flushed(&render::escape_line(line))
}

/// Writes castractl's own script text (a completion script) to stdout as it is: nothing in it
/// comes from castrad or a guest.
pub fn script(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

/// Writes one line of JSON to stdout, as it is, and flushes it.
pub fn json_line(line: &str) -> std::io::Result<()> {
    write_flushed(line)
}

/// Prints `value` as pretty JSON on stdout.
pub fn json_pretty<T: serde::Serialize>(value: &T) {
    let mut out = stdout();
    let _ = serde_json::to_writer_pretty(&mut out, value);
    let _ = writeln!(out);
}

fn write_flushed(line: &str) -> std::io::Result<()> {
    let mut out = stdout();
    writeln!(out, "{line}")?;
    out.flush()
}

/// Writes a piece of a guest's console output to stdout and flushes it: escaped like
/// [`text`] (newlines and tabs kept), or with `raw` (`castractl console --raw`, asked for by
/// the user) as it is, escape sequences and all.
pub fn console(text: &str, raw: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if raw {
        out.write_all(text.as_bytes())?;
    } else {
        out.write_all(render::escape(text).as_bytes())?;
    }
    out.flush()
}

/// `castractl: MESSAGE` on stderr (what castractl says beside a command's output).
pub fn note(message: &str) {
    eprintln!("castractl: {}", render::escape_line(message));
}

/// `castractl: warning: MESSAGE` on stderr.
pub fn warn(message: &str) {
    eprintln!("castractl: warning: {}", render::escape_line(message));
}

/// `castractl: error: MESSAGE` on stderr, then each detail indented on a line of its own.
pub fn error(message: &str, details: &[String]) {
    eprintln!("castractl: error: {}", render::escape_line(message));
    for d in details {
        eprintln!("  {}", render::escape_line(d));
    }
}

/// Whether stdout is a terminal (then `up` draws the live board).
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// Where the live board draws.
pub fn board_target() -> ProgressDrawTarget {
    ProgressDrawTarget::stdout()
}

#[cfg(test)]
mod tests {
    /// Every other module of castractl, as compiled.
    const OTHERS: &[(&str, &str)] = &[
        ("cli.rs", include_str!("cli.rs")),
        ("client.rs", include_str!("client.rs")),
        ("completion.rs", include_str!("completion.rs")),
        ("console.rs", include_str!("console.rs")),
        ("copy.rs", include_str!("copy.rs")),
        ("doctor.rs", include_str!("doctor.rs")),
        ("help.rs", include_str!("help.rs")),
        ("images.rs", include_str!("images.rs")),
        ("init.rs", include_str!("init.rs")),
        ("lib.rs", include_str!("lib.rs")),
        ("main.rs", include_str!("main.rs")),
        ("progress.rs", include_str!("progress.rs")),
        ("progress/fetch.rs", include_str!("progress/fetch.rs")),
        ("render.rs", include_str!("render.rs")),
        ("restart.rs", include_str!("restart.rs")),
        ("trust.rs", include_str!("trust.rs")),
    ];

    /// The `.rs` files under `dir` (relative to `root`), unit test files (`tests.rs`) aside.
    fn sources(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.ends_with("tests.rs")
                && !path.ends_with("term.rs")
            {
                let rel = path.strip_prefix(root).unwrap();
                out.push(rel.to_str().unwrap().to_owned());
            }
        }
    }

    #[test]
    fn no_other_module_writes_to_the_terminal() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&dir, &dir, &mut files);
        files.sort();
        let listed: Vec<&str> = OTHERS.iter().map(|(name, _)| *name).collect();
        assert_eq!(files, listed, "a new module: add it to OTHERS");
        for (name, text) in OTHERS {
            for writer in [
                "print!(",
                "println!(",
                "eprint!(",
                "eprintln!(",
                "io::stdout",
                "io::stderr",
                "io::{",
                "Target::stdout",
                "Target::stderr",
            ] {
                assert!(
                    !text.contains(writer),
                    "{name} uses {writer}: write through term, which escapes text"
                );
            }
        }
    }
}

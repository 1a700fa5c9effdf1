//! Castra's build-time assets: shell completion scripts and man pages, made from the clap
//! definitions of the shipped binaries (`castractl::command`, `castrad::cli::command`), so
//! they cannot drift from the real flags.
//!
//! Why a small bin rather than a `build.rs`: a build script cannot call into the crate it
//! builds, so it would need the clap types moved into a file of their own, `include!`d, and
//! clap compiled a second time for the host profile. This crate links the libraries the
//! workspace builds anyway; `scripts/install` runs it right after `cargo build --release`
//! (`cargo run -p xtask -- assets DIR`), and castractl itself stays free of clap_mangen.

use std::io;
use std::path::{Path, PathBuf};

use castractl::completion::{Shell, script};

/// Writes `DIR/completions/{castractl,_castractl,castractl.fish}` and
/// `DIR/man/{castractl.1, castractl-SUBCOMMAND[-SUBCOMMAND].1..., castrad.8}`; returns the files
/// written.
pub fn write_assets(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = completions.join(shell.file_name());
        write(&path, &script(shell, &mut castractl::command()))?;
        written.push(path);
    }
    let man = dir.join("man");
    std::fs::create_dir_all(&man)?;
    let mut ctl = castractl::command();
    ctl.build();
    subcommand_pages(&ctl, "castractl", &man, &mut written)?;
    let path = man.join("castractl.1");
    write(&path, &render(ctl, "1")?)?;
    written.push(path);
    // A daemon's page belongs in section 8 (system administration commands).
    let path = man.join("castrad.8");
    write(&path, &render(castrad::cli::command(), "8")?)?;
    written.push(path);
    Ok(written)
}

/// A page per subcommand of `parent`, and of theirs (`castractl-image-pull.1`): the page of
/// a command with subcommands names theirs.
fn subcommand_pages(
    parent: &clap::Command,
    prefix: &str,
    man: &Path,
    written: &mut Vec<PathBuf>,
) -> io::Result<()> {
    for sub in parent.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("{prefix}-{}", sub.get_name());
        let page = sub.clone().display_name(name.clone());
        let path = man.join(format!("{name}.1"));
        write(&path, &render(page, "1")?)?;
        written.push(path);
        subcommand_pages(sub, &name, man, written)?;
    }
    Ok(())
}

fn render(command: clap::Command, section: &str) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(command)
        .section(section)
        .manual("Castra")
        .source(concat!("Castra ", env!("CARGO_PKG_VERSION")))
        .render(&mut out)?;
    Ok(out)
}

/// Writes `bytes` to a temporary file beside `path`, then renames it into place: a reader
/// never sees half a file.
fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

//! Tests of the config loader: located errors for every kind of mistake (`errors.rs`; ssh
//! options and their allow-list in `ssh_options.rs`), what a valid castra.toml becomes
//! (`projects.rs`), and `load`'s file checks and bootstrap.toml merge (`load.rs`).

use super::*;
use std::fs;

pub(super) const PATH: &str = "/p/castra.toml";

/// Lines 1-6; appended text starts on line 7 and continues `[[vms]]` entry vms[0] ("web").
macro_rules! head {
    () => {
        "[project]\nname = \"demo\"\n\n[[vms]]\nname = \"web\"\nbase_image = \"img.qcow2\"\n"
    };
}

/// Lines 1-6 of an external VM "db" without [vms.ssh]; appended text starts on line 7.
macro_rules! ext {
    () => {
        "[project]\nname = \"demo\"\n\n[[vms]]\nname = \"db\"\nbackend = \"external\"\n"
    };
}

/// A qemu VM whose `name` value (a TOML literal) sits at line 5, column 8.
macro_rules! vm_named {
    ($name:literal) => {
        concat!(
            "[project]\nname = \"demo\"\n\n[[vms]]\nname = ",
            $name,
            "\nbase_image = \"img.qcow2\"\n"
        )
    };
}

pub(super) fn ok(text: &str) -> Project {
    parse(Path::new(PATH), text).unwrap_or_else(|e| panic!("unexpected error: {e}\n{text}"))
}

pub(super) fn err(text: &str) -> ConfigError {
    match parse(Path::new(PATH), text) {
        Ok(p) => panic!("expected an error, got {p:?}\n{text}"),
        Err(e) => e,
    }
}

pub(super) fn assert_error_at(
    e: &ConfigError,
    path: &Path,
    key: &str,
    needle: &str,
    line: usize,
    col: usize,
) {
    let shown = e.to_string();
    assert_eq!(
        e.location(),
        Some((path, line, col)),
        "location of: {shown}"
    );
    assert_eq!(e.key(), Some(key), "key of: {shown}");
    let prefix = format!("{}:{line}:{col}: {}", path.display(), key_prefix(key));
    assert!(
        shown.starts_with(&prefix),
        "{shown:?} should start with {prefix:?}"
    );
    assert!(
        shown.contains(needle),
        "{shown:?} should contain {needle:?}"
    );
}

pub(super) fn assert_parse_error(text: &str, key: &str, needle: &str, line: usize, col: usize) {
    assert_error_at(&err(text), Path::new(PATH), key, needle, line, col);
}

/// (description, toml, key path, expected message substring, line, column)
pub(super) type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    usize,
    usize,
);

mod base_image;
mod errors;
mod libvirt;
mod load;
mod mounts;
mod network;
mod projects;
mod props;
mod ssh_options;

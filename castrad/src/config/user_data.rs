//! `[vms.cloud_init] user_data`, the user's own cloud-config, as far as castrad reads it: only
//! to refuse `merge_how` and `merge_type`. castrad's seed sends that file after castrad's own
//! part with a `Merge-Type` that appends the user's lists to castrad's and never replaces
//! castrad's keys (`backend/qemu/seed.rs`); cloud-init prefers a merge spec written in the
//! document itself to the part's header, so either key would let the file replace castrad's
//! login user, its authorized keys or the guest's pinned host key, and castrad would then be
//! refused by its own VM with no word of why. Refusing it here (`load`, so `plan` and `up`
//! alike) names the line instead. Nothing else of the file is interpreted: its YAML is
//! cloud-init's to read. The check is by text, every line but comments: a word that merely
//! mentions the keys in a string is refused too, which is cheap to avoid; a document that
//! spells them with YAML escapes is not caught, and needs no catching: the user's
//! cloud-config runs whatever it likes in the guest (`runcmd`), the check is there so that no
//! merge spec drops castrad's access by accident.

use std::path::Path;

use super::{ConfigError, Project};

/// The keys castrad refuses in a user's cloud-config.
pub const MERGE_KEYS: [&str; 2] = ["merge_how", "merge_type"];

/// Checks every VM's `user_data` file (each once).
pub fn check(project: &Project) -> Result<(), ConfigError> {
    let mut seen = std::collections::BTreeSet::new();
    for vm in &project.vms {
        let Some(path) = &vm.cloud_init.user_data else {
            continue;
        };
        if !seen.insert(path.clone()) {
            continue;
        }
        let text = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        if let Some((line, column, key)) = merge_key(&String::from_utf8_lossy(&text)) {
            return Err(refused(path, line, column, key));
        }
    }
    Ok(())
}

fn refused(path: &Path, line: usize, column: usize, key: &str) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        line,
        column,
        key: key.to_owned(),
        message: format!(
            "castra does not take `{key}` in a [vms.cloud_init] user_data file: it would change \
             how cloud-init merges this file with castrad's part, and could replace castrad's \
             login user, its keys or the guest's host key (then castrad cannot get in). \
             Remove it: castrad already appends your lists (users, write_files, runcmd...) to \
             its own and keeps its own keys"
        ),
    }
}

/// The first `merge_how`/`merge_type` (as a word: not inside a longer name) outside a
/// comment line: (line, column, key), 1-based, the column in characters.
pub fn merge_key(text: &str) -> Option<(usize, usize, &'static str)> {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        for key in MERGE_KEYS {
            for (at, _) in line.match_indices(key) {
                let before = line[..at].chars().next_back();
                let after = line[at + key.len()..].chars().next();
                if !before.is_some_and(word) && !after.is_some_and(word) {
                    return Some((i + 1, line[..at].chars().count() + 1, key));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keys_are_found_as_words_outside_comments() {
        assert_eq!(
            merge_key("#cloud-config\nmerge_how:\n - name: list\n"),
            Some((2, 1, "merge_how"))
        );
        assert_eq!(
            merge_key("#cloud-config\nusers: []\n  \"merge_type\": 'list(replace)'\n"),
            Some((3, 4, "merge_type"))
        );
        assert_eq!(merge_key("{é: 1, merge_how: x}"), Some((1, 8, "merge_how")));
        assert_eq!(
            merge_key("# merge_how: in a comment\nruncmd: [echo]\n"),
            None
        );
        assert_eq!(merge_key("my_merge_how: 1\nmerge_howl: 2\n"), None);
        assert_eq!(merge_key(""), None);
    }
}

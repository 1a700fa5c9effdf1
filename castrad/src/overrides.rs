//! Per-invocation bootstrap mode overrides (`--bootstrap ...`).
//!
//! Grammar, per flag value (the flag may be repeated; all values are pooled):
//!
//! ```text
//! value    = item ("," item)*
//! item     = mode | vm ("=" | ":") mode
//! mode     = "auto" | "skip" | "always" | "disabled"   (disabled = skip)
//! ```
//!
//! Precedence when resolving a VM's effective mode: a per-VM override beats a global override,
//! which beats the mode written in castra.toml. The same value given twice is fine; two
//! different values for the same target are a conflict. Everything here is pure: preflight
//! errors are found before anything touches the disk.

use std::collections::BTreeMap;
use std::fmt;

use crate::config::BootstrapMode;

/// Where a VM's effective mode came from; shown in plan reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeSource {
    /// `[vms.bootstrap] mode` (or its default, auto).
    File,
    /// `--bootstrap MODE`.
    Global { token: String },
    /// `--bootstrap VM=MODE`.
    PerVm { token: String },
}

impl fmt::Display for ModeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModeSource::File => f.write_str("castra.toml"),
            ModeSource::Global { token } | ModeSource::PerVm { token } => {
                write!(f, "--bootstrap {token}")
            }
        }
    }
}

/// A parsed set of overrides, not yet checked against a project's VM names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    global: Option<(BootstrapMode, String)>,
    per_vm: BTreeMap<String, (BootstrapMode, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideError {
    #[error("--bootstrap: empty item in {value:?}; expected MODE or VM=MODE separated by commas")]
    EmptyItem { value: String },
    #[error(
        "--bootstrap {token}: unknown mode {mode:?}; expected one of auto, skip, always (or disabled)"
    )]
    UnknownMode { token: String, mode: String },
    #[error("--bootstrap {token}: missing VM name before {sep:?}")]
    EmptyVmName { token: String, sep: char },
    #[error("--bootstrap: conflicting global modes: {first} and {second}")]
    GlobalConflict { first: String, second: String },
    #[error("--bootstrap: conflicting modes for VM {vm}: {first} and {second}")]
    VmConflict {
        vm: String,
        first: String,
        second: String,
    },
    #[error("--bootstrap {token}: unknown VM {vm:?}{hint}; known VMs: {}", known.join(", "))]
    UnknownVm {
        token: String,
        vm: String,
        hint: String,
        known: Vec<String>,
    },
}

impl Overrides {
    /// Parses every `--bootstrap` value. Pure; checks grammar and conflicts, not VM names.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Overrides, OverrideError> {
        let mut out = Overrides::default();
        for value in values {
            let value = value.as_ref();
            for item in value.split(',') {
                let token = item.trim();
                if token.is_empty() {
                    return Err(OverrideError::EmptyItem {
                        value: value.to_owned(),
                    });
                }
                out.add(token)?;
            }
        }
        Ok(out)
    }

    fn add(&mut self, token: &str) -> Result<(), OverrideError> {
        let split = token.find(['=', ':']).map(|at| {
            let sep = token[at..].chars().next().unwrap_or('=');
            (token[..at].trim(), sep, token[at + 1..].trim())
        });
        match split {
            None => {
                let mode = parse_mode(token, token)?;
                match &self.global {
                    Some((existing, first)) if *existing != mode => {
                        Err(OverrideError::GlobalConflict {
                            first: first.clone(),
                            second: token.to_owned(),
                        })
                    }
                    Some(_) => Ok(()),
                    None => {
                        self.global = Some((mode, token.to_owned()));
                        Ok(())
                    }
                }
            }
            Some((vm, sep, mode)) => {
                if vm.is_empty() {
                    return Err(OverrideError::EmptyVmName {
                        token: token.to_owned(),
                        sep,
                    });
                }
                let mode = parse_mode(token, mode)?;
                match self.per_vm.get(vm) {
                    Some((existing, first)) if *existing != mode => {
                        Err(OverrideError::VmConflict {
                            vm: vm.to_owned(),
                            first: first.clone(),
                            second: token.to_owned(),
                        })
                    }
                    Some(_) => Ok(()),
                    None => {
                        self.per_vm.insert(vm.to_owned(), (mode, token.to_owned()));
                        Ok(())
                    }
                }
            }
        }
    }

    /// Checks that every per-VM override names a VM of the project (by expanded name).
    pub fn check_names(&self, known: &[&str]) -> Result<(), OverrideError> {
        for (vm, (_, token)) in &self.per_vm {
            if known.contains(&vm.as_str()) {
                continue;
            }
            let replicas: Vec<&str> = known
                .iter()
                .copied()
                .filter(|k| k.strip_prefix(vm.as_str()).is_some_and(is_replica_suffix))
                .collect();
            let hint = if !replicas.is_empty() {
                format!(
                    " ({vm} has replicas; name one of them: {})",
                    replicas.join(", ")
                )
            } else if let Some(close) = closest(vm, known) {
                format!(" (did you mean {close}?)")
            } else {
                String::new()
            };
            return Err(OverrideError::UnknownVm {
                token: token.clone(),
                vm: vm.clone(),
                hint,
                known: known.iter().map(|s| s.to_string()).collect(),
            });
        }
        Ok(())
    }

    /// The effective mode of `vm` whose castra.toml mode is `file_mode`, and where it came from.
    pub fn resolve(&self, vm: &str, file_mode: BootstrapMode) -> (BootstrapMode, ModeSource) {
        if let Some((mode, token)) = self.per_vm.get(vm) {
            return (
                *mode,
                ModeSource::PerVm {
                    token: token.clone(),
                },
            );
        }
        if let Some((mode, token)) = &self.global {
            return (
                *mode,
                ModeSource::Global {
                    token: token.clone(),
                },
            );
        }
        (file_mode, ModeSource::File)
    }
}

fn parse_mode(token: &str, mode: &str) -> Result<BootstrapMode, OverrideError> {
    BootstrapMode::parse(mode).ok_or_else(|| OverrideError::UnknownMode {
        token: token.to_owned(),
        mode: mode.to_owned(),
    })
}

fn is_replica_suffix(rest: &str) -> bool {
    rest.strip_prefix('-')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .copied()
        .map(|k| (strsim::jaro_winkler(name, k), k))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use BootstrapMode::*;

    const VMS: &[&str] = &["web-0", "web-1", "db", "cache"];

    fn resolve_all(values: &[&str], file: BootstrapMode) -> Result<Vec<BootstrapMode>, String> {
        let o = Overrides::parse(values).map_err(|e| e.to_string())?;
        o.check_names(VMS).map_err(|e| e.to_string())?;
        Ok(VMS.iter().map(|vm| o.resolve(vm, file).0).collect())
    }

    #[test]
    fn precedence_per_vm_over_global_over_file() {
        let cases: &[(&[&str], BootstrapMode, [BootstrapMode; 4])] = &[
            (&[], Auto, [Auto, Auto, Auto, Auto]),
            (&[], Skip, [Skip, Skip, Skip, Skip]),
            (&["always"], Auto, [Always, Always, Always, Always]),
            (&["skip"], Always, [Skip, Skip, Skip, Skip]),
            (&["disabled"], Auto, [Skip, Skip, Skip, Skip]),
            (&["web-1=always"], Skip, [Skip, Always, Skip, Skip]),
            (&["skip", "web-1=always"], Auto, [Skip, Always, Skip, Skip]),
            (&["web-1=always", "skip"], Auto, [Skip, Always, Skip, Skip]),
            (&["web-0:always,db=skip"], Auto, [Always, Auto, Skip, Auto]),
            (
                &["always,db:disabled", "cache=auto"],
                Skip,
                [Always, Always, Skip, Auto],
            ),
            (
                &[" web-0 = skip , always "],
                Auto,
                [Skip, Always, Always, Always],
            ),
        ];
        for (values, file, expected) in cases {
            assert_eq!(
                resolve_all(values, *file).unwrap(),
                expected,
                "{values:?} over {file:?}"
            );
        }
    }

    #[test]
    fn source_names_the_token_that_won() {
        let o = Overrides::parse(&["skip,web-1:always"]).unwrap();
        assert_eq!(
            o.resolve("web-1", Auto).1,
            ModeSource::PerVm {
                token: "web-1:always".into()
            }
        );
        assert_eq!(
            o.resolve("db", Auto).1,
            ModeSource::Global {
                token: "skip".into()
            }
        );
        assert_eq!(Overrides::default().resolve("db", Auto).1, ModeSource::File);
        assert_eq!(o.resolve("db", Auto).1.to_string(), "--bootstrap skip");
    }

    #[test]
    fn same_value_twice_is_not_a_conflict() {
        for values in [
            &["always", "always"][..],
            &["always,always"],
            &["db=skip", "db:disabled"],
            &["skip", "disabled"],
        ] {
            assert!(Overrides::parse(values).is_ok(), "{values:?}");
        }
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["always", "skip"],
                "conflicting global modes: always and skip",
            ),
            (
                &["always,auto"],
                "conflicting global modes: always and auto",
            ),
            (
                &["db=skip", "db:always"],
                "conflicting modes for VM db: db=skip and db:always",
            ),
            (
                &["sometimes"],
                "unknown mode \"sometimes\"; expected one of auto, skip, always",
            ),
            (
                &["db=ALWAYS"],
                "--bootstrap db=ALWAYS: unknown mode \"ALWAYS\"",
            ),
            (&["db="], "--bootstrap db=: unknown mode \"\""),
            (&["=always"], "missing VM name before '='"),
            (&[":skip"], "missing VM name before ':'"),
            (&["always,,db=skip"], "empty item in \"always,,db=skip\""),
            (&[""], "empty item"),
        ];
        for (values, want) in cases {
            let err = Overrides::parse(values).unwrap_err().to_string();
            assert!(err.contains(want), "{values:?}: {err}");
        }
    }

    #[test]
    fn unknown_vm_lists_known_names_with_a_hint() {
        let err = resolve_all(&["dbb=skip"], Auto).unwrap_err();
        assert_eq!(
            err,
            "--bootstrap dbb=skip: unknown VM \"dbb\" (did you mean db?); \
             known VMs: web-0, web-1, db, cache"
        );
        let err = resolve_all(&["web=always"], Auto).unwrap_err();
        assert!(
            err.contains("(web has replicas; name one of them: web-0, web-1)"),
            "{err}"
        );
        let err = resolve_all(&["zzz:always"], Auto).unwrap_err();
        assert!(
            err.contains("unknown VM \"zzz\"; known VMs: web-0, web-1, db, cache"),
            "{err}"
        );
    }

    mod props {
        //! Property tests (issue 14 item 15): no input panics the grammar, and what is printed
        //! from a set of overrides parses back to the same effective modes.

        use std::collections::BTreeMap;

        use proptest::prelude::*;

        use super::*;
        use crate::testutil::proptest_config;

        fn mode() -> impl Strategy<Value = BootstrapMode> {
            prop_oneof![Just(Auto), Just(Skip), Just(Always)]
        }

        /// How a mode may be spelled: `skip` also as `disabled`.
        fn spelling(mode: BootstrapMode, alias: bool) -> &'static str {
            match (mode, alias) {
                (Skip, true) => "disabled",
                (mode, _) => mode.as_str(),
            }
        }

        proptest! {
            #![proptest_config(proptest_config(3000))]

            #[test]
            fn any_values_parse_or_fail_with_a_reason(
                values in proptest::collection::vec(
                    prop_oneof![
                        "[a-z0-9=:, -]{0,24}",
                        "(auto|skip|always|disabled|[a-z]{1,3})([=:](auto|skip|é|))?(,[ =:a-z]{0,6}){0,3}",
                        any::<String>(),
                    ],
                    0..4,
                ),
                known in proptest::collection::vec("[a-z0-9-]{1,8}", 0..4),
            ) {
                match Overrides::parse(&values) {
                    Ok(o) => {
                        let known: Vec<&str> = known.iter().map(String::as_str).collect();
                        if let Err(e) = o.check_names(&known) {
                            prop_assert!(!e.to_string().is_empty());
                        }
                        for vm in &known {
                            let _ = o.resolve(vm, Auto);
                        }
                    }
                    Err(e) => prop_assert!(e.to_string().starts_with("--bootstrap")),
                }
            }

            /// Printed (in any order, split over flags, `=` or `:`, spaces, the `disabled`
            /// alias, items repeated), parsed back: each VM resolves to its mode, others to
            /// the global one, else the file's.
            #[test]
            fn printed_overrides_parse_back_to_the_same_modes(
                global in proptest::option::of((mode(), any::<bool>())),
                per_vm in proptest::collection::btree_map(
                    "[a-z0-9][a-z0-9-]{0,10}",
                    (mode(), any::<bool>(), any::<bool>(), any::<bool>()),
                    0..6,
                ),
                order in any::<proptest::sample::Index>(),
                flags in 1usize..4,
                file in mode(),
            ) {
                let mut items: Vec<String> = per_vm
                    .iter()
                    .map(|(vm, (mode, alias, colon, spaced))| {
                        let sep = if *colon { ":" } else { "=" };
                        let pad = if *spaced { " " } else { "" };
                        format!("{pad}{vm}{pad}{sep}{pad}{}{pad}", spelling(*mode, *alias))
                    })
                    .collect();
                if let Some((mode, alias)) = global {
                    items.push(spelling(mode, alias).to_owned());
                    items.push(mode.as_str().to_owned()); // the same again: no conflict
                }
                if !items.is_empty() {
                    let at = order.index(items.len());
                    items.rotate_left(at);
                }
                let per_flag = items.len().div_ceil(flags).max(1);
                let values: Vec<String> = items.chunks(per_flag).map(|c| c.join(",")).collect();
                let parsed = Overrides::parse(&values).unwrap();
                let names: Vec<&str> = per_vm.keys().map(String::as_str).collect();
                parsed.check_names(&names).unwrap();
                let expected: BTreeMap<&str, BootstrapMode> =
                    per_vm.iter().map(|(vm, (m, ..))| (vm.as_str(), *m)).collect();
                for (vm, want) in &expected {
                    prop_assert_eq!(parsed.resolve(vm, file).0, *want);
                }
                let other = parsed.resolve("Not-listed", file).0;
                prop_assert_eq!(other, global.map_or(file, |(m, _)| m));
            }
        }
    }
}

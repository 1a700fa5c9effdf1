//! Property tests (issue 14 item 15): whatever castra.toml or bootstrap.toml says, the loader
//! returns a project that keeps its invariants or an error located inside the text, and never
//! panics. Integer keys accept exactly their range and otherwise point at the value.
//! `PROPTEST_CASES` sets the number of cases (`scripts/fuzz`).

use proptest::prelude::*;

use super::*;
use crate::testutil::proptest_config;

/// A TOML basic string holding `s` exactly.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An error's location is a line and column of the text it is about.
fn assert_located(text: &str, e: &ConfigError) {
    let shown = e.to_string();
    assert!(!shown.is_empty());
    let Some((_, line, column)) = e.location() else {
        panic!("no location: {shown}");
    };
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        (1..=lines.len()).contains(&line),
        "line {line} of {}: {shown}",
        lines.len()
    );
    let width = lines[line - 1].chars().count();
    assert!(
        (1..=width + 1).contains(&column),
        "column {column} of {width}: {shown}"
    );
}

/// What every parsed project promises (config/mod.rs).
fn assert_invariants(p: &Project) {
    let mut names = std::collections::HashSet::new();
    for vm in &p.vms {
        assert!(is_valid_name(&vm.name), "{:?}", vm.name);
        assert!(names.insert(vm.name.clone()), "duplicate {:?}", vm.name);
        assert!(vm.bootstrap.remote_dir.starts_with('/'));
        assert!(!vm.bootstrap.remote_dir.contains(['\0', '\n']));
        assert!((1..=MAX_HANDSHAKE_TIMEOUT_SECS).contains(&vm.bootstrap.handshake_timeout_secs));
        assert!(vm.cpus >= 1 && vm.memory_mib >= 1);
        assert!(vm.disk_mib.is_none_or(|d| d >= 1));
        let base = vm.base_image.as_ref().and_then(|b| b.file());
        for path in [base, vm.kernel.as_deref(), vm.bootstrap.script.as_deref()]
            .into_iter()
            .flatten()
        {
            assert!(path.is_absolute(), "{}", path.display());
        }
        for (k, v) in &vm.bootstrap.env {
            assert!(!k.is_empty() && !k.starts_with("CASTRA_") && !v.contains('\0'));
        }
    }
}

fn check(text: &str) {
    match parse(Path::new(PATH), text) {
        Ok(p) => assert_invariants(&p),
        Err(e) => assert_located(text, &e),
    }
}

/// Pieces castra.toml is made of, for text that is nearly a config.
const TOKENS: &[&str] = &[
    "[project]\n",
    "[[vms]]\n",
    "[vms.bootstrap]\n",
    "[vms.bootstrap.env]\n",
    "[vms.ssh]\n",
    "[vms.cloud_init]\n",
    "[[vms.port_forwards]]\n",
    "[bootstrap]\n",
    "[bootstrap.env]\n",
    "name = ",
    "replicas = ",
    "backend = ",
    "base_image = ",
    "cpus = ",
    "memory = ",
    "disk = ",
    "firmware = ",
    "handshake_timeout_secs = ",
    "remote_dir = ",
    "vizier_dir = ",
    "mode = ",
    "script = ",
    "verify_path = ",
    "port = ",
    "host = ",
    "guest = ",
    "options = ",
    "version = ",
    "\"web\"",
    "\"external\"",
    "\"qemu\"",
    "\"/srv/{vm}\"",
    "\"2 GiB\"",
    "\"a=b\"",
    "true",
    "1",
    "\n",
    "\n",
    "\"",
    "'",
    "\"\"\"",
    "[",
    "]",
    "{",
    "}",
    ",",
    ".",
    "=",
    " ",
    "#",
    "é",
    "\u{0}",
    "\r",
];

fn tomlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        8 => proptest::sample::select(TOKENS).prop_map(str::to_owned),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<String>(),
        1 => any::<String>().prop_map(|s| toml_string(&s)),
    ];
    proptest::collection::vec(token, 0..64).prop_map(|t| t.concat())
}

/// Integers as a config might hold them: mostly small, else at the edges or anything.
fn int() -> impl Strategy<Value = i64> {
    prop_oneof![
        30 => 1..5i64,
        2 => -3..70_000i64,
        1 => any::<i64>(),
        1 => Just(i64::MAX),
        1 => Just(i64::MIN),
        1 => Just(i64::from(u32::MAX) + 1),
    ]
}

/// Strings as a config might hold them: `plausible` mostly, else anything at all.
fn text(plausible: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => proptest::sample::select(plausible).prop_map(str::to_owned),
        1 => "[a-z0-9-]{0,12}",
        1 => "/[a-z{}/.]{0,20}",
        1 => "[ -~]{0,30}",
        1 => any::<String>(),
    ]
}

const NAMES: &[&str] = &["web", "db", "a-1", "x"];
const DIRS: &[&str] = &["/srv/{vm}", "/var/tmp/x", "/opt/{vm}/v"];
const SIZES: &[&str] = &["2 GiB", "512M", "1T", "16384 TiB", "0", ""];
const WORDS: &[&str] = &["127.0.0.1", "deploy", "h"];
const OPTIONS: &[&str] = &["ServerAliveInterval=5", "Compression=yes", "ProxyCommand=x"];

/// A value: an integer or a string.
#[derive(Debug, Clone)]
enum Value {
    Int(i64),
    Text(String),
}

/// `key = value` lines, each key at most once: integers for `ints`, strings for `texts` (each
/// with its plausible values), and now and then the other type.
fn lines(
    ints: &'static [&'static str],
    texts: &'static [(&'static str, &'static [&'static str])],
) -> BoxedStrategy<Vec<(&'static str, Value)>> {
    let one = move |key: &'static str| {
        let plausible = texts
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(NAMES, |(_, p)| *p);
        let (wanted, other) = (
            int().prop_map(Value::Int).boxed(),
            text(plausible).prop_map(Value::Text).boxed(),
        );
        let (wanted, other) = if ints.contains(&key) {
            (wanted, other)
        } else {
            (other, wanted)
        };
        prop_oneof![200 => wanted, 1 => other].prop_map(move |v| (key, v))
    };
    let keys: Vec<&'static str> = ints
        .iter()
        .copied()
        .chain(texts.iter().map(|(k, _)| *k))
        .collect();
    proptest::sample::subsequence(keys.clone(), 0..=keys.len())
        .prop_flat_map(move |keys| keys.into_iter().map(one).collect::<Vec<_>>())
        .boxed()
}

#[derive(Debug, Clone)]
struct WildVm {
    name: String,
    external: bool,
    /// Shaped as its backend wants (lifecycle keys only for QEMU, a host for external).
    shaped: bool,
    top: Vec<(&'static str, Value)>,
    ssh: Vec<(&'static str, Value)>,
    options: Vec<String>,
    bootstrap: Vec<(&'static str, Value)>,
    env: Vec<(String, String)>,
    forwards: Vec<(i64, i64, String)>,
}

fn wild_vm() -> impl Strategy<Value = WildVm> {
    let top = lines(
        &["replicas", "cpus", "memory"],
        &[
            ("base_image", &["img.qcow2", "/abs/base"]),
            ("disk", SIZES),
            ("firmware", &["bios", "uefi"]),
            ("accel", &["auto", "kvm", "tcg"]),
        ],
    );
    let ssh = lines(
        &["port"],
        &[
            ("host", &["127.0.0.1", "h"]),
            ("user", &["deploy", "root"]),
            ("identity", &["~/.ssh/id", "key", "~/"]),
        ],
    );
    let bootstrap = lines(
        &["handshake_timeout_secs"],
        &[
            ("mode", &["auto", "always", "skip", "disabled"]),
            ("script", &["run.sh"]),
            ("payload", &["payload"]),
            ("verify_path", &["done", "a/b"]),
            ("remote_dir", DIRS),
            ("vizier_dir", DIRS),
        ],
    );
    (
        (
            text(NAMES),
            any::<bool>(),
            proptest::bool::weighted(0.75),
            top,
            ssh,
        ),
        (
            proptest::collection::vec(text(OPTIONS), 0..3),
            bootstrap,
            proptest::collection::vec((text(&["A", "B_1", "CASTRA_X"]), text(SIZES)), 0..3),
            proptest::collection::vec((int(), int(), text(&["tcp", "udp"])), 0..3),
        ),
    )
        .prop_map(
            |((name, external, shaped, top, ssh), (options, bootstrap, env, forwards))| WildVm {
                name,
                external,
                shaped,
                top,
                ssh,
                options,
                bootstrap,
                env,
                forwards,
            },
        )
}

fn render_lines(t: &mut String, lines: &[(&str, Value)]) {
    for (k, v) in lines {
        match v {
            Value::Int(n) => *t += &format!("{k} = {n}\n"),
            Value::Text(s) => *t += &format!("{k} = {}\n", toml_string(s)),
        }
    }
}

fn render(project: &str, timeout: Option<i64>, dir: Option<&str>, vms: &[WildVm]) -> String {
    let mut t = format!("[project]\nname = {}\n", toml_string(project));
    t += "[bootstrap]\n";
    if let Some(n) = timeout {
        t += &format!("handshake_timeout_secs = {n}\n");
    }
    if let Some(dir) = dir {
        t += &format!("remote_dir = {}\n", toml_string(dir));
    }
    for vm in vms {
        t += &format!("\n[[vms]]\nname = {}\n", toml_string(&vm.name));
        let has = |lines: &[(&str, Value)], key: &str| lines.iter().any(|(k, _)| *k == key);
        if vm.external {
            t += "backend = \"external\"\n";
        } else if vm.shaped && !has(&vm.top, "base_image") {
            t += "base_image = \"img.qcow2\"\n";
        }
        if !(vm.external && vm.shaped) {
            render_lines(&mut t, &vm.top);
        }
        t += "[vms.ssh]\n";
        if vm.external && vm.shaped && !has(&vm.ssh, "host") {
            t += "host = \"h\"\n";
        }
        render_lines(&mut t, &vm.ssh);
        let options: Vec<String> = vm.options.iter().map(|o| toml_string(o)).collect();
        t += &format!("options = [{}]\n", options.join(", "));
        t += "[vms.bootstrap]\n";
        render_lines(&mut t, &vm.bootstrap);
        t += "[vms.bootstrap.env]\n";
        let mut seen = std::collections::HashSet::new();
        for (k, v) in vm.env.iter().filter(|(k, _)| seen.insert(k.clone())) {
            t += &format!("{} = {}\n", toml_string(k), toml_string(v));
        }
        for (host, guest, protocol) in vm.forwards.iter().filter(|_| !(vm.external && vm.shaped)) {
            t += &format!(
                "[[vms.port_forwards]]\nhost = {host}\nguest = {guest}\nprotocol = {}\n",
                toml_string(protocol)
            );
        }
    }
    t
}

proptest! {
    #![proptest_config(proptest_config(1500))]

    #[test]
    fn any_text_parses_or_fails_at_a_place_in_it(text in tomlish()) {
        check(&text);
    }

    #[test]
    fn wild_values_parse_or_fail_at_a_place_in_the_text(
        project in text(NAMES),
        timeout in proptest::option::of(int()),
        dir in proptest::option::of(text(DIRS)),
        vms in proptest::collection::vec(wild_vm(), 0..3),
    ) {
        check(&render(&project, timeout, dir.as_deref(), &vms));
    }

    /// handshake_timeout_secs: exactly 1..=MAX is accepted and kept; anything else is an error
    /// at the value (line 8, column 26).
    #[test]
    fn handshake_timeout_is_bounded_and_located(n in int()) {
        let text = format!("{}[vms.bootstrap]\nhandshake_timeout_secs = {n}\n", head!());
        match parse(Path::new(PATH), &text) {
            Ok(p) => {
                prop_assert!((1..=MAX_HANDSHAKE_TIMEOUT_SECS as i64).contains(&n));
                prop_assert_eq!(p.vms[0].bootstrap.handshake_timeout_secs as i64, n);
            }
            Err(e) => {
                prop_assert!(!(1..=MAX_HANDSHAKE_TIMEOUT_SECS as i64).contains(&n));
                assert_error_at(
                    &e,
                    Path::new(PATH),
                    "vms[0].bootstrap.handshake_timeout_secs",
                    "must be between 1 and 86400",
                    8,
                    26,
                );
            }
        }
    }

    /// cpus and replicas: the same, at line 7 (the value's column).
    #[test]
    fn integer_keys_keep_their_range(n in int(), replicas in any::<bool>()) {
        let (key, max) = if replicas {
            ("replicas", i64::from(MAX_REPLICAS))
        } else {
            ("cpus", i64::from(u32::MAX))
        };
        let text = format!("{}{key} = {n}\n", head!());
        match parse(Path::new(PATH), &text) {
            Ok(p) if replicas => prop_assert_eq!(p.vms.len() as i64, n),
            Ok(p) => prop_assert_eq!(i64::from(p.vms[0].cpus), n),
            Err(e) => {
                prop_assert!(!(1..=max).contains(&n));
                let key_path = format!("vms[0].{key}");
                let column = key.len() + 4;
                assert_error_at(&e, Path::new(PATH), &key_path, "must be between", 7, column);
            }
        }
    }
}

/// `load` with a bootstrap.toml beside the script: whatever that file says. (One directory
/// for all cases: each writes the file again.)
#[test]
fn any_bootstrap_toml_loads_or_fails_at_a_place_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("castra.toml");
    let castra = "[project]\nname = \"p\"\n[[vms]]\nname = \"db\"\nbackend = \"external\"\n\
                [vms.ssh]\nhost = \"h\"\n[vms.bootstrap]\nscript = \"run.sh\"\n";
    fs::write(&config, castra).unwrap();
    fs::write(dir.path().join("run.sh"), "true\n").unwrap();
    let meta = dir.path().join(METADATA_FILE_NAME);
    let strategy = prop_oneof![
        tomlish(),
        (
            text(WORDS),
            int(),
            text(&["A", "CASTRA_A", "1"]),
            text(OPTIONS)
        )
            .prop_map(|(host, port, k, v)| format!(
                "[ssh]\nhost = {}\nport = {port}\noptions = [{}]\n[env]\n{} = {}\n",
                toml_string(&host),
                toml_string(&v),
                toml_string(&k),
                toml_string(&v),
            )),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(proptest_config(300));
    let result = runner.run(&strategy, |written| {
        fs::write(&meta, &written).unwrap();
        match load(&config) {
            Ok(p) => assert_invariants(&p),
            Err(e) if e.path().ends_with(METADATA_FILE_NAME) => assert_located(&written, &e),
            Err(e) => panic!("castra.toml is valid: {e}"),
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

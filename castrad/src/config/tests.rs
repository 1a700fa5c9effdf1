use super::*;
use std::fs;

const PATH: &str = "/p/castra.toml";

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

fn ok(text: &str) -> Project {
    parse(Path::new(PATH), text).unwrap_or_else(|e| panic!("unexpected error: {e}\n{text}"))
}

fn err(text: &str) -> ConfigError {
    match parse(Path::new(PATH), text) {
        Ok(p) => panic!("expected an error, got {p:?}\n{text}"),
        Err(e) => e,
    }
}

fn assert_error_at(e: &ConfigError, path: &Path, key: &str, needle: &str, line: usize, col: usize) {
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

fn assert_parse_error(text: &str, key: &str, needle: &str, line: usize, col: usize) {
    assert_error_at(&err(text), Path::new(PATH), key, needle, line, col);
}

/// (description, toml, key path, expected message substring, line, column)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    usize,
    usize,
);

const SYNTAX_AND_UNKNOWN_KEYS: &[Case] = &[
    (
        "missing value",
        concat!(head!(), "cpus = \n"),
        "",
        "TOML syntax error",
        7,
        8,
    ),
    (
        "duplicate key",
        concat!(head!(), "name = \"x\"\n"),
        "",
        "TOML syntax error: duplicate key",
        7,
        1,
    ),
    (
        "typo gets a suggestion",
        concat!(head!(), "[vms.bootstrap]\nscirpt = \"s.sh\"\n"),
        "vms[0].bootstrap",
        "unknown key `scirpt`; did you mean `script`?",
        8,
        1,
    ),
    (
        "dotted typo points at the unknown part",
        concat!(head!(), "bootstrap.scirpt = \"s.sh\"\n"),
        "vms[0].bootstrap",
        "unknown key `scirpt`; did you mean `script`?",
        7,
        11,
    ),
    (
        "wild key lists the expected keys",
        concat!(head!(), "wibble = 1\n"),
        "vms[0]",
        "unknown key `wibble`; expected one of `name`, `description`, `replicas`",
        7,
        1,
    ),
    (
        "unknown top-level table",
        "[projet]\nname = \"demo\"\n",
        "",
        "unknown top-level key `projet`; did you mean `project`?",
        1,
        2,
    ),
    (
        "[[vm]] instead of [[vms]]",
        "[project]\nname = \"demo\"\n[[vm]]\nname = \"x\"\n",
        "",
        "unknown top-level key `vm`; did you mean `vms`?",
        3,
        3,
    ),
    (
        "unknown project key",
        "[project]\nname = \"demo\"\nnmae = \"x\"\n",
        "project",
        "unknown key `nmae`; did you mean `name`?",
        3,
        1,
    ),
    (
        "unknown ssh key",
        concat!(head!(), "[vms.ssh]\nhots = \"h\"\n"),
        "vms[0].ssh",
        "unknown key `hots`; did you mean `host`?",
        8,
        1,
    ),
    (
        "unknown port forward key",
        concat!(head!(), "[[vms.port_forwards]]\nhost = 8080\nguets = 80\n"),
        "vms[0].port_forwards[0]",
        "unknown key `guets`; did you mean `guest`?",
        9,
        1,
    ),
    (
        "per-VM key in global bootstrap",
        "[project]\nname = \"demo\"\n[bootstrap]\nscript = \"x\"\n",
        "bootstrap",
        "unknown key `script`",
        4,
        1,
    ),
];

const TYPE_ERRORS: &[Case] = &[
    (
        "string for integer",
        concat!(head!(), "cpus = \"two\"\n"),
        "vms[0].cpus",
        "expected an integer, found string \"two\"",
        7,
        8,
    ),
    (
        "float for integer",
        concat!(head!(), "cpus = 1.5\n"),
        "vms[0].cpus",
        "expected an integer, found floating point `1.5`",
        7,
        8,
    ),
    (
        "string for boolean",
        concat!(head!(), "ephemeral = \"yes\"\n"),
        "vms[0].ephemeral",
        "expected a boolean (true or false), found string \"yes\"",
        7,
        13,
    ),
    (
        "integer for string",
        "[project]\nname = 5\n",
        "project.name",
        "expected a string, found integer `5`",
        2,
        8,
    ),
    (
        "table for string",
        concat!(head!(), "description = { a = 1 }\n"),
        "vms[0].description",
        "expected a string, found a table",
        7,
        15,
    ),
    (
        "env value not a string",
        concat!(head!(), "[vms.bootstrap.env]\nFOO = 1\n"),
        "vms[0].bootstrap.env.FOO",
        "expected a string, found an integer",
        8,
        7,
    ),
    (
        "env value that is a date",
        concat!(head!(), "[vms.bootstrap.env]\nWHEN = 1979-05-27\n"),
        "vms[0].bootstrap.env.WHEN",
        "expected a string, found a date/time (quote the value)",
        8,
        8,
    ),
    (
        "memory of the wrong type",
        concat!(head!(), "memory = true\n"),
        "vms[0].memory",
        "expected a size like \"2 GiB\" or an integer number of MiB, found boolean `true`",
        7,
        10,
    ),
    (
        "options not an array",
        concat!(head!(), "[vms.ssh]\noptions = \"A=b\"\n"),
        "vms[0].ssh.options",
        "expected an array, found string \"A=b\"",
        8,
        11,
    ),
    (
        "vms not an array",
        "vms = 3\n[project]\nname = \"demo\"\n",
        "vms",
        "expected an array, found integer `3`",
        1,
        7,
    ),
    (
        "inline port forward",
        concat!(head!(), "port_forwards = [{ host = \"80\", guest = 80 }]\n"),
        "vms[0].port_forwards[0].host",
        "expected an integer, found string \"80\"",
        7,
        27,
    ),
    (
        "missing project name",
        "[project]\n",
        "project",
        "missing required key `name`",
        1,
        1,
    ),
    (
        "missing [project]",
        "version = \"1\"\n",
        "",
        "missing required key `project`",
        1,
        1,
    ),
    (
        "missing VM name points at its table",
        "[project]\nname = \"demo\"\n\n[[vms]]\nbase_image = \"x\"\n",
        "vms[0]",
        "missing required key `name`",
        4,
        1,
    ),
    (
        "missing guest port",
        concat!(head!(), "[[vms.port_forwards]]\nhost = 8080\n"),
        "vms[0].port_forwards[0]",
        "missing required key `guest`",
        7,
        1,
    ),
    (
        "columns count characters, not bytes",
        concat!(head!(), "ssh = { user = \"é\", port = 0 }\n"),
        "vms[0].ssh.port",
        "port must be between 1 and 65535, got 0",
        7,
        28,
    ),
];

const SEMANTIC_ERRORS: &[Case] = &[
    (
        "unknown accelerator",
        concat!(head!(), "accel = \"hvf\"\n"),
        "vms[0].accel",
        "unknown accelerator \"hvf\"; expected one of auto, kvm, tcg",
        7,
        9,
    ),
    (
        "unknown mode",
        concat!(head!(), "[vms.bootstrap]\nmode = \"sometimes\"\n"),
        "vms[0].bootstrap.mode",
        "unknown mode \"sometimes\"; expected one of auto, skip, always (or disabled)",
        8,
        8,
    ),
    (
        "mode is case-sensitive",
        concat!(head!(), "[vms.bootstrap]\nmode = \"Auto\"\n"),
        "vms[0].bootstrap.mode",
        "unknown mode \"Auto\"",
        8,
        8,
    ),
    (
        "unknown backend",
        concat!(head!(), "backend = \"docker\"\n"),
        "vms[0].backend",
        "unknown backend \"docker\"; expected \"qemu\" or \"external\"",
        7,
        11,
    ),
    (
        "unknown protocol",
        concat!(
            head!(),
            "[[vms.port_forwards]]\nhost = 8080\nguest = 80\nprotocol = \"sctp\"\n"
        ),
        "vms[0].port_forwards[0].protocol",
        "unknown protocol \"sctp\"; expected \"tcp\" or \"udp\"",
        10,
        12,
    ),
    (
        "host port 0",
        concat!(head!(), "[[vms.port_forwards]]\nhost = 0\nguest = 80\n"),
        "vms[0].port_forwards[0].host",
        "port must be between 1 and 65535, got 0",
        8,
        8,
    ),
    (
        "guest port too large",
        concat!(
            head!(),
            "[[vms.port_forwards]]\nhost = 8080\nguest = 70000\n"
        ),
        "vms[0].port_forwards[0].guest",
        "port must be between 1 and 65535, got 70000",
        9,
        9,
    ),
    (
        "negative host port",
        concat!(head!(), "[[vms.port_forwards]]\nhost = -1\nguest = 80\n"),
        "vms[0].port_forwards[0].host",
        "got -1",
        8,
        8,
    ),
    (
        "project name with uppercase",
        "[project]\nname = \"Demo\"\n",
        "project.name",
        "invalid project name \"Demo\": names may contain only lowercase ASCII letters (a-z), \
         digits (0-9) and '-'",
        2,
        8,
    ),
    (
        "expanded name too long",
        concat!(
            vm_named!("\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\""),
            "replicas = 11\n"
        ),
        "vms[0].name",
        "expands to \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-10\" (64 \
         characters); expanded names must be at most 63 characters",
        5,
        8,
    ),
    (
        "zero replicas",
        concat!(head!(), "replicas = 0\n"),
        "vms[0].replicas",
        "replicas must be between 1 and 1000, got 0",
        7,
        12,
    ),
    (
        "too many replicas",
        concat!(head!(), "replicas = 1001\n"),
        "vms[0].replicas",
        "replicas must be between 1 and 1000, got 1001",
        7,
        12,
    ),
    (
        "zero cpus",
        concat!(head!(), "cpus = 0\n"),
        "vms[0].cpus",
        "cpus must be between 1 and 4294967295, got 0",
        7,
        8,
    ),
    (
        "initrd without kernel",
        concat!(head!(), "initrd = \"initrd.img\"\n"),
        "vms[0].initrd",
        "`initrd` requires `kernel` (direct kernel boot)",
        7,
        10,
    ),
    (
        "cmdline without kernel",
        concat!(head!(), "cmdline = \"console=ttyS0\"\n"),
        "vms[0].cmdline",
        "`cmdline` requires `kernel` (direct kernel boot)",
        7,
        11,
    ),
    (
        "qemu without base_image points at the name",
        "[project]\nname = \"demo\"\n\n[[vms]]\nname = \"web\"\n",
        "vms[0].base_image",
        "missing required key `base_image`",
        5,
        8,
    ),
    (
        "empty path",
        concat!(head!(), "kernel = \"\"\n"),
        "vms[0].kernel",
        "expected a path, found an empty string",
        7,
        10,
    ),
    (
        "external without ssh table",
        ext!(),
        "vms[0].ssh.host",
        "missing required key `ssh.host`: external VMs are reached only by SSH",
        5,
        8,
    ),
    (
        "external without ssh.host",
        concat!(ext!(), "[vms.ssh]\nuser = \"u\"\n"),
        "vms[0].ssh.host",
        "missing required key `ssh.host`",
        5,
        8,
    ),
    (
        "replica clashes with a declared VM",
        concat!(
            head!(),
            "replicas = 2\n\n[[vms]]\nname = \"web-1\"\nbase_image = \"i\"\n"
        ),
        "vms[1].name",
        "duplicate VM name \"web-1\": declared by vms[0] (name \"web\" with replicas = 2, line 5) \
         and again by vms[1] (line 10)",
        10,
        8,
    ),
    (
        "plain duplicate name",
        concat!(head!(), "\n[[vms]]\nname = \"web\"\nbase_image = \"i\"\n"),
        "vms[1].name",
        "duplicate VM name \"web\": declared by vms[0] (line 5) and again by vms[1] (line 9)",
        9,
        8,
    ),
    (
        "host port used by two VMs",
        concat!(
            head!(),
            "[[vms.port_forwards]]\nhost = 8080\nguest = 80\n\n[[vms]]\nname = \"api\"\n",
            "base_image = \"i\"\n[[vms.port_forwards]]\nhost = 8080\nguest = 8080\n"
        ),
        "vms[1].port_forwards[0].host",
        "host port 8080/tcp is forwarded twice: by VM \"web\" (vms[0].port_forwards[0], line 8) \
         and by VM \"api\"",
        15,
        8,
    ),
    (
        "replicas with a host port forward",
        concat!(
            head!(),
            "replicas = 2\n[[vms.port_forwards]]\nhost = 8080\nguest = 80\n"
        ),
        "vms[0].port_forwards[0].host",
        "host port 8080/tcp is forwarded twice: by VM \"web-0\" (vms[0].port_forwards[0], line 9) \
         and by VM \"web-1\"; replicas of a VM cannot share a host port forward",
        9,
        8,
    ),
    (
        "same udp port twice in one VM",
        concat!(
            head!(),
            "port_forwards = [\n  { host = 53, guest = 53, protocol = \"udp\" },\n",
            "  { host = 53, guest = 5353, protocol = \"udp\" },\n]\n"
        ),
        "vms[0].port_forwards[1].host",
        "host port 53/udp is forwarded twice",
        9,
        12,
    ),
    (
        "relative per-VM remote_dir",
        concat!(head!(), "[vms.bootstrap]\nremote_dir = \"relative/{vm}\"\n"),
        "vms[0].bootstrap.remote_dir",
        "remote_dir \"relative/{vm}\" must be an absolute path",
        8,
        14,
    ),
    (
        "remote_dir that is only the placeholder",
        concat!(head!(), "[vms.bootstrap]\nremote_dir = \"{vm}\"\n"),
        "vms[0].bootstrap.remote_dir",
        "must be an absolute path",
        8,
        14,
    ),
    (
        "relative global remote_dir",
        "[project]\nname = \"demo\"\n[bootstrap]\nremote_dir = \"tmp/{vm}\"\n",
        "bootstrap.remote_dir",
        "remote_dir \"tmp/{vm}\" must be an absolute path",
        4,
        14,
    ),
    (
        "newline in remote_dir",
        concat!(head!(), "[vms.bootstrap]\nremote_dir = \"/srv/a\\nb\"\n"),
        "vms[0].bootstrap.remote_dir",
        "must not contain NUL or newline characters",
        8,
        14,
    ),
    (
        "NUL in remote_dir",
        concat!(
            head!(),
            "[vms.bootstrap]\nremote_dir = \"/srv/a\\u0000b\"\n"
        ),
        "vms[0].bootstrap.remote_dir",
        "must not contain NUL or newline characters",
        8,
        14,
    ),
    (
        "absolute verify_path",
        concat!(head!(), "[vms.bootstrap]\nverify_path = \"/etc/ok\"\n"),
        "vms[0].bootstrap.verify_path",
        "verify_path \"/etc/ok\" must be relative to remote_dir",
        8,
        15,
    ),
    (
        "verify_path escaping with ..",
        concat!(head!(), "[vms.bootstrap]\nverify_path = \"a/../../b\"\n"),
        "vms[0].bootstrap.verify_path",
        "must not contain `..` components",
        8,
        15,
    ),
    (
        "empty verify_path",
        concat!(head!(), "[vms.bootstrap]\nverify_path = \"\"\n"),
        "vms[0].bootstrap.verify_path",
        "must name a path relative to remote_dir, not be empty",
        8,
        15,
    ),
    (
        "verify_path of only dots",
        concat!(head!(), "[vms.bootstrap]\nverify_path = \"./\"\n"),
        "vms[0].bootstrap.verify_path",
        "not be empty",
        8,
        15,
    ),
    (
        "env name starting with a digit",
        concat!(head!(), "[vms.bootstrap.env]\n1BAD = \"x\"\n"),
        "vms[0].bootstrap.env.1BAD",
        "invalid environment variable name \"1BAD\"; expected letters, digits and '_'",
        8,
        1,
    ),
    (
        "env name with a dash",
        concat!(head!(), "[vms.bootstrap.env]\nMY-VAR = \"x\"\n"),
        "vms[0].bootstrap.env.MY-VAR",
        "invalid environment variable name \"MY-VAR\"",
        8,
        1,
    ),
    (
        "quoted env name with a space",
        concat!(head!(), "[vms.bootstrap.env]\n\"A B\" = \"x\"\n"),
        "vms[0].bootstrap.env.\"A B\"",
        "invalid environment variable name \"A B\"",
        8,
        1,
    ),
    (
        "reserved env prefix",
        concat!(head!(), "[vms.bootstrap.env]\nCASTRA_VM = \"x\"\n"),
        "vms[0].bootstrap.env.CASTRA_VM",
        "uses the reserved prefix CASTRA_",
        8,
        1,
    ),
    (
        "reserved prefix in global env",
        "[project]\nname = \"demo\"\n[bootstrap.env]\nOK = \"1\"\nCASTRA_HOME = \"x\"\n",
        "bootstrap.env.CASTRA_HOME",
        "reserved prefix CASTRA_",
        5,
        1,
    ),
    (
        "NUL in env value",
        concat!(head!(), "[vms.bootstrap.env]\nFOO = \"a\\u0000b\"\n"),
        "vms[0].bootstrap.env.FOO",
        "environment values must not contain NUL",
        8,
        7,
    ),
    (
        "zero per-VM handshake timeout",
        concat!(head!(), "[vms.bootstrap]\nhandshake_timeout_secs = 0\n"),
        "vms[0].bootstrap.handshake_timeout_secs",
        "handshake_timeout_secs must be at least 1, got 0",
        8,
        26,
    ),
    (
        "negative global handshake timeout",
        "[project]\nname = \"demo\"\n[bootstrap]\nhandshake_timeout_secs = -5\n",
        "bootstrap.handshake_timeout_secs",
        "handshake_timeout_secs must be at least 1, got -5",
        4,
        26,
    ),
    (
        "ssh option without =",
        concat!(
            head!(),
            "[vms.ssh]\noptions = [\"StrictHostKeyChecking=no\", \"NoEquals\"]\n"
        ),
        "vms[0].ssh.options[1]",
        "invalid ssh option \"NoEquals\"; expected \"Key=Value\"",
        8,
        40,
    ),
    (
        "ssh option with empty key",
        concat!(head!(), "[vms.ssh]\noptions = [\"=x\"]\n"),
        "vms[0].ssh.options[0]",
        "invalid ssh option \"=x\"",
        8,
        12,
    ),
    (
        "ssh option with non-alphanumeric key",
        concat!(head!(), "[vms.ssh]\noptions = [\"Bad Key=1\"]\n"),
        "vms[0].ssh.options[0]",
        "invalid ssh option",
        8,
        12,
    ),
    (
        "ssh option with a newline",
        concat!(head!(), "[vms.ssh]\noptions = [\"A=b\\nHost=evil\"]\n"),
        "vms[0].ssh.options[0]",
        "invalid ssh option",
        8,
        12,
    ),
    (
        "ssh port 0",
        concat!(head!(), "[vms.ssh]\nport = 0\n"),
        "vms[0].ssh.port",
        "port must be between 1 and 65535, got 0",
        8,
        8,
    ),
    (
        "ssh host that looks like an option",
        concat!(head!(), "[vms.ssh]\nhost = \"-oProxyCommand=x\"\n"),
        "vms[0].ssh.host",
        "invalid ssh host \"-oProxyCommand=x\"",
        8,
        8,
    ),
    (
        "ssh user with whitespace",
        concat!(head!(), "[vms.ssh]\nuser = \"a b\"\n"),
        "vms[0].ssh.user",
        "invalid ssh user \"a b\"",
        8,
        8,
    ),
];

fn run_cases(cases: &[Case]) {
    for (what, text, key, needle, line, col) in cases {
        let e = err(text);
        let shown = e.to_string();
        assert_eq!(
            e.location(),
            Some((Path::new(PATH), *line, *col)),
            "{what}: {shown}"
        );
        assert_eq!(e.key(), Some(*key), "{what}: {shown}");
        assert!(shown.contains(needle), "{what}: {shown:?} lacks {needle:?}");
    }
}

#[test]
fn syntax_and_unknown_key_errors_are_located() {
    run_cases(SYNTAX_AND_UNKNOWN_KEYS);
}

#[test]
fn type_errors_are_located_with_expected_type() {
    run_cases(TYPE_ERRORS);
}

#[test]
fn semantic_errors_are_located() {
    run_cases(SEMANTIC_ERRORS);
}

#[test]
fn display_format_matches_the_contract() {
    let e = err(concat!(head!(), "[vms.bootstrap]\nmode = \"sometimes\"\n"));
    assert_eq!(
        e.to_string(),
        "/p/castra.toml:8:8: vms[0].bootstrap.mode: unknown mode \"sometimes\"; expected one \
         of auto, skip, always (or disabled)"
    );
    let e = err("[projet]\nname = \"demo\"\n");
    assert_eq!(
        e.to_string(),
        "/p/castra.toml:1:2: unknown top-level key `projet`; did you mean `project`?"
    );
}

#[test]
fn wild_unknown_key_gets_no_suggestion() {
    let e = err(concat!(head!(), "[vms.bootstrap]\nxyzzy = 1\n"));
    let shown = e.to_string();
    assert!(!shown.contains("did you mean"), "{shown}");
    assert!(
        shown.contains("expected one of `mode`, `script`, `payload`"),
        "{shown}"
    );
    assert_eq!(
        suggest("scirpt", &["mode", "script", "payload"]),
        Some("script")
    );
    assert_eq!(suggest("SCRIPT", &["mode", "script"]), Some("script"));
    assert_eq!(suggest("qqqqqq", &["mode", "script", "payload"]), None);
    assert_eq!(suggest("x", &[]), None);
}

#[test]
fn invalid_vm_names_are_rejected() {
    let names = [
        vm_named!("\"Web\""),
        vm_named!("\"a/b\""),
        vm_named!("\"..\""),
        vm_named!("\"\""),
        vm_named!("\"-web\""),
        vm_named!("\"we b\""),
        vm_named!("\"wéb\""),
        vm_named!("\"web_1\""),
        vm_named!("\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\""),
    ];
    for text in names {
        assert_parse_error(text, "vms[0].name", "invalid VM name", 5, 8);
        assert!(err(text).to_string().contains(NAME_RULES), "{text}");
    }
}

#[test]
fn valid_edge_names_are_accepted() {
    let sixty_three = "a".repeat(63);
    assert!(is_valid_name(&sixty_three));
    assert!(!is_valid_name(&"a".repeat(64)));
    assert!(is_valid_name("0web-1"));
    let p = ok(vm_named!("\"0-web-\""));
    assert_eq!(p.vms[0].name, "0-web-");
    // 61 characters + "-9" = 63: fits.
    let p = ok(concat!(
        vm_named!("\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\""),
        "replicas = 10\n"
    ));
    assert_eq!(p.vms[9].name.len(), 63);
}

#[test]
fn external_vms_reject_lifecycle_keys() {
    let ssh = "[vms.ssh]\nhost = \"db.example\"\n";
    let cases = [
        ("base_image = \"x\"\n", "base_image", 14),
        ("kernel = \"k\"\n", "kernel", 10),
        ("initrd = \"i\"\n", "initrd", 10),
        ("cmdline = \"c\"\n", "cmdline", 11),
        ("ephemeral = true\n", "ephemeral", 13),
        ("accel = \"tcg\"\n", "accel", 9),
        ("cpus = 4\n", "cpus", 8),
        ("memory = \"1 GiB\"\n", "memory", 10),
        (
            "[[vms.port_forwards]]\nhost = 1\nguest = 2\n",
            "port_forwards",
            1,
        ),
    ];
    for (line7, key, col) in cases {
        let text = format!("{}{line7}{ssh}", ext!());
        let key = format!("vms[0].{key}");
        let needle = "external VMs have no lifecycle";
        assert_parse_error(&text, &key, needle, 7, col);
    }
    let p = ok(&format!("{}ephemeral = false\n{ssh}", ext!()));
    assert!(!p.vms[0].ephemeral);
}

#[test]
fn memory_sizes() {
    let good: &[(&str, u64)] = &[
        ("\"2 GiB\"", 2048),
        ("\"512 MiB\"", 512),
        ("\"2GiB\"", 2048),
        ("\"1024 MiB\"", 1024),
        ("\"2G\"", 2048),
        ("\"512M\"", 512),
        ("\"3 gib\"", 3072),
        ("\" 1 TiB \"", 1024 * 1024),
        ("\"1024\"", 1024),
        ("4096", 4096),
    ];
    for (value, mib) in good {
        let p = ok(&format!("{}memory = {value}\n", head!()));
        assert_eq!(p.vms[0].memory_mib, *mib, "memory = {value}");
    }
    let bad = [
        "\"0\"",
        "0",
        "-1",
        "\"lots\"",
        "\"2 GB\"",
        "\"1.5 GiB\"",
        "\"-5 GiB\"",
        "\"\"",
        "\"GiB\"",
        "\"0 GiB\"",
    ];
    for value in bad {
        let text = format!("{}memory = {value}\n", head!());
        let needle = "expected an integer number of MiB (e.g. 2048) or a size like \"512 MiB\"";
        assert_parse_error(&text, "vms[0].memory", needle, 7, 10);
    }
    let huge = format!("{}memory = \"99999999999999999 TiB\"\n", head!());
    assert_parse_error(&huge, "vms[0].memory", "is too large", 7, 10);
}

#[test]
fn defaults_for_a_minimal_qemu_vm() {
    let p = ok(head!());
    assert_eq!(p.config_path, PathBuf::from(PATH));
    assert_eq!(p.name, "demo");
    assert_eq!(p.version, None);
    assert_eq!(p.bootstrap_defaults, BootstrapDefaults::default());
    assert_eq!(p.bootstrap_defaults.handshake_timeout_secs, 120);
    assert_eq!(p.bootstrap_defaults.remote_dir, "/var/tmp/castra/{vm}");
    let expected = Vm {
        name: "web".into(),
        declared_name: "web".into(),
        replica: None,
        description: None,
        backend: BackendKind::Qemu,
        base_image: Some(PathBuf::from("/p/img.qcow2")),
        kernel: None,
        initrd: None,
        cmdline: None,
        cpus: 2,
        memory_mib: 2048,
        ephemeral: false,
        accel: crate::config::AccelSetting::Auto,
        port_forwards: vec![],
        ssh: Ssh {
            host: Some("127.0.0.1".into()),
            ..Ssh::default()
        },
        bootstrap: Bootstrap {
            mode: BootstrapMode::Auto,
            script: None,
            payload: None,
            verify_command: None,
            verify_path: None,
            handshake_timeout_secs: 120,
            remote_dir: "/var/tmp/castra/web".into(),
            env: BTreeMap::new(),
            metadata_path: None,
            vizier_dir: None,
        },
    };
    assert_eq!(p.vms, vec![expected]);
}

#[test]
fn project_without_vms_is_valid() {
    let p = ok("version = \"0.3\"\n[project]\nname = \"empty\"\n");
    assert_eq!(p.version.as_deref(), Some("0.3"));
    assert!(p.vms.is_empty());
}

#[test]
fn full_qemu_vm_is_read_verbatim() {
    let text = concat!(
        head!(),
        "description = \"Web tier\"\nkernel = \"boot/vmlinuz\"\ninitrd = \"boot/initrd\"\n",
        "cmdline = \"console=ttyS0\"\ncpus = 4\nephemeral = true\n",
        "port_forwards = [{ host = 8080, guest = 80 }, { host = 8080, guest = 80, protocol = \"udp\" }]\n",
        "[vms.ssh]\nport = 2200\nuser = \"castra\"\noptions = [\"StrictHostKeyChecking=no\"]\n",
        "[vms.bootstrap]\nmode = \"always\"\nscript = \"scripts/up.sh\"\npayload = \"payload\"\n",
        "verify_command = \"test -f done\"\nverify_path = \"state/./done\"\n",
    );
    let vm = &ok(text).vms[0];
    assert_eq!(vm.description.as_deref(), Some("Web tier"));
    assert_eq!(vm.kernel, Some(PathBuf::from("/p/boot/vmlinuz")));
    assert_eq!(vm.initrd, Some(PathBuf::from("/p/boot/initrd")));
    assert_eq!(vm.cmdline.as_deref(), Some("console=ttyS0"));
    assert_eq!((vm.cpus, vm.ephemeral), (4, true));
    let tcp = PortForward {
        host: 8080,
        guest: 80,
        protocol: Protocol::Tcp,
    };
    let udp = PortForward {
        host: 8080,
        guest: 80,
        protocol: Protocol::Udp,
    };
    assert_eq!(vm.port_forwards, vec![tcp, udp]);
    assert_eq!(vm.ssh.host.as_deref(), Some("127.0.0.1"));
    assert_eq!(vm.ssh.port, Some(2200));
    assert_eq!(vm.ssh.user.as_deref(), Some("castra"));
    assert_eq!(vm.ssh.options, vec!["StrictHostKeyChecking=no".to_owned()]);
    assert_eq!(vm.bootstrap.mode, BootstrapMode::Always);
    assert_eq!(vm.bootstrap.script, Some(PathBuf::from("/p/scripts/up.sh")));
    assert_eq!(vm.bootstrap.payload, Some(PathBuf::from("/p/payload")));
    assert_eq!(vm.bootstrap.verify_command.as_deref(), Some("test -f done"));
    assert_eq!(vm.bootstrap.verify_path.as_deref(), Some("state/./done"));
}

#[test]
fn external_vm_defaults() {
    let p = ok(concat!(
        ext!(),
        "[vms.ssh]\nhost = \"db.example\"\nuser = \"ops\"\n"
    ));
    let vm = &p.vms[0];
    assert_eq!(vm.backend, BackendKind::External);
    assert_eq!(vm.base_image, None);
    assert_eq!(vm.ssh.host.as_deref(), Some("db.example"));
    assert_eq!(vm.ssh.port, Some(22));
    assert_eq!(vm.ssh.user.as_deref(), Some("ops"));
    let p = ok(concat!(ext!(), "[vms.ssh]\nhost = \"db\"\nport = 2022\n"));
    assert_eq!(p.vms[0].ssh.port, Some(2022));
}

#[test]
fn replicas_expand_in_file_order() {
    let text = concat!(
        "[project]\nname = \"demo\"\n",
        "[[vms]]\nname = \"web\"\nbase_image = \"i\"\nreplicas = 3\n",
        "[[vms]]\nname = \"db\"\nbase_image = \"i\"\n",
        "[[vms]]\nname = \"cache\"\nbase_image = \"i\"\nreplicas = 1\n",
    );
    let p = ok(text);
    let names: Vec<_> = p.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["web-0", "web-1", "web-2", "db", "cache"]);
    let replicas: Vec<_> = p.vms.iter().map(|v| v.replica).collect();
    assert_eq!(replicas, [Some(0), Some(1), Some(2), None, None]);
    assert!(p.vms[..3].iter().all(|v| v.declared_name == "web"));
    assert_eq!(p.vms[3].declared_name, "db");
}

#[test]
fn remote_dir_substitution_and_precedence() {
    let text = concat!(
        "[project]\nname = \"demo\"\n",
        "[bootstrap]\nremote_dir = \"/srv/{vm}/work/{vm}\"\nhandshake_timeout_secs = 30\n",
        "[[vms]]\nname = \"web\"\nbase_image = \"i\"\nreplicas = 2\n",
        "[[vms]]\nname = \"db\"\nbase_image = \"i\"\n",
        "[vms.bootstrap]\nremote_dir = \"/opt/castra-{vm}\"\nhandshake_timeout_secs = 5\n",
        "[[vms]]\nname = \"fixed\"\nbase_image = \"i\"\n",
        "[vms.bootstrap]\nremote_dir = \"/opt/shared\"\n",
    );
    let p = ok(text);
    assert_eq!(p.bootstrap_defaults.remote_dir, "/srv/{vm}/work/{vm}");
    assert_eq!(p.bootstrap_defaults.handshake_timeout_secs, 30);
    let dirs: Vec<_> = p
        .vms
        .iter()
        .map(|v| v.bootstrap.remote_dir.as_str())
        .collect();
    assert_eq!(
        dirs,
        [
            "/srv/web-0/work/web-0",
            "/srv/web-1/work/web-1",
            "/opt/castra-db",
            "/opt/shared"
        ]
    );
    let timeouts: Vec<_> = p
        .vms
        .iter()
        .map(|v| v.bootstrap.handshake_timeout_secs)
        .collect();
    assert_eq!(timeouts, [30, 30, 5, 30]);
}

#[test]
fn modes_and_disabled_alias() {
    for (written, mode) in [
        ("auto", BootstrapMode::Auto),
        ("skip", BootstrapMode::Skip),
        ("disabled", BootstrapMode::Skip),
        ("always", BootstrapMode::Always),
    ] {
        let text = format!("{}[vms.bootstrap]\nmode = \"{written}\"\n", head!());
        assert_eq!(ok(&text).vms[0].bootstrap.mode, mode, "{written}");
        assert_eq!(BootstrapMode::parse(written), Some(mode));
    }
    assert_eq!(BootstrapMode::parse("Skip"), None);
    assert_eq!(BootstrapMode::parse(""), None);
    assert_eq!(BootstrapMode::Skip.as_str(), "skip");
    for mode in [
        BootstrapMode::Auto,
        BootstrapMode::Skip,
        BootstrapMode::Always,
    ] {
        assert_eq!(BootstrapMode::parse(mode.as_str()), Some(mode));
    }
    assert_eq!(BackendKind::parse("external"), Some(BackendKind::External));
    assert_eq!(Protocol::parse("udp").map(Protocol::as_str), Some("udp"));
}

#[test]
fn env_precedence_global_then_vm() {
    let text = concat!(
        "[project]\nname = \"demo\"\n",
        "[bootstrap.env]\nA = \"global\"\nB = \"global\"\n",
        "[[vms]]\nname = \"web\"\nbase_image = \"i\"\n",
        "[vms.bootstrap.env]\nB = \"vm\"\nC = \"vm\"\n_under = \"\"\n",
        "[[vms]]\nname = \"db\"\nbase_image = \"i\"\n",
    );
    let p = ok(text);
    let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        p.bootstrap_defaults.env,
        env(&[("A", "global"), ("B", "global")])
    );
    let want = env(&[("A", "global"), ("B", "vm"), ("C", "vm"), ("_under", "")]);
    assert_eq!(p.vms[0].bootstrap.env, want);
    assert_eq!(
        p.vms[1].bootstrap.env,
        env(&[("A", "global"), ("B", "global")])
    );
}

#[test]
fn paths_resolve_against_the_config_directory() {
    let text = concat!(
        "[project]\nname = \"demo\"\n",
        "[[vms]]\nname = \"a\"\nbase_image = \"./images/a.qcow2\"\n",
        "[vms.ssh]\nidentity = \"keys/id\"\n",
        "[[vms]]\nname = \"b\"\nbase_image = \"/abs/b.qcow2\"\n",
        "[[vms]]\nname = \"c\"\nbase_image = \"~/c.qcow2\"\n",
        "[[vms]]\nname = \"d\"\nbase_image = \"../shared/d.qcow2\"\n",
    );
    let p = parse(Path::new("/proj/sub/castra.toml"), text).expect("valid");
    let images: Vec<_> = p.vms.iter().filter_map(|v| v.base_image.clone()).collect();
    let want: Vec<PathBuf> = [
        "/proj/sub/images/a.qcow2",
        "/abs/b.qcow2",
        "/proj/sub/~/c.qcow2",
        "/proj/sub/../shared/d.qcow2",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    assert_eq!(images, want);
    assert_eq!(
        p.vms[0].ssh.identity,
        Some(PathBuf::from("/proj/sub/keys/id"))
    );
}

#[test]
fn identity_tilde_expands_to_home() {
    let text = format!("{}[vms.ssh]\nidentity = \"~/.ssh/castra\"\n", head!());
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => {
            let want = Path::new(&home).join(".ssh/castra");
            assert_eq!(ok(&text).vms[0].ssh.identity, Some(want));
        }
        None => assert_parse_error(&text, "vms[0].ssh.identity", "HOME", 8, 12),
    }
}

#[test]
fn relative_config_path_is_made_absolute() {
    let p = parse(Path::new("rel/castra.toml"), head!()).expect("valid");
    assert!(p.config_path.is_absolute());
    assert!(p.config_path.ends_with("rel/castra.toml"));
    let image = p.vms[0].base_image.clone().unwrap_or_default();
    assert_eq!(image, p.config_path.with_file_name("img.qcow2"));
}

#[test]
fn reordering_keys_gives_an_equal_project() {
    let a = concat!(
        "version = \"1\"\n",
        "[project]\nname = \"demo\"\n",
        "[bootstrap]\nremote_dir = \"/srv/{vm}\"\n[bootstrap.env]\nX = \"1\"\nY = \"2\"\n",
        "[[vms]]\nname = \"web\"\nbase_image = \"i\"\ncpus = 3\nmemory = \"1 GiB\"\nreplicas = 2\n",
        "[vms.ssh]\nuser = \"u\"\nport = 2222\n",
        "[vms.bootstrap]\nmode = \"skip\"\nscript = \"s.sh\"\n",
        "[[vms]]\nname = \"db\"\nbackend = \"external\"\nssh = { host = \"h\", user = \"x\" }\n",
    );
    let b = concat!(
        "[[vms]]\nreplicas = 2\nmemory = 1024\ncpus = 3\nbase_image = \"./i\"\nname = \"web\"\n",
        "bootstrap = { script = \"s.sh\", mode = \"disabled\" }\n",
        "ssh.port = 2222\nssh.user = \"u\"\n",
        "[[vms]]\nssh.user = \"x\"\nssh.host = \"h\"\nname = \"db\"\nbackend = \"external\"\n",
        "[bootstrap]\nenv = { Y = \"2\", X = \"1\" }\nremote_dir = \"/srv/{vm}\"\n",
        "[project]\nname = \"demo\"\n",
    );
    let b = format!("version = \"1\"\n{b}");
    let (pa, pb) = (ok(a), ok(&b));
    assert_eq!(pa.vms.len(), 3);
    assert_eq!(pa, pb);
    // And a real difference is noticed.
    assert_ne!(pa, ok(&b.replace("cpus = 3", "cpus = 4")));
}

#[test]
fn line_col_counts_characters() {
    let text = "ab\ncdé\nfg";
    assert_eq!(line_col(text, 0), (1, 1));
    assert_eq!(line_col(text, 3), (2, 1));
    assert_eq!(line_col(text, 5), (2, 3));
    assert_eq!(line_col(text, 7), (2, 4)); // after the two-byte 'é'
    assert_eq!(line_col(text, 6), (2, 3)); // inside 'é': clamps back
    assert_eq!(line_col(text, 100), (3, 3));
}

#[test]
fn parse_does_no_io() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("bootstrap.toml"), "bogus = 1\n").expect("write");
    let config = dir.path().join("castra.toml");
    let text = format!("{}[vms.bootstrap]\nscript = \"run.sh\"\n", head!());
    let p = parse(&config, &text).expect("parse neither stats nor reads bootstrap.toml");
    assert_eq!(p.vms[0].bootstrap.metadata_path, None);
    assert_eq!(p.vms[0].bootstrap.script, Some(dir.path().join("run.sh")));
}

// ----- load -----------------------------------------------------------------------------

fn write(root: &Path, rel: &str, contents: &str) -> PathBuf {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(&path, contents).expect("write");
    path
}

/// A canonical temp dir (so expected paths match `load`'s canonical config path).
fn temp_root() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = fs::canonicalize(dir.path()).expect("canonicalize");
    (dir, root)
}

const LOAD_CONFIG: &str = concat!(
    "[project]\nname = \"demo\"\n",
    "[bootstrap.env]\nA = \"global\"\nB = \"global\"\nC = \"global\"\n",
    "[[vms]]\nname = \"web\"\nbase_image = \"images/base.qcow2\"\nreplicas = 2\n",
    "[vms.ssh]\nuser = \"castra\"\nidentity = \"keys/castra_id\"\n",
    "options = [\"StrictHostKeyChecking=no\"]\n",
    "[vms.bootstrap]\nscript = \"bootstrap/run.sh\"\npayload = \"payload\"\n",
    "[vms.bootstrap.env]\nB = \"vm\"\nC = \"vm\"\n",
    "[[vms]]\nname = \"plain\"\nbase_image = \"images/base.qcow2\"\n",
);

fn load_fixture(root: &Path, metadata: Option<&str>) -> PathBuf {
    write(root, "images/base.qcow2", "qcow");
    write(root, "bootstrap/run.sh", "#!/bin/sh\n");
    fs::create_dir_all(root.join("payload")).expect("mkdir");
    if let Some(metadata) = metadata {
        write(root, "bootstrap/bootstrap.toml", metadata);
    }
    write(root, "castra.toml", LOAD_CONFIG)
}

#[test]
fn load_merges_bootstrap_toml() {
    let (_guard, root) = temp_root();
    let metadata = concat!(
        "[ssh]\nport = 2222\nidentity = \"meta_key\"\noptions = [\"ServerAliveInterval=5\"]\n",
        "[env]\nC = \"meta\"\nD = \"meta\"\n",
    );
    let config = load_fixture(&root, Some(metadata));
    let p = load(&config).expect("valid project");
    assert_eq!(p.config_path, config);
    let env: BTreeMap<String, String> =
        [("A", "global"), ("B", "vm"), ("C", "meta"), ("D", "meta")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    for vm in &p.vms[..2] {
        assert_eq!(vm.bootstrap.env, env, "{}", vm.name);
        let want = Ssh {
            host: Some("127.0.0.1".into()),
            port: Some(2222),
            user: Some("castra".into()),
            identity: Some(root.join("bootstrap/meta_key")),
            options: vec![
                "StrictHostKeyChecking=no".into(),
                "ServerAliveInterval=5".into(),
            ],
        };
        assert_eq!(vm.ssh, want, "{}", vm.name);
        assert_eq!(
            vm.bootstrap.metadata_path,
            Some(root.join("bootstrap/bootstrap.toml"))
        );
        assert_eq!(vm.bootstrap.payload, Some(root.join("payload")));
    }
    let plain = &p.vms[2];
    assert_eq!(plain.bootstrap.metadata_path, None);
    assert_eq!(
        plain.bootstrap.env.get("C").map(String::as_str),
        Some("global")
    );
    assert_eq!(plain.ssh.identity, None);
}

#[test]
fn load_without_bootstrap_toml_keeps_castra_toml_values() {
    let (_guard, root) = temp_root();
    let config = load_fixture(&root, None);
    let p = load(&config).expect("valid project");
    let vm = &p.vms[0];
    assert_eq!(vm.bootstrap.metadata_path, None);
    assert_eq!(vm.ssh.identity, Some(root.join("keys/castra_id")));
    assert_eq!(vm.bootstrap.env.get("C").map(String::as_str), Some("vm"));
    // parse gives the same result when there is no bootstrap.toml.
    let text = fs::read_to_string(&config).expect("read");
    assert_eq!(parse(&config, &text).expect("valid"), p);
}

#[test]
fn load_canonicalizes_the_config_path() {
    let (_guard, root) = temp_root();
    let config = load_fixture(&root, None);
    let roundabout = root.join("images/../castra.toml");
    let p = load(&roundabout).expect("valid project");
    assert_eq!(p.config_path, config);
    assert_eq!(p.vms[0].base_image, Some(root.join("images/base.qcow2")));
}

#[test]
fn bootstrap_toml_errors_name_that_file() {
    let cases = [
        (
            "[ssh]\nhots = \"h\"\n",
            "ssh",
            "unknown key `hots`; did you mean `host`?",
            2,
            1,
        ),
        (
            "shh = 1\n",
            "",
            "unknown top-level key `shh`; did you mean `ssh`?",
            1,
            1,
        ),
        (
            "[env]\nCASTRA_X = \"1\"\n",
            "env.CASTRA_X",
            "reserved prefix CASTRA_",
            2,
            1,
        ),
        (
            "[env]\nX = 1\n",
            "env.X",
            "expected a string, found an integer",
            2,
            5,
        ),
        (
            "[ssh]\nport = \"22\"\n",
            "ssh.port",
            "expected an integer",
            2,
            8,
        ),
        (
            "[ssh]\noptions = [\"x\"]\n",
            "ssh.options[0]",
            "invalid ssh option",
            2,
            12,
        ),
        ("[ssh\n", "", "TOML syntax error", 1, 5),
    ];
    for (metadata, key, needle, line, col) in cases {
        let (_guard, root) = temp_root();
        let config = load_fixture(&root, Some(metadata));
        let e = load(&config).expect_err(metadata);
        let file = root.join("bootstrap/bootstrap.toml");
        assert_error_at(&e, &file, key, needle, line, col);
    }
}

#[test]
fn load_checks_that_referenced_files_exist() {
    // (text in LOAD_CONFIG, replacement, key, message, line, column)
    let cases = [
        (
            "\"images/base.qcow2\"\nreplicas",
            "\"images/gone.qcow2\"\nreplicas",
            "vms[0].base_image",
            "does not exist",
            9,
            14,
        ),
        (
            "bootstrap/run.sh",
            "bootstrap/gone.sh",
            "vms[0].bootstrap.script",
            "does not exist",
            16,
            10,
        ),
        (
            "payload = \"payload\"",
            "payload = \"gone\"",
            "vms[0].bootstrap.payload",
            "does not exist",
            17,
            11,
        ),
    ];
    for (from, to, key, message, line, col) in cases {
        let (_guard, root) = temp_root();
        let config = load_fixture(&root, None);
        let broken = LOAD_CONFIG.replacen(from, to, 1);
        assert_ne!(broken, LOAD_CONFIG);
        fs::write(&config, &broken).expect("write");
        let e = load(&config).expect_err(key);
        assert_error_at(&e, &config, key, message, line, col);
        assert!(e.to_string().contains(&root.display().to_string()), "{e}");
    }
}

#[test]
fn load_checks_kernel_initrd_and_file_kinds() {
    let (_guard, root) = temp_root();
    write(&root, "img", "x");
    write(&root, "vmlinuz", "x");
    fs::create_dir_all(root.join("dir")).expect("mkdir");
    let base = "[project]\nname = \"demo\"\n[[vms]]\nname = \"web\"\nbase_image = \"img\"\n";
    let cases = [
        ("kernel = \"nope\"\n", "vms[0].kernel", "does not exist", 10),
        (
            "kernel = \"vmlinuz\"\ninitrd = \"nope\"\n",
            "vms[0].initrd",
            "does not exist",
            10,
        ),
        (
            "kernel = \"dir\"\n",
            "vms[0].kernel",
            "is a directory; expected a regular file",
            10,
        ),
        (
            "[vms.bootstrap]\nscript = \"dir\"\n",
            "vms[0].bootstrap.script",
            "is a directory",
            10,
        ),
    ];
    for (tail, key, message, col) in cases {
        let config = write(&root, "castra.toml", &format!("{base}{tail}"));
        let line = 5 + tail.lines().count();
        let e = load(&config).expect_err(tail);
        assert_error_at(&e, &config, key, message, line, col);
    }
    let good = format!("{base}kernel = \"vmlinuz\"\n[vms.bootstrap]\npayload = \"dir\"\n");
    let config = write(&root, "castra.toml", &good);
    let p = load(&config).expect("payload may be a directory");
    assert_eq!(p.vms[0].kernel, Some(root.join("vmlinuz")));
}

#[test]
fn load_reports_unreadable_config() {
    let (_guard, root) = temp_root();
    let missing = root.join("castra.toml");
    let e = load(&missing).expect_err("missing file");
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    assert_eq!(e.location(), None);
    assert_eq!(e.path(), missing);
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot read file", missing.display()))
    );
}

#[test]
fn discover_walks_up() {
    let (_guard, root) = temp_root();
    let nested = root.join("a/b/c");
    fs::create_dir_all(&nested).expect("mkdir");
    assert_eq!(discover(&nested).filter(|p| p.starts_with(&root)), None);
    let top = write(&root, "castra.toml", "");
    assert_eq!(discover(&nested), Some(top.clone()));
    assert_eq!(discover(&root), Some(top));
    let middle = write(&root, "a/castra.toml", "");
    assert_eq!(discover(&nested), Some(middle.clone()));
    // A directory named castra.toml is not a project file.
    fs::create_dir_all(root.join("a/b/castra.toml")).expect("mkdir");
    assert_eq!(discover(&nested), Some(middle));
}

//! Every kind of mistake, with the file, line, column and key it is reported at.

use super::*;
use crate::config::diagnostics::suggest;

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
        "unknown backend \"docker\"; expected \"qemu\", \"external\" or \"libvirt\"",
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
        "handshake_timeout_secs must be between 1 and 86400, got 0",
        8,
        26,
    ),
    (
        "negative global handshake timeout",
        "[project]\nname = \"demo\"\n[bootstrap]\nhandshake_timeout_secs = -5\n",
        "bootstrap.handshake_timeout_secs",
        "handshake_timeout_secs must be between 1 and 86400, got -5",
        4,
        26,
    ),
    (
        // Issue 14 item 15: a timeout this long overflowed the deadline (a panic in the run).
        "huge handshake timeout",
        concat!(
            head!(),
            "[vms.bootstrap]\nhandshake_timeout_secs = 9223372036854775807\n"
        ),
        "vms[0].bootstrap.handshake_timeout_secs",
        "handshake_timeout_secs must be between 1 and 86400, got 9223372036854775807",
        8,
        26,
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

pub(super) fn run_cases(cases: &[Case]) {
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

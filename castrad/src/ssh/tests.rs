//! Unit tests of `ssh/mod.rs`: argv, config blocks and what ssh itself makes of them.

use super::*;

fn target() -> Target {
    Target {
        vm: "web-0".into(),
        host: "127.0.0.1".into(),
        port: 2222,
        user: Some("deploy".into()),
        identity: Some("/k/id_ed25519".into()),
        options: vec![
            "ServerAliveInterval=5".into(),
            "StrictHostKeyChecking=no".into(),
        ],
        known_hosts: "/s/vms/web-0/known_hosts".into(),
        control_path: "/run/c/abc.sock".into(),
        connect_timeout: Duration::from_secs(7),
        proxy: None,
    }
}

fn joined(args: Vec<OsString>) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn args_pin_keys_before_user_options() {
    let first = joined(target().args(false, "true"));
    assert!(first.starts_with("-o BatchMode=yes -o ConnectTimeout=7 -o HostKeyAlias=castra-web-0 -o StrictHostKeyChecking=accept-new"), "{first}");
    assert!(first.contains("-o UserKnownHostsFile=\"/s/vms/web-0/known_hosts\""));
    assert!(first.contains(
        "-o ForwardAgent=no -o ForwardX11=no -o ClearAllForwardings=yes \
         -o KnownHostsCommand=none -o VerifyHostKeyDNS=no -o SetEnv=CASTRA_SESSION=1 \
         -o LogLevel=ERROR"
    ));
    assert!(
        first.contains(
            "-o ControlPath=\"/run/c/abc.sock\" -o ControlMaster=yes -o ControlPersist=no"
        )
    );
    assert!(first.contains("-p 2222 -l deploy -i /k/id_ed25519 -o IdentitiesOnly=yes"));
    assert!(first.ends_with("-T -- 127.0.0.1 true"), "{first}");
    // Ours precede the user's, so the user's StrictHostKeyChecking=no cannot win; the
    // user's ServerAliveInterval precedes castrad's default, so it does.
    let at = |needle: &str| first.find(needle).unwrap();
    assert!(at("StrictHostKeyChecking=accept-new") < at("StrictHostKeyChecking=no"));
    assert!(at("ServerAliveInterval=5") < at("ServerAliveInterval=10"));
    let pinned = joined(target().args(true, "true"));
    assert!(pinned.contains("StrictHostKeyChecking=yes"));
}

/// Issue 15: `BootstrapPlanned.ssh.options` lists only the project's options; PROTOCOL.md
/// must name every option castrad adds on its own, so a reader knows what really runs.
#[test]
fn protocol_md_names_every_option_castrad_adds() {
    let doc = include_str!("../../../proto-docs/PROTOCOL.md");
    let at = doc
        .find("`ssh.options` is exactly")
        .expect("the ssh.options paragraph");
    let paragraph = &doc[at..at + doc[at..].find("\n\n").unwrap()];
    let t = target();
    let args: Vec<String> = t
        .args(false, "true")
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut named = 0;
    for pair in args.windows(2).filter(|w| w[0] == "-o") {
        if t.options.contains(&pair[1]) {
            continue;
        }
        let key = &pair[1][..pair[1].find('=').unwrap() + 1];
        assert!(
            paragraph.contains(&format!("`{key}")),
            "PROTOCOL.md does not say castrad passes {key}: {paragraph}"
        );
        named += 1;
    }
    assert!(named > 10, "{args:?}");
    for flag in ["-p", "-l", "-i"] {
        assert!(args.iter().any(|a| a == flag));
        assert!(paragraph.contains(&format!("`{flag} ")), "{flag}");
    }
}

/// What ssh itself makes of castrad's argv, with `config` as the user's ~/.ssh/config.
fn effective(t: &Target, config: &str) -> String {
    ssh_g(config, &t.args(true, "true"))
}

/// `ssh -G -F <a file holding config> ARGS`: the settings ssh would use.
fn ssh_g(config: &str, args: &[OsString]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config");
    std::fs::write(&file, config).unwrap();
    let out = std::process::Command::new("ssh")
        .arg("-G")
        .arg("-F")
        .arg(&file)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn no_config_file_forwards_anything_or_undoes_the_pin() {
    let hostile = "Host *\n  ForwardAgent yes\n  ForwardX11 yes\n  LocalForward 1234 localhost:22\n  \
                   RemoteForward 2345 localhost:22\n  DynamicForward 3456\n  \
                   StrictHostKeyChecking no\n  UserKnownHostsFile /tmp/theirs\n  \
                   ServerAliveInterval 99\n  KexAlgorithms curve25519-sha256\n";
    let mut t = target();
    t.options = vec![
        "ServerAliveInterval=5".into(),
        "kexalgorithms=ecdh-sha2-nistp256".into(),
    ];
    let seen = effective(&t, hostile);
    for want in [
        "forwardagent no",
        "forwardx11 no",
        "clearallforwardings yes",
        "stricthostkeychecking true",
        "userknownhostsfile /s/vms/web-0/known_hosts",
        "batchmode yes",
        // The project's options beat both the config file and castrad's defaults.
        "serveraliveinterval 5",
        "kexalgorithms ecdh-sha2-nistp256",
    ] {
        assert!(seen.lines().any(|l| l == want), "{want:?} not in\n{seen}");
    }
    for forward in ["localforward", "remoteforward", "dynamicforward"] {
        assert!(
            !seen.lines().any(|l| l.starts_with(forward)),
            "{forward} in\n{seen}"
        );
    }
    // Without the project's options, castrad's defaults still beat the config file.
    let seen = effective(
        &Target {
            options: vec![],
            ..target()
        },
        hostile,
    );
    assert!(
        seen.lines().any(|l| l == "serveraliveinterval 10"),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("kexalgorithms {LOOPBACK_KEX}")),
        "{seen}"
    );
}

/// Issue 25: a state directory with a space (or a `%`) keeps the pin: ssh reads each path
/// as one file, not as several words or tokens. Unquoted, ssh refuses the ControlPath
/// outright ("extra arguments at end of line") and reads two known_hosts files.
#[test]
fn paths_with_spaces_and_percents_stay_one_path() {
    let mut t = target();
    t.known_hosts = "/s/my state/100%/vms/web-0/known \"hosts\"".into();
    t.control_path = "/run/my run/c.sock".into();
    let seen = effective(&t, "");
    for want in [
        "userknownhostsfile /s/my state/100%/vms/web-0/known \"hosts\"",
        "controlpath /run/my run/c.sock",
    ] {
        assert!(seen.lines().any(|l| l == want), "{want:?} not in\n{seen}");
    }
    // One file: with ssh's default of two (~/.ssh/known_hosts and known_hosts2), -G
    // would print the words of a split value the same way, so count the quoted word.
    let args = joined(t.args(true, "true"));
    assert!(
        args.contains("UserKnownHostsFile=\"/s/my state/100%%/vms/web-0/known \\\"hosts\\\"\""),
        "{args}"
    );
    assert_eq!(
        option_path(Path::new("/a b\\c")),
        OsString::from("\"/a b\\\\c\"")
    );
}

/// Issue 25: ~/.ssh/config's KnownHostsCommand, VerifyHostKeyDNS and SetEnv do not apply
/// to castrad's sessions; SendEnv can only send what [`ssh_env`] lets through.
#[test]
fn the_users_config_adds_no_host_keys_and_sets_no_variables() {
    let hostile = "Host *\n  KnownHostsCommand /bin/echo %H\n  VerifyHostKeyDNS yes\n  \
                   SetEnv TOKEN=secret\n";
    let seen = effective(&target(), hostile);
    assert!(
        seen.lines().any(|l| l == "verifyhostkeydns false"),
        "{seen}"
    );
    assert!(!seen.contains("knownhostscommand"), "{seen}");
    assert!(
        seen.lines().any(|l| l == "setenv CASTRA_SESSION=1"),
        "{seen}"
    );
    assert!(!seen.contains("TOKEN"), "{seen}");
    let vars = [
        ("PATH", "/bin"),
        ("AWS_SECRET_ACCESS_KEY", "s3cret"),
        ("LC_ALL", "C.UTF-8"),
        ("HOME", "/home/me"),
        ("PATHX", "no"),
        ("GITHUB_TOKEN", "t"),
    ]
    .map(|(k, v)| (OsString::from(k), OsString::from(v)));
    let kept: Vec<String> = ssh_env(vars)
        .into_iter()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept, ["PATH", "LC_ALL", "HOME"]);
}

#[test]
fn a_config_block_is_what_ssh_reads_back() {
    let mut t = target();
    t.known_hosts = "/s/with space/100%/known_hosts".into();
    t.options = vec!["ServerAliveInterval=5".into(), "RekeyLimit=1G 1h".into()];
    let block = t.config_block("castra-shop-web-0");
    // Quoted only where ssh needs it.
    assert!(block.contains("  IdentityFile /k/id_ed25519\n"), "{block}");
    assert!(
        block.contains("  UserKnownHostsFile \"/s/with space/100%%/known_hosts\"\n"),
        "{block}"
    );
    assert!(block.starts_with("Host castra-shop-web-0\n  HostName 127.0.0.1\n  Port 2222\n"));
    let seen = ssh_g(&block, &["castra-shop-web-0".into()]);
    for want in [
        "hostname 127.0.0.1",
        "port 2222",
        "user deploy",
        "identityfile /k/id_ed25519",
        "hostkeyalias castra-web-0",
        "userknownhostsfile /s/with space/100%/known_hosts",
        "stricthostkeychecking true",
        "serveraliveinterval 5",
        "rekeylimit 1073741824 3600",
    ] {
        assert!(seen.lines().any(|l| l == want), "{want:?} not in\n{seen}");
    }
}

#[test]
fn loopback_guests_skip_the_post_quantum_key_exchange_unless_told() {
    let kex = |t: &Target| {
        joined(t.args(true, "true"))
            .split(' ')
            .filter(|a| a.to_ascii_lowercase().starts_with("kexalgorithms="))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let local = target();
    assert_eq!(kex(&local), [format!("KexAlgorithms={LOOPBACK_KEX}")]);
    assert!(!LOOPBACK_KEX.contains("sntrup"));
    let remote = Target {
        host: "build.example.org".into(),
        ..target()
    };
    assert!(
        kex(&remote).is_empty(),
        "a remote host keeps ssh's defaults"
    );
    let told = Target {
        options: vec!["kexalgorithms=sntrup761x25519-sha512@openssh.com".into()],
        ..target()
    };
    assert_eq!(
        kex(&told),
        [
            "kexalgorithms=sntrup761x25519-sha512@openssh.com".to_owned(),
            format!("KexAlgorithms={LOOPBACK_KEX}")
        ],
        "the user's comes first: ssh keeps it"
    );
    for (host, local) in [
        ("::1", true),
        ("[::1]", true),
        ("127.0.0.2", true),
        ("LOCALHOST", true),
        ("10.0.0.1", false),
    ] {
        assert_eq!(is_loopback(host), local, "{host}");
    }
    // The list is one ssh accepts.
    let out = std::process::Command::new("ssh")
        .args([
            "-G",
            "-o",
            &format!("KexAlgorithms={LOOPBACK_KEX}"),
            "localhost",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn args_end_with_host_and_one_remote_string() {
    let args = target().args(true, "echo 'hi'");
    let n = args.len();
    assert_eq!(args[n - 1], "echo 'hi'");
    assert_eq!(args[n - 2], "127.0.0.1");
    assert_eq!(args[n - 3], "--");
}

#[test]
fn quote_survives_a_real_shell_byte_for_byte() {
    let nasty = [
        "plain",
        "",
        "a'b\"c $(touch /tmp/castra-quote-test)\nline2",
        "'''",
        "back\\slash `uname` ${HOME} *?[]",
        "tab\there\r\n",
    ];
    for s in nasty {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", quote(s)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
    }
    assert!(!Path::new("/tmp/castra-quote-test").exists());
}

#[test]
fn ssh_errors_are_classified() {
    let t = target();
    let changed = classify(
        &t,
        "@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nHost key verification failed.\n",
    );
    assert!(matches!(changed, SshError::HostKeyChanged { .. }));
    assert!(
        changed
            .to_string()
            .contains("delete that file and run again")
    );
    assert!(!changed.unreached());
    let denied = classify(&t, "deploy@127.0.0.1: Permission denied (publickey).\n");
    assert_eq!(
        denied.to_string(),
        "ssh to deploy@127.0.0.1:2222 failed: deploy@127.0.0.1: Permission denied (publickey)."
    );
    assert!(!denied.unreached());
    for not_up in [
        "ssh: connect to host 127.0.0.1 port 2222: Connection refused\n",
        "Connection timed out during banner exchange\nConnection to 127.0.0.1 port 2222 timed out\n",
        "kex_exchange_identification: read: Connection reset by peer\n",
    ] {
        assert!(classify(&t, not_up).unreached(), "{not_up}");
    }
}

/// Issue 24: a guest that presents another key than its seed's before any connection got
/// in did not take the seed; once one did, another key is a changed machine.
#[test]
fn a_seed_key_never_confirmed_is_a_guest_that_ignored_its_seed() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = target();
    t.known_hosts = dir.path().join("known_hosts");
    keys::pin_seeded(&t.known_hosts, "castra-web-0", "ssh-ed25519 AAAAseed").unwrap();
    let changed = "@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
                   The fingerprint for the ED25519 key sent by the remote host is\n\
                   SHA256:q5pOe2lD0ZbUOvb6bHm4y1nQ7xbqzGvY4Yx0v1u1x3A.\n\
                   Host key verification failed.\n";
    let ignored = classify(&t, changed);
    assert!(!ignored.unreached());
    let text = ignored.to_string();
    for words in [
        "web-0 did not take the host key castrad gave it",
        "presented another (ED25519 key SHA256:q5pOe2lD0ZbUOvb6bHm4y1nQ7xbqzGvY4Yx0v1u1x3A)",
        "`[vms.cloud_init] enabled = false`",
        "`castractl down --discard web-0`",
        "`castractl console web-0`",
    ] {
        assert!(text.contains(words), "{words:?} in {text}");
    }
    // Another key type: ssh names no fingerprint.
    let other = "No ED25519 host key is known for castra-web-0 and you have requested \
                 strict checking.\nHost key verification failed.\n";
    assert!(
        classify(&t, other)
            .to_string()
            .contains("presented another. An image")
    );
    assert_eq!(
        offered_key("ECDSA key fingerprint is SHA256:abc."),
        Some("ECDSA key SHA256:abc".into())
    );
    keys::confirm_pin(&t.known_hosts).unwrap();
    assert!(matches!(
        classify(&t, changed),
        SshError::HostKeyChanged { .. }
    ));
}

/// An ssh older than an option castrad passes is not given it (it would refuse the whole
/// command line); this machine's knows them all.
#[test]
fn options_an_older_ssh_does_not_know_are_left_out() {
    let args = target().args(true, "true");
    let old = known_options(args.clone(), |k| !NEWER_OPTIONS.contains(&k));
    let text = joined(old.clone());
    assert!(
        !text.contains("KnownHostsCommand") && !text.contains("SetEnv"),
        "{text}"
    );
    assert_eq!(old.len() + 4, args.len());
    assert!(
        text.contains("-o VerifyHostKeyDNS=no -o LogLevel=ERROR"),
        "{text}"
    );
    for option in NEWER_OPTIONS {
        assert!(ssh_knows(option), "{option}");
    }
    assert_eq!(known_options(args.clone(), ssh_knows), args);
}

//! `[vms.ssh] options`: the form of an option, and the allow-list (what is refused says why
//! and what is allowed; what is allowed is kept as written); and the other value that reaches
//! ssh's configuration unchecked otherwise, `identity`.

use super::errors::run_cases;
use super::*;

const SSH_OPTION_ERRORS: &[Case] = &[
    (
        "identity with a newline (it is written into ssh-config's output)",
        concat!(
            head!(),
            "[vms.ssh]\nidentity = \"k\\nProxyCommand touch /tmp/x\"\n"
        ),
        "vms[0].ssh.identity",
        "identity path \"/p/k\\nProxyCommand touch /tmp/x\" must not contain control characters",
        8,
        12,
    ),
    (
        "ssh option without =",
        concat!(
            head!(),
            "[vms.ssh]\noptions = [\"Compression=no\", \"NoEquals\"]\n"
        ),
        "vms[0].ssh.options[1]",
        "invalid ssh option \"NoEquals\"; expected \"Key=Value\"",
        8,
        30,
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
        "ssh option with an escape character",
        concat!(head!(), "[vms.ssh]\noptions = [\"Ciphers=a\\u001bb\"]\n"),
        "vms[0].ssh.options[0]",
        "without control characters",
        8,
        12,
    ),
    (
        "ssh option that runs a command, in lower case",
        concat!(
            head!(),
            "[vms.ssh]\noptions = [\"proxycommand=sh -c id\"]\n"
        ),
        "vms[0].ssh.options[0]",
        "ssh option `proxycommand` is not allowed in a project file: it can run a program",
        8,
        12,
    ),
    (
        "ssh option that undoes the pin",
        concat!(
            head!(),
            "[vms.ssh]\noptions = [\"StrictHostKeyChecking=no\"]\n"
        ),
        "vms[0].ssh.options[0]",
        "ssh option `StrictHostKeyChecking` is not allowed in a project file: castrad pins",
        8,
        12,
    ),
];

#[test]
fn malformed_or_refused_ssh_options_are_located() {
    run_cases(SSH_OPTION_ERRORS);
}

#[test]
fn ssh_options_outside_the_allow_list_are_refused_with_what_is_allowed() {
    let e = err(concat!(
        head!(),
        "[vms.ssh]\noptions = [\"ServerAliveInterval=5\", \"ProxyCommand=touch /tmp/m\"]\n"
    ));
    assert_eq!(
        e.to_string(),
        "/p/castra.toml:8:37: vms[0].ssh.options[1]: ssh option `ProxyCommand` is not allowed in \
         a project file: it can run a program on this machine. Allowed (names ignore case): \
         AddressFamily, BindAddress, BindInterface, CASignatureAlgorithms, Ciphers, Compression, \
         ConnectionAttempts, HostKeyAlgorithms, IdentitiesOnly, IPQoS, KexAlgorithms, MACs, \
         PreferredAuthentications, PubkeyAcceptedAlgorithms, PubkeyAcceptedKeyTypes, RekeyLimit, \
         RequiredRSASize, ServerAliveCountMax, ServerAliveInterval, TCPKeepAlive; anything else \
         belongs in your own ~/.ssh/config"
    );
    // Every option that runs a program, undoes the pin or opens this machine to the guest.
    for (option, why) in [
        ("ProxyJump=evil", "it can run a program on this machine"),
        ("LocalCommand=id", "it can run a program on this machine"),
        (
            "PermitLocalCommand=yes",
            "it can run a program on this machine",
        ),
        (
            "KnownHostsCommand=/bin/true",
            "it can run a program on this machine",
        ),
        (
            "PKCS11Provider=/x.so",
            "it can run a program on this machine",
        ),
        (
            "SecurityKeyProvider=/x.so",
            "it can run a program on this machine",
        ),
        ("XAuthLocation=/x", "it can run a program on this machine"),
        ("Match=exec true", "it can run a program on this machine"),
        (
            "UserKnownHostsFile=/dev/null",
            "castrad pins each VM's host key itself",
        ),
        (
            "GlobalKnownHostsFile=/x",
            "castrad pins each VM's host key itself",
        ),
        (
            "VerifyHostKeyDNS=yes",
            "castrad pins each VM's host key itself",
        ),
        ("CheckHostIP=no", "castrad pins each VM's host key itself"),
        (
            "HostKeyAlias=other",
            "castrad pins each VM's host key itself",
        ),
        (
            "NoHostAuthenticationForLocalhost=yes",
            "castrad pins each VM's host key itself",
        ),
        (
            "FORWARDAGENT=yes",
            "it gives the guest a way into this machine",
        ),
        (
            "ForwardX11=yes",
            "it gives the guest a way into this machine",
        ),
        (
            "RemoteForward=2222 localhost:22",
            "it gives the guest a way into this machine",
        ),
        (
            "SendEnv=AWS_SECRET_ACCESS_KEY",
            "it gives the guest a way into this machine",
        ),
        (
            "Include=/etc/passwd",
            "it points ssh at a file or socket of this machine",
        ),
        (
            "ControlPath=/tmp/x",
            "it points ssh at a file or socket of this machine",
        ),
        (
            "IdentityFile=~/.ssh/id_rsa",
            "set it with `identity` in [vms.ssh]",
        ),
        ("Port=22", "set it with `port` in [vms.ssh]"),
        (
            "LogLevel=DEBUG3",
            "only options that tune the connection are accepted",
        ),
        (
            "SomeFutureOption=1",
            "only options that tune the connection are accepted",
        ),
    ] {
        let text = format!("{}[vms.ssh]\noptions = [{option:?}]\n", head!());
        let e = err(&text);
        let name = option.split_once('=').unwrap().0;
        assert_eq!(e.location(), Some((Path::new(PATH), 8, 12)), "{option}");
        assert_eq!(e.key(), Some("vms[0].ssh.options[0]"), "{option}");
        let shown = e.to_string();
        let want = format!("ssh option `{name}` is not allowed in a project file: {why}");
        assert!(shown.contains(&want), "{shown}");
    }
}

#[test]
fn ssh_options_on_the_allow_list_are_kept_as_written() {
    let options = [
        "ServerAliveInterval=15",
        "serveralivecountmax=4",
        "ConnectionAttempts=2",
        "Compression=yes",
        "Ciphers=aes256-gcm@openssh.com,chacha20-poly1305@openssh.com",
        "MACs=hmac-sha2-256-etm@openssh.com",
        "KexAlgorithms=curve25519-sha256",
        "HostKeyAlgorithms=ssh-ed25519",
        "PubkeyAcceptedAlgorithms=+ssh-rsa",
        "PubkeyAcceptedKeyTypes=ssh-ed25519",
        "CASignatureAlgorithms=ssh-ed25519",
        "IPQoS=throughput",
        "AddressFamily=inet",
        "BindAddress=127.0.0.1",
        "BindInterface=lo",
        "TCPKeepAlive=no",
        "RekeyLimit=1G 1h",
        "RequiredRSASize=2048",
        "IdentitiesOnly=yes",
        "PreferredAuthentications=publickey",
    ];
    let list: Vec<String> = options.iter().map(|o| format!("{o:?}")).collect();
    let text = format!("{}[vms.ssh]\noptions = [{}]\n", head!(), list.join(", "));
    assert_eq!(ok(&text).vms[0].ssh.options, options);
}

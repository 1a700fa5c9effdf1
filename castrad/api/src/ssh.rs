//! OpenSSH as both binaries run it: which `-o` options a project file may set, and the
//! route through a libvirt VM's hypervisor.
//!
//! **The allow-list** (`[vms.ssh] options`, bootstrap.toml `[ssh] options`): a project file is
//! input castrad does not trust with this machine, and castractl checks the options castrad
//! hands it (`castra.sshConfig`) against the same list before it runs ssh or sftp with them.
//! ssh has options that run a program on this machine (`ProxyCommand`, `LocalCommand`,
//! `KnownHostsCommand`, `PKCS11Provider`...), that undo castrad's host key pinning
//! (`StrictHostKeyChecking`, `UserKnownHostsFile`...), that hand the guest a way into this
//! machine (`ForwardAgent`, `RemoteForward`, `SendEnv`...), or that read files of this machine
//! (`IdentityFile`, `Include`, `CertificateFile`). New ones appear with OpenSSH releases, so
//! only options known to be none of those are accepted: they tune the transport (algorithms,
//! keep-alives, addresses, compression) and nothing else. Everything else belongs in the user's
//! own `~/.ssh/config`, which castrad's ssh still reads.
//!
//! **The hop** ([`proxy_command`]): the `ProxyCommand` that reaches a guest port on a
//! hypervisor's loopback, built here from its fields ([`SshHop`]) so that castrad (for its own
//! connections) and castractl (for `castractl ssh`/`cp`) build the same command, and castractl
//! never runs a command line it was sent.

use std::ffi::OsString;
use std::path::Path;

use crate::SshHop;

/// The options a project file may set, as ssh spells them (ssh compares names ignoring case).
pub const ALLOWED: &[&str] = &[
    "AddressFamily",
    "BindAddress",
    "BindInterface",
    "CASignatureAlgorithms",
    "Ciphers",
    "Compression",
    "ConnectionAttempts",
    "HostKeyAlgorithms",
    "IdentitiesOnly",
    "IPQoS",
    "KexAlgorithms",
    "MACs",
    "PreferredAuthentications",
    "PubkeyAcceptedAlgorithms",
    "PubkeyAcceptedKeyTypes",
    "RekeyLimit",
    "RequiredRSASize",
    "ServerAliveCountMax",
    "ServerAliveInterval",
    "TCPKeepAlive",
];

/// The allowed spelling of `name` (any case), or None.
pub fn allowed(name: &str) -> Option<&'static str> {
    ALLOWED
        .iter()
        .copied()
        .find(|a| a.eq_ignore_ascii_case(name))
}

/// Why a refused option is refused, for the ones people are likely to try.
pub fn why_not(name: &str) -> &'static str {
    const RUNS: &[&str] = &[
        "ProxyCommand",
        "ProxyJump",
        "ProxyUseFdpass",
        "LocalCommand",
        "PermitLocalCommand",
        "KnownHostsCommand",
        "PKCS11Provider",
        "SecurityKeyProvider",
        "XAuthLocation",
        "EnableSSHKeysign",
        "HostbasedAuthentication",
        "Match",
        "Host",
    ];
    const FILES: &[&str] = &[
        "IdentityAgent",
        "CertificateFile",
        "Include",
        "ControlMaster",
        "ControlPath",
        "ControlPersist",
    ];
    const PINNING: &[&str] = &[
        "StrictHostKeyChecking",
        "UserKnownHostsFile",
        "GlobalKnownHostsFile",
        "VerifyHostKeyDNS",
        "CheckHostIP",
        "HostKeyAlias",
        "UpdateHostKeys",
        "NoHostAuthenticationForLocalhost",
        "HashKnownHosts",
        "RevokedHostKeys",
        "CanonicalizeHostname",
    ];
    const INTO_HOST: &[&str] = &[
        "ForwardAgent",
        "ForwardX11",
        "ForwardX11Trusted",
        "ForwardX11Timeout",
        "ClearAllForwardings",
        "LocalForward",
        "RemoteForward",
        "DynamicForward",
        "GatewayPorts",
        "PermitRemoteOpen",
        "Tunnel",
        "TunnelDevice",
        "GSSAPIDelegateCredentials",
        "SendEnv",
        "SetEnv",
        "AddKeysToAgent",
    ];
    const OWN_KEY: &[(&str, &str)] = &[
        ("HostName", "set it with `host` in [vms.ssh]"),
        ("Port", "set it with `port` in [vms.ssh]"),
        ("User", "set it with `user` in [vms.ssh]"),
        ("IdentityFile", "set it with `identity` in [vms.ssh]"),
    ];
    let is = |list: &[&str]| list.iter().any(|o| o.eq_ignore_ascii_case(name));
    if let Some((_, why)) = OWN_KEY.iter().find(|(o, _)| o.eq_ignore_ascii_case(name)) {
        why
    } else if is(RUNS) {
        "it can run a program on this machine"
    } else if is(PINNING) {
        "castrad pins each VM's host key itself"
    } else if is(INTO_HOST) {
        "it gives the guest a way into this machine"
    } else if is(FILES) {
        "it points ssh at a file or socket of this machine"
    } else {
        "only options that tune the connection are accepted from a project file"
    }
}

/// A host or user name that is safe to give ssh as an argument: non-empty, without
/// whitespace or control characters, not starting with `-`.
pub fn is_word(v: &str) -> bool {
    !v.is_empty() && !v.starts_with('-') && !v.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Whether `option` is a well-formed `-o` option: `Key=Value`, an alphanumeric key and a
/// non-empty value without control characters (a newline would start another option line).
/// Whether the key is allowed is [`allowed`]'s question.
pub fn is_option(option: &str) -> bool {
    match option.split_once('=') {
        Some((name, val)) => {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric())
                && !val.is_empty()
                && !option.chars().any(char::is_control)
        }
        None => false,
    }
}

/// How long a hypervisor's shared master outlives its last use.
const PERSIST_SECS: u32 = 60;

/// The options every connection to the hypervisor starts with (ahead of ~/.ssh/config):
/// strict host key checking against its pin, batch mode, and one ControlMaster per
/// hypervisor, which virsh, castrad's shell commands and every guest connection share. As
/// `-o` words for ssh's command line.
pub fn hop_options(hop: &SshHop) -> Vec<String> {
    let mut o = vec![
        "BatchMode=yes".to_owned(),
        "StrictHostKeyChecking=yes".to_owned(),
        "UpdateHostKeys=no".to_owned(),
    ];
    if let Some(k) = &hop.known_hosts {
        o.push(format!(
            "UserKnownHostsFile={}",
            option_path(k).to_string_lossy()
        ));
        o.push("GlobalKnownHostsFile=/dev/null".to_owned());
    }
    o.extend([
        "ControlMaster=auto".to_owned(),
        format!(
            "ControlPath={}",
            option_path(&hop.control_path).to_string_lossy()
        ),
        format!("ControlPersist={PERSIST_SECS}"),
        "ConnectTimeout=10".to_owned(),
        "ServerAliveInterval=10".to_owned(),
        "ServerAliveCountMax=3".to_owned(),
        "ForwardAgent=no".to_owned(),
        "ForwardX11=no".to_owned(),
        "LogLevel=ERROR".to_owned(),
    ]);
    o.into_iter().flat_map(|v| ["-o".to_owned(), v]).collect()
}

/// A path as the value of an ssh option (`-o Key=Value`, or a config file's `Key value`):
/// ssh splits such a value into words (`UserKnownHostsFile` takes several files, so
/// `/a b/known_hosts` would be two, neither the pin) and expands `%` tokens in it. So the path
/// is one double-quoted word, `\` and `"` escaped, `%` doubled. (ssh would also expand a
/// `${NAME}` in it, for which its syntax has no escape; castrad's paths have none.)
pub fn option_path(path: &Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::with_capacity(path.as_os_str().len() + 2);
    out.push(b'"');
    for &b in path.as_os_str().as_bytes() {
        match b {
            b'"' | b'\\' => out.extend([b'\\', b]),
            b'%' => out.extend(b"%%"),
            _ => out.push(b),
        }
    }
    out.push(b'"');
    OsString::from_vec(out)
}

/// Who logs in to the hypervisor, on which port, with which key.
pub fn hop_login_args(hop: &SshHop) -> Vec<String> {
    let mut a = Vec::new();
    if let Some(port) = hop.port {
        a.extend(["-p".to_owned(), port.to_string()]);
    }
    if let Some(user) = &hop.user {
        a.extend(["-l".to_owned(), user.clone()]);
    }
    if let Some(key) = &hop.identity_file {
        a.extend([
            "-i".to_owned(),
            key.to_string_lossy().into_owned(),
            "-o".to_owned(),
            "IdentitiesOnly=yes".to_owned(),
        ]);
    }
    a
}

/// The `ProxyCommand` that reaches a guest port on the hypervisor's loopback: a shell
/// command line (ssh runs it with `sh -c`), each word of ours quoted, `%` doubled where ssh
/// would expand it, the hypervisor after `--`.
pub fn proxy_command(hop: &SshHop) -> String {
    let mut words: Vec<String> = vec!["ssh".into()];
    words.extend(hop_options(hop));
    words.extend(hop_login_args(hop));
    let mut line: Vec<String> = words
        .iter()
        .map(|w| shell_quote(&w.replace('%', "%%")))
        .collect();
    line.extend(["-W".into(), "%h:%p".into(), "--".into()]);
    line.push(shell_quote(&hop.host.replace('%', "%%")));
    line.join(" ")
}

/// `s` as one single-quoted POSIX shell word, byte-exact for any content.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_allowed_option_is_one_ssh_knows() {
        // A sample value per allowed option: ssh -G refuses an option it does not know
        // ("Bad configuration option") or a value it cannot parse.
        let samples = [
            "AddressFamily=inet",
            "BindAddress=127.0.0.1",
            "BindInterface=lo",
            "CASignatureAlgorithms=ssh-ed25519",
            "Ciphers=aes256-gcm@openssh.com",
            "Compression=yes",
            "ConnectionAttempts=2",
            "HostKeyAlgorithms=ssh-ed25519",
            "IdentitiesOnly=yes",
            "IPQoS=throughput",
            "KexAlgorithms=curve25519-sha256",
            "MACs=hmac-sha2-256-etm@openssh.com",
            "PreferredAuthentications=publickey",
            "PubkeyAcceptedAlgorithms=ssh-ed25519",
            "PubkeyAcceptedKeyTypes=ssh-ed25519",
            "RekeyLimit=1G 1h",
            "RequiredRSASize=2048",
            "ServerAliveCountMax=4",
            "ServerAliveInterval=15",
            "TCPKeepAlive=no",
        ];
        let names: Vec<&str> = samples
            .iter()
            .map(|s| s.split('=').next().unwrap())
            .collect();
        assert_eq!(names, ALLOWED);
        for sample in samples {
            let out = std::process::Command::new("ssh")
                .args(["-G", "-o", sample, "castra-allow-list-check"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{sample}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn names_compare_as_ssh_compares_them() {
        assert_eq!(allowed("serveraliveinterval"), Some("ServerAliveInterval"));
        assert_eq!(allowed("KEXALGORITHMS"), Some("KexAlgorithms"));
        assert_eq!(allowed("ProxyCommand"), None);
        assert_eq!(allowed("proxycommand"), None);
        assert_eq!(allowed(""), None);
        assert_eq!(
            why_not("proxycommand"),
            "it can run a program on this machine"
        );
        assert_eq!(
            why_not("userknownhostsfile"),
            "castrad pins each VM's host key itself"
        );
        assert_eq!(
            why_not("FORWARDAGENT"),
            "it gives the guest a way into this machine"
        );
        assert_eq!(why_not("Port"), "set it with `port` in [vms.ssh]");
    }

    #[test]
    fn the_hop_pins_strictly_and_shares_one_master() {
        let hop = SshHop {
            host: "hv".into(),
            port: Some(2222),
            user: Some("me".into()),
            identity_file: Some("/k/id".into()),
            known_hosts: Some("/pins/known_hosts".into()),
            control_path: "/run/c/hv-1".into(),
        };
        let proxy = proxy_command(&hop);
        assert!(proxy.starts_with("'ssh' '-o' 'BatchMode=yes'"), "{proxy}");
        assert!(proxy.contains("'StrictHostKeyChecking=yes'"));
        // Paths as ssh reads an option's value: one double-quoted word.
        assert!(
            proxy.contains(r#"'UserKnownHostsFile="/pins/known_hosts"'"#),
            "{proxy}"
        );
        assert!(proxy.contains(r#"'ControlPath="/run/c/hv-1"'"#), "{proxy}");
        assert!(
            proxy.ends_with(
                "'-p' '2222' '-l' 'me' '-i' '/k/id' '-o' 'IdentitiesOnly=yes' -W %h:%p -- 'hv'"
            ),
            "{proxy}"
        );
        let odd = SshHop {
            host: "h%v".into(),
            user: Some("it's".into()),
            ..hop
        };
        let proxy = proxy_command(&odd);
        assert!(proxy.ends_with("-- 'h%%v'"), "{proxy}");
        assert!(proxy.contains(r"'-l' 'it'\''s'"), "{proxy}");
    }
}

//! Which ssh `-o` options a project file may set (`[vms.ssh] options`, bootstrap.toml
//! `[ssh] options`): an allow-list, because a project file is input castrad does not trust
//! with this machine.
//!
//! ssh has options that run a program on this machine (`ProxyCommand`, `LocalCommand`,
//! `KnownHostsCommand`, `PKCS11Provider`...), that undo castrad's host key pinning
//! (`StrictHostKeyChecking`, `UserKnownHostsFile`...), that hand the guest a way into this
//! machine (`ForwardAgent`, `RemoteForward`, `SendEnv`...), or that read files of this machine
//! (`IdentityFile`, `Include`, `CertificateFile`). New ones appear with OpenSSH releases, so
//! only options known to be none of those are accepted: they tune the transport (algorithms,
//! keep-alives, addresses, compression) and nothing else. Everything else belongs in the user's
//! own `~/.ssh/config`, which castrad's ssh still reads.

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
}

//! ssh options from project files (castra.toml `[vms.ssh] options`, bootstrap.toml `[ssh]
//! options`) are held to an allow-list, and every session castrad opens turns off agent, X11
//! and port forwarding whatever the user's ssh config says: a real castrad, a real OpenSSH
//! sshd on 127.0.0.1 as the guest.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::fleet::Fleet;
use crate::support::wait_until;

const ONE_VM: &str = r#"
[[vms]]
name = "db"
backend = "external"
SSH
OPTIONS
[vms.bootstrap]
script = "scripts/db.sh"
"#;

/// `castra.toml`'s line and column (1-based) of the first `needle` in it.
fn position(config: &Path, needle: &str) -> (usize, usize) {
    let text = std::fs::read_to_string(config).unwrap();
    let (i, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not in {text}"));
    (
        i + 1,
        line[..line.find(needle).unwrap()].chars().count() + 1,
    )
}

#[test]
fn project_ssh_options_that_run_commands_are_refused_and_never_run() {
    let marker = tempfile::tempdir().unwrap();
    let proxy = marker.path().join("proxy-command-ran");
    let known = marker.path().join("known-hosts-command-ran");
    let option = format!("options = [\"ProxyCommand=touch {}\"]", proxy.display());
    let fleet = Fleet::new(&ONE_VM.replace("OPTIONS", &option));
    let project = fleet.project();
    let config = project.join("castra.toml").canonicalize().unwrap();
    let (line, column) = position(&config, "\"ProxyCommand=");
    let want = format!(
        "{}:{line}:{column}: vms[0].ssh.options[0]: ssh option `ProxyCommand` is not allowed in \
         a project file: it can run a program on this machine. Allowed (names ignore case): \
         AddressFamily, ",
        config.display()
    );
    for command in [&["plan"][..], &["up"], &["up", "--bootstrap", "always"]] {
        let out = fleet.env.ctl(&project, command);
        assert_eq!(out.code, 2, "{command:?}: {out:?}");
        assert!(
            out.stderr.contains(&want),
            "{command:?}: want {want}\n{out:?}"
        );
    }
    let json = fleet.env.ctl(&project, &["--json", "up"]);
    assert_eq!(json.code, 2);
    let location = &json.json()["error"]["rpc"]["data"]["location"];
    assert_eq!(
        (&location["line"], &location["column"]),
        (&line.into(), &column.into())
    );

    // The same from a bootstrap.toml beside the script.
    let clean = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&option, "");
    std::fs::write(&config, clean).unwrap();
    let metadata = project.join("scripts/bootstrap.toml");
    std::fs::write(
        &metadata,
        format!(
            "[ssh]\noptions = [\"ServerAliveInterval=5\", \"knownhostscommand=/usr/bin/touch {}\"]\n",
            known.display()
        ),
    )
    .unwrap();
    let out = fleet.env.ctl(&project, &["up"]);
    assert_eq!(out.code, 2, "{out:?}");
    let want = format!(
        "{}:2:37: ssh.options[1]: ssh option `knownhostscommand` is not allowed in a project \
         file: it can run a program on this machine",
        metadata.canonicalize().unwrap().display()
    );
    assert!(out.stderr.contains(&want), "want {want}\n{out:?}");

    assert!(!proxy.exists(), "ProxyCommand ran on the host");
    assert!(!known.exists(), "KnownHostsCommand ran on the host");
    assert_eq!(fleet.guest_runs("db"), 0);
}

/// A running `ssh-agent` on a socket of its own; killed on drop.
struct Agent {
    child: Child,
    socket: std::path::PathBuf,
}

impl Agent {
    fn start(dir: &Path) -> Agent {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent (openssh-client) must be installed");
        wait_until(Duration::from_secs(5), "ssh-agent's socket", || {
            socket.exists().then_some(())
        });
        Agent { child, socket }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sessions_forward_no_agent_whatever_the_users_ssh_config_says() {
    // The user's ssh config asks for agent forwarding to every host, and an agent runs. ssh
    // reads ~/.ssh/config from the password database, not $HOME, so the test puts the file in
    // front of castrad's ssh with -F (which ssh reads where it would read ~/.ssh/config:
    // after every -o).
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let config = dir.path().join("ssh_config");
    std::fs::write(&config, "Host *\n  ForwardAgent yes\n").unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let ssh = bin.join("ssh");
    std::fs::write(
        &ssh,
        format!(
            "#!/bin/sh\nexec /usr/bin/ssh -F '{}' \"$@\"\n",
            config.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let fleet = Fleet::new_with(&ONE_VM.replace("OPTIONS", ""), |castrad| {
        castrad
            .env("PATH", &path)
            .env("SSH_AUTH_SOCK", &agent.socket);
    });
    std::fs::write(
        fleet.project().join("scripts/db.sh"),
        "#!/bin/sh\necho \"agent=${SSH_AUTH_SOCK:-none}\"\n",
    )
    .unwrap();
    let up = fleet.up(&[]);
    assert_eq!(up.statuses(), ["Success"], "{}", up.stderr);
    let lines: Vec<&str> = up
        .event("db", "BootstrapOutput")
        .iter()
        .filter_map(|e| e["line"].as_str())
        .filter(|l| l.starts_with("agent="))
        .collect();
    assert_eq!(lines, ["agent=none"]);
}

//! A real OpenSSH `sshd` on 127.0.0.1 standing in for a guest: its own host key, config and
//! authorized key, on a free port, as the current user. Its sessions get
//! `CASTRA_VIZIER_SUPERVISOR=loop`: the "guest" is this machine, where Vizier must never be
//! installed as a systemd unit (vizier/supervisor.sh). It accepts the variables `CASTRA_IT_*`
//! a client sends (`AcceptEnv`), so a test can see what a client's `SendEnv` would leak.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::wait_until;

pub struct Sshd {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    /// Private key the client (castrad) logs in with.
    pub client_key: PathBuf,
    pub user: String,
    /// sshd_config lines on connection limits.
    limits: &'static str,
    /// sshd's `LogLevel` (its log is `dir/sshd.log`).
    log_level: &'static str,
    /// More `NAME=value` words for sessions' environment (sshd's `SetEnv`).
    set_env: String,
}

fn keygen(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "castra-test", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen (openssh-client) must be installed: scripts/setup installs it");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sshd {
    /// Starts sshd with files under `dir`, allowing 200 connections that have not yet
    /// authenticated (many tests' VMs connect at once).
    pub fn start(dir: &Path) -> Sshd {
        Sshd::start_limited(dir, "MaxStartups 200\nMaxSessions 200\n", "ERROR")
    }

    /// As [`Sshd::start`], logging at DEBUG1: each channel a client opens shows in
    /// [`Sshd::log`] (a forwarding as `server_request_direct_tcpip: … target HOST port PORT`).
    pub fn start_logging_channels(dir: &Path) -> Sshd {
        Sshd::start_limited(dir, "MaxStartups 200\nMaxSessions 200\n", "DEBUG1")
    }

    /// Starts sshd with OpenSSH's own limits: past 10 connections that have not yet
    /// authenticated it drops new ones at random (`MaxStartups 10:30:100`), as a stock server.
    pub fn start_stock_limits(dir: &Path) -> Sshd {
        Sshd::start_limited(dir, "", "ERROR")
    }

    /// [`Sshd::start`] whose sessions also get `set_env` (`NAME=value` words, `PATH=…` say:
    /// sshd's `SetEnv` comes after its own PATH).
    pub fn start_with_env(dir: &Path, set_env: &str) -> Sshd {
        let mut sshd = Sshd::start(dir);
        sshd.set_env = set_env.to_owned();
        sshd.stop();
        sshd.spawn();
        sshd
    }

    fn start_limited(dir: &Path, limits: &'static str, log_level: &'static str) -> Sshd {
        assert!(
            Path::new("/usr/sbin/sshd").exists(),
            "/usr/sbin/sshd missing: scripts/setup installs openssh-server"
        );
        // sshd refuses to start without its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        std::fs::create_dir_all(dir).unwrap();
        let client_key = dir.join("client_key");
        keygen(&client_key);
        keygen(&dir.join("host_key"));
        std::fs::copy(
            client_key.with_extension("pub"),
            dir.join("authorized_keys"),
        )
        .unwrap();
        let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .unwrap()
            .unwrap()
            .name;
        let mut sshd = Sshd {
            child: None,
            port: free_port(),
            dir: dir.to_owned(),
            client_key,
            user,
            limits,
            log_level,
            set_env: String::new(),
        };
        sshd.spawn();
        sshd
    }

    fn spawn(&mut self) {
        let d = self.dir.display();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey \"{d}/host_key\"\nPidFile \"{d}/sshd.pid\"\n\
             AuthorizedKeysFile \"{d}/authorized_keys\"\nStrictModes no\nUsePAM no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\n{limits}LogLevel {log_level}\n\
             AcceptEnv CASTRA_IT_*\nSetEnv CASTRA_VIZIER_SUPERVISOR=loop {set_env}\n\
             Subsystem sftp internal-sftp\n",
            port = self.port,
            limits = self.limits,
            log_level = self.log_level,
            set_env = self.set_env,
        );
        std::fs::write(self.dir.join("sshd_config"), config).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(self.dir.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(self.dir.join("sshd.log")).unwrap(),
            ))
            .spawn()
            .expect("start sshd");
        self.child = Some(child);
        let port = self.port;
        wait_until(Duration::from_secs(10), "sshd to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
    }

    /// Stops sshd (the port then refuses connections).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts sshd on the same port with a freshly generated host key: a "rebuilt" machine.
    pub fn restart_with_new_host_key(&mut self) {
        self.stop();
        keygen(&self.dir.join("host_key"));
        self.spawn();
    }

    /// What sshd has logged since it was last started.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// The `[vms.ssh]` table for a VM behind this sshd.
    pub fn ssh_table(&self) -> String {
        format!(
            "[vms.ssh]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\nidentity = \"{}\"\n",
            self.port,
            self.user,
            self.client_key.display()
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

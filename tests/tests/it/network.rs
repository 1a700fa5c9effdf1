//! The project network (`[project] network`, docs/NETWORK.md) end to end: two VMs of the cloud
//! image boot at once on it, and one reaches the other by name on a port the other's bootstrap
//! script opened (the same boots check web-0's shared folders: mounts.rs); with `network = false` (tiny guests, quick to boot) a VM has its user-mode
//! NIC only. Both take the QEMU tests' lock: one guest test at a time.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::Value;

use crate::bootstrap::Up;
use crate::support::{Daemon, Env};

/// db's bootstrap: a listener on port 7777 that answers every connection with the token, as
/// a transient systemd service (so it outlives the script's session). Reruns replace it.
const DB_SCRIPT: &str = r#"#!/bin/sh
set -eu
printf '%s\n' "$TOKEN" > token
sudo -n systemctl stop castra-token.service 2>/dev/null || true
sudo -n systemd-run --quiet --unit castra-token \
  systemd-socket-activate --listen 7777 --inetd --accept cat "$PWD/token"
echo "db listens on 7777"
"#;

const WEB_SCRIPT: &str = r#"#!/bin/sh
set -eu
echo "web is $(hostname)"
"#;

struct Net {
    env: Env,
    daemon: Option<Daemon>,
}

impl Net {
    fn start(config: &str, files: &[(&str, &str)]) -> Net {
        let env = Env::new();
        env.write(&[("p/castra.toml", config)]);
        env.write(files);
        let daemon = env.start_daemon();
        Net {
            env,
            daemon: Some(daemon),
        }
    }

    fn project(&self) -> PathBuf {
        self.env.path("p")
    }

    fn up(&self) -> Up {
        let out = self.env.ctl(&self.project(), &["up", "--json"]);
        Up::parse(out.code, &out.stdout, &out.stderr)
    }

    fn sh(&self, vm: &str, command: &str) -> String {
        self.env.guest_sh(&self.project(), vm, command)
    }

    fn status(&self, vm: &str) -> Value {
        let s = self
            .env
            .ctl(&self.project(), &["status", "--json"])
            .ok()
            .json();
        crate::support::vm_of(&s, vm)
    }

    /// QEMU's command line of `vm`, from /proc.
    fn qemu_argv(&self, vm: &str) -> String {
        let pid = self.status(vm)["pid"].as_u64().expect("a running QEMU");
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap()
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = self.env.ctl(&self.project(), &["down", "--timeout", "5"]);
    }
}

#[test]
fn web_0_reaches_db_by_name_on_the_project_network() {
    let _lock = crate::qemu::one_at_a_time();
    let image = crate::cloud::image();
    let vm = |name: &str, script: &str, extra: &str| {
        format!(
            "\n[[vms]]\nname = \"{name}\"\nbase_image = \"{}\"\ncpus = 1\nmemory = \"1 GiB\"\n\n\
             [vms.ssh]\nuser = \"dev\"\n\n\
             [vms.bootstrap]\nscript = \"{script}\"\nhandshake_timeout_secs = 900\n{extra}",
            image.display()
        )
    };
    let token = format!("token-{}", std::process::id());
    // No `network` key: two QEMU VMs have a project network by default.
    let config = format!(
        "[project]\nname = \"netted\"\n\n[bootstrap.env]\nTOKEN = \"{token}\"\n{}{}",
        vm("web-0", "web.sh", crate::mounts::MOUNTS),
        vm("db", "db.sh", "")
    );
    // web-0 also has the shared folders of mounts.rs (one set of cloud boots for both).
    let web_script = format!("{WEB_SCRIPT}{}", crate::mounts::SCRIPT_LINES);
    let mut net = Net::start(
        &config,
        &[("p/web.sh", &web_script), ("p/db.sh", DB_SCRIPT)],
    );
    crate::mounts::host_side(&net.env);
    crate::mounts::check_plan(&net.env, "web-0");

    // The plan already says where each VM will be.
    let plan = net.env.ctl(&net.project(), &["plan", "--json"]).ok().json();
    let planned: Vec<String> = plan["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v["network_address"]
                .as_str()
                .expect("an address")
                .to_owned()
        })
        .collect();
    let prefix = |a: &str| a.rsplit_once('.').unwrap().0.to_owned();
    assert_eq!(prefix(&planned[0]), prefix(&planned[1]), "{planned:?}");
    assert!(planned[0].ends_with(".10") && planned[1].ends_with(".11"));

    let started = Instant::now();
    let up = net.up();
    assert_eq!(up.statuses(), ["Success", "Success"], "{}", up.stderr);
    eprintln!("two cloud guests up in {:?}", started.elapsed());
    let (web, db) = (net.status("web-0"), net.status("db"));
    assert_eq!(web["network_address"], planned[0].as_str());
    assert_eq!(db["network_address"], planned[1].as_str());

    // By name, to the port db's bootstrap opened.
    let hosts = net.sh("web-0", "getent hosts db");
    assert_eq!(
        hosts.split_whitespace().collect::<Vec<_>>(),
        [planned[1].as_str(), "db"],
        "{hosts}"
    );
    let got = net.sh(
        "web-0",
        "timeout 30 bash -c 'exec 3<>/dev/tcp/db/7777 && cat <&3'",
    );
    assert_eq!(got.trim(), token);
    // And back: db resolves web-0 to its project address.
    assert_eq!(
        net.sh("db", "getent hosts web-0").split_whitespace().next(),
        Some(planned[0].as_str())
    );

    // Two NICs: the user-mode one first, unchanged, and the project one with its fixed MAC.
    let argv = net.qemu_argv("web-0");
    let user = argv
        .find("-netdev user,id=net0")
        .expect("the user-mode NIC");
    let project = argv
        .find("-netdev socket,id=net1,mcast=239.255.")
        .expect(&argv);
    assert!(user < project, "{argv}");
    assert!(argv.contains("localaddr=127.0.0.1"), "{argv}");
    let macs = net.sh("web-0", "cat /sys/class/net/e*/address");
    assert_eq!(macs.lines().count(), 2, "{macs}");
    assert!(macs.contains("52:54:00:12:34:56"), "{macs}");
    let addr = net.sh("web-0", "ip -4 -o addr show");
    assert!(addr.contains(&format!("{}/24", planned[0])), "{addr}");

    // web-0's shared folders, through a castrad restart, then gone with the VM.
    let daemon = net.daemon.take().unwrap();
    let (daemon, state) = crate::mounts::check_running(&net.env, "web-0", daemon);
    net.daemon = Some(daemon);

    // The VMs' order decides their addresses: swapped, each is given the other's. A cloud-init
    // guest has its address from its seed (its disk's first boot): drift that a restart does
    // not apply, and plan says what does.
    let swapped = config.replacen(&vm("web-0", "web.sh", crate::mounts::MOUNTS), "", 1)
        + &vm("web-0", "web.sh", crate::mounts::MOUNTS);
    net.env.write(&[("p/castra.toml", &swapped)]);
    let plan = net.env.ctl(&net.project(), &["plan", "--json"]).ok().json();
    let web_drift = plan["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vm"] == "web-0")
        .map(|v| v["drift"].clone())
        .unwrap();
    assert_eq!(web_drift.as_array().unwrap().len(), 1, "{web_drift}");
    let d = &web_drift[0];
    assert_eq!(d["setting"], "network", "{d}");
    assert_eq!(
        (d["running"].as_str(), d["configured"].as_str()),
        (Some(planned[0].as_str()), Some(planned[1].as_str())),
        "{d}"
    );
    assert_eq!(d["restart_applies"], false, "{d}");
    let message = d["message"].as_str().unwrap();
    assert!(
        message
            .ends_with("`castractl down --discard web-0`, then `castractl up web-0` (a new disk)"),
        "{message}"
    );

    net.env
        .ctl(&net.project(), &["down", "--timeout", "20"])
        .ok();
    crate::mounts::check_down(&net.env, "web-0", &state);
}

#[test]
fn network_false_gives_a_vm_no_second_nic() {
    let _lock = crate::qemu::one_at_a_time();
    let g = crate::qemu::guest();
    let mut config = String::from("[project]\nname = \"apart\"\nnetwork = false\n");
    for name in ["web-0", "db"] {
        config.push_str(&format!(
            "\n[[vms]]\nname = \"{name}\"\nbase_image = \"{g}/base.img\"\nkernel = \"{g}/vmlinuz\"\n\
             initrd = \"{g}/initrd.img\"\ncmdline = \"console=ttyS0 quiet\"\ncpus = 1\n\
             memory = \"512 MiB\"\n\n[vms.cloud_init]\nenabled = false\n\
             [vms.ssh]\nuser = \"root\"\nidentity = \"{g}/id_ed25519\"\n\
             [vms.bootstrap]\nscript = \"web.sh\"\nremote_dir = \"/data/castra/{{vm}}\"\n\
             handshake_timeout_secs = 180\n",
            g = g.display()
        ));
    }
    let net = Net::start(&config, &[("p/web.sh", WEB_SCRIPT)]);
    let up = net.up();
    assert_eq!(up.statuses(), ["Success", "Success"], "{}", up.stderr);
    for vm in ["web-0", "db"] {
        assert!(net.status(vm)["network_address"].is_null());
        let argv = net.qemu_argv(vm);
        assert!(argv.contains("-netdev user,id=net0"), "{argv}");
        assert!(!argv.contains("net1") && !argv.contains("mcast"), "{argv}");
        let nics = net.sh(vm, "ls /sys/class/net");
        assert_eq!(
            nics.split_whitespace().collect::<Vec<_>>(),
            ["eth0", "lo"],
            "{nics}"
        );
    }
}

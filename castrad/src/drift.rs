//! Drift: the launch settings a running VM was started with, against what castra.toml says
//! now. A running VM keeps what it was launched with; `plan` and `up` report each setting that
//! differs ([`drift`]), and a restart applies them, except what a cloud-init guest takes from
//! its seed ([`Seeded`]: its project network address and where it mounts its shared folders),
//! which cloud-init reads on its disk's first boot only: that drift stays until the disk is
//! replaced ([`of_running`]).
//!
//! [`LaunchSettings`] is recorded by the backend with the machine it launches (the QEMU
//! backend writes it into `launch.json`, so it survives a castrad restart and comes back with
//! re-adoption; the libvirt backend keeps it in the domain's `<metadata>`) and carried in
//! `MachineInfo`. One field per setting; a new setting is a field
//! (`#[serde(default)]`, so records written before it still read), its value in [`LaunchSettings::of`]
//! and its row in `rows`. Pure: no IO.

use castra_api as api;
use serde::{Deserialize, Serialize};

use crate::config::Vm;

/// What a VM was launched with, as far as a restart would change it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSettings {
    pub cpus: u32,
    pub memory_mib: u64,
    /// Port forwards as `tcp:HOST->GUEST`, sorted (their order changes nothing).
    #[serde(default)]
    pub forwards: Vec<String>,
    /// The disk size asked for (`disk`); None: the base image's size.
    #[serde(default)]
    pub disk_mib: Option<u64>,
    /// The VM's address on the project network; None: not on one (and every VM launched
    /// before project networks existed).
    #[serde(default)]
    pub network: Option<String>,
    /// Shared folders as `HOST->GUEST` (` (ro)` when read-only), in file order.
    #[serde(default)]
    pub mounts: Vec<String>,
    /// What a cloud-init guest's seed gave it (recorded when the seed was made, for its disk):
    /// the comparison base of the settings a restart does not change. None: no cloud-init, or
    /// a seed made before castrad recorded this whose inputs are not today's.
    #[serde(default)]
    pub seed: Option<Seeded>,
}

/// The settings of a cloud-init guest that its seed carries (cloud-init reads the seed on its
/// disk's first boot only, so only a new disk changes them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seeded {
    /// The address the seed's network-config gives the guest on the project network.
    pub network: Option<String>,
    /// Where the seed's bootcmd mounts each shared folder: `GUEST` (` (ro)` when read-only),
    /// in file order (the host side is QEMU's: a restart changes it).
    pub mounts: Vec<String>,
}

impl Seeded {
    /// What a seed made for `vm` now carries.
    pub fn of(vm: &Vm) -> Seeded {
        Seeded {
            network: vm.network.as_ref().map(|n| n.address.to_string()),
            mounts: shared(vm)
                .map(|m| format!("{}{}", m.guest, if m.readonly { " (ro)" } else { "" }))
                .collect(),
        }
    }
}

/// The shared folders of `vm` a launch gives it: only QEMU VMs get them (a libvirt domain is
/// defined without them).
fn shared(vm: &Vm) -> impl Iterator<Item = &crate::config::Mount> {
    vm.mounts
        .iter()
        .filter(|_| vm.backend == crate::config::BackendKind::Qemu)
}

/// One setting of a [`LaunchSettings`]: its wire name, its value as text, and how a value
/// reads after "is running with".
struct Row {
    setting: &'static str,
    value: String,
    with: fn(&str) -> String,
}

impl LaunchSettings {
    /// The settings `vm` is configured with now.
    pub fn of(vm: &Vm) -> LaunchSettings {
        let mut forwards: Vec<String> = vm
            .port_forwards
            .iter()
            .map(|f| format!("{}:{}->{}", f.protocol.as_str(), f.host, f.guest))
            .collect();
        forwards.sort();
        LaunchSettings {
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            forwards,
            disk_mib: vm.disk_mib,
            network: vm.network.as_ref().map(|n| n.address.to_string()),
            mounts: shared(vm)
                .map(|m| {
                    let ro = if m.readonly { " (ro)" } else { "" };
                    format!("{}->{}{ro}", m.host.display(), m.guest)
                })
                .collect(),
            seed: None,
        }
    }

    fn rows(&self) -> Vec<Row> {
        vec![
            Row {
                setting: "cpus",
                value: self.cpus.to_string(),
                with: |v| format!("{v} cpus"),
            },
            Row {
                setting: "memory",
                value: mib(self.memory_mib),
                with: |v| format!("{v} of memory"),
            },
            Row {
                setting: "forwards",
                value: list(&self.forwards),
                with: |v| format!("port forwards {v}"),
            },
            Row {
                setting: "disk",
                value: self.disk_mib.map_or_else(|| BASE_SIZE.to_owned(), mib),
                with: |v| format!("a disk of {v}"),
            },
            Row {
                setting: "network",
                value: self.network.clone().unwrap_or_else(|| "none".to_owned()),
                with: |v| format!("project network address {v}"),
            },
            Row {
                setting: "mounts",
                value: list(&self.mounts),
                with: |v| format!("shared folders {v}"),
            },
        ]
    }
}

const BASE_SIZE: &str = "the base image's size";

fn mib(n: u64) -> String {
    format!("{n} MiB")
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// Each setting `vm` runs with (`running`) that castra.toml (`configured`) now sets otherwise,
/// in the order of [`LaunchSettings`]' fields. A disk left unset in castra.toml is no drift: a
/// disk is never shrunk, so the VM's disk stays as it is whatever its size.
pub fn drift(vm: &str, running: &LaunchSettings, configured: &LaunchSettings) -> Vec<api::Drift> {
    running
        .rows()
        .into_iter()
        .zip(configured.rows())
        .filter(|(r, c)| r.value != c.value)
        .filter(|(_, c)| c.setting != "disk" || configured.disk_mib.is_some())
        .map(|(r, c)| {
            let (to_apply, restart_applies) =
                match (c.setting, running.disk_mib, configured.disk_mib) {
                    ("disk", Some(had), Some(want)) if want < had => (
                        format!(
                            "a disk never shrinks: set disk to at least {had} MiB, or discard \
                             the disk (`castractl down --discard {vm}`, then `castractl up {vm}`)"
                        ),
                        false,
                    ),
                    _ => (format!("`castractl restart {vm}` to apply"), true),
                };
            api::Drift {
                vm: vm.to_owned(),
                setting: r.setting.to_owned(),
                message: format!(
                    "{vm} is running with {}, castra.toml says {}: {to_apply}",
                    (r.with)(&r.value),
                    c.value
                ),
                running: r.value,
                configured: c.value,
                restart_applies,
            }
        })
        .collect()
}

/// The drift of `vm` given the settings its running machine was launched with (None: not
/// running, or launched by a castrad that did not record them: nothing to compare).
///
/// A guest without cloud-init gets its project network address and its mounts over SSH at
/// each boot: a restart applies them. A cloud-init guest takes both from its seed, made once
/// per disk: they are compared with what the seed says (`running.seed`), not with what QEMU
/// was launched with, so the drift stays after a restart, and it says what applies it (a new
/// disk). Only a change of the host side of its mounts (the same guest paths) is a restart's.
pub fn of_running(vm: &Vm, running: Option<&LaunchSettings>) -> Vec<api::Drift> {
    let Some(running) = running else {
        return Vec::new();
    };
    let configured = LaunchSettings::of(vm);
    if !vm.cloud_init.enabled {
        return drift(&vm.name, running, &configured);
    }
    let mut base = running.clone();
    if let Some(seed) = &running.seed {
        base.network.clone_from(&seed.network);
    }
    let mut found = drift(&vm.name, &base, &configured);
    let now = Seeded::of(vm);
    // Whether the guest side of its mounts is not the seed's (without a record of the seed:
    // any change of its mounts is taken to be).
    let mounts_seed_bound = running.seed.as_ref().is_none_or(|s| s.mounts != now.mounts);
    if let Some(seed) = running.seed.as_ref().filter(|_| mounts_seed_bound) {
        found.retain(|d| d.setting != "mounts");
        found.push(api::Drift {
            vm: vm.name.clone(),
            setting: "mounts".to_owned(),
            running: list(&seed.mounts),
            configured: list(&now.mounts),
            message: String::new(),
            restart_applies: false,
        });
    }
    let restart = format!(": `castractl restart {}` to apply", vm.name);
    let tail = format!(
        "cloud-init reads its seed on its disk's first boot only, so a restart does not apply \
         it: `castractl down --discard {0}`, then `castractl up {0}` (a new disk)",
        vm.name
    );
    for d in found
        .iter_mut()
        .filter(|d| d.setting == "network" || (d.setting == "mounts" && mounts_seed_bound))
    {
        // With a record of the seed, the sentence says what the seed gives (true before a
        // restart and after it); without one, what the launch had.
        let head = match (&running.seed, d.setting.as_str()) {
            (Some(_), "network") => format!(
                "{}'s seed gives it project network address {}, castra.toml says {}",
                vm.name, d.running, d.configured
            ),
            (Some(_), _) => format!(
                "{}'s seed mounts shared folders at {}, castra.toml says {}",
                vm.name, d.running, d.configured
            ),
            (None, _) => d
                .message
                .strip_suffix(&restart)
                .unwrap_or(&d.message)
                .to_owned(),
        };
        d.message = format!("{head}: {tail}");
        d.restart_applies = false;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LaunchSettings {
        LaunchSettings {
            cpus: 2,
            memory_mib: 1024,
            forwards: vec!["tcp:8080->80".into()],
            disk_mib: Some(2048),
            network: None,
            mounts: vec![],
            seed: None,
        }
    }

    #[test]
    fn equal_settings_have_no_drift() {
        assert!(drift("web-0", &settings(), &settings()).is_empty());
    }

    #[test]
    fn each_changed_setting_is_one_entry_with_its_sentence() {
        let running = settings();
        let configured = LaunchSettings {
            cpus: 4,
            memory_mib: 2048,
            forwards: vec!["tcp:8080->80".into(), "udp:5353->53".into()],
            disk_mib: Some(4096),
            network: Some("10.142.7.10".into()),
            mounts: vec!["/p/src->/src".into()],
            seed: None,
        };
        let d = drift("web-0", &running, &configured);
        assert!(d.iter().all(|d| d.restart_applies));
        let got: Vec<(&str, &str, &str)> = d
            .iter()
            .map(|d| (&*d.setting, &*d.running, &*d.configured))
            .collect();
        assert_eq!(
            got,
            [
                ("cpus", "2", "4"),
                ("memory", "1024 MiB", "2048 MiB"),
                ("forwards", "tcp:8080->80", "tcp:8080->80, udp:5353->53"),
                ("disk", "2048 MiB", "4096 MiB"),
                ("network", "none", "10.142.7.10"),
                ("mounts", "none", "/p/src->/src"),
            ]
        );
        assert_eq!(
            d[0].message,
            "web-0 is running with 2 cpus, castra.toml says 4: `castractl restart web-0` to apply"
        );
        assert_eq!(
            d[1].message,
            "web-0 is running with 1024 MiB of memory, castra.toml says 2048 MiB: \
             `castractl restart web-0` to apply"
        );
        assert!(d.iter().all(|d| d.vm == "web-0"));
    }

    #[test]
    fn a_smaller_disk_says_it_cannot_shrink_and_an_unset_one_is_no_drift() {
        let running = settings();
        let smaller = LaunchSettings {
            disk_mib: Some(1024),
            ..settings()
        };
        let d = drift("db", &running, &smaller);
        assert_eq!(d.len(), 1);
        assert!(!d[0].restart_applies, "a restart refuses it");
        assert!(d[0].message.contains("never shrinks"), "{}", d[0].message);
        assert!(
            d[0].message.contains("at least 2048 MiB"),
            "{}",
            d[0].message
        );
        let unset = LaunchSettings {
            disk_mib: None,
            ..settings()
        };
        assert!(drift("db", &running, &unset).is_empty());
        // From the base image's size to a set one: drift, applied by a restart.
        let d = drift("db", &unset, &running);
        assert_eq!(d[0].running, "the base image's size");
        assert!(d[0].message.ends_with("`castractl restart db` to apply"));
    }

    fn on_network(vm: &mut Vm, address: [u8; 4]) {
        vm.network = Some(crate::config::network::Attachment {
            address: address.into(),
            prefix: 24,
            mac: "52:54:00:78:07:0a".into(),
            group: [239, 255, 0, 1].into(),
            port: 41000,
            hosts: vec![],
        });
    }

    fn mount(host: &str, guest: &str) -> crate::config::Mount {
        crate::config::Mount {
            host: host.into(),
            guest: guest.into(),
            readonly: false,
        }
    }

    /// What castrad's launch of `vm` records (its seed as `seed` says, when it is a cloud-init
    /// guest): `backend::qemu::launch_settings` without the files.
    fn launched(vm: &Vm, seed: &Seeded) -> LaunchSettings {
        LaunchSettings {
            seed: vm.cloud_init.enabled.then(|| seed.clone()),
            ..LaunchSettings::of(vm)
        }
    }

    #[test]
    fn a_cloud_init_guests_new_network_address_needs_a_new_disk_and_stays_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut vm = crate::testutil::sample_vm(dir.path());
        vm.cloud_init.enabled = true;
        on_network(&mut vm, [10, 142, 7, 10]);
        let seed = Seeded::of(&vm);
        let running = launched(&vm, &seed);
        assert!(of_running(&vm, Some(&running)).is_empty());
        on_network(&mut vm, [10, 142, 7, 11]);
        let d = of_running(&vm, Some(&running));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            (&*d[0].running, &*d[0].configured),
            ("10.142.7.10", "10.142.7.11")
        );
        assert!(!d[0].restart_applies);
        assert!(
            !d[0].message.contains("castractl restart"),
            "{}",
            d[0].message
        );
        assert!(
            d[0].message
                .ends_with("`castractl down --discard web`, then `castractl up web` (a new disk)"),
            "{}",
            d[0].message
        );
        // A restart launches QEMU with the new address, but the seed is the disk's: the guest
        // keeps the old one, and so does the drift.
        let restarted = launched(&vm, &seed);
        assert_eq!(of_running(&vm, Some(&restarted)), d);
        // A new disk gets a new seed: no drift.
        let fresh = launched(&vm, &Seeded::of(&vm));
        assert!(of_running(&vm, Some(&fresh)).is_empty());
    }

    #[test]
    fn a_cloud_init_guests_new_mount_point_needs_a_new_disk_and_stays_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut vm = crate::testutil::sample_vm(dir.path());
        vm.cloud_init.enabled = true;
        vm.mounts = vec![mount("/p/src", "/src")];
        let seed = Seeded::of(&vm);
        let running = launched(&vm, &seed);
        vm.mounts.push(crate::config::Mount {
            readonly: true,
            ..mount("/p/data", "/data")
        });
        let d = of_running(&vm, Some(&running));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            (&*d[0].running, &*d[0].configured),
            ("/src", "/src, /data (ro)")
        );
        assert!(!d[0].restart_applies);
        assert!(
            d[0].message.starts_with(
                "web's seed mounts shared folders at /src, castra.toml says /src, /data (ro): "
            ),
            "{}",
            d[0].message
        );
        assert!(d[0].message.contains("--discard web"), "{}", d[0].message);
        assert_eq!(of_running(&vm, Some(&launched(&vm, &seed))), d);
    }

    #[test]
    fn a_cloud_init_guests_new_host_folder_for_the_same_mount_point_is_a_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut vm = crate::testutil::sample_vm(dir.path());
        vm.cloud_init.enabled = true;
        vm.mounts = vec![mount("/p/src", "/src")];
        let seed = Seeded::of(&vm);
        let running = launched(&vm, &seed);
        vm.mounts = vec![mount("/p/other", "/src")];
        let d = of_running(&vm, Some(&running));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].configured, "/p/other->/src");
        assert!(d[0].restart_applies);
        assert!(d[0].message.ends_with("`castractl restart web` to apply"));
        assert!(of_running(&vm, Some(&launched(&vm, &seed))).is_empty());
    }

    #[test]
    fn without_cloud_init_a_restart_applies_network_and_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let mut vm = crate::testutil::sample_vm(dir.path());
        assert!(!vm.cloud_init.enabled);
        on_network(&mut vm, [10, 142, 7, 10]);
        let running = LaunchSettings::of(&vm);
        on_network(&mut vm, [10, 142, 7, 11]);
        vm.mounts = vec![mount("/p/src", "/src")];
        let d = of_running(&vm, Some(&running));
        let settings: Vec<&str> = d.iter().map(|d| &*d.setting).collect();
        assert_eq!(settings, ["network", "mounts"]);
        for d in &d {
            assert!(d.restart_applies, "{d:?}");
            assert!(
                d.message.ends_with("`castractl restart web` to apply"),
                "{d:?}"
            );
        }
        // Its guest setup runs at each boot: after the restart it has them.
        assert!(of_running(&vm, Some(&LaunchSettings::of(&vm))).is_empty());
    }

    #[test]
    fn a_cloud_init_guest_without_a_record_of_its_seed_still_says_a_new_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut vm = crate::testutil::sample_vm(dir.path());
        vm.cloud_init.enabled = true;
        let running = LaunchSettings::of(&vm);
        on_network(&mut vm, [10, 142, 7, 11]);
        vm.mounts = vec![mount("/p/src", "/src")];
        let d = of_running(&vm, Some(&running));
        assert_eq!(d.len(), 2, "{d:?}");
        for d in &d {
            assert!(!d.restart_applies, "{d:?}");
            assert!(d.message.starts_with("web is running with "), "{d:?}");
            assert!(d.message.contains("--discard web"), "{d:?}");
        }
        // Other settings of a cloud-init guest are a restart's.
        vm.cpus += 1;
        let d = of_running(&vm, Some(&running));
        assert!(d[0].restart_applies && d[0].setting == "cpus", "{d:?}");
    }

    #[test]
    fn records_without_newer_fields_still_read() {
        let old: LaunchSettings = serde_json::from_str(r#"{"cpus":1,"memory_mib":512}"#).unwrap();
        assert_eq!(old.forwards, Vec::<String>::new());
        assert_eq!(old.disk_mib, None);
        assert_eq!(
            old.network, None,
            "a VM launched before project networks is on none"
        );
    }
}

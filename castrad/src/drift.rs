//! Drift: the launch settings a running VM was started with, against what castra.toml says
//! now. A running VM keeps what it was launched with; `plan` and `up` report each setting that
//! differs ([`drift`]), and a restart applies them.
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
            // Only QEMU VMs get shared folders: a libvirt domain is defined without them.
            mounts: vm
                .mounts
                .iter()
                .filter(|_| vm.backend == crate::config::BackendKind::Qemu)
                .map(|m| {
                    let ro = if m.readonly { " (ro)" } else { "" };
                    format!("{}->{}{ro}", m.host.display(), m.guest)
                })
                .collect(),
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
            let to_apply = match (c.setting, running.disk_mib, configured.disk_mib) {
                ("disk", Some(had), Some(want)) if want < had => format!(
                    "a disk never shrinks: set disk to at least {had} MiB, or discard the \
                     disk (`castractl down --discard {vm}`, then `castractl up {vm}`)"
                ),
                _ => format!("`castractl restart {vm}` to apply"),
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
            }
        })
        .collect()
}

/// The drift of `vm` given the settings its running machine was launched with (None: not
/// running, or launched by a castrad that did not record them: nothing to compare).
///
/// A cloud-init guest mounts its shared folders from its seed, made once per disk: for it a
/// restart does not apply changed mounts, and the message says what does.
pub fn of_running(vm: &Vm, running: Option<&LaunchSettings>) -> Vec<api::Drift> {
    let mut found = running.map_or_else(Vec::new, |r| drift(&vm.name, r, &LaunchSettings::of(vm)));
    if vm.cloud_init.enabled {
        let restart = format!("`castractl restart {}` to apply", vm.name);
        let discard = format!(
            "its seed (made for its disk's first boot) mounts the old ones: \
             `castractl down --discard {0}`, then `castractl up {0}`",
            vm.name
        );
        for d in found.iter_mut().filter(|d| d.setting == "mounts") {
            d.message = d.message.replace(&restart, &discard);
        }
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
        };
        let d = drift("web-0", &running, &configured);
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

    #[test]
    fn changed_mounts_of_a_cloud_init_guest_say_a_restart_is_not_enough() {
        let dir = tempfile::tempdir().unwrap();
        let mut vm = crate::testutil::sample_vm(dir.path());
        let running = LaunchSettings::of(&vm);
        vm.mounts.push(crate::config::Mount {
            host: "/p/src".into(),
            guest: "/src".into(),
            readonly: true,
        });
        vm.cloud_init.enabled = true;
        let d = of_running(&vm, Some(&running));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].configured, "/p/src->/src (ro)");
        assert!(d[0].message.contains("--discard"), "{}", d[0].message);
        vm.cloud_init.enabled = false;
        let d = of_running(&vm, Some(&running));
        assert!(d[0].message.ends_with("to apply"), "{}", d[0].message);
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

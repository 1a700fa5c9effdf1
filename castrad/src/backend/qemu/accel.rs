//! Choosing the accelerator: KVM when it can run a stock guest, TCG otherwise, and why.
//!
//! `/dev/kvm` opening is not enough: on some hosts it is backed by `kvm_pvm`, which accepts
//! KVM_CREATE_VM but hangs stock guest kernels after "Probing EDD" (the host logs
//! `kvm-pvm: INTERNAL_ERROR`). `auto` therefore also requires that `kvm_pvm` is not loaded.

use super::argv::Accel;

pub use crate::config::AccelSetting;

/// What the host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmProbe {
    /// Err: why /dev/kvm cannot be used (missing, permission denied...).
    pub device: Result<(), String>,
    /// The kvm_pvm module is loaded.
    pub pvm: bool,
}

/// Looks at /dev/kvm and /sys/module/kvm_pvm.
pub fn probe() -> KvmProbe {
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| format!("/dev/kvm: {e}"));
    KvmProbe {
        device,
        pvm: std::path::Path::new("/sys/module/kvm_pvm").exists(),
    }
}

/// The accelerator to use and the reason, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub accel: Accel,
    pub reason: String,
}

const PVM: &str = "/dev/kvm is backed by kvm_pvm, which hangs stock guest kernels";

/// `accel = "kvm"` on a host where KVM cannot run the guest (`why` names the host when it is
/// not this one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("accel = \"kvm\" cannot be used: {why}; use accel = \"tcg\" or \"auto\"")]
pub struct KvmUnusable {
    pub why: String,
}

/// Pure: the choice for `setting` on a host described by `probe`.
pub fn choose(setting: AccelSetting, probe: &KvmProbe) -> Result<Choice, KvmUnusable> {
    let kvm_ok = match (&probe.device, probe.pvm) {
        (Err(e), _) => Err(e.clone()),
        (Ok(()), true) => Err(PVM.to_owned()),
        (Ok(()), false) => Ok(()),
    };
    match (setting, kvm_ok) {
        (AccelSetting::Tcg, _) => Ok(Choice {
            accel: Accel::Tcg,
            reason: "tcg requested".into(),
        }),
        (AccelSetting::Kvm, Ok(())) => Ok(Choice {
            accel: Accel::Kvm,
            reason: "kvm requested".into(),
        }),
        (AccelSetting::Kvm, Err(why)) => Err(KvmUnusable { why }),
        (AccelSetting::Auto, Ok(())) => Ok(Choice {
            accel: Accel::Kvm,
            reason: "auto: /dev/kvm is usable".into(),
        }),
        (AccelSetting::Auto, Err(why)) => Ok(Choice {
            accel: Accel::Tcg,
            reason: format!("auto: {why}; using TCG (slower)"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(device: Result<(), &str>, pvm: bool) -> KvmProbe {
        KvmProbe {
            device: device.map_err(str::to_owned),
            pvm,
        }
    }

    #[test]
    fn auto_picks_kvm_only_when_it_can_run_a_stock_guest() {
        let cases = [
            (host(Ok(()), false), Accel::Kvm, "auto: /dev/kvm is usable"),
            (
                host(Ok(()), true),
                Accel::Tcg,
                "auto: /dev/kvm is backed by kvm_pvm, which hangs stock guest kernels; using TCG (slower)",
            ),
            (
                host(Err("/dev/kvm: No such file or directory"), false),
                Accel::Tcg,
                "auto: /dev/kvm: No such file or directory; using TCG (slower)",
            ),
        ];
        for (probe, accel, reason) in cases {
            let c = choose(AccelSetting::Auto, &probe).unwrap();
            assert_eq!((c.accel, c.reason.as_str()), (accel, reason), "{probe:?}");
        }
    }

    #[test]
    fn explicit_settings_are_obeyed_or_refused_with_the_reason() {
        assert_eq!(
            choose(AccelSetting::Tcg, &host(Ok(()), false))
                .unwrap()
                .accel,
            Accel::Tcg
        );
        assert_eq!(
            choose(AccelSetting::Kvm, &host(Ok(()), false))
                .unwrap()
                .accel,
            Accel::Kvm
        );
        let err = choose(AccelSetting::Kvm, &host(Ok(()), true))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kvm_pvm") && err.contains("use accel = \"tcg\""),
            "{err}"
        );
    }

    #[test]
    fn settings_parse() {
        assert_eq!(AccelSetting::parse("auto"), Some(AccelSetting::Auto));
        assert_eq!(AccelSetting::parse("KVM"), None);
    }
}

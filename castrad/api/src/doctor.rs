//! `castra.doctor`: whether this machine (and a project) can run Castra's VMs, check by check.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DoctorParams {
    /// Also check this project (absolute path of its castra.toml): its VMs' base images,
    /// ports and keys.
    #[serde(default)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DoctorResult {
    /// One entry per check, host checks first, then the project's (VM by VM).
    pub checks: Vec<DoctorCheck>,
}

/// One check and its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DoctorCheck {
    /// What was checked: `castrad`, `machine` (castractl's), `qemu`, `qemu-img`, `kvm`,
    /// `virtiofsd`, `state-dir`, `disk-space`, `fd-limit`, `ssh`, `units`, `socket`, `linger`,
    /// `service-path`, `config`, `base-image`, `ports`, `keys`.
    pub check: String,
    /// The VM the check is about; null for checks of the machine or the whole project.
    pub vm: Option<String>,
    pub status: CheckStatus,
    /// The finding, in one line.
    pub verdict: String,
    /// What to do about it; null when there is nothing to do.
    pub fix: Option<String>,
}

/// How a check came out. Only `fail` makes `castractl doctor` exit 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Fine.
    Ok,
    /// Works, but not at its best (TCG instead of KVM, 9p instead of virtiofs, little room).
    Warn,
    /// Castra cannot do its job until this is fixed.
    Fail,
}

impl DoctorCheck {
    pub fn ok(check: &str, vm: Option<&str>, verdict: impl Into<String>) -> DoctorCheck {
        DoctorCheck::new(check, vm, CheckStatus::Ok, verdict.into(), None)
    }

    pub fn warn(
        check: &str,
        vm: Option<&str>,
        verdict: impl Into<String>,
        fix: impl Into<String>,
    ) -> DoctorCheck {
        DoctorCheck::new(
            check,
            vm,
            CheckStatus::Warn,
            verdict.into(),
            Some(fix.into()),
        )
    }

    pub fn fail(
        check: &str,
        vm: Option<&str>,
        verdict: impl Into<String>,
        fix: impl Into<String>,
    ) -> DoctorCheck {
        DoctorCheck::new(
            check,
            vm,
            CheckStatus::Fail,
            verdict.into(),
            Some(fix.into()),
        )
    }

    fn new(
        check: &str,
        vm: Option<&str>,
        status: CheckStatus,
        verdict: String,
        fix: Option<String>,
    ) -> DoctorCheck {
        DoctorCheck {
            check: check.to_owned(),
            vm: vm.map(str::to_owned),
            status,
            verdict,
            fix,
        }
    }
}

use std::path::Path;

use castra_api::CheckStatus;

use super::host::{self, LOW_SPACE, NO_SPACE};
use crate::backend::qemu::accel::{AccelSetting, KvmProbe};

fn probe(device: Result<(), &str>, pvm: bool) -> KvmProbe {
    KvmProbe {
        device: device.map_err(str::to_owned),
        pvm,
    }
}

#[test]
fn kvm_verdicts_say_why_tcg_and_what_to_do() {
    let ok = host::kvm(None, &probe(Ok(()), false));
    assert_eq!(ok.status, CheckStatus::Ok, "{ok:?}");
    assert!(ok.verdict.starts_with("KVM"), "{ok:?}");

    let pvm = host::kvm(None, &probe(Ok(()), true));
    assert_eq!(pvm.status, CheckStatus::Warn, "{pvm:?}");
    assert!(pvm.verdict.contains("kvm_pvm"), "{pvm:?}");
    assert!(pvm.fix.unwrap().contains("nothing to do"));

    let denied = host::kvm(
        None,
        &probe(Err("/dev/kvm: Permission denied (os error 13)"), false),
    );
    assert_eq!(denied.status, CheckStatus::Warn);
    assert!(denied.fix.unwrap().contains("kvm group"));

    let missing = host::kvm(
        None,
        &probe(Err("/dev/kvm: No such file or directory"), false),
    );
    assert!(missing.fix.unwrap().contains("kvm_intel"));

    // castrad --accel kvm where KVM cannot run a guest: every QEMU VM would fail to start.
    let forced = host::kvm(Some(AccelSetting::Kvm), &probe(Ok(()), true));
    assert_eq!(forced.status, CheckStatus::Fail, "{forced:?}");
    let tcg = host::kvm(Some(AccelSetting::Tcg), &probe(Ok(()), false));
    assert_eq!(tcg.status, CheckStatus::Ok, "{tcg:?}");
    assert!(tcg.verdict.starts_with("TCG"), "{tcg:?}");
}

#[test]
fn space_and_file_limits_have_thresholds() {
    let dir = Path::new("/s");
    assert_eq!(host::space(dir, NO_SPACE - 1).status, CheckStatus::Fail);
    assert_eq!(host::space(dir, LOW_SPACE - 1).status, CheckStatus::Warn);
    let fine = host::space(dir, LOW_SPACE);
    assert_eq!(fine.status, CheckStatus::Ok);
    assert_eq!(fine.verdict, "4.0 GiB free in /s");
    assert_eq!(host::files(1024, 32).status, CheckStatus::Warn);
    assert_eq!(host::files(524_288, 32).status, CheckStatus::Ok);
}

#[test]
fn version_of_reports_a_missing_program_and_a_failing_one() {
    assert_eq!(
        super::version_of("castra-no-such-program", &["--version"]),
        Err("not found in PATH".to_owned())
    );
    let failed = super::version_of("sh", &["-c", "echo broken >&2; exit 3"]).unwrap_err();
    assert!(
        failed.contains("broken") && failed.contains('3'),
        "{failed}"
    );
    assert_eq!(
        super::version_of("sh", &["-c", "echo; echo '  v1.2  '"]),
        Ok("v1.2".to_owned())
    );
}

use std::path::Path;

use super::*;
use crate::hashing::{Artifact, BaseHash};
use crate::testutil::sample_vm;

fn root() -> StateRoot {
    StateRoot::for_project(Path::new("/state"), "p", Path::new("/p/castra.toml"))
}

fn stamp(base: &str, artifact: &str, disk: &str) -> Stamp {
    Stamp {
        vm: "web".into(),
        base_hash: base.into(),
        artifact_hash: artifact.into(),
        disk_id: disk.into(),
        run_id: "r1".into(),
        log_path: "/l.json".into(),
        completed_at: "2026-11-22T00:00:00.000Z".into(),
    }
}

fn facts(stamp: StampRead, disk: Option<&str>) -> Facts {
    Facts {
        artifact: Some(Artifact {
            hash: "A".into(),
            payload_bytes: Some(9),
        }),
        base: BaseHash {
            hash: "B".into(),
            bytes_read: 0,
        },
        image: None,
        stamp,
        disk_id: disk.map(str::to_owned),
        vizier: None,
        missing_identity: None,
        seed_changed: false,
        running: None,
    }
}

fn plan(mode: BootstrapMode, source: ModeSource, facts: Facts) -> VmPlan {
    let vm = sample_vm(Path::new("/p"));
    decide(&root(), &vm, (mode, source), facts)
}

#[test]
fn auto_with_a_matching_stamp_is_noop() {
    let p = plan(
        BootstrapMode::Auto,
        ModeSource::File,
        facts(
            StampRead::Present(stamp("B", "A", "disk:1")),
            Some("disk:1"),
        ),
    );
    assert_eq!((p.action, p.trigger), (Action::Noop, Some(Trigger::Auto)));
    assert!(p.reason.contains("stamp of run r1"), "{}", p.reason);
    assert_eq!(p.stamp.unwrap().run_id, "r1");
}

#[test]
fn auto_reruns_and_says_which_key_changed() {
    let cases = [
        (
            stamp("B0", "A", "disk:1"),
            Some("disk:1"),
            "base image changed",
        ),
        (
            stamp("B", "A0", "disk:1"),
            Some("disk:1"),
            "bootstrap artifact changed",
        ),
        (stamp("B", "A", "disk:0"), Some("disk:1"), "disk changed"),
        (stamp("B", "A", "disk:1"), None, "disk changed"),
        (
            stamp("B0", "A0", "disk:1"),
            Some("disk:1"),
            "base image and bootstrap artifact changed",
        ),
    ];
    for (s, disk, want) in cases {
        let p = plan(
            BootstrapMode::Auto,
            ModeSource::File,
            facts(StampRead::Present(s), disk),
        );
        assert_eq!(p.action, Action::Run);
        assert!(p.reason.starts_with(want), "{want}: {}", p.reason);
    }
    let p = plan(
        BootstrapMode::Auto,
        ModeSource::File,
        facts(StampRead::Absent, None),
    );
    assert_eq!(
        (p.action, p.reason.as_str()),
        (Action::Run, "not bootstrapped yet (no stamp)")
    );
}

#[test]
fn always_runs_despite_a_matching_stamp_and_names_its_source() {
    let p = plan(
        BootstrapMode::Always,
        ModeSource::PerVm {
            token: "web=always".into(),
        },
        facts(
            StampRead::Present(stamp("B", "A", "disk:1")),
            Some("disk:1"),
        ),
    );
    assert_eq!((p.action, p.trigger), (Action::Run, Some(Trigger::Always)));
    assert_eq!(
        p.reason,
        "mode always (from --bootstrap web=always): runs even if a stamp matches"
    );
}

#[test]
fn skip_and_missing_script_skip() {
    let p = plan(
        BootstrapMode::Skip,
        ModeSource::Global {
            token: "disabled".into(),
        },
        facts(StampRead::Absent, None),
    );
    assert_eq!((p.action, p.trigger), (Action::Skip, None));
    assert_eq!(p.reason, "mode skip (from --bootstrap disabled)");

    let mut f = facts(StampRead::Absent, None);
    f.artifact = None;
    let p = plan(BootstrapMode::Always, ModeSource::File, f);
    assert_eq!(p.action, Action::Skip);
    assert_eq!(p.reason, "no bootstrap script configured");
    assert!(
        p.warnings.iter().any(|w| w.contains("no bootstrap script")),
        "{:?}",
        p.warnings
    );
}

#[test]
fn corrupt_stamp_is_a_warning_and_a_rerun() {
    let p = plan(
        BootstrapMode::Auto,
        ModeSource::File,
        facts(
            StampRead::Corrupt("/s/web.json: EOF".into()),
            Some("disk:1"),
        ),
    );
    assert_eq!(p.action, Action::Run);
    assert!(p.warnings[0].contains("ignoring unreadable stamp (/s/web.json: EOF)"));
}

#[test]
fn missing_verify_is_warned_about_only_when_running() {
    let vm = {
        let mut vm = sample_vm(Path::new("/p"));
        vm.bootstrap.verify_command = None;
        vm.bootstrap.verify_path = None;
        vm
    };
    let run = decide(
        &root(),
        &vm,
        (BootstrapMode::Auto, ModeSource::File),
        facts(StampRead::Absent, None),
    );
    assert!(run.warnings.iter().any(|w| w.contains("no verify_command")));
    let skip = decide(
        &root(),
        &vm,
        (BootstrapMode::Skip, ModeSource::File),
        facts(StampRead::Absent, None),
    );
    assert!(skip.warnings.is_empty(), "{:?}", skip.warnings);
}

fn seen(version: &str, healthy: bool) -> Option<crate::vizier::VizierSeen> {
    Some(crate::vizier::VizierSeen {
        version: version.into(),
        pid: 7,
        healthy,
    })
}

#[test]
fn vizier_expectations_follow_what_was_seen() {
    let stamped = || {
        facts(
            StampRead::Present(stamp("B", "A", "disk:1")),
            Some("disk:1"),
        )
    };
    let mut f = stamped();
    let p = plan(BootstrapMode::Auto, ModeSource::File, f.clone());
    assert_eq!((p.action, p.vizier), (Action::Noop, VizierExpect::Start));

    f.vizier = seen(crate::vizier::VERSION, true);
    let p = plan(BootstrapMode::Auto, ModeSource::File, f.clone());
    assert_eq!(
        (p.action, p.vizier, p.vizier_remediation),
        (Action::Noop, VizierExpect::Healthy, None)
    );

    // Another version in the guest: a matching stamp no longer makes it a NoOp.
    f.vizier = seen("0.0.9", true);
    let p = plan(BootstrapMode::Auto, ModeSource::File, f.clone());
    assert_eq!((p.action, p.vizier), (Action::Run, VizierExpect::Restart));
    assert!(
        p.reason.contains("Vizier 0.0.9 runs in the guest"),
        "{}",
        p.reason
    );

    // Lost: restart, and say where to look.
    f.vizier = seen(crate::vizier::VERSION, false);
    let p = plan(BootstrapMode::Auto, ModeSource::File, f);
    assert_eq!((p.action, p.vizier), (Action::Run, VizierExpect::Restart));
    assert!(
        p.vizier_remediation
            .unwrap()
            .contains("vizier/web/service.log")
    );

    let p = plan(BootstrapMode::Skip, ModeSource::File, stamped());
    assert_eq!(p.vizier, VizierExpect::Unavailable);
}

/// A guest without cloud-init on the project network is set up by castrad over SSH
/// (pipeline/guest_setup.rs): no warning that the script has to.
#[test]
fn a_networked_vm_without_cloud_init_is_not_warned() {
    let mut vm = sample_vm(Path::new("/p"));
    let nets =
        crate::config::network::assign(Path::new("/p/castra.toml"), &[("web", true)]).unwrap();
    vm.network = nets[0].clone();
    vm.cloud_init.enabled = false;
    let p = decide(
        &root(),
        &vm,
        (BootstrapMode::Auto, ModeSource::File),
        facts(StampRead::Absent, None),
    );
    assert!(
        !p.warnings.iter().any(|w| w.contains("network")),
        "{:?}",
        p.warnings
    );
}

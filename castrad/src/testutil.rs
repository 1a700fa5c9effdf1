//! Shared fixtures for unit tests.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{Backend, Bootstrap, BootstrapMode, Ssh, Vm};

/// A QEMU VM named `web` whose files (base.img, run.sh, payload/) live in `dir`.
pub fn sample_vm(dir: &Path) -> Vm {
    Vm {
        name: "web".into(),
        declared_name: "web".into(),
        replica: None,
        description: None,
        backend: Backend::Qemu,
        base_image: Some(dir.join("base.img")),
        kernel: None,
        initrd: None,
        cmdline: None,
        cpus: 2,
        memory_mib: 2048,
        ephemeral: false,
        accel: crate::config::AccelSetting::Auto,
        port_forwards: vec![],
        ssh: Ssh::default(),
        bootstrap: Bootstrap {
            mode: BootstrapMode::Auto,
            script: Some(dir.join("run.sh")),
            payload: Some(dir.join("payload")),
            verify_command: Some("test -f done".into()),
            verify_path: Some("done".into()),
            handshake_timeout_secs: 120,
            remote_dir: "/var/tmp/castra/web".into(),
            env: BTreeMap::from([("A".into(), "1".into()), ("B".into(), "2".into())]),
            metadata_path: None,
            vizier_dir: None,
        },
    }
}

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::*;
use crate::config::BootstrapMode;
use crate::testutil::sample_vm as vm;

fn fixture() -> (tempfile::TempDir, Vm) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::create_dir_all(d.join("payload/sub")).unwrap();
    fs::write(d.join("payload/a.txt"), "alpha").unwrap();
    fs::write(d.join("payload/sub/b.bin"), [0u8, 1, 2, 3]).unwrap();
    std::os::unix::fs::symlink("a.txt", d.join("payload/link")).unwrap();
    fs::write(d.join("base.img"), vec![7u8; 3 << 20]).unwrap();
    let vm = vm(d);
    (dir, vm)
}

fn artifact(vm: &Vm) -> String {
    artifact_hash(vm, "1.0").unwrap().hash
}

#[test]
fn artifact_hash_is_deterministic_and_counts_payload_bytes() {
    let (_dir, vm) = fixture();
    let a = artifact_hash(&vm, "1.0").unwrap();
    assert_eq!(a, artifact_hash(&vm, "1.0").unwrap());
    assert_eq!(a.hash.len(), 64);
    assert_eq!(a.payload_bytes, Some(5 + 4));
}

#[test]
fn every_input_of_the_artifact_changes_its_hash() {
    let (dir, base_vm) = fixture();
    let d = dir.path();
    let base = artifact(&base_vm);
    let mut seen = vec![base.clone()];
    let mut check = |what: &str, h: String| {
        assert!(
            !seen.contains(&h),
            "{what} did not change the artifact hash"
        );
        seen.push(h);
    };

    // One payload byte.
    fs::write(d.join("payload/sub/b.bin"), [0u8, 1, 2, 4]).unwrap();
    check("payload byte", artifact(&base_vm));
    fs::write(d.join("payload/sub/b.bin"), [0u8, 1, 2, 3]).unwrap();
    assert_eq!(
        artifact(&base_vm),
        base,
        "restoring the byte restores the hash"
    );

    // One mode bit.
    fs::set_permissions(d.join("payload/a.txt"), fs::Permissions::from_mode(0o755)).unwrap();
    check("mode bit", artifact(&base_vm));
    fs::set_permissions(d.join("payload/a.txt"), fs::Permissions::from_mode(0o644)).unwrap();

    // A rename inside the payload, same contents.
    fs::rename(d.join("payload/sub/b.bin"), d.join("payload/sub/c.bin")).unwrap();
    check("payload rename", artifact(&base_vm));
    fs::rename(d.join("payload/sub/c.bin"), d.join("payload/sub/b.bin")).unwrap();

    // Symlink target.
    fs::remove_file(d.join("payload/link")).unwrap();
    std::os::unix::fs::symlink("sub", d.join("payload/link")).unwrap();
    check("symlink target", artifact(&base_vm));

    // Script bytes.
    fs::write(d.join("run.sh"), "#!/bin/sh\necho hi!\n").unwrap();
    check("script byte", artifact(&base_vm));

    let mut vm = base_vm.clone();
    vm.bootstrap.env.insert("A".into(), "10".into());
    check("env value", artifact(&vm));

    let mut vm = base_vm.clone();
    vm.bootstrap.env = BTreeMap::from([("A".into(), "12".into())]);
    check("env key/value boundary 1", artifact(&vm));
    vm.bootstrap.env = BTreeMap::from([("A1".into(), "2".into())]);
    check("env key/value boundary 2", artifact(&vm));

    let mut vm = base_vm.clone();
    vm.bootstrap.verify_command = Some("test -f done2".into());
    check("verify command", artifact(&vm));
    vm.bootstrap.verify_command = None;
    check("no verify command", artifact(&vm));

    let mut vm = base_vm.clone();
    vm.bootstrap.verify_path = Some("other".into());
    check("verify path", artifact(&vm));

    let mut vm = base_vm.clone();
    vm.bootstrap.remote_dir = "/var/tmp/castra/web2".into();
    check("remote_dir", artifact(&vm));

    check(
        "vizier version",
        artifact_hash(&base_vm, "1.1").unwrap().hash,
    );

    let mut vm = base_vm.clone();
    vm.bootstrap.payload = None;
    check("no payload", artifact(&vm));
}

#[test]
fn things_outside_the_artifact_do_not_change_it() {
    let (_dir, vm) = fixture();
    let base = artifact(&vm);
    let mut other = vm.clone();
    other.name = "web-1".into();
    other.cpus = 8;
    other.ssh.port = Some(2222);
    other.bootstrap.mode = BootstrapMode::Always;
    other.bootstrap.handshake_timeout_secs = 5;
    assert_eq!(artifact(&other), base);
}

#[test]
fn special_files_in_the_payload_are_refused_by_name() {
    let (dir, vm) = fixture();
    nix::unistd::mkfifo(
        &dir.path().join("payload/pipe"),
        nix::sys::stat::Mode::S_IRWXU,
    )
    .unwrap();
    let err = artifact_hash(&vm, "1.0").unwrap_err().to_string();
    assert!(err.contains("pipe is a FIFO"), "{err}");
}

#[test]
fn single_file_payload_is_hashed() {
    let (dir, mut vm) = fixture();
    vm.bootstrap.payload = Some(dir.path().join("payload/a.txt"));
    let a = artifact_hash(&vm, "1.0").unwrap();
    assert_eq!(a.payload_bytes, Some(5));
}

#[test]
fn base_hash_is_the_image_sha256_and_is_cached_by_file_identity() {
    let (dir, vm) = fixture();
    let root = StateRoot::for_project(&dir.path().join("state"), "p", Path::new("/p/castra.toml"));
    let image = dir.path().join("base.img");
    let expected = hex(&Sha256::digest(fs::read(&image).unwrap()));

    let first = base_hash(&root, &vm).unwrap();
    assert_eq!(first.hash, expected);
    assert_eq!(first.bytes_read, 3 << 20);

    // Unchanged: answered from the cache without reading a byte of the image.
    let second = base_hash(&root, &vm).unwrap();
    assert_eq!(
        second,
        BaseHash {
            hash: expected.clone(),
            bytes_read: 0
        }
    );

    // Touched (mtime changes, content identical): re-read, same hash.
    let f = fs::File::options().write(true).open(&image).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    let touched = base_hash(&root, &vm).unwrap();
    assert_eq!(
        touched,
        BaseHash {
            hash: expected.clone(),
            bytes_read: 3 << 20
        }
    );

    // Content changed: new hash.
    let mut bytes = fs::read(&image).unwrap();
    bytes[12345] ^= 1;
    fs::write(&image, &bytes).unwrap();
    let changed = base_hash(&root, &vm).unwrap();
    assert_ne!(changed.hash, expected);
    assert_eq!(changed.bytes_read, 3 << 20);
    assert_eq!(base_hash(&root, &vm).unwrap().bytes_read, 0);
}

#[test]
fn a_hash_cache_that_cannot_be_written_costs_a_reread_not_an_error() {
    let (dir, vm) = fixture();
    let root = StateRoot::for_project(&dir.path().join("state"), "p", Path::new("/p/castra.toml"));
    // The cache directory's place is taken by a file: no entry can be written.
    fs::create_dir_all(root.path()).unwrap();
    fs::write(root.hash_cache_dir(), "").unwrap();
    let first = base_hash(&root, &vm).unwrap();
    assert_eq!(first.bytes_read, 3 << 20);
    let again = base_hash(&root, &vm).unwrap();
    assert_eq!(again, first, "hashed again, the same");
}

#[test]
fn kernel_initrd_and_cmdline_are_part_of_the_base_hash() {
    let (dir, mut vm) = fixture();
    let root = StateRoot::for_project(&dir.path().join("state"), "p", Path::new("/p/castra.toml"));
    let plain = base_hash(&root, &vm).unwrap().hash;
    fs::write(dir.path().join("vmlinuz"), "kernel").unwrap();
    vm.kernel = Some(dir.path().join("vmlinuz"));
    let with_kernel = base_hash(&root, &vm).unwrap().hash;
    assert_ne!(with_kernel, plain);
    vm.cmdline = Some("console=ttyS0".into());
    let with_cmdline = base_hash(&root, &vm).unwrap().hash;
    assert_ne!(with_cmdline, with_kernel);
    vm.cmdline = Some("console=ttyS1".into());
    assert_ne!(base_hash(&root, &vm).unwrap().hash, with_cmdline);
}

#[test]
fn external_vms_have_a_fixed_base_hash_and_read_nothing() {
    let (dir, mut vm) = fixture();
    let root = StateRoot::for_project(&dir.path().join("state"), "p", Path::new("/p/castra.toml"));
    vm.backend = BackendKind::External;
    let h = base_hash(&root, &vm).unwrap();
    assert_eq!(h.bytes_read, 0);
    assert_eq!(h, base_hash(&root, &vm).unwrap());
    assert!(!root.path().exists(), "no state written for an external VM");
}

#[test]
fn a_libvirt_vm_with_upload_hashes_its_local_image_by_content_through_the_cache() {
    let (dir, mut vm) = fixture();
    let root = StateRoot::for_project(&dir.path().join("state"), "p", Path::new("/p/castra.toml"));
    vm.backend = BackendKind::Libvirt;
    vm.libvirt = Some(crate::config::libvirt::Libvirt {
        uri: "qemu:///session".into(),
        remote: None,
        pool: "castra".into(),
        known_hosts: None,
        upload: false,
    });
    // Without upload: the path on the hypervisor names the base; nothing is read here.
    let by_path = base_hash(&root, &vm).unwrap();
    assert_eq!(by_path.bytes_read, 0);
    vm.libvirt.as_mut().unwrap().upload = true;
    let first = base_hash(&root, &vm).unwrap();
    assert_eq!(first.bytes_read, 3 << 20, "the image is read once");
    assert_ne!(first.hash, by_path.hash);
    let again = base_hash(&root, &vm).unwrap();
    assert_eq!(
        (again.hash.as_str(), again.bytes_read),
        (first.hash.as_str(), 0)
    );
    // The same content elsewhere: the same hash (and the same volume on the hypervisor).
    let image = dir.path().join("base.img");
    let copy = dir.path().join("copy.img");
    fs::copy(&image, &copy).unwrap();
    vm.base_image = Some(crate::config::BaseImage::path(copy));
    assert_eq!(base_hash(&root, &vm).unwrap().hash, first.hash);
    let mut bytes = fs::read(&image).unwrap();
    bytes[1] ^= 1;
    fs::write(dir.path().join("changed.img"), &bytes).unwrap();
    vm.base_image = Some(crate::config::BaseImage::path(
        dir.path().join("changed.img"),
    ));
    assert_ne!(base_hash(&root, &vm).unwrap().hash, first.hash);
}

#[test]
fn big_and_small_files_hash_like_one_sha256_of_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    // Around the size where the reader thread takes over, and with a last short chunk.
    for len in [
        0usize,
        1,
        8 << 10,
        4 * READ_BUF,
        4 * READ_BUF + 1,
        9 * READ_BUF + 12345,
    ] {
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let path = dir.path().join(format!("f{len}"));
        fs::write(&path, &bytes).unwrap();
        let mut hasher = Sha256::new();
        assert_eq!(stream_into(&mut hasher, &path).unwrap(), len as u64);
        assert_eq!(
            hex(&hasher.finalize()),
            hex(&Sha256::digest(&bytes)),
            "{len} bytes"
        );
    }
}

/// Issue 15: `vizier_dir` fed the artifact hash but BOOTSTRAP.md's list of its inputs and
/// CONFIGURATION.md did not name it. Every labelled input of `artifact_hash` (read from this
/// module's source, so a new one cannot be missed) is in the list, and every one that is a
/// `[vms.bootstrap]` key has a row in the configuration reference.
#[test]
fn docs_name_every_labelled_input_of_the_artifact_hash() {
    let source = include_str!("../hashing.rs");
    let body = &source[source.find("pub fn artifact_hash").unwrap()..];
    let body = &body[..body.find("\n}\n").unwrap()];
    let bootstrap = include_str!("../../../docs/BOOTSTRAP.md");
    let at = bootstrap
        .find("- `artifact_hash`: sha256 of everything")
        .unwrap();
    let list = &bootstrap[at..at + bootstrap[at..].find("\n- ").unwrap()];
    let configuration = include_str!("../../../docs/CONFIGURATION.md");
    let mut labels = Vec::new();
    for call in ["e.opt(", "e.field("] {
        let mut rest = body;
        while let Some(i) = rest.find(call) {
            rest = &rest[i + call.len()..];
            let rest_trimmed = rest.trim_start();
            let label = &rest_trimmed[1..rest_trimmed[1..].find('"').unwrap() + 1];
            labels.push(label.to_owned());
        }
    }
    assert!(labels.contains(&"remote_dir".to_owned()), "{labels:?}");
    for label in &labels {
        if label == "vizier_version" {
            assert!(list.contains("Vizier agent version"), "{list}");
            continue;
        }
        assert!(
            list.contains(&format!("`{label}`")),
            "BOOTSTRAP.md's artifact hash inputs lack `{label}`: {list}"
        );
        assert!(
            configuration.contains(&format!("| `{label}` ")),
            "CONFIGURATION.md has no row for `{label}`"
        );
    }
}

/// The project network joins a seed's inputs only when the VM is on one: seeds made before
/// it existed read the same, and a VM moved on the network is told its seed is stale.
#[test]
fn seed_inputs_change_with_the_vms_place_on_the_network_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = vm(dir.path());
    let without = seed_inputs(&vm).unwrap();
    let nets = crate::config::network::assign(
        std::path::Path::new("/p/castra.toml"),
        &[("web", true), ("db", true)],
    )
    .unwrap();
    vm.network = nets[0].clone();
    let first = seed_inputs(&vm).unwrap();
    assert_ne!(first, without);
    vm.network = nets[1].clone();
    assert_ne!(seed_inputs(&vm).unwrap(), first);
    vm.network = None;
    assert_eq!(seed_inputs(&vm).unwrap(), without);
}

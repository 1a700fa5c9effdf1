//! Issue 25, "shares that hold what they promise", through the real castrad: a mount's host
//! path that virtiofsd would read another way is refused at its line (`plan`); and on the
//! tiny busybox guest over a real virtiofsd, a root castrad's share leaves the guest's root no
//! setuid file and no device node on the host, and guest setup refuses a mount point whose
//! parent another guest account replaced with a symbolic link, or owns.

use crate::qemu::{Lab, one_at_a_time};

/// QEMU 7.2's virtiofsd decodes `\056` in `-o source=`: a directory literally named
/// `\056\056` would be served as `..`. `plan` refuses the file, naming the line and the key.
#[test]
fn a_backslash_in_a_mount_host_path_is_refused_at_its_line() {
    let lab = Lab::new(&[(
        "web",
        "[[vms.mounts]]\nhost = 'src/\\056\\056'\nguest = \"/src\"\n",
    )]);
    // The directory exists, named so: only its name is wrong.
    std::fs::create_dir_all(lab.project().join("src/\\056\\056")).unwrap();
    let config = lab.project().join("castra.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let line = text.lines().position(|l| l.contains("\\056")).unwrap() + 1;

    let out = lab.env.ctl(&lab.project(), &["plan"]);
    assert_eq!(out.code, 2, "{out:?}");
    let want = format!(
        "{}:{line}:8: vms[0].mounts[0].host",
        config.canonicalize().unwrap().display()
    );
    assert!(out.stderr.contains(&want), "want {want} in {}", out.stderr);
    assert!(
        out.stderr
            .contains("contains a backslash, which virtiofsd's options read as an escape"),
        "{}",
        out.stderr
    );
}

/// `vm`'s guest-setup failure in the `up`'s outcome.
fn error_of(up: &crate::bootstrap::Up, vm: &str) -> String {
    up.outcome_of(vm)["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn shares_leave_no_setuid_file_or_device_node_and_mount_points_are_checked() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs castrad as root, where virtiofsd serves shares as root"
    );
    let _lock = one_at_a_time();
    let lab = Lab::new(&[(
        "web",
        "[[vms.mounts]]\nhost = \"src\"\nguest = \"/src\"\nreadonly = false\n\n\
         [[vms.mounts]]\nhost = \"box\"\nguest = \"/data/eve/share/in\"\nreadonly = false\n",
    )]);
    lab.env
        .write(&[("p/src/.keep", ""), ("p/box/from-host.txt", "host\n")]);
    let first = lab.up(&[]);
    assert_eq!(first.statuses(), ["Success"], "{}", first.stderr);
    assert_eq!(
        lab.guest_sh("web", "cat /data/eve/share/in/from-host.txt"),
        "host\n"
    );

    // Item 10: the guest's root asks for a setuid-root file and a device node in the share.
    let said = lab.guest_sh(
        "web",
        "cd /src && echo x >suid && chmod 755 suid && echo plain-chmod-ok; \
         chmod 4755 suid 2>&1; chmod g+s suid 2>&1; mknod null c 1 3 2>&1; \
         mknod disk b 7 0 2>&1; mkfifo fifo && echo fifo-ok; true",
    );
    assert!(
        said.contains("plain-chmod-ok") && said.contains("fifo-ok"),
        "{said}"
    );
    let src = lab.project().join("src");
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let suid = std::fs::metadata(src.join("suid")).unwrap();
    assert_eq!(suid.mode() & 0o7777, 0o755, "{said}");
    for dev in ["null", "disk"] {
        let node = std::fs::symlink_metadata(src.join(dev));
        assert!(
            node.as_ref().map_or(true, |m| {
                !m.file_type().is_char_device() && !m.file_type().is_block_device()
            }),
            "{dev}: {node:?}; the guest said {said}"
        );
    }
    assert!(
        std::fs::symlink_metadata(src.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );

    // Item 11: another account of the guest (uid 4242) owns /data/eve and swaps the mount
    // point's parent for a symbolic link to a directory of its choosing.
    lab.guest_sh(
        "web",
        "umount /data/eve/share/in && mkdir -p /data/elsewhere && chown 4242 /data/eve && \
         mv /data/eve/share /data/eve/old && ln -s /data/elsewhere /data/eve/share",
    );
    lab.down(&[]);
    let second = lab.up(&[]);
    assert_eq!(second.statuses(), ["Failed"], "{}", second.stderr);
    let error = error_of(&second, "web");
    assert!(
        error.contains(
            "refusing to mount castra1 at /data/eve/share/in: /data/eve/share is a symbolic link"
        ),
        "{error}"
    );
    assert_eq!(
        lab.guest_sh(
            "web",
            "ls -A /data/elsewhere; grep -c castra1 /proc/mounts; cat /src/.keep && echo src-mounted"
        ),
        "0\nsrc-mounted\n",
        "nothing made or mounted through the link; the other share mounted"
    );

    // The link gone, the parent is still that account's: refused too.
    lab.guest_sh(
        "web",
        "rm /data/eve/share && mv /data/eve/old /data/eve/share",
    );
    lab.down(&[]);
    let third = lab.up(&[]);
    assert_eq!(third.statuses(), ["Failed"], "{}", third.stderr);
    let error = error_of(&third, "web");
    assert!(
        error.contains(
            "refusing to mount castra1 at /data/eve/share/in: /data/eve is owned by uid 4242, \
             mode 755"
        ),
        "{error}"
    );
    assert_eq!(
        lab.guest_sh("web", "grep -c castra1 /proc/mounts; true"),
        "0\n"
    );
}

use super::*;

/// Runs `program` on one system call, as the kernel would: what it returns.
fn run(program: &[Insn], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&(nr as u32).to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    let (mut acc, mut pc) = (0u32, 0usize);
    loop {
        let i = program[pc];
        let jump = |taken: bool| pc + 1 + usize::from(if taken { i.jt } else { i.jf });
        pc = match i.code {
            LD_W_ABS => {
                let k = i.k as usize;
                acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                pc + 1
            }
            JEQ_K => jump(acc == i.k),
            JGE_K => jump(acc >= i.k),
            JSET_K => jump(acc & i.k != 0),
            AND_K => {
                acc &= i.k;
                pc + 1
            }
            RET_K => return i.k,
            other => panic!("unexpected instruction {other:#x}"),
        };
        assert!(pc < program.len(), "a jump past the end");
    }
}

const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;
const ENOSYS: u32 = RET_ERRNO | libc::ENOSYS as u32;

#[test]
fn set_id_bits_and_device_nodes_are_refused_and_the_rest_allowed() {
    let p = program(false);
    let call = |nr: i64, args: [u64; 6]| run(&p, AUDIT_ARCH, nr, args);
    // fchmodat(dirfd, path, mode, flags)
    assert_eq!(call(libc::SYS_fchmodat, [3, 0, 0o4755, 0, 0, 0]), EPERM);
    assert_eq!(call(libc::SYS_fchmodat, [3, 0, 0o2775, 0, 0, 0]), EPERM);
    assert_eq!(call(libc::SYS_fchmodat, [3, 0, 0o755, 0, 0, 0]), RET_ALLOW);
    assert_eq!(call(SYS_FCHMODAT2, [3, 0, 0o4755, 0, 0, 0]), EPERM);
    assert_eq!(call(libc::SYS_fchmod, [3, 0o6755, 0, 0, 0, 0]), EPERM);
    assert_eq!(call(libc::SYS_fchmod, [3, 0o1777, 0, 0, 0, 0]), RET_ALLOW);
    // openat(dirfd, path, flags, mode): a new file born setuid.
    let creat = (libc::O_CREAT | libc::O_WRONLY) as u64;
    assert_eq!(call(libc::SYS_openat, [3, 0, creat, 0o4755, 0, 0]), EPERM);
    assert_eq!(
        call(libc::SYS_openat, [3, 0, creat, 0o644, 0, 0]),
        RET_ALLOW
    );
    // mknodat(dirfd, path, mode, dev): devices and set-id bits refused, FIFOs and sockets not.
    assert_eq!(
        call(libc::SYS_mknodat, [3, 0, 0o020644, 0x103, 0, 0]),
        EPERM
    );
    assert_eq!(
        call(libc::SYS_mknodat, [3, 0, 0o060644, 0x700, 0, 0]),
        EPERM
    );
    assert_eq!(call(libc::SYS_mknodat, [3, 0, 0o104755, 0, 0, 0]), EPERM);
    assert_eq!(
        call(libc::SYS_mknodat, [3, 0, 0o010644, 0, 0, 0]),
        RET_ALLOW
    );
    assert_eq!(
        call(libc::SYS_mknodat, [3, 0, 0o140755, 0, 0, 0]),
        RET_ALLOW
    );
    // The high half of a mode argument is not a mode.
    assert_eq!(
        call(libc::SYS_fchmod, [3, 0x4000_0000_0000, 0, 0, 0, 0]),
        RET_ALLOW
    );
    assert_eq!(call(libc::SYS_openat2, [3, 0, 0, 24, 0, 0]), ENOSYS);
    assert_eq!(
        call(libc::SYS_read, [3, 0, 0o4755, 0o4755, 0, 0]),
        RET_ALLOW
    );
    assert_eq!(call(libc::SYS_fsetxattr, [3, 0, 0, 0, 0, 0]), RET_ALLOW);
    assert_eq!(run(&p, 0x4000_0003, libc::SYS_read, [0; 6]), ENOSYS, "i386");
    #[cfg(target_arch = "x86_64")]
    {
        assert_eq!(call(libc::SYS_chmod, [0, 0o4755, 0, 0, 0, 0]), EPERM);
        assert_eq!(call(libc::SYS_creat, [0, 0o2755, 0, 0, 0, 0]), EPERM);
        assert_eq!(call(libc::SYS_open, [0, creat, 0o4700, 0, 0, 0]), EPERM);
        assert_eq!(call(libc::SYS_mknod, [0, 0o020600, 0x103, 0, 0, 0]), EPERM);
        assert_eq!(
            call(0x4000_0000 | 90, [0, 0o4755, 0, 0, 0, 0]),
            ENOSYS,
            "x32"
        );
    }

    let nine_p = program(true);
    for n in [libc::SYS_setxattr, libc::SYS_lsetxattr, libc::SYS_fsetxattr] {
        assert_eq!(run(&nine_p, AUDIT_ARCH, n, [0; 6]), EPERM);
    }
    assert_eq!(
        run(&nine_p, AUDIT_ARCH, libc::SYS_getxattr, [0; 6]),
        RET_ALLOW
    );
}

/// The filter loaded into a real child: chmod and mknod as the shell's tools make them.
#[tokio::test]
async fn a_child_under_the_filter_cannot_set_a_setuid_bit_or_make_a_device() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c")
        .arg(
            "cd \"$1\" && : >plain && : >suid && chmod 755 plain && echo chmod-ok; \
             chmod 4755 suid 2>/dev/null && echo suid-set; \
             chmod g+s plain 2>/dev/null && echo sgid-set; \
             mknod null c 1 3 2>/dev/null && echo device-made; \
             mkfifo fifo && echo fifo-ok",
        )
        .arg("sh")
        .arg(dir.path());
    apply(&mut c, std::sync::Arc::new(Filter::new(false)));
    let out = c.output().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "chmod-ok\nfifo-ok\n");
    use std::os::unix::fs::PermissionsExt;
    let mode = |name: &str| {
        std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_eq!(mode("plain") & 0o7777, 0o755);
    assert_eq!(mode("suid") & 0o6000, 0);
    assert!(!dir.path().join("null").exists());
}

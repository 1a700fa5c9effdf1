//! The seccomp filter a root castrad puts on whatever serves a share as root (each virtiofsd,
//! and QEMU when it serves 9p itself): the guest's root must not be able to leave on the host
//! a set-user-ID or set-group-ID file, or a device node, which any host account that reaches
//! the share could then use to become root or open a disk.
//!
//! Capabilities cannot do it: the server runs as uid 0, and the owner of a file may set its
//! setuid bit with no capability at all (CAP_FSETID only keeps a setgid bit across a chmod by
//! someone outside the group), so the bit is refused where it is asked for, by the system
//! call: `chmod`, `fchmod`, `fchmodat`, `fchmodat2`, `open`, `openat`, `creat` and `mknod(at)`
//! with S_ISUID or S_ISGID in their mode fail with EPERM, and so does `mknod(at)` of a
//! character or block device; `openat2` (whose mode sits in a struct a filter cannot read)
//! fails with ENOSYS, which its callers take for an older kernel. Everything else is allowed.
//! File capabilities (`security.capability`) need xattrs, which virtiofsd serves only when
//! asked (`-o xattr`, never passed); for 9p, the `*setxattr` calls fail with EPERM too.
//!
//! Built here as plain data ([`program`]); [`install`] loads it in the child between fork and
//! exec (with no_new_privs, which a root server does not need: it runs no setuid program). The
//! filter is inherited by everything the child execs (the `unshare`/`sh` wrappers, then the
//! server) and stacks under the server's own filter.

use std::io;

/// What a guest may not set in a mode: S_ISUID | S_ISGID.
const SET_ID_BITS: u32 = 0o6000;
const S_IFMT: u32 = 0o170000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

// Classic BPF, as seccomp reads it.
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
/// `struct seccomp_data`: the system call's number, its architecture, then its arguments
/// (64 bits each; the low half first on these little-endian machines).
const NR: u32 = 0;
const ARCH: u32 = 4;
const fn arg(i: u32) -> u32 {
    16 + 8 * i
}

/// `fchmodat2` (Linux 6.6; the same number everywhere): the libc crate may not name it yet.
const SYS_FCHMODAT2: i64 = 452;

/// One instruction of the filter (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

/// What is checked of a system call: the argument holding its mode, and whether it can make a
/// device node.
#[derive(Clone, Copy)]
enum Mode {
    Chmod(u32),
    Mknod(u32),
}

/// The system calls checked: (number, what).
fn checked() -> Vec<(i64, Mode)> {
    let mut c = vec![
        (libc::SYS_fchmod, Mode::Chmod(1)),
        (libc::SYS_fchmodat, Mode::Chmod(2)),
        (SYS_FCHMODAT2, Mode::Chmod(2)),
        (libc::SYS_openat, Mode::Chmod(3)),
        (libc::SYS_mknodat, Mode::Mknod(2)),
    ];
    #[cfg(target_arch = "x86_64")]
    c.extend([
        (libc::SYS_chmod, Mode::Chmod(1)),
        (libc::SYS_open, Mode::Chmod(2)),
        (libc::SYS_creat, Mode::Chmod(1)),
        (libc::SYS_mknod, Mode::Mknod(1)),
    ]);
    c
}

fn nr(n: i64) -> u32 {
    u32::try_from(n).expect("system call numbers are small")
}

/// Pure: the filter, instruction by instruction. `deny_setxattr`: the `*setxattr` calls fail
/// too (for QEMU's 9p, which would pass `security.capability` through).
pub fn program(deny_setxattr: bool) -> Vec<Insn> {
    let eperm = RET_ERRNO | libc::EPERM as u32;
    let enosys = RET_ERRNO | libc::ENOSYS as u32;
    let mut p = vec![
        insn(LD_W_ABS, 0, 0, ARCH),
        // Another architecture's calls (a 32-bit one) are not what this filter reads.
        insn(JEQ_K, 1, 0, AUDIT_ARCH),
        insn(RET_K, 0, 0, enosys),
        insn(LD_W_ABS, 0, 0, NR),
    ];
    #[cfg(target_arch = "x86_64")]
    p.extend([
        // x32 calls (numbers with bit 30 set) bypass the numbers below.
        insn(JGE_K, 0, 1, 0x4000_0000),
        insn(RET_K, 0, 0, enosys),
    ]);
    for (n, mode) in checked() {
        match mode {
            Mode::Chmod(i) => p.extend([
                insn(JEQ_K, 0, 4, nr(n)),
                insn(LD_W_ABS, 0, 0, arg(i)),
                insn(JSET_K, 0, 1, SET_ID_BITS),
                insn(RET_K, 0, 0, eperm),
                insn(RET_K, 0, 0, RET_ALLOW),
            ]),
            Mode::Mknod(i) => p.extend([
                insn(JEQ_K, 0, 7, nr(n)),
                insn(LD_W_ABS, 0, 0, arg(i)),
                insn(JSET_K, 3, 0, SET_ID_BITS),
                insn(AND_K, 0, 0, S_IFMT),
                insn(JEQ_K, 1, 0, S_IFCHR),
                insn(JEQ_K, 0, 1, S_IFBLK),
                insn(RET_K, 0, 0, eperm),
                insn(RET_K, 0, 0, RET_ALLOW),
            ]),
        }
    }
    p.extend([
        insn(JEQ_K, 0, 1, nr(libc::SYS_openat2)),
        insn(RET_K, 0, 0, enosys),
    ]);
    if deny_setxattr {
        for n in [libc::SYS_setxattr, libc::SYS_lsetxattr, libc::SYS_fsetxattr] {
            p.extend([insn(JEQ_K, 0, 1, nr(n)), insn(RET_K, 0, 0, eperm)]);
        }
    }
    p.push(insn(RET_K, 0, 0, RET_ALLOW));
    p
}

/// The filter in the kernel's own layout, ready for [`install`] (built before the fork: the
/// child may only make system calls).
pub struct Filter(Vec<libc::sock_filter>);

impl Filter {
    pub fn new(deny_setxattr: bool) -> Filter {
        Filter(
            program(deny_setxattr)
                .into_iter()
                .map(|i| libc::sock_filter {
                    code: i.code,
                    jt: i.jt,
                    jf: i.jf,
                    k: i.k,
                })
                .collect(),
        )
    }

    /// Loads the filter into the calling process (and so into all it execs): no_new_privs,
    /// then `PR_SET_SECCOMP`. Only system calls: safe between fork and exec.
    #[allow(unsafe_code)]
    pub fn install(&self) -> io::Result<()> {
        let prog = libc::sock_fprog {
            len: u16::try_from(self.0.len()).map_err(|_| io::Error::other("filter too long"))?,
            filter: self.0.as_ptr().cast_mut(),
        };
        // SAFETY: prctl with plain integers, then with a pointer to `prog`, which points into
        // `self.0`: both live across the call, and the kernel copies the program.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &raw const prog,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Has `command` load `filter` before it execs.
#[allow(unsafe_code)]
pub fn apply(command: &mut tokio::process::Command, filter: std::sync::Arc<Filter>) {
    // SAFETY: the closure only makes two prctl calls (async-signal-safe) on memory built
    // before the fork; it allocates nothing.
    unsafe {
        command.pre_exec(move || filter.install());
    }
}

#[cfg(test)]
mod tests;

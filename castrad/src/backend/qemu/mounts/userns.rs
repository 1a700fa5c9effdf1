//! The user namespace a castrad that is not root runs each virtiofsd in, and whether it can.
//!
//! virtiofsd sandboxes itself in namespaces, which takes capabilities: an unprivileged user
//! namespace grants them, mapping castrad's uid and gid to themselves (so what the guest's user
//! of that uid creates is the host user's). QEMU 7.2's virtiofsd also drops its supplementary
//! groups when it starts (`setgroups(0, NULL)`), and the kernel allows that in a user namespace
//! only when its group map was written with privilege: unshare writing it itself must deny
//! setgroups first. So, in order ([`probe`]):
//! 1. [`UserNs::Newgidmap`]: the group map written by the setuid `newgidmap` (Debian: uidmap),
//!    castrad's gid to itself plus one of the user's subordinate gids (`/etc/subgid`), which
//!    leaves setgroups allowed: virtiofsd starts whatever castrad's groups. newgidmap wants a
//!    user database entry for castrad's uid whose primary group is castrad's gid.
//! 2. [`UserNs::Plain`]: unshare maps the gid itself; enough for a castrad without
//!    supplementary groups (or a virtiofsd that keeps them).
//!
//! The uid map is castrad's uid alone either way: any other guest uid, root included, is not
//! mapped, and virtiofsd refuses to create files as it.

use std::fmt;
use std::path::Path;
use std::process::Stdio;

/// Where newgidmap reads the subordinate gids.
const SUBGID: &str = "/etc/subgid";

/// Where Debian's adduser starts handing out subordinate ids, and how many each user gets.
const SUB_ID_MIN: u64 = 100_000;
const SUB_ID_COUNT: u64 = 65_536;

/// The user namespace a non-root virtiofsd runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserNs {
    /// The group map written by newgidmap: castrad's gid to itself and the subordinate gid
    /// `subgid` to the namespace's gid `inner`; setgroups stays allowed.
    Newgidmap { subgid: u32, inner: u32 },
    /// castrad's uid and gid mapped by unshare itself; setgroups denied.
    Plain,
}

impl UserNs {
    /// Pure: the `unshare` command (program first) that makes the namespace, keeps the
    /// capabilities it grants across `exec`, and gives it a private mount namespace.
    pub fn prelude(self) -> Vec<String> {
        let mut c: Vec<String> = ["unshare", "--user", "--map-current-user"]
            .map(str::to_owned)
            .to_vec();
        if let UserNs::Newgidmap { subgid, inner } = self {
            // With --map-current-user, util-linux (2.38 on; older ones fail the probe) runs
            // newgidmap with castrad's own gid and this range together. outer,inner,count:
            // 2.38's only form, still read by later ones (which also take inner:outer:count).
            c.push(format!("--map-groups={subgid},{inner},1"));
        }
        c.extend(["--keep-caps", "--mount", "--propagation", "private"].map(str::to_owned));
        c
    }
}

/// Inside the namespace, before virtiofsd: a private tmpfs on /run (QEMU 7.2's virtiofsd
/// writes its pid file to /run/virtiofsd, which only root may create), and for a read-only
/// share (`$1` = `ro`) the directory `$2` bind-mounted read-only onto itself.
pub const USERNS_SCRIPT: &str = "mount -t tmpfs -o mode=0700 castra-virtiofsd /run && \
{ [ \"$1\" = rw ] || mount --bind -o ro -- \"$2\" \"$2\"; } && shift 2 && exec \"$@\"";

/// What a namespace with newgidmap's group map lacks here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    Newgidmap,
    User {
        uid: u32,
    },
    PrimaryGroup {
        user: String,
        gid: u32,
        primary: u32,
    },
    /// No range for the user in /etc/subgid; `free` is one no other entry there overlaps.
    Subgid {
        user: String,
        uid: u32,
        free: (u64, u64),
    },
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::Newgidmap => write!(f, "newgidmap is not installed"),
            Missing::User { uid } => write!(
                f,
                "castrad's uid {uid} has no entry in the user database, which newgidmap needs"
            ),
            Missing::PrimaryGroup { user, gid, primary } => write!(
                f,
                "castrad's gid {gid} is not {user}'s primary group {primary}, which newgidmap \
                 requires"
            ),
            Missing::Subgid { user, uid, .. } => {
                write!(f, "{SUBGID} has no range for {user} (uid {uid})")
            }
        }
    }
}

impl Missing {
    /// What to do about it, as a command where there is one.
    pub fn fix(&self) -> String {
        match self {
            Missing::Newgidmap => format!(
                "install it: {}",
                crate::distro::install(&[crate::distro::Package::Uidmap])
            ),
            Missing::User { uid } => format!(
                "run castrad as a user that `getent passwd {uid}` finds (a login user does)"
            ),
            Missing::PrimaryGroup { user, primary, .. } => format!(
                "run castrad with {user}'s primary group {primary} as its group (a systemd user \
                 service does)"
            ),
            Missing::Subgid {
                user,
                free: (first, last),
                ..
            } => format!(
                "give {user} subordinate group ids: sudo usermod --add-subgids {first}-{last} \
                 {user} (a range no other user has), then restart castrad"
            ),
        }
    }
}

/// Why there is no namespace with newgidmap's group map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoNewgidmap {
    /// At least one thing newgidmap needs.
    Missing(Vec<Missing>),
    /// All there, but unshare, newgidmap or virtiofsd failed anyway (the last line it wrote).
    Failed {
        subgid: u32,
        inner: u32,
        why: String,
    },
}

impl fmt::Display for NoNewgidmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoNewgidmap::Missing(missing) => {
                let all: Vec<String> = missing.iter().map(ToString::to_string).collect();
                write!(f, "{}", all.join(", and "))
            }
            NoNewgidmap::Failed { why, .. } => write!(f, "with newgidmap it failed too: {why}"),
        }
    }
}

impl NoNewgidmap {
    pub fn fix(&self) -> String {
        match self {
            NoNewgidmap::Missing(missing) => {
                let all: Vec<String> = missing.iter().map(Missing::fix).collect();
                all.join("; ")
            }
            NoNewgidmap::Failed { subgid, inner, .. } => format!(
                "see why `unshare --user --map-current-user --map-groups={subgid},{inner},1 id` \
                 fails as castrad's user"
            ),
        }
    }
}

/// Why virtiofsd cannot run in either user namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoUserNs {
    /// The plain namespace's failure (the last line unshare or virtiofsd wrote).
    pub plain: String,
    pub newgidmap: NoNewgidmap,
}

impl NoUserNs {
    /// True when the plain namespace failed only because virtiofsd could not drop castrad's
    /// supplementary groups: what newgidmap's group map is for.
    pub fn groups(&self) -> bool {
        self.plain.contains("setgroups")
    }

    /// What to do about it.
    pub fn fix(&self) -> String {
        if self.groups() {
            self.newgidmap.fix()
        } else {
            "allow unprivileged user namespaces (sysctl user.max_user_namespaces above 0; \
             kernel.unprivileged_userns_clone=1 where it exists), or run castrad as root"
                .to_owned()
        }
    }
}

impl fmt::Display for NoUserNs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.groups() {
            write!(
                f,
                "{}: castrad has supplementary groups, which virtiofsd drops when it starts, and \
                 a user namespace allows that only when newgidmap writes its group map, but {}",
                self.plain, self.newgidmap
            )
        } else {
            write!(f, "{}; {}", self.plain, self.newgidmap)
        }
    }
}

/// Pure: the start of `user`'s (or `uid`'s: newgidmap takes either) first range in the text
/// of /etc/subgid.
pub fn subgid_of(text: &str, user: &str, uid: u32) -> Option<u32> {
    ranges(text).find_map(|(owner, start, count)| {
        (count > 0 && (owner == user || owner == uid.to_string()))
            .then(|| u32::try_from(start).ok())
            .flatten()
    })
}

/// Pure: a range of [`SUB_ID_COUNT`] ids (first, last) above every range in `text`.
pub fn free_range(text: &str) -> (u64, u64) {
    let first = ranges(text)
        .map(|(_, start, count)| start + count)
        .fold(SUB_ID_MIN, u64::max);
    (first, first + SUB_ID_COUNT - 1)
}

/// `owner:start:count` lines; others are skipped.
fn ranges(text: &str) -> impl Iterator<Item = (&str, u64, u64)> {
    text.lines().filter_map(|line| {
        let mut f = line.trim().split(':');
        let (owner, start, count) = (f.next()?, f.next()?, f.next()?);
        Some((owner, start.parse().ok()?, count.parse().ok()?))
    })
}

/// Whether `program` is in $PATH (unshare runs newgidmap from there).
fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}

/// The group map newgidmap would write, if all it needs is here: (the subordinate gid, the
/// namespace gid it becomes).
fn newgidmap() -> Result<(u32, u32), Vec<Missing>> {
    let mut missing = Vec::new();
    if !in_path("newgidmap") {
        missing.push(Missing::Newgidmap);
    }
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid().as_raw();
    let user = match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user,
        _ => {
            missing.push(Missing::User { uid: uid.as_raw() });
            return Err(missing);
        }
    };
    if user.gid.as_raw() != gid {
        missing.push(Missing::PrimaryGroup {
            user: user.name.clone(),
            gid,
            primary: user.gid.as_raw(),
        });
    }
    let text = std::fs::read_to_string(SUBGID).unwrap_or_default();
    let subgid = subgid_of(&text, &user.name, uid.as_raw());
    if subgid.is_none() {
        missing.push(Missing::Subgid {
            user: user.name,
            uid: uid.as_raw(),
            free: free_range(&text),
        });
    }
    match subgid {
        // The namespace's gid 0 unless that is castrad's own.
        Some(subgid) if missing.is_empty() => Ok((subgid, u32::from(gid == 0))),
        _ => Err(missing),
    }
}

/// How `virtiofsd` can start in a user namespace here ([`UserNs`], tried in order), or why it
/// cannot: each try is the namespace, its tmpfs and virtiofsd itself (`--print-capabilities`,
/// which QEMU 7.2's starts by dropping supplementary groups). Once per castrad: the answer does
/// not change while it runs.
pub fn probe(virtiofsd: &Path) -> Result<UserNs, NoUserNs> {
    static ANSWER: std::sync::OnceLock<Result<UserNs, NoUserNs>> = std::sync::OnceLock::new();
    ANSWER
        .get_or_init(|| {
            let with_map = match newgidmap() {
                Ok((subgid, inner)) => {
                    let ns = UserNs::Newgidmap { subgid, inner };
                    match try_in(ns, virtiofsd) {
                        Ok(()) => return Ok(ns),
                        Err(why) => NoNewgidmap::Failed { subgid, inner, why },
                    }
                }
                Err(missing) => NoNewgidmap::Missing(missing),
            };
            match try_in(UserNs::Plain, virtiofsd) {
                Ok(()) => Ok(UserNs::Plain),
                Err(plain) => Err(NoUserNs {
                    plain,
                    newgidmap: with_map,
                }),
            }
        })
        .clone()
}

/// Starts virtiofsd `--print-capabilities` in `ns`; the last line written on failure.
fn try_in(ns: UserNs, virtiofsd: &Path) -> Result<(), String> {
    let prelude = ns.prelude();
    let out = std::process::Command::new(&prelude[0])
        .args(&prelude[1..])
        .args(["--", "sh", "-c", USERNS_SCRIPT, "castra-probe", "rw", "/"])
        .arg(virtiofsd)
        .arg("--print-capabilities")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("unshare (util-linux): {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let last = text.lines().rev().find(|l| !l.trim().is_empty());
    Err(last.unwrap_or("unshare failed").trim().to_owned())
}

#[cfg(test)]
mod tests;

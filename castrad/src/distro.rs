//! The distribution this machine runs (os-release(5)) and the package that brings each program
//! Castra needs there, so a fix reads `sudo dnf install qemu-img` on Fedora where it reads
//! `sudo apt-get install qemu-utils` on Debian. The table and the parsing are pure; only
//! [`this_machine`] reads a file: `$CASTRA_OS_RELEASE` when set (for tests), else
//! `/etc/os-release`, else `/usr/lib/os-release`, once per process.

use std::sync::OnceLock;

/// Names the os-release file to read instead of `/etc/os-release` (for tests).
pub const OS_RELEASE_ENV: &str = "CASTRA_OS_RELEASE";

/// What Castra runs, by what it is rather than by any one distribution's package name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Package {
    /// `qemu-system-x86_64`.
    Qemu,
    /// `qemu-img`.
    QemuImg,
    /// OpenSSH's client: `ssh`, `ssh-keygen`, `sftp`.
    OpenSsh,
    /// `virtiofsd`, for shared folders.
    Virtiofsd,
    /// `newuidmap` and `newgidmap` (setuid), for virtiofsd's user namespace.
    Uidmap,
    /// UEFI firmware for QEMU (`firmware = "uefi"`).
    Ovmf,
}

impl Package {
    /// The program (or file) a person knows it by.
    fn what(self) -> &'static str {
        match self {
            Package::Qemu => "qemu-system-x86_64",
            Package::QemuImg => "qemu-img",
            Package::OpenSsh => "OpenSSH's client",
            Package::Virtiofsd => "virtiofsd",
            Package::Uidmap => "newgidmap",
            Package::Ovmf => "OVMF (UEFI firmware)",
        }
    }
}

/// The package managers Castra names packages for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Debian, Ubuntu and their derivatives: apt.
    Debian,
    /// Fedora, RHEL and their rebuilds: dnf.
    Fedora,
    /// Arch and its derivatives: pacman.
    Arch,
}

impl Family {
    const ALL: [Family; 3] = [Family::Debian, Family::Fedora, Family::Arch];

    fn label(self) -> &'static str {
        match self {
            Family::Debian => "Debian, Ubuntu",
            Family::Fedora => "Fedora",
            Family::Arch => "Arch",
        }
    }

    fn installer(self) -> &'static str {
        match self {
            Family::Debian => "apt-get install",
            Family::Fedora => "dnf install",
            Family::Arch => "pacman -S",
        }
    }

    /// The family's package for `p` (its current releases').
    pub fn package(self, p: Package) -> &'static str {
        use Package::*;
        match (self, p) {
            (_, Qemu) => "qemu-system-x86",
            (Family::Debian, QemuImg) => "qemu-utils",
            (_, QemuImg) => "qemu-img",
            (Family::Debian, OpenSsh) => "openssh-client",
            (Family::Fedora, OpenSsh) => "openssh-clients",
            (Family::Arch, OpenSsh) => "openssh",
            (_, Virtiofsd) => "virtiofsd",
            (Family::Debian, Uidmap) => "uidmap",
            (Family::Fedora, Uidmap) => "shadow-utils",
            (Family::Arch, Uidmap) => "shadow",
            (Family::Debian, Ovmf) => "ovmf",
            (_, Ovmf) => "edk2-ovmf",
        }
    }
}

/// What os-release says, as far as Castra cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsRelease {
    /// `ID`, lowercase (`debian`, `ubuntu`, `fedora`, `arch`); empty when unknown.
    pub id: String,
    /// `ID_LIKE`, its words in order.
    pub id_like: Vec<String>,
    /// `VERSION_ID` (`12`, `24.04`); empty when absent (Arch has none).
    pub version_id: String,
    /// `PRETTY_NAME`, else `NAME`, else `ID`.
    pub pretty_name: String,
}

impl OsRelease {
    /// Parses os-release(5): `KEY=VALUE` lines, the value possibly in double or single quotes
    /// (with `\` escapes inside double quotes); comments, blank and malformed lines are skipped.
    pub fn parse(text: &str) -> OsRelease {
        let mut os = OsRelease::default();
        let mut name = String::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let Some((key, raw)) = line.split_once('=') else {
                continue;
            };
            let value = unquote(raw.trim());
            match key.trim() {
                "ID" => os.id = value.to_ascii_lowercase(),
                "ID_LIKE" => {
                    os.id_like = value
                        .split_whitespace()
                        .map(str::to_ascii_lowercase)
                        .collect();
                }
                "VERSION_ID" => os.version_id = value,
                "PRETTY_NAME" => os.pretty_name = value,
                "NAME" => name = value,
                _ => {}
            }
        }
        if os.pretty_name.is_empty() {
            os.pretty_name = if name.is_empty() { os.id.clone() } else { name };
        }
        os
    }

    /// The package family: `ID` first, then each `ID_LIKE` word in order.
    pub fn family(&self) -> Option<Family> {
        std::iter::once(&self.id)
            .chain(&self.id_like)
            .find_map(|id| match id.as_str() {
                "debian" | "ubuntu" => Some(Family::Debian),
                "fedora" | "rhel" | "centos" => Some(Family::Fedora),
                "arch" => Some(Family::Arch),
                _ => None,
            })
    }

    /// This release's package for `p`, when its family is known. Releases from before
    /// virtiofsd had a package of its own (Debian 12 and older, Ubuntu before 24.04) have QEMU's
    /// `/usr/lib/qemu/virtiofsd` in qemu-system-common.
    pub fn package(&self, p: Package) -> Option<&'static str> {
        let family = self.family()?;
        let major = |v: &str| v.split('.').next()?.parse::<u32>().ok();
        let old = match self.id.as_str() {
            "debian" => major(&self.version_id).is_some_and(|m| m <= 12),
            "ubuntu" => major(&self.version_id).is_some_and(|m| m < 24),
            _ => false,
        };
        Some(if p == Package::Virtiofsd && old {
            "qemu-system-common"
        } else {
            family.package(p)
        })
    }

    /// The command that installs `packages` here (`sudo` unless `root`), naming the
    /// distribution; for a distribution Castra does not know, what to install and its name in
    /// each family it does.
    pub fn install(&self, packages: &[Package], root: bool) -> String {
        let sudo = if root { "" } else { "sudo " };
        match self.family() {
            Some(family) => {
                let names: Vec<&str> = packages.iter().filter_map(|p| self.package(*p)).collect();
                // The command last, whole: a user copies it from the colon on.
                format!(
                    "on {}: {sudo}{} {}",
                    self.pretty_name,
                    family.installer(),
                    names.join(" ")
                )
            }
            None => {
                let what: Vec<&str> = packages.iter().map(|p| p.what()).collect();
                let per_family: Vec<String> = Family::ALL
                    .iter()
                    .map(|f| {
                        let names: Vec<&str> = packages.iter().map(|p| f.package(*p)).collect();
                        format!("{}: {}", f.label(), names.join(" "))
                    })
                    .collect();
                let this = if self.pretty_name.is_empty() {
                    "this distribution".to_owned()
                } else {
                    self.pretty_name.clone()
                };
                format!(
                    "install {} with {this}'s package manager (the packages are named {})",
                    what.join(", "),
                    per_family.join("; ")
                )
            }
        }
    }
}

/// A value as os-release writes it: quotes removed, `\` escapes inside double quotes resolved.
fn unquote(raw: &str) -> String {
    let quoted = |q: char| raw.len() >= 2 && raw.starts_with(q) && raw.ends_with(q);
    if quoted('\'') {
        return raw[1..raw.len() - 1].to_owned();
    }
    if !quoted('"') {
        return raw.to_owned();
    }
    let mut out = String::new();
    let mut chars = raw[1..raw.len() - 1].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// This machine's os-release (read once; an unreadable one is an unknown distribution).
pub fn this_machine() -> &'static OsRelease {
    static OS: OnceLock<OsRelease> = OnceLock::new();
    OS.get_or_init(|| {
        let paths: Vec<std::path::PathBuf> = match std::env::var_os(OS_RELEASE_ENV) {
            Some(path) if !path.is_empty() => vec![path.into()],
            _ => vec!["/etc/os-release".into(), "/usr/lib/os-release".into()],
        };
        paths
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .map(|text| OsRelease::parse(&text))
            .unwrap_or_default()
    })
}

/// The command that installs `packages` on this machine, for castrad's user.
pub fn install(packages: &[Package]) -> String {
    this_machine().install(packages, nix::unistd::geteuid().is_root())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_12: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian \
        GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nID=debian\n";
    const UBUNTU_24: &str = "PRETTY_NAME=\"Ubuntu 24.04.1 LTS\"\nNAME=\"Ubuntu\"\n\
        VERSION_ID=\"24.04\"\nID=ubuntu\nID_LIKE=debian\n";
    const FEDORA: &str = "NAME=\"Fedora Linux\"\nVERSION_ID=44\nID=fedora\n\
        PRETTY_NAME=\"Fedora Linux 44 (Workstation Edition)\"\n";
    const ROCKY: &str = "NAME=\"Rocky Linux\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n\
        VERSION_ID=\"9.4\"\nPRETTY_NAME=\"Rocky Linux 9.4 (Blue Onyx)\"\n";
    const ARCH: &str = "NAME=\"Arch Linux\"\nPRETTY_NAME=\"Arch Linux\"\nID=arch\n\
        BUILD_ID=rolling\n";
    const MINT: &str = "NAME=\"Linux Mint\"\nID=linuxmint\nID_LIKE=\"ubuntu debian\"\n\
        PRETTY_NAME=\"Linux Mint 22\"\nVERSION_ID=\"22\"\n";

    #[test]
    fn os_release_is_parsed_with_its_quoting() {
        let os = OsRelease::parse(
            "# comment\n\nID=\"neon\"\nID_LIKE='ubuntu  debian'\nNAME=\"KDE \\\"neon\\\"\"\n\
             VERSION_ID=\"22.04\"\nnot a line\n",
        );
        assert_eq!(os.id, "neon");
        assert_eq!(os.id_like, ["ubuntu", "debian"]);
        assert_eq!(os.version_id, "22.04");
        assert_eq!(
            os.pretty_name, "KDE \"neon\"",
            "NAME stands in for PRETTY_NAME"
        );
        assert_eq!(OsRelease::parse(""), OsRelease::default());
    }

    #[test]
    fn each_family_gets_its_own_package_names_and_installer() {
        use Package::*;
        let all = [Qemu, QemuImg, OpenSsh, Virtiofsd, Uidmap, Ovmf];
        let cases = [
            (
                UBUNTU_24,
                "on Ubuntu 24.04.1 LTS: sudo apt-get install qemu-system-x86 qemu-utils \
                 openssh-client virtiofsd uidmap ovmf",
            ),
            (
                FEDORA,
                "on Fedora Linux 44 (Workstation Edition): sudo dnf install qemu-system-x86 \
                 qemu-img openssh-clients virtiofsd shadow-utils edk2-ovmf",
            ),
            (
                ARCH,
                "on Arch Linux: sudo pacman -S qemu-system-x86 qemu-img openssh virtiofsd shadow \
                 edk2-ovmf",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(OsRelease::parse(text).install(&all, false), expected);
        }
        // ID_LIKE decides for derivatives; root needs no sudo.
        assert_eq!(
            OsRelease::parse(ROCKY).install(&[QemuImg], true),
            "on Rocky Linux 9.4 (Blue Onyx): dnf install qemu-img"
        );
        assert_eq!(
            OsRelease::parse(MINT).family(),
            Some(Family::Debian),
            "linuxmint is like ubuntu"
        );
    }

    #[test]
    fn virtiofsd_comes_with_qemu_on_releases_before_its_own_package() {
        let debian = OsRelease::parse(DEBIAN_12);
        assert_eq!(
            debian.package(Package::Virtiofsd),
            Some("qemu-system-common")
        );
        assert_eq!(debian.package(Package::QemuImg), Some("qemu-utils"));
        let trixie = OsRelease::parse(&DEBIAN_12.replace("\"12\"", "\"13\""));
        assert_eq!(trixie.package(Package::Virtiofsd), Some("virtiofsd"));
        let jammy = OsRelease::parse(&UBUNTU_24.replace("24.04", "22.04"));
        assert_eq!(
            jammy.package(Package::Virtiofsd),
            Some("qemu-system-common")
        );
        let noble = OsRelease::parse(UBUNTU_24);
        assert_eq!(noble.package(Package::Virtiofsd), Some("virtiofsd"));
    }

    #[test]
    fn an_unknown_distribution_gets_every_familys_name() {
        let os = OsRelease::parse("ID=gentoo\nPRETTY_NAME=\"Gentoo Linux\"\n");
        assert_eq!(os.family(), None);
        assert_eq!(
            os.install(&[Package::QemuImg], false),
            "install qemu-img with Gentoo Linux's package manager (the packages are named \
             Debian, Ubuntu: qemu-utils; Fedora: qemu-img; Arch: qemu-img)"
        );
        let nothing = OsRelease::default().install(&[Package::OpenSsh], false);
        assert!(
            nothing.starts_with("install OpenSSH's client with this distribution's"),
            "{nothing}"
        );
    }
}

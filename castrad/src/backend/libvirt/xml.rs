//! The XML castrad gives libvirt (a domain, a volume) and castrad's facts in a domain's
//! `<metadata>`, read back when a restarted castrad adopts the domain. Pure: data in, text
//! out (and back), unit-tested.
//!
//! The domain: `type='qemu'` (TCG) or `'kvm'` as the accelerator choice says (libvirt would
//! pick kvm wherever /dev/kvm exists, also on kvm_pvm hosts where guests hang), q35, ACPI
//! (so `virsh shutdown` is the power button), the overlay and the seed as volumes of the
//! pool, and user networking through `<qemu:commandline>`: `-netdev user` with a hostfwd on
//! the hypervisor's 127.0.0.1 and the NIC as a JSON `-device` (the plain form collides with
//! the PCI slot libvirt gives its own devices). Debian's libvirt has passt disabled and
//! ignores `<portForward>`, so libvirt itself cannot forward the port.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::backend::qemu::argv::Accel;
use crate::drift::LaunchSettings;

/// castrad's XML namespace in a domain's `<metadata>`.
pub const NAMESPACE: &str = "https://castra.dev/xmlns/libvirt/1";

/// The netdev id castrad's passthrough arguments use.
const NETDEV: &str = "castranet";

/// What castrad remembers about a domain, in the domain itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub vm: String,
    pub ssh_port: u16,
    pub disk_id: String,
    pub accel: String,
    pub accel_reason: String,
    pub launched_unix_ms: u64,
    /// The castra.toml the VM belongs to (on the workstation).
    pub config: PathBuf,
    pub pool: String,
    /// The volumes castrad created for this VM: exactly what `discard` deletes.
    pub overlay: String,
    pub seed: Option<String>,
    /// What the domain was defined with (cpus, memory, disk, ...), for drift; None for a
    /// domain defined before castrad recorded it (no drift is reported for it).
    pub settings: Option<LaunchSettings>,
    /// Whose domain it is; None for one defined before castrad recorded it (never ours).
    pub owner: Option<Owner>,
}

/// The castrad (its state root for the project) a domain and its volumes belong to. `id` is
/// in their names; `state_root` decides; `user` and `host` only name the owner in messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// 8 hex digits of the sha256 of `state_root` (which itself names castrad's state
    /// directory and the castra.toml's path).
    pub id: String,
    pub state_root: PathBuf,
    pub user: String,
    pub host: String,
}

impl Owner {
    /// Whether a domain tagged `self` is `ours`: the same id and state root (the user and
    /// host are what castrad knew of itself then, not part of the identity).
    pub fn same(&self, ours: &Owner) -> bool {
        self.id == ours.id && self.state_root == ours.state_root
    }
}

/// The id of the castrad state root `state_root`: what names its domains and volumes.
pub fn owner_id(state_root: &Path) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(state_root.as_os_str().as_encoded_bytes());
    crate::ids::hex(&digest[..4])
}

/// Everything a domain's definition depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    pub name: String,
    /// The uuid of the domain this definition replaces (libvirt keeps a name's uuid).
    pub uuid: Option<String>,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u64,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub facts: Facts,
}

/// Escapes text for an XML element or a single-quoted attribute.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&apos;", "'")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

fn path(p: &Path) -> String {
    escape(&p.to_string_lossy())
}

/// The `<castra:vm>` element of the domain's metadata.
pub fn metadata(f: &Facts) -> String {
    let mut fields = vec![
        ("vm", f.vm.clone()),
        ("ssh_port", f.ssh_port.to_string()),
        ("disk_id", f.disk_id.clone()),
        ("accel", f.accel.clone()),
        ("accel_reason", f.accel_reason.clone()),
        ("launched_unix_ms", f.launched_unix_ms.to_string()),
        ("config", f.config.to_string_lossy().into_owned()),
        ("pool", f.pool.clone()),
        ("overlay", f.overlay.clone()),
    ];
    if let Some(seed) = &f.seed {
        fields.push(("seed", seed.clone()));
    }
    if let Some(settings) = &f.settings {
        // As JSON, escaped like every value: a new setting needs no new element.
        let json = serde_json::to_string(settings).unwrap_or_default();
        fields.push(("launch_settings", json));
    }
    if let Some(o) = &f.owner {
        fields.push(("owner", o.id.clone()));
        fields.push(("state_root", o.state_root.to_string_lossy().into_owned()));
        fields.push(("user", o.user.clone()));
        fields.push(("host", o.host.clone()));
    }
    let mut out = format!("<castra:vm xmlns:castra='{NAMESPACE}'>");
    for (k, v) in fields {
        out.push_str(&format!("<castra:{k}>{}</castra:{k}>", escape(&v)));
    }
    out.push_str("</castra:vm>");
    out
}

/// The most castrad reads of a domain's metadata.
pub const METADATA_MAX: usize = 64 * 1024;

/// Reads [`Facts`] back from `virsh metadata NAME NAMESPACE` (which prints the element
/// without its prefix). None when a field is missing or malformed: not castrad's domain.
pub fn parse_metadata(text: &str) -> Option<Facts> {
    if text.len() > METADATA_MAX {
        return None;
    }
    let mut fields = BTreeMap::new();
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        let end = rest.find('>')?;
        let tag = &rest[..end];
        rest = &rest[end + 1..];
        if tag.starts_with('/') || tag.ends_with('/') || tag.contains(' ') {
            continue;
        }
        let name = tag.rsplit(':').next().unwrap_or(tag);
        let close = format!("</{tag}>");
        let Some(stop) = rest.find(&close) else {
            continue;
        };
        let value = &rest[..stop];
        if value.contains('<') {
            continue; // the enclosing element
        }
        fields.insert(name.to_owned(), unescape(value));
        rest = &rest[stop + close.len()..];
    }
    let get = |k: &str| fields.get(k).cloned();
    Some(Facts {
        vm: get("vm")?,
        ssh_port: get("ssh_port")?.parse().ok()?,
        disk_id: get("disk_id")?,
        accel: get("accel")?,
        accel_reason: get("accel_reason")?,
        launched_unix_ms: get("launched_unix_ms")?.parse().ok()?,
        config: PathBuf::from(get("config")?),
        pool: get("pool")?,
        overlay: get("overlay")?,
        seed: get("seed"),
        // One that does not read is dropped, not the domain: it only costs the drift report.
        settings: get("launch_settings").and_then(|j| serde_json::from_str(&j).ok()),
        owner: match (get("owner"), get("state_root")) {
            (Some(id), Some(root)) => Some(Owner {
                id,
                state_root: PathBuf::from(root),
                user: get("user").unwrap_or_default(),
                host: get("host").unwrap_or_default(),
            }),
            _ => None,
        },
    })
}

/// The persistent domain's definition.
pub fn domain(spec: &DomainSpec) -> String {
    let f = &spec.facts;
    let kind = match spec.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "qemu",
    };
    let cpu = match spec.accel {
        Accel::Kvm => "<cpu mode='host-passthrough'/>",
        Accel::Tcg => "<cpu mode='maximum'/>",
    };
    let mut x = format!(
        "<domain type='{kind}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n\
         <name>{}</name>\n<title>castra VM {}</title>\n<metadata>{}</metadata>\n\
         <memory unit='MiB'>{}</memory>\n<vcpu>{}</vcpu>\n\
         <os><type arch='x86_64' machine='q35'>hvm</type>",
        escape(&spec.name),
        escape(&f.vm),
        metadata(f),
        spec.memory_mib,
        spec.cpus,
    );
    if let Some(uuid) = &spec.uuid {
        x = x.replacen(
            "<title>",
            &format!("<uuid>{}</uuid>\n<title>", escape(uuid)),
            1,
        );
    }
    if let Some(kernel) = &spec.kernel {
        x.push_str(&format!("<kernel>{}</kernel>", path(kernel)));
        if let Some(initrd) = &spec.initrd {
            x.push_str(&format!("<initrd>{}</initrd>", path(initrd)));
        }
        let cmdline = spec.cmdline.as_deref().unwrap_or("console=ttyS0");
        x.push_str(&format!("<cmdline>{}</cmdline>", escape(cmdline)));
    }
    x.push_str("</os>\n<features><acpi/></features>\n");
    x.push_str(cpu);
    x.push_str(
        "\n<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot>\
         <on_crash>destroy</on_crash>\n<devices>\n",
    );
    let pool = escape(&f.pool);
    x.push_str(&format!(
        "<disk type='volume' device='disk'><driver name='qemu' type='qcow2' discard='unmap'/>\
         <source pool='{pool}' volume='{}'/><target dev='vda' bus='virtio'/></disk>\n",
        escape(&f.overlay)
    ));
    if let Some(seed) = &f.seed {
        x.push_str(&format!(
            "<disk type='volume' device='disk'><driver name='qemu' type='raw'/>\
             <source pool='{pool}' volume='{}'/><target dev='vdb' bus='virtio'/><readonly/>\
             </disk>\n",
            escape(seed)
        ));
    }
    x.push_str("<serial type='null'/>\n</devices>\n<qemu:commandline>\n");
    let netdev = format!("user,id={NETDEV},hostfwd=tcp:127.0.0.1:{}-:22", f.ssh_port);
    let device = format!("{{\"driver\":\"virtio-net-pci\",\"netdev\":\"{NETDEV}\"}}");
    for arg in ["-netdev", &netdev, "-device", &device] {
        x.push_str(&format!("<qemu:arg value='{}'/>\n", escape(arg)));
    }
    x.push_str("</qemu:commandline>\n</domain>\n");
    x
}

/// A qcow2 volume of `capacity` bytes on `backing` (a path on the hypervisor, `format` given
/// explicitly so nothing probes it), or a raw one without `backing`.
pub fn volume(name: &str, capacity: u64, format: &str, backing: Option<(&Path, &str)>) -> String {
    let mut x = format!(
        "<volume><name>{}</name><capacity unit='bytes'>{capacity}</capacity>\
         <target><format type='{}'/></target>",
        escape(name),
        escape(format)
    );
    if let Some((base, base_format)) = backing {
        x.push_str(&format!(
            "<backingStore><path>{}</path><format type='{}'/></backingStore>",
            path(base),
            escape(base_format)
        ));
    }
    x.push_str("</volume>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            vm: "web-0".into(),
            ssh_port: 40022,
            disk_id: "0123abcd".into(),
            accel: "tcg".into(),
            accel_reason: "auto: /dev/kvm is backed by kvm_pvm <&'\">".into(),
            launched_unix_ms: 1_700_000_000_000,
            config: "/home/me/p & q/castra.toml".into(),
            pool: "castra".into(),
            overlay: "castra-p-web-0.qcow2".into(),
            seed: Some("castra-p-web-0-seed.img".into()),
            settings: Some(LaunchSettings {
                cpus: 2,
                memory_mib: 768,
                forwards: vec![],
                disk_mib: Some(3072),
                network: None,
                mounts: vec!["/p/<a & b>->/src (ro)".into()],
                seed: None,
            }),
            owner: Some(Owner {
                id: owner_id(Path::new("/s/projects/p-01234567")),
                state_root: "/s/projects/p-01234567".into(),
                user: "me".into(),
                host: "box & co".into(),
            }),
        }
    }

    #[test]
    fn metadata_round_trips_through_virshs_unprefixed_form() {
        let f = facts();
        let ours = metadata(&f);
        assert_eq!(parse_metadata(&ours), Some(f.clone()));
        // What `virsh metadata` prints: the element without the prefix, indented.
        let printed = ours
            .replace("castra:", "")
            .replace(&format!(" xmlns:castra='{NAMESPACE}'"), "")
            .replace("><", ">\n  <");
        assert_eq!(parse_metadata(&printed), Some(f.clone()));
        let mut no_seed = f;
        no_seed.seed = None;
        assert_eq!(parse_metadata(&metadata(&no_seed)), Some(no_seed.clone()));
        // A domain defined before the settings were recorded, or with ones that do not read.
        let mut before = no_seed;
        before.settings = None;
        before.owner = None;
        assert_eq!(parse_metadata(&metadata(&before)), Some(before.clone()));
        let mut garbled = metadata(&before);
        let end = garbled.rfind("</castra:vm>").unwrap();
        garbled.insert_str(
            end,
            "<castra:launch_settings>{cpus}</castra:launch_settings>",
        );
        assert_eq!(parse_metadata(&garbled), Some(before));
        assert_eq!(parse_metadata("<vm><ssh_port>x</ssh_port></vm>"), None);
        assert_eq!(parse_metadata(""), None);
        assert_eq!(parse_metadata(&"<a>".repeat(METADATA_MAX)), None);
    }

    #[test]
    fn an_owner_is_the_same_state_root_whoever_it_names() {
        let ours = facts().owner.unwrap();
        assert_eq!(ours.id.len(), 8);
        assert_eq!(ours.id, owner_id(Path::new("/s/projects/p-01234567")));
        assert_ne!(ours.id, owner_id(Path::new("/t/projects/p-01234567")));
        let renamed = Owner {
            user: "other".into(),
            host: "elsewhere".into(),
            ..ours.clone()
        };
        assert!(renamed.same(&ours), "user and host only name the owner");
        let theirs = Owner {
            state_root: "/t/projects/p-01234567".into(),
            ..ours.clone()
        };
        assert!(!theirs.same(&ours));
        let forged = Owner {
            id: "00000000".into(),
            ..ours.clone()
        };
        assert!(!forged.same(&ours));
    }

    #[test]
    fn the_domain_is_tcg_when_chosen_and_forwards_ssh_on_loopback_only() {
        let spec = DomainSpec {
            name: "castra-p-web-0".into(),
            uuid: Some("ea34c0ae-67c7-49da-b652-c5d73b9555dc".into()),
            accel: Accel::Tcg,
            cpus: 2,
            memory_mib: 512,
            kernel: Some("/g/vmlinuz".into()),
            initrd: Some("/g/initrd.img".into()),
            cmdline: Some("console=ttyS0 quiet".into()),
            facts: facts(),
        };
        let x = domain(&spec);
        assert!(x.starts_with("<domain type='qemu' "), "{x}");
        assert!(x.contains("<name>castra-p-web-0</name>"));
        assert!(x.contains("<uuid>ea34c0ae-67c7-49da-b652-c5d73b9555dc</uuid>"));
        assert!(x.contains("hostfwd=tcp:127.0.0.1:40022-:22"));
        assert!(x.contains("{&quot;driver&quot;:&quot;virtio-net-pci&quot;"));
        assert!(x.contains("volume='castra-p-web-0-seed.img'"));
        assert!(x.contains("<readonly/>"));
        assert!(x.contains("&lt;&amp;&apos;&quot;&gt;"), "escaped");
        let kvm = domain(&DomainSpec {
            accel: Accel::Kvm,
            ..spec
        });
        assert!(kvm.starts_with("<domain type='kvm' "));
    }

    #[test]
    fn a_volume_names_its_backing_format() {
        let v = volume(
            "o.qcow2",
            1 << 30,
            "qcow2",
            Some((Path::new("/img/base.raw"), "raw")),
        );
        assert!(v.contains("<capacity unit='bytes'>1073741824</capacity>"));
        assert!(v.contains("<backingStore><path>/img/base.raw</path><format type='raw'/>"));
        assert!(!volume("s.img", 1, "raw", None).contains("backingStore"));
    }
}

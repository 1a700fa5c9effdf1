//! castra.toml's structure: global defaults, each `[[vms]]` entry by backend, replica
//! expansion with `{vm}` substitution, unique names and port forwards. Pure: paths are
//! resolved but not stat'ed.

use std::collections::HashMap;
use std::ops::Range;

use toml::Spanned;

use super::diagnostics::{Source, join_key};
use super::raw::*;
use super::values::*;
use super::*;

// ---------------------------------------------------------------------------------------------
// Validation of castra.toml
// ---------------------------------------------------------------------------------------------

/// A key path and the span of its value.
pub(super) type KeySpan = (String, Range<usize>);

/// What `load` needs to know about one `[[vms]]` entry beyond the `Vm`s it produced.
pub(super) struct DeclInfo {
    /// Indices into `Project::vms` of the VMs expanded from this declaration.
    pub(super) vms: Range<usize>,
    pub(super) files: Vec<FileCheck>,
}

pub(super) struct Parsed {
    pub(super) project: Project,
    pub(super) decls: Vec<DeclInfo>,
}

/// Global `[bootstrap]` after validation, with the span of `remote_dir` for later errors.
pub(super) struct Defaults {
    public: BootstrapDefaults,
    pub(super) remote_dir_span: Option<Range<usize>>,
}

/// A validated `[[vms]]` entry before replica expansion.
pub(super) struct Decl {
    pub(super) index: usize,
    pub(super) name_span: Range<usize>,
    pub(super) replicas: u32,
    pub(super) template: Vm,
    /// Where the effective remote_dir template came from (None = built-in default).
    pub(super) remote_dir_origin: Option<KeySpan>,
    /// Span of each port forward's `host` value, parallel to `template.port_forwards`.
    pub(super) forward_spans: Vec<Range<usize>>,
    pub(super) files: Vec<FileCheck>,
}

/// Where an expanded VM came from, for duplicate and clash messages.
pub(super) struct Origin {
    pub(super) decl: usize,
    pub(super) declared_name: String,
    pub(super) replicas: u32,
    pub(super) name_span: Range<usize>,
    pub(super) forward_spans: Vec<Range<usize>>,
}

pub(super) fn parse_source(src: &Source<'_>) -> Result<Parsed, ConfigError> {
    let raw: RawFile = deserialize(src)?;
    let name = validate_name(src, &raw.project.name, "project.name", "project")?;
    let defaults = validate_defaults(src, raw.bootstrap.as_ref())?;
    let mut vms = Vec::new();
    let mut origins = Vec::new();
    let mut decls = Vec::new();
    for (index, raw_vm) in raw.vms.iter().flatten().enumerate() {
        let decl = validate_vm(src, &defaults, index, raw_vm)?;
        let start = vms.len();
        for vm in expand(src, &decl)? {
            origins.push(Origin {
                decl: decl.index,
                declared_name: decl.template.declared_name.clone(),
                replicas: decl.replicas,
                name_span: decl.name_span.clone(),
                forward_spans: decl.forward_spans.clone(),
            });
            vms.push(vm);
        }
        decls.push(DeclInfo {
            vms: start..vms.len(),
            files: decl.files,
        });
    }
    check_unique_names(src, &vms, &origins)?;
    check_port_clashes(src, &vms, &origins)?;
    let network = attach_network(src, raw.project.network.as_ref(), &mut vms)?;
    let image_mirror = raw
        .project
        .image_mirror
        .as_ref()
        .map(|m| image_mirror(src, m))
        .transpose()?;
    for vm in &mut vms {
        vm.image_mirror.clone_from(&image_mirror);
    }
    let project = Project {
        config_path: src.path.to_path_buf(),
        version: raw.version,
        name,
        network,
        image_mirror,
        bootstrap_defaults: defaults.public,
        vms,
        host_paths: Vec::new(),
    };
    Ok(Parsed { project, decls })
}

/// `[project] image_mirror`: an `https://`, `http://` or `file://` URL (catalog images are
/// checked against their checksums file, so a mirror over http is allowed).
fn image_mirror(src: &Source<'_>, value: &Spanned<String>) -> Result<String, ConfigError> {
    let text = value.get_ref();
    match url::Url::parse(text) {
        Ok(url) if crate::images::source::SCHEMES.contains(&url.scheme()) => Ok(text.clone()),
        Ok(url) => Err(src.at(
            value,
            "project.image_mirror",
            format!(
                "{text:?} uses the scheme {}; expected an https://, http:// or file:// URL",
                url.scheme()
            ),
        )),
        Err(e) => Err(src.at(
            value,
            "project.image_mirror",
            format!("{text:?} is not a URL ({e}); expected e.g. \"https://mirror.example/castra\""),
        )),
    }
}

/// `[project] network`: whether the QEMU VMs share a project network, and each one's place
/// on it (`network::assign`).
fn attach_network(
    src: &Source<'_>,
    setting: Option<&Spanned<bool>>,
    vms: &mut [Vm],
) -> Result<bool, ConfigError> {
    let qemu = vms
        .iter()
        .filter(|vm| vm.backend == BackendKind::Qemu)
        .count();
    if !network::enabled(setting.map(|s| *s.get_ref()), qemu) {
        return Ok(false);
    }
    let list: Vec<(&str, bool)> = vms
        .iter()
        .map(|vm| (vm.name.as_str(), vm.backend == BackendKind::Qemu))
        .collect();
    let attachments = network::assign(src.path, &list).map_err(|count| {
        src.error(
            setting.map(|s| s.span()),
            "project.network",
            format!(
                "a project network holds at most {} QEMU VMs, this project has {count}; \
                 set `network = false` in [project]",
                network::MAX_HOSTS
            ),
        )
    })?;
    for (vm, attachment) in vms.iter_mut().zip(attachments) {
        vm.network = attachment;
    }
    Ok(true)
}

pub(super) fn validate_defaults(
    src: &Source<'_>,
    raw: Option<&RawGlobalBootstrap>,
) -> Result<Defaults, ConfigError> {
    let mut defaults = Defaults {
        public: BootstrapDefaults::default(),
        remote_dir_span: None,
    };
    let Some(raw) = raw else {
        return Ok(defaults);
    };
    if let Some(timeout) = &raw.handshake_timeout_secs {
        defaults.public.handshake_timeout_secs =
            handshake_timeout(src, timeout, "bootstrap.handshake_timeout_secs")?;
    }
    if let Some(timeout) = &raw.apply_timeout_secs {
        defaults.public.apply_timeout_secs = step_timeout(
            src,
            timeout,
            "bootstrap.apply_timeout_secs",
            "apply_timeout_secs",
        )?;
    }
    if let Some(timeout) = &raw.verify_timeout_secs {
        defaults.public.verify_timeout_secs = step_timeout(
            src,
            timeout,
            "bootstrap.verify_timeout_secs",
            "verify_timeout_secs",
        )?;
    }
    if let Some(size) = &raw.output_log_max {
        defaults.public.output_log_max_bytes =
            log_size(src, size, "bootstrap.output_log_max", "output_log_max")?;
    }
    if let Some(keep) = &raw.keep_run_logs {
        defaults.public.keep_run_logs = keep_run_logs(src, keep, "bootstrap.keep_run_logs")?;
    }
    if let Some(dir) = &raw.remote_dir {
        check_remote_dir(src, dir.get_ref(), dir.span(), "bootstrap.remote_dir", None)?;
        defaults.public.remote_dir = dir.get_ref().clone();
        defaults.remote_dir_span = Some(dir.span());
    }
    defaults.public.env = validate_env(src, raw.env.as_ref(), "bootstrap.env")?;
    Ok(defaults)
}

pub(super) fn validate_vm(
    src: &Source<'_>,
    defaults: &Defaults,
    index: usize,
    raw: &RawVm,
) -> Result<Decl, ConfigError> {
    let key = format!("vms[{index}]");
    let k = |name: &str| join_key(&key, name);
    let declared_name = validate_name(src, &raw.name, &k("name"), "VM")?;
    let replicas = match &raw.replicas {
        Some(r) => bounded(
            src,
            r,
            &k("replicas"),
            1,
            i64::from(MAX_REPLICAS),
            "replicas",
        )? as u32,
        None => 1,
    };
    check_expanded_name_length(src, &raw.name, &k("name"), replicas)?;
    let backend = match &raw.backend {
        Some(b) => BackendKind::parse(b.get_ref()).ok_or_else(|| {
            let message = format!(
                "unknown backend {:?}; expected \"qemu\", \"external\" or \"libvirt\"",
                b.get_ref()
            );
            src.at(b, &k("backend"), message)
        })?,
        None => BackendKind::Qemu,
    };
    match backend {
        BackendKind::External => check_external(src, raw, &key)?,
        BackendKind::Qemu => check_qemu(src, raw, &key)?,
        BackendKind::Libvirt => {
            check_qemu(src, raw, &key)?;
            check_libvirt(src, raw, &key)?;
        }
    }
    if backend != BackendKind::Libvirt
        && let Some(l) = &raw.libvirt
    {
        let message = "[vms.libvirt] only applies to backend = \"libvirt\"";
        return Err(src.at(l, &k("libvirt"), message));
    }
    let libvirt = (backend == BackendKind::Libvirt)
        .then(|| super::libvirt::validate(src, raw.libvirt.as_ref(), &key))
        .transpose()?;
    let mut files = Vec::new();
    // A libvirt VM's files are paths on the hypervisor, except a base image it uploads
    // (upload = true, or a URL or catalog name: fetched here), which goes through the image
    // store as a qemu VM's.
    let reader = match (
        &libvirt,
        raw.libvirt
            .as_ref()
            .and_then(|l| l.get_ref().upload.as_ref()),
    ) {
        (None, _) => super::base_image::Reader::Qemu,
        (Some(l), _) if l.upload => super::base_image::Reader::LibvirtUpload,
        (Some(_), Some(_)) => super::base_image::Reader::LibvirtPath,
        (Some(_), None) => match raw.base_image.as_ref() {
            Some(b) if super::base_image::fetched(b.get_ref()) => {
                super::base_image::Reader::LibvirtUpload
            }
            _ => super::base_image::Reader::LibvirtPath,
        },
    };
    let base_image = super::base_image::validate(src, raw, &key, reader)?;
    if let (Some(file), Some(value)) = (
        base_image.as_ref().and_then(BaseImage::file),
        &raw.base_image,
    ) {
        files.push(FileCheck {
            key: k("base_image"),
            span: value.span(),
            path: file.to_owned(),
            directory_ok: false,
            directory_required: false,
            reach: Reach::BaseImage,
        });
    }
    let mut libvirt = libvirt;
    if let Some(l) = libvirt.as_mut() {
        // A URL or catalog image on a libvirt VM is fetched here and uploaded.
        l.upload |= reader == super::base_image::Reader::LibvirtUpload;
    }
    let (kernel, initrd) = if libvirt.is_some() {
        (
            super::libvirt::hypervisor_path(src, raw.kernel.as_ref(), &k("kernel"))?,
            super::libvirt::hypervisor_path(src, raw.initrd.as_ref(), &k("initrd"))?,
        )
    } else {
        (
            file_path(src, raw.kernel.as_ref(), &k("kernel"), false, &mut files)?,
            file_path(src, raw.initrd.as_ref(), &k("initrd"), false, &mut files)?,
        )
    };
    let cmdline = raw
        .cmdline
        .as_ref()
        .map(|c| no_nul(src, c, &k("cmdline")))
        .transpose()?;
    let cpus = match &raw.cpus {
        Some(c) => bounded(src, c, &k("cpus"), 1, i64::from(u32::MAX), "cpus")? as u32,
        None => DEFAULT_CPUS,
    };
    let memory_mib = match &raw.memory {
        Some(m) => memory_mib(src, m, &k("memory"))?,
        None => DEFAULT_MEMORY_MIB,
    };
    let accel = match &raw.accel {
        None => AccelSetting::Auto,
        Some(a) => AccelSetting::parse(a.get_ref()).ok_or_else(|| {
            let message = format!(
                "unknown accelerator {:?}; expected one of auto, kvm, tcg",
                a.get_ref()
            );
            src.at(a, &k("accel"), message)
        })?,
    };
    let (port_forwards, forward_spans) = validate_forwards(src, raw.port_forwards.as_ref(), &key)?;
    let mut ssh = match &raw.ssh {
        Some(s) => validate_ssh(src, s, &k("ssh"))?,
        None => Ssh::default(),
    };
    apply_ssh_defaults(&mut ssh, backend);
    let (bootstrap, remote_dir_origin) =
        validate_vm_bootstrap(src, defaults, raw.bootstrap.as_ref(), &key, &mut files)?;
    let disk_mib = raw
        .disk
        .as_ref()
        .map(|d| disk_mib(src, d, &k("disk")))
        .transpose()?;
    let firmware = match &raw.firmware {
        None => Firmware::Bios,
        Some(f) => Firmware::parse(f.get_ref()).ok_or_else(|| {
            let message = format!(
                "unknown firmware {:?}; expected \"bios\" or \"uefi\"",
                f.get_ref()
            );
            src.at(f, &k("firmware"), message)
        })?,
    };
    let serial_log_max_bytes = match &raw.serial_log_max {
        Some(size) => log_size(src, size, &k("serial_log_max"), "serial_log_max")?,
        None => DEFAULT_SERIAL_LOG_MAX_BYTES,
    };
    let cloud_init = validate_cloud_init(src, raw.cloud_init.as_ref(), &key, backend, &mut files)?;
    let mounts = super::mounts::validate_mounts(src, raw.mounts.as_ref(), &key, &mut files)?;
    let template = Vm {
        name: declared_name.clone(),
        declared_name,
        replica: None,
        description: raw.description.clone(),
        backend,
        base_image,
        image_mirror: None,
        kernel,
        initrd,
        cmdline,
        cpus,
        memory_mib,
        ephemeral: raw.ephemeral.as_ref().is_some_and(|e| *e.get_ref()),
        accel,
        port_forwards,
        disk_mib,
        firmware,
        serial_log_max_bytes,
        cloud_init,
        network: None,
        mounts,
        ssh,
        bootstrap,
        libvirt,
    };
    Ok(Decl {
        index,
        name_span: raw.name.span(),
        replicas,
        template,
        remote_dir_origin,
        forward_spans,
        files,
    })
}

/// External hosts have no lifecycle: reject every key that only makes sense for qemu.
pub(super) fn check_external(src: &Source<'_>, raw: &RawVm, key: &str) -> Result<(), ConfigError> {
    let ephemeral = raw
        .ephemeral
        .as_ref()
        .filter(|e| *e.get_ref())
        .map(Spanned::span);
    let forbidden = [
        ("base_image", raw.base_image.as_ref().map(Spanned::span)),
        (
            "base_image_digest",
            raw.base_image_digest.as_ref().map(Spanned::span),
        ),
        (
            "base_image_checksums",
            raw.base_image_checksums.as_ref().map(Spanned::span),
        ),
        (
            "base_image_import",
            raw.base_image_import.as_ref().map(Spanned::span),
        ),
        ("kernel", raw.kernel.as_ref().map(Spanned::span)),
        ("initrd", raw.initrd.as_ref().map(Spanned::span)),
        ("cmdline", raw.cmdline.as_ref().map(Spanned::span)),
        (
            "port_forwards",
            raw.port_forwards.as_ref().map(Spanned::span),
        ),
        ("ephemeral", ephemeral),
        ("accel", raw.accel.as_ref().map(Spanned::span)),
        ("cpus", raw.cpus.as_ref().map(Spanned::span)),
        ("memory", raw.memory.as_ref().map(Spanned::span)),
        ("disk", raw.disk.as_ref().map(Spanned::span)),
        ("firmware", raw.firmware.as_ref().map(Spanned::span)),
        (
            "serial_log_max",
            raw.serial_log_max.as_ref().map(Spanned::span),
        ),
        ("cloud_init", raw.cloud_init.as_ref().map(Spanned::span)),
        ("mounts", raw.mounts.as_ref().map(Spanned::span)),
    ];
    for (name, span) in forbidden {
        if let Some(span) = span {
            let message = format!(
                "external VMs have no lifecycle (castrad only connects to them over SSH), so \
                 `{name}` does not apply; remove it or use backend = \"qemu\""
            );
            return Err(src.error(Some(span), &join_key(key, name), message));
        }
    }
    let has_host = raw.ssh.as_ref().is_some_and(|s| s.host.is_some());
    if !has_host {
        let message = "missing required key `ssh.host`: external VMs are reached only by SSH, \
                       so [vms.ssh] must name the host";
        return Err(src.at(&raw.name, &join_key(key, "ssh.host"), message));
    }
    Ok(())
}

/// `[vms.cloud_init]`: on by default for QEMU VMs (a stock cloud image needs it to let anyone
/// in); extra authorized keys (`~/` expands) and the user's cloud-config must exist.
fn validate_cloud_init(
    src: &Source<'_>,
    raw: Option<&Spanned<RawCloudInit>>,
    vm_key: &str,
    backend: BackendKind,
    files: &mut Vec<FileCheck>,
) -> Result<CloudInit, ConfigError> {
    let key = join_key(vm_key, "cloud_init");
    let mut cloud_init = CloudInit {
        enabled: backend != BackendKind::External,
        authorized_keys: Vec::new(),
        user_data: None,
    };
    let Some(raw) = raw.map(Spanned::get_ref) else {
        return Ok(cloud_init);
    };
    if let Some(enabled) = raw.enabled {
        cloud_init.enabled = enabled;
    }
    for (i, path) in raw.authorized_keys.iter().flatten().enumerate() {
        let k = format!("{key}.authorized_keys[{i}]");
        let resolved = identity_path(src, path, &k)?;
        files.push(FileCheck {
            key: k,
            span: path.span(),
            path: resolved.clone(),
            directory_ok: false,
            directory_required: false,
            reach: Reach::PublicKeys,
        });
        cloud_init.authorized_keys.push(resolved);
    }
    cloud_init.user_data = file_path(
        src,
        raw.user_data.as_ref(),
        &join_key(&key, "user_data"),
        false,
        files,
    )?;
    Ok(cloud_init)
}

pub(super) fn check_qemu(src: &Source<'_>, raw: &RawVm, key: &str) -> Result<(), ConfigError> {
    if raw.base_image.is_none() {
        let message = "missing required key `base_image`: qemu VMs boot from a disk image \
                       (set backend = \"external\" for an existing host)";
        return Err(src.at(&raw.name, &join_key(key, "base_image"), message));
    }
    if raw.kernel.is_none() {
        for (name, value) in [("initrd", &raw.initrd), ("cmdline", &raw.cmdline)] {
            if let Some(value) = value {
                let message = format!("`{name}` requires `kernel` (direct kernel boot)");
                return Err(src.at(value, &join_key(key, name), message));
            }
        }
    }
    Ok(())
}

/// What a libvirt VM does not have (yet): castrad chooses its SSH port (a forward on the
/// hypervisor's loopback), and it has no extra forwards, UEFI or shared folders.
fn check_libvirt(src: &Source<'_>, raw: &RawVm, key: &str) -> Result<(), ConfigError> {
    let ssh = raw.ssh.as_ref();
    let uefi = raw
        .firmware
        .as_ref()
        .filter(|f| f.get_ref() != "bios")
        .map(Spanned::span);
    let forbidden = [
        (
            "ssh.host",
            ssh.and_then(|s| s.host.as_ref()).map(Spanned::span),
        ),
        (
            "ssh.port",
            ssh.and_then(|s| s.port.as_ref()).map(Spanned::span),
        ),
        (
            "port_forwards",
            raw.port_forwards.as_ref().map(Spanned::span),
        ),
        ("firmware", uefi),
    ];
    for (name, span) in forbidden {
        if let Some(span) = span {
            let message = format!(
                "`{name}` is not supported for libvirt VMs: castrad forwards the guest's SSH \
                 port on the hypervisor's 127.0.0.1 itself, and offers no other forwards or \
                 UEFI there; remove it or use backend = \"qemu\""
            );
            return Err(src.error(Some(span), &join_key(key, name), message));
        }
    }
    if let Some(mounts) = &raw.mounts {
        // A share's directory would have to be on the hypervisor, next to its virtiofsd;
        // accepting the key and sharing nothing would be worse than saying so.
        let message = "shared folders are not supported for libvirt VMs (the folder would have \
                       to live on the hypervisor); remove [[vms.mounts]], copy files with \
                       `castractl cp`, or use backend = \"qemu\"";
        return Err(src.error(Some(mounts.span()), &join_key(key, "mounts"), message));
    }
    Ok(())
}

pub(super) fn apply_ssh_defaults(ssh: &mut Ssh, backend: BackendKind) {
    match backend {
        BackendKind::Qemu | BackendKind::Libvirt => {
            ssh.host
                .get_or_insert_with(|| DEFAULT_QEMU_SSH_HOST.to_owned());
        }
        BackendKind::External => {
            ssh.port.get_or_insert(DEFAULT_EXTERNAL_SSH_PORT);
        }
    }
}

pub(super) fn validate_forwards(
    src: &Source<'_>,
    raw: Option<&Spanned<Vec<RawPortForward>>>,
    key: &str,
) -> Result<(Vec<PortForward>, Vec<Range<usize>>), ConfigError> {
    let mut forwards = Vec::new();
    let mut spans = Vec::new();
    for (i, raw) in raw.map(Spanned::get_ref).into_iter().flatten().enumerate() {
        let key = format!("{key}.port_forwards[{i}]");
        let protocol = match &raw.protocol {
            Some(p) => Protocol::parse(p.get_ref()).ok_or_else(|| {
                let message = format!(
                    "unknown protocol {:?}; expected \"tcp\" or \"udp\"",
                    p.get_ref()
                );
                src.at(p, &join_key(&key, "protocol"), message)
            })?,
            None => Protocol::Tcp,
        };
        forwards.push(PortForward {
            host: port(src, &raw.host, &join_key(&key, "host"))?,
            guest: port(src, &raw.guest, &join_key(&key, "guest"))?,
            protocol,
        });
        spans.push(raw.host.span());
    }
    Ok((forwards, spans))
}

pub(super) fn validate_vm_bootstrap(
    src: &Source<'_>,
    defaults: &Defaults,
    raw: Option<&RawVmBootstrap>,
    vm_key: &str,
    files: &mut Vec<FileCheck>,
) -> Result<(Bootstrap, Option<KeySpan>), ConfigError> {
    let key = join_key(vm_key, "bootstrap");
    let k = |name: &str| join_key(&key, name);
    let global_origin = defaults
        .remote_dir_span
        .clone()
        .map(|span| ("bootstrap.remote_dir".to_owned(), span));
    let mut bootstrap = Bootstrap {
        mode: BootstrapMode::Auto,
        script: None,
        payload: None,
        verify_command: None,
        verify_path: None,
        handshake_timeout_secs: defaults.public.handshake_timeout_secs,
        apply_timeout_secs: defaults.public.apply_timeout_secs,
        verify_timeout_secs: defaults.public.verify_timeout_secs,
        output_log_max_bytes: defaults.public.output_log_max_bytes,
        keep_run_logs: defaults.public.keep_run_logs,
        remote_dir: defaults.public.remote_dir.clone(),
        env: defaults.public.env.clone(),
        metadata_path: None,
        vizier_dir: None,
    };
    let Some(raw) = raw else {
        return Ok((bootstrap, global_origin));
    };
    if let Some(mode) = &raw.mode {
        bootstrap.mode = BootstrapMode::parse(mode.get_ref()).ok_or_else(|| {
            let message = format!("unknown mode {:?}; {MODE_EXPECTED}", mode.get_ref());
            src.at(mode, &k("mode"), message)
        })?;
    }
    bootstrap.script = file_path(src, raw.script.as_ref(), &k("script"), false, files)?;
    bootstrap.payload = file_path(src, raw.payload.as_ref(), &k("payload"), true, files)?;
    bootstrap.verify_command = raw.verify_command.clone();
    if let Some(path) = &raw.verify_path {
        bootstrap.verify_path = Some(verify_path(src, path, &k("verify_path"))?);
    }
    if let Some(timeout) = &raw.handshake_timeout_secs {
        bootstrap.handshake_timeout_secs =
            handshake_timeout(src, timeout, &k("handshake_timeout_secs"))?;
    }
    if let Some(timeout) = &raw.apply_timeout_secs {
        bootstrap.apply_timeout_secs =
            step_timeout(src, timeout, &k("apply_timeout_secs"), "apply_timeout_secs")?;
    }
    if let Some(timeout) = &raw.verify_timeout_secs {
        bootstrap.verify_timeout_secs = step_timeout(
            src,
            timeout,
            &k("verify_timeout_secs"),
            "verify_timeout_secs",
        )?;
    }
    if let Some(size) = &raw.output_log_max {
        bootstrap.output_log_max_bytes =
            log_size(src, size, &k("output_log_max"), "output_log_max")?;
    }
    if let Some(keep) = &raw.keep_run_logs {
        bootstrap.keep_run_logs = keep_run_logs(src, keep, &k("keep_run_logs"))?;
    }
    if let Some(dir) = &raw.vizier_dir {
        check_remote_dir(src, dir.get_ref(), dir.span(), &k("vizier_dir"), None)?;
        bootstrap.vizier_dir = Some(dir.get_ref().clone());
    }
    let mut origin = global_origin;
    if let Some(dir) = &raw.remote_dir {
        check_remote_dir(src, dir.get_ref(), dir.span(), &k("remote_dir"), None)?;
        bootstrap.remote_dir = dir.get_ref().clone();
        origin = Some((k("remote_dir"), dir.span()));
    }
    bootstrap
        .env
        .extend(validate_env(src, raw.env.as_ref(), &k("env"))?);
    Ok((bootstrap, origin))
}

/// Produces the VMs of one declaration: itself, or `name-0 … name-(N-1)`.
pub(super) fn expand(src: &Source<'_>, decl: &Decl) -> Result<Vec<Vm>, ConfigError> {
    let replicas: Vec<Option<u32>> = if decl.replicas > 1 {
        (0..decl.replicas).map(Some).collect()
    } else {
        vec![None]
    };
    replicas
        .into_iter()
        .map(|replica| {
            let mut vm = decl.template.clone();
            if let Some(i) = replica {
                vm.name = format!("{}-{i}", vm.declared_name);
            }
            vm.replica = replica;
            vm.bootstrap.remote_dir = vm.bootstrap.remote_dir.replace("{vm}", &vm.name);
            if let Some(dir) = &mut vm.bootstrap.vizier_dir {
                *dir = dir.replace("{vm}", &vm.name);
            }
            if let Some((key, span)) = &decl.remote_dir_origin {
                check_remote_dir(
                    src,
                    &vm.bootstrap.remote_dir,
                    span.clone(),
                    key,
                    Some(&vm.name),
                )?;
            }
            Ok(vm)
        })
        .collect()
}

pub(super) fn check_unique_names(
    src: &Source<'_>,
    vms: &[Vm],
    origins: &[Origin],
) -> Result<(), ConfigError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, vm) in vms.iter().enumerate() {
        if let Some(&first) = seen.get(vm.name.as_str()) {
            let (a, b) = (&origins[first], &origins[i]);
            let message = format!(
                "duplicate VM name {:?}: declared by {} and again by {}",
                vm.name,
                describe_origin(src, a),
                describe_origin(src, b)
            );
            let key = format!("vms[{}].name", b.decl);
            return Err(src.error(Some(b.name_span.clone()), &key, message));
        }
        seen.insert(&vm.name, i);
    }
    Ok(())
}

pub(super) fn describe_origin(src: &Source<'_>, origin: &Origin) -> String {
    let line = src.line_of(&origin.name_span);
    if origin.replicas > 1 {
        format!(
            "vms[{}] (name {:?} with replicas = {}, line {line})",
            origin.decl, origin.declared_name, origin.replicas
        )
    } else {
        format!("vms[{}] (line {line})", origin.decl)
    }
}

pub(super) fn check_port_clashes(
    src: &Source<'_>,
    vms: &[Vm],
    origins: &[Origin],
) -> Result<(), ConfigError> {
    let mut seen: HashMap<(u16, Protocol), (usize, usize)> = HashMap::new();
    for (v, vm) in vms.iter().enumerate() {
        for (f, forward) in vm.port_forwards.iter().enumerate() {
            let slot = (forward.host, forward.protocol);
            let Some(&(first_vm, first_forward)) = seen.get(&slot) else {
                seen.insert(slot, (v, f));
                continue;
            };
            let origin = &origins[v];
            let first_origin = &origins[first_vm];
            let span = origin.forward_spans[f].clone();
            let mut message = format!(
                "host port {}/{} is forwarded twice: by VM {:?} (vms[{}].port_forwards[{first_forward}], \
                 line {}) and by VM {:?}",
                forward.host,
                forward.protocol.as_str(),
                vms[first_vm].name,
                first_origin.decl,
                src.line_of(&first_origin.forward_spans[first_forward]),
                vm.name
            );
            if first_origin.decl == origin.decl {
                message.push_str(
                    "; replicas of a VM cannot share a host port forward (use replicas = 1 or \
                     declare each VM with its own host port)",
                );
            }
            let key = format!("vms[{}].port_forwards[{f}].host", origin.decl);
            return Err(src.error(Some(span), &key, message));
        }
    }
    Ok(())
}

//! A libvirt VM's storage pool, as preflight needs it: there (its room is `space`'s).
//! castrad's own pool `castra` on this machine's session daemon (`qemu:///session`, the
//! default URI) is made when it is missing, and started when it is not running: that daemon
//! is the user's own and runs as the user, so castrad puts the pool in its state directory
//! (`state_root::libvirt_pool_dir`), beside its QEMU VMs' disks. Anywhere else
//! (`qemu:///system`, another host, a pool of another name) a pool is the administrator's
//! choice: castrad says how to make it, and changes nothing.

use std::path::Path;

use super::virsh::Hypervisor;
use crate::config::libvirt::Libvirt as LibvirtConfig;

/// The pool's `pool-info --bytes` once it exists (castrad's own, see
/// [`LibvirtConfig::makes_own_pool`], made or started first); Err: preflight's message, what
/// is wrong and what to do.
pub fn ready(hv: &Hypervisor, config: &LibvirtConfig, own_dir: &Path) -> Result<String, String> {
    let pool = config.pool.as_str();
    let info = || hv.virsh(&["pool-info", "--bytes", pool]);
    let found = match info() {
        Ok(found) => found,
        Err(_) => {
            if let Err(e) = hv.virsh(&["uri"]) {
                return Err(super::explain_connect(&e.message));
            }
            if !config.makes_own_pool() {
                return Err(format!(
                    "its storage pool {pool:?} does not exist; create it there once: {} \
                     (docs/REMOTE.md)",
                    how_to_create(config)
                ));
            }
            create(hv, pool, own_dir).map_err(|e| {
                format!(
                    "its storage pool {pool:?} does not exist, and castrad could not create it \
                     in {}: {e}; create it yourself: {} (docs/REMOTE.md)",
                    own_dir.display(),
                    how_to_create(config)
                )
            })?;
            info().map_err(|e| e.to_string())?
        }
    };
    // Another pool is left as it is: whatever is wrong with it, libvirt says when it is used
    // (and `upload`'s check says more about a pool it cannot use).
    if running(&found) || !config.makes_own_pool() {
        return Ok(found);
    }
    start(hv, pool).map_err(|e| format!("its storage pool {pool:?} does not start: {e}"))?;
    info().map_err(|e| e.to_string())
}

/// Whether `pool-info` says the pool runs (an answer without a `State:` line counts as yes:
/// the later calls say what is wrong, as they did before this check).
fn running(info: &str) -> bool {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("State:"))
        .is_none_or(|state| state.trim() == "running")
}

/// The commands that make `config`'s pool, for messages.
fn how_to_create(config: &LibvirtConfig) -> String {
    let (uri, pool) = (&config.uri, &config.pool);
    format!(
        "`virsh -c {uri} pool-define-as {pool} dir --target DIR && virsh -c {uri} pool-build \
         {pool} && virsh -c {uri} pool-start {pool} && virsh -c {uri} pool-autostart {pool}`"
    )
}

/// Defines castrad's own pool `pool` as a directory pool at `dir`, builds, starts and
/// autostarts it. Another castrad may do the same at once: a definition that fails because
/// the pool is there by now is not an error.
fn create(hv: &Hypervisor, pool: &str, dir: &Path) -> Result<(), String> {
    let target = dir
        .to_str()
        .ok_or_else(|| "the path is not UTF-8".to_owned())?;
    crate::state_root::ensure_dir(dir).map_err(|e| e.to_string())?;
    if let Err(e) = hv.virsh(&["pool-define-as", pool, "dir", "--target", target])
        && hv.virsh(&["pool-info", pool]).is_err()
    {
        return Err(e.to_string());
    }
    start(hv, pool)?;
    hv.virsh(&["pool-autostart", pool])
        .map_err(|e| e.to_string())?;
    tracing::info!(pool, dir = target, "created castrad's libvirt storage pool");
    Ok(())
}

/// Builds (makes its directory again if it is gone) and starts `pool`; one that runs by now
/// is fine.
fn start(hv: &Hypervisor, pool: &str) -> Result<(), String> {
    hv.virsh(&["pool-build", pool]).map_err(|e| e.to_string())?;
    match hv.virsh(&["pool-start", pool]) {
        Ok(_) => Ok(()),
        Err(e) => match hv.virsh(&["pool-info", pool]) {
            Ok(info) if running(&info) => Ok(()),
            _ => Err(e.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_runs_when_pool_info_says_so() {
        let info = |state: &str| {
            format!(
                "Name:           castra\nUUID:           1\nState:          {state}\n\
                 Persistent:     yes\n"
            )
        };
        assert!(running(&info("running")));
        assert!(!running(&info("inactive")));
        assert!(!running(&info("inaccessible")));
        assert!(running("Name: castra\n"), "no state line: not judged here");
    }
}

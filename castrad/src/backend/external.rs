//! External VMs: hosts castrad reaches over SSH and never starts or stops. They are taken to
//! be running; their disk identity is their pinned SSH host key, so a reinstalled host is a
//! new disk and gets no false NoOp.

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;

use super::{Backend, BackendError, Machine, PreflightError};
use crate::config::{BackendKind, Vm};
use crate::ssh::Endpoint;
use crate::state_root::StateRoot;
use crate::vm::state::MachineInfo;

#[derive(Debug, Default, Clone, Copy)]
pub struct External;

impl Backend for External {
    fn kind(&self) -> BackendKind {
        BackendKind::External
    }

    fn owns_lifecycle(&self) -> bool {
        false
    }

    fn ssh_endpoint(&self, vm: &Vm, _: Option<&MachineInfo>) -> Option<Endpoint> {
        Some(Endpoint {
            host: vm.ssh.host.clone()?,
            port: vm.ssh.port?,
        })
    }

    fn preflight(&self, _: &StateRoot, _: &[&Vm]) -> Result<(), PreflightError> {
        Ok(())
    }

    fn prepare_disk<'a>(
        &'a self,
        _: &'a StateRoot,
        _: &'a Vm,
        _: super::DiskInputs<'a>,
    ) -> BoxFuture<'a, Result<Option<PathBuf>, BackendError>> {
        Box::pin(async { Ok(None) })
    }

    fn launch<'a>(
        &'a self,
        _: &'a StateRoot,
        _: &'a Vm,
        _: &'a Path,
    ) -> BoxFuture<'a, Result<Box<dyn Machine>, BackendError>> {
        Box::pin(async { Err(BackendError::NotOwned(BackendKind::External)) })
    }

    fn running_records(&self, _: &StateRoot) -> Vec<(String, PathBuf)> {
        Vec::new()
    }

    fn adopt<'a>(
        &'a self,
        _: &'a StateRoot,
        _: &'a str,
    ) -> BoxFuture<'a, Option<Box<dyn Machine>>> {
        Box::pin(async { None })
    }

    fn forget(&self, _: &StateRoot, _: &str) {}

    fn discard(&self, _: &StateRoot, _: &str) -> Result<Option<(PathBuf, u64)>, BackendError> {
        Ok(None)
    }
}

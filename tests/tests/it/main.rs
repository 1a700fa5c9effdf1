//! Castra's end-to-end tests: one binary, one module per area. Each test starts its own
//! castrad on a private socket and state directory and talks to it like a user would.

mod architecture;
mod bootstrap;
mod clients;
mod cloud;
mod contract;
mod daemon;
mod disk;
mod edges;
mod fleet;
mod hostile;
mod libvirt;
mod limits;
mod plan;
mod protocol_docs;
mod qemu;
mod scale;
mod scripts;
mod ssh_options;
mod sshd;
mod stamps;
mod support;
mod terminal;
mod vizier;

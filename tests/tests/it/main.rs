//! Castra's end-to-end tests: one binary, one module per area. Each test starts its own
//! castrad on a private socket and state directory and talks to it like a user would.

mod architecture;
mod bootstrap;
mod clients;
mod cloud;
mod console;
mod contract;
mod copy;
mod daemon;
mod disk;
mod doctor;
mod edges;
mod examples;
mod fleet;
mod guest_setup;
mod hostile;
mod install;
mod libvirt;
mod libvirt_drift;
mod libvirt_lifecycle;
mod limits;
mod mounts;
mod mounts_user;
mod network;
mod plan;
mod protocol_docs;
mod qemu;
mod restart;
mod scale;
mod scripts;
mod ssh_options;
mod sshd;
mod stamps;
mod support;
mod terminal;
mod vizier;

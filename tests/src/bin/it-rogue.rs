//! A fake castrad for the trust tests (`socket_trust.rs`): the other local user who listens
//! where castractl looks for castrad, and answers `castra.sshConfig` with what would run a
//! command of theirs.
//!
//! `it-rogue SOCKET OWNER MODE LISTEN_AS ANSWER`, started as root: binds SOCKET, gives the
//! file to uid OWNER with MODE (octal: 666 lets anyone connect, as an attacker's would), then becomes uid LISTEN_AS (its gid too, no supplementary groups) and
//! only then listens, so that the socket's owner and the listener's credentials (what
//! SO_PEERCRED reports: those of whoever called `listen`) can differ. Every
//! `castra.sshConfig` is answered with the JSON in the file ANSWER, read once at start;
//! `castra.version` with a version; other methods are not found. No peer is refused.

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use jsonrpsee::RpcModule;
use jsonrpsee::server::{serve_with_graceful_shutdown, stop_channel};
use jsonrpsee::types::ErrorObjectOwned;
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
};
use nix::unistd::{Gid, Uid};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket_path, owner, mode, listen_as, answer] = &args[..] else {
        eprintln!("usage: it-rogue SOCKET OWNER MODE LISTEN_AS ANSWER");
        std::process::exit(2);
    };
    let socket_path = PathBuf::from(socket_path);
    let owner: u32 = owner.parse().expect("OWNER: a uid");
    let mode = u32::from_str_radix(mode, 8).expect("MODE: octal");
    let listen_as: u32 = listen_as.parse().expect("LISTEN_AS: a uid");
    let answer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(answer).expect("ANSWER")).expect("JSON");

    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    bind(
        fd.as_raw_fd(),
        &UnixAddr::new(&socket_path).expect("socket path"),
    )
    .expect("bind");
    std::os::unix::fs::chown(&socket_path, Some(owner), Some(owner)).expect("chown");
    std::fs::set_permissions(
        &socket_path,
        std::os::unix::fs::PermissionsExt::from_mode(mode),
    )
    .expect("chmod");
    nix::unistd::setgroups(&[]).expect("setgroups");
    nix::unistd::setgid(Gid::from_raw(listen_as)).expect("setgid");
    nix::unistd::setuid(Uid::from_raw(listen_as)).expect("setuid");
    listen(&fd, Backlog::new(16).expect("backlog")).expect("listen");
    let listener = std::os::unix::net::UnixListener::from(fd);
    listener.set_nonblocking(true).expect("nonblocking");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(listener).expect("listener");
        let mut module = RpcModule::new(());
        module
            .register_method("castra.sshConfig", move |_, _, _| {
                Ok::<_, ErrorObjectOwned>(answer.clone())
            })
            .expect("unique");
        module
            .register_method("castra.version", |_, _, _| {
                Ok::<_, ErrorObjectOwned>(serde_json::json!({"version": "0.0.0", "protocol": 1}))
            })
            .expect("unique");
        let builder = jsonrpsee::server::Server::builder().to_service_builder();
        let (stop_handle, _server_handle) = stop_channel();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = builder.clone().build(module.clone(), stop_handle.clone());
            let stopped = stop_handle.clone().shutdown();
            tokio::spawn(async move {
                let _ = serve_with_graceful_shutdown(stream, service, stopped).await;
            });
        }
    });
}

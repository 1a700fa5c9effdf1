//! The guest-side steps, over the run's SSH ControlMaster: `transfer`, `apply`, `verify`.
//!
//! Remote layout: `<remote_dir>/<script file name>` and `<remote_dir>/payload/…` (a payload
//! file lands as `payload/<its name>`). `remote_dir` is created private (umask 077).
//!
//! Env values never touch a command line: the guest runs a fixed wrapper that reads
//! `export KEY='value'` lines from stdin and `eval`s them (single quotes make every byte
//! literal), then `exec`s the script with stdin from /dev/null. Every other word of every
//! remote command goes through `ssh::quote`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use castra_api::OutputStream;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};

use crate::ssh::{Master, command_line, quote};

/// Runs in the guest before the script: env from stdin, then the program in remote_dir.
const WRAPPER: &str = "set -e; eval \"$(cat)\"; cd -- \"$1\"; shift; exec \"$@\" </dev/null";

/// The marker line by which a script declares that nothing needed changing.
pub const NOOP_MARKER: &str = "CASTRA_NOOP";
/// The prefix by which a script fails the run with a reason.
pub const ERROR_MARKER: &str = "CASTRA_ERROR:";

/// What `apply` observed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The script printed `CASTRA_NOOP`.
    pub noop: bool,
}

/// Streams the script and payload as one tar archive into `remote_dir`.
pub async fn transfer(
    master: &Master,
    remote_dir: &str,
    script: &Path,
    payload: Option<&Path>,
) -> Result<u64, String> {
    let script_name = file_name(script)?;
    let remote = format!(
        "(umask 077 && mkdir -p -- {dir}) && cd -- {dir} && rm -rf -- payload {script} && tar -x -f -",
        dir = quote(remote_dir),
        script = quote(&script_name),
    );
    let (reader, writer) = std::io::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let mut child = master
        .command(&remote)
        .stdin(reader)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ssh: {e}"))?;
    let (script, payload) = (script.to_owned(), payload.map(Path::to_owned));
    let writer_task = tokio::task::spawn_blocking(move || {
        write_archive(writer, &script, &script_name, payload.as_deref())
    });
    let stderr = child.stderr.take();
    let stderr_task = tokio::spawn(read_all(stderr));
    let status = child.wait().await.map_err(|e| format!("ssh: {e}"))?;
    let written = writer_task
        .await
        .map_err(|e| format!("archive writer panicked: {e}"))?;
    let stderr = stderr_task.await.unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "unpacking in {remote_dir} failed ({}){}",
            exit(status),
            tail(&stderr)
        ));
    }
    written.map_err(|e| format!("cannot send the payload: {e}"))
}

/// Writes the archive; returns the bytes of file content sent.
fn write_archive(
    writer: std::io::PipeWriter,
    script: &Path,
    script_name: &str,
    payload: Option<&Path>,
) -> std::io::Result<u64> {
    let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 16, writer));
    let mut bytes = append(&mut tar, script, Path::new(script_name))?;
    if let Some(payload) = payload {
        let meta = std::fs::symlink_metadata(payload)?;
        if meta.is_dir() {
            bytes += append_tree(&mut tar, payload, Path::new("payload"))?;
        } else {
            let name = payload.file_name().unwrap_or_default();
            bytes += append(&mut tar, payload, &Path::new("payload").join(name))?;
        }
    }
    tar.into_inner()?.flush()?;
    Ok(bytes)
}

fn append_tree<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    name: &Path,
) -> std::io::Result<u64> {
    let mut bytes = append(tar, dir, name)?;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        let child = name.join(path.file_name().unwrap_or_default());
        if std::fs::symlink_metadata(&path)?.is_dir() {
            bytes += append_tree(tar, &path, &child)?;
        } else {
            bytes += append(tar, &path, &child)?;
        }
    }
    Ok(bytes)
}

/// One entry with its permission bits, owned by root (ignored when a non-root user unpacks).
fn append<W: Write>(tar: &mut tar::Builder<W>, path: &Path, name: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(path)?;
    let mut header = tar::Header::new_gnu();
    header.set_mode(meta.permissions().mode() & 0o7777);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(meta.mtime().max(0) as u64);
    let ft = meta.file_type();
    if ft.is_dir() {
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        tar.append_data(&mut header, name, std::io::empty())?;
        Ok(0)
    } else if ft.is_symlink() {
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        tar.append_link(&mut header, name, std::fs::read_link(path)?)?;
        Ok(0)
    } else {
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(meta.len());
        tar.append_data(&mut header, name, std::fs::File::open(path)?)?;
        Ok(meta.len())
    }
}

/// The `export` lines the wrapper evaluates. Keys were validated as identifiers by `config`.
pub fn env_script(env: &BTreeMap<String, String>) -> String {
    env.iter()
        .map(|(k, v)| format!("export {k}={}\n", quote(v)))
        .collect()
}

/// How to start the script: directly when it is executable with a `#!` line, else with `sh`.
pub fn program(script: &Path) -> Result<Vec<String>, String> {
    use std::os::unix::fs::PermissionsExt;
    let name = format!("./{}", file_name(script)?);
    let mut head = [0u8; 2];
    let shebang = std::fs::File::open(script)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .is_ok_and(|n| n == 2 && head == *b"#!");
    let executable = std::fs::metadata(script).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
    Ok(if shebang && executable {
        vec![name]
    } else {
        vec!["sh".into(), name]
    })
}

/// Runs `program` in `remote_dir` with `env`, streaming each output line to `on_line`.
/// Returns Ok when the program exited 0 and printed no `CASTRA_ERROR:` line.
pub async fn run(
    master: &Master,
    remote_dir: &str,
    program: &[String],
    env: &BTreeMap<String, String>,
    mut on_line: impl FnMut(OutputStream, &str),
) -> Result<Applied, String> {
    let mut words = vec![
        "sh".to_owned(),
        "-c".into(),
        WRAPPER.into(),
        "castra".into(),
        remote_dir.into(),
    ];
    words.extend(program.iter().cloned());
    let mut child = master
        .command(&command_line(&words))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ssh: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("ssh has no stdin")?;
    let env_text = env_script(env);
    let feed = tokio::spawn(async move {
        let result = stdin.write_all(env_text.as_bytes()).await;
        drop(stdin);
        result
    });

    let (tx, mut rx) = tokio::sync::mpsc::channel::<(OutputStream, String)>(256);
    let readers = [
        child
            .stdout
            .take()
            .map(|s| tokio::spawn(lines(s, OutputStream::Stdout, tx.clone()))),
        child
            .stderr
            .take()
            .map(|s| tokio::spawn(lines(s, OutputStream::Stderr, tx.clone()))),
    ];
    drop(tx);
    let mut applied = Applied::default();
    let mut error: Option<String> = None;
    let mut last_stderr = String::new();
    while let Some((stream, line)) = rx.recv().await {
        let trimmed = line.trim();
        if trimmed == NOOP_MARKER {
            applied.noop = true;
        } else if let Some(reason) = trimmed.strip_prefix(ERROR_MARKER) {
            error.get_or_insert_with(|| reason.trim().to_owned());
        }
        if stream == OutputStream::Stderr && !trimmed.is_empty() {
            last_stderr = trimmed.to_owned();
        }
        on_line(stream, &line);
    }
    for reader in readers.into_iter().flatten() {
        let _ = reader.await;
    }
    let _ = feed.await;
    let status = child.wait().await.map_err(|e| format!("ssh: {e}"))?;
    if let Some(reason) = error {
        return Err(reason);
    }
    if status.code() == Some(255) {
        return Err(format!("the SSH connection failed{}", tail(&last_stderr)));
    }
    if !status.success() {
        return Err(format!(
            "{} {}{}",
            program.join(" "),
            exit(status),
            tail(&last_stderr)
        ));
    }
    Ok(applied)
}

/// Checks that `verify_path` (relative to remote_dir) exists in the guest.
pub async fn path_exists(master: &Master, remote_dir: &str, rel: &str) -> Result<bool, String> {
    let words = ["sh", "-c", WRAPPER, "castra", remote_dir, "test", "-e", rel];
    let mut child = master
        .command(&command_line(&words))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ssh: {e}"))?;
    let stderr = read_all(child.stderr.take()).await;
    let status = child.wait().await.map_err(|e| format!("ssh: {e}"))?;
    match status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(format!(
            "checking {rel} failed ({}){}",
            exit(status),
            tail(&stderr)
        )),
    }
}

async fn lines<R: AsyncRead + Unpin>(
    reader: R,
    stream: OutputStream,
    tx: tokio::sync::mpsc::Sender<(OutputStream, String)>,
) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']).to_owned();
                if tx.send((stream, line)).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn read_all<R: AsyncRead + Unpin>(reader: Option<R>) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = String::new();
    if let Some(mut r) = reader {
        let _ = r.read_to_string(&mut out).await;
    }
    out
}

fn exit(status: std::process::ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "was killed by a signal".to_owned(),
    }
}

fn tail(stderr: &str) -> String {
    match stderr.lines().rev().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => format!(": {line}"),
        None => String::new(),
    }
}

fn file_name(path: &Path) -> Result<String, String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| format!("{} has no usable file name", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_script_is_byte_exact_through_eval() {
        let env = BTreeMap::from([
            (
                "A".to_owned(),
                "a'b\"c $(touch /tmp/castra-env-test)\nline2".to_owned(),
            ),
            ("B".to_owned(), String::new()),
            ("C".to_owned(), "trailing newline\n\n".to_owned()),
        ]);
        let script = format!("{WRAPPER}");
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                &script,
                "castra",
                "/",
                "sh",
                "-c",
                "printf '%s|%s|%s' \"$A\" \"$B\" \"$C\"",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(env_script(&env).as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "a'b\"c $(touch /tmp/castra-env-test)\nline2||trailing newline\n\n"
        );
        assert!(!Path::new("/tmp/castra-env-test").exists());
    }

    #[test]
    fn program_uses_the_shebang_only_when_executable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path().join("run.sh");
        std::fs::write(&s, "#!/bin/sh\n").unwrap();
        assert_eq!(program(&s).unwrap(), ["sh", "./run.sh"]);
        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(program(&s).unwrap(), ["./run.sh"]);
        std::fs::write(&s, "echo no shebang\n").unwrap();
        assert_eq!(program(&s).unwrap(), ["sh", "./run.sh"]);
    }

    #[test]
    fn archive_carries_modes_symlinks_and_contents() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::create_dir_all(d.join("p/sub")).unwrap();
        std::fs::write(d.join("p/sub/x"), "xx").unwrap();
        std::fs::set_permissions(d.join("p/sub/x"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        std::os::unix::fs::symlink("sub/x", d.join("p/link")).unwrap();
        let (reader, writer) = std::io::pipe().unwrap();
        let (script, payload) = (d.join("run.sh"), d.join("p"));
        let t =
            std::thread::spawn(move || write_archive(writer, &script, "run.sh", Some(&payload)));
        let mut archive = tar::Archive::new(reader);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            seen.push((
                entry.path().unwrap().display().to_string(),
                h.mode().unwrap(),
                h.uid().unwrap(),
            ));
        }
        assert_eq!(t.join().unwrap().unwrap(), 10 + 2);
        let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "run.sh",
                "payload",
                "payload/link",
                "payload/sub",
                "payload/sub/x"
            ]
        );
        assert_eq!(seen[4].1, 0o750);
        assert!(seen.iter().all(|s| s.2 == 0));
    }
}

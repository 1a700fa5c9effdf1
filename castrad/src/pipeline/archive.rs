//! The archive a run sends: the script and the payload as one tar stream on the session's
//! stdin, after the env block. Entries keep their permission bits and are owned by root (a
//! non-root user unpacking gets them as its own); symlinks inside the payload are sent as
//! symlinks, as they are hashed (see `hashing`). The script and the payload root are followed
//! when they are symlinks: what is sent is what they point to, which is what was hashed.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes the tar stream the driver unpacks into remote_dir: the script under its own name,
/// then the payload under `payload/`. Returns the bytes of file content sent.
pub fn write_archive(
    writer: std::io::PipeWriter,
    script: &Path,
    script_name: &str,
    payload: Option<&Path>,
) -> std::io::Result<u64> {
    let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 16, writer));
    let mut bytes = append(&mut tar, script, Path::new(script_name), Follow::Yes)?;
    if let Some(payload) = payload {
        let meta = std::fs::metadata(payload)?;
        if meta.is_dir() {
            bytes += append_tree(&mut tar, payload, Path::new("payload"), Follow::Yes)?;
        } else {
            let name = payload.file_name().unwrap_or_default();
            let name = Path::new("payload").join(name);
            bytes += append(&mut tar, payload, &name, Follow::Yes)?;
        }
    }
    tar.into_inner()?.flush()?;
    Ok(bytes)
}

/// Whether an entry that is a symlink is sent as what it points to (the script and the
/// payload root) or as a symlink (everything inside the payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Follow {
    Yes,
    No,
}

fn append_tree<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    name: &Path,
    follow: Follow,
) -> std::io::Result<u64> {
    let mut bytes = append(tar, dir, name, follow)?;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        let child = name.join(path.file_name().unwrap_or_default());
        if std::fs::symlink_metadata(&path)?.is_dir() {
            bytes += append_tree(tar, &path, &child, Follow::No)?;
        } else {
            bytes += append(tar, &path, &child, Follow::No)?;
        }
    }
    Ok(bytes)
}

/// One entry with its permission bits, owned by root (ignored when a non-root user unpacks).
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    name: &Path,
    follow: Follow,
) -> std::io::Result<u64> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = match follow {
        Follow::Yes => std::fs::metadata(path)?,
        Follow::No => std::fs::symlink_metadata(path)?,
    };
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

#[cfg(test)]
mod tests {
    use super::*;

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

//! Random identifiers (run ids, disk ids, operation ids, nonces) and hex encoding.
//!
//! Identifiers come from the kernel's CSPRNG: a run id or a marker nonce must not be guessable
//! by a guest that would like to forge castrad's progress markers.

use std::time::SystemTime;

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `n` random bytes as hex, from the kernel's CSPRNG.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    use std::io::Read;
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_err()
    {
        // Not reachable on Linux; fall back to time and pid, still unique per process.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let seed = format!("{nanos}-{}", std::process::id());
        use sha2::{Digest, Sha256};
        buf.copy_from_slice(&Sha256::digest(seed.as_bytes())[..n]);
    }
    hex(&buf)
}

/// A new operation id (`op-` and 12 hex digits).
pub fn operation_id() -> String {
    format!("op-{}", random_hex(6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_random_hex() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        let a = random_hex(8);
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_hex(8));
        assert!(operation_id().starts_with("op-"));
    }
}

//! Checksums files as distributions publish them, and the line for one image. Pure.
//!
//! Two forms are read, as `sha256sum`/`sha512sum` write them and as Fedora's `CHECKSUM`
//! files (BSD style, inside a PGP clear-signed message) have them:
//!
//! ```text
//! 0123…cdef  debian-12-genericcloud-amd64.qcow2        GNU (text mode)
//! 0123…cdef *ubuntu-24.04-server-cloudimg-amd64.img    GNU (binary mode)
//! SHA256 (Fedora-Cloud-Base-Generic-44-1.7.x86_64.qcow2) = 0123…cdef   BSD
//! ```
//!
//! The function comes from the BSD tag, or from the digest's length in the GNU form. Other
//! lines (comments, PGP armour, blank lines, other files) are skipped. A file that lists the
//! name twice with different digests of the same function is refused: castrad cannot know
//! which one the server meant.

use super::source::{Algo, Digest};

/// The most of a checksums file castrad reads (Debian's SHA512SUMS lists a few dozen images).
pub const MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SumsError {
    #[error("the checksums file lists no digest for {name:?}")]
    Missing { name: String },
    #[error("the checksums file lists {name:?} twice with different {algo} digests")]
    Conflict { name: String, algo: &'static str },
}

/// The digest `text` (a checksums file) gives for the file `name`. With several functions
/// listed for it, the strongest (sha512) wins.
pub fn lookup(text: &str, name: &str) -> Result<Digest, SumsError> {
    let mut found: Option<Digest> = None;
    for line in text.lines() {
        let Some((digest, listed)) = parse_line(line) else {
            continue;
        };
        if listed != name && listed.strip_prefix("./") != Some(name) {
            continue;
        }
        match &found {
            Some(prev) if prev.algo == digest.algo && prev.hex != digest.hex => {
                return Err(SumsError::Conflict {
                    name: name.to_owned(),
                    algo: digest.algo.as_str(),
                });
            }
            Some(prev) if prev.algo >= digest.algo => {}
            _ => found = Some(digest),
        }
    }
    found.ok_or_else(|| SumsError::Missing {
        name: name.to_owned(),
    })
}

/// One line: the digest and the file name it is for.
fn parse_line(line: &str) -> Option<(Digest, &str)> {
    let line = line.trim_end_matches('\r');
    // BSD: `SHA256 (name) = hex`.
    if let Some((tag, rest)) = line.split_once(" (") {
        let algo = match tag.trim() {
            "SHA256" => Algo::Sha256,
            "SHA512" => Algo::Sha512,
            _ => return None,
        };
        let (name, hex) = rest.rsplit_once(") = ")?;
        return Some((Digest::from_hex(algo, hex.trim())?, name));
    }
    // GNU: `hex  name` or `hex *name`.
    let (hex, rest) = line.split_once(' ')?;
    let algo = match hex.len() {
        64 => Algo::Sha256,
        128 => Algo::Sha512,
        _ => return None,
    };
    let name = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*'))?;
    (!name.is_empty()).then_some(())?;
    Some((Digest::from_hex(algo, hex)?, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(c: char, n: usize) -> String {
        std::iter::repeat_n(c, n).collect()
    }

    #[test]
    fn gnu_lines_in_text_and_binary_mode() {
        let text = format!(
            "{}  other.qcow2\n{} *debian.qcow2\n",
            hex('a', 64),
            hex('b', 64)
        );
        assert_eq!(
            lookup(&text, "debian.qcow2").unwrap(),
            Digest::sha256(&hex('b', 64)).unwrap()
        );
        let text = format!("{}  ./debian.qcow2\n", hex('c', 128));
        let d = lookup(&text, "debian.qcow2").unwrap();
        assert_eq!((d.algo, d.hex), (Algo::Sha512, hex('c', 128)));
    }

    #[test]
    fn fedora_style_clear_signed_bsd_lines() {
        let text = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n\
             # Fedora-Cloud-Base-Generic-44-1.7.x86_64.qcow2: 528154624 bytes\n\
             SHA256 (Fedora-Cloud-Base-Generic-44-1.7.x86_64.qcow2) = {}\n\
             SHA256 (Fedora-Cloud-Base-AmazonEC2-44-1.7.x86_64.raw.xz) = {}\n\
             -----BEGIN PGP SIGNATURE-----\nabc\n-----END PGP SIGNATURE-----\n",
            hex('d', 64),
            hex('e', 64)
        );
        let d = lookup(&text, "Fedora-Cloud-Base-Generic-44-1.7.x86_64.qcow2").unwrap();
        assert_eq!(d.hex, hex('d', 64));
    }

    #[test]
    fn missing_and_conflicting_names_are_errors() {
        let text = format!("{}  a.img\n{}  a.img\n", hex('1', 64), hex('2', 64));
        assert!(matches!(
            lookup(&text, "b.img"),
            Err(SumsError::Missing { .. })
        ));
        assert!(matches!(
            lookup(&text, "a.img"),
            Err(SumsError::Conflict { .. })
        ));
        // A name that is only a suffix of a listed one is not it.
        let text = format!("{}  xa.img\n", hex('1', 64));
        assert!(lookup(&text, "a.img").is_err());
    }

    #[test]
    fn the_strongest_function_listed_wins() {
        let text = format!("{}  a.img\n{}  a.img\n", hex('1', 128), hex('2', 64));
        assert_eq!(lookup(&text, "a.img").unwrap().algo, Algo::Sha512);
    }

    #[test]
    fn props_no_line_panics() {
        use proptest::prelude::*;
        proptest!(|(text in ".{0,300}", name in "[a-z.]{0,12}")| {
            let _ = lookup(&text, &name);
        });
    }
}

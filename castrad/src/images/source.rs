//! Where a base image comes from, as castra.toml names it: a file here, a URL, or a catalog
//! name; and how its content is checked (a digest, or a published checksums file). Pure.

use std::fmt;
use std::path::PathBuf;

/// A hash function the store checks images with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algo {
    Sha256,
    Sha512,
}

impl Algo {
    pub fn as_str(self) -> &'static str {
        match self {
            Algo::Sha256 => "sha256",
            Algo::Sha512 => "sha512",
        }
    }

    /// Hex digits in a digest of this function.
    pub fn hex_len(self) -> usize {
        match self {
            Algo::Sha256 => 64,
            Algo::Sha512 => 128,
        }
    }
}

/// A content digest, `sha256:<64 hex>` or `sha512:<128 hex>`; the hex is kept lowercase.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    pub algo: Algo,
    pub hex: String,
}

impl Digest {
    /// Parses `sha256:<hex>` or `sha512:<hex>` (either case); the error says what was expected.
    pub fn parse(text: &str) -> Result<Digest, String> {
        let expected = "expected \"sha256:<64 hex digits>\" or \"sha512:<128 hex digits>\"";
        let Some((algo, hex)) = text.split_once(':') else {
            return Err(format!("{text:?} names no hash function; {expected}"));
        };
        let algo = match algo.to_ascii_lowercase().as_str() {
            "sha256" => Algo::Sha256,
            "sha512" => Algo::Sha512,
            other => return Err(format!("unknown hash function {other:?}; {expected}")),
        };
        Digest::from_hex(algo, hex).ok_or_else(|| {
            format!(
                "{text:?} is not a {} digest ({} hex digits); {expected}",
                algo.as_str(),
                algo.hex_len()
            )
        })
    }

    /// A digest of `algo` from its hex digits, if they are exactly that many.
    pub fn from_hex(algo: Algo, hex: &str) -> Option<Digest> {
        (hex.len() == algo.hex_len() && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| {
            Digest {
                algo,
                hex: hex.to_ascii_lowercase(),
            }
        })
    }

    pub fn sha256(hex: &str) -> Option<Digest> {
        Digest::from_hex(Algo::Sha256, hex)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo.as_str(), self.hex)
    }
}

/// How an image's content is checked before the store takes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Check {
    /// `base_image_digest`.
    Digest(Digest),
    /// `base_image_checksums`: the URL of a SHA256SUMS / SHA512SUMS / CHECKSUM file, whose
    /// line for the image's file name gives the digest.
    Sums(String),
    /// Nothing to check against (an `https://` image the user did not give a checksum for;
    /// `plan` says it is unverified).
    Unverified,
}

/// Where a VM's base image comes from (`base_image` and its companion keys).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// A file on this machine (absolute). `import`: copied into the store at first use
    /// (`base_image_import`, default true); false keeps backing the disk by this path.
    /// `digest`: what the user says its content is (checked when it is read).
    File {
        path: PathBuf,
        import: bool,
        digest: Option<Digest>,
    },
    /// `https://`, `http://` or `file://`.
    Url { url: String, check: Check },
    /// A name from the catalog (`catalog.toml`), resolved to a URL and checksums file with
    /// the mirror at fetch time.
    Catalog { name: String },
}

impl Source {
    /// What a person reads for it: the path, the URL, or the catalog name.
    pub fn label(&self) -> String {
        match self {
            Source::File { path, .. } => path.display().to_string(),
            Source::Url { url, .. } => url.clone(),
            Source::Catalog { name } => name.clone(),
        }
    }
}

/// The schemes `base_image` and `base_image_checksums` may use.
pub const SCHEMES: [&str; 3] = ["https", "http", "file"];

/// Whether `text` is written as a URL (`scheme://...`), and its scheme if so.
pub fn url_scheme(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once("://")?;
    (!scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)))
    .then_some(scheme)
}

/// Checks a URL castrad would fetch: one of [`SCHEMES`], parseable, with a host (`https`,
/// `http`) or an absolute path (`file`), and a file name to look up in a checksums file.
pub fn check_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a valid URL: {e}"))?;
    if !SCHEMES.contains(&url.scheme()) {
        return Err(format!(
            "{text:?} uses the scheme {}: castrad fetches https://, http:// and file:// URLs",
            url.scheme()
        ));
    }
    if url.scheme() != "file" && url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?} names no host"));
    }
    if file_name(&url).is_none() {
        return Err(format!("{text:?} names no file (its path ends with '/')"));
    }
    Ok(url)
}

/// The last segment of the URL's path, percent-decoded: the name a checksums file lists the
/// image under.
pub fn file_name(url: &url::Url) -> Option<String> {
    let last = url.path_segments()?.next_back()?;
    if last.is_empty() {
        return None;
    }
    let decoded = percent_decode(last);
    (!decoded.is_empty()).then_some(decoded)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_in_either_case_and_print_lowercase() {
        let hex = "AB".repeat(32);
        let d = Digest::parse(&format!("SHA256:{hex}")).unwrap();
        assert_eq!(d.to_string(), format!("sha256:{}", "ab".repeat(32)));
        let d = Digest::parse(&format!("sha512:{}", "0".repeat(128))).unwrap();
        assert_eq!(d.algo, Algo::Sha512);
    }

    #[test]
    fn a_bad_digest_says_what_was_expected() {
        for text in [
            "abc",
            "md5:0123",
            "sha256:0123",
            &format!("sha256:{}", "g".repeat(64)),
            &format!("sha512:{}", "0".repeat(64)),
        ] {
            let e = Digest::parse(text).unwrap_err();
            assert!(
                e.contains("expected \"sha256:<64 hex digits>\""),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn urls_are_checked_for_scheme_host_and_file_name() {
        assert!(check_url("https://cloud.debian.org/images/x/debian.qcow2").is_ok());
        assert!(check_url("file:///srv/images/base.qcow2").is_ok());
        let e = check_url("ftp://example.org/base.qcow2").unwrap_err();
        assert!(e.contains("scheme ftp"), "{e}");
        let e = check_url("https://example.org/images/").unwrap_err();
        assert!(e.contains("names no file"), "{e}");
        assert!(check_url("https:///x.img").is_err());
    }

    #[test]
    fn the_file_name_is_the_last_segment_decoded() {
        let url = url::Url::parse("https://h/a/b/my%20image.qcow2?x=1").unwrap();
        assert_eq!(file_name(&url).as_deref(), Some("my image.qcow2"));
    }

    #[test]
    fn a_scheme_is_only_what_comes_before_colon_slash_slash() {
        assert_eq!(url_scheme("https://x/y"), Some("https"));
        assert_eq!(url_scheme("images/debian.qcow2"), None);
        assert_eq!(url_scheme("./a://b"), None);
    }
}

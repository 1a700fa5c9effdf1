//! The catalog of named images (`base_image = "debian-12"`): the data lives in
//! `castrad/api/src/catalog.toml` (not in code; in the shared crate because castractl reads
//! it too), compiled in and parsed once. Pure.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

/// One named image.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub description: String,
    /// Where the distribution publishes the image.
    pub url: String,
    /// The checksums file published beside it.
    pub checksums: String,
    /// The image's own default login user (castrad's seed makes its own user; shown by
    /// `castractl image catalog` for people who log in another way).
    pub user: String,
}

const DATA: &str = castra_api::CATALOG_TOML;

/// Every entry, by name (parsed once; the file is checked by this module's tests).
pub fn entries() -> &'static BTreeMap<String, Entry> {
    static ENTRIES: OnceLock<BTreeMap<String, Entry>> = OnceLock::new();
    ENTRIES.get_or_init(|| toml::from_str(DATA).unwrap_or_default())
}

pub fn get(name: &str) -> Option<&'static Entry> {
    entries().get(name)
}

/// The names, for error messages ("one of debian-12, debian-13, ...").
pub fn names() -> Vec<&'static str> {
    entries().keys().map(String::as_str).collect()
}

/// Where the image `name` and its checksums file are fetched from: the entry's own URLs, or,
/// with a mirror, `<mirror>/<name>/<file name>` for each.
pub fn resolve(name: &str, entry: &Entry, mirror: Option<&str>) -> (String, String) {
    match mirror {
        None => (entry.url.clone(), entry.checksums.clone()),
        Some(mirror) => {
            let mirror = mirror.trim_end_matches('/');
            let last = |url: &str| url.rsplit('/').next().unwrap_or_default().to_owned();
            (
                format!("{mirror}/{name}/{}", last(&entry.url)),
                format!("{mirror}/{name}/{}", last(&entry.checksums)),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_file_parses_and_every_entry_is_fetchable() {
        let parsed: BTreeMap<String, Entry> = toml::from_str(DATA).expect("catalog.toml parses");
        assert_eq!(&parsed, entries());
        for name in ["debian-12", "debian-13", "ubuntu-22.04", "ubuntu-24.04"] {
            assert!(parsed.contains_key(name), "{name} is in the catalog");
        }
        assert!(parsed.keys().any(|k| k.starts_with("fedora-")));
        for (name, e) in &parsed {
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)),
                "{name} is file-name safe"
            );
            for url in [&e.url, &e.checksums] {
                let u = super::super::source::check_url(url).unwrap();
                assert_eq!(u.scheme(), "https", "{name}: {url}");
            }
        }
    }

    #[test]
    fn a_mirror_serves_each_name_in_a_directory_of_its_own() {
        let e = get("debian-12").unwrap();
        let (url, sums) = resolve("debian-12", e, Some("http://127.0.0.1:8080/m/"));
        assert_eq!(
            url,
            "http://127.0.0.1:8080/m/debian-12/debian-12-genericcloud-amd64.qcow2"
        );
        assert_eq!(sums, "http://127.0.0.1:8080/m/debian-12/SHA512SUMS");
        assert_eq!(
            resolve("debian-12", e, None),
            (e.url.clone(), e.checksums.clone())
        );
    }
}

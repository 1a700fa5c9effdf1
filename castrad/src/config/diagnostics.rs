//! Where an error points: the source text of a file being validated ([`Source`]), byte
//! offsets to 1-based lines and columns, key paths, and the translation of toml/serde's
//! errors into ours (with a "did you mean" for unknown keys).

use std::ops::Range;
use std::path::Path;

use serde::de::DeserializeOwned;
use toml::Spanned;

use super::ConfigError;

const SPANNED_PRIVATE_PREFIX: &str = "$__serde_spanned_private_";

// ---------------------------------------------------------------------------------------------
// Source text, locations, error construction
// ---------------------------------------------------------------------------------------------

/// A file being validated: errors point into its text.
pub(super) struct Source<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Source<'_> {
    pub(super) fn error(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = span.map_or((1, 1), |s| line_col(self.text, s.start));
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            key: key.to_owned(),
            message: message.into(),
        }
    }

    pub(super) fn at<T>(
        &self,
        value: &Spanned<T>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        self.error(Some(value.span()), key, message)
    }

    pub(super) fn line_of(&self, span: &Range<usize>) -> usize {
        line_col(self.text, span.start).0
    }

    pub(super) fn dir(&self) -> &Path {
        self.path.parent().unwrap_or_else(|| Path::new("/"))
    }
}

/// 1-based (line, column) of a byte offset; the column counts characters.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// `prefix.name`, or just `name` at the top level.
pub(super) fn join_key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A table key as it would appear in a dotted key path (quoted when not a bare TOML key).
pub(super) fn key_segment(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

// ---------------------------------------------------------------------------------------------
// Deserialization and translation of toml/serde errors
// ---------------------------------------------------------------------------------------------

/// Parses the TOML text of `src` into `T`, turning every failure into a located error.
pub(super) fn deserialize<T: DeserializeOwned>(src: &Source<'_>) -> Result<T, ConfigError> {
    let deserializer = toml::Deserializer::parse(src.text)
        .map_err(|e| src.error(e.span(), "", format!("TOML syntax error: {}", e.message())))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| translate_serde_error(src, &e))
}

pub(super) enum Segment {
    Key(String),
    Index(usize),
}

pub(super) fn path_segments(path: &serde_path_to_error::Path) -> Vec<Segment> {
    use serde_path_to_error::Segment as S;
    path.iter()
        .filter_map(|segment| match segment {
            S::Seq { index } => Some(Segment::Index(*index)),
            S::Map { key } if key.starts_with(SPANNED_PRIVATE_PREFIX) => None,
            S::Map { key } => Some(Segment::Key(key.clone())),
            S::Enum { variant } => Some(Segment::Key(variant.clone())),
            S::Unknown => None,
        })
        .collect()
}

pub(super) fn render_path(segments: &[Segment]) -> String {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
            Segment::Key(k) if out.is_empty() => out.push_str(&key_segment(k)),
            Segment::Key(k) => {
                out.push('.');
                out.push_str(&key_segment(k));
            }
        }
    }
    out
}

pub(super) fn translate_serde_error(
    src: &Source<'_>,
    err: &serde_path_to_error::Error<toml::de::Error>,
) -> ConfigError {
    let inner = err.inner();
    let mut segments = path_segments(err.path());
    let message = inner.message();
    if message.starts_with("unknown field `") {
        let unknown = match segments.pop() {
            Some(Segment::Key(k)) => k,
            _ => first_backticked(message).unwrap_or_default().to_owned(),
        };
        let rest = message
            .strip_prefix(&format!("unknown field `{unknown}`"))
            .unwrap_or(message);
        let expected = backticked(rest);
        let text = unknown_key_message(&unknown, &expected, segments.is_empty());
        return src.error(inner.span(), &render_path(&segments), text);
    }
    src.error(
        inner.span(),
        &render_path(&segments),
        humanize_serde_message(message),
    )
}

/// Rewrites serde's phrasing ("invalid type: string \"x\", expected i64") into ours.
pub(super) fn humanize_serde_message(message: &str) -> String {
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        return format!("missing required key `{field}`");
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((found, expected)) = message
            .strip_prefix(prefix)
            .and_then(|r| r.rsplit_once(", expected "))
        {
            return format!(
                "expected {}, found {}",
                describe_expected(expected),
                describe_found(found)
            );
        }
    }
    message.to_owned()
}

pub(super) fn describe_expected(expected: &str) -> String {
    match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" => "an integer".to_owned(),
        "a boolean" => "a boolean (true or false)".to_owned(),
        "a sequence" => "an array".to_owned(),
        "a map" => "a table".to_owned(),
        s if s.starts_with("struct ") => "a table".to_owned(),
        s => s.to_owned(),
    }
}

pub(super) fn describe_found(found: &str) -> String {
    match found {
        "map" => "a table".to_owned(),
        "sequence" => "an array".to_owned(),
        s => s.to_owned(),
    }
}

pub(super) fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

pub(super) fn first_backticked(s: &str) -> Option<&str> {
    backticked(s).into_iter().next()
}

pub(super) fn unknown_key_message(unknown: &str, expected: &[&str], top_level: bool) -> String {
    let what = if top_level {
        "unknown top-level key"
    } else {
        "unknown key"
    };
    if let Some(suggestion) = suggest(unknown, expected) {
        return format!("{what} `{unknown}`; did you mean `{suggestion}`?");
    }
    if expected.is_empty() {
        return format!("{what} `{unknown}`; this table takes no keys");
    }
    let list: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
    format!("{what} `{unknown}`; expected one of {}", list.join(", "))
}

/// The known key closest to `unknown`, if it is close enough to be a plausible typo: within
/// a third of its length in edits (at least one), or sharing most of its characters in order.
pub(super) fn suggest<'a>(unknown: &str, candidates: &[&'a str]) -> Option<&'a str> {
    const JARO_WINKLER_THRESHOLD: f64 = 0.85;
    // The edit distance takes a table of len × len: no key is this long, so no suggestion.
    const LONGEST: usize = 256;
    if unknown.len() > LONGEST {
        return None;
    }
    let unknown = unknown.to_ascii_lowercase();
    let max_edits = (unknown.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| {
            let edits = strsim::damerau_levenshtein(&unknown, c);
            let similarity = strsim::jaro_winkler(&unknown, c);
            (edits, similarity, *c)
        })
        .filter(|(edits, similarity, _)| {
            *edits <= max_edits || *similarity >= JARO_WINKLER_THRESHOLD
        })
        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)))
        .map(|(_, _, c)| c)
}

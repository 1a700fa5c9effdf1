//! Error helpers shared by every layer: how an error and its causes read as text.
//!
//! Each module has its own `thiserror` enum; this module only knows the `std::error::Error`
//! chain. `rpc::error` puts the chain in JSON-RPC `error.data`; the pipeline writes it into a
//! failed run's log.

/// The error and each of its sources, outermost first, skipping a source whose text the
/// outer message already includes (thiserror's `transparent` and `{source}` patterns).
pub fn chain(err: &dyn std::error::Error) -> Vec<String> {
    let mut out: Vec<String> = vec![err.to_string()];
    let mut next = err.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !out.last().is_some_and(|prev| prev.contains(&text)) {
            out.push(text);
        }
        next = e.source();
    }
    out
}

/// The whole chain on one line, `outer: cause: cause`.
pub fn one_line(err: &dyn std::error::Error) -> String {
    chain(err).join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_lists_sources_without_repeating_them() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = crate::hashing::HashError::Read {
            path: "/img".into(),
            source: io,
        };
        assert_eq!(
            chain(&err),
            vec!["cannot read /img".to_owned(), "no such file".to_owned()]
        );
        assert_eq!(one_line(&err), "cannot read /img: no such file");
    }
}

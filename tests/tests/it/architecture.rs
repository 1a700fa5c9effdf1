//! ARCHITECTURE.md's claims, checked against the code: the layers of castrad's modules (no
//! import cycles, no upward import but the ones the document names), which modules use the
//! wire types and `anyhow`, that only `state_root` builds paths under the state directory,
//! that every file the document names exists, and that no source file grows past 800 lines.
//!
//! The import graph is read from the source text (`crate::`, `super::`, `self::` paths and
//! `use` of child modules), outside `#[cfg(test)] mod tests`. It is a reading, not a compiler:
//! it sees every path a person reading the file would see.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn architecture_md() -> String {
    std::fs::read_to_string(workspace().join("ARCHITECTURE.md")).unwrap()
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// castrad's modules: module path (`pipeline::steps`, `vm`) → the file's text without its test
/// module. Test-only files (`tests.rs`, `testutil.rs`) and the crate root are left out.
fn castrad_modules() -> BTreeMap<String, (PathBuf, String)> {
    let src = workspace().join("castrad/src");
    let mut out = BTreeMap::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        if parts.iter().any(|p| p == "tests" || p == "testutil")
            || matches!(parts.as_slice(), [p] if p == "lib" || p == "main")
        {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        out.insert(parts.join("::"), (file, without_tests(&text)));
    }
    out
}

/// The text before `#[cfg(test)] mod tests`, without `//` comments.
fn without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod tests"))
        {
            break;
        }
        let code = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn ident_at(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// The paths named after a `prefix::` at the start of `rest`: `a::b::C`, or each item of a
/// group `a::{b, c::D}`. Returns the segments after the prefix.
fn paths_after(rest: &str) -> Vec<Vec<String>> {
    let mut segments = Vec::new();
    let mut s = rest;
    loop {
        let (ident, after) = ident_at(s);
        if ident.is_empty() {
            break;
        }
        segments.push(ident.to_owned());
        match after.strip_prefix("::") {
            Some(next) => s = next,
            None => return vec![segments],
        }
    }
    // A group: `{a, b::c, self}` (nested groups name at least their first segment).
    let Some(group) = s.strip_prefix('{') else {
        return vec![segments];
    };
    let mut out = Vec::new();
    let mut depth = 0;
    let mut item = String::new();
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.extend(item_path(&segments, &item));
                item.clear();
                continue;
            }
            _ => {}
        }
        if depth == 0 {
            item.push(c);
        }
    }
    out.extend(item_path(&segments, &item));
    out
}

fn item_path(prefix: &[String], item: &str) -> Option<Vec<String>> {
    let (first, _) = ident_at(item.trim());
    if first == "self" {
        return Some(prefix.to_vec());
    }
    (!first.is_empty()).then(|| {
        let mut path = prefix.to_vec();
        path.extend(
            item.trim()
                .split("::")
                .map(|s| ident_at(s.trim()).0.to_owned())
                .filter(|s| !s.is_empty()),
        );
        path
    })
}

/// The `pub use` statements of a module's text (re-exports: names, not dependencies), and
/// the text without them.
fn split_reexports(text: &str) -> (Vec<String>, String) {
    let mut reexports = Vec::new();
    let mut rest = String::new();
    let mut s = text;
    while let Some(i) = s.find("pub use ") {
        let at_line_start =
            s[..i].ends_with('\n') || i == 0 || s[..i].trim_end_matches(' ').ends_with('\n');
        let end = s[i..].find(';').map_or(s.len(), |e| i + e + 1);
        rest.push_str(&s[..i]);
        if at_line_start {
            reexports.push(s[i + "pub use ".len()..end - 1].to_owned());
        } else {
            rest.push_str(&s[i..end]);
        }
        s = &s[end..];
    }
    rest.push_str(s);
    (reexports, rest)
}

/// The base path a path starting with `first` is relative to, in `module`: `crate`, `super`,
/// `self`, or a child module of a folder's `mod.rs`.
fn base_of(
    first: &str,
    own: &[String],
    is_dir_root: bool,
    children: &BTreeSet<String>,
) -> Option<Vec<String>> {
    Some(match first {
        "crate" => Vec::new(),
        // `super` of `a::b` (a/b.rs) is `a`; of `a` (a/mod.rs) the crate root.
        "super" => own[..own.len() - 1].to_vec(),
        "self" => own.to_vec(),
        child if is_dir_root && children.contains(child) => {
            let mut p = own.to_vec();
            p.push(child.to_owned());
            p
        }
        _ => return None,
    })
}

/// module → the modules it uses. A name a module re-exports (`pub use child::Name`) counts as
/// a use of the module that defines it, not of the one re-exporting it.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    struct Module {
        own: Vec<String>,
        is_dir_root: bool,
        children: BTreeSet<String>,
        code: String,
        reexports: Vec<String>,
    }
    let modules: BTreeMap<String, Module> = castrad_modules()
        .into_iter()
        .map(|(name, (file, text))| {
            let (reexports, code) = split_reexports(&text);
            let children = text
                .lines()
                .filter_map(|l| {
                    let l = l.trim();
                    let l = l.strip_prefix("pub ").unwrap_or(l);
                    l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
                })
                .collect();
            let module = Module {
                own: name.split("::").map(str::to_owned).collect(),
                is_dir_root: file.ends_with("mod.rs"),
                children,
                code,
                reexports,
            };
            (name, module)
        })
        .collect();
    // (module, name) → the full path the name was re-exported from.
    let mut reexported: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (name, m) in &modules {
        for statement in &m.reexports {
            let (first, after) = ident_at(statement.trim());
            let Some(base) = base_of(first, &m.own, m.is_dir_root, &m.children) else {
                continue;
            };
            let tail = if first == "crate" || first == "super" || first == "self" {
                after.strip_prefix("::").unwrap_or(after)
            } else {
                statement.trim()
            };
            for path in paths_after(tail) {
                let mut full = base.clone();
                full.extend(path);
                if let Some(last) = full.last() {
                    reexported.insert((name.clone(), last.clone()), full.clone());
                }
            }
        }
    }
    fn resolve(
        path: &[String],
        modules: &BTreeMap<String, Module>,
        reexported: &BTreeMap<(String, String), Vec<String>>,
        depth: usize,
    ) -> Option<String> {
        let n = (1..=path.len())
            .rev()
            .find(|n| modules.contains_key(&path[..*n].join("::")))?;
        let module = path[..n].join("::");
        if let Some(next) = path.get(n)
            && depth < 8
            && let Some(target) = reexported.get(&(module.clone(), next.clone()))
        {
            return resolve(target, modules, reexported, depth + 1);
        }
        Some(module)
    }
    let mut graph = BTreeMap::new();
    for (name, m) in &modules {
        let mut uses = BTreeSet::new();
        let text = &m.code;
        for (i, _) in text.match_indices("::") {
            let before = &text[..i];
            let word_start = before
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |p| p + 1);
            // Only the first `::` of a path: `crate::a::b` is read once, at `crate`.
            if before[..word_start].ends_with("::") {
                continue;
            }
            let Some(base) = base_of(&before[word_start..], &m.own, m.is_dir_root, &m.children)
            else {
                continue;
            };
            for tail in paths_after(&text[i + 2..]) {
                let mut path = base.clone();
                path.extend(tail);
                if let Some(target) = resolve(&path, &modules, &reexported, 0)
                    && &target != name
                {
                    uses.insert(target);
                }
            }
        }
        graph.insert(name.clone(), uses);
    }
    graph
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = stack.iter().position(|n| n == node).unwrap();
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

/// The backticked words of `line`.
fn backticked(line: &str) -> Vec<String> {
    line.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The section of ARCHITECTURE.md under `heading` (up to the next `## `).
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("ARCHITECTURE.md has no section {heading:?}"));
    let rest = &doc[start + heading.len()..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

/// The layer table: module path prefix → layer number (1 = bottom).
fn layers(doc: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in section(doc, "## Layers").lines() {
        let Some(row) = line.strip_prefix("| ") else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(layer) = cells
            .first()
            .and_then(|c| c.split(' ').next()?.parse().ok())
        else {
            continue;
        };
        for module in backticked(cells.get(1).copied().unwrap_or("")) {
            assert!(
                out.insert(module.clone(), layer).is_none(),
                "{module} is in two layers"
            );
        }
    }
    assert!(!out.is_empty(), "ARCHITECTURE.md's layer table is empty");
    out
}

fn layer_of(module: &str, layers: &BTreeMap<String, usize>) -> Option<usize> {
    let parts: Vec<&str> = module.split("::").collect();
    (1..=parts.len())
        .rev()
        .find_map(|n| layers.get(&parts[..n].join("::")).copied())
}

/// The upward imports ARCHITECTURE.md allows: lines `- `a` → `b`: why`.
fn declared_upward(doc: &str) -> BTreeSet<(String, String)> {
    section(doc, "## Layers")
        .lines()
        .filter(|l| l.starts_with("- ") && l.contains('→'))
        .map(|l| {
            let words = backticked(l);
            assert!(words.len() >= 2, "unreadable upward import line {l:?}");
            (words[0].clone(), words[1].clone())
        })
        .collect()
}

/// `a` is `b` or inside it.
fn within(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}::"))
}

#[test]
fn castrad_has_no_import_cycle() {
    let graph = import_graph();
    // A file may use its own folder's `mod.rs` (the folder's entry points and shared types,
    // `super::Ctx`): that is the folder talking to itself, not a cycle between parts.
    let graph: BTreeMap<String, BTreeSet<String>> = graph
        .into_iter()
        .map(|(m, uses)| {
            let uses = uses.into_iter().filter(|u| !within(&m, u)).collect();
            (m, uses)
        })
        .collect();
    assert!(
        graph.len() > 20,
        "the module reader found too few modules: {graph:?}"
    );
    assert!(
        graph["vm::actor"].contains("pipeline"),
        "the module reader misses imports: {:?}",
        graph["vm::actor"]
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" → "));
    }
}

#[test]
fn modules_only_use_their_own_layer_or_below_except_where_architecture_md_says() {
    let doc = architecture_md();
    let layers = layers(&doc);
    let graph = import_graph();
    let mut upward = BTreeSet::new();
    for (module, uses) in &graph {
        let mine = layer_of(module, &layers)
            .unwrap_or_else(|| panic!("module {module} is missing from ARCHITECTURE.md's layers"));
        for used in uses {
            let theirs = layer_of(used, &layers)
                .unwrap_or_else(|| panic!("module {used} is missing from the layers"));
            if theirs > mine {
                upward.insert((module.clone(), used.clone()));
            }
        }
    }
    let declared = declared_upward(&doc);
    assert_eq!(
        upward, declared,
        "upward imports in the code (left) and in ARCHITECTURE.md (right) differ"
    );
    assert!(upward.len() <= 3, "more than three upward imports");
    for entry in layers.keys() {
        assert!(
            graph
                .keys()
                .any(|m| m == entry || m.starts_with(&format!("{entry}::"))),
            "ARCHITECTURE.md's layers name {entry}, which is not a module"
        );
    }
}

#[test]
fn the_wire_types_are_used_only_where_architecture_md_says() {
    let doc = architecture_md();
    // The paragraph `**Wire types.** ... `castra_api` is used by `a`, `b` ... and by no other`.
    let start = doc
        .find("**Wire types.**")
        .expect("ARCHITECTURE.md has a **Wire types.** paragraph");
    let paragraph = &doc[start..doc[start..].find("\n\n").map_or(doc.len(), |e| start + e)];
    let named = paragraph
        .split("used by")
        .nth(1)
        .and_then(|rest| rest.split("by no other").next())
        .expect("the paragraph says which modules `castra_api` is used by");
    let allowed: BTreeSet<String> = backticked(named).into_iter().collect();
    let covered = |module: &str| {
        allowed
            .iter()
            .any(|a| module == a || module.starts_with(&format!("{a}::")))
    };
    let users: BTreeSet<String> = castrad_modules()
        .into_iter()
        .filter(|(_, (_, text))| text.contains("castra_api"))
        .map(|(m, _)| m)
        .collect();
    let stray: Vec<&String> = users.iter().filter(|m| !covered(m)).collect();
    assert!(
        stray.is_empty(),
        "these modules use castra_api but ARCHITECTURE.md does not say so: {stray:?}"
    );
    for a in &allowed {
        assert!(
            users
                .iter()
                .any(|m| m == a || m.starts_with(&format!("{a}::"))),
            "ARCHITECTURE.md says {a} uses castra_api; it does not"
        );
    }
}

#[test]
fn only_state_root_builds_paths_under_the_state_directory() {
    let modules = castrad_modules();
    let (_, state_root) = &modules["state_root"];
    // The names state_root joins: `.join("stamps")`, `.join("known_hosts")`, ...
    let names: BTreeSet<String> = state_root
        .match_indices(".join(\"")
        .filter_map(|(i, m)| {
            let rest = &state_root[i + m.len()..];
            Some(rest[..rest.find('"')?].to_owned())
        })
        .collect();
    assert!(names.contains("stamps") && names.contains("known_hosts"));
    for (module, (_, text)) in &modules {
        if module == "state_root" {
            continue;
        }
        for name in &names {
            assert!(
                !text.contains(&format!(".join(\"{name}\")")),
                "{module} joins {name:?} itself; build the path in state_root"
            );
        }
        assert!(
            !text.contains("StateRoot {"),
            "{module} builds a StateRoot by hand"
        );
    }
}

#[test]
fn anyhow_stays_at_the_binary_edge() {
    let users: BTreeSet<String> = castrad_modules()
        .into_iter()
        .filter(|(_, (_, text))| text.contains("anyhow"))
        .map(|(m, _)| m)
        .collect();
    let edge: BTreeSet<String> = ["cli", "rpc::server"].map(str::to_owned).into();
    assert!(
        users.is_subset(&edge),
        "anyhow outside cli.rs and rpc/server.rs: {:?}",
        users.difference(&edge).collect::<Vec<_>>()
    );
    assert!(architecture_md().contains("`anyhow` is used only at the binary edge"));
}

#[test]
fn every_file_architecture_md_names_exists() {
    let doc = architecture_md();
    let root = workspace();
    let mut checked = 0;
    // A file named under a `### `folder/`` heading may be relative to that folder (or its
    // `src/`, or `tests/it/` for the tests crate).
    let mut bases: Vec<PathBuf> = Vec::new();
    for line in doc.lines() {
        if line.starts_with("### ") {
            bases = backticked(line)
                .iter()
                .flat_map(|w| {
                    let p = root.join(w.trim_end_matches('/'));
                    [
                        p.clone(),
                        p.join("src"),
                        p.join("tests/it"),
                        p.parent().unwrap().to_owned(),
                    ]
                })
                .collect();
        }
        for word in backticked(line) {
            let looks_like_file = [".rs", ".sh", ".md"].iter().any(|ext| word.ends_with(ext))
                && !word.contains(' ')
                && !word.contains('<');
            if !looks_like_file {
                continue;
            }
            let found = [root.clone(), root.join("castrad/src")]
                .iter()
                .chain(&bases)
                .any(|base| base.join(&word).exists());
            assert!(found, "ARCHITECTURE.md names {word}, which does not exist");
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} file names found");
}

#[test]
fn no_source_file_reaches_800_lines() {
    let root = workspace();
    let mut too_long = Vec::new();
    for dir in ["castrad", "castractl", "tests"] {
        for file in rust_files(&root.join(dir)) {
            let lines = std::fs::read_to_string(&file).unwrap().lines().count();
            if lines >= 800 {
                too_long.push(format!("{} ({lines})", file.display()));
            }
        }
    }
    assert!(too_long.is_empty(), "split these files: {too_long:?}");
}

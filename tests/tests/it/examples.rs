//! The JSON examples of proto-docs/PROTOCOL.md and docs/BOOTSTRAP.md, compared with real output.
//!
//! An example is a ```` ```json ```` block right after a `<!-- check: NAME -->` line; it holds
//! one JSON value or several (JSON lines). The first line after the block may say which fields
//! vary from run to run: ``Varies from run to run: `seq`, `time`.`` For such a field (at any
//! depth) only the JSON type is compared; every other value must be what castrad sent, after
//! the test's own paths, ports and user name are replaced by the documents' (`Scrub`).
//!
//! `CASTRA_BLESS=1` rewrites a block that differs with the real output (keeping the document's
//! values of varying fields), laid out by `layout`; review the diff like any other edit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The documents whose examples are checked.
pub const DOCS: [&str; 2] = ["proto-docs/PROTOCOL.md", "docs/BOOTSTRAP.md"];

const MARK: &str = "\n<!-- check: ";
const VARIES: &str = "Varies from run to run:";

/// One checked example.
#[derive(Debug, Clone)]
pub struct Example {
    pub doc: &'static str,
    pub values: Vec<Value>,
    pub varies: BTreeSet<String>,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Where each block of `text` is: (name, byte range of the JSON inside the fence, varies).
fn blocks(doc: &str, text: &str) -> Vec<(String, std::ops::Range<usize>, BTreeSet<String>)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find(MARK) {
        let line_start = from + at;
        let name_start = line_start + MARK.len();
        let name_end = name_start + text[name_start..].find(" -->").unwrap();
        let name = text[name_start..name_end].to_owned();
        let fence = name_end + text[name_end..].find("```json\n").unwrap();
        let start = fence + "```json\n".len();
        let end = start + text[start..].find("\n```").unwrap();
        let after = &text[end + "\n```".len()..];
        let next_line = after.trim_start_matches('\n').lines().next().unwrap_or("");
        let mut varies = BTreeSet::new();
        if let Some(list) = next_line.strip_prefix(VARIES) {
            for (i, part) in list.split('`').enumerate() {
                if i % 2 == 1 {
                    varies.insert(part.to_owned());
                }
            }
            assert!(
                !varies.is_empty(),
                "{doc}: check {name}: an empty `{VARIES}` line"
            );
        }
        out.push((name, start..end, varies));
        from = end;
    }
    out
}

/// Every checked example of both documents, by name (names are unique across them).
pub fn all() -> BTreeMap<String, Example> {
    let mut out = BTreeMap::new();
    for doc in DOCS {
        let text = std::fs::read_to_string(repo().join(doc)).unwrap();
        for (name, range, varies) in blocks(doc, &text) {
            let values = serde_json::Deserializer::from_str(&text[range])
                .into_iter::<Value>()
                .collect::<Result<Vec<_>, _>>()
                .unwrap_or_else(|e| panic!("{doc}: example {name} is not valid JSON: {e}"));
            assert!(!values.is_empty(), "{doc}: example {name} is empty");
            let example = Example {
                doc,
                values,
                varies,
            };
            assert!(
                out.insert(name.clone(), example).is_none(),
                "duplicate check {name}"
            );
        }
    }
    out
}

/// The real output's strings as the documents spell them: each of the test's own paths, ports
/// and names replaced by the documents' (longest first, so a path inside another is not cut).
#[derive(Default, Clone)]
pub struct Scrub(Vec<(String, String)>);

impl Scrub {
    pub fn new() -> Scrub {
        Scrub::default()
    }

    /// Replace `real` by `doc` in every string.
    pub fn with(mut self, real: impl AsRef<str>, doc: &str) -> Scrub {
        let real = real.as_ref().to_owned();
        assert!(!real.is_empty());
        self.0.push((real, doc.to_owned()));
        self.0.sort_by_key(|(r, _)| std::cmp::Reverse(r.len()));
        self
    }

    pub fn path(self, real: &Path, doc: &str) -> Scrub {
        self.with(real.to_str().unwrap(), doc)
    }

    /// `host:port` written with the test's port, and `user@host` with the test's user.
    pub fn endpoint(self, port: u16, doc_port: u16) -> Scrub {
        self.with(
            format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{doc_port}"),
        )
        .with(format!("port {port}"), &format!("port {doc_port}"))
    }

    pub fn user(self, real: &str, doc: &str) -> Scrub {
        self.with(format!("{real}@127.0.0.1"), &format!("{doc}@127.0.0.1"))
    }

    fn string(&self, s: &str) -> String {
        let mut s = s.to_owned();
        for (real, doc) in &self.0 {
            s = s.replace(real, doc);
        }
        s
    }

    /// `value` with every string scrubbed.
    pub fn value(&self, value: &Value) -> Value {
        match value {
            Value::String(s) => Value::String(self.string(s)),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.value(v)).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), self.value(v))).collect())
            }
            other => other.clone(),
        }
    }
}

/// The differences between a documented value and a real (scrubbed) one: a missing or extra
/// field, another type, or, outside the varying fields, another value.
fn differences(
    path: &str,
    key: &str,
    doc: &Value,
    real: &Value,
    varies: &BTreeSet<String>,
) -> Vec<String> {
    if varies.contains(key) {
        return if std::mem::discriminant(doc) == std::mem::discriminant(real) {
            vec![]
        } else {
            vec![format!(
                "{path}: {doc} in the document, {real} from castrad"
            )]
        };
    }
    match (doc, real) {
        (Value::Object(d), Value::Object(r)) => {
            let dk: Vec<_> = d.keys().collect();
            let rk: Vec<_> = r.keys().collect();
            if dk != rk {
                return vec![format!(
                    "{path}: fields {dk:?} in the document, {rk:?} from castrad"
                )];
            }
            d.iter()
                .flat_map(|(k, v)| differences(&format!("{path}.{k}"), k, v, &r[k], varies))
                .collect()
        }
        // An element goes by its array's name for `varies`.
        (Value::Array(d), Value::Array(r)) if d.len() == r.len() => d
            .iter()
            .zip(r)
            .enumerate()
            .flat_map(|(i, (d, r))| differences(&format!("{path}[{i}]"), key, d, r, varies))
            .collect(),
        (d, r) if d == r => vec![],
        (d, r) => vec![format!("{path}: {d} in the document, {r} from castrad")],
    }
}

/// Panics unless example `name` is `real` (scrubbed by `scrub`), varying fields aside. Under
/// `CASTRA_BLESS=1` it rewrites the example instead.
pub fn assert_matches(name: &str, real: &[Value], scrub: &Scrub) {
    let examples = all();
    let example = examples
        .get(name)
        .unwrap_or_else(|| panic!("no document has check {name}"));
    let real: Vec<Value> = real.iter().map(|v| scrub.value(v)).collect();
    let mut found = Vec::new();
    if example.values.len() != real.len() {
        found.push(format!(
            "{} values in the document, {} from castrad",
            example.values.len(),
            real.len()
        ));
    } else {
        for (i, (d, r)) in example.values.iter().zip(&real).enumerate() {
            found.extend(differences(&format!("${i}"), "", d, r, &example.varies));
        }
    }
    if found.is_empty() {
        return;
    }
    if std::env::var_os("CASTRA_BLESS").is_some_and(|v| v == "1") {
        bless(name, example, &real);
        return;
    }
    panic!(
        "{}: example {name} is not what castrad sends (CASTRA_BLESS=1 rewrites it):\n  {}\n\
         castrad sent (scrubbed):\n{}",
        example.doc,
        found.join("\n  "),
        real.iter()
            .map(|v| layout(v, 0))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// `real` with the document's values kept where a field varies (so a rewrite does not churn
/// times and ids).
fn keep_varying(doc: &Value, real: &Value, key: &str, varies: &BTreeSet<String>) -> Value {
    if varies.contains(key) && std::mem::discriminant(doc) == std::mem::discriminant(real) {
        return doc.clone();
    }
    match (doc, real) {
        (Value::Object(d), Value::Object(r)) => Value::Object(
            r.iter()
                .map(|(k, v)| {
                    let kept = d
                        .get(k)
                        .map_or(v.clone(), |d| keep_varying(d, v, k, varies));
                    (k.clone(), kept)
                })
                .collect(),
        ),
        // An element keeps the document's values only from an element that is the same in
        // all but its varying fields (the one at its index first).
        (Value::Array(d), Value::Array(r)) => Value::Array(
            r.iter()
                .enumerate()
                .map(|(i, v)| {
                    let same = |d: &&Value| differences("", key, d, v, varies).is_empty();
                    match d.get(i).filter(same).or_else(|| d.iter().find(same)) {
                        Some(d) => keep_varying(d, v, key, varies),
                        None => v.clone(),
                    }
                })
                .collect(),
        ),
        _ => real.clone(),
    }
}

fn bless(name: &str, example: &Example, real: &[Value]) {
    let path = repo().join(example.doc);
    let text = std::fs::read_to_string(&path).unwrap();
    let (_, range, _) = blocks(example.doc, &text)
        .into_iter()
        .find(|(n, _, _)| n == name)
        .unwrap();
    // Fields keep the order the document wrote them in (a new one goes last).
    let trees = serde_json::Deserializer::from_str(&text[range.clone()])
        .into_iter::<Order>()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let body: Vec<String> = real
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let kept = example
                .values
                .get(i)
                .map_or(r.clone(), |d| keep_varying(d, r, "", &example.varies));
            let order = trees.get(i).or(trees.last()).unwrap_or(&Order::Leaf);
            laid_out(&kept, 0, 0, order)
        })
        .collect();
    let mut new = text.clone();
    new.replace_range(range, &body.join("\n"));
    std::fs::write(&path, new).unwrap();
    eprintln!("blessed {}: {name}", example.doc);
}

/// The order of the fields of a JSON text, object by object (serde_json's `Value` keeps none).
#[derive(Debug)]
enum Order {
    Leaf,
    Object(Vec<(String, Order)>),
    Array(Vec<Order>),
}

impl Order {
    /// The order of the field `key` of this object.
    fn field(&self, key: &str) -> &Order {
        match self {
            Order::Object(fields) => fields
                .iter()
                .find(|(k, _)| k == key)
                .map_or(&Order::Leaf, |(_, o)| o),
            _ => &Order::Leaf,
        }
    }

    /// The order of element `i` of this array (its first element's for a new one).
    fn element(&self, i: usize) -> &Order {
        match self {
            Order::Array(items) => items.get(i).or(items.first()).unwrap_or(&Order::Leaf),
            _ => &Order::Leaf,
        }
    }

    /// The fields of `o`, those this object names first, in its order.
    fn fields<'a>(&self, o: &'a Map<String, Value>) -> Vec<(&'a String, &'a Value)> {
        let mut items: Vec<_> = o.iter().collect();
        if let Order::Object(fields) = self {
            items.sort_by_key(|(k, _)| {
                fields
                    .iter()
                    .position(|(f, _)| f == *k)
                    .unwrap_or(usize::MAX)
            });
        }
        items
    }
}

impl<'de> serde::Deserialize<'de> for Order {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Order, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Order;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Order, E> {
                Ok(Order::Leaf)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Order, E> {
                Ok(Order::Leaf)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Order, E> {
                Ok(Order::Leaf)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Order, E> {
                Ok(Order::Leaf)
            }
            fn visit_str<E>(self, _: &str) -> Result<Order, E> {
                Ok(Order::Leaf)
            }
            fn visit_unit<E>(self) -> Result<Order, E> {
                Ok(Order::Leaf)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Order, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = a.next_element()? {
                    items.push(item);
                }
                Ok(Order::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Order, A::Error> {
                let mut fields = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, Order>()? {
                    fields.push((k, v));
                }
                Ok(Order::Object(fields))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// A value laid out for reading: anything that fits in the line stays on one line, the rest
/// opens one level per line, two spaces each.
pub fn layout(value: &Value, indent: usize) -> String {
    laid_out(value, indent, 0, &Order::Leaf)
}

/// The members of an object (with their keys, in `order`) or an array; none for a scalar.
fn members<'a>(value: &'a Value, order: &'a Order) -> Vec<(String, &'a Value, &'a Order)> {
    match value {
        Value::Object(o) => order
            .fields(o)
            .into_iter()
            .map(|(k, v)| (format!("{}: ", Value::from(k.as_str())), v, order.field(k)))
            .collect(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (String::new(), v, order.element(i)))
            .collect(),
        _ => vec![],
    }
}

/// The brackets of an object or array.
fn brackets(value: &Value) -> (&'static str, &'static str) {
    if value.is_object() {
        ("{", "}")
    } else {
        ("[", "]")
    }
}

/// `lead` is what precedes the value on its first line; `order` the fields' order.
fn laid_out(value: &Value, indent: usize, lead: usize, order: &Order) -> String {
    let flat = flat(value, order);
    if indent + lead + flat.len() <= 96 || !(value.is_object() || value.is_array()) {
        return flat;
    }
    let pad = " ".repeat(indent + 2);
    let items: Vec<String> = members(value, order)
        .into_iter()
        .map(|(key, v, o)| format!("{pad}{key}{}", laid_out(v, indent + 2, key.len(), o)))
        .collect();
    let (open, close) = brackets(value);
    format!(
        "{open}\n{}\n{}{close}",
        items.join(",\n"),
        " ".repeat(indent)
    )
}

/// One line, with a space after `:` and `,` (and inside an object's braces).
fn flat(value: &Value, order: &Order) -> String {
    let items: Vec<String> = members(value, order)
        .into_iter()
        .map(|(key, v, o)| format!("{key}{}", flat(v, o)))
        .collect();
    match value {
        Value::Object(_) if items.is_empty() => "{}".into(),
        Value::Object(_) => format!("{{ {} }}", items.join(", ")),
        Value::Array(_) => format!("[{}]", items.join(", ")),
        other => other.to_string(),
    }
}

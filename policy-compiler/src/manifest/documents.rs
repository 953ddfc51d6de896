//! Splitting a file into documents: YAML streams and JSON, with node and size limits, and
//! each document's head (kind, apiVersion, metadata) read before its body is decoded.

use super::*;

/// One document's content: a slice of a JSON file's text (decoded only into the typed
/// object it describes) or a YAML document's tree.
pub(super) enum Body<'a> {
    Raw(&'a RawValue),
    Tree(Value),
}

pub(super) struct Doc<'a> {
    pub(super) origin: Origin,
    pub(super) body: Body<'a>,
    /// `kind` and `apiVersion` an item of a `List` takes when it has none.
    pub(super) default_kind: Option<String>,
    pub(super) default_api: Option<String>,
}

/// What the loader needs to know of a document before decoding it.
#[derive(Default)]
pub(super) struct Head {
    pub(super) is_object: bool,
    pub(super) kind: Option<String>,
    pub(super) api: Option<String>,
    pub(super) name: Option<String>,
    pub(super) namespace: Option<String>,
}

#[derive(serde::Deserialize)]
pub(super) struct RawHead {
    #[serde(default)]
    pub(super) kind: Option<Value>,
    #[serde(default, rename = "apiVersion")]
    pub(super) api_version: Option<Value>,
    #[serde(default)]
    pub(super) metadata: Option<RawMeta>,
}

#[derive(serde::Deserialize)]
pub(super) struct RawMeta {
    #[serde(default)]
    pub(super) name: Option<Value>,
    #[serde(default)]
    pub(super) namespace: Option<Value>,
}

#[derive(serde::Deserialize)]
pub(super) struct RawItems<'a> {
    #[serde(borrow)]
    pub(super) items: Vec<&'a RawValue>,
}

pub(super) fn str_of(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_string)
}

impl Doc<'_> {
    pub(super) fn head(&self) -> Head {
        let mut h = match &self.body {
            Body::Raw(r) => {
                if !r.get().trim_start().starts_with('{') {
                    Head::default()
                } else {
                    match serde_json::from_str::<RawHead>(r.get()) {
                        Ok(rh) => {
                            let meta = rh.metadata.as_ref();
                            Head {
                                is_object: true,
                                kind: str_of(rh.kind.as_ref()),
                                api: str_of(rh.api_version.as_ref()),
                                name: str_of(meta.and_then(|m| m.name.as_ref())),
                                namespace: str_of(meta.and_then(|m| m.namespace.as_ref())),
                            }
                        }
                        // Not decodable even leniently: decoding reports the real problem.
                        Err(_) => Head {
                            is_object: true,
                            ..Head::default()
                        },
                    }
                }
            }
            Body::Tree(v) => {
                let meta = v.get("metadata");
                Head {
                    is_object: v.is_object(),
                    kind: str_of(v.get("kind")),
                    api: str_of(v.get("apiVersion")),
                    name: str_of(meta.and_then(|m| m.get("name"))),
                    namespace: str_of(meta.and_then(|m| m.get("namespace"))),
                }
            }
        };
        if h.kind.is_none() {
            h.kind = self.default_kind.clone();
        }
        if h.api.is_none() {
            h.api = self.default_api.clone();
        }
        h
    }

    pub(super) fn decode<T: DeserializeOwned>(&self) -> Result<T, String> {
        let (path, msg) = match &self.body {
            Body::Raw(r) => {
                let mut de = serde_json::Deserializer::from_str(r.get());
                match serde_path_to_error::deserialize::<_, T>(&mut de) {
                    Ok(v) => return Ok(v),
                    Err(e) => (
                        e.path().to_string(),
                        strip_position(&e.into_inner().to_string()),
                    ),
                }
            }
            Body::Tree(v) => match serde_path_to_error::deserialize::<_, T>(v) {
                Ok(v) => return Ok(v),
                Err(e) => (e.path().to_string(), e.into_inner().to_string()),
            },
        };
        Err(format!("strict decoding error: {path}: {msg}"))
    }
}

/// Parses one file's documents into `b`. JSON (a `.json` file, or text starting with `{`
/// or `[`) is checked for syntax, duplicate keys and the limits in one pass, then each
/// document is decoded from its own slice of the text. Text that starts like JSON but is
/// not (a multi-document YAML file whose first document is flow-style `{...}`) is YAML.
pub(super) fn parse_documents(
    path: &Path,
    text: &str,
    opts: &LoadOptions,
    b: &mut Builder,
) -> Result<(), LoadError> {
    let ext = path.extension().and_then(|e| e.to_str());
    let looks_json = text.trim_start().starts_with(['{', '[']);
    if ext == Some("json") || looks_json {
        match check_json(text, &opts.limits) {
            Ok(()) => return parse_json(path, text, b),
            Err(e) => {
                let syntax = matches!(
                    e.classify(),
                    serde_json::error::Category::Syntax | serde_json::error::Category::Eof
                );
                if ext == Some("json") || !syntax || !matches!(ext, Some("yaml" | "yml")) {
                    return Err(LoadError::Syntax {
                        path: path.to_path_buf(),
                        line: e.line() as u64,
                        column: e.column() as u64,
                        message: strip_position(&e.to_string()),
                    });
                }
            }
        }
    }
    parse_yaml(path, text, &opts.limits, b)
}

pub(super) fn parse_json(path: &Path, text: &str, b: &mut Builder) -> Result<(), LoadError> {
    let stream = serde_json::Deserializer::from_str(text).into_iter::<&RawValue>();
    for (i, v) in stream.enumerate() {
        let raw = v.map_err(|e| LoadError::Syntax {
            path: path.to_path_buf(),
            line: e.line() as u64,
            column: e.column() as u64,
            message: strip_position(&e.to_string()),
        })?;
        if raw.get() == "null" {
            continue;
        }
        b.add(Doc {
            origin: Origin {
                file: path.to_path_buf(),
                document: i + 1,
            },
            body: Body::Raw(raw),
            default_kind: None,
            default_api: None,
        })?;
    }
    Ok(())
}

pub(super) fn parse_yaml(
    path: &Path,
    text: &str,
    limits: &Limits,
    b: &mut Builder,
) -> Result<(), LoadError> {
    let mut options = serde_saphyr::Options::default();
    let mut budget = serde_saphyr::Budget::default();
    let file_bytes = usize::try_from(limits.max_file_bytes).unwrap_or(usize::MAX);
    budget.max_reader_input_bytes = Some(file_bytes);
    budget.max_documents = limits.max_documents;
    budget.max_nodes = limits.max_nodes;
    // Every node is at most a start and an end event, every document two more.
    budget.max_events = limits
        .max_nodes
        .saturating_mul(2)
        .saturating_add(limits.max_documents.saturating_mul(2))
        .saturating_add(16);
    budget.max_total_scalar_bytes = file_bytes;
    options.budget = Some(budget);
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    let syntax = |e: serde_saphyr::Error| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        LoadError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message: first_line(&e.to_string()),
        }
    };
    let mut reader = text.as_bytes();
    // One document at a time: each is decoded into typed objects and dropped before the
    // next is parsed.
    // The streaming reader budgets each document on its own; the per-file counts are kept
    // here.
    let mut nodes = 0usize;
    for (i, v) in serde_saphyr::read_with_options::<_, Value>(&mut reader, options).enumerate() {
        let value = v.map_err(syntax)?;
        if i >= limits.max_documents {
            return Err(LoadError::Syntax {
                path: path.to_path_buf(),
                line: 0,
                column: 0,
                message: format!(
                    "more than {} documents in one file (max_documents)",
                    limits.max_documents
                ),
            });
        }
        nodes = nodes.saturating_add(count_nodes(&value));
        if nodes > limits.max_nodes {
            return Err(LoadError::Syntax {
                path: path.to_path_buf(),
                line: 0,
                column: 0,
                message: format!(
                    "more than {} nodes in one file (max_nodes), in document {}",
                    limits.max_nodes,
                    i + 1
                ),
            });
        }
        if value.is_null() {
            continue;
        }
        b.add(Doc {
            origin: Origin {
                file: path.to_path_buf(),
                document: i + 1,
            },
            body: Body::Tree(value),
            default_kind: None,
            default_api: None,
        })?;
    }
    Ok(())
}

/// Nodes of a decoded YAML document, counted as [`JsonCheck`] counts JSON (keys count).
pub(super) fn count_nodes(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(count_nodes).sum::<usize>(),
        Value::Object(m) => 1 + m.values().map(|v| 1 + count_nodes(v)).sum::<usize>(),
        _ => 1,
    }
}

/// One pass over JSON text: syntax, duplicate keys (an error, as the API server's strict
/// decoding makes them) and the document and node limits.
pub(super) fn check_json(text: &str, limits: &Limits) -> Result<(), serde_json::Error> {
    use serde::de::{DeserializeSeed as _, Error as _};
    let mut de = serde_json::Deserializer::from_str(text);
    let mut nodes = 0usize;
    let mut docs = 0usize;
    loop {
        // Whitespace only left: done.
        if de.end().is_ok() {
            return Ok(());
        }
        docs += 1;
        if docs > limits.max_documents {
            return Err(serde_json::Error::custom(format!(
                "more than {} documents in one file (max_documents)",
                limits.max_documents
            )));
        }
        JsonCheck {
            nodes: &mut nodes,
            max_nodes: limits.max_nodes,
        }
        .deserialize(&mut de)?;
    }
}

pub(super) struct JsonCheck<'c> {
    pub(super) nodes: &'c mut usize,
    pub(super) max_nodes: usize,
}

impl JsonCheck<'_> {
    pub(super) fn count<E: serde::de::Error>(&mut self) -> Result<(), E> {
        *self.nodes += 1;
        if *self.nodes > self.max_nodes {
            return Err(E::custom(format!(
                "more than {} nodes in one file (max_nodes)",
                self.max_nodes
            )));
        }
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for JsonCheck<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for JsonCheck<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: serde::de::Error>(mut self, _: bool) -> Result<(), E> {
        self.count()
    }
    fn visit_i64<E: serde::de::Error>(mut self, _: i64) -> Result<(), E> {
        self.count()
    }
    fn visit_u64<E: serde::de::Error>(mut self, _: u64) -> Result<(), E> {
        self.count()
    }
    fn visit_f64<E: serde::de::Error>(mut self, _: f64) -> Result<(), E> {
        self.count()
    }
    fn visit_str<E: serde::de::Error>(mut self, _: &str) -> Result<(), E> {
        self.count()
    }
    fn visit_unit<E: serde::de::Error>(mut self) -> Result<(), E> {
        self.count()
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.count()?;
        while seq
            .next_element_seed(JsonCheck {
                nodes: &mut *self.nodes,
                max_nodes: self.max_nodes,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error as _;
        self.count()?;
        let mut keys: Vec<String> = Vec::new();
        let mut set: std::collections::HashSet<String> = std::collections::HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            self.count()?;
            // Kubernetes objects have small maps: a linear scan until they are not.
            let dup = if set.is_empty() && keys.len() < 32 {
                let d = keys.contains(&k);
                keys.push(k.clone());
                d
            } else {
                if set.is_empty() {
                    set.extend(keys.drain(..));
                }
                !set.insert(k.clone())
            };
            if dup {
                return Err(A::Error::custom(format!(
                    "duplicate key {k:?} (duplicate fields are an error, as in the API server's strict decoding)"
                )));
            }
            map.next_value_seed(JsonCheck {
                nodes: &mut *self.nodes,
                max_nodes: self.max_nodes,
            })?;
        }
        Ok(())
    }
}

pub(super) fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// The first line of a YAML error, without the position prefix the caller prints itself
/// (`error: line 4 column 9: ...`).
pub(super) fn first_line(msg: &str) -> String {
    let line = msg.lines().next().unwrap_or(msg).trim();
    let rest = line
        .strip_prefix("error:")
        .map(str::trim_start)
        .unwrap_or(line);
    match rest.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((pos, tail)) if pos.contains("column") => tail.to_string(),
        _ => rest.to_string(),
    }
}

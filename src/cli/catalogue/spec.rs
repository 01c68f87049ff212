//! The parts of an OpenAPI 3.0/3.1 or Swagger 2.0 description a catalogue needs: servers (or
//! `basePath`), paths and their operations (id, tags, security, deprecation, `x-*`
//! extensions). Everything else is skipped as it is read, never kept: a JSON spec streams
//! through in memory proportional to its operations, not its size.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A security requirement: scheme name -> scopes (all required).
pub type Requirement = BTreeMap<String, Vec<String>>;

#[derive(Debug, Default, Deserialize)]
pub struct Spec {
    pub openapi: Option<String>,
    pub swagger: Option<String>,
    #[serde(default)]
    pub info: Info,
    #[serde(default)]
    pub servers: Vec<Server>,
    #[serde(rename = "basePath")]
    pub base_path: Option<String>,
    #[serde(default)]
    pub paths: BTreeMap<String, PathItem>,
    pub security: Option<Vec<Requirement>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Info {
    pub title: Option<String>,
    pub version: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Server {
    pub url: String,
}

/// The HTTP methods an OpenAPI path item may hold, in a fixed order.
pub const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

#[derive(Debug, Default)]
pub struct PathItem {
    pub servers: Vec<Server>,
    /// By method (lower case, one of [`METHODS`]).
    pub operations: BTreeMap<String, Operation>,
}

#[derive(Debug, Default)]
pub struct Operation {
    pub operation_id: Option<String>,
    pub tags: Vec<String>,
    pub security: Option<Vec<Requirement>>,
    pub deprecated: bool,
    pub servers: Vec<Server>,
    /// `x-*` keys, as JSON.
    pub extensions: BTreeMap<String, serde_json::Value>,
}

impl<'de> Deserialize<'de> for PathItem {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PathItem;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path item object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PathItem, A::Error> {
                let mut item = PathItem::default();
                while let Some(key) = map.next_key::<String>()? {
                    if METHODS.contains(&key.as_str()) {
                        let op: Operation = map.next_value()?;
                        item.operations.insert(key, op);
                    } else if key == "servers" {
                        item.servers = map.next_value()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(item)
            }
        }
        de.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for Operation {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Operation;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an operation object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Operation, A::Error> {
                let mut op = Operation::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "operationId" => op.operation_id = map.next_value()?,
                        "tags" => op.tags = map.next_value()?,
                        "security" => op.security = map.next_value()?,
                        "deprecated" => op.deprecated = map.next_value()?,
                        "servers" => op.servers = map.next_value()?,
                        // Read for its shape only: an operation's responses are a map.
                        "responses" => {
                            map.next_value::<BTreeMap<String, IgnoredAny>>()?;
                        }
                        k if k.starts_with("x-") => {
                            let v: serde_json::Value = map.next_value()?;
                            op.extensions.insert(key, v);
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(op)
            }
        }
        de.deserialize_map(V)
    }
}

/// `paths./pets.get.tags[0]` (serde_path_to_error) as a JSON pointer: `/paths/~1pets/get/tags/0`.
fn pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        out.push('/');
        match seg {
            Segment::Seq { index } => out.push_str(&index.to_string()),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                out.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            Segment::Unknown => out.push('?'),
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Parses a JSON or YAML description (JSON streams from `reader`; YAML is read whole).
/// Errors name the JSON pointer of the problem.
pub fn parse(bytes_or_reader: Input<'_>) -> Result<Spec, String> {
    let spec: Spec = match bytes_or_reader {
        Input::Json(r) => {
            let mut de = serde_json::Deserializer::from_reader(r);
            serde_path_to_error::deserialize(&mut de)
                .map_err(|e| format!("at {}: {}", pointer(e.path()), e.inner()))?
        }
        Input::Yaml(text) => {
            let de = serde_yaml_ng::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de)
                .map_err(|e| format!("at {}: {}", pointer(e.path()), e.inner()))?
        }
    };
    // A path key is an absolute path template: anything else (`noslash:`) would become a route
    // the spec never had (it used to turn into `GET /`).
    if let Some(bad) = spec.paths.keys().find(|k| !k.starts_with('/')) {
        return Err(format!(
            "at /paths/{}: a path must start with `/`",
            bad.replace('~', "~0").replace('/', "~1")
        ));
    }
    match (&spec.openapi, &spec.swagger) {
        (Some(v), _) if v.starts_with("3.") => Ok(spec),
        (None, Some(v)) if v.starts_with("2.") => Ok(spec),
        (Some(v), _) | (None, Some(v)) => Err(format!(
            "at /: unsupported version `{v}` (OpenAPI 3.0/3.1 or Swagger 2.0)"
        )),
        (None, None) => {
            Err("at /: neither `openapi` nor `swagger`: not an OpenAPI description".into())
        }
    }
}

pub enum Input<'a> {
    Json(Box<dyn std::io::Read + 'a>),
    Yaml(&'a str),
}

/// The path part of a server URL (`https://api.x.com/v1` -> `/v1`, `/v3` -> `/v3`), without
/// a trailing `/`; variables (`{version}`) are kept as written.
pub fn server_path(url: &str) -> String {
    let rest = match url.split_once("://") {
        Some((_, after)) => after.find('/').and_then(|j| after.get(j..)).unwrap_or(""),
        None => url,
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let rest = rest.trim_end_matches('/');
    // A relative server URL (`v1`) is a path under the API's origin: anchored at `/`.
    match rest.is_empty() || rest.starts_with('/') {
        true => rest.to_owned(),
        false => format!("/{rest}"),
    }
}

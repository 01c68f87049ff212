//! What a credential is, as configured: its [`Scheme`] (where it goes in a request) and its
//! named [`Part`]s (each from a [`Source`]), validated by `config` into a [`Spec`].

use std::sync::Arc;

use http::HeaderName;
use zeroize::Zeroizing;

use super::{KeyError, Source, mint, sigv4, validate_key};
use crate::policy::template::PathTemplate;

/// Where the credential goes in a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// One header, `<prefix><key>` (the default: `Authorization: Bearer <key>`).
    Header { header: HeaderName, prefix: String },
    /// `Authorization: Basic base64(username:password)`.
    Basic,
    /// One query parameter.
    Query { param: String },
    /// A path template in front of the checked path; several for APIs with several.
    Path { templates: Arc<[PathTemplate]> },
    /// Several headers, one part each (the parts are named after the headers).
    Headers { names: Vec<HeaderName> },
    /// `Authorization: Bearer <token>` with a token sidekey mints from the parts (a client
    /// secret or a private key) at a token endpoint, off the request path.
    Minted(Arc<mint::Mint>),
    /// AWS Signature Version 4 over the request as forwarded (parts: `access_key_id`,
    /// `secret_access_key`, optional `session_token`).
    AwsSigV4(Arc<sigv4::Settings>),
}

impl Scheme {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Header { .. } => "header",
            Self::Basic => "basic",
            Self::Query { .. } => "query",
            Self::Path { .. } => "path",
            Self::Headers { .. } => "headers",
            Self::Minted(m) => m.name(),
            Self::AwsSigV4(_) => "aws_sigv4",
        }
    }

    /// Where the key goes, for `explain` and `check` (never a value).
    pub fn placement(&self) -> String {
        match self {
            Self::Header { header, prefix } if prefix.is_empty() => format!("header {header}"),
            Self::Header { header, prefix } => format!("header {header}: {prefix}<key>"),
            Self::Basic => "authorization: Basic".to_owned(),
            Self::Query { param } => format!("query param {param}"),
            Self::Path { templates } => {
                let list: Vec<&str> = templates.iter().map(PathTemplate::as_str).collect();
                format!("path {}", list.join(" | "))
            }
            Self::Headers { names } => {
                let list: Vec<&str> = names.iter().map(HeaderName::as_str).collect();
                format!("headers {}", list.join(", "))
            }
            Self::Minted(m) => format!("authorization: Bearer <token minted by {}>", m.name()),
            Self::AwsSigV4(a) => format!(
                "authorization: AWS4-HMAC-SHA256 signature ({}/{}, payload {})",
                a.region,
                a.service,
                match a.payload {
                    sigv4::Payload::Unsigned => "unsigned",
                    sigv4::Payload::Signed => "signed",
                }
            ),
        }
    }

    /// The minting settings of a token scheme.
    pub fn mint(&self) -> Option<&Arc<mint::Mint>> {
        match self {
            Self::Minted(m) => Some(m),
            Self::AwsSigV4(a) => a.role.as_ref(),
            _ => None,
        }
    }

    /// The SigV4 settings of an `aws_sigv4` credential.
    pub fn sigv4(&self) -> Option<&Arc<sigv4::Settings>> {
        match self {
            Self::AwsSigV4(a) => Some(a),
            _ => None,
        }
    }

    /// The path templates, for the allow-list to drop a client's placeholder copy.
    pub fn templates(&self) -> Option<&Arc<[PathTemplate]>> {
        match self {
            Self::Path { templates } => Some(templates),
            _ => None,
        }
    }
}

/// One named part of a credential (`key`; `username`, `password`; a header name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub name: Arc<str>,
    pub source: Source,
}

/// Longest document part (a PEM key, a service-account JSON key file).
pub const MAX_DOCUMENT_LEN: usize = 64 * 1024;

impl Part {
    /// A document (PEM, JSON) rather than a header-safe key: read as it is, bounded.
    pub fn is_document(&self) -> bool {
        matches!(&*self.name, "key_file" | "private_key")
    }

    /// Reads the part: a key trimmed and checked, a document as it is (bounded, UTF-8).
    pub fn read(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let raw = self.source.read()?;
        if self.is_document() {
            if raw.trim_ascii().is_empty() {
                return Err(KeyError::Empty);
            }
            if raw.len() > MAX_DOCUMENT_LEN || std::str::from_utf8(&raw).is_err() {
                return Err(KeyError::InvalidChar);
            }
            return Ok(raw);
        }
        validate_key(&raw).map(|k| Zeroizing::new(k.to_vec()))
    }
}

/// A validated credential config: its scheme and its parts, in the scheme's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub scheme: Scheme,
    pub parts: Vec<Part>,
}

impl Spec {
    /// The common case: one key, one header.
    pub fn header(source: Source, header: HeaderName, prefix: impl Into<String>) -> Self {
        Self {
            scheme: Scheme::Header {
                header,
                prefix: prefix.into(),
            },
            parts: vec![Part {
                name: Arc::from("key"),
                source,
            }],
        }
    }

    /// Reads every part (a minted scheme's secret inputs), one error naming the part.
    pub fn read_parts(&self) -> Result<Vec<Zeroizing<Vec<u8>>>, KeyError> {
        let several = self.parts.len() > 1;
        self.parts
            .iter()
            .map(|p| {
                p.read().map_err(|e| match several {
                    true => KeyError::Part {
                        part: p.name.to_string(),
                        error: Box::new(e),
                    },
                    false => e,
                })
            })
            .collect()
    }

    /// Every file a part is read from (watched for changes).
    pub fn files(&self) -> impl Iterator<Item = &std::path::Path> {
        self.parts.iter().filter_map(|p| p.source.file())
    }
}

//! The TOML shape of `sidekey.toml`, exactly as written. Unknown keys are errors everywhere;
//! these key names are a contract with operators, so they only ever grow.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub listener: RawListener,
    #[serde(default)]
    pub admin: RawAdmin,
    pub upstream: Option<RawUpstream>,
    pub credential: Option<RawCredential>,
    pub service: Option<RawService>,
    pub permissions_file: Option<Spanned<String>>,
    pub permissions: Option<RawPermissions>,
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub reload: RawReload,
    #[serde(default)]
    pub limits: RawLimits,
    /// Expected decisions that `sidekey check` runs (`[[test]]`).
    #[serde(default)]
    pub test: Vec<RawTest>,
    /// Gateway shape: one entry per identified caller (`[[caller]]`).
    #[serde(default)]
    pub caller: Vec<RawCaller>,
    /// Several APIs: `[api.NAME]` tables (instead of `[upstream]` + `[credential]`).
    #[serde(default)]
    pub api: BTreeMap<String, Spanned<RawApi>>,
    /// The forward-proxy listener (`HTTPS_PROXY`).
    pub forward_proxy: Option<Spanned<RawForwardProxy>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawForwardProxy {
    pub address: Option<Spanned<String>>,
    pub ca_cert_file: Option<Spanned<String>>,
    pub ca_key_file: Option<Spanned<String>>,
    pub unknown_hosts: Option<Spanned<String>>,
    #[serde(default)]
    pub tunnel: Vec<Spanned<String>>,
    pub trust_dir: Option<Spanned<String>>,
}

/// One named API: its origin (every `[upstream]` setting), where it is reached locally,
/// its catalogue and its key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApi {
    pub url: Spanned<String>,
    pub path_prefix: Option<Spanned<String>>,
    pub listen: Option<Spanned<String>>,
    pub permissions_file: Option<Spanned<String>>,
    pub permissions: Option<RawPermissions>,
    pub credential: Option<Spanned<RawCredential>>,
    pub ca_file: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    pub pool_idle_timeout: Option<Spanned<String>>,
    pub protocol: Option<Spanned<String>>,
    #[serde(default)]
    pub allow_plaintext_upstream: bool,
    pub connect_to: Option<Spanned<String>>,
    pub placeholder_env: Option<Spanned<String>>,
    /// `"GET /path"`: tried with a rotated key before it is used.
    pub verify: Option<Spanned<String>>,
    /// `Host` names its own listener serves besides loopback ones.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// `headers` (default) | `bodies` | `off`: take an echoed credential out of responses.
    pub scrub: Option<Spanned<String>>,
    /// Forward proxy: more names intercepted for this API (`*.s3.eu-west-1.amazonaws.com`).
    pub hosts: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCaller {
    pub name: Spanned<String>,
    pub client_cert_san: Option<Spanned<String>>,
    pub token_sha256: Option<Spanned<String>>,
    pub allow: Spanned<Vec<Spanned<String>>>,
    pub credential: Option<Spanned<RawCredential>>,
    /// Several APIs: the caller's own key per API name.
    pub credentials: Option<Spanned<BTreeMap<String, Spanned<RawCredential>>>>,
    /// `"50/s"`, `"3000/m"`, `"100/h"`.
    pub rate: Option<Spanned<String>>,
    pub burst: Option<Spanned<i64>>,
    pub max_concurrent: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListenerTls {
    pub cert_file: Spanned<String>,
    pub key_file: Spanned<String>,
    pub client_ca_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTest {
    /// Gateway shape: whose grants the expectation is about.
    pub caller: Option<Spanned<String>>,
    pub request: Spanned<String>,
    pub expect: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub address: Option<Spanned<String>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub tls: Option<Spanned<RawListenerTls>>,
    /// `Host` names served besides loopback ones (DNS-rebinding guard).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Browser `Origin`s accepted besides loopback ones.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub address: Option<Spanned<String>>,
    pub status_page: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub url: Spanned<String>,
    pub ca_file: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    pub pool_idle_timeout: Option<Spanned<String>>,
    pub protocol: Option<Spanned<String>>,
    #[serde(default)]
    pub allow_plaintext_upstream: bool,
    /// Dial this address instead of the URL's host (TLS is still verified for the host).
    pub connect_to: Option<Spanned<String>>,
    /// `sidekey exec`: a variable set to a placeholder so SDKs that insist on a key start.
    pub placeholder_env: Option<Spanned<String>>,
    /// `"GET /path"`: tried with a rotated key before it is used.
    pub verify: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCredential {
    /// `header` (default), `basic`, `query`, `path`, `headers`.
    pub scheme: Option<Spanned<String>>,
    pub file: Option<Spanned<String>>,
    pub env: Option<Spanned<String>>,
    pub header: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    /// `basic`: the user name (in the config, or from a file or variable) and the password.
    pub username: Option<Spanned<String>>,
    pub username_file: Option<Spanned<String>>,
    pub username_env: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub password_env: Option<Spanned<String>>,
    /// `query`: the parameter name.
    pub param: Option<Spanned<String>>,
    /// `path`: one template or several.
    pub template: Option<Spanned<OneOrMany>>,
    /// `headers`: header name -> its part's source.
    pub headers: Option<Spanned<BTreeMap<String, Spanned<RawPartSource>>>>,
    /// Token schemes (`oauth2_client_credentials`, `google_service_account`, `github_app`).
    pub client_id: Option<Spanned<String>>,
    pub client_id_file: Option<Spanned<String>>,
    pub client_id_env: Option<Spanned<String>>,
    pub client_secret_file: Option<Spanned<String>>,
    pub client_secret_env: Option<Spanned<String>>,
    pub token_url: Option<Spanned<String>>,
    pub client_auth: Option<Spanned<String>>,
    pub scope: Option<Spanned<String>>,
    pub params: Option<Spanned<BTreeMap<String, String>>>,
    pub key_file: Option<Spanned<String>>,
    pub app_id: Option<Spanned<String>>,
    pub installation_id: Option<Spanned<String>>,
    pub private_key_file: Option<Spanned<String>>,
    pub private_key_env: Option<Spanned<String>>,
    pub refresh_before: Option<Spanned<String>>,
    pub token_ca_file: Option<Spanned<String>>,
    pub token_connect_to: Option<Spanned<String>>,
    /// `aws_sigv4`: where and what is signed, static keys or a role.
    pub region: Option<Spanned<String>>,
    pub service: Option<Spanned<String>>,
    pub access_key_id_file: Option<Spanned<String>>,
    pub access_key_id_env: Option<Spanned<String>>,
    pub secret_access_key_file: Option<Spanned<String>>,
    pub secret_access_key_env: Option<Spanned<String>>,
    pub session_token_file: Option<Spanned<String>>,
    pub session_token_env: Option<Spanned<String>>,
    pub payload: Option<Spanned<String>>,
    pub max_signed_body: Option<Spanned<String>>,
    pub role_arn: Option<Spanned<String>>,
    pub role_session_name: Option<Spanned<String>>,
    pub web_identity_token_file: Option<Spanned<String>>,
    pub sts_url: Option<Spanned<String>>,
    pub sts_ca_file: Option<Spanned<String>>,
    pub sts_connect_to: Option<Spanned<String>>,
}

/// A string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Where one part of a `headers` credential comes from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPartSource {
    pub file: Option<Spanned<String>>,
    pub env: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub name: Spanned<String>,
    pub allow: Spanned<Vec<Spanned<String>>>,
    /// Also accepted here: in the documented layout the key follows `[service]`'s keys.
    pub permissions_file: Option<Spanned<String>>,
    /// `enforce` (default) or `report`.
    pub mode: Option<Spanned<String>>,
}

/// permission name -> route patterns.
pub(crate) type RawPermissions = BTreeMap<String, Spanned<Vec<Spanned<RawRoute>>>>;

/// One catalogue route: `"GET /path"`, or a table for a route with options.
#[derive(Debug)]
pub(crate) enum RawRoute {
    Plain(String),
    Table(RawRouteTable),
}

/// By hand rather than `untagged`, so a bad table says which key is wrong.
impl<'de> Deserialize<'de> for RawRoute {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawRoute;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a route `METHOD /path` or a table `{ route = \"GET /path\", websocket = true }`")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawRoute, E> {
                Ok(RawRoute::Plain(v.to_owned()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawRoute, A::Error> {
                let de = serde::de::value::MapAccessDeserializer::new(map);
                RawRouteTable::deserialize(de).map(RawRoute::Table)
            }
        }
        de.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRouteTable {
    pub route: String,
    /// The route accepts a WebSocket handshake (upgrades are default-deny).
    #[serde(default)]
    pub websocket: bool,
}

impl RawRoute {
    pub fn text(&self) -> &str {
        match self {
            Self::Plain(t) => t,
            Self::Table(t) => &t.route,
        }
    }

    pub fn websocket(&self) -> bool {
        matches!(self, Self::Table(t) if t.websocket)
    }
}

/// A separate catalogue file holds one `[permissions]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCatalogue {
    pub permissions: RawPermissions,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRuntime {
    pub workers: Option<Spanned<i64>>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub shutdown_idle: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReload {
    pub interval: Option<Spanned<String>>,
    pub debounce: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub max_in_flight: Option<Spanned<i64>>,
    pub max_request_body: Option<Spanned<String>>,
    pub body_idle_timeout: Option<Spanned<String>>,
    pub websocket_idle_timeout: Option<Spanned<String>>,
    pub websocket_max_duration: Option<Spanned<String>>,
    pub max_websockets: Option<Spanned<i64>>,
    pub shared: Option<RawSharedLimits>,
}

/// `[limits.shared]`: caller rates decided in Redis, shared by every replica.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSharedLimits {
    pub redis_url: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub on_error: Option<Spanned<String>>,
    pub key_prefix: Option<Spanned<String>>,
}

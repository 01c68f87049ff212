//! The token schemes' config shapes (`oauth2_client_credentials`, `google_service_account`,
//! `github_app`): the secret parts, the token endpoint and how it is reached, the refresh
//! margin. A GitHub App's endpoint is its API's origin: `bind_github` fills it in once the
//! API is known.

use std::sync::Arc;

use http::Uri;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use toml::Spanned;

use super::credential::one_source;
use super::ctx::{Ctx, address, duration};
use super::raw::RawCredential;
use super::{ConfigError, CredentialConfig, CredentialSource};
use crate::credential::mint::{ClientAuth, Endpoint, Kind, Mint};
use crate::credential::{Part, Scheme};

pub(super) fn part(name: &str, source: CredentialSource) -> Part {
    Part {
        name: Arc::from(name),
        source,
    }
}

pub(super) fn required<'a>(
    ctx: &Ctx<'_>,
    key: &str,
    name: &str,
    v: &'a Option<Spanned<String>>,
) -> Result<&'a str, ConfigError> {
    match v {
        Some(s) if !s.get_ref().trim().is_empty() => Ok(s.get_ref().as_str()),
        s => ctx.err(
            &format!("{key}.{name}"),
            s.as_ref().map(Spanned::span),
            format!("`{name}` is required"),
        ),
    }
}

pub(super) fn minted(
    ctx: &Ctx<'_>,
    key: &str,
    scheme: &str,
    c: &RawCredential,
) -> Result<CredentialConfig, ConfigError> {
    let endpoint = endpoint(
        ctx,
        key,
        ("token_ca_file", &c.token_ca_file),
        ("token_connect_to", &c.token_connect_to),
    )?;
    let refresh_before = match &c.refresh_before {
        Some(r) => Some(duration(
            ctx,
            &format!("{key}.refresh_before"),
            Some(r),
            "",
        )?),
        None => None,
    };
    let (kind, parts) = match scheme {
        "oauth2_client_credentials" => {
            let url = required(ctx, key, "token_url", &c.token_url)?;
            let span = c.token_url.as_ref().map(Spanned::span);
            let token_url = match url.parse::<Uri>() {
                Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => u,
                _ => {
                    return ctx.err(
                        &format!("{key}.token_url"),
                        span,
                        "must be an https:// URL (the client secret crosses it)",
                    );
                }
            };
            let client_auth = match c.client_auth.as_ref().map(|a| a.get_ref().as_str()) {
                None | Some("basic") => ClientAuth::Basic,
                Some("post") => ClientAuth::Post,
                Some(other) => {
                    return ctx.err(&format!("{key}.client_auth"), c.client_auth.as_ref().map(Spanned::span), format!("`{other}`: use basic (client_secret_basic) or post (client_secret_post)"));
                }
            };
            let id = match (&c.client_id, &c.client_id_file, &c.client_id_env) {
                (Some(v), None, None) => CredentialSource::Value(v.get_ref().clone()),
                (None, f, e) if f.is_some() || e.is_some() => {
                    one_source(ctx, key, "client_id_", f, e)?
                }
                _ => {
                    return ctx.err(
                        key,
                        None,
                        "set exactly one of `client_id`, `client_id_file` or `client_id_env`",
                    );
                }
            };
            let secret = one_source(
                ctx,
                key,
                "client_secret_",
                &c.client_secret_file,
                &c.client_secret_env,
            )?;
            let params = c
                .params
                .as_ref()
                .map(|p| {
                    p.get_ref()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let kind = Kind::OAuth2 {
                token_url,
                client_auth,
                scope: c.scope.as_ref().map(|s| s.get_ref().clone()),
                params,
            };
            (
                kind,
                vec![part("client_id", id), part("client_secret", secret)],
            )
        }
        "google_service_account" => {
            let file = required(ctx, key, "key_file", &c.key_file)?;
            let scope = required(ctx, key, "scope", &c.scope)?.to_owned();
            let source = CredentialSource::File(ctx.dir.join(file));
            (Kind::Google { scope }, vec![part("key_file", source)])
        }
        _ => {
            let app_id = required(ctx, key, "app_id", &c.app_id)?.to_owned();
            let installation_id =
                required(ctx, key, "installation_id", &c.installation_id)?.to_owned();
            if !installation_id.bytes().all(|b| b.is_ascii_digit()) {
                return ctx.err(
                    &format!("{key}.installation_id"),
                    c.installation_id.as_ref().map(Spanned::span),
                    "must be the installation's number",
                );
            }
            let source = one_source(
                ctx,
                key,
                "private_key_",
                &c.private_key_file,
                &c.private_key_env,
            )?;
            let kind = Kind::GitHub {
                // Filled in from the API's url by `bind_github`.
                api_url: Uri::from_static("https://api.github.com"),
                app_id,
                installation_id,
            };
            (kind, vec![part("private_key", source)])
        }
    };
    let mint = Mint {
        kind,
        endpoint,
        refresh_before,
    };
    Ok(CredentialConfig {
        scheme: Scheme::Minted(Arc::new(mint)),
        parts,
    })
}

type Named<'a> = (&'a str, &'a Option<Spanned<String>>);

/// `token_ca_file` (extra roots) and `token_connect_to` (dial there, verify the host), or
/// another pair of keys of the same meaning.
pub(super) fn endpoint(
    ctx: &Ctx<'_>,
    key: &str,
    (ca_key, ca): Named<'_>,
    (connect_key, connect): Named<'_>,
) -> Result<Endpoint, ConfigError> {
    let roots = match ca {
        Some(f) => {
            let path = ctx.dir.join(f.get_ref());
            let certs: Result<Vec<CertificateDer<'static>>, _> =
                CertificateDer::pem_file_iter(&path).and_then(Iterator::collect);
            match certs {
                Ok(v) if !v.is_empty() => v,
                _ => {
                    return ctx.err(
                        &format!("{key}.{ca_key}"),
                        Some(f.span()),
                        format!("{} holds no readable PEM certificate", path.display()),
                    );
                }
            }
        }
        None => Vec::new(),
    };
    let connect_to = match connect {
        Some(a) => Some(address(ctx, &format!("{key}.{connect_key}"), Some(a), "")?),
        None => None,
    };
    Ok(Endpoint { roots, connect_to })
}

/// A GitHub App mints at its API's origin, reached as the API is (its extra roots and
/// `connect_to`) unless `token_ca_file` / `token_connect_to` say otherwise.
pub(super) fn bind_github(spec: &mut CredentialConfig, upstream: &super::Upstream) {
    let Scheme::Minted(mint) = &mut spec.scheme else {
        return;
    };
    if !matches!(mint.kind, Kind::GitHub { .. }) {
        return;
    }
    let m = Arc::make_mut(mint);
    if let Kind::GitHub { api_url, .. } = &mut m.kind {
        if let Ok(u) = format!("{}://{}", upstream.scheme, upstream.authority).parse() {
            *api_url = u;
        }
    }
    if m.endpoint.roots.is_empty() {
        m.endpoint.roots = upstream.extra_roots.clone();
    }
    if m.endpoint.connect_to.is_none() {
        m.endpoint.connect_to = upstream.connect_to;
    }
}

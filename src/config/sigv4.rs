//! The `aws_sigv4` credential's config: region and service (required), static keys from
//! files or variables, or a role assumed with a web identity token (EKS IRSA) through STS;
//! the payload mode and its bound. Refused: `payload = "unsigned"` for a service other than
//! S3, static keys together with `role_arn`, an unreadable token file.

use std::sync::Arc;

use http::Uri;
use toml::Spanned;

use super::credential::one_source;
use super::ctx::{Ctx, parse_size};
use super::mint::{endpoint, part, required};
use super::raw::RawCredential;
use super::{ConfigError, CredentialConfig, CredentialSource};
use crate::credential::mint::{Kind, Mint};
use crate::credential::sigv4::{DEFAULT_MAX_SIGNED_BODY, Payload, Settings};
use crate::credential::{Part, Scheme};

/// The keys this scheme takes.
pub(super) const KEYS: &[&str] = &[
    "region",
    "service",
    "access_key_id_file",
    "access_key_id_env",
    "secret_access_key_file",
    "secret_access_key_env",
    "session_token_file",
    "session_token_env",
    "payload",
    "max_signed_body",
    "role_arn",
    "role_session_name",
    "web_identity_token_file",
    "sts_url",
    "sts_ca_file",
    "sts_connect_to",
    "refresh_before",
];

/// A region or service name: lower-case letters, digits, `-`.
fn name<'a>(
    ctx: &Ctx<'_>,
    key: &str,
    what: &str,
    v: &'a Option<Spanned<String>>,
) -> Result<&'a str, ConfigError> {
    let text = required(ctx, key, what, v)?;
    if !text
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return ctx.err(
            &format!("{key}.{what}"),
            v.as_ref().map(Spanned::span),
            format!("`{text}` is not an AWS {what} name (lower-case letters, digits, -)"),
        );
    }
    Ok(text)
}

pub(super) fn aws(
    ctx: &Ctx<'_>,
    key: &str,
    c: &RawCredential,
) -> Result<CredentialConfig, ConfigError> {
    let region = name(ctx, key, "region", &c.region)?.to_owned();
    let service = name(ctx, key, "service", &c.service)?.to_owned();
    let payload = match c.payload.as_ref().map(|p| p.get_ref().as_str()) {
        None if service == "s3" => Payload::Unsigned,
        None | Some("signed") => Payload::Signed,
        Some("unsigned") if service == "s3" => Payload::Unsigned,
        Some("unsigned") => {
            return ctx.err(
                &format!("{key}.payload"),
                c.payload.as_ref().map(Spanned::span),
                format!("UNSIGNED-PAYLOAD is S3's alone; service `{service}` checks a signed body hash: use payload = \"signed\""),
            );
        }
        Some(other) => {
            return ctx.err(
                &format!("{key}.payload"),
                c.payload.as_ref().map(Spanned::span),
                format!("`{other}`: use \"unsigned\" (S3) or \"signed\""),
            );
        }
    };
    let max_signed_body = match &c.max_signed_body {
        None => DEFAULT_MAX_SIGNED_BODY,
        Some(v) => match parse_size(v.get_ref()) {
            Some(n) if n > 0 => n,
            _ => {
                return ctx.err(
                    &format!("{key}.max_signed_body"),
                    Some(v.span()),
                    format!("`{}` is not a size like \"10MiB\"", v.get_ref()),
                );
            }
        },
    };
    let static_keys = [
        &c.access_key_id_file,
        &c.access_key_id_env,
        &c.secret_access_key_file,
        &c.secret_access_key_env,
        &c.session_token_file,
        &c.session_token_env,
    ];
    let (role, parts) = match &c.role_arn {
        Some(arn) => {
            if let Some(k) = static_keys.iter().find_map(|k| k.as_ref()) {
                return ctx.err(
                    key,
                    Some(k.span()),
                    "static keys and `role_arn` exclude each other: the role's temporary credentials are used",
                );
            }
            let (mint, parts) = role(ctx, key, c, arn, &region)?;
            (Some(Arc::new(mint)), parts)
        }
        None => {
            for (k, v) in [
                ("web_identity_token_file", &c.web_identity_token_file),
                ("role_session_name", &c.role_session_name),
                ("sts_url", &c.sts_url),
                ("sts_ca_file", &c.sts_ca_file),
                ("sts_connect_to", &c.sts_connect_to),
            ] {
                if let Some(v) = v {
                    return ctx.err(
                        &format!("{key}.{k}"),
                        Some(v.span()),
                        "only with `role_arn`",
                    );
                }
            }
            let id = one_source(
                ctx,
                key,
                "access_key_id_",
                &c.access_key_id_file,
                &c.access_key_id_env,
            )?;
            let secret = one_source(
                ctx,
                key,
                "secret_access_key_",
                &c.secret_access_key_file,
                &c.secret_access_key_env,
            )?;
            let mut parts = vec![part("access_key_id", id), part("secret_access_key", secret)];
            if c.session_token_file.is_some() || c.session_token_env.is_some() {
                let token = one_source(
                    ctx,
                    key,
                    "session_token_",
                    &c.session_token_file,
                    &c.session_token_env,
                )?;
                parts.push(part("session_token", token));
            }
            (None, parts)
        }
    };
    let settings = Settings {
        region,
        service,
        payload,
        max_signed_body,
        role,
    };
    Ok(CredentialConfig {
        scheme: Scheme::AwsSigV4(Arc::new(settings)),
        parts,
    })
}

/// A role assumed with a web identity token at STS.
fn role(
    ctx: &Ctx<'_>,
    key: &str,
    c: &RawCredential,
    arn: &Spanned<String>,
    region: &str,
) -> Result<(Mint, Vec<Part>), ConfigError> {
    if !arn.get_ref().starts_with("arn:") {
        return ctx.err(
            &format!("{key}.role_arn"),
            Some(arn.span()),
            "must be a role ARN (arn:aws:iam::ACCOUNT:role/NAME)",
        );
    }
    let file = required(
        ctx,
        key,
        "web_identity_token_file",
        &c.web_identity_token_file,
    )?;
    let path = ctx.dir.join(file);
    if let Err(e) = std::fs::File::open(&path) {
        return ctx.err(
            &format!("{key}.web_identity_token_file"),
            c.web_identity_token_file.as_ref().map(Spanned::span),
            format!("cannot read {}: {e}", path.display()),
        );
    }
    let sts_text = c.sts_url.as_ref().map_or_else(
        || format!("https://sts.{region}.amazonaws.com/"),
        |u| u.get_ref().clone(),
    );
    let sts_url = match sts_text.parse::<Uri>() {
        Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => u,
        _ => {
            return ctx.err(
                &format!("{key}.sts_url"),
                c.sts_url.as_ref().map(Spanned::span),
                "must be an https:// URL",
            );
        }
    };
    let endpoint = endpoint(
        ctx,
        key,
        ("sts_ca_file", &c.sts_ca_file),
        ("sts_connect_to", &c.sts_connect_to),
    )?;
    let refresh_before = match &c.refresh_before {
        Some(r) => Some(super::ctx::duration(
            ctx,
            &format!("{key}.refresh_before"),
            Some(r),
            "",
        )?),
        None => None,
    };
    let session_name = c
        .role_session_name
        .as_ref()
        .map_or_else(|| "sidekey".to_owned(), |s| s.get_ref().clone());
    let mint = Mint {
        kind: Kind::AwsWebIdentity {
            sts_url,
            role_arn: arn.get_ref().clone(),
            session_name,
        },
        endpoint,
        refresh_before,
    };
    Ok((
        mint,
        vec![part("web_identity_token", CredentialSource::File(path))],
    ))
}

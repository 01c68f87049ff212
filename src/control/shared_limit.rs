//! The shared limiter's connection, rebuilt off the request path when `[limits.shared]` or
//! the Redis password changes. The password file is re-read with the keys on every reload
//! pass; one that cannot be read keeps the last good connection (and says so).

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::config::Config;
use crate::limit::shared::SharedLimiter;
use crate::telemetry;

/// What a refresh produced: the limiter to publish, and why the password was not taken.
pub struct Refreshed {
    pub limiter: Option<Arc<SharedLimiter>>,
    pub password_error: Option<String>,
}

/// The limiter `config` asks for, reusing `previous` when settings and password are the same.
pub fn refresh(
    config: &Config,
    previous: Option<&Arc<SharedLimiter>>,
) -> Result<Refreshed, String> {
    let Some(settings) = &config.limits.shared else {
        return Ok(Refreshed {
            limiter: None,
            password_error: None,
        });
    };
    let password = settings.password_file.as_ref().map(|f| read_password(f));
    let same_settings = previous.filter(|p| p.settings() == settings);
    match &password {
        Some(Err(e)) => {
            // Keep the last good connection; without one, the fallback decides.
            let limiter = match same_settings {
                Some(p) => p.clone(),
                None => Arc::new(SharedLimiter::new(settings, Err(()))?),
            };
            Ok(Refreshed {
                limiter: Some(limiter),
                password_error: Some(e.clone()),
            })
        }
        ok => {
            let password = ok
                .as_ref()
                .and_then(|p| p.as_ref().ok())
                .map(|p| p.as_str());
            if let Some(p) = same_settings.filter(|p| p.same_as(settings, password)) {
                return Ok(Refreshed {
                    limiter: Some(p.clone()),
                    password_error: None,
                });
            }
            if previous.is_some() && same_settings.is_some() {
                tracing::info!(server = %settings.server, "Redis password changed; reconnecting the shared rate limiter");
            }
            let limiter = Arc::new(SharedLimiter::new(settings, Ok(password))?);
            limiter.warm();
            Ok(Refreshed {
                limiter: Some(limiter),
                password_error: None,
            })
        }
    }
}

/// Says once that the password file was refused (the caller tracks "once").
pub fn password_refused(file: Option<&std::path::Path>, error: &str) {
    tracing::warn!(
        file = %file.map(|f| f.display().to_string()).unwrap_or_default(),
        error,
        "Redis password update refused; the shared rate limiter keeps its last good connection"
    );
    metrics::counter!(telemetry::SHARED_LIMIT_ERRORS_TOTAL, "reason" => "password_file")
        .increment(1);
}

/// The password, trimmed of surrounding whitespace as keys are.
fn read_password(path: &std::path::Path) -> Result<Zeroizing<String>, String> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?);
    let text = std::str::from_utf8(&bytes).map_err(|_| "is not UTF-8".to_owned())?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("is empty".into());
    }
    if trimmed.chars().any(char::is_control) {
        return Err("holds control characters".into());
    }
    Ok(Zeroizing::new(trimmed.to_owned()))
}

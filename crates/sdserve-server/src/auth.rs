//! Optional authentication: API keys (`Authorization: Bearer KEY`), operator
//! keys (`--admin-key`) and A1111-style HTTP Basic (`--api-auth USER:PASS`).
//! When any credential is configured, every route except `/livez`, `/readyz`,
//! the web page's files (`/`, `/ui/...`: no data, and the page must load to
//! ask for a key) and signed image links requires one (401 otherwise, in the dialect's error
//! shape). Secrets are compared in constant time, as given (no case folding).
//!
//! The credential used names the caller: `key:<hash>` (a SHA-256 prefix, stable
//! across restarts and key reordering, never the key itself) or `user:NAME`.
//! That name is the caller's fairness lane and the owner of its jobs: a
//! restricted caller sees only its own. Without auth the lane is the address.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;
use crate::dialects::Dialect;
use crate::error::ApiError;
use crate::extract::Caller;
use crate::jobs::ClientId;
use crate::state::AppState;

/// Routes that never require credentials (orchestrator probes, the web page).
const PUBLIC_PATHS: [&str; 3] = ["/livez", "/readyz", "/"];

/// Routes that carry their own proof (an HMAC-signed, expiring image link).
const SIGNED_PREFIX: &str = "/v1/images/files/";

/// Constant-time equality of two secrets (the length may leak, the content does not).
fn secret_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The owner name of an API key: a hash prefix, so logs and records never hold the key.
fn key_label(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("key:{}", hex::encode(&digest[..8]))
}

/// The index of the first of `keys` equal to `credential`, comparing every key.
fn find_key(keys: &[String], credential: &str) -> Option<usize> {
    let mut found = None;
    for (index, key) in keys.iter().enumerate() {
        if secret_eq(key, credential) && found.is_none() {
            found = Some(index);
        }
    }
    found
}

/// The caller a valid credential in `headers` names, or `None`.
pub fn identify(auth: &AuthConfig, headers: &HeaderMap) -> Option<Caller> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, credential) = value.split_once(' ')?;
    let credential = credential.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        let admin = find_key(&auth.admin_keys, credential);
        let user = find_key(&auth.api_keys, credential);
        let key = admin
            .map(|i| &auth.admin_keys[i])
            .or(user.map(|i| &auth.api_keys[i]))?;
        return Some(Caller {
            client: ClientId::new(key_label(key)),
            restricted: admin.is_none(),
        });
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credential)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        let mut found = None;
        for cred in &auth.basic {
            let ok = secret_eq(&cred.user, user) & secret_eq(&cred.password, password);
            if ok && found.is_none() {
                found = Some(cred.user.clone());
            }
        }
        return found.map(|u| Caller {
            client: ClientId::new(format!("user:{u}")),
            restricted: true,
        });
    }
    None
}

/// The challenge sent with a 401. A script that says so (`X-Requested-With:
/// XMLHttpRequest`, as the web page does) gets Basic under another name
/// (`xBasic`): a browser shows its own login prompt for `Basic`, which would
/// take over from the page's and, headless, stall the request.
fn challenge(auth: &AuthConfig, headers: &HeaderMap) -> &'static str {
    let script = headers
        .get("x-requested-with")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"XMLHttpRequest"));
    match (auth.basic.is_empty(), script) {
        (true, _) => "Bearer",
        (false, false) => "Basic realm=\"sdserve\"",
        (false, true) => "xBasic realm=\"sdserve\"",
    }
}

/// Middleware: attaches the [`Caller`] and refuses requests without valid credentials.
pub async fn require_auth(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let auth = &state.config.auth;
    let path = request.uri().path();
    let caller = match identify(auth, request.headers()) {
        Some(caller) => caller,
        None if !auth.enabled()
            || PUBLIC_PATHS.contains(&path)
            || path.starts_with(crate::web::ASSET_PREFIX)
            || path.starts_with(SIGNED_PREFIX) =>
        {
            // Without a credential on an open route the caller owns nothing:
            // with auth on, it must not see anyone's jobs.
            Caller {
                restricted: auth.enabled(),
                ..Caller::from_connection(request.extensions())
            }
        }
        None => {
            let error = ApiError::Unauthorized {
                challenge: challenge(auth, request.headers()),
            };
            return Dialect::for_path(path).error_response(error);
        }
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn config() -> AuthConfig {
        AuthConfig {
            api_keys: vec!["k1".into(), "Secret-Key".into()],
            basic: vec!["ann:pw:x".parse().unwrap()],
            admin_keys: vec!["root-key".into()],
        }
    }

    fn label(auth: &AuthConfig, value: &str) -> Option<(String, bool)> {
        identify(auth, &with(value)).map(|c| (c.client.as_str().to_string(), c.restricted))
    }

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn accepts_exact_keys_and_basic_pairs() {
        let auth = config();
        let (secret, restricted) = label(&auth, "Bearer Secret-Key").unwrap();
        assert!(restricted);
        assert!(
            secret.starts_with("key:") && secret.len() == 4 + 16,
            "{secret}"
        );
        assert!(!secret.contains("Secret"));
        let (k1, _) = label(&auth, "bearer k1").unwrap();
        assert_ne!(k1, secret);
        // The label depends on the key, not on its place in the list.
        let mut reordered = auth.clone();
        reordered.api_keys.reverse();
        assert_eq!(label(&reordered, "Bearer k1").unwrap().0, k1);
        let (admin, restricted) = label(&auth, "Bearer root-key").unwrap();
        assert!(!restricted);
        assert_ne!(admin, k1);
        assert!(identify(&auth, &with("Bearer secret-key")).is_none());
        assert!(identify(&auth, &with("Bearer k")).is_none());
        assert!(identify(&auth, &with("Bearer")).is_none());
        let basic = base64::engine::general_purpose::STANDARD.encode("ann:pw:x");
        assert_eq!(
            label(&auth, &format!("Basic {basic}")).unwrap(),
            ("user:ann".to_string(), true)
        );
        let wrong = base64::engine::general_purpose::STANDARD.encode("ann:pw");
        assert!(identify(&auth, &with(&format!("Basic {wrong}"))).is_none());
        assert!(identify(&auth, &with("Basic !!!")).is_none());
        assert!(identify(&auth, &HeaderMap::new()).is_none());
    }
}

//! Optional authentication: API keys (`Authorization: Bearer KEY`) and
//! A1111-style HTTP Basic (`--api-auth USER:PASS`). When any credential is
//! configured, every route except `/livez` and `/readyz` requires one (401
//! otherwise, in the dialect's error shape). Secrets are compared in constant
//! time, as given (no case folding). The credential used also names the caller's
//! fairness lane; without auth the lane is the client address.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;
use crate::dialects::Dialect;
use crate::error::ApiError;
use crate::extract::Caller;
use crate::jobs::ClientId;
use crate::state::AppState;

/// Routes that never require credentials (orchestrator probes).
const PUBLIC_PATHS: [&str; 2] = ["/livez", "/readyz"];

/// Constant-time equality of two secrets (the length may leak, the content does not).
fn secret_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The fairness lane of a valid credential in `headers`, or `None`.
pub fn identify(auth: &AuthConfig, headers: &HeaderMap) -> Option<ClientId> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, credential) = value.split_once(' ')?;
    let credential = credential.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        let mut found = None;
        for (index, key) in auth.api_keys.iter().enumerate() {
            if secret_eq(key, credential) && found.is_none() {
                found = Some(index);
            }
        }
        return found.map(|i| ClientId::new(format!("key#{i}")));
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
        return found.map(|u| ClientId::new(format!("user:{u}")));
    }
    None
}

/// The challenge sent with a 401.
fn challenge(auth: &AuthConfig) -> &'static str {
    if auth.basic.is_empty() {
        "Bearer"
    } else {
        "Basic realm=\"sdserve\""
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
        Some(client) => Caller { client },
        None if !auth.enabled() || PUBLIC_PATHS.contains(&path) => {
            Caller::from_connection(request.extensions())
        }
        None => {
            let error = ApiError::Unauthorized {
                challenge: challenge(auth),
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
        }
    }

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn accepts_exact_keys_and_basic_pairs() {
        let auth = config();
        assert_eq!(
            identify(&auth, &with("Bearer Secret-Key"))
                .unwrap()
                .as_str(),
            "key#1"
        );
        assert_eq!(
            identify(&auth, &with("bearer k1")).unwrap().as_str(),
            "key#0"
        );
        assert!(identify(&auth, &with("Bearer secret-key")).is_none());
        assert!(identify(&auth, &with("Bearer k")).is_none());
        assert!(identify(&auth, &with("Bearer")).is_none());
        let basic = base64::engine::general_purpose::STANDARD.encode("ann:pw:x");
        assert_eq!(
            identify(&auth, &with(&format!("Basic {basic}")))
                .unwrap()
                .as_str(),
            "user:ann"
        );
        let wrong = base64::engine::general_purpose::STANDARD.encode("ann:pw");
        assert!(identify(&auth, &with(&format!("Basic {wrong}"))).is_none());
        assert!(identify(&auth, &with("Basic !!!")).is_none());
        assert!(identify(&auth, &HeaderMap::new()).is_none());
    }
}

//! Request parsing shared by the dialects, with every failure turned into an
//! [`ApiError`] (so it gets the dialect's error shape and a 4xx, never axum's
//! plain-text rejections): JSON bodies with the path of a bad field, UUID path ids,
//! and the caller's identity for fairness.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{ConnectInfo, FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::Extensions;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::jobs::{ClientId, InvalidId};

/// Parses a JSON body; a type or missing-field error names the field's path.
pub fn parse_json<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| match rejection {
        BytesRejection::FailedToBufferBody(e) if e.status() == 413 => {
            ApiError::BodyTooLarge { limit }
        }
        other => ApiError::BadBody(other.body_text()),
    })?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => ApiError::InvalidField {
                field: field_of(&path, &inner.to_string()),
                message: inner.to_string(),
            },
            serde_json::error::Category::Io => ApiError::BadBody(inner.to_string()),
            _ => ApiError::MalformedJson(inner.to_string()),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    Ok(value)
}

/// The field a serde data error is about: its path, plus the field a
/// "missing field `x`" / "unknown field `x`" message names.
fn field_of(path: &str, message: &str) -> String {
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    match (path, named) {
        (".", Some(name)) => name.to_string(),
        (".", None) => "body".to_string(),
        (path, Some(name)) => format!("{path}.{name}"),
        (path, None) => path.to_string(),
    }
}

/// Parses a path id, accepting only the canonical UUID form.
pub fn parse_id<I: FromStr<Err = InvalidId>>(
    path: Result<Path<String>, PathRejection>,
) -> Result<I, ApiError> {
    let Path(text) = path.map_err(|e| ApiError::BadBody(e.body_text()))?;
    Ok(text.parse::<I>()?)
}

/// Who is calling: set by the auth layer from the credential used, else the
/// client's IP address. Used for round-robin fairness and A1111 interrupt.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The fairness lane.
    pub client: ClientId,
}

impl Caller {
    /// The caller known from the connection alone.
    pub fn from_connection(extensions: &Extensions) -> Self {
        let label = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| format!("ip:{}", addr.ip()))
            .unwrap_or_else(|| "local".to_string());
        Self {
            client: ClientId::new(label),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(|| Caller::from_connection(&parts.extensions)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        steps: Option<i64>,
        nested: Option<Vec<u8>>,
    }

    fn parse(text: &str) -> Result<Body, ApiError> {
        parse_json(Ok(Bytes::from(text.to_string())), 100)
    }

    #[test]
    fn classifies_json_errors() {
        assert!(matches!(parse("{"), Err(ApiError::MalformedJson(_))));
        assert!(matches!(parse(""), Err(ApiError::MalformedJson(_))));
        assert!(matches!(
            parse("{} trailing"),
            Err(ApiError::MalformedJson(_))
        ));
        match parse(r#"{"steps": "ten"}"#) {
            Err(ApiError::InvalidField { field, .. }) => assert_eq!(field, "steps"),
            other => panic!("{other:?}"),
        }
        match parse(r#"{"nested": [1, 300]}"#) {
            Err(ApiError::InvalidField { field, .. }) => assert_eq!(field, "nested[1]"),
            other => panic!("{other:?}"),
        }
        match parse(r#"{"steps": 1, "nested": [1], "x": 1}"#) {
            Ok(_) => {}
            other => panic!("{other:?}"),
        }
        match parse("[1]") {
            Err(ApiError::InvalidField { field, .. }) => assert_eq!(field, "body"),
            other => panic!("{other:?}"),
        }
        assert!(parse(r#"{"steps": 3}"#).is_ok());
    }
}

//! Request parsing shared by the dialects, with every failure turned into an
//! [`ApiError`] (so it gets the dialect's error shape and a 4xx, never axum's
//! plain-text rejections): JSON bodies with the path of a bad field, UUID path ids,
//! and the caller's identity for fairness.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::Extensions;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::jobs::{ClientId, InvalidId};

/// The buffered body, or why there is none: over `limit` (413) or unreadable.
pub fn read_body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection {
        BytesRejection::FailedToBufferBody(e) if e.status() == 413 => {
            ApiError::BodyTooLarge { limit }
        }
        other => ApiError::BadBody(other.body_text()),
    })
}

/// Parses a JSON body; a type or missing-field error names the field's path.
pub fn parse_json<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = read_body(body, limit)?;
    // serde would read a struct from a JSON array too; every body here is an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                Ok(_) => ApiError::InvalidField {
                    field: "body".into(),
                    message: "the request body must be a JSON object".into(),
                },
                Err(e) => ApiError::MalformedJson(e.to_string()),
            },
        );
    }
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

/// Integer fields read as pydantic (and JSON Schema's `integer`) read them: an
/// integer, or a number with no fractional part (`40.0`); `40.5`, strings and
/// values outside the type's range are refused. Use with `#[serde(default,
/// deserialize_with = "...")]`.
pub mod whole_number {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer};

    /// 2^63 and 2^64 as floats: the first values out of range.
    const I64_END: f64 = 9_223_372_036_854_775_808.0;
    const U64_END: f64 = 18_446_744_073_709_551_616.0;

    fn whole(n: &serde_json::Number, low: f64, end: f64) -> Option<f64> {
        n.as_f64()
            .filter(|f| f.is_finite() && f.fract() == 0.0 && *f >= low && *f < end)
    }

    /// An optional `i64`.
    pub fn option_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
            return Ok(None);
        };
        n.as_i64()
            .or_else(|| whole(&n, -I64_END, I64_END).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| {
                D::Error::custom(format!(
                    "expected a whole number in the range of i64, got {n}"
                ))
            })
    }

    /// An optional `u64`.
    pub fn option_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
            return Ok(None);
        };
        n.as_u64()
            .or_else(|| whole(&n, 0.0, U64_END).map(|f| f as u64))
            .map(Some)
            .ok_or_else(|| {
                D::Error::custom(format!(
                    "expected a whole number from 0 to 18446744073709551615, got {n}"
                ))
            })
    }
}

/// Parses a query string; a parameter of the wrong type (or given twice) is a
/// 422 naming it, as a bad body field is.
pub fn parse_query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    let rejection = match query {
        Ok(Query(value)) => return Ok(value),
        Err(rejection) => rejection,
    };
    let text = rejection.body_text();
    let detail = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(&text);
    // serde_path_to_error writes `path: message` when it knows the path.
    let field = match detail.split_once(": ") {
        Some((path, _))
            if !path.is_empty()
                && path
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.[]".contains(c)) =>
        {
            path.to_string()
        }
        _ => field_of(".", detail),
    };
    Err(ApiError::InvalidField {
        field,
        message: detail.to_string(),
    })
}

/// The field a serde data error is about: its path, plus the field a
/// "missing field `x`" / "unknown field `x`" message names.
fn field_of(path: &str, message: &str) -> String {
    let named = ["missing field `", "unknown field `", "duplicate field `"]
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
/// client's IP address. Used for round-robin fairness, A1111 interrupt, and
/// (when credentials are configured) to show each caller only its own jobs.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The fairness lane, and the owner of the jobs this caller submits.
    pub client: ClientId,
    /// True when the caller sees only its own jobs (auth on, not an admin key).
    pub restricted: bool,
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
            restricted: false,
        }
    }

    /// True when this caller may see a job submitted by `owner`.
    pub fn may_see(&self, owner: &ClientId) -> bool {
        !self.restricted || self.client == *owner
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

    #[derive(Debug, serde::Deserialize)]
    struct Numbers {
        #[serde(default, deserialize_with = "whole_number::option_i64")]
        signed: Option<i64>,
        #[serde(default, deserialize_with = "whole_number::option_u64")]
        unsigned: Option<u64>,
    }

    fn numbers(text: &str) -> Result<(Option<i64>, Option<u64>), ApiError> {
        parse_json::<Numbers>(Ok(Bytes::from(text.to_string())), 1000)
            .map(|n| (n.signed, n.unsigned))
    }

    #[test]
    fn whole_floats_are_integers_as_in_pydantic() {
        assert_eq!(
            numbers(r#"{"signed": 40.0, "unsigned": 7.0}"#).unwrap(),
            (Some(40), Some(7))
        );
        assert_eq!(
            numbers(r#"{"signed": -1, "unsigned": 18446744073709551615}"#).unwrap(),
            (Some(-1), Some(u64::MAX))
        );
        assert_eq!(numbers(r#"{"signed": null}"#).unwrap(), (None, None));
        assert_eq!(numbers("{}").unwrap(), (None, None));
        assert_eq!(numbers(r#"{"signed": -4e3}"#).unwrap(), (Some(-4000), None));
        for bad in [
            r#"{"signed": 40.5}"#,
            r#"{"signed": "40"}"#,
            r#"{"signed": 9223372036854775808}"#,
            r#"{"signed": 1e300}"#,
            r#"{"unsigned": -1}"#,
            r#"{"unsigned": -1.0}"#,
            r#"{"unsigned": 18446744073709551616}"#,
            r#"{"unsigned": true}"#,
        ] {
            match numbers(bad) {
                Err(ApiError::InvalidField { field, .. }) => {
                    assert!(field == "signed" || field == "unsigned", "{bad}: {field}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Flags {
        flag: Option<bool>,
    }

    fn query(text: &str) -> Result<Flags, ApiError> {
        let uri: axum::http::Uri = format!("/x?{text}").parse().unwrap();
        parse_query(Query::try_from_uri(&uri))
    }

    #[test]
    fn bad_query_parameters_are_named() {
        assert_eq!(query("flag=true").unwrap().flag, Some(true));
        assert_eq!(query("").unwrap().flag, None);
        assert_eq!(query("other=1").unwrap().flag, None);
        for bad in ["flag=null", "flag=1", "flag=", "flag=true&flag=false"] {
            match query(bad) {
                Err(ApiError::InvalidField { field, .. }) => assert_eq!(field, "flag", "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
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
        for not_object in ["[1]", "[]", "  [\"p\", 1]", "1", "\"s\"", "null"] {
            match parse(not_object) {
                Err(ApiError::InvalidField { field, message }) => {
                    assert_eq!(field, "body");
                    assert!(message.contains("JSON object"), "{message}");
                }
                other => panic!("{not_object}: {other:?}"),
            }
        }
        assert!(matches!(parse("[1"), Err(ApiError::MalformedJson(_))));
        assert!(parse(r#"{"steps": 3}"#).is_ok());
    }
}

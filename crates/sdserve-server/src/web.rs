//! The web page at `/`: a small front end over the native API, for people who
//! share one sdserve from a browser. Its files (`assets/web/`) are plain HTML,
//! CSS and ES modules with no build step, embedded in the binary at compile
//! time, so the page works in an air-gapped cluster: nothing is fetched from
//! another host, and the Content-Security-Policy sent with every file says so.
//!
//! The page and its files are public (see `auth.rs`): they hold no data, and
//! the page must load before it can ask for the key the API wants.

use axum::extract::Path;
use axum::http::header::{self, HeaderName};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::dialects::Dialect;
use crate::error::ApiError;

/// URL prefix of the page's files (scripts, styles, icon).
pub const ASSET_PREFIX: &str = "/ui/";

/// Only this origin: scripts, styles, fetches; images also from `data:` and
/// `blob:` URLs (live previews, dropped files, canvases). No inline script,
/// no frames, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; \
manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file: its name below [`ASSET_PREFIX`], type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../assets/web/", $name)),
        }
    };
}

/// The page itself, served at `/`.
const INDEX: &[u8] = include_bytes!("../assets/web/index.html");

/// Every file the page loads; anything else below `/ui/` is a 404.
const ASSETS: &[Asset] = &[
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("main.js", JS),
    asset!("api.js", JS),
    asset!("form.js", JS),
    asset!("watch.js", JS),
    asset!("gallery.js", JS),
    asset!("pnginfo.js", JS),
    asset!("images.js", JS),
    asset!("auth.js", JS),
];

/// The page's routes.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/ui/{file}", get(asset))
}

/// The page's headers: its type, the policy, and revalidation on every load
/// (the files change with the binary, and are small).
fn with_headers(content_type: &'static str, body: &'static [u8]) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ];
    let mut response = (StatusCode::OK, body).into_response();
    for (name, value) in headers {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}

/// `GET /`: the page.
async fn index() -> Response {
    with_headers("text/html; charset=utf-8", INDEX)
}

/// `GET /ui/{file}`: one of the page's files.
async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => with_headers(a.content_type, a.body),
        None => Dialect::Native.error_response(ApiError::NoRoute(format!("GET /ui/{file}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_served() {
        let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        let mut sources = vec![std::str::from_utf8(INDEX).unwrap_or_default()];
        sources.extend(
            ASSETS
                .iter()
                .filter(|a| a.name.ends_with(".js"))
                .filter_map(|a| std::str::from_utf8(a.body).ok()),
        );
        for source in sources {
            for part in source.split(['"', '\'']) {
                let Some(name) = part.strip_prefix("./").or(part.strip_prefix(ASSET_PREFIX)) else {
                    continue;
                };
                if name.ends_with(".js") || name.ends_with(".css") || name.ends_with(".svg") {
                    assert!(names.contains(&name), "{name} is referenced but not served");
                }
            }
        }
    }

    #[test]
    fn the_policy_names_no_other_host() {
        for directive in CONTENT_SECURITY_POLICY.split(';') {
            for source in directive.split_whitespace().skip(1) {
                assert!(
                    ["'self'", "'none'", "data:", "blob:"].contains(&source),
                    "{directive}"
                );
            }
        }
    }
}

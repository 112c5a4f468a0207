//! The web portal: one page of plain HTML, CSS and JavaScript, embedded in the binary and
//! served by the same router as the API, so it works the same under Lambda and `jewel-server`.
//!
//! What it owns: `/` (the page) and `/portal/{file}` (its assets). Nothing is fetched from
//! anywhere else: no CDN, no web fonts, icons are drawn with inline SVG built by the script.
//! The page talks only to the JSON API under `/api/v1` and to the block URLs that API hands out.
//!
//! Security, and why each header is here:
//! - `Content-Security-Policy`: scripts and styles only from this origin, no inline script, no
//!   `eval`, no plugins, no framing (`frame-ancestors 'none'`), no `<base>` tricks. Even if a
//!   file name ever reached the DOM as markup, nothing in it could run. `connect-src` allows
//!   this origin plus the block store's origin when blocks live elsewhere: in AWS mode the
//!   S3 endpoint is derived from the environment ([`PortalConfig::from_env`]);
//!   `JEWEL_PORTAL_BLOCK_ORIGINS` (space-separated origins) overrides it, or use
//!   [`routes_with`]. The bucket's CORS rule must allow the portal's origin (terraform/s3.tf).
//! - `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer` (a block URL or a page
//!   address never leaks to another site), `Cross-Origin-Opener-Policy: same-origin`.
//! - The page keeps the token in `sessionStorage` (gone when the tab closes) and sends it only
//!   as an `Authorization` header on same-origin API calls; block URLs are signed and get no
//!   token. The script inserts every name with `textContent`, never as markup.
//!
//! Downloads are assembled in the browser from the file's blocks (each checked against its
//! SHA-256) into a `Blob` of type `application/octet-stream`, saved through an `<a download>`
//! link that carries the file name; the content is never rendered in this origin. See
//! `docs/PORTAL.md`.
//!
//! Assets are small and few; each gets a strong `ETag` (its SHA-256) and `Cache-Control:
//! no-cache`, so a browser revalidates cheaply and a new binary is picked up at once.

use std::sync::{Arc, OnceLock};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

/// Every asset under `/portal/`; `index.html` is also served at `/`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("assets/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("assets/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("assets/style.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("assets/icon.svg"),
    },
];

/// Environment variable with extra origins the page may `fetch` block URLs from.
pub const BLOCK_ORIGINS_ENV: &str = "JEWEL_PORTAL_BLOCK_ORIGINS";

/// How the portal is served.
#[derive(Debug, Clone, Default)]
pub struct PortalConfig {
    /// Origins (scheme://host[:port]) besides this one that block URLs point to, e.g. the S3
    /// bucket's; empty for the embedded block store, whose URLs are relative to this origin.
    pub block_origins: Vec<String>,
}

impl PortalConfig {
    /// From the environment: [`BLOCK_ORIGINS_ENV`] when set; otherwise, in AWS mode
    /// (`JEWEL_BACKEND=aws`, or running in Lambda), the S3 endpoint the presigned URLs point
    /// to (path-style: `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, else
    /// `https://s3.<AWS_REGION>.amazonaws.com`). Entries that are not plain http(s) origins
    /// are ignored (with a warning) so a typo cannot open the policy wide.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let mut wanted: Vec<String> = Vec::new();
        if let Some(raw) = var(BLOCK_ORIGINS_ENV) {
            wanted.extend(raw.split_whitespace().map(str::to_string));
        } else if var("JEWEL_BACKEND").as_deref() == Some("aws")
            || (var("JEWEL_BACKEND").is_none() && var("AWS_LAMBDA_FUNCTION_NAME").is_some())
        {
            if let Some(url) = var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL")) {
                wanted.push(origin_of(&url));
            } else if let Some(region) = var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")) {
                wanted.push(format!("https://s3.{region}.amazonaws.com"));
            }
        }
        let mut block_origins = Vec::new();
        for origin in wanted {
            if is_plain_origin(&origin) {
                block_origins.push(origin);
            } else {
                tracing::warn!(
                    origin,
                    "ignoring block origin for the portal: not an http(s) origin"
                );
            }
        }
        PortalConfig { block_origins }
    }

    /// The Content-Security-Policy header value for every portal answer.
    pub fn csp(&self) -> String {
        let mut connect = String::from("'self'");
        for origin in &self.block_origins {
            connect.push(' ');
            connect.push_str(origin);
        }
        format!(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; \
             connect-src {connect}; font-src 'none'; object-src 'none'; media-src 'none'; \
             frame-src 'none'; worker-src 'none'; base-uri 'none'; form-action 'self'; \
             frame-ancestors 'none'"
        )
    }
}

/// The `scheme://host[:port]` part of a URL.
fn origin_of(url: &str) -> String {
    let url = url.trim();
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    url[..end].to_string()
}

/// `scheme://host[:port]` with nothing else: no path, no spaces, no quotes, no `;`.
fn is_plain_origin(origin: &str) -> bool {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    match rest {
        Some(host) => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
        }
        None => false,
    }
}

/// Headers shared by every portal answer, built once.
struct Served {
    csp: HeaderValue,
    etags: Vec<HeaderValue>,
}

/// The portal's routes, configured from the environment ([`PortalConfig::from_env`]).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    static CONFIG: OnceLock<PortalConfig> = OnceLock::new();
    routes_with(CONFIG.get_or_init(PortalConfig::from_env).clone())
}

/// The portal's routes with an explicit configuration.
pub fn routes_with<S: Clone + Send + Sync + 'static>(config: PortalConfig) -> Router<S> {
    let served = Arc::new(Served {
        csp: HeaderValue::from_str(&config.csp()).expect("CSP is a valid header value"),
        etags: ASSETS
            .iter()
            .map(|a| {
                let hash = crate::blobs::sha256_hex(a.bytes);
                HeaderValue::from_str(&format!("\"{}\"", &hash[..32])).expect("hex is valid")
            })
            .collect(),
    });
    Router::new()
        .route("/", get(index))
        .route("/portal/{file}", get(asset))
        .with_state(served)
}

async fn index(State(served): State<Arc<Served>>, headers: HeaderMap) -> Response {
    serve(&served, 0, &headers)
}

async fn asset(
    State(served): State<Arc<Served>>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    match ASSETS.iter().position(|a| a.name == file) {
        Some(i) => serve(&served, i, &headers),
        None => {
            let mut resp = (StatusCode::NOT_FOUND, "no such portal file\n").into_response();
            security_headers(&served, resp.headers_mut());
            resp
        }
    }
}

fn serve(served: &Served, i: usize, req: &HeaderMap) -> Response {
    let asset = &ASSETS[i];
    let etag = &served.etags[i];
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == etag.to_str().unwrap_or(""))
        });
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut resp = asset.bytes.into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        resp
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    security_headers(served, h);
    resp
}

fn security_headers(served: &Served, h: &mut HeaderMap) {
    h.insert(header::CONTENT_SECURITY_POLICY, served.csp.clone());
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(app: &Router, path: &str, etag: Option<&str>) -> Response {
        let mut req = Request::get(path);
        if let Some(etag) = etag {
            req = req.header(header::IF_NONE_MATCH, etag);
        }
        app.clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn serves_page_and_assets_with_strict_headers() {
        let app: Router = routes_with(PortalConfig::default());
        for (path, ty) in [
            ("/", "text/html; charset=utf-8"),
            ("/portal/app.js", "text/javascript; charset=utf-8"),
            ("/portal/style.css", "text/css; charset=utf-8"),
            ("/portal/icon.svg", "image/svg+xml"),
        ] {
            let resp = get(&app, path, None).await;
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            let h = resp.headers();
            assert_eq!(h[header::CONTENT_TYPE], ty, "{path}");
            let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(
                csp.starts_with("default-src 'self'; script-src 'self';"),
                "{csp}"
            );
            assert!(csp.contains("frame-ancestors 'none'"));
            assert!(!csp.contains("unsafe"), "{csp}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
            let etag = h[header::ETAG].to_str().unwrap().to_string();
            let again = get(&app, path, Some(&etag)).await;
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        }
        let missing = get(&app, "/portal/../Cargo.toml", None).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let missing = get(&app, "/portal/nope.js", None).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert!(missing
            .headers()
            .contains_key(header::CONTENT_SECURITY_POLICY));
    }

    #[test]
    fn page_has_no_inline_script_or_style() {
        let html = std::str::from_utf8(ASSETS[0].bytes).unwrap();
        assert!(!html.contains("<script>"), "inline script");
        assert!(!html.contains("style="), "inline style attribute");
        assert!(!html.contains("<style"), "inline style element");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "outside URL"
        );
        let handler = html
            .split(|c: char| c.is_whitespace())
            .any(|w| w.starts_with("on") && w.contains('='));
        assert!(!handler, "inline event handler");
        let js = std::str::from_utf8(ASSETS[1].bytes).unwrap();
        assert!(!js.contains("innerHTML") && !js.contains("insertAdjacentHTML"));
        assert!(!js.contains("eval("));
    }

    #[test]
    fn block_origins_are_checked() {
        assert!(is_plain_origin("https://b.s3.eu-west-1.amazonaws.com"));
        assert!(is_plain_origin("http://127.0.0.1:9000"));
        assert!(!is_plain_origin("https://x.com; script-src *"));
        assert!(!is_plain_origin("*"));
        assert!(!is_plain_origin("https://x.com/path"));
        let env = |vars: &'static [(&'static str, &'static str)]| {
            PortalConfig::from_vars(move |name| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            })
            .block_origins
        };
        assert!(env(&[]).is_empty(), "embedded: this origin only");
        assert!(
            env(&[("AWS_REGION", "eu-west-1")]).is_empty(),
            "not in AWS mode"
        );
        assert_eq!(
            env(&[("JEWEL_BACKEND", "aws"), ("AWS_REGION", "eu-west-1")]),
            ["https://s3.eu-west-1.amazonaws.com"]
        );
        assert_eq!(
            env(&[
                ("AWS_LAMBDA_FUNCTION_NAME", "jewel"),
                ("AWS_REGION", "eu-west-1")
            ]),
            ["https://s3.eu-west-1.amazonaws.com"]
        );
        assert_eq!(
            env(&[
                ("JEWEL_BACKEND", "aws"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000/")
            ]),
            ["http://127.0.0.1:5000"]
        );
        assert_eq!(
            env(&[
                ("JEWEL_BACKEND", "aws"),
                (BLOCK_ORIGINS_ENV, "https://a.example bad;x")
            ]),
            ["https://a.example"]
        );
        let csp = PortalConfig {
            block_origins: vec!["https://b.example".into()],
        }
        .csp();
        assert!(csp.contains("connect-src 'self' https://b.example;"));
    }
}

//! The dashboard: a web page (plain ES modules, no build step) compiled into the binary
//! from `dashboard/` and served by `coda serve` at `GET /` and `GET /dashboard/...`.
//!
//! Files are embedded with `rust-embed` (in debug builds too, `debug-embed`), each with the
//! SHA-256 the macro computes at compile time as its strong `ETag`; responses carry
//! `Cache-Control: no-cache` so a browser revalidates (cheaply: `304 Not Modified`) and
//! never runs the page of an older binary. A restrictive Content-Security-Policy keeps the
//! page to its own origin (its WebSocket included).

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse};
use rust_embed::RustEmbed;

/// The embedded files of `dashboard/`. Cargo tracks the files that exist (their contents
/// are `include_bytes!`-ed); after *adding* a file, touch this one so the list is rebuilt
/// (the import test below catches a module that was missed).
#[derive(RustEmbed)]
#[folder = "dashboard/"]
struct Assets;

/// The budget for everything the page loads, uncompressed (issue #8: ≤ 300 KB).
pub const SIZE_BUDGET_BYTES: usize = 300 * 1024;

/// Same-origin only: scripts, styles, the WebSocket (`'self'` covers ws: on the same
/// host and port), the AudioWorklet module; nothing may frame the page.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; media-src 'self' blob:; worker-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// The content type of a file, by its extension.
pub fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("txt") | Some("md") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Every embedded file with its size in bytes, sorted by path.
pub fn files() -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Assets::iter()
        .filter_map(|p| Assets::get(&p).map(|f| (p.to_string(), f.data.len())))
        .collect();
    out.sort();
    out
}

/// Total size of the embedded files, bytes.
pub fn total_bytes() -> usize {
    files().iter().map(|(_, n)| n).sum()
}

/// Serves the embedded file at `path` (relative to `dashboard/`), or `None` if there is
/// no such file. Honours `If-None-Match`.
pub fn serve(req: &HttpRequest, path: &str) -> Option<HttpResponse> {
    let file = Assets::get(path)?;
    let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..16]));
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    resp.insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    if path.ends_with(".html") {
        resp.insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"));
    }
    if fresh {
        return Some(resp.finish());
    }
    Some(
        resp.content_type(content_type(path))
            .body(file.data.into_owned()),
    )
}

/// `GET /`: the page itself.
pub fn index(req: &HttpRequest) -> HttpResponse {
    serve(req, "index.html").unwrap_or_else(|| {
        HttpResponse::InternalServerError().body("the dashboard is missing from this build\n")
    })
}

/// `GET /dashboard/{path}`: the page's scripts, styles and icon.
pub async fn asset(req: HttpRequest) -> HttpResponse {
    let path = req.match_info().query("path").to_string();
    // rust-embed only knows the files it embedded: `..` or absolute paths match nothing.
    serve(&req, &path).unwrap_or_else(|| {
        HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body(format!("no such dashboard file: {path}\n"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_scripts_fit_the_size_budget() {
        let files = files();
        let total = total_bytes();
        assert!(
            files.iter().any(|(p, _)| p == "index.html"),
            "index.html must be embedded: {files:?}"
        );
        assert!(
            files.iter().any(|(p, _)| p == "js/main.js"),
            "js/main.js must be embedded: {files:?}"
        );
        assert!(
            total <= SIZE_BUDGET_BYTES,
            "the dashboard is {total} bytes, over its budget of {SIZE_BUDGET_BYTES}: {files:?}"
        );
    }

    #[test]
    fn every_embedded_file_has_a_known_content_type() {
        for (path, _) in files() {
            assert_ne!(
                content_type(&path),
                "application/octet-stream",
                "{path} would be served without a proper content type"
            );
        }
    }

    #[test]
    fn every_module_the_page_imports_is_embedded() {
        // Relative `import ... from './x.js'` in every module must name an embedded file,
        // or the page breaks only in the browser.
        let names: Vec<String> = files().into_iter().map(|(p, _)| p).collect();
        for path in names.iter().filter(|p| p.ends_with(".js")) {
            let text =
                String::from_utf8_lossy(&Assets::get(path).expect("listed").data).into_owned();
            let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let Some(spec) = line.split(['\'', '"']).nth(1) else {
                    continue;
                };
                let mut parts: Vec<&str> = dir.split('/').filter(|s| !s.is_empty()).collect();
                for seg in spec.split('/') {
                    match seg {
                        "." => {}
                        ".." => {
                            parts.pop();
                        }
                        s => parts.push(s),
                    }
                }
                let target = parts.join("/");
                assert!(
                    names.contains(&target),
                    "{path} imports {spec} ({target}), which is not embedded"
                );
            }
        }
    }
}

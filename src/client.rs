//! The CLI's own WebSocket client plumbing: where the server is and which token to show.
//! A local server's per-boot token file is used automatically.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::Loaded;

/// A connected client stream.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where to connect and with what.
#[derive(Clone)]
pub struct Target {
    /// `ws://host:port/ws`
    pub url: String,
    /// Bearer token, if any.
    pub token: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Resolves the target: explicit URL and token win; else the configured server with
/// `CODA_TOKEN` or the per-boot token file of that port.
pub fn resolve(loaded: &Loaded, url: Option<String>, token: Option<String>) -> Target {
    let s = &loaded.settings;
    let host = match s.server.host.as_str() {
        "0.0.0.0" => "127.0.0.1".to_string(),
        "::" | "[::]" => "[::1]".to_string(),
        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        h => h.to_string(),
    };
    let port = url.as_deref().and_then(port_of).unwrap_or(s.server.port);
    let url = url.unwrap_or_else(|| format!("ws://{host}:{}/ws", s.server.port));
    let token = token
        .or_else(|| std::env::var("CODA_TOKEN").ok().filter(|t| !t.is_empty()))
        .or_else(|| coda_actors::auth::BootToken::read(&s.token_file(port)).ok());
    Target { url, token }
}

fn port_of(url: &str) -> Option<u16> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let (_, port) = authority.rsplit_once(':')?;
    port.parse().ok()
}

/// A connection failure, said plainly.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server URL {url}: {message}")]
    BadUrl { url: String, message: String },
    #[error("cannot connect to {url}: {message} (is `coda serve` running?)")]
    Connect { url: String, message: String },
    #[error("{url} refused the connection: HTTP {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
    #[error("timed out connecting to {url}")]
    Timeout { url: String },
}

/// Connects with the token in an `Authorization: Bearer` header.
pub async fn connect(target: &Target) -> Result<Ws, ClientError> {
    let mut req = target
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::BadUrl {
            url: target.url.clone(),
            message: e.to_string(),
        })?;
    if let Some(t) = &target.token {
        let v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| ClientError::BadUrl {
            url: target.url.clone(),
            message: "token contains characters not allowed in a header".into(),
        })?;
        req.headers_mut().insert("authorization", v);
    }
    let fut = tokio_tungstenite::connect_async(req);
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Err(_) => Err(ClientError::Timeout {
            url: target.url.clone(),
        }),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).trim().to_string())
                .unwrap_or_default();
            Err(ClientError::Refused {
                url: target.url.clone(),
                status,
                body,
            })
        }
        Ok(Err(e)) => Err(ClientError::Connect {
            url: target.url.clone(),
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn port_parsing() {
        assert_eq!(super::port_of("ws://127.0.0.1:9000/ws"), Some(9000));
        assert_eq!(super::port_of("ws://[::1]:9001/"), Some(9001));
        assert_eq!(super::port_of("ws://localhost/ws"), None);
    }
}

//! HTTP plumbing shared by the remote engines: one client per provider (rustls with the
//! ring provider, connect and idle timeouts), status/body → [`LlmError`] mapping,
//! `Retry-After`, bounded retries with backoff where a retry is safe, and the two
//! streaming body formats (SSE and NDJSON) decoded into [`StreamChunk`]s.
//!
//! Where a retry is safe: only before any answer was received — the connection could not
//! be made, or the server answered 429 / 502 / 503 / 504 without processing the request.
//! A stream that fails midway is never retried (tokens were already delivered).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Once;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;

use super::{ChatRequest, ChatStream, LlmError, StreamChunk};

/// Timeouts and retry bounds of one provider's HTTP client.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpOptions {
    /// Most time to establish a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Most time without receiving a byte, while waiting for the answer's headers or
    /// between two pieces of a streamed body.
    pub idle_timeout: Duration,
    /// Retries after the first attempt (0 = none), for failures where a retry is safe.
    pub max_retries: u32,
    /// Longest `Retry-After` honoured by waiting; a longer one is returned to the caller
    /// as `rate_limited` at once.
    pub max_retry_wait: Duration,
    /// First backoff delay (doubles each retry, with jitter, up to 8 s).
    pub backoff_base: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
            max_retries: 2,
            max_retry_wait: Duration::from_secs(20),
            backoff_base: Duration::from_millis(250),
        }
    }
}

/// Installs rustls' ring provider as the process default, once; every reqwest client of
/// the process needs it (reqwest is built without a provider of its own).
pub fn install_tls_provider() {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // Err means another part of the process installed one first: that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Largest error body read to build a message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Builds a client with `opts`' timeouts. The first call installs rustls' ring provider
/// as the process default (reqwest is built without a provider of its own).
pub fn client(opts: &HttpOptions) -> Result<reqwest::Client, LlmError> {
    install_tls_provider();
    reqwest::Client::builder()
        .connect_timeout(opts.connect_timeout)
        .read_timeout(opts.idle_timeout)
        .tcp_nodelay(true)
        .user_agent(concat!("coda/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| LlmError::Unavailable(format!("cannot build the HTTP client: {e}")))
}

/// Maps a transport error (no HTTP status) to the error set.
pub fn map_transport(provider: &str, url: &str, e: &reqwest::Error) -> LlmError {
    let cause = root_cause(e);
    if e.is_timeout() {
        LlmError::Timeout(format!(
            "{provider}: no answer from {url} in time ({cause})"
        ))
    } else if e.is_connect() {
        LlmError::Unavailable(format!("{provider}: cannot connect to {url}: {cause}"))
    } else if e.is_body() || e.is_decode() {
        LlmError::Unavailable(format!(
            "{provider}: the connection to {url} broke off mid-answer: {cause}"
        ))
    } else {
        LlmError::Unavailable(format!("{provider}: request to {url} failed: {cause}"))
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// `Retry-After` (seconds or an HTTP date) or `retry-after-ms`, when present.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let v = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The human part of an error body, whatever the server's dialect: OpenAI
/// (`{"error":{"message"}}`), Ollama (`{"error":"..."}`), OCI (`{"code","message"}`),
/// FastAPI-style (`{"detail"}`), or the text itself.
pub fn error_message(body: &str) -> String {
    let body = body.trim();
    let from_json = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let err = &v["error"];
            let msg = err["message"]
                .as_str()
                .or_else(|| err.as_str())
                .or_else(|| v["message"].as_str())
                .or_else(|| v["detail"].as_str())?;
            let code = err["code"]
                .as_str()
                .or_else(|| err["type"].as_str())
                .or_else(|| v["code"].as_str());
            Some(match code {
                Some(c) if !c.is_empty() => format!("{msg} ({c})"),
                _ => msg.to_string(),
            })
        });
    let msg = from_json.unwrap_or_else(|| body.to_string());
    truncate(&msg, 500)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Maps a non-success status and its body to the error set.
pub fn map_status(
    provider: &str,
    url: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
) -> LlmError {
    let msg = error_message(body);
    let msg = if msg.is_empty() {
        format!("{provider}: HTTP {status} from {url}")
    } else {
        format!("{provider}: {msg} (HTTP {})", status.as_u16())
    };
    // OCI's request id is what its support asks for.
    let msg = match headers.get("opc-request-id").and_then(|v| v.to_str().ok()) {
        Some(id) => format!("{msg} [opc-request-id: {id}]"),
        None => msg,
    };
    match status.as_u16() {
        401 | 403 => LlmError::Auth(msg),
        404 => LlmError::NotFound(msg),
        429 => LlmError::RateLimited {
            retry_after: retry_after(headers),
            message: msg,
        },
        408 | 504 => LlmError::Timeout(msg),
        500 | 502 | 503 => LlmError::Unavailable(msg),
        400 | 405 | 409 | 413 | 422 => LlmError::Invalid(msg),
        _ => LlmError::BadResponse(msg),
    }
}

/// Reads at most [`MAX_ERROR_BODY`] bytes of a body as text (for error messages).
async fn read_error_body(resp: reqwest::Response) -> String {
    let mut out = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(Ok(chunk)) = body.next().await {
        let room = MAX_ERROR_BODY.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One failed attempt, with what the retry policy needs to know.
struct Attempt {
    error: LlmError,
    retryable: bool,
    retry_after: Option<Duration>,
}

/// Sends the request `make` builds, retrying (with exponential backoff and jitter, or the
/// server's `Retry-After`) where that is safe. Returns the response once its status is a
/// success; anything else is mapped into the error set. `make` is called once per attempt
/// (so signed requests get a fresh date and signature).
pub async fn send<F>(
    provider: &str,
    url: &str,
    opts: &HttpOptions,
    mut make: F,
) -> Result<reqwest::Response, LlmError>
where
    F: FnMut() -> Result<reqwest::RequestBuilder, LlmError>,
{
    let attempt = || {
        let built = make();
        async move {
            let rb = built.map_err(|error| Attempt {
                error,
                retryable: false,
                retry_after: None,
            })?;
            let resp = match rb.send().await {
                Ok(r) => r,
                Err(e) => {
                    // A refused or timed-out connection never reached the server.
                    let retryable = e.is_connect();
                    return Err(Attempt {
                        error: map_transport(provider, url, &e),
                        retryable,
                        retry_after: None,
                    });
                }
            };
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            let headers = resp.headers().clone();
            let body = read_error_body(resp).await;
            let error = map_status(provider, url, status, &headers, &body);
            let retry_after = retry_after(&headers);
            let retryable = matches!(status.as_u16(), 429 | 502 | 503 | 504);
            Err(Attempt {
                error,
                retryable,
                retry_after,
            })
        }
    };
    let max_wait = opts.max_retry_wait;
    let backoff = ExponentialBuilder::default()
        .with_min_delay(opts.backoff_base)
        .with_max_delay(Duration::from_secs(8))
        .with_max_times(opts.max_retries as usize)
        .with_jitter();
    attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|a: &Attempt| a.retryable && a.retry_after.is_none_or(|d| d <= max_wait))
        .adjust(|a: &Attempt, planned| match (planned, a.retry_after) {
            // The server said when: wait that long (bounded above by `when`).
            (Some(_), Some(ra)) => Some(ra),
            (planned, _) => planned,
        })
        .notify(|a: &Attempt, wait| {
            tracing::warn!(provider, url, error = %a.error, wait_ms = wait.as_millis() as u64, "retrying");
        })
        .await
        .map_err(|a| a.error)
}

/// A streamed body as `Bytes` pieces.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

/// One payload of a streamed answer: an SSE event (`event` is its type, empty for the
/// default) or an NDJSON line (`event` empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// SSE event type (`""` = default `message`).
    pub event: String,
    /// The data (SSE `data:` lines joined by `\n`, or the NDJSON line).
    pub data: String,
}

type PayloadStream = Pin<Box<dyn Stream<Item = Result<Payload, LlmError>> + Send>>;

/// A remote provider's JSON request body for `req`, built by `body` once `req` is known
/// to have something to send.
pub fn chat_body(
    req: &ChatRequest,
    body: impl FnOnce() -> serde_json::Value,
) -> Result<Bytes, LlmError> {
    if req.messages.is_empty() {
        return Err(LlmError::Invalid("no messages to send".into()));
    }
    serde_json::to_vec(&body())
        .map(Bytes::from)
        .map_err(|e| LlmError::Invalid(format!("cannot encode the request: {e}")))
}

/// Splits a `text/event-stream` body into events (comments and keep-alives dropped;
/// events and lines split anywhere across reads are reassembled).
pub fn sse_payloads(provider: &str, url: &str, body: ByteStream) -> PayloadStream {
    use eventsource_stream::{EventStreamError, Eventsource};
    let provider = provider.to_string();
    let url = url.to_string();
    Box::pin(body.eventsource().map(move |item| match item {
        Ok(ev) => Ok(Payload {
            event: if ev.event == "message" {
                String::new()
            } else {
                ev.event
            },
            data: ev.data,
        }),
        Err(EventStreamError::Transport(e)) => Err(map_transport(&provider, &url, &e)),
        Err(EventStreamError::Utf8(e)) => Err(LlmError::BadResponse(format!(
            "{provider}: the event stream is not UTF-8: {e}"
        ))),
        Err(EventStreamError::Parser(e)) => Err(LlmError::BadResponse(format!(
            "{provider}: malformed event stream: {e}"
        ))),
    }))
}

/// Splits an NDJSON body into lines (a line may be split anywhere across reads; blank
/// lines are skipped; a last line without a newline is still delivered).
pub fn ndjson_payloads(provider: &str, url: &str, body: ByteStream) -> PayloadStream {
    struct St {
        body: ByteStream,
        buf: Vec<u8>,
        eof: bool,
        provider: String,
        url: String,
    }
    let st = St {
        body,
        buf: Vec::new(),
        eof: false,
        provider: provider.to_string(),
        url: url.to_string(),
    };
    Box::pin(futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(pos) = st.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = st.buf.drain(..=pos).collect();
                match line_payload(&st.provider, &line) {
                    Some(item) => return Some((item, st)),
                    None => continue,
                }
            }
            if st.eof {
                if st.buf.is_empty() {
                    return None;
                }
                let line = std::mem::take(&mut st.buf);
                match line_payload(&st.provider, &line) {
                    Some(item) => return Some((item, st)),
                    None => return None,
                }
            }
            match st.body.next().await {
                Some(Ok(chunk)) => st.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    st.eof = true;
                    st.buf.clear();
                    let err = map_transport(&st.provider, &st.url, &e);
                    return Some((Err(err), st));
                }
                None => st.eof = true,
            }
        }
    }))
}

fn line_payload(provider: &str, line: &[u8]) -> Option<Result<Payload, LlmError>> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(match std::str::from_utf8(line) {
        Ok(s) => Ok(Payload {
            event: String::new(),
            data: s.to_string(),
        }),
        Err(e) => Err(LlmError::BadResponse(format!(
            "{provider}: a streamed line is not UTF-8: {e}"
        ))),
    })
}

/// Turns one provider's payloads into chunks.
pub trait Decoder: Send + 'static {
    /// Decodes one payload, pushing any chunks to `out`. Returns `true` when the answer
    /// is complete (a `Done` has been pushed).
    fn feed(
        &mut self,
        payload: &Payload,
        out: &mut VecDeque<StreamChunk>,
    ) -> Result<bool, LlmError>;

    /// The body ended without a completion marker: push a `Done` if the answer is
    /// complete anyway, or say what is missing.
    fn end(&mut self, out: &mut VecDeque<StreamChunk>) -> Result<(), LlmError>;
}

/// Drives `decoder` over `payloads` as a [`ChatStream`]. The stream ends after `Done` or
/// the first error; dropping it drops the body (closing the connection: the request is
/// cancelled).
pub fn decode_stream<D: Decoder>(payloads: PayloadStream, decoder: D) -> ChatStream {
    struct St<D> {
        payloads: Option<PayloadStream>,
        decoder: D,
        queue: VecDeque<StreamChunk>,
    }
    let st = St {
        payloads: Some(payloads),
        decoder,
        queue: VecDeque::new(),
    };
    Box::pin(futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(chunk) = st.queue.pop_front() {
                return Some((Ok(chunk), st));
            }
            let payloads = st.payloads.as_mut()?;
            match payloads.next().await {
                Some(Ok(p)) => match st.decoder.feed(&p, &mut st.queue) {
                    Ok(false) => {}
                    // Complete: release the connection now, not when the caller drops us.
                    Ok(true) => st.payloads = None,
                    Err(e) => {
                        st.payloads = None;
                        st.queue.clear();
                        return Some((Err(e), st));
                    }
                },
                Some(Err(e)) => {
                    st.payloads = None;
                    st.queue.clear();
                    return Some((Err(e), st));
                }
                None => {
                    st.payloads = None;
                    if let Err(e) = st.decoder.end(&mut st.queue) {
                        st.queue.clear();
                        return Some((Err(e), st));
                    }
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after", HeaderValue::from_static("0.5"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(500)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        h.insert(
            "retry-after",
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(110) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        let mut bad = HeaderMap::new();
        bad.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&bad), None);
    }

    #[test]
    fn error_messages_from_every_dialect() {
        assert_eq!(
            error_message(
                r#"{"error":{"message":"no such model","type":"invalid_request_error","code":"model_not_found"}}"#
            ),
            "no such model (model_not_found)"
        );
        assert_eq!(
            error_message(r#"{"error":"model 'x' not found"}"#),
            "model 'x' not found"
        );
        assert_eq!(
            error_message(r#"{"code":"NotAuthenticated","message":"The required information to complete authentication was not provided."}"#),
            "The required information to complete authentication was not provided. (NotAuthenticated)"
        );
        assert_eq!(error_message(r#"{"detail":"Not Found"}"#), "Not Found");
        assert_eq!(error_message("  plain text \n"), "plain text");
        let long = "é".repeat(600);
        assert!(error_message(&long).chars().count() <= 251);
    }

    #[test]
    fn statuses_map_to_the_small_set() {
        let h = HeaderMap::new();
        let m = |s: u16| map_status("p", "u", StatusCode::from_u16(s).unwrap(), &h, "{}").code();
        assert_eq!(m(401), "auth");
        assert_eq!(m(403), "auth");
        assert_eq!(m(404), "not_found");
        assert_eq!(m(429), "rate_limited");
        assert_eq!(m(504), "timeout");
        assert_eq!(m(503), "unavailable");
        assert_eq!(m(500), "unavailable");
        assert_eq!(m(400), "invalid");
        assert_eq!(m(418), "bad_response");
    }
}

//! A scripted HTTP/1.1 server on loopback, written on raw TCP so every byte and every
//! write boundary is under control: SSE events split mid-line across writes, NDJSON lines
//! split across chunks, keep-alive comments, error bodies, `429` with `Retry-After`,
//! stalls, and connections dropped mid-answer. It records each request (head, body,
//! arrival time) and whether the client hung up on a stalled answer.
//!
//! The engines' tests and `coda bench llm` speak to it; it is not a general server (one
//! request at a time per connection, bodies by `Content-Length` only).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A request as the server received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path with query, as sent.
    pub target: String,
    /// Headers in arrival order, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the first byte of the request arrived.
    pub first_byte_at: Instant,
}

impl Recorded {
    /// A header's value (first of that name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The body as JSON (`Null` if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One step of an answer.
#[derive(Debug, Clone)]
pub enum Step {
    /// Write these bytes (one chunk in a chunked answer) and flush.
    Write(Vec<u8>),
    /// Wait.
    Sleep(Duration),
    /// Close the connection now (mid-answer if the answer is not finished).
    Close,
    /// Send nothing more and wait until the client hangs up (recorded).
    Stall,
}

/// An answer: status line and headers, then steps.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// `true`: `Transfer-Encoding: chunked`, each `Write` one chunk. `false`: the body is
    /// delimited by `Content-Length` (if known up front) or by closing the connection.
    pub chunked: bool,
    /// What to send after the head.
    pub steps: Vec<Step>,
}

impl Reply {
    /// A whole JSON (or any text) body with `Content-Length`.
    pub fn json(status: u16, body: impl Into<String>) -> Reply {
        let body: String = body.into();
        Reply {
            status,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("content-length".into(), body.len().to_string()),
            ],
            chunked: false,
            steps: vec![Step::Write(body.into_bytes())],
        }
    }

    /// A chunked streaming answer of `content_type` (`text/event-stream`,
    /// `application/x-ndjson`).
    pub fn stream(content_type: &str, steps: Vec<Step>) -> Reply {
        Reply {
            status: 200,
            headers: vec![
                ("content-type".into(), content_type.into()),
                ("cache-control".into(), "no-cache".into()),
            ],
            chunked: true,
            steps,
        }
    }

    /// An SSE answer from pieces written one by one, `pause` apart.
    pub fn sse_pieces(pieces: &[&str], pause: Duration) -> Reply {
        let mut steps = Vec::new();
        for p in pieces {
            steps.push(Step::Write(p.as_bytes().to_vec()));
            if !pause.is_zero() {
                steps.push(Step::Sleep(pause));
            }
        }
        Reply::stream("text/event-stream", steps)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// The running server. Dropping it stops accepting.
pub struct ScriptedServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    hangups: Arc<AtomicUsize>,
    writes: Arc<Mutex<Vec<Instant>>>,
    task: JoinHandle<()>,
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedServer {
    /// Starts on `127.0.0.1:0`; `handler` decides every answer.
    pub async fn start(
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> std::io::Result<ScriptedServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let hangups = Arc::new(AtomicUsize::new(0));
        let writes = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let (rq, hu, wr) = (requests.clone(), hangups.clone(), writes.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let _ = sock.set_nodelay(true);
                let (h, rq, hu, wr) = (handler.clone(), rq.clone(), hu.clone(), wr.clone());
                tokio::spawn(async move {
                    let _ = serve(sock, h, rq, hu, wr).await;
                });
            }
        });
        Ok(ScriptedServer {
            addr,
            requests,
            hangups,
            writes,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many stalled answers the client hung up on.
    pub fn hangups(&self) -> usize {
        self.hangups.load(Ordering::SeqCst)
    }

    /// When each `Write` step began writing to the socket, in order.
    pub fn write_times(&self) -> Vec<Instant> {
        self.writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits (bounded) until `cond` holds for the server's state.
    pub async fn wait_for(&self, within: Duration, cond: impl Fn(&ScriptedServer) -> bool) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if cond(self) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cond(self)
    }
}

async fn read_request(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Recorded>> {
    let mut first_byte_at = if buf.is_empty() {
        None
    } else {
        Some(Instant::now())
    };
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut tmp = [0u8; 8192];
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        first_byte_at.get_or_insert_with(Instant::now);
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let mut tmp = [0u8; 8192];
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    Ok(Some(Recorded {
        method,
        target,
        headers,
        body,
        first_byte_at: first_byte_at.unwrap_or_else(Instant::now),
    }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

async fn serve(
    mut sock: TcpStream,
    handler: Handler,
    requests: Arc<Mutex<Vec<Recorded>>>,
    hangups: Arc<AtomicUsize>,
    writes: Arc<Mutex<Vec<Instant>>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let Some(req) = read_request(&mut sock, &mut buf).await? else {
            return Ok(());
        };
        requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(req.clone());
        let reply = handler(&req);
        let delimited = reply.chunked
            || reply
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
        let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
        for (n, v) in &reply.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        if reply.chunked {
            head.push_str("transfer-encoding: chunked\r\n");
        }
        if !delimited {
            head.push_str("connection: close\r\n");
        }
        head.push_str("\r\n");
        sock.write_all(head.as_bytes()).await?;
        sock.flush().await?;
        for step in &reply.steps {
            match step {
                Step::Write(bytes) => {
                    // Stamped before the write: the moment the bytes go onto the socket.
                    writes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Instant::now());
                    if reply.chunked {
                        let mut frame = format!("{:x}\r\n", bytes.len()).into_bytes();
                        frame.extend_from_slice(bytes);
                        frame.extend_from_slice(b"\r\n");
                        sock.write_all(&frame).await?;
                    } else {
                        sock.write_all(bytes).await?;
                    }
                    sock.flush().await?;
                }
                Step::Sleep(d) => tokio::time::sleep(*d).await,
                Step::Close => return Ok(()),
                Step::Stall => {
                    // Read until the client goes away: that is the cancellation we record.
                    let mut tmp = [0u8; 1024];
                    loop {
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => {
                                hangups.fetch_add(1, Ordering::SeqCst);
                                return Ok(());
                            }
                            Ok(_) => {}
                        }
                    }
                }
            }
        }
        if reply.chunked {
            sock.write_all(b"0\r\n\r\n").await?;
            sock.flush().await?;
        }
        if !delimited {
            return Ok(());
        }
    }
}

//! Shared harness for the integration tests: runs the real `coda` binary in a private
//! temporary home, connects WebSocket clients to it, and waits for things with timeouts.
//!
//! Everything here is bounded in time and talks to 127.0.0.1 only.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The binary under test.
pub const CODA: &str = env!("CARGO_BIN_EXE_coda");

/// How long a server may take to print its `listening` line (debug build, loaded machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Default wait for one expected message.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a CLI command may run.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// Direct (one-client, unnumbered) reply types: their `seq` repeats the last stream seq.
pub const DIRECT_TYPES: &[&str] = &["replay", "command_result", "command_error", "config"];

/// Is this envelope a direct reply (not part of the numbered stream)? `system_info` is
/// direct only when it answers `get_system_info`; tests that send that without an id
/// account for it themselves.
pub fn is_direct(v: &Value) -> bool {
    DIRECT_TYPES.contains(&ty(v))
}

/// The envelope's `type` ("" when missing).
pub fn ty(v: &Value) -> &str {
    v["type"].as_str().unwrap_or("")
}

/// The envelope's `seq` (panics when missing).
pub fn seq(v: &Value) -> u64 {
    v["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("envelope without u64 seq: {v}"))
}

/// Checks the six envelope fields are present and typed.
pub fn assert_envelope(v: &Value) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("envelope is not an object: {v}"));
    assert_eq!(v["version"].as_str(), Some("1.0"), "version: {v}");
    assert!(v["seq"].is_u64(), "seq must be an unsigned integer: {v}");
    let ts = v["timestamp"]
        .as_f64()
        .unwrap_or_else(|| panic!("timestamp must be a number: {v}"));
    assert!(
        ts > 1.5e9 && ts < 1e10,
        "timestamp must be unix seconds: {v}"
    );
    assert!(
        v["type"].as_str().is_some_and(|t| !t.is_empty()),
        "type must be a non-empty string: {v}"
    );
    assert!(
        coda_protocol::EventType::parse(ty(v)).is_some(),
        "type must be a known event type: {v}"
    );
    assert!(
        v["session_id"].is_string(),
        "session_id must be a string: {v}"
    );
    assert!(v["data"].is_object(), "data must be an object: {v}");
    assert_eq!(obj.len(), 6, "envelope has exactly six fields: {v}");
    // The protocol crate's own reader agrees.
    let raw: coda_protocol::RawEnvelope =
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("RawEnvelope: {e}: {v}"));
    if let Some(res) = raw.decode() {
        res.unwrap_or_else(|e| panic!("payload does not decode ({e}): {v}"));
    }
}

// ---------------------------------------------------------------------------------------
// A private home directory, and CLI runs in it
// ---------------------------------------------------------------------------------------

/// A fresh temporary directory standing in for `$HOME`, the XDG dirs and the store.
pub struct Home {
    dir: tempfile::TempDir,
}

/// The outcome of a CLI run.
#[derive(Debug)]
pub struct Output {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Home {
    /// A new, empty home.
    pub fn new() -> Arc<Home> {
        let dir = tempfile::Builder::new()
            .prefix("coda-it-")
            .tempdir()
            .expect("tempdir");
        for sub in ["home", "config", "data", "run"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        // An XDG runtime dir is private to its user.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(
                dir.path().join("run"),
                std::fs::Permissions::from_mode(0o700),
            );
        }
        Arc::new(Home { dir })
    }

    /// The root of the temporary directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `$XDG_RUNTIME_DIR`.
    pub fn runtime_dir(&self) -> PathBuf {
        self.path().join("run")
    }

    /// `$XDG_CONFIG_HOME`.
    pub fn config_dir(&self) -> PathBuf {
        self.path().join("config")
    }

    /// The per-boot token file of a server on `port`.
    pub fn token_file(&self, port: u16) -> PathBuf {
        self.runtime_dir()
            .join("coda")
            .join(format!("{port}.token"))
    }

    /// A `coda` command with a hermetic environment (nothing inherited but `PATH`).
    pub fn command<S: AsRef<str>>(&self, args: &[S], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(CODA);
        cmd.args(args.iter().map(|a| a.as_ref()));
        cmd.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        let p = self.path();
        cmd.env("HOME", p.join("home"))
            .env("XDG_CONFIG_HOME", p.join("config"))
            .env("XDG_DATA_HOME", p.join("data"))
            .env("XDG_RUNTIME_DIR", p.join("run"))
            .env("TMPDIR", p)
            .env("CODA__STORAGE__PATH", p.join("store"))
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.current_dir(p);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs `coda ARGS` to completion (bounded by [`CMD_TIMEOUT`]).
    pub fn run<S: AsRef<str>>(&self, args: &[S], env: &[(&str, &str)]) -> Output {
        run_bounded(self.command(args, env), CMD_TIMEOUT)
    }

    /// `coda token create NAME [--expires E] --json` → (id, secret).
    pub fn create_token(&self, name: &str, expires: Option<&str>) -> (String, String) {
        let mut args = vec!["token", "create", name, "--json"];
        if let Some(e) = expires {
            args.extend(["--expires", e]);
        }
        let out = self.run(&args, &[]);
        assert_eq!(out.code, Some(0), "token create failed: {out:?}");
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("token create --json output is not JSON ({e}): {out:?}"));
        let id = v["id"].as_str().expect("id").to_string();
        let secret = v["secret"].as_str().expect("secret").to_string();
        assert!(!secret.is_empty());
        (id, secret)
    }

    /// `coda token revoke ID`.
    pub fn revoke_token(&self, id: &str) {
        let out = self.run(&["token", "revoke", id], &[]);
        assert_eq!(out.code, Some(0), "token revoke failed: {out:?}");
    }
}

/// Runs a command to completion within `timeout`, capturing its output. Panics (after
/// killing it) when it takes longer.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn coda");
    let out_t = drain(child.stdout.take().expect("stdout"));
    let err_t = drain(child.stderr.take().expect("stderr"));
    let status = wait_bounded(&mut child, timeout);
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_t.join().unwrap_or_default();
            panic!("command did not finish within {timeout:?}; stderr: {stderr}");
        }
    };
    Output {
        code: status.code(),
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

fn drain<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for a child to exit, up to `timeout`.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return None,
        }
    }
}

/// Sends SIGTERM to a process (through `kill(1)`: no libc dependency needed).
pub fn sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

// ---------------------------------------------------------------------------------------
// A running server
// ---------------------------------------------------------------------------------------

/// `coda serve --port 0 ...` as a child process, stopped on drop.
pub struct Server {
    child: Option<Child>,
    /// The port it listens on.
    pub port: u16,
    /// Its home (shared with whatever else uses the same store).
    pub home: Arc<Home>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Starts a server in a new home.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_in(Home::new(), args, env)
    }

    /// Starts a server in `home` (e.g. after creating tokens there, or to restart).
    pub fn start_in(home: Arc<Home>, args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_on_port(home, 0, args, env)
    }

    /// Starts a server in `home` on a given port (0: any free one), e.g. to restart a
    /// server where its clients expect it.
    pub fn start_on_port(
        home: Arc<Home>,
        port: u16,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let port = port.to_string();
        let mut all = vec!["serve", "--port", port.as_str()];
        all.extend_from_slice(args);
        let mut cmd = home.command(&all, env);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn coda serve");

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let mut err_pipe = child.stderr.take().expect("stderr");
        let stderr_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match err_pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        });

        let (tx, rx) = mpsc::channel::<String>();
        let out_pipe = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            let mut reader = BufReader::new(out_pipe);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = tx.send(line.trim_end().to_string());
                    }
                }
            }
        });

        let mut server = Server {
            child: Some(child),
            port: 0,
            home,
            stderr,
            stderr_thread: Some(stderr_thread),
        };
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(l) => l,
            Err(e) => {
                let status = server
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                panic!(
                    "coda serve printed no `listening` line ({e:?}); status {status:?}; stderr:\n{}",
                    server.stderr_text()
                );
            }
        };
        let port = line
            .strip_prefix("listening ws://127.0.0.1:")
            .and_then(|r| r.strip_suffix("/ws"))
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("unexpected first stdout line: {line:?}"));
        server.port = port;
        server
    }

    /// `ws://127.0.0.1:PORT/ws`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The per-boot token file path.
    pub fn token_file(&self) -> PathBuf {
        self.home.token_file(self.port)
    }

    /// The per-boot token.
    pub fn boot_token(&self) -> String {
        std::fs::read_to_string(self.token_file())
            .expect("per-boot token file")
            .trim()
            .to_string()
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// SIGTERM, then wait (bounded) for the exit status. Stderr is complete afterwards.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server already stopped");
        sigterm(child.id());
        let status = match wait_bounded(&mut child, Duration::from_secs(20)) {
            Some(s) => s,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("coda serve did not exit within 20 s of SIGTERM");
            }
        };
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        status
    }

    /// Waits (bounded) for the process to exit on its own, e.g. after a signal sent
    /// with [`sigterm`]. Stderr is complete afterwards.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("server already stopped");
        let status = match wait_bounded(&mut child, timeout) {
            Some(s) => s,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("coda serve did not exit within {timeout:?}");
            }
        };
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        status
    }

    /// Has the process exited (without waiting)?
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Connects a client with no extra headers.
    pub async fn client(&self) -> Client {
        Client::connect(&self.url(), &[]).await
    }

    /// Connects a client and completes `hello` (the answer is returned, the replay is
    /// left in the stream).
    pub async fn hello_client(&self) -> (Client, Value) {
        let mut c = self.client().await;
        let answer = c.hello(json!({})).await;
        (c, answer)
    }

    /// `GET path` with the right Host header.
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, path, Some(&format!("127.0.0.1:{}", self.port))).await
    }

    /// `GET /api/system_info` as JSON.
    pub async fn system_info(&self) -> Value {
        let (status, body) = self.get("/api/system_info").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("system_info JSON")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            sigterm(child.id());
            if wait_bounded(&mut child, Duration::from_secs(5)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

/// A minimal HTTP/1.1 GET over a raw socket: (status, body). `host` is the Host header
/// (omitted when `None`).
pub async fn http_get(port: u16, path: &str, host: Option<&str>) -> (u16, String) {
    let fut = async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut req = format!("GET {path} HTTP/1.1\r\n");
        if let Some(h) = host {
            req.push_str(&format!("Host: {h}\r\n"));
        }
        req.push_str("Connection: close\r\nAccept: */*\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        parse_http(&buf)
    };
    tokio::time::timeout(RECV_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("GET {path} timed out"))
}

fn parse_http(buf: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("malformed HTTP response: {text:?}"));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

// ---------------------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------------------

/// The client stream type.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a wait for a message ended without one.
#[derive(Debug)]
pub enum End {
    /// Nothing arrived in time.
    Timeout,
    /// The server sent a close frame (code, reason).
    Closed(Option<(u16, String)>),
    /// The stream ended or failed without a close frame.
    Gone(String),
}

/// Opens a WebSocket with extra request headers; the raw result (HTTP refusals come back
/// as `Err(WsError::Http(..))`). Bounded by [`RECV_TIMEOUT`].
pub async fn try_connect(url: &str, headers: &[(&str, &str)]) -> Result<(Ws, Response), WsError> {
    let mut req = url.into_client_request().expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(req))
        .await
        .unwrap_or_else(|_| panic!("WebSocket connect to {url} timed out"))
}

/// The HTTP status of a refused upgrade (None if the error is something else).
pub fn refused_status(e: &WsError) -> Option<u16> {
    match e {
        WsError::Http(resp) => Some(resp.status().as_u16()),
        _ => None,
    }
}

/// A connected test client.
pub struct Client {
    /// The stream.
    pub ws: Ws,
    /// The upgrade response.
    pub response: Response,
    next_id: u64,
    /// A `replay` skipped while waiting for something else (it precedes the answer to a
    /// connection's first command), kept for a later `wait_type("replay")`.
    skipped_replay: Option<Value>,
}

impl Client {
    /// Connects (panics on failure).
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Client {
        match try_connect(url, headers).await {
            Ok((ws, response)) => Client {
                ws,
                response,
                next_id: 0,
                skipped_replay: None,
            },
            Err(e) => panic!("connect to {url} failed: {e}"),
        }
    }

    /// Connects with a large socket receive buffer (`SO_RCVBUF`, capped by the kernel), so
    /// a client that reads continuously rides out scheduling hiccups on a busy machine.
    pub async fn connect_big_buffer(url: &str, rcvbuf: u32) -> Client {
        let req = url.into_client_request().expect("request");
        let port = req.uri().port_u16().expect("port in URL");
        let fut = async {
            let sock = tokio::net::TcpSocket::new_v4().expect("socket");
            sock.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
            let stream = sock
                .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
                .await
                .expect("TCP connect");
            stream.set_nodelay(true).expect("TCP_NODELAY");
            tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)).await
        };
        match tokio::time::timeout(RECV_TIMEOUT, fut).await {
            Ok(Ok((ws, response))) => Client {
                ws,
                response,
                next_id: 0,
                skipped_replay: None,
            },
            Ok(Err(e)) => panic!("connect to {url} failed: {e}"),
            Err(_) => panic!("connect to {url} timed out"),
        }
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        tokio::time::timeout(RECV_TIMEOUT, self.ws.send(Message::text(text)))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    /// Sends a JSON value as a text frame.
    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(v.to_string()).await;
    }

    /// Sends a command; with `id: None`, no id field.
    pub async fn send_cmd(&mut self, ty: &str, data: Value, id: Option<&str>) {
        let mut cmd = json!({"type": ty, "data": data});
        if let Some(id) = id {
            cmd["id"] = json!(id);
        }
        self.send_json(&cmd).await;
    }

    /// A fresh command id.
    pub fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        format!("t-{}", self.next_id)
    }

    /// Sends a command with a fresh id and waits for its answer (`command_result` or
    /// `command_error`), skipping everything else.
    pub async fn request(&mut self, ty: &str, data: Value) -> Value {
        let id = self.fresh_id();
        self.send_cmd(ty, data, Some(&id)).await;
        self.wait_reply(&id, RECV_TIMEOUT).await
    }

    /// `hello` (protocol 1.0 plus `extra` fields); returns the `command_result` data.
    pub async fn hello(&mut self, extra: Value) -> Value {
        let mut data = json!({"client": "it", "protocol_version": "1.0"});
        if let (Some(d), Some(e)) = (data.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                d.insert(k.clone(), v.clone());
            }
        }
        let reply = self.request("hello", data).await;
        assert_eq!(ty(&reply), "command_result", "hello refused: {reply}");
        assert_eq!(reply["data"]["ok"], json!(true), "{reply}");
        reply["data"]["data"].clone()
    }

    /// The next text message as JSON, or why there was none. Ping/pong frames are skipped.
    pub async fn next_json(&mut self, timeout: Duration) -> Result<Value, End> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(End::Timeout),
                Ok(None) => return Err(End::Gone("stream ended".into())),
                Ok(Some(Err(e))) => return Err(End::Gone(e.to_string())),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    return Ok(serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("server sent invalid JSON ({e}): {t}")))
                }
                Message::Close(f) => return Err(End::Closed(f.map(close_parts))),
                Message::Binary(b) => panic!("unexpected binary frame of {} bytes", b.len()),
                _ => continue,
            }
        }
    }

    /// The next text message as JSON (panics on timeout or close).
    pub async fn recv_json(&mut self, timeout: Duration) -> Value {
        match self.next_json(timeout).await {
            Ok(v) => v,
            Err(e) => panic!("expected a message, got {e:?}"),
        }
    }

    /// Skips messages until one matches `pred`; panics after `timeout`.
    pub async fn wait_for<F: FnMut(&Value) -> bool>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: F,
    ) -> Value {
        if let Some(r) = self.skipped_replay.take() {
            if pred(&r) {
                return r;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_json(left).await {
                Ok(v) if pred(&v) => return v,
                Ok(v) => {
                    if ty(&v) == "replay" {
                        self.skipped_replay = Some(v);
                    }
                    continue;
                }
                Err(e) => panic!("waiting for {what}: {e:?}"),
            }
        }
    }

    /// Skips messages until one of type `t`.
    pub async fn wait_type(&mut self, t: &str, timeout: Duration) -> Value {
        self.wait_for(t, timeout, |v| ty(v) == t).await
    }

    /// Skips messages until the answer to command `id`.
    pub async fn wait_reply(&mut self, id: &str, timeout: Duration) -> Value {
        self.wait_for(&format!("the answer to {id}"), timeout, |v| {
            matches!(ty(v), "command_result" | "command_error") && v["data"]["id"] == json!(id)
        })
        .await
    }

    /// Reads until a close frame; returns its code (None if the stream ended without one).
    pub async fn wait_close(&mut self, timeout: Duration) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_json(left).await {
                Ok(_) => continue,
                Err(End::Closed(f)) => return f,
                Err(End::Gone(_)) => return None,
                Err(End::Timeout) => panic!("no close within {timeout:?}"),
            }
        }
    }

    /// Closes cleanly: sends a close frame, reads until the server's close frame (bounded),
    /// then drops the socket. (Waiting for the server to close TCP first costs up to a
    /// second per connection: the HTTP layer lingers; see `close_handshake_tcp_teardown`.)
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = self.ws.close(None).await;
            while let Some(Ok(m)) = self.ws.next().await {
                if m.is_close() {
                    break;
                }
            }
        })
        .await;
    }

    /// `ping` with an id; panics unless answered.
    pub async fn ping(&mut self) -> Value {
        let reply = self.request("ping", json!({})).await;
        assert_eq!(ty(&reply), "command_result", "ping not answered: {reply}");
        reply
    }
}

fn close_parts(f: CloseFrame) -> (u16, String) {
    (u16::from(f.code), f.reason.as_str().to_string())
}

/// Runs `f` with an overall time bound.
pub async fn bounded<T>(what: &str, limit: Duration, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not finish within {limit:?}"))
}

/// Polls `f` until it returns `Some` (every 50 ms) or `limit` passes.
pub async fn poll_until<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not true within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Raw WebSocket frames
// ---------------------------------------------------------------------------------------

/// A WebSocket opened by hand, for frames no client library will send.
pub async fn raw_upgrade(port: u16, extra: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write upgrade");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = bounded("upgrade response", RECV_TIMEOUT, s.read(&mut b))
            .await
            .expect("read");
        assert!(n == 1, "connection closed during the upgrade");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// A masked client frame header (`b0`: FIN/RSV/opcode) declaring `len` bytes.
pub fn header(b0: u8, len: u64) -> Vec<u8> {
    let mut h = vec![b0];
    if len < 126 {
        h.push(0x80 | len as u8);
    } else if len <= u64::from(u16::MAX) {
        h.push(0x80 | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(0x80 | 127);
        h.extend_from_slice(&len.to_be_bytes());
    }
    h.extend_from_slice(&[0, 0, 0, 0]); // a zero mask leaves the payload as it is
    h
}

pub fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = header(b0, payload.len() as u64);
    f.extend_from_slice(payload);
    f
}

/// Writes `bytes` unless the peer stops reading for `limit`; whether it all went.
pub async fn write_within(s: &mut TcpStream, bytes: &[u8], limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, s.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

/// The resident set of a process, in KiB (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

// ---- speech on the shipped defaults ------------------------------------------------

/// The model store scripts/setup fills (both models must be there).
pub fn store() -> PathBuf {
    let dir = std::env::var_os("CODA_TEST_MODEL")
        .filter(|p| !p.is_empty())
        .and_then(|p| PathBuf::from(p).parent().map(Path::to_path_buf))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/coda/models"))
        })
        .expect("HOME");
    for m in ["smollm2.gguf", "whisper-tiny.en.bin", "index.json"] {
        assert!(
            dir.join(m).is_file(),
            "{} is missing: scripts/setup installs the default models",
            dir.join(m).display()
        );
    }
    dir
}

/// espeak-ng's 16 kHz s16le PCM of `text`, with `pad_ms` of silence after it.
pub fn speech(text: &str, pad_ms: usize) -> (Vec<u8>, tempfile::TempPath) {
    let wav = tempfile::Builder::new()
        .suffix(".wav")
        .tempfile()
        .expect("tempfile")
        .into_temp_path();
    let status = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "160", "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .expect("espeak-ng runs (scripts/setup installs it)");
    assert!(status.success());
    let samples = coda_actors::audio::convert::read_wav_16k(&wav).expect("a WAV");
    let mut pcm: Vec<u8> = samples
        .iter()
        .flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
        .collect();
    pcm.extend(std::iter::repeat_n(0u8, pad_ms * 32));
    (pcm, wav)
}

/// `stt_start` in `mode` from `source`, which the server accepts.
pub async fn listen(c: &mut Client, mode: &str, source: &str) {
    let r = c
        .request("stt_start", json!({"mode": mode, "source": source}))
        .await;
    assert_eq!(ty(&r), "command_result", "{r}");
}

/// Streams `pcm` in 20 ms frames at real-time pace.
pub async fn stream(c: &mut Client, pcm: &[u8]) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for frame in pcm.chunks(640) {
        tick.tick().await;
        c.ws.send(Message::Binary(frame.to_vec().into()))
            .await
            .expect("send audio");
    }
}

/// Events of the next voice turn (the first `stt_result` from now on) until its
/// `latency_trace`: the turn id and its events, `stt_start` included.
pub async fn voice_turn(c: &mut Client, limit: Duration) -> (String, Vec<Value>) {
    let deadline = Instant::now() + limit;
    let mut turn: Option<String> = None;
    let mut all = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let types: Vec<&str> = all.iter().map(ty).collect();
        assert!(
            !left.is_zero(),
            "no whole voice turn within {limit:?}: {types:?}"
        );
        let v = c.recv_json(left).await;
        let t = ty(&v).to_string();
        if t == "stt_error" || t == "llm_error" {
            panic!("the default voice path failed: {v}");
        }
        if turn.is_none() && t == "stt_result" {
            turn = v["data"]["turn_id"].as_str().map(str::to_string);
        }
        let done = t == "latency_trace"
            && turn
                .as_ref()
                .is_some_and(|id| v["data"]["turn_id"] == json!(id));
        all.push(v);
        if done {
            let id = turn.unwrap_or_default();
            let events = all
                .into_iter()
                .filter(|v| v["data"]["turn_id"] == json!(id))
                .collect();
            return (id, events);
        }
    }
}

/// The turn heard the question, answered it and spoke, in that order.
pub fn check_turn(events: &[Value], question: &str) -> Value {
    let types: Vec<&str> = events.iter().map(ty).collect();
    let pos = |t: &str| {
        types
            .iter()
            .position(|x| *x == t)
            .unwrap_or_else(|| panic!("no {t} in {types:?}"))
    };
    assert!(pos("stt_result") < pos("llm_result"), "{types:?}");
    assert!(pos("llm_result") < pos("tts_result"), "{types:?}");
    assert!(pos("tts_result") < pos("latency_trace"), "{types:?}");
    let heard = events[pos("stt_result")]["data"]["text"]
        .as_str()
        .unwrap_or("");
    let errors = coda::wer::word_errors(
        &coda::wer::normalise(question),
        &coda::wer::normalise(heard),
    );
    assert!(errors <= 1, "heard {heard:?} for {question:?}");
    let answer = events[pos("llm_result")]["data"]["text"]
        .as_str()
        .unwrap_or("");
    assert!(!answer.trim().is_empty(), "empty answer: {types:?}");
    events[pos("latency_trace")]["data"].clone()
}

/// Writes 16 kHz s16le mono `pcm` as a WAV file.
pub fn write_pcm_wav(path: &Path, pcm: &[u8]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).expect("wav");
    for s in pcm.chunks_exact(2) {
        w.write_sample(i16::from_le_bytes([s[0], s[1]]))
            .expect("write");
    }
    w.finalize().expect("finalize");
}

/// 16 kHz mono PCM: 0.5 s of silence, then each text (espeak-ng) with its pause after it.
pub fn pcm_of(parts: &[(&str, usize)]) -> Vec<u8> {
    let mut pcm = vec![0u8; 500 * 32];
    for (text, pad_ms) in parts {
        let (speech, _wav) = speech(text, *pad_ms);
        pcm.extend(speech);
    }
    pcm
}

/// A free loopback port (for servers the tests start on a port they choose).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `rel` under the tools directory scripts/setup fills (`$XDG_DATA_HOME/coda/tools`), or
/// `None` when it is not there: the test is skipped, unless `require_env` is set (as
/// scripts/test sets it), which fails it.
pub fn setup_tool(rel: &str, require_env: &str) -> Option<PathBuf> {
    let found = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .map(|d| d.join("coda/tools").join(rel))
        .filter(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os(require_env).is_none(),
            "{require_env} is set but {rel} is missing: run scripts/setup"
        );
        eprintln!("skipped: {rel} is missing (scripts/setup installs it)");
    }
    found
}

/// One token of an OpenAI-style streamed answer (an SSE `data:` event), for the scripted
/// servers the tests put in place of a model.
pub fn sse_delta(content: &str) -> Vec<u8> {
    format!(
        "data: {}\n\n",
        json!({"choices":[{"index":0,"delta":{"content":content},"finish_reason":null}]})
    )
    .into_bytes()
}

/// The end of an OpenAI-style streamed answer: the stop chunk, then `[DONE]`.
pub fn sse_stop() -> Vec<u8> {
    format!(
        "data: {}\n\ndata: [DONE]\n\n",
        json!({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})
    )
    .into_bytes()
}

/// An OpenAI-style streamed answer that is one tool call, then the end.
pub fn sse_tool_call(id: &str, name: &str, args: &Value) -> Vec<u8> {
    let call = json!({"choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":id,"type":"function","function":{"name":name,"arguments":args.to_string()}}]},"finish_reason":null}]});
    let end = json!({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]});
    format!("data: {call}\n\ndata: {end}\n\ndata: [DONE]\n\n").into_bytes()
}

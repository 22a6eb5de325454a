//! Headless Chromium driven over WebDriver (Debian's `chromium` + `chromium-driver`,
//! installed by `scripts/setup`) through `fantoccini`. Every wait is bounded.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Map, Value};

/// How long chromedriver and the browser may take to come up on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A browser session, its chromedriver, and a private profile directory.
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    driver: Option<Child>,
    _profile: tempfile::TempDir,
}

fn find_on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// The browser and driver binaries (`CODA_CHROMIUM` / `CODA_CHROMEDRIVER` override).
fn binaries() -> Option<(PathBuf, PathBuf)> {
    let chromium = std::env::var_os("CODA_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| find_on_path(&["chromium", "chromium-browser", "google-chrome"]))?;
    let driver = std::env::var_os("CODA_CHROMEDRIVER")
        .map(PathBuf::from)
        .or_else(|| find_on_path(&["chromedriver"]))?;
    Some((chromium, driver))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session, or returns `None` (after a
    /// loud message) when they are not installed. With `CODA_REQUIRE_BROWSER=1` (set by
    /// `scripts/test`, which installs them) a missing browser is a failure instead.
    pub async fn start() -> Option<Browser> {
        let Some((chromium, driver)) = binaries() else {
            let msg = "chromium and chromedriver are not installed: run scripts/setup \
                       (apt-get install chromium chromium-driver)";
            if std::env::var("CODA_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
                panic!("{msg}");
            }
            eprintln!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
            eprintln!("!!! SKIPPING the dashboard browser test: {msg}");
            eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n");
            return None;
        };
        let profile = tempfile::Builder::new()
            .prefix("coda-chromium-")
            .tempdir()
            .expect("profile dir");
        // A port picked free can be taken by a parallel test's server before chromedriver
        // binds it (then the session request reaches that server): try a fresh port.
        let mut attempt = 0;
        let (client, mut browser_guard) = loop {
            attempt += 1;
            let port = free_port();
            let mut cmd = Command::new(&driver);
            cmd.arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // Its own process group: on drop the whole tree (driver and browser) goes at once.
            #[cfg(unix)]
            {
                use std::os::unix::process::CommandExt;
                cmd.process_group(0);
            }
            let child = cmd.spawn().expect("spawn chromedriver");
            let browser_guard = DriverGuard(Some(child));
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + START_TIMEOUT;
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "chromedriver did not listen within {START_TIMEOUT:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // `--no-sandbox`: containers have no user namespaces for Chromium's sandbox;
            // `--disable-dev-shm-usage`: /dev/shm is tiny there. The fake media flags give
            // getUserMedia a synthetic microphone and grant the permission.
            let args = vec![
                "--headless=new".to_string(),
                "--no-sandbox".into(),
                "--disable-dev-shm-usage".into(),
                "--disable-gpu".into(),
                "--window-size=1280,800".into(),
                "--hide-scrollbars".into(),
                "--use-fake-ui-for-media-stream".into(),
                "--use-fake-device-for-media-stream".into(),
                "--autoplay-policy=no-user-gesture-required".into(),
                "--no-first-run".into(),
                "--disable-background-timer-throttling".into(),
                "--disable-renderer-backgrounding".into(),
                format!("--user-data-dir={}", profile.path().display()),
            ];
            let mut caps = Map::new();
            caps.insert("browserName".into(), json!("chrome"));
            caps.insert(
                "goog:chromeOptions".into(),
                json!({"binary": chromium.to_string_lossy(), "args": args}),
            );
            let connect =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps)
                    .connect(&url)
                    .await;
            match connect {
                Ok(c) => break (c, browser_guard),
                Err(e) if attempt < 3 => {
                    eprintln!("chromedriver session on port {port} failed ({e}); retrying");
                    drop(browser_guard);
                }
                Err(e) => panic!("cannot start a Chromium session through chromedriver: {e}"),
            }
        };
        Some(Browser {
            client,
            driver: browser_guard.0.take(),
            _profile: profile,
        })
    }

    /// Opens `url` (bounded).
    pub async fn goto(&self, url: &str) {
        tokio::time::timeout(Duration::from_secs(30), self.client.goto(url))
            .await
            .unwrap_or_else(|_| panic!("loading {url} timed out"))
            .unwrap_or_else(|e| panic!("loading {url}: {e}"));
    }

    /// Runs `script` (a function body: use `return`) in the page.
    pub async fn js(&self, script: &str) -> Value {
        tokio::time::timeout(Duration::from_secs(20), self.client.execute(script, vec![]))
            .await
            .unwrap_or_else(|_| panic!("script timed out: {script}"))
            .unwrap_or_else(|e| panic!("script failed ({e}): {script}"))
    }

    /// Polls `script` every 100 ms until it returns something truthy; returns it.
    pub async fn wait(&self, what: &str, timeout: Duration, script: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.js(script).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() >= deadline {
                let page = self
                    .js(
                        "return {state: document.querySelector('#conn-state')?.dataset.state, \
                         detail: document.querySelector('#conn-detail')?.textContent, \
                         messages: document.querySelector('#messages')?.innerText, \
                         errors: window.codaErrors || null, \
                         text: document.body.innerText.slice(0, 1500)}",
                    )
                    .await;
                panic!("waiting for {what}: not true within {timeout:?}; page: {page:#}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the viewport.
    pub async fn screenshot(&self, path: &Path) {
        let png = tokio::time::timeout(Duration::from_secs(30), self.client.screenshot())
            .await
            .expect("screenshot timed out")
            .expect("screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Ends the session (the driver closes the browser), then stops the driver.
    pub async fn close(mut self) {
        let client = self.client.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
        DriverGuard(self.driver.take());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        DriverGuard(self.driver.take());
    }
}

/// Kills the driver's process group (driver and the browser it started) when dropped.
struct DriverGuard(Option<Child>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // The driver leads its own process group (`process_group(0)`): signal exactly
            // that group. Never a pid <= 1 (kill(-1) would reach every process).
            #[cfg(unix)]
            if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
                if pgid > 1 {
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe {
                        libc::kill(-pgid, libc::SIGKILL);
                    }
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

//! The dashboard in a real browser (headless Chromium over WebDriver) against the real
//! `coda serve`: it connects, shows a text turn in the transcript and the LLM trace, keeps
//! its metrics current, survives a server restart and a dropped connection (resuming
//! without loss), refuses a bad token visibly, shows a protocol mismatch, streams the
//! microphone (or shows why not), and keeps up with 1,000 events/s.
//!
//! With `CODA_DASHBOARD_SCREENSHOTS=DIR`, the first test also saves a PNG of each view.

mod browser;
#[path = "../common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use browser::Browser;
use coda_actors::llm::scripted::{Reply, ScriptedServer, Step};
use common::*;
use fantoccini::Locator;
use serde_json::{json, Value};

/// A generous bound for anything the page should show.
const SHOW: Duration = Duration::from_secs(20);

/// An OpenAI-compatible loopback server that streams the same answer to every request.
async fn scripted_llm() -> ScriptedServer {
    ScriptedServer::start(|_| {
        let mut steps = Vec::new();
        for piece in [
            "The sky ",
            "is blue ",
            "because air ",
            "scatters blue light.",
        ] {
            steps.push(Step::Write(common::sse_delta(piece)));
            steps.push(Step::Sleep(Duration::from_millis(40)));
        }
        steps.push(Step::Write(common::sse_stop()));
        Reply::stream("text/event-stream", steps)
    })
    .await
    .expect("scripted LLM server")
}

const ANSWER: &str = "The sky is blue because air scatters blue light.";

fn llm_env(base: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CODA__LLM__PROVIDER", "openai".to_string()),
        ("CODA__LLM__OPENAI__BASE_URL", base.to_string()),
        ("CODA__LLM__OPENAI__MODEL", "scripted-model".to_string()),
    ]
}

fn env_refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn page_url(server: &Server, rest: &str) -> String {
    format!("http://127.0.0.1:{}/{rest}", server.port)
}

async fn wait_connected(b: &Browser) {
    b.wait(
        "the connection state to show connected",
        SHOW,
        "return document.querySelector('#conn-state').dataset.state === 'connected' \
         && document.querySelector('#conn-state').textContent === 'connected'",
    )
    .await;
}

async fn show_view(b: &Browser, id: &str) {
    b.js(&format!("location.hash = '#{id}'; return true")).await;
    b.wait(
        &format!("view {id} on screen"),
        SHOW,
        &format!("return !document.querySelector('[data-view=\"{id}\"].view').hidden"),
    )
    .await;
}

/// Types into the text box and sends, as a user would.
async fn say(b: &Browser, text: &str) {
    let input = b
        .client
        .find(Locator::Css("#say-text"))
        .await
        .expect("text input");
    input.send_keys(text).await.expect("type");
    b.client
        .find(Locator::Css("#say-send"))
        .await
        .expect("send button")
        .click()
        .await
        .expect("click send");
}

async fn no_page_errors(b: &Browser) {
    let errors = b.js("return window.codaErrors").await;
    assert_eq!(errors, json!([]), "the page reported errors");
}

fn screenshot_dir() -> Option<PathBuf> {
    std::env::var_os("CODA_DASHBOARD_SCREENSHOTS").map(PathBuf::from)
}

async fn maybe_screenshot(b: &Browser, name: &str) {
    if let Some(dir) = screenshot_dir() {
        // Let the last frame paint.
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.screenshot(&dir.join(format!("{name}.png"))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_turn_shows_in_every_view_and_metrics_update() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let llm = scripted_llm().await;
    let home = Home::new();
    let added = home.run(
        &[
            "memory",
            "add",
            "The user prefers green tea in the morning",
            "--tag",
            "preference",
        ],
        &[],
    );
    assert_eq!(added.code, Some(0), "{added:?}");
    let cfg = home.path().join("dashboard.toml");
    // Fast metrics, and an alert that fires as soon as one client is connected.
    std::fs::write(
        &cfg,
        "[metrics]\ninterval_s = 0.3\ntiming_interval_s = 1.0\n\
         alerts = [ { metric = \"clients\", above = 0.5, clear_below = 0.1, level = \"warning\" } ]\n",
    )
    .expect("config");
    let env = llm_env(&format!("{}/v1", llm.url()));
    let cfg_arg = cfg.to_string_lossy().to_string();
    let server = Server::start_in(home, &["--config", &cfg_arg], &env_refs(&env));

    b.goto(&page_url(&server, "")).await;
    wait_connected(&b).await;

    // The turn, typed.
    say(&b, "why is the sky blue").await;
    b.wait(
        "the user's message in the transcript",
        SHOW,
        "return [...document.querySelectorAll('.msg.user .text')].some(n => n.textContent === 'why is the sky blue')",
    )
    .await;
    b.wait(
        "the whole answer in the transcript, no longer streaming",
        SHOW,
        &format!(
            "return [...document.querySelectorAll('.msg.assistant:not(.streaming) .text')].some(n => n.textContent === {})",
            json!(ANSWER)
        ),
    )
    .await;
    // Two more turns: the latency charts get a few points.
    for (i, text) in ["and at sunset?", "thank you"].into_iter().enumerate() {
        say(&b, text).await;
        b.wait(
            "the next answer",
            SHOW,
            &format!(
                "return document.querySelectorAll('.msg.assistant:not(.streaming)').length === {}",
                i + 2
            ),
        )
        .await;
    }
    maybe_screenshot(&b, "transcript").await;

    // The LLM trace: the answer, its tokens and timings.
    show_view(&b, "trace").await;
    let card = b
        .wait(
            "a finished trace card",
            SHOW,
            "const c = document.querySelector('.trace-card[data-state=done]'); if (!c) return null; \
             const stats = {}; const dts = c.querySelectorAll('dt'); \
             dts.forEach(dt => stats[dt.textContent] = dt.nextElementSibling.textContent); \
             if (!('total' in stats)) return null; \
             return {answer: c.querySelector('.t-answer').textContent, model: c.querySelector('.t-model').textContent, stats}",
        )
        .await;
    assert_eq!(card["answer"], json!(ANSWER), "{card}");
    assert!(
        card["model"]
            .as_str()
            .unwrap_or("")
            .contains("scripted-model"),
        "{card}"
    );
    assert_eq!(card["stats"]["tokens"], json!("4"), "{card}");
    // The scripted model reports no usage: estimated counts, no price configured.
    let usage = card["stats"]["usage"].as_str().unwrap_or("");
    assert!(
        usage.starts_with('~') && usage.contains(" in · ") && usage.ends_with("cost unknown"),
        "{card}"
    );
    let line = b
        .wait(
            "the session's usage line",
            SHOW,
            "const l = document.querySelector('.usage-line'); return l ? l.textContent : null",
        )
        .await;
    assert!(
        line.as_str()
            .is_some_and(|l| l.starts_with("session ") && l.contains(" out · cost unknown")),
        "{line}"
    );
    assert!(
        card["stats"]["first token"]
            .as_str()
            .is_some_and(|s| s.ends_with("ms") || s.ends_with(" s")),
        "{card}"
    );
    assert_eq!(
        b.js("return document.querySelectorAll('.trace-card').length")
            .await,
        json!(3),
        "one trace card per turn"
    );
    maybe_screenshot(&b, "trace").await;
    // Hearing speech is an explicit subscription to tts_audio (this server may send none).
    b.js("document.querySelector('#hear').click(); return true")
        .await;
    b.wait(
        "the tts_audio subscription acknowledged",
        SHOW,
        "return coda.byId.events.entries.some(e => e.type === 'command_result' \
           && JSON.parse(e.text).data.data?.include?.includes('tts_audio')) \
           && document.querySelector('#hear-count').textContent.endsWith('chunks')",
    )
    .await;

    // Latency: the turn's stages, and the server's percentiles.
    show_view(&b, "latency").await;
    b.wait(
        "the total stage with the server's p50 in the latency table",
        SHOW,
        "const r = document.querySelector('#lat-table tr[data-stage=total]'); \
         return r && r.children[2].textContent !== '–' && r.children[6].textContent !== '–'",
    )
    .await;
    maybe_screenshot(&b, "latency").await;

    // Metrics keep arriving (every 0.3 s here).
    show_view(&b, "metrics").await;
    let first = b
        .wait(
            "a first metrics sample",
            SHOW,
            "const d = document.querySelector('#metrics-latest dd[data-k=samples]'); return d && Number(d.textContent)",
        )
        .await
        .as_f64()
        .unwrap_or(0.0);
    b.wait(
        "three more metrics samples",
        SHOW,
        &format!(
            "const d = document.querySelector('#metrics-latest dd[data-k=samples]'); return d && Number(d.textContent) >= {}",
            first + 3.0
        ),
    )
    .await;
    // The alert (clients > 0.5) colours the page.
    b.wait(
        "the clients alert in the header",
        SHOW,
        "return document.body.dataset.alert === 'warning' && !document.querySelector('#alerts-chip').hidden \
         && document.querySelector('#alerts-chip').textContent.includes('clients')",
    )
    .await;
    maybe_screenshot(&b, "metrics").await;

    // Memory: the list, then a search that matches and one that does not.
    show_view(&b, "memory").await;
    b.wait(
        "the stored memory in the list",
        SHOW,
        "return document.querySelector('#mem-table')?.textContent.includes('green tea')",
    )
    .await;
    b.js("document.querySelector('#mem-query').value = 'tea'; \
          document.querySelector('.memory-view form button[type=submit]').click(); return true")
        .await;
    b.wait(
        "a search result with a score",
        SHOW,
        "return document.querySelector('#mem-status').textContent.startsWith('1 match') \
         && document.querySelector('#mem-table').textContent.includes('green tea')",
    )
    .await;
    maybe_screenshot(&b, "memory").await;
    b.js(
        "document.querySelector('#mem-query').value = 'zebra crossing'; \
          document.querySelector('.memory-view form button[type=submit]').click(); return true",
    )
    .await;
    b.wait(
        "no result for an unrelated search",
        SHOW,
        "return document.querySelector('#mem-status').textContent.startsWith('0 matches')",
    )
    .await;

    // Components: states and restart counts from get_system_info.
    show_view(&b, "components").await;
    let comps = b
        .wait(
            "the component table",
            SHOW,
            "const rows = [...document.querySelectorAll('#comp-table tr[data-component]')]; \
             if (rows.length < 3) return null; \
             return Object.fromEntries(rows.map(r => [r.dataset.component, \
               {state: r.querySelector('.badge').textContent, restarts: r.querySelector('.restarts').textContent}]))",
        )
        .await;
    for name in ["memory", "tools", "server"] {
        assert_eq!(comps[name]["state"], json!("running"), "{name}: {comps}");
        assert_eq!(comps[name]["restarts"], json!("0"), "{name}: {comps}");
    }
    maybe_screenshot(&b, "components").await;

    // Tools: no tool ran in this turn; the view says how to get one.
    show_view(&b, "tools").await;
    maybe_screenshot(&b, "tools").await;

    // Config: the effective, read-only configuration.
    show_view(&b, "config").await;
    b.wait(
        "the llm section showing the configured provider",
        SHOW,
        "const s = document.querySelector('.cfg-section[data-section=llm]'); \
         return s && s.textContent.includes('\"openai\"')",
    )
    .await;
    maybe_screenshot(&b, "config").await;

    // Event debugger: filter, select, pause.
    show_view(&b, "events").await;
    b.js(
        "const f = document.querySelector('#ev-filter'); f.value = 'llm_*'; \
          f.dispatchEvent(new Event('input')); return true",
    )
    .await;
    let types = b
        .wait(
            "only llm_* rows",
            SHOW,
            "const rows = [...document.querySelectorAll('.ev-row:not([hidden])')]; \
             return rows.length >= 6 && rows.every(r => r.dataset.type.startsWith('llm_')) \
               && rows.map(r => r.dataset.type)",
        )
        .await;
    let types: Vec<String> = serde_json::from_value(types).expect("types");
    assert!(
        types.iter().any(|t| t == "llm_token"),
        "tokens are shown: {types:?}"
    );
    b.js("document.querySelector('.ev-row[data-type=llm_result]').click(); return true")
        .await;
    let detail = b
        .wait(
            "the selected event's JSON",
            SHOW,
            "return document.querySelector('#ev-json').textContent.includes('\"type\": \"llm_result\"') \
             && document.querySelector('#ev-json').textContent",
        )
        .await;
    let parsed: Value =
        serde_json::from_str(detail.as_str().unwrap_or("")).expect("the detail pane is JSON");
    assert_eq!(parsed["data"]["text"], json!(ANSWER));
    maybe_screenshot(&b, "events").await;
    // Pause: the shown count stops moving while metrics keep arriving.
    b.js("const f = document.querySelector('#ev-filter'); f.value = ''; \
          f.dispatchEvent(new Event('input')); document.querySelector('#ev-pause').click(); return true")
        .await;
    let shown = b
        .js("return coda.byId.events.filtered.length")
        .await
        .as_u64()
        .unwrap_or(0);
    b.wait(
        "new events counted while paused",
        SHOW,
        "return coda.byId.events.pendingWhilePaused >= 3",
    )
    .await;
    let still = b
        .js("return coda.byId.events.filtered.length")
        .await
        .as_u64()
        .unwrap_or(0);
    assert_eq!(shown, still, "a paused debugger does not add rows");
    b.js("document.querySelector('#ev-pause').click(); return true")
        .await;
    b.wait(
        "the rows added on resume",
        SHOW,
        &format!("return coda.byId.events.filtered.length > {still}"),
    )
    .await;

    no_page_errors(&b).await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_is_survived_and_the_gap_is_marked() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let llm = scripted_llm().await;
    let env = llm_env(&format!("{}/v1", llm.url()));
    let home = Home::new();
    let mut server = Server::start_in(home.clone(), &[], &env_refs(&env));
    let port = server.port;
    b.goto(&page_url(&server, "")).await;
    wait_connected(&b).await;
    let epoch1 = b.js("return coda.conn.epoch").await;
    say(&b, "first question").await;
    b.wait(
        "the first answer",
        SHOW,
        "return document.querySelectorAll('.msg.assistant:not(.streaming)').length === 1",
    )
    .await;

    // Kill it hard (no close frame), then start a new server on the same port and store.
    let pid = libc::pid_t::try_from(server.pid()).expect("pid");
    assert!(pid > 1, "a real server pid: {pid}");
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    server.wait_exit(Duration::from_secs(20));
    b.wait(
        "the reconnecting state",
        SHOW,
        "return document.querySelector('#conn-state').dataset.state === 'reconnecting'",
    )
    .await;
    maybe_screenshot(&b, "reconnecting").await;
    let _server2 = Server::start_on_port(home, port, &[], &env_refs(&env));
    wait_connected(&b).await;
    b.wait(
        "a gap marker in the transcript",
        SHOW,
        "return document.querySelector('.msg.gap')?.textContent.includes('restarted')",
    )
    .await;
    let epoch2 = b.js("return coda.conn.epoch").await;
    assert_ne!(epoch1, epoch2, "a restarted server has a new epoch");
    let stats = b.js("return coda.conn.stats").await;
    assert!(stats["reconnects"].as_u64().unwrap_or(0) >= 1, "{stats}");
    assert_eq!(stats["gaps"], json!(1), "{stats}");

    // The old transcript is kept and the page works with the new server.
    say(&b, "second question").await;
    b.wait(
        "the second answer",
        SHOW,
        "return document.querySelectorAll('.msg.assistant:not(.streaming)').length === 2",
    )
    .await;
    no_page_errors(&b).await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resumes_without_losing_an_event() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let server = Server::start(&["--emit-synthetic", "200"], &[]);
    b.goto(&page_url(&server, "#events")).await;
    wait_connected(&b).await;
    b.wait(
        "ticks arriving",
        SHOW,
        "return (coda.byId.events.types.get('diagnostic_tick') || 0) > 100",
    )
    .await;
    // Drop the socket; ticks keep being published while the page reconnects (the backoff
    // is at least 125 ms: about 25 ticks are missed and must come back in the replay).
    b.js("coda.conn.drop(); return true").await;
    b.wait(
        "a reconnection",
        SHOW,
        "return coda.conn.stats.reconnects === 1 && coda.conn.state === 'connected'",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let check = b
        .js("const idx = coda.byId.events.entries.filter(e => e.type === 'diagnostic_tick') \
               .map(e => JSON.parse(e.text ?? JSON.stringify(e.ev)).data.index); \
             let holes = 0; for (let i = 1; i < idx.length; i++) if (idx[i] !== idx[i-1] + 1) holes++; \
             const replays = coda.byId.events.entries.filter(e => e.type === 'replay') \
               .map(e => JSON.parse(e.text).data).map(d => ({complete: d.complete, n: d.events.length})); \
             return {n: idx.length, holes, replays, gaps: coda.conn.stats.gaps, dups: coda.conn.stats.duplicates}")
        .await;
    assert_eq!(check["holes"], json!(0), "ticks lost or reordered: {check}");
    assert_eq!(check["gaps"], json!(0), "{check}");
    let replays = check["replays"].as_array().expect("replays");
    assert_eq!(replays.len(), 2, "{check}");
    assert_eq!(replays[1]["complete"], json!(true), "{check}");
    assert!(
        replays[1]["n"].as_u64().unwrap_or(0) > 0,
        "the resume replay carried the missed ticks: {check}"
    );
    no_page_errors(&b).await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_shows_an_error_and_a_good_one_connects() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let home = Home::new();
    let (_id, secret) = home.create_token("dashboard", None);
    let server = Server::start_in(home, &[], &[("CODA__AUTH__REQUIRED", "true")]);
    b.goto(&page_url(&server, "")).await;
    b.wait(
        "the token form",
        SHOW,
        "return !document.querySelector('#auth-panel').hidden \
         && document.querySelector('#conn-state').dataset.state === 'auth_required'",
    )
    .await;
    let input = b
        .client
        .find(Locator::Css("#token-input"))
        .await
        .expect("token input");
    input
        .send_keys("coda_not_a_real_token")
        .await
        .expect("type");
    b.client
        .find(Locator::Css("#token-submit"))
        .await
        .expect("submit")
        .click()
        .await
        .expect("click");
    b.wait(
        "the refusal",
        SHOW,
        "return document.querySelector('#auth-error').textContent.includes('refused') \
         && !document.querySelector('#auth-panel').hidden",
    )
    .await;
    maybe_screenshot(&b, "auth").await;
    assert_eq!(
        b.js("return sessionStorage.getItem('coda.token')").await,
        Value::Null,
        "a refused token is not kept"
    );
    let input = b
        .client
        .find(Locator::Css("#token-input"))
        .await
        .expect("token input");
    input.clear().await.expect("clear");
    input.send_keys(&secret).await.expect("type");
    b.client
        .find(Locator::Css("#token-submit"))
        .await
        .expect("submit")
        .click()
        .await
        .expect("click");
    wait_connected(&b).await;
    assert!(b
        .js("return document.querySelector('#auth-panel').hidden")
        .await
        .as_bool()
        .unwrap_or(false));
    assert_eq!(
        b.js("return sessionStorage.getItem('coda.token')").await,
        json!(secret)
    );
    // A reload connects straight away with the tab's stored token.
    b.goto(&page_url(&server, "#components")).await;
    wait_connected(&b).await;
    b.wait(
        "auth shown as required",
        SHOW,
        "return document.querySelector('#server-info')?.textContent.includes('required')",
    )
    .await;
    no_page_errors(&b).await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_major_mismatch_shows_a_banner() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let server = Server::start(&[], &[]);
    // The page claims protocol 2.0 (a test switch): the server refuses it after `hello`.
    b.goto(&page_url(&server, "?protocol=2.0#events")).await;
    b.wait(
        "the version banner",
        SHOW,
        "const b = document.querySelector('#version-banner'); \
         return !b.hidden && b.textContent.includes('2.0') && b.textContent.includes('mismatch')",
    )
    .await;
    b.wait(
        "the server's own refusal",
        SHOW,
        "return coda.byId.events.entries.some(e => e.type === 'system_error' \
           && JSON.parse(e.text).data.code === 'version_mismatch')",
    )
    .await;
    assert_eq!(
        b.js("return document.querySelector('#conn-state').textContent")
            .await,
        json!("disconnected")
    );
    maybe_screenshot(&b, "version-mismatch").await;
    // No reconnection loop against a server that will always refuse.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.js("return coda.conn.stats.reconnects").await, json!(0));
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_to_talk_streams_the_microphone_or_shows_why_not() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let server = Server::start(&[], &[]);
    b.goto(&page_url(&server, "#events")).await;
    wait_connected(&b).await;
    // Hold the button (keyboard: Space) for a second, with Chromium's fake microphone.
    b.js("document.querySelector('#ptt').dispatchEvent(new KeyboardEvent('keydown', {key: ' ', bubbles: true})); return true")
        .await;
    b.wait(
        "the server's answer to stt_start",
        SHOW,
        "return coda.pttStats.started + coda.pttStats.refused === 1",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    b.js("document.querySelector('#ptt').dispatchEvent(new KeyboardEvent('keyup', {key: ' ', bubbles: true})); return true")
        .await;
    let stats = b.js("return coda.pttStats").await;
    if stats["refused"] == json!(1) {
        // This server cannot take client audio: the page says so, with the server's code,
        // and sent no audio frame (which the server would count as a violation).
        let msg = b
            .wait(
                "the refusal on screen",
                SHOW,
                "return document.querySelector('#messages').textContent",
            )
            .await;
        let msg = msg.as_str().unwrap_or("");
        assert!(msg.contains("did not accept microphone audio"), "{msg}");
        let code = b
            .js(
                "return coda.byId.events.entries.filter(e => e.type === 'command_error') \
                 .map(e => JSON.parse(e.text).data.code)",
            )
            .await;
        let code = code[0].as_str().unwrap_or("").to_string();
        assert!(
            msg.contains(&code),
            "the server's code ({code}) is shown: {msg}"
        );
        assert_eq!(stats["framesSent"], json!(0), "{stats}");
        eprintln!("push-to-talk: refused by this server: {msg}");
    } else {
        // Accepted: 16 kHz s16le frames of 20 ms went out between stt_start and stt_stop.
        let frames = stats["framesSent"].as_u64().unwrap_or(0);
        assert!(frames >= 20, "about 50 frames in a second of talk: {stats}");
        b.wait(
            "stt_start seen",
            SHOW,
            "return coda.byId.events.types.get('stt_start') > 0",
        )
        .await;
        eprintln!("push-to-talk: {frames} frames sent");
    }
    no_page_errors(&b).await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_debugger_keeps_up_with_1000_events_per_second() {
    let Some(b) = Browser::start().await else {
        return;
    };
    // CODA_DASHBOARD_LOAD_RATE measures other rates (the figures in docs/dashboard.md).
    let rate = std::env::var("CODA_DASHBOARD_LOAD_RATE").unwrap_or_else(|_| "1000".into());
    let server = Server::start(
        &["--emit-synthetic", &rate, "--synthetic-wait-clients", "1"],
        &[],
    );
    b.goto(&page_url(&server, "#events")).await;
    wait_connected(&b).await;
    b.wait(
        "the load arriving",
        SHOW,
        "return (coda.byId.events.types.get('diagnostic_tick') || 0) > 1000",
    )
    .await;
    b.js("codaPerf.reset(); return true").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let snap = b.js("return codaPerf.snapshot()").await;
    let dom = b
        .js(
            "return {rows: document.querySelectorAll('.ev-row').length, \
                     kept: coda.byId.events.entries.length, \
                     state: coda.conn.state, reconnects: coda.conn.stats.reconnects, \
                     dups: coda.conn.stats.duplicates}",
        )
        .await;
    eprintln!("dashboard at {rate} events/s: {snap:#}\n{dom:#}");
    maybe_screenshot(&b, "events-load").await;
    let eps = snap["events_per_s"].as_f64().unwrap_or(0.0);
    // Generous sanity bounds only (shared 2-core machine): the tab is not frozen and the
    // server did not cut it off as a slow consumer.
    let target: f64 = rate.parse().unwrap_or(1000.0);
    assert!(eps > target / 2.0, "the page kept up: {snap}");
    assert!(
        snap["fps"].as_f64().unwrap_or(0.0) > 5.0,
        "the tab kept painting: {snap}"
    );
    assert_eq!(dom["state"], json!("connected"), "{dom}");
    assert_eq!(dom["reconnects"], json!(0), "{dom}");
    let rows = dom["rows"].as_u64().unwrap_or(u64::MAX);
    assert!(rows < 120, "only the visible rows are in the DOM: {dom}");
    assert!(dom["kept"].as_u64().unwrap_or(0) > 5000, "{dom}");
    // The long-task figure means something: a deliberate 120 ms block is seen.
    b.js("setTimeout(() => { const t = performance.now(); while (performance.now() - t < 120) {} }, 0); return true")
        .await;
    b.wait(
        "the deliberate long task to be observed",
        SHOW,
        "return codaPerf.snapshot().long_tasks >= 1",
    )
    .await;
    no_page_errors(&b).await;
    b.close().await;
}

/// `GET path` with extra request headers: (status, headers (lowercase names), body).
fn raw_get(port: u16, path: &str, extra: &[(&str, &str)]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut req = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read");
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let body = buf[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body)
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn the_page_is_served_with_types_etags_and_the_host_guard() {
    let server = Server::start(&[], &[]);
    let port = server.port;
    let host = format!("127.0.0.1:{port}");
    let mut total = 0usize;
    for (path, ty) in [
        ("/", "text/html; charset=utf-8"),
        ("/dashboard/app.css", "text/css; charset=utf-8"),
        ("/dashboard/js/main.js", "text/javascript; charset=utf-8"),
        (
            "/dashboard/js/views/events.js",
            "text/javascript; charset=utf-8",
        ),
        (
            "/dashboard/js/pcm-worklet.js",
            "text/javascript; charset=utf-8",
        ),
        ("/dashboard/icon.svg", "image/svg+xml"),
    ] {
        let (status, h, body) = raw_get(port, path, &[("Host", &host)]);
        assert_eq!(status, 200, "{path}");
        assert_eq!(header(&h, "content-type"), Some(ty), "{path}");
        assert_eq!(header(&h, "cache-control"), Some("no-cache"), "{path}");
        assert_eq!(
            header(&h, "x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        total += body.len();
        let etag = header(&h, "etag").expect("etag").to_string();
        assert!(etag.starts_with('"') && etag.len() == 34, "{path}: {etag}");
        // Revalidation: same ETag → 304 without a body; another → the file again.
        let (status, _, body) = raw_get(port, path, &[("Host", &host), ("If-None-Match", &etag)]);
        assert_eq!(status, 304, "{path}");
        assert!(body.is_empty(), "{path}");
        let (status, _, _) = raw_get(
            port,
            path,
            &[("Host", &host), ("If-None-Match", "\"stale\"")],
        );
        assert_eq!(status, 200, "{path}");
        // DNS rebinding: the Host allow-list covers the page's files too.
        let (status, _, _) = raw_get(port, path, &[("Host", "evil.example")]);
        assert_eq!(status, 403, "{path}");
    }
    assert!(
        total > 10_000,
        "the page and its scripts were served ({total} bytes)"
    );
    let (_, h, body) = raw_get(port, "/", &[("Host", &host)]);
    let csp = header(&h, "content-security-policy").expect("CSP on the page");
    assert!(
        csp.contains("connect-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let html = String::from_utf8_lossy(&body);
    // No CDN: everything the page loads comes from this server.
    for attr in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
        assert!(
            !html.contains(attr),
            "the page loads something from elsewhere: {attr}"
        );
    }
    for (path, status) in [
        ("/dashboard/nope.js", 404),
        ("/dashboard/../Cargo.toml", 404),
    ] {
        let (s, _, _) = raw_get(port, path, &[("Host", &host)]);
        assert_eq!(s, status, "{path}");
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hands_free_streams_the_microphone_until_turned_off() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let server = Server::start(&[], &[]);
    b.goto(&page_url(&server, "#events")).await;
    wait_connected(&b).await;
    b.js("document.querySelector('#handsfree').click(); return true")
        .await;
    b.wait(
        "the server's answer to stt_start",
        SHOW,
        "return coda.handsFreeStats.started + coda.handsFreeStats.refused === 1",
    )
    .await;
    let stats = b.js("return coda.handsFreeStats").await;
    if stats["refused"] == json!(1) {
        let msg = b
            .wait(
                "the refusal on screen",
                SHOW,
                "return document.querySelector('#messages').textContent",
            )
            .await;
        assert!(
            msg.as_str()
                .unwrap_or("")
                .contains("did not accept microphone audio"),
            "{msg}"
        );
        eprintln!("hands-free: refused by this server");
    } else {
        assert_eq!(
            b.js("return document.querySelector('#handsfree').getAttribute('aria-pressed')")
                .await,
            json!("true")
        );
        // Streams on its own, with no button held.
        b.wait(
            "a second of microphone frames",
            SHOW,
            "return coda.handsFreeStats.framesSent >= 40",
        )
        .await;
        b.js("document.querySelector('#handsfree').click(); return true")
            .await;
        b.wait(
            "the button released",
            SHOW,
            "return document.querySelector('#handsfree').getAttribute('aria-pressed') === 'false'",
        )
        .await;
        let sent = b.js("return coda.handsFreeStats.framesSent").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            b.js("return coda.handsFreeStats.framesSent").await,
            sent,
            "no frames after turning it off"
        );
        let started = b
            .js(
                "return coda.byId.events.entries.filter(e => e.type === 'command_result') \
                 .map(e => JSON.parse(e.text).data.data).filter(d => d && d.mode === 'continuous').length",
            )
            .await;
        assert_eq!(started, json!(1), "the server listened in continuous mode");
    }
    no_page_errors(&b).await;
    b.close().await;
}

/// A timer set from the page rings there: the alarm shows in the header with a stop
/// button, which silences it on the server.
#[tokio::test]
async fn a_ringing_alarm_shows_and_its_stop_button_silences_it() {
    let Some(b) = Browser::start().await else {
        return;
    };
    // A timer is a tool intent: no language model is needed (a dead one is configured).
    let server = Server::start(
        &[],
        &[
            ("CODA__LLM__PROVIDER", "openai"),
            ("CODA__LLM__OPENAI__BASE_URL", "http://127.0.0.1:9/v1"),
        ],
    );
    b.goto(&page_url(&server, "#transcript")).await;
    wait_connected(&b).await;
    say(&b, "set a timer for 2 seconds for tea").await;
    let shown = b
        .wait(
            "the alarm in the header",
            Duration::from_secs(20),
            "const a = document.querySelector('#alarm'); \
             return !a.hidden && !document.querySelector('#alarm-stop').hidden && a.textContent",
        )
        .await;
    assert!(
        shown
            .as_str()
            .is_some_and(|t| t.contains("timer for tea is done")),
        "{shown}"
    );
    maybe_screenshot(&b, "alarm").await;
    b.js("document.querySelector('#alarm-stop').click(); return true")
        .await;
    b.wait(
        "the alarm silenced",
        SHOW,
        "return document.querySelector('#alarm').hidden \
         && coda.byId.events.entries.some(e => e.type === 'alarm' \
              && JSON.parse(e.text).data.ringing === false)",
    )
    .await;
    no_page_errors(&b).await;
    b.close().await;
}

//! The OCI Generative AI engine against a loopback server that checks every request the
//! way the service does — it rebuilds the signing string from the headers the
//! `Authorization` header lists and verifies the RSA-SHA256 signature with the public
//! key (with the `rsa` crate, an implementation independent of the signer's ring) — and
//! answers in the documented formats: Cohere and generic chat streams, paged model lists,
//! OCI error bodies.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use coda_actors::llm::oci::auth::OciAuth;
use coda_actors::llm::oci::{OciConfig, OciProvider};
use coda_actors::llm::scripted::{Recorded, Reply, ScriptedServer};
use coda_actors::llm::{
    ChatMessage, ChatRole, FinishReason, LlmError, LlmProvider, StreamChunk, ToolCallRequest, Usage,
};
use common::*;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use serde_json::json;
use sha2::{Digest, Sha256};

const TENANCY: &str = "ocid1.tenancy.oc1..aaaatesttenancy";
const USER: &str = "ocid1.user.oc1..aaaatestuser";
const FINGERPRINT: &str = "aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/oci")
        .join(name)
}

fn parse_params(s: &str) -> Vec<(String, String)> {
    // k="v",k="v" (values contain no quotes).
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 2..];
        let end = after.find('"').unwrap_or(after.len());
        out.push((key, after[..end].to_string()));
        rest = &after[(end + 1).min(after.len())..];
    }
    out
}

/// Verifies a request as OCI does; returns its keyId. `target_override` replaces the
/// request target (to show a changed request fails).
fn verify(r: &Recorded, target_override: Option<&str>) -> Result<String, String> {
    let auth = r.header("authorization").ok_or("no authorization header")?;
    let params = auth.strip_prefix("Signature ").ok_or("not a Signature")?;
    let params = parse_params(params);
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .ok_or(format!("no {k}"))
    };
    if get("version")? != "1" || get("algorithm")? != "rsa-sha256" {
        return Err("wrong version or algorithm".into());
    }
    let names: Vec<String> = get("headers")?.split(' ').map(str::to_string).collect();
    let mut required = vec!["date", "(request-target)", "host"];
    if r.method == "POST" {
        required.extend(["content-length", "content-type", "x-content-sha256"]);
    }
    for req in required {
        if !names.iter().any(|n| n == req) {
            return Err(format!("{req} not signed"));
        }
    }
    let mut lines = Vec::new();
    for n in &names {
        if n == "(request-target)" {
            let target = target_override.unwrap_or(&r.target);
            lines.push(format!(
                "(request-target): {} {target}",
                r.method.to_lowercase()
            ));
        } else {
            let v = r.header(n).ok_or(format!("signed header {n} missing"))?;
            lines.push(format!("{n}: {v}"));
        }
    }
    let signing_string = lines.join("\n");
    let pem = std::fs::read_to_string(fixture("test_key_public.pem")).unwrap();
    let key = VerifyingKey::<Sha256>::new(RsaPublicKey::from_public_key_pem(&pem).unwrap());
    let sig_bytes = base64::engine::general_purpose::STANDARD
        .decode(get("signature")?)
        .map_err(|e| e.to_string())?;
    let sig = Signature::try_from(sig_bytes.as_slice()).map_err(|e| e.to_string())?;
    key.verify(signing_string.as_bytes(), &sig)
        .map_err(|e| format!("bad signature: {e}"))?;
    if r.method == "POST" {
        let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&r.body));
        if r.header("x-content-sha256") != Some(digest.as_str()) {
            return Err("x-content-sha256 does not match the body".into());
        }
        if r.header("content-length") != Some(r.body.len().to_string().as_str()) {
            return Err("content-length does not match the body".into());
        }
    }
    let date =
        httpdate::parse_http_date(r.header("date").ok_or("no date")?).map_err(|e| e.to_string())?;
    let skew = SystemTime::now()
        .duration_since(date)
        .unwrap_or_else(|e| e.duration());
    if skew > Duration::from_secs(300) {
        return Err("date too far from now".into());
    }
    get("keyId")
}

fn unauthorized(msg: &str) -> Reply {
    Reply::json(
        401,
        json!({"code":"NotAuthenticated","message":msg}).to_string(),
    )
    .header("opc-request-id", "req-123")
}

fn models_page(page: Option<&str>) -> Reply {
    let m = |name: &str, vendor: &str, created: &str, caps: &[&str]| {
        json!({"id": format!("ocid1.generativeaimodel.oc1.us-chicago-1.{name}"), "displayName": name,
               "vendor": vendor, "version": "1.0", "capabilities": caps, "lifecycleState": "ACTIVE",
               "timeCreated": created})
    };
    match page {
        None => Reply::json(
            200,
            json!({"items":[
                m("cohere.command-r-plus-08-2024", "cohere", "2024-08-01T00:00:00Z", &["CHAT"]),
                m("cohere.command-r-plus", "cohere", "2024-06-01T00:00:00Z", &["CHAT"]),
                m("cohere.embed-english-v3.0", "cohere", "2024-01-01T00:00:00Z", &["TEXT_EMBEDDINGS"])]})
            .to_string(),
        )
        .header("opc-next-page", "page-2"),
        Some(_) => Reply::json(
            200,
            json!({"items":[
                m("meta.llama-3.3-70b-instruct", "meta", "2024-12-01T00:00:00Z", &["CHAT"]),
                m("xai.grok-3", "xai", "2025-05-01T00:00:00Z", &["CHAT"])]})
            .to_string(),
        ),
    }
}

fn cohere_stream() -> Reply {
    Reply::sse_pieces(
        &[
            "data: {\"apiFormat\":\"COHERE\",\"text\":\"The sky\"}\n\n",
            "data: {\"apiFormat\":\"COHERE\",\"te",
            "xt\":\" is blue.\"}\n\n",
            "data: {\"apiFormat\":\"COHERE\",\"text\":\"The sky is blue.\",\"chatHistory\":[{\"role\":\"USER\",\"message\":\"sky?\"},{\"role\":\"CHATBOT\",\"message\":\"The sky is blue.\"}],\"finishReason\":\"COMPLETE\"}\n\n",
        ],
        Duration::from_millis(5),
    )
}

fn generic_stream() -> Reply {
    Reply::sse_pieces(
        &[
            "data: {\"index\":0,\"message\":{\"role\":\"ASSISTANT\",\"content\":[{\"type\":\"TEXT\",\"text\":\"Hi\"}]},\"pad\":\"aaaa\"}\n\n",
            "data: {\"index\":0,\"message\":{\"role\":\"ASSISTANT\",\"toolCalls\":[{\"id\":\"call_9\",\"type\":\"FUNCTION\",\"name\":\"get_time\",\"arguments\":\"{\\\"tz\\\":\"}]}}\n\n",
            "data: {\"index\":0,\"message\":{\"role\":\"ASSISTANT\",\"toolCalls\":[{\"arguments\":\"\\\"UTC\\\"}\"}]}}\n\n",
            "data: {\"index\":0,\"message\":{\"role\":\"ASSISTANT\",\"content\":[]},\"finishReason\":\"tool_calls\",\"usage\":{\"promptTokens\":11,\"completionTokens\":6,\"totalTokens\":17}}\n\n",
        ],
        Duration::from_millis(5),
    )
}

/// A server that verifies every request and answers like the service.
async fn service(bad: Arc<AtomicUsize>) -> ScriptedServer {
    ScriptedServer::start(move |r| {
        if let Err(e) = verify(r, None) {
            bad.fetch_add(1, Ordering::SeqCst);
            return unauthorized(&format!("signature check failed: {e}"));
        }
        match (r.method.as_str(), r.path()) {
            ("GET", "/20231130/models") => {
                let page = r
                    .target
                    .split(['?', '&'])
                    .find_map(|kv| kv.strip_prefix("page="));
                models_page(page)
            }
            ("POST", "/20231130/actions/chat") => {
                let body = r.json();
                let model = body["servingMode"]["modelId"].as_str().unwrap_or_default();
                if model.contains("denied") {
                    return Reply::json(
                        404,
                        json!({"code":"NotAuthorizedOrNotFound","message":"Authorization failed or requested resource not found."}).to_string(),
                    );
                }
                if model.contains("busy") {
                    return Reply::json(
                        429,
                        json!({"code":"TooManyRequests","message":"Too many requests for the tenancy"}).to_string(),
                    )
                    .header("retry-after", "120");
                }
                match body["chatRequest"]["apiFormat"].as_str() {
                    Some("COHERE") => cohere_stream(),
                    _ => generic_stream(),
                }
            }
            _ => Reply::json(404, json!({"code":"NotFound","message":"no route"}).to_string()),
        }
    })
    .await
    .unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    cfg: OciConfig,
}

fn setup(server: &ScriptedServer, key: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "session-token-abc\n").unwrap();
    let config = dir.path().join("config");
    std::fs::write(
        &config,
        format!(
            "[DEFAULT]\nuser={USER}\nfingerprint={FINGERPRINT}\ntenancy={TENANCY}\nregion=us-chicago-1\nkey_file={}\n\n[SESSION]\nsecurity_token_file={}\n",
            fixture(key).display(),
            token.display()
        ),
    )
    .unwrap();
    let cfg = OciConfig {
        config_file: config,
        profile: "DEFAULT".into(),
        region: String::new(),
        compartment_id: "ocid1.compartment.oc1..aaaatestcompartment".into(),
        auth: OciAuth::Auto,
        model: "cohere.command-r-plus-08-2024".into(),
        endpoint: server.url(),
        management_endpoint: server.url(),
        cache_dir: Some(dir.path().join("cache")),
        http: fast_http(),
    };
    Setup { _dir: dir, cfg }
}

#[tokio::test]
async fn cohere_chat_is_signed_and_streamed() {
    let bad = Arc::new(AtomicUsize::new(0));
    let server = service(bad.clone()).await;
    let s = setup(&server, "test_key_pkcs8.pem");
    let p = OciProvider::new(s.cfg.clone()).unwrap();
    let mut req = ask("sky?");
    req.messages.insert(
        0,
        ChatMessage::new(ChatRole::System, "Answer in one sentence."),
    );
    req.max_tokens = Some(100);
    req.temperature = Some(0.3);
    let items = drain(p.chat_stream(req).await.unwrap()).await;
    assert_eq!(bad.load(Ordering::SeqCst), 0, "signature rejected");
    // The terminal event repeats the whole text: it must not be emitted twice.
    assert_eq!(text(&items), "The sky is blue.");
    assert_eq!(
        items.last().unwrap().as_ref().unwrap(),
        &StreamChunk::Done {
            finish_reason: FinishReason::Stop,
            usage: None
        }
    );
    let r = &server.requests()[0];
    assert_eq!(
        verify(r, None).unwrap(),
        format!("{TENANCY}/{USER}/{FINGERPRINT}")
    );
    // The verifier is not a rubber stamp: another request target fails.
    assert!(verify(r, Some("/20231130/actions/embedText")).is_err());
    let body = r.json();
    assert_eq!(
        body["compartmentId"],
        "ocid1.compartment.oc1..aaaatestcompartment"
    );
    assert_eq!(
        body["servingMode"],
        json!({"servingType":"ON_DEMAND","modelId":"cohere.command-r-plus-08-2024"})
    );
    let chat = &body["chatRequest"];
    assert_eq!(chat["apiFormat"], "COHERE");
    assert_eq!(chat["message"], "sky?");
    assert_eq!(chat["preambleOverride"], "Answer in one sentence.");
    assert_eq!(chat["isStream"], true);
    assert_eq!(chat["maxTokens"], 100);
    // Model discovery was not needed for a full model name.
    assert!(server.requests().iter().all(|r| r.method == "POST"));
}

#[tokio::test]
async fn generic_format_with_tool_calls_and_pkcs1_key() {
    let bad = Arc::new(AtomicUsize::new(0));
    let server = service(bad.clone()).await;
    let s = setup(&server, "test_key_pkcs1.pem");
    let p = OciProvider::new(s.cfg.clone()).unwrap();
    let mut req = ask("what time is it in UTC?");
    req.model = Some("meta.llama-3.3-70b-instruct".into());
    req.tools = vec![coda_actors::llm::ToolSpec {
        name: "get_time".into(),
        description: "Current time".into(),
        parameters: json!({"type":"object","properties":{"tz":{"type":"string"}}}),
    }];
    let resp = p.chat(req).await.unwrap();
    assert_eq!(bad.load(Ordering::SeqCst), 0);
    assert_eq!(resp.text, "Hi");
    assert_eq!(resp.finish_reason, FinishReason::ToolCalls);
    assert_eq!(
        resp.tool_calls,
        vec![ToolCallRequest {
            id: "call_9".into(),
            name: "get_time".into(),
            arguments: r#"{"tz":"UTC"}"#.into()
        }]
    );
    assert_eq!(
        resp.usage,
        Usage {
            prompt_tokens: 11,
            completion_tokens: 6
        }
    );
    let chat = &server.requests()[0].json()["chatRequest"];
    assert_eq!(chat["apiFormat"], "GENERIC");
    assert_eq!(
        chat["messages"][0],
        json!({"role":"USER","content":[{"type":"TEXT","text":"what time is it in UTC?"}]})
    );
    assert_eq!(chat["tools"][0]["type"], "FUNCTION");
}

#[tokio::test]
async fn models_are_discovered_paged_cached_and_friendly_names_resolved() {
    let bad = Arc::new(AtomicUsize::new(0));
    let server = service(bad.clone()).await;
    let s = setup(&server, "test_key_pkcs8.pem");
    let p = OciProvider::new(s.cfg.clone()).unwrap();
    let models = p.list_models().await.unwrap();
    assert_eq!(bad.load(Ordering::SeqCst), 0, "GET signature rejected");
    let ids: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
    // Both pages, embeddings-only models left out.
    assert_eq!(
        ids,
        vec![
            "cohere.command-r-plus",
            "cohere.command-r-plus-08-2024",
            "meta.llama-3.3-70b-instruct",
            "xai.grok-3"
        ]
    );
    let gets = server
        .requests()
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    assert_eq!(gets, 2);
    let first = &server.requests()[0];
    assert!(first
        .target
        .contains("compartmentId=ocid1.compartment.oc1..aaaatestcompartment"));
    assert!(first.target.contains("capability=CHAT"));

    // A friendly name goes out as the full model name, in the vendor's format.
    let mut req = ask("hi");
    req.model = Some("grok-3".into());
    drain(p.chat_stream(req).await.unwrap()).await;
    let chat = server.requests().last().unwrap().json();
    assert_eq!(chat["servingMode"]["modelId"], "xai.grok-3");
    assert_eq!(chat["chatRequest"]["apiFormat"], "GENERIC");
    let mut req = ask("hi");
    req.model = Some("command-r-plus".into());
    drain(p.chat_stream(req).await.unwrap()).await;
    let chat = server.requests().last().unwrap().json();
    assert_eq!(chat["servingMode"]["modelId"], "cohere.command-r-plus");
    assert_eq!(chat["chatRequest"]["apiFormat"], "COHERE");
    let mut req = ask("hi");
    req.model = Some("gpt-99".into());
    let e = p.chat_stream(req).await.err().unwrap();
    assert!(
        matches!(&e, LlmError::NotFound(m) if m.contains("gpt-99") && m.contains("xai.grok-3")),
        "{e}"
    );
    // Still no new listing: the list is cached in memory...
    assert_eq!(
        server
            .requests()
            .iter()
            .filter(|r| r.method == "GET")
            .count(),
        2
    );
    // ...and on disk, for a new process.
    let p2 = OciProvider::new(s.cfg.clone()).unwrap();
    assert_eq!(p2.list_models().await.unwrap().len(), 4);
    assert_eq!(
        server
            .requests()
            .iter()
            .filter(|r| r.method == "GET")
            .count(),
        2
    );
    let info = p2.model_info("llama-3.3-70b-instruct").await.unwrap();
    assert_eq!(info.details.unwrap()["vendor"], "meta");
    // A refresh asks again.
    p2.refresh_models().await.unwrap();
    assert_eq!(
        server
            .requests()
            .iter()
            .filter(|r| r.method == "GET")
            .count(),
        4
    );
    let h = p2.health().await.unwrap();
    assert!(h.ok, "{h:?}");
}

#[tokio::test]
async fn oci_error_bodies_are_mapped() {
    let bad = Arc::new(AtomicUsize::new(0));
    let server = service(bad.clone()).await;
    let s = setup(&server, "test_key_pkcs8.pem");
    let p = OciProvider::new(s.cfg.clone()).unwrap();
    let run = |m: &str| {
        let mut r = ask("x");
        r.model = Some(m.into());
        p.chat_stream(r)
    };
    let e = run("cohere.denied").await.err().unwrap();
    assert!(
        matches!(&e, LlmError::NotFound(m) if m.contains("NotAuthorizedOrNotFound") && m.contains("policies")),
        "{e}"
    );
    let e = run("meta.busy").await.err().unwrap();
    match e {
        LlmError::RateLimited {
            retry_after,
            message,
        } => {
            assert_eq!(retry_after, Some(Duration::from_secs(120)));
            assert!(message.contains("TooManyRequests"), "{message}");
        }
        other => panic!("expected rate_limited, got {other}"),
    }

    // A key the service does not know: the server's check fails, the answer is a 401.
    let wrong = ScriptedServer::start(|_| unauthorized("The required information to complete authentication was not provided or was incorrect."))
        .await
        .unwrap();
    let mut cfg = s.cfg.clone();
    cfg.endpoint = wrong.url();
    let p = OciProvider::new(cfg).unwrap();
    let e = p.chat_stream(ask("x")).await.err().unwrap();
    match e {
        LlmError::Auth(m) => {
            assert!(m.contains("NotAuthenticated"), "{m}");
            assert!(m.contains("fingerprint, key_file"), "{m}");
            assert!(m.contains("opc-request-id: req-123"), "{m}");
        }
        other => panic!("expected auth, got {other}"),
    }
}

#[tokio::test]
async fn session_token_profiles_sign_with_the_token() {
    let bad = Arc::new(AtomicUsize::new(0));
    let server = service(bad.clone()).await;
    let s = setup(&server, "test_key_pkcs8.pem");
    let mut cfg = s.cfg.clone();
    cfg.profile = "SESSION".into();
    let p = OciProvider::new(cfg).unwrap();
    drain(p.chat_stream(ask("x")).await.unwrap()).await;
    assert_eq!(bad.load(Ordering::SeqCst), 0);
    let key_id = verify(&server.requests()[0], None).unwrap();
    assert_eq!(key_id, "ST$session-token-abc");
}

#[tokio::test]
async fn setup_problems_are_named() {
    let server = ScriptedServer::start(|_| Reply::json(500, "{}"))
        .await
        .unwrap();
    let s = setup(&server, "test_key_pkcs8.pem");
    let mut cfg = s.cfg.clone();
    cfg.profile = "MISSING".into();
    let e = OciProvider::new(cfg).unwrap_err().to_string();
    assert!(e.contains("no profile [MISSING]"), "{e}");
    let mut cfg = s.cfg.clone();
    cfg.auth = OciAuth::InstancePrincipal;
    let e = OciProvider::new(cfg).unwrap_err();
    assert!(
        e.to_string()
            .contains("instance principal authentication is not implemented"),
        "{e}"
    );
    let mut cfg = s.cfg.clone();
    cfg.region = "Not A Region".into();
    let e = OciProvider::new(cfg).unwrap_err().to_string();
    assert!(e.contains("no valid region"), "{e}");
    // Region from the profile builds the documented endpoints.
    let mut cfg = s.cfg.clone();
    cfg.endpoint.clear();
    cfg.management_endpoint.clear();
    let p = OciProvider::new(cfg).unwrap();
    assert_eq!(p.region(), "us-chicago-1");
    assert!(format!("{p:?}").contains(
        "https://inference.generativeai.us-chicago-1.oci.oraclecloud.com/20231130/actions/chat"
    ));
}

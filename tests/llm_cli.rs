//! `coda ask` and `coda models` as a user runs them: the real binary against scripted
//! loopback servers speaking the OpenAI and Ollama wire formats, in a private home.

use std::process::{Output, Stdio};
use std::time::Duration;

use coda_actors::llm::scripted::{Reply, ScriptedServer, Step};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const CODA: &str = env!("CARGO_BIN_EXE_coda");
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

struct Home(tempfile::TempDir);

impl Home {
    fn new() -> Home {
        Home(tempfile::tempdir().unwrap())
    }

    fn cmd(&self, args: &[&str], env: &[(&str, String)]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(CODA);
        let h = self.0.path();
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", h)
            .env("XDG_CONFIG_HOME", h.join("config"))
            .env("XDG_DATA_HOME", h.join("data"))
            .env("XDG_CACHE_HOME", h.join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    async fn run(&self, args: &[&str], env: &[(&str, String)]) -> Output {
        tokio::time::timeout(CMD_TIMEOUT, self.cmd(args, env).output())
            .await
            .expect("coda did not finish in time")
            .unwrap()
    }
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn oa_delta(content: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"choices":[{"index":0,"delta":{"content":content},"finish_reason":null}]})
    )
}

async fn openai_server() -> ScriptedServer {
    ScriptedServer::start(|r| match r.path() {
        "/v1/models" => Reply::json(200, r#"{"object":"list","data":[{"id":"m1"},{"id":"m2"}]}"#),
        _ => Reply::stream(
            "text/event-stream",
            vec![
                Step::Write(oa_delta("The answer").into_bytes()),
                Step::Sleep(Duration::from_millis(10)),
                Step::Write(oa_delta(" is 4.").into_bytes()),
                Step::Write(
                    b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n"
                        .to_vec(),
                ),
            ],
        ),
    })
    .await
    .unwrap()
}

fn openai_env(server: &ScriptedServer) -> Vec<(&'static str, String)> {
    vec![
        ("CODA__LLM__PROVIDER", "openai".into()),
        (
            "CODA__LLM__OPENAI__BASE_URL",
            format!("{}/v1", server.url()),
        ),
        ("CODA__LLM__OPENAI__MODEL", "test-model".into()),
        ("CODA__LLM__MAX_RETRIES", "0".into()),
    ]
}

fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_streams_the_answer_to_stdout() {
    let server = openai_server().await;
    let home = Home::new();
    let mut env = openai_env(&server);
    env.push(("MY_KEY", "sk-from-env".into()));
    env.push(("CODA__LLM__OPENAI__API_KEY_ENV", "MY_KEY".into()));
    let o = home.run(&["ask", "what", "is", "2+2?"], &env).await;
    assert!(o.status.success(), "stderr: {}", err(&o));
    assert_eq!(out(&o), "The answer is 4.\n");
    let req = &server.requests()[0];
    let body = req.json();
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["messages"][0]["content"], "what is 2+2?");
    // [llm] sampling defaults reach the wire.
    assert_eq!(body["max_tokens"], 1024);
    assert_eq!(req.header("authorization"), Some("Bearer sk-from-env"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_reads_piped_stdin_and_prints_json() {
    let server = openai_server().await;
    let home = Home::new();
    let mut cmd = home.cmd(
        &[
            "ask",
            "--json",
            "--model",
            "other-model",
            "--system",
            "be terse",
            "summarise:",
        ],
        &openai_env(&server),
    );
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"line one\nline two\n").await.unwrap();
    drop(stdin);
    let o = tokio::time::timeout(CMD_TIMEOUT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(o.status.success(), "stderr: {}", err(&o));
    let v: Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v["text"], "The answer is 4.");
    assert_eq!(v["provider"], "openai");
    assert_eq!(v["model"], "other-model");
    assert_eq!(v["usage"]["prompt_tokens"], 9);
    assert_eq!(v["finish_reason"], "stop");
    let body = server.requests()[0].json();
    assert_eq!(body["model"], "other-model");
    assert_eq!(
        body["messages"][0],
        json!({"role":"system","content":"be terse"})
    );
    assert_eq!(
        body["messages"][1]["content"],
        "summarise:\n\nline one\nline two\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_failures_exit_non_zero_with_a_clear_message() {
    let home = Home::new();
    let env = vec![
        ("CODA__LLM__PROVIDER", "openai".to_string()),
        ("CODA__LLM__OPENAI__BASE_URL", format!("{}/v1", dead_url())),
        ("CODA__LLM__MAX_RETRIES", "0".into()),
    ];
    let o = home.run(&["ask", "hi"], &env).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).is_empty());
    assert!(
        err(&o).contains("cannot connect to http://127.0.0.1:"),
        "{}",
        err(&o)
    );

    // The default provider's model is not installed in this fresh home: said so, with
    // the command that installs it.
    let o = home.run(&["ask", "hi"], &[]).await;
    assert_eq!(o.status.code(), Some(1));
    let want = if cfg!(feature = "local-llm") {
        "coda models pull smollm2"
    } else {
        "built without the local-llm feature"
    };
    assert!(err(&o).contains(want), "{}", err(&o));

    // Nothing to ask.
    let o = home.run(&["ask"], &env).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("nothing to ask"), "{}", err(&o));

    // Unknown provider: a configuration error naming the key.
    let o = home.run(&["ask", "--provider", "gpt", "hi"], &[]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("llm.provider"), "{}", err(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_is_announced_on_stderr_every_time() {
    let ollama = ScriptedServer::start(|_| {
        Reply::stream(
            "application/x-ndjson",
            vec![Step::Write(
                format!(
                    "{}\n{}\n",
                    json!({"message":{"role":"assistant","content":"local answer"},"done":false}),
                    json!({"message":{"role":"assistant","content":""},"done":true})
                )
                .into_bytes(),
            )],
        )
    })
    .await
    .unwrap();
    let home = Home::new();
    let env = vec![
        ("CODA__LLM__PROVIDER", "openai".to_string()),
        ("CODA__LLM__OPENAI__BASE_URL", format!("{}/v1", dead_url())),
        ("CODA__LLM__FALLBACK", "ollama,local".into()),
        ("CODA__LLM__OLLAMA__BASE_URL", ollama.url()),
        ("CODA__LLM__MAX_RETRIES", "0".into()),
    ];
    for _ in 0..2 {
        let o = home.run(&["ask", "hi"], &env).await;
        assert!(o.status.success(), "stderr: {}", err(&o));
        assert_eq!(out(&o), "local answer\n");
        let e = err(&o);
        assert_eq!(e.matches("falling back").count(), 1, "{e}");
        assert!(
            e.contains("coda: warning: provider `openai` is unavailable")
                && e.contains("falling back to `ollama`"),
            "{e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_list_show_health_and_pull() {
    let server = ScriptedServer::start(|r| match r.path() {
        "/api/tags" => Reply::json(
            200,
            json!({"models":[{"name":"llama3.2:latest","size":2019393189u64,"details":{"family":"llama"}}]})
                .to_string(),
        ),
        "/api/show" => Reply::json(
            200,
            json!({"details":{"family":"llama"},"model_info":{"llama.context_length":131072}}).to_string(),
        ),
        "/api/version" => Reply::json(200, r#"{"version":"0.6.2"}"#),
        "/api/pull" => Reply::stream(
            "application/x-ndjson",
            ["pulling manifest", "pulling abc", "pulling abc", "success"]
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    Step::Write(
                        format!("{}\n", json!({"status": s, "total": 100, "completed": i * 40}))
                            .into_bytes(),
                    )
                })
                .collect(),
        ),
        _ => Reply::json(404, "{}"),
    })
    .await
    .unwrap();
    let home = Home::new();
    let env = vec![("CODA__LLM__OLLAMA__BASE_URL", server.url())];
    let o = home
        .run(&["models", "list", "--provider", "ollama", "--json"], &env)
        .await;
    assert!(o.status.success(), "stderr: {}", err(&o));
    let v: Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v[0]["id"], "llama3.2:latest");
    assert_eq!(v[0]["provider"], "ollama");
    let o = home
        .run(&["models", "list", "--provider", "ollama"], &env)
        .await;
    assert!(
        out(&o).contains("llama3.2:latest") && out(&o).contains("2.0 GB"),
        "{}",
        out(&o)
    );
    let o = home
        .run(
            &[
                "models",
                "show",
                "--provider",
                "ollama",
                "llama3.2",
                "--json",
            ],
            &env,
        )
        .await;
    let v: Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v["context_length"], 131072);
    let o = home
        .run(&["models", "health", "--provider", "ollama"], &env)
        .await;
    assert!(
        o.status.success() && out(&o).contains("Ollama 0.6.2"),
        "{}",
        out(&o)
    );
    let o = home.run(&["models", "pull", "llama3.2"], &env).await;
    assert!(o.status.success(), "stderr: {}", err(&o));
    assert_eq!(out(&o), "pulled llama3.2\n");
    // Without a terminal: one line per status change.
    assert_eq!(err(&o), "pulling manifest\npulling abc\nsuccess\n");

    let openai = openai_server().await;
    let o = home
        .run(&["models", "list", "--json"], &openai_env(&openai))
        .await;
    let v: Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_show_redacts_the_api_key() {
    let home = Home::new();
    let env = vec![
        ("CODA__LLM__OPENAI__API_KEY", "sk-secret-value".to_string()),
        ("CODA__LLM__FALLBACK", "ollama,local".into()),
    ];
    let o = home.run(&["config", "show", "--json"], &env).await;
    assert!(o.status.success(), "stderr: {}", err(&o));
    assert!(!out(&o).contains("sk-secret-value"));
    let v: Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v["config"]["llm"]["openai"]["api_key"], "***redacted***");
    assert_eq!(v["config"]["llm"]["fallback"], json!(["ollama", "local"]));
    assert_eq!(
        v["sources"]["llm.openai.api_key"],
        "env CODA__LLM__OPENAI__API_KEY"
    );
}

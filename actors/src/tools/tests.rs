//! Tools room tests: the registry's containment, the actor's events, every built-in.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::{json, Value};

use super::builtin::timer::{TimerFired, TimerService};
use super::*;
use crate::hub::{
    EventHub, HubDelivery, HubHandle, HubSettings, Register, StartAt, Subscribe, TypeMask,
};
use crate::memory::{MemoryActor, MemoryEngine, MemorySettings};
use crate::store::{SledStore, Storage};

/// A tool that misbehaves in a chosen way.
struct Misbehaving {
    name: &'static str,
    how: &'static str,
}

#[async_trait::async_trait]
impl Tool for Misbehaving {
    fn name(&self) -> &str {
        self.name
    }
    fn description(&self) -> &str {
        "misbehaves"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}, "additionalProperties": false})
    }
    fn output_schema(&self) -> Option<Value> {
        Some(json!({"type": "object", "required": ["ok"]}))
    }
    fn timeout(&self) -> Option<Duration> {
        // Short for the hanging ones; long enough elsewhere for a panic hook that prints
        // a backtrace (slow in debug builds).
        Some(if self.how.starts_with("hang") {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(10)
        })
    }
    async fn call(&self, args: Value, ctx: ToolContext) -> Result<Value, ToolFailure> {
        match self.how {
            "panic" => panic!("tool exploded on purpose"),
            "hang_async" => {
                std::future::pending::<()>().await;
                Ok(json!({"ok": true}))
            }
            "hang_blocking" => {
                // Blocks its thread, checking the flag the registry sets on timeout.
                let started = Instant::now();
                while !ctx.is_cancelled() && started.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(json!({"ok": true}))
            }
            "garbage" => Ok(json!(["not", "an", "object"])),
            "huge" => Ok(json!({"ok": "x".repeat(100_000)})),
            "fail" => Err(ToolFailure::Failed("it did not work".into())),
            _ => Ok(json!({"ok": true, "n": args["n"]})),
        }
    }
}

fn registry_with(tools: &[(&'static str, &'static str)]) -> ToolRegistry {
    let mut r = ToolRegistry::new(RegistrySettings {
        default_permission: Permission::Safe,
        ..RegistrySettings::default()
    });
    for (name, how) in tools {
        r.register(Arc::new(Misbehaving { name, how }))
            .expect("register");
    }
    r
}

#[test]
fn registry_refuses_bad_registrations() {
    let mut r = registry_with(&[("fine", "ok")]);
    assert_eq!(
        r.register(Arc::new(Misbehaving {
            name: "fine",
            how: "ok"
        })),
        Err(RegistryError::Duplicate("fine".into()))
    );
    assert!(matches!(
        r.register(Arc::new(Misbehaving {
            name: "Bad Name",
            how: "ok"
        })),
        Err(RegistryError::BadName(_))
    ));
    struct BadSchema;
    #[async_trait::async_trait]
    impl Tool for BadSchema {
        fn name(&self) -> &str {
            "bad_schema"
        }
        fn description(&self) -> &str {
            ""
        }
        fn parameters(&self) -> Value {
            json!({"type": "no-such-type"})
        }
        async fn call(&self, _: Value, _: ToolContext) -> Result<Value, ToolFailure> {
            Ok(Value::Null)
        }
    }
    assert!(matches!(
        r.register(Arc::new(BadSchema)),
        Err(RegistryError::BadSchema { .. })
    ));
    let mut perms = BTreeMap::new();
    perms.insert("nope".to_string(), Permission::Deny);
    assert_eq!(
        r.set_permissions(&perms),
        Err(RegistryError::UnknownInPermissions("nope".into()))
    );
    assert_eq!("ask".parse::<Permission>(), Ok(Permission::Ask));
    assert!("maybe".parse::<Permission>().is_err());
}

#[actix_rt::test]
async fn misbehaving_tools_are_contained() {
    let r = registry_with(&[
        ("ok", "ok"),
        ("panics", "panic"),
        ("hangs", "hang_async"),
        ("blocks", "hang_blocking"),
        ("garbage", "garbage"),
        ("huge", "huge"),
        ("fails", "fail"),
    ]);
    let call = |name: &'static str, args: Value| {
        let ctx = ToolContext::default();
        let r = &r;
        async move { r.call(name, args, ctx, false).await }
    };
    assert_eq!(
        call("ok", json!({"n": 3})).await,
        Ok(json!({"ok": true, "n": 3}))
    );
    assert_eq!(
        call("ok", Value::Null).await.map(|v| v["ok"].clone()),
        Ok(json!(true)),
        "null = no arguments"
    );
    let e = call("ok", json!({"n": -1})).await.expect_err("schema");
    assert_eq!(e.code(), "invalid_arguments");
    assert!(e.to_string().contains("/n"), "names the field: {e}");
    assert_eq!(
        call("ok", json!({"x": 1})).await.expect_err("extra").code(),
        "invalid_arguments"
    );
    assert_eq!(
        call("ok", json!("{not json"))
            .await
            .expect_err("string")
            .code(),
        "invalid_arguments"
    );

    let e = call("panics", json!({})).await.expect_err("panic");
    assert_eq!(e, ToolFailure::Panicked("tool exploded on purpose".into()));

    let started = Instant::now();
    assert_eq!(
        call("hangs", json!({})).await.expect_err("hang").code(),
        "timeout"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let started = Instant::now();
    assert_eq!(
        call("blocks", json!({})).await.expect_err("block").code(),
        "timeout"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the caller is not held by a blocked thread"
    );

    assert_eq!(
        call("garbage", json!({}))
            .await
            .expect_err("garbage")
            .code(),
        "bad_output"
    );
    assert_eq!(
        call("huge", json!({})).await.expect_err("huge").code(),
        "bad_output"
    );
    assert_eq!(
        call("fails", json!({})).await.expect_err("fails"),
        ToolFailure::Failed("it did not work".into())
    );
    assert_eq!(
        call("missing", json!({}))
            .await
            .expect_err("unknown")
            .code(),
        "unknown_tool"
    );

    // After all that, the registry still works.
    assert!(call("ok", json!({})).await.is_ok());
}

#[actix_rt::test]
async fn permissions_deny_and_ask() {
    let mut r = registry_with(&[("open", "ok"), ("guarded", "ok"), ("closed", "ok")]);
    let perms: BTreeMap<String, Permission> = [
        ("guarded".to_string(), Permission::Ask),
        ("closed".to_string(), Permission::Deny),
    ]
    .into();
    r.set_permissions(&perms).expect("permissions");
    let names: Vec<String> = r.specs().into_iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        ["guarded", "open"],
        "denied tools are not offered to the LLM"
    );
    let ctx = ToolContext::default;
    assert_eq!(
        r.call("closed", json!({}), ctx(), true)
            .await
            .expect_err("deny")
            .code(),
        "denied"
    );
    assert_eq!(
        r.call("guarded", json!({}), ctx(), false)
            .await
            .expect_err("ask")
            .code(),
        "needs_confirmation"
    );
    assert!(
        r.call("guarded", json!({}), ctx(), true).await.is_ok(),
        "confirmed"
    );
    assert_eq!(r.permission("guarded"), Some(Permission::Ask));
}

// ---------------------------------------------------------------------------------------
// The actor, with real built-ins and a real memory store
// ---------------------------------------------------------------------------------------

struct Sink {
    seen: Arc<Mutex<Vec<Value>>>,
}
impl Actor for Sink {
    type Context = Context<Self>;
}
impl Handler<HubDelivery> for Sink {
    type Result = ();
    fn handle(&mut self, msg: HubDelivery, _: &mut Context<Self>) {
        for e in msg.live() {
            if let (Ok(v), Ok(mut seen)) = (serde_json::from_str(&e.json), self.seen.lock()) {
                seen.push(v);
            }
        }
    }
}

struct FiredSink {
    fired: Arc<Mutex<Vec<TimerFired>>>,
}
impl Actor for FiredSink {
    type Context = Context<Self>;
}
impl Handler<TimerFired> for FiredSink {
    type Result = ();
    fn handle(&mut self, msg: TimerFired, _: &mut Context<Self>) {
        if let Ok(mut f) = self.fired.lock() {
            f.push(msg);
        }
    }
}

async fn hub_with_sink() -> (HubHandle, Arc<Mutex<Vec<Value>>>) {
    let hub = EventHub::start_hub(HubSettings::default());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Sink { seen: seen.clone() }.start();
    hub.addr()
        .send(Register {
            client_id: 7,
            recipient: sink.recipient(),
        })
        .await
        .expect("register");
    hub.addr()
        .send(Subscribe {
            client_id: 7,
            mask: TypeMask::ALL,
            start: StartAt::Live,
        })
        .await
        .expect("subscribe");
    (hub, seen)
}

async fn wait_for(seen: &Arc<Mutex<Vec<Value>>>, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..300 {
        let now = seen.lock().map(|s| s.clone()).unwrap_or_default();
        if pred(&now) {
            return now;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "events never arrived: {:?}",
        seen.lock().map(|s| s.clone()).unwrap_or_default()
    );
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

struct Fixture {
    tools: Addr<ToolsActor>,
    seen: Arc<Mutex<Vec<Value>>>,
    fired: Arc<Mutex<Vec<TimerFired>>>,
    _tmp: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let storage: Arc<dyn Storage> =
        Arc::new(SledStore::open(&tmp.path().join("store")).expect("store"));
    let engine = Arc::new(MemoryEngine::open(storage, MemorySettings::default()).expect("engine"));
    let (hub, seen) = hub_with_sink().await;
    let memory = MemoryActor::new(engine, Some(hub.clone()))
        .expect("memory")
        .start();
    let fired = Arc::new(Mutex::new(Vec::new()));
    let fired_sink = FiredSink {
        fired: fired.clone(),
    }
    .start();
    let timers = TimerService::new(Some(hub.clone()), Some(fired_sink.recipient())).start();
    let mut registry = ToolRegistry::new(RegistrySettings::default());
    register_builtins(
        &mut registry,
        BuiltinDeps {
            memory: Some(memory),
            components: Some(crate::components::ComponentRegistry::new()),
            timers: Some(timers),
            ..BuiltinDeps::default()
        },
    )
    .expect("builtins");
    let all_safe: BTreeMap<String, Permission> = BUILTIN_TOOLS
        .iter()
        .map(|n| (n.to_string(), Permission::Safe))
        .collect();
    registry.set_permissions(&all_safe).expect("permissions");
    Fixture {
        tools: ToolsActor::new(registry, Some(hub)).start(),
        seen,
        fired,
        _tmp: tmp,
    }
}

fn call(name: &str, arguments: Value) -> Call {
    Call {
        name: name.into(),
        arguments,
        turn_id: Some("t-1".into()),
        session_id: Some("cli-01".into()),
        call_id: None,
        confirmed: false,
    }
}

#[actix_rt::test]
async fn builtins_through_the_actor_with_events() {
    let f = fixture().await;
    let specs = f.tools.send(Specs).await.expect("mailbox");
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, BUILTIN_TOOLS);

    let v = f
        .tools
        .send(call("calculator", json!({"expression": "12*7"})))
        .await
        .expect("mailbox")
        .expect("ok");
    assert_eq!(v["result"], 84);

    let v = f
        .tools
        .send(call("clock", json!({"timezone": "Asia/Tokyo"})))
        .await
        .expect("mailbox")
        .expect("ok");
    assert_eq!(v["timezone"], "Asia/Tokyo");
    assert_eq!(v["utc_offset"], "+09:00");
    let now = crate::hub::unix_now();
    assert!((v["unix"].as_f64().unwrap_or(0.0) - now).abs() < 5.0);
    let e = f
        .tools
        .send(call("clock", json!({"timezone": "Mars/Olympus"})))
        .await
        .expect("mailbox")
        .expect_err("tz");
    assert_eq!(e.code(), "failed");

    let v = f
        .tools
        .send(call(
            "remember",
            json!({"content": "The user's bike is red", "tags": ["bike"]}),
        ))
        .await
        .expect("mailbox")
        .expect("stored");
    let id = v["memory_id"].as_str().unwrap_or_default().to_string();
    let v = f
        .tools
        .send(call("recall", json!({"query": "bike colour"})))
        .await
        .expect("mailbox")
        .expect("ok");
    assert_eq!(v["count"], 1);
    assert_eq!(v["memories"][0]["memory_id"], id.as_str());

    let v = f
        .tools
        .send(call("system_status", json!({})))
        .await
        .expect("mailbox")
        .expect("ok");
    assert_eq!(v["memories"], 1);
    assert!(
        v["process"]["memory_mb"].as_f64().unwrap_or(0.0) > 0.0,
        "{v}"
    );

    // The LLM's path: a function call with arguments as a JSON string.
    let req = crate::llm::ToolCallRequest {
        id: "call_abc".into(),
        name: "calculator".into(),
        arguments: r#"{"expression":"(3+4)^2"}"#.into(),
    };
    let result = f
        .tools
        .send(Call::from_request(
            &req,
            Some("t-2".into()),
            Some("cli-01".into()),
        ))
        .await
        .expect("mailbox");
    assert_eq!(result.as_ref().map(|v| v["result"].clone()), Ok(json!(49)));
    let msg = tool_message("call_abc", &result);
    assert_eq!(msg.tool_call_id.as_deref(), Some("call_abc"));
    assert!(msg.content.contains("49"));
    let bad = crate::llm::ToolCallRequest {
        id: "call_bad".into(),
        name: "calculator".into(),
        arguments: "{expression: oops".into(),
    };
    let e = f
        .tools
        .send(Call::from_request(&bad, None, None))
        .await
        .expect("mailbox")
        .expect_err("bad json");
    assert_eq!(e.code(), "invalid_arguments");
    assert!(tool_message("call_bad", &Err(e))
        .content
        .contains("invalid_arguments"));

    // The rules path: utterance → tool call.
    let m = match_intent("what is 12*7").expect("rule");
    let v = f
        .tools
        .send(call(m.tool, m.arguments))
        .await
        .expect("mailbox")
        .expect("ok");
    assert_eq!(v["text"], "84");

    let events = wait_for(&f.seen, |e| {
        of_type(e, "tool_result").len() >= 7 && !of_type(e, "tool_error").is_empty()
    })
    .await;
    let calls = of_type(&events, "tool_call");
    let results = of_type(&events, "tool_result");
    let first = calls[0];
    assert_eq!(first["session_id"], "cli-01");
    assert_eq!(first["data"]["tool"], "calculator");
    assert_eq!(first["data"]["turn_id"], "t-1");
    let matching = results
        .iter()
        .find(|r| r["data"]["call_id"] == first["data"]["call_id"])
        .expect("result for the call");
    assert_eq!(matching["data"]["result"]["result"], 84);
    assert!(matching["data"]["duration_ms"].as_f64().is_some());
    assert!(
        results.iter().any(|r| r["data"]["call_id"] == "call_abc"),
        "the LLM's call id is kept"
    );
    let errors = of_type(&events, "tool_error");
    assert!(errors
        .iter()
        .any(|e| e["data"]["code"] == "failed" && e["data"]["tool"] == "clock"));
    assert!(
        !of_type(&events, "memory_store").is_empty(),
        "remember goes through the Memory actor"
    );
}

#[actix_rt::test]
async fn timers_fire_list_and_cancel() {
    let f = fixture().await;
    let set = |seconds: f64, label: &str| {
        call(
            "timer",
            json!({"action": "set", "seconds": seconds, "label": label}),
        )
    };
    let v = f
        .tools
        .send(set(0.2, "tea"))
        .await
        .expect("mailbox")
        .expect("set");
    assert_eq!(v["timer"]["label"], "tea");
    f.tools
        .send(set(60.0, "pasta"))
        .await
        .expect("mailbox")
        .expect("set");
    let v = f
        .tools
        .send(call("timer", json!({"action": "list"})))
        .await
        .expect("mailbox")
        .expect("list");
    assert_eq!(v["count"], 2);
    assert_eq!(v["timers"][0]["label"], "tea", "soonest first");

    let events = wait_for(&f.seen, |e| {
        of_type(e, "conversation_message").iter().any(|m| {
            m["data"]["content"]
                .as_str()
                .is_some_and(|c| c.contains("tea"))
        })
    })
    .await;
    let m = of_type(&events, "conversation_message")[0];
    assert_eq!(m["session_id"], "cli-01");
    assert_eq!(m["data"]["role"], "assistant");
    assert!(m["data"]["content"]
        .as_str()
        .unwrap_or_default()
        .contains("timer for tea is done"));
    let fired = f.fired.lock().map(|f| f.clone()).unwrap_or_default();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].timer.label.as_deref(), Some("tea"));

    let v = f
        .tools
        .send(call("timer", json!({"action": "cancel", "label": "pasta"})))
        .await
        .expect("mailbox")
        .expect("cancel");
    assert_eq!(v["cancelled"]["label"], "pasta");
    let e = f
        .tools
        .send(call("timer", json!({"action": "cancel"})))
        .await
        .expect("mailbox")
        .expect_err("none left");
    assert_eq!(e.code(), "failed");
    let e = f
        .tools
        .send(call("timer", json!({"action": "set"})))
        .await
        .expect("mailbox")
        .expect_err("no seconds");
    assert_eq!(
        e.code(),
        "invalid_arguments",
        "schema's if/then requires seconds for set"
    );
    let e = f
        .tools
        .send(call("timer", json!({"action": "set", "seconds": 1e9})))
        .await
        .expect("mailbox")
        .expect_err("too long");
    assert_eq!(e.code(), "invalid_arguments");
}

// ---------------------------------------------------------------------------------------
// The coding tools through the actor, as a chat or voice turn drives them
// ---------------------------------------------------------------------------------------

struct Coding {
    tools: Addr<ToolsActor>,
    seen: Arc<Mutex<Vec<Value>>>,
    root: std::path::PathBuf,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn coding() -> Coding {
    let project = tempfile::tempdir().expect("tempdir");
    let undo = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(project.path().join("src")).expect("mkdir");
    std::fs::write(
        project.path().join("src/lib.rs"),
        "pub fn greet() -> &'static str {\n    \"hello\"\n}\n",
    )
    .expect("write");
    let ws = Arc::new(
        Workspace::open(WorkspaceSettings::new(project.path(), undo.path())).expect("workspace"),
    );
    let (hub, seen) = hub_with_sink().await;
    let mut registry = ToolRegistry::new(RegistrySettings::default());
    let rules = builtin::shell_rules::ShellRules::new(
        &["echo *".to_string(), "sleep *".to_string()],
        &[],
        &["rm *".to_string()],
        Permission::Ask,
    )
    .expect("rules");
    register_builtins(
        &mut registry,
        BuiltinDeps {
            project: Some(ws.clone()),
            shell: Some(builtin::shell::ShellSettings {
                rules,
                kill_grace: Duration::from_millis(300),
                ..Default::default()
            }),
            ..BuiltinDeps::default()
        },
    )
    .expect("builtins");
    let perms: BTreeMap<String, Permission> = [
        ("read_file", Permission::Safe),
        ("edit_file", Permission::Ask),
        ("run_command", Permission::Safe),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    registry.set_permissions(&perms).expect("permissions");
    Coding {
        tools: ToolsActor::new(registry, Some(hub)).start(),
        seen,
        root: ws.root().to_path_buf(),
        _dirs: (project, undo),
    }
}

#[actix_rt::test]
async fn read_edit_asked_then_confirmed_and_read_back() {
    let c = coding().await;
    let names: Vec<String> = c
        .tools
        .send(Specs)
        .await
        .expect("mailbox")
        .into_iter()
        .map(|s| s.name)
        .collect();
    for t in CODING_TOOLS {
        assert!(names.iter().any(|n| n == t), "{t} offered: {names:?}");
    }
    let read = c
        .tools
        .send(call("read_file", json!({"path": "src/lib.rs"})))
        .await
        .expect("mailbox")
        .expect("read");
    assert!(read["content"]
        .as_str()
        .expect("content")
        .contains("\"hello\""));

    let edit = json!({"path": "src/lib.rs", "edits": [{"search": "\"hello\"", "replace": "\"hello, world\""}]});
    let asked = c
        .tools
        .send(Call {
            call_id: Some("k-edit".into()),
            ..call("edit_file", edit.clone())
        })
        .await
        .expect("mailbox")
        .expect_err("ask");
    assert_eq!(asked.code(), "needs_confirmation");
    let preview = asked.preview().expect("a preview").clone();
    assert_eq!(preview.summary, "edit src/lib.rs (+1 -1)");
    assert!(preview
        .diff
        .as_deref()
        .expect("diff")
        .contains("+    \"hello, world\""));
    assert!(
        asked.to_string().contains("it would edit src/lib.rs"),
        "{asked}"
    );
    let message = tool_message("k-edit", &Err(asked));
    assert!(
        message.content.contains("needs_confirmation"),
        "{}",
        message.content
    );
    assert!(
        std::fs::read_to_string(c.root.join("src/lib.rs"))
            .expect("read")
            .contains("\"hello\""),
        "nothing written before the user said yes"
    );

    let done = c
        .tools
        .send(Call {
            confirmed: true,
            ..call("edit_file", edit)
        })
        .await
        .expect("mailbox")
        .expect("confirmed edit");
    assert_eq!(done["added"], 1);
    let back = c
        .tools
        .send(call(
            "read_file",
            json!({"path": "src/lib.rs", "start_line": 2, "end_line": 2}),
        ))
        .await
        .expect("mailbox")
        .expect("read back");
    assert_eq!(back["content"], "    \"hello, world\"\n");

    let events = wait_for(&c.seen, |e| {
        of_type(e, "tool_error")
            .iter()
            .any(|x| x["data"]["call_id"] == "k-edit")
            && of_type(e, "tool_result").len() >= 3
    })
    .await;
    let err = of_type(&events, "tool_error")
        .into_iter()
        .find(|x| x["data"]["call_id"] == "k-edit")
        .expect("tool_error");
    assert_eq!(err["data"]["code"], "needs_confirmation");
    assert_eq!(err["data"]["preview"]["summary"], "edit src/lib.rs (+1 -1)");
    assert!(err["data"]["preview"]["diff"]
        .as_str()
        .expect("diff")
        .starts_with("--- a/src/lib.rs"));
}

#[actix_rt::test]
async fn commands_stream_progress_obey_rules_and_can_be_cancelled() {
    let c = coding().await;
    let v = c
        .tools
        .send(Call {
            call_id: Some("k-echo".into()),
            ..call("run_command", json!({"command": "echo one; echo two >&2"}))
        })
        .await
        .expect("mailbox")
        .expect("allowed by `echo *`");
    assert_eq!(v["exit_code"], 0);
    let events = wait_for(&c.seen, |e| {
        of_type(e, "tool_progress")
            .iter()
            .filter(|x| x["data"]["call_id"] == "k-echo")
            .count()
            >= 2
    })
    .await;
    let progress: Vec<(String, String)> = of_type(&events, "tool_progress")
        .into_iter()
        .map(|x| {
            (
                x["data"]["stream"].as_str().unwrap_or_default().to_string(),
                x["data"]["text"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        progress.contains(&("stdout".into(), "one\n".into())),
        "{progress:?}"
    );
    assert!(
        progress.contains(&("stderr".into(), "two\n".into())),
        "{progress:?}"
    );
    assert_eq!(
        of_type(&events, "tool_progress")[0]["data"]["tool"],
        "run_command"
    );

    let e = c
        .tools
        .send(call("run_command", json!({"command": "rm -f src/lib.rs"})))
        .await
        .expect("mailbox")
        .expect_err("denied");
    assert_eq!(e.code(), "denied");
    assert!(e.to_string().contains("tools.shell.deny `rm *`"), "{e}");
    let e = c
        .tools
        .send(call("run_command", json!({"command": "make"})))
        .await
        .expect("mailbox")
        .expect_err("ask");
    assert_eq!(e.code(), "needs_confirmation");
    assert!(e.to_string().contains("run `make`"), "{e}");

    // Barge-in: Cancel stops the command; the call answers what it had.
    let pending = c.tools.send(Call {
        call_id: Some("k-sleep".into()),
        session_id: Some("s-9".into()),
        ..call("run_command", json!({"command": "sleep 30"}))
    });
    let tools = c.tools.clone();
    let cancel = async move {
        for _ in 0..500 {
            let n = tools
                .send(Cancel {
                    session_id: Some("s-9".into()),
                    ..Cancel::default()
                })
                .await
                .expect("mailbox");
            if n > 0 {
                return n;
            }
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        0
    };
    let (result, told) = tokio::join!(pending, cancel);
    assert_eq!(told, 1);
    let v = result.expect("mailbox").expect("answered");
    assert_eq!(v["cancelled"], true);
    assert_eq!(v["signal"], "SIGTERM");
}

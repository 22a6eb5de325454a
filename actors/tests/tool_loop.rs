//! A provider-driven tool loop, as a chat turn runs it: a loopback OpenAI-compatible
//! server scripts the model (read the file → edit it → read it back → answer), the real
//! OpenAI engine parses its tool calls, and the Tools actor runs them on a real project.
//! The edit asks first (`needs_confirmation` with the diff), the user says yes, and the
//! confirmed call writes.

mod common;

use std::sync::Arc;

use actix::Actor;
use coda_actors::llm::openai::{OpenAiConfig, OpenAiProvider};
use coda_actors::llm::scripted::{Reply, ScriptedServer};
use coda_actors::llm::{ChatMessage, ChatRole, FinishReason, LlmProvider};
use coda_actors::tools::{
    register_builtins, tool_message, BuiltinDeps, Call, Permission, RegistrySettings, Specs,
    ToolRegistry, ToolsActor, Workspace, WorkspaceSettings,
};
use common::*;
use serde_json::{json, Value};

/// An SSE answer asking for one tool call.
fn tool_call_reply(id: &str, name: &str, args: Value) -> Reply {
    let first = json!({"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":id,"type":"function","function":{"name":name,"arguments":args.to_string()}}]},"finish_reason":null}]});
    let end = json!({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]});
    Reply::sse_pieces(
        &[
            &format!("data: {first}\n\n"),
            &format!("data: {end}\n\n"),
            "data: [DONE]\n\n",
        ],
        std::time::Duration::ZERO,
    )
}

fn text_reply(text: &str) -> Reply {
    let end = json!({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]});
    Reply::sse_pieces(
        &[
            &oa_delta(text),
            &format!("data: {end}\n\n"),
            "data: [DONE]\n\n",
        ],
        std::time::Duration::ZERO,
    )
}

#[actix_rt::test]
async fn read_edit_confirmed_read_back_through_a_scripted_model() {
    let project = tempfile::tempdir().expect("tempdir");
    let undo = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(project.path().join("src")).expect("mkdir");
    std::fs::write(
        project.path().join("src/lib.rs"),
        "pub fn answer() -> u32 {\n    41\n}\n",
    )
    .expect("write");

    // The script: what the model does next depends on how many tool results it has seen.
    let server = ScriptedServer::start(|r| {
        let seen = r.json()["messages"]
            .as_array()
            .map(|m| m.iter().filter(|m| m["role"] == "tool").count())
            .unwrap_or(0);
        match seen {
            0 => tool_call_reply("c1", "read_file", json!({"path": "src/lib.rs"})),
            1 => tool_call_reply(
                "c2",
                "edit_file",
                json!({"path": "src/lib.rs", "edits": [{"search": "    41\n", "replace": "    42\n"}]}),
            ),
            2 => tool_call_reply("c3", "read_file", json!({"path": "src/lib.rs", "start_line": 2, "end_line": 2})),
            _ => text_reply("The answer is now 42."),
        }
    })
    .await
    .expect("server");
    let model = OpenAiProvider::new(OpenAiConfig {
        base_url: format!("{}/v1", server.url()),
        api_key: None,
        model: "scripted".into(),
        include_usage: false,
        http: fast_http(),
    })
    .expect("provider");

    let ws =
        Workspace::open(WorkspaceSettings::new(project.path(), undo.path())).expect("workspace");
    let mut registry = ToolRegistry::new(RegistrySettings::default());
    register_builtins(
        &mut registry,
        BuiltinDeps {
            project: Some(Arc::new(ws)),
            ..BuiltinDeps::default()
        },
    )
    .expect("builtins");
    registry
        .set_permissions(
            &[
                ("read_file", Permission::Safe),
                ("edit_file", Permission::Ask),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        )
        .expect("permissions");
    let tools = ToolsActor::new(registry, None).start();

    let specs = tools.send(Specs).await.expect("mailbox");
    let mut messages = vec![ChatMessage::new(ChatRole::User, "Make answer() return 42.")];
    let mut asked = Vec::new();
    let mut answer = None;
    for _round in 0..6 {
        let req = coda_actors::llm::ChatRequest {
            messages: messages.clone(),
            tools: specs.clone(),
            ..Default::default()
        };
        let resp = model.chat(req).await.expect("model");
        if resp.finish_reason != FinishReason::ToolCalls {
            answer = Some(resp.text);
            break;
        }
        messages.push(ChatMessage {
            role: ChatRole::Assistant,
            content: String::new(),
            tool_calls: resp.tool_calls.clone(),
            tool_call_id: None,
        });
        for tc in &resp.tool_calls {
            let call = Call::from_request(tc, Some("t-1".into()), Some("chat".into()));
            let mut result = tools.send(call.clone()).await.expect("mailbox");
            if let Err(e) = &result {
                if e.code() == "needs_confirmation" {
                    // The user reads the diff and says yes.
                    asked.push(e.preview().cloned().expect("a preview"));
                    result = tools
                        .send(Call {
                            confirmed: true,
                            ..call
                        })
                        .await
                        .expect("mailbox");
                }
            }
            messages.push(tool_message(&tc.id, &result));
        }
    }

    assert_eq!(answer.as_deref(), Some("The answer is now 42."));
    assert_eq!(asked.len(), 1, "only the edit asked");
    assert_eq!(asked[0].summary, "edit src/lib.rs (+1 -1)");
    assert!(asked[0]
        .diff
        .as_deref()
        .expect("diff")
        .contains("-    41\n+    42\n"));
    assert_eq!(
        std::fs::read_to_string(project.path().join("src/lib.rs")).expect("read"),
        "pub fn answer() -> u32 {\n    42\n}\n"
    );

    let requests = server.requests();
    assert_eq!(requests.len(), 4);
    let offered: Vec<String> = requests[0].json()["tools"]
        .as_array()
        .expect("tools offered")
        .iter()
        .map(|t| {
            t["function"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(offered.contains(&"edit_file".to_string()), "{offered:?}");
    // The model saw the file, then the edit's diff, then the line read back.
    let tool_results = |i: usize| -> Vec<Value> {
        requests[i].json()["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .filter(|m| m["role"] == "tool")
            .map(|m| {
                serde_json::from_str(m["content"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
            })
            .collect()
    };
    assert!(tool_results(1)[0]["content"]
        .as_str()
        .expect("content")
        .contains("41"));
    assert_eq!(tool_results(2)[1]["added"], 1);
    assert_eq!(tool_results(3)[2]["content"], "    42\n");
}

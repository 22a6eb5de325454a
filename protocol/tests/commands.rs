//! `parse_command`: every error code, id correlation, missing data, nulls, wrong types,
//! limits; and building commands with `CommandRequest::to_json`.

use coda_protocol::*;
use serde_json::{json, Value};

fn reject(text: &str) -> CommandRejection {
    match parse_command(text) {
        Ok(request) => panic!("{text} was accepted as {request:?}"),
        Err(rejection) => rejection,
    }
}

fn accept(text: &str) -> CommandRequest {
    match parse_command(text) {
        Ok(request) => request,
        Err(rejection) => panic!("{text} was rejected: {rejection}"),
    }
}

#[test]
fn bad_json() {
    for text in [
        "",
        "{",
        "not json",
        r#"{"type":"ping",}"#,
        "{\"type\":\"ping\"} x",
    ] {
        let r = reject(text);
        assert_eq!(r.code, ErrorCode::BadJson, "{text:?}");
        assert_eq!(r.id, None);
        assert!(r.message.starts_with("invalid JSON"), "{}", r.message);
    }
}

#[test]
fn not_an_object() {
    for text in [
        "[]",
        "5",
        "\"ping\"",
        "null",
        "true",
        r#"[{"type":"ping"}]"#,
    ] {
        let r = reject(text);
        assert_eq!(r.code, ErrorCode::InvalidData, "{text}");
        assert_eq!(r.id, None);
        assert!(r.message.contains("JSON object"), "{}", r.message);
    }
}

#[test]
fn missing_or_wrong_type() {
    let r = reject(r#"{"id":"a","data":{}}"#);
    assert_eq!(
        (r.code, r.id.as_deref()),
        (ErrorCode::InvalidData, Some("a"))
    );
    assert!(r.message.contains("missing `type`"), "{}", r.message);

    let r = reject(r#"{"id":"b","type":null}"#);
    assert_eq!(
        (r.code, r.id.as_deref()),
        (ErrorCode::InvalidData, Some("b"))
    );

    let r = reject(r#"{"id":"c","type":7}"#);
    assert_eq!(
        (r.code, r.id.as_deref()),
        (ErrorCode::InvalidData, Some("c"))
    );
    assert!(
        r.message.contains("`type` must be a string"),
        "{}",
        r.message
    );
}

#[test]
fn unknown_command_names_the_type() {
    let r = reject(r#"{"id":"c-9","type":"set_config","data":{"x":1}}"#);
    assert_eq!(r.code, ErrorCode::UnknownCommand);
    assert_eq!(r.id.as_deref(), Some("c-9"));
    assert!(r.message.contains("`set_config`"), "{}", r.message);
    assert!(r.message.contains("text_input"), "{}", r.message);

    // A huge type name is not echoed back in full.
    let huge = "x".repeat(100_000);
    let r = reject(&format!(r#"{{"type":"{huge}"}}"#));
    assert_eq!(r.code, ErrorCode::UnknownCommand);
    assert!(r.message.len() < 1_000, "{} bytes", r.message.len());

    // Case matters: names are snake_case.
    assert_eq!(reject(r#"{"type":"PING"}"#).code, ErrorCode::UnknownCommand);
}

#[test]
fn id_must_be_a_string() {
    for id in ["5", "true", "{}", "[\"a\"]"] {
        let r = reject(&format!(r#"{{"id":{id},"type":"ping"}}"#));
        assert_eq!(r.code, ErrorCode::InvalidData, "{id}");
        assert_eq!(r.id, None);
        assert!(r.message.contains("`id` must be a string"), "{}", r.message);
    }
}

#[test]
fn id_is_carried_by_every_later_rejection() {
    let cases = [
        (r#"{"id":"x1","type":"nope"}"#, ErrorCode::UnknownCommand),
        (r#"{"id":"x2"}"#, ErrorCode::InvalidData),
        (
            r#"{"id":"x3","type":"ping","data":[1]}"#,
            ErrorCode::InvalidData,
        ),
        (
            r#"{"id":"x4","type":"ping","timestamp":true}"#,
            ErrorCode::InvalidData,
        ),
        (
            r#"{"id":"x5","type":"text_input","data":{"text":5}}"#,
            ErrorCode::InvalidData,
        ),
        (
            r#"{"id":"x6","type":"text_input","data":{"text":"  "}}"#,
            ErrorCode::InvalidData,
        ),
    ];
    for (text, code) in cases {
        let r = reject(text);
        assert_eq!(r.code, code, "{text}");
        let expected = serde_json::from_str::<Value>(text).expect("json")["id"].clone();
        assert_eq!(r.id.as_deref(), expected.as_str(), "{text}");
    }
}

#[test]
fn data_must_be_an_object() {
    for data in ["[]", "5", "\"text\"", "true"] {
        let r = reject(&format!(r#"{{"type":"ping","data":{data}}}"#));
        assert_eq!(r.code, ErrorCode::InvalidData, "{data}");
        assert!(
            r.message.contains("`data` must be a JSON object"),
            "{}",
            r.message
        );
    }
}

#[test]
fn missing_or_null_data_is_empty() {
    assert_eq!(accept(r#"{"type":"ping"}"#).command, Command::Ping);
    assert_eq!(
        accept(r#"{"type":"ping","data":null}"#).command,
        Command::Ping
    );
    assert_eq!(
        accept(r#"{"type":"interrupt"}"#).command,
        Command::Interrupt(Interrupt {})
    );
    assert_eq!(
        accept(r#"{"type":"demo_flow"}"#).command,
        Command::DemoFlow(DemoFlow { text: None })
    );
    let r = reject(r#"{"type":"text_input"}"#);
    assert_eq!(r.code, ErrorCode::InvalidData);
    assert!(r.message.contains("missing field `text`"), "{}", r.message);
    assert!(r.message.contains("text_input"), "{}", r.message);
}

#[test]
fn nulls_count_as_absent() {
    let request = accept(r#"{"id":null,"type":"ping","data":null,"timestamp":null}"#);
    assert_eq!(request, CommandRequest::new(Command::Ping));
    let request = accept(r#"{"type":"text_input","data":{"text":"hi","session_id":null}}"#);
    assert_eq!(
        request.command,
        Command::TextInput(TextInput {
            text: "hi".into(),
            session_id: None
        })
    );
    // A null where a value is required is still an error.
    let r = reject(r#"{"type":"text_input","data":{"text":null}}"#);
    assert_eq!(r.code, ErrorCode::InvalidData);
    assert!(r.message.contains("`text`"), "{}", r.message);
}

#[test]
fn wrong_field_types_name_the_field() {
    let cases = [
        (r#"{"type":"text_input","data":{"text":5}}"#, "`text`"),
        (r#"{"type":"resume","data":{"last_seq":-1}}"#, "`last_seq`"),
        (
            r#"{"type":"resume","data":{"last_seq":"12"}}"#,
            "`last_seq`",
        ),
        (r#"{"type":"stt_start","data":{"mode":"shout"}}"#, "`mode`"),
        (
            r#"{"type":"stt_start","data":{"mode":"continuous","source":"cloud"}}"#,
            "`source`",
        ),
        (
            r#"{"type":"subscribe","data":{"types":"stt_*"}}"#,
            "`types`",
        ),
        (r#"{"type":"subscribe","data":{"types":[1]}}"#, "`types`"),
        (r#"{"type":"memory_list","data":{"limit":1.5}}"#, "`limit`"),
        (
            r#"{"type":"hello","data":{"protocol_version":1.0}}"#,
            "`protocol_version`",
        ),
        (r#"{"type":"auth","data":{"token":["a"]}}"#, "`token`"),
    ];
    for (text, field) in cases {
        let r = reject(text);
        assert_eq!(r.code, ErrorCode::InvalidData, "{text}");
        assert!(r.message.contains(field), "{text}: {}", r.message);
        assert!(r.message.starts_with("invalid data for "), "{}", r.message);
    }
    let r = reject(r#"{"type":"stt_start","data":{"mode":"shout"}}"#);
    assert!(r.message.contains("push_to_talk"), "{}", r.message);
}

#[test]
fn timestamp_forms() {
    let request = accept(r#"{"type":"ping","timestamp":"2025-05-01T12:34:56.789Z"}"#);
    assert_eq!(
        request.timestamp,
        Some(CommandTimestamp::Iso("2025-05-01T12:34:56.789Z".into()))
    );
    let request = accept(r#"{"type":"ping","timestamp":1746102896.789}"#);
    assert_eq!(
        request.timestamp,
        Some(CommandTimestamp::Unix(1746102896.789))
    );
    let request = accept(r#"{"type":"ping","timestamp":1746102896}"#);
    assert_eq!(
        request.timestamp,
        Some(CommandTimestamp::Unix(1746102896.0))
    );
    for bad in ["true", "{}", "[1]"] {
        let r = reject(&format!(r#"{{"type":"ping","timestamp":{bad}}}"#));
        assert_eq!(r.code, ErrorCode::InvalidData, "{bad}");
        assert!(r.message.contains("`timestamp`"), "{}", r.message);
    }
}

#[test]
fn unknown_fields_are_ignored() {
    let request = accept(
        r#"{"type":"text_input","data":{"text":"hi","mood":"happy"},"trace":"abc","priority":3}"#,
    );
    assert_eq!(
        request.command,
        Command::TextInput(TextInput {
            text: "hi".into(),
            session_id: None
        })
    );
    assert_eq!(
        accept(r#"{"type":"ping","data":{"x":1}}"#).command,
        Command::Ping
    );
}

#[test]
fn every_command_type_parses() {
    let cases = [
        json!({"type": "hello", "data": {"client": "t", "protocol_version": "1.0", "epoch": "e", "last_seq": 5, "subscribe": ["stt_*"]}}),
        json!({"type": "auth", "data": {"token": "secret"}}),
        json!({"type": "subscribe", "data": {"types": ["stt_*", "llm_result"]}}),
        json!({"type": "unsubscribe", "data": {"types": ["*"]}}),
        json!({"type": "resume", "data": {"epoch": "e", "last_seq": 10}}),
        json!({"type": "text_input", "data": {"text": "what time is it", "session_id": "s-1"}}),
        json!({"type": "stt_start", "data": {"mode": "push_to_talk", "source": "client"}}),
        json!({"type": "stt_stop"}),
        json!({"type": "interrupt", "data": {}}),
        json!({"type": "demo_flow", "data": {"text": "tell me a joke"}}),
        json!({"type": "get_system_info"}),
        json!({"type": "get_performance_metrics"}),
        json!({"type": "get_config"}),
        json!({"type": "memory_search", "data": {"query": "tea", "limit": 5}}),
        json!({"type": "memory_list", "data": {"limit": 20}}),
        json!({"type": "ping"}),
        json!({"type": "token_create", "data": {"name": "dash", "expires_s": 60.0}}),
        json!({"type": "token_list"}),
        json!({"type": "token_revoke", "data": {"token": "dash"}}),
        json!({"type": "token_rotate", "data": {"token": "dash"}}),
    ];
    let mut seen = Vec::new();
    for case in cases {
        let request = accept(&case.to_string());
        let command_type = request.command.command_type();
        assert_eq!(command_type.as_str(), case["type"]);
        seen.push(command_type);

        // The client side builds the same frame back.
        let rebuilt: Value = serde_json::from_str(&request.to_json()).expect("json");
        let mut expected = case.clone();
        if expected.get("data").is_none() {
            expected["data"] = json!({});
        }
        assert_eq!(rebuilt, expected);
        assert_eq!(parse_command(&request.to_json()), Ok(request));
    }
    assert_eq!(seen, CommandType::ALL);
}

#[test]
fn to_json_wire_form() {
    let request = CommandRequest::new(Command::TextInput(TextInput {
        text: "what time is it".into(),
        session_id: None,
    }))
    .with_id("c-17");
    assert_eq!(
        request.to_json(),
        r#"{"id":"c-17","type":"text_input","data":{"text":"what time is it"}}"#
    );
    assert_eq!(
        CommandRequest::new(Command::Ping).to_json(),
        r#"{"type":"ping","data":{}}"#
    );
    let mut request = CommandRequest::from(Command::GetConfig).with_id("g");
    request.timestamp = Some(CommandTimestamp::Iso("2025-05-01T12:34:56.789Z".into()));
    assert_eq!(
        request.to_json(),
        r#"{"id":"g","type":"get_config","data":{},"timestamp":"2025-05-01T12:34:56.789Z"}"#
    );
    let command = serde_json::to_value(Command::Unsubscribe(Subscribe {
        types: vec!["llm_token".into()],
    }))
    .expect("ser");
    assert_eq!(
        command,
        json!({"type": "unsubscribe", "data": {"types": ["llm_token"]}})
    );
}

#[test]
fn text_input_limits() {
    for text in ["", "   ", "\n\t"] {
        let r = reject(&json!({"type": "text_input", "data": {"text": text}}).to_string());
        assert_eq!(r.code, ErrorCode::InvalidData);
        assert!(r.message.contains("must not be empty"), "{}", r.message);
    }
    let at_limit = "é".repeat(MAX_TEXT_CHARS);
    accept(&json!({"type": "text_input", "data": {"text": at_limit}}).to_string());
    let over = "a".repeat(MAX_TEXT_CHARS + 1);
    let r = reject(&json!({"type": "text_input", "data": {"text": over}}).to_string());
    assert_eq!(r.code, ErrorCode::InvalidData);
    assert!(r.message.contains("10000"), "{}", r.message);

    for session in ["", "system", &"s".repeat(MAX_SESSION_ID_CHARS + 1)] {
        let r = reject(
            &json!({"type": "text_input", "data": {"text": "hi", "session_id": session}})
                .to_string(),
        );
        assert_eq!(r.code, ErrorCode::InvalidData, "{session}");
        assert!(r.message.contains("`session_id`"), "{}", r.message);
    }
}

#[test]
fn subscribe_limits() {
    accept(&json!({"type": "subscribe", "data": {"types": []}}).to_string());
    let many: Vec<String> = (0..MAX_SUBSCRIBE_PATTERNS)
        .map(|i| format!("t{i}"))
        .collect();
    accept(&json!({"type": "subscribe", "data": {"types": many}}).to_string());

    let too_many: Vec<String> = (0..=MAX_SUBSCRIBE_PATTERNS)
        .map(|i| format!("t{i}"))
        .collect();
    let bad = [
        json!({"type": "subscribe", "data": {"types": too_many}}),
        json!({"type": "subscribe", "data": {"types": ["stt_*", ""]}}),
        json!({"type": "unsubscribe", "data": {"types": ["x".repeat(MAX_PATTERN_CHARS + 1)]}}),
        json!({"type": "subscribe", "data": {"types": ["st*t"]}}),
        json!({"type": "subscribe", "data": {"types": ["stt_**"]}}),
        json!({"type": "hello", "data": {"protocol_version": "1.0", "subscribe": [""]}}),
    ];
    for case in bad {
        let r = reject(&case.to_string());
        assert_eq!(r.code, ErrorCode::InvalidData, "{case}");
    }
    let r = reject(&json!({"type": "subscribe", "data": {"types": ["a*b"]}}).to_string());
    assert!(
        r.message.contains("only allowed once, at the end"),
        "{}",
        r.message
    );
}

#[test]
fn memory_limits() {
    for limit in [0, MAX_MEMORY_LIMIT + 1] {
        let r = reject(&json!({"type": "memory_search", "data": {"limit": limit}}).to_string());
        assert_eq!(r.code, ErrorCode::InvalidData);
        assert!(r.message.contains("`limit`"), "{}", r.message);
    }
    accept(&json!({"type": "memory_search", "data": {"limit": MAX_MEMORY_LIMIT}}).to_string());
}

#[test]
fn auth_debug_redacts_the_token() {
    let request = accept(r#"{"type":"auth","data":{"token":"hunter2-secret"}}"#);
    let debug = format!("{request:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("redacted"), "{debug}");
    // The wire form still carries it, for clients.
    assert!(request.to_json().contains("hunter2-secret"));
}

#[test]
fn rejection_display_and_conversion() {
    let r = reject(r#"{"id":"q","type":"fly"}"#);
    assert!(r.to_string().starts_with("unknown_command: "), "{r}");
    let error: CommandError = r.clone().into();
    assert_eq!(error.id.as_deref(), Some("q"));
    assert_eq!(error.code, ErrorCode::UnknownCommand);
    assert_eq!(error.message, r.message);
    let boxed: Box<dyn std::error::Error> = Box::new(r);
    assert!(!boxed.to_string().is_empty());
}

#[test]
fn hello_without_version_is_invalid() {
    let r = reject(r#"{"id":"h","type":"hello","data":{"client":"x"}}"#);
    assert_eq!(r.code, ErrorCode::InvalidData);
    assert!(r.message.contains("protocol_version"), "{}", r.message);
    // A version the server cannot speak is parsed fine: refusing it is the server's call.
    let request = accept(r#"{"type":"hello","data":{"protocol_version":"2.0"}}"#);
    let Command::Hello(hello) = request.command else {
        panic!("not hello");
    };
    assert!(check_compatible(&hello.protocol_version).is_err());
}

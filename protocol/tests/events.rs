//! Round trips of every event type through `Envelope`, `EventData` and `RawEnvelope`.

use std::collections::BTreeMap;

use coda_protocol::*;
use serde_json::{json, Value};

/// One payload of every event type, with every optional field set.
fn samples() -> Vec<EventData> {
    let turn = || Some("t-1".to_owned());
    let replayed = Envelope::new(
        12,
        1713943120.5,
        "cli-01",
        SttResult {
            turn_id: turn(),
            text: "Hello".into(),
            confidence: 0.9,
            duration_ms: 320.0,
            language: "en".into(),
        },
    )
    .to_raw()
    .expect("serializable");
    vec![
        SystemInfo {
            server_version: "0.1.0".into(),
            protocol_version: PROTOCOL_VERSION.into(),
            epoch: "e-1".into(),
            last_seq: 42,
            started_at: 1713940000.0,
            uptime_s: 3123.7,
            pid: 4242,
            listen: Some("127.0.0.1:8765".into()),
            auth_required: false,
            clients: 2,
            components: vec![ComponentInfo {
                name: "stt".into(),
                state: ComponentState::Running,
                restarts: 1,
                uptime_s: 12.5,
                reason: Some("restarted after a panic".into()),
            }],
        }
        .into(),
        SystemMetrics {
            memory_mb: 387.0,
            cpu_percent: 19.4,
            gpu_vram_mb: Some(1024.0),
            gpu_util: Some(12.0),
            system_memory_used_mb: Some(8000.0),
            system_memory_total_mb: Some(16000.0),
            system_cpu_percent: Some(7.5),
        }
        .into(),
        SystemError {
            level: Level::Error,
            component: "ws".into(),
            code: "version_mismatch".into(),
            message: "use a 1.x client".into(),
        }
        .into(),
        ComponentStatus {
            component: "tts".into(),
            state: ComponentState::Degraded,
            restarts: 5,
            reason: Some("restart budget exhausted".into()),
        }
        .into(),
        Alert {
            metric: "memory_mb".into(),
            value: 2100.0,
            threshold: 2048.0,
            level: Level::Warning,
            cleared: false,
            message: Some("memory above 2048 MiB".into()),
        }
        .into(),
        ConnectionStatus {
            client_id: "c-9".into(),
            peer: "127.0.0.1:53122".into(),
            state: ConnectionState::Refused,
            reason: Some("bad origin".into()),
            origin: Some("https://evil.example".into()),
        }
        .into(),
        Replay {
            events: vec![replayed],
            complete: true,
            epoch: "e-1".into(),
            last_seq: 42,
        }
        .into(),
        Config {
            config: json!({"server": {"port": 8765}}),
            profile: Some("dev".into()),
        }
        .into(),
        CommandResult {
            id: Some("c-1".into()),
            ok: true,
            data: json!({"pong": true}),
        }
        .into(),
        CommandError {
            id: None,
            code: ErrorCode::UnknownCommand,
            message: "unknown command type `fly`".into(),
        }
        .into(),
        DiagnosticTick {
            index: 3,
            emitted_at: 1713943123.5,
            padding: "xxxx".into(),
        }
        .into(),
        LatencyTrace {
            turn_id: "t-1".into(),
            stt_ms: Some(320.0),
            endpoint_ms: None,
            stt_wait_ms: None,
            intent_ms: Some(2.0),
            llm_ttft_ms: Some(150.0),
            llm_ms: Some(800.0),
            tts_first_audio_ms: Some(420.0),
            tts_ms: Some(600.0),
            total_ms: 1800.0,
            kernel_ms: Some(1.2),
        }
        .into(),
        ComponentTiming {
            window_s: 300.0,
            turns: 4,
            stages: vec![StageTiming {
                stage: "llm".into(),
                count: 4,
                p50_ms: 700.0,
                p95_ms: 950.0,
                p99_ms: 990.0,
                max_ms: 1000.0,
            }],
            counters: BTreeMap::from([("events_published".to_owned(), 1234)]),
        }
        .into(),
        WakeDetected {
            word: "hey coda".into(),
            score: 0.061,
            source: AudioSource::Device,
            verified: Some(-4.2),
        }
        .into(),
        SttStart {
            turn_id: turn(),
            mode: SttMode::PushToTalk,
            source: AudioSource::Client,
        }
        .into(),
        SttInterim {
            turn_id: turn(),
            text: "Hel".into(),
            confidence: Some(0.5),
        }
        .into(),
        SttResult {
            turn_id: turn(),
            text: "Hello world".into(),
            confidence: 0.95,
            duration_ms: 1500.0,
            language: "en".into(),
        }
        .into(),
        SttError {
            turn_id: turn(),
            code: "device_unavailable".into(),
            message: "no microphone".into(),
            level: Level::Error,
        }
        .into(),
        LlmStart {
            turn_id: turn(),
            provider: "local".into(),
            model: "smollm2".into(),
            prompt: "Hello".into(),
        }
        .into(),
        LlmToken {
            turn_id: "t-1".into(),
            index: 0,
            text: "Hi".into(),
        }
        .into(),
        LlmResult {
            turn_id: turn(),
            text: "Hi there!".into(),
            duration_ms: 800.0,
            tokens: 15,
            tokens_per_second: 18.75,
            provider: Some("pool:kitchen".into()),
            model: Some("llama3.2".into()),
            usage: Some(TokenUsage {
                input_tokens: 42,
                output_tokens: 15,
                estimated: true,
                pricing: Pricing::Priced,
                cost: Some(0.000_015),
                currency: Some("USD".into()),
            }),
            session_usage: None,
        }
        .into(),
        LlmError {
            turn_id: turn(),
            code: "timeout".into(),
            message: "no answer in 30 s".into(),
            level: Level::Error,
        }
        .into(),
        TtsStart {
            turn_id: turn(),
            text: "Hi there!".into(),
            voice: "en-us".into(),
            engine: "espeak".into(),
        }
        .into(),
        TtsProgress {
            turn_id: turn(),
            sentence_index: 0,
            text: "Hi there!".into(),
        }
        .into(),
        TtsPaused { turn_id: turn() }.into(),
        TtsResumed {
            turn_id: turn(),
            paused_ms: 840.0,
            reason: "own_voice".into(),
            heard: Some("on the smooth left".into()),
        }
        .into(),
        TtsResult {
            turn_id: turn(),
            duration_ms: 600.0,
            audio_ms: 1200.0,
            played: true,
        }
        .into(),
        TtsError {
            turn_id: turn(),
            code: "engine_failed".into(),
            message: "espeak-ng exited with 1".into(),
            level: Level::Warning,
        }
        .into(),
        TtsAudio {
            turn_id: turn(),
            index: 0,
            sample_rate: 22050,
            channels: 1,
            format: "pcm_s16le".into(),
            audio: "AAAA".into(),
            last: true,
        }
        .into(),
        IntentResult {
            turn_id: turn(),
            intent: "get_time".into(),
            confidence: 0.9,
            route: Route::Tool,
        }
        .into(),
        MemoryStore {
            turn_id: turn(),
            memory_id: "m-1".into(),
            content: "likes tea".into(),
            tags: vec!["preference".into()],
            importance: Some(0.7),
        }
        .into(),
        MemoryRetrieve {
            turn_id: turn(),
            query: "tea".into(),
            results: vec![MemoryItem {
                memory_id: "m-1".into(),
                content: "likes tea".into(),
                tags: vec![],
                score: Some(0.8),
                created_at: Some(1713900000.0),
            }],
            duration_ms: 3.5,
        }
        .into(),
        MemoryError {
            turn_id: None,
            code: "storage_failed".into(),
            message: "disk full".into(),
            level: Level::Critical,
        }
        .into(),
        ToolCall {
            turn_id: turn(),
            call_id: "k-1".into(),
            tool: "clock".into(),
            arguments: json!({"tz": "UTC"}),
        }
        .into(),
        ToolProgress {
            turn_id: turn(),
            call_id: "k-1".into(),
            tool: "run_command".into(),
            stream: "stdout".into(),
            text: "test result: ok\n".into(),
        }
        .into(),
        ToolResult {
            turn_id: turn(),
            call_id: "k-1".into(),
            tool: "clock".into(),
            result: json!("12:00"),
            duration_ms: 1.0,
        }
        .into(),
        ToolError {
            turn_id: turn(),
            call_id: "k-2".into(),
            tool: "write_file".into(),
            code: "needs_confirmation".into(),
            message: "the tool `write_file` needs the user's confirmation".into(),
            level: Level::Warning,
            preview: Some(ToolPreview {
                summary: "write a.txt (+1 -0)".into(),
                diff: Some("--- a/a.txt\n+++ b/a.txt\n@@ -0,0 +1 @@\n+hi\n".into()),
            }),
        }
        .into(),
        McpStatus {
            server: "time".into(),
            state: "ready".into(),
            transport: "stdio".into(),
            tools: vec!["time__get_current_time".into()],
            restarts: 0,
            reason: Some("connected".into()),
        }
        .into(),
        ConversationStart {
            conversation_id: "v-1".into(),
            client_id: Some("c-9".into()),
        }
        .into(),
        ConversationTurn {
            conversation_id: "v-1".into(),
            turn_id: "t-1".into(),
            index: 0,
            user_text: "what time is it".into(),
            source: "text".into(),
        }
        .into(),
        ConversationEnd {
            conversation_id: "v-1".into(),
            turns: 3,
            duration_s: 95.0,
            reason: Some("idle_timeout".into()),
        }
        .into(),
        ConversationMessage {
            turn_id: turn(),
            message_id: "msg-1".into(),
            role: Role::Assistant,
            content: "It is noon.".into(),
            interrupted: Some(true),
            cut: Some(" And then some.".into()),
        }
        .into(),
        Alarm {
            timer_id: "timer-1".into(),
            label: Some("tea".into()),
            text: "Your 5 minute timer for tea is done.".into(),
            ringing: true,
            reason: None,
        }
        .into(),
        ModeChange {
            mode: Mode::Speaking,
            previous: Some(Mode::Thinking),
        }
        .into(),
        EmotionChange {
            emotion: "happy".into(),
            previous: Some("neutral".into()),
            intensity: Some(0.4),
        }
        .into(),
    ]
}

#[test]
fn samples_cover_every_event_type_in_order() {
    let types: Vec<EventType> = samples().iter().map(EventData::event_type).collect();
    assert_eq!(types, EventType::ALL);
}

#[test]
fn serde_names_match_event_type_names() {
    for event in samples() {
        let value = serde_json::to_value(&event).expect("serializable");
        assert_eq!(value["type"], event.event_type().as_str());
        assert!(value["data"].is_object(), "{}", event.event_type());
    }
}

#[test]
fn every_variant_round_trips_through_envelope_and_raw_envelope() {
    for (seq, event) in (1u64..).zip(samples()) {
        let event_type = event.event_type();
        let envelope = Envelope::new(seq, 1713943123.771, "cli-01", event.clone());
        let text = serde_json::to_string(&envelope).expect("serializable");

        let back: Envelope = serde_json::from_str(&text).expect("typed envelope");
        assert_eq!(back, envelope, "{event_type}");

        let raw: RawEnvelope = serde_json::from_str(&text).expect("raw envelope");
        assert_eq!(raw.event_type, event_type.as_str());
        assert_eq!(raw.known_type(), Some(event_type));
        assert_eq!(raw.data, event.data_value().expect("serializable"));
        let decoded = raw.decode().expect("known type").expect("valid data");
        assert_eq!(decoded, event, "{event_type}");
        assert_eq!(raw.to_envelope().expect("known").expect("valid"), envelope);
        assert_eq!(envelope.to_raw().expect("serializable"), raw);

        let data: EventData = serde_json::from_value(serde_json::to_value(&event).expect("ser"))
            .expect("adjacently tagged");
        assert_eq!(data, event);
    }
}

#[test]
fn envelope_field_order_matches_the_spec() {
    let envelope = Envelope::new(
        143,
        1713943123.771,
        "cli-01",
        SttResult {
            turn_id: None,
            text: "Hello world".into(),
            confidence: 0.95,
            duration_ms: 1500.0,
            language: "en".into(),
        },
    );
    assert_eq!(
        serde_json::to_string(&envelope).expect("serializable"),
        r#"{"version":"1.0","seq":143,"timestamp":1713943123.771,"type":"stt_result","session_id":"cli-01","data":{"text":"Hello world","confidence":0.95,"duration_ms":1500.0,"language":"en"}}"#
    );
}

#[test]
fn payload_constants_match_variants() {
    assert_eq!(SttResult::TYPE, EventType::SttResult);
    assert_eq!(ModeChange::TYPE, EventType::ModeChange);
    assert_eq!(CommandError::TYPE, EventType::CommandError);
    assert_eq!(EmotionChange::TYPE, EventType::EmotionChange);
}

#[test]
fn command_ids_are_null_not_absent() {
    let result = serde_json::to_value(CommandResult {
        id: None,
        ok: true,
        data: json!({}),
    })
    .expect("ser");
    assert_eq!(result, json!({"id": null, "ok": true, "data": {}}));
    let error = serde_json::to_value(CommandError {
        id: None,
        code: ErrorCode::BadJson,
        message: "x".into(),
    })
    .expect("ser");
    assert_eq!(
        error,
        json!({"id": null, "code": "bad_json", "message": "x"})
    );
}

#[test]
fn optional_fields_are_left_out_when_none() {
    let value = serde_json::to_value(ModeChange {
        mode: Mode::Idle,
        previous: None,
    })
    .expect("ser");
    assert_eq!(value, json!({"mode": "idle"}));
    let value = serde_json::to_value(LatencyTrace {
        turn_id: "t".into(),
        stt_ms: None,
        endpoint_ms: None,
        stt_wait_ms: None,
        intent_ms: None,
        llm_ttft_ms: None,
        llm_ms: None,
        tts_first_audio_ms: None,
        tts_ms: None,
        total_ms: 5.0,
        kernel_ms: None,
    })
    .expect("ser");
    assert_eq!(value, json!({"turn_id": "t", "total_ms": 5.0}));
}

#[test]
fn unknown_fields_are_ignored() {
    let text = r#"{"version":"1.3","seq":1,"timestamp":1.0,"type":"mode_change","session_id":"system",
        "data":{"mode":"idle","future_field":[1,2]},"future_top_level":true}"#;
    let envelope: Envelope = serde_json::from_str(text).expect("tolerant");
    assert_eq!(
        envelope.event,
        EventData::ModeChange(ModeChange {
            mode: Mode::Idle,
            previous: None
        })
    );
}

#[test]
fn unknown_types_are_skippable_with_raw_envelope() {
    let text = r#"{"version":"1.4","seq":9,"timestamp":1.0,"type":"hologram_frame","session_id":"system","data":{"x":1}}"#;
    assert!(serde_json::from_str::<Envelope>(text).is_err());
    let raw: RawEnvelope = serde_json::from_str(text).expect("tolerant");
    assert_eq!(raw.known_type(), None);
    assert!(raw.decode().is_none());
    assert!(raw.to_envelope().is_none());
}

#[test]
fn known_type_with_bad_data_is_an_error() {
    let text = r#"{"version":"1.0","seq":9,"timestamp":1.0,"type":"mode_change","session_id":"system","data":{"mode":"dancing"}}"#;
    let raw: RawEnvelope = serde_json::from_str(text).expect("raw");
    let error = raw.decode().expect("known type").expect_err("bad mode");
    assert!(error.to_string().contains("dancing"), "{error}");
}

#[test]
fn replayed_events_decode() {
    let Some(EventData::Replay(replay)) = samples()
        .into_iter()
        .find(|e| e.event_type() == EventType::Replay)
    else {
        panic!("no replay sample");
    };
    let inner = replay.events[0].decode().expect("known").expect("valid");
    assert_eq!(inner.event_type(), EventType::SttResult);
}

#[test]
fn retention_classes_follow_the_design() {
    use EventType::*;
    for t in [Replay, Config, CommandResult, CommandError] {
        assert_eq!(t.retention(), Retention::Direct, "{t}");
    }
    for t in [
        LlmToken,
        SttInterim,
        TtsAudio,
        TtsProgress,
        DiagnosticTick,
        ToolProgress,
    ] {
        assert_eq!(t.retention(), Retention::Transient, "{t}");
    }
    for t in [SystemMetrics, ModeChange, SystemInfo] {
        assert_eq!(t.retention(), Retention::LatestOnly, "{t}");
    }
    for t in [
        SttResult,
        LlmResult,
        ComponentStatus,
        ConversationMessage,
        SystemError,
    ] {
        assert_eq!(t.retention(), Retention::Important, "{t}");
    }
}

#[test]
fn closed_enums_use_snake_case() {
    for level in Level::ALL {
        assert_eq!(
            serde_json::to_value(level).expect("ser"),
            json!(level.as_str())
        );
    }
    for mode in Mode::ALL {
        assert_eq!(
            serde_json::to_value(mode).expect("ser"),
            json!(mode.as_str())
        );
    }
    for state in ComponentState::ALL {
        assert_eq!(
            serde_json::to_value(state).expect("ser"),
            json!(state.as_str())
        );
    }
    for state in ConnectionState::ALL {
        assert_eq!(
            serde_json::to_value(state).expect("ser"),
            json!(state.as_str())
        );
    }
    for route in Route::ALL {
        assert_eq!(
            serde_json::to_value(route).expect("ser"),
            json!(route.as_str())
        );
    }
    for mode in SttMode::ALL {
        assert_eq!(
            serde_json::to_value(mode).expect("ser"),
            json!(mode.as_str())
        );
    }
    for source in AudioSource::ALL {
        assert_eq!(
            serde_json::to_value(source).expect("ser"),
            json!(source.as_str())
        );
    }
    for role in Role::ALL {
        assert_eq!(
            serde_json::to_value(role).expect("ser"),
            json!(role.as_str())
        );
    }
    assert!(Level::Debug < Level::Critical);
    assert_eq!(
        serde_json::to_value(SttMode::PushToTalk).expect("ser"),
        Value::from("push_to_talk")
    );
}

#[test]
fn schema_lists_every_type() {
    let schema = schema_json();
    for t in EventType::ALL {
        assert!(schema["events"][t.as_str()].is_object(), "{t}");
    }
    for t in CommandType::ALL {
        assert!(schema["commands"][t.as_str()].is_object(), "{t}");
    }
    assert!(schema["envelope"]["properties"]["type"].is_object());
}

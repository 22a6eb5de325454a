//! The kernel in-process: the real hub, supervised actors and espeak-ng speech, with a
//! scripted LLM provider standing in for a model (written for these tests; the real
//! providers have their own tests). Events are read from the real hub.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use coda_actors::components::ComponentRegistry;
use coda_actors::hub::{record_events, EventHub, HubHandle, HubSettings, TypeMask};
use coda_actors::kernel::{Kernel, KernelSettings, Rooms};
use coda_actors::llm::{
    ChatRequest, ChatStream, Health, LlmError, LlmProvider, ModelInfo, StreamChunk,
};
use coda_actors::memory::{MemoryActor, MemoryEngine, MemoryFailure, MemorySettings, Search};
use coda_actors::orchestrator::{Interrupt, TextTurn, TurnSource};
use coda_actors::store::{SledStore, Storage};
use coda_actors::supervise::{InjectFault, RestartBudget, Supervision};
use coda_actors::tools::builtin::timer::TimerService;
use coda_actors::tools::{
    register_builtins, BuiltinDeps, Call, Permission, RegistrySettings, ToolFailure, ToolRegistry,
    ToolsActor, BUILTIN_TOOLS,
};
use coda_actors::tts::espeak::{EspeakConfig, EspeakEngine};
use coda_protocol::RawEnvelope;

/// Streams a fixed answer word by word with a delay per token, and records requests.
#[derive(Debug)]
struct Scripted {
    answer: String,
    delay: Duration,
    requests: Mutex<Vec<ChatRequest>>,
}

#[async_trait::async_trait]
impl LlmProvider for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    fn default_model(&self) -> String {
        "script-1".into()
    }
    async fn chat_stream(&self, req: ChatRequest) -> Result<ChatStream, LlmError> {
        self.requests.lock().unwrap().push(req);
        let words: Vec<String> = self
            .answer
            .split_inclusive(' ')
            .map(str::to_string)
            .collect();
        let delay = self.delay;
        let s = async_stream(words, delay);
        Ok(Box::pin(s))
    }
    async fn list_models(&self) -> Result<Vec<ModelInfo>, LlmError> {
        Ok(vec![])
    }
    async fn health(&self) -> Result<Health, LlmError> {
        Ok(Health {
            ok: true,
            latency_ms: 0.0,
            detail: "scripted".into(),
        })
    }
}

fn async_stream(
    words: Vec<String>,
    delay: Duration,
) -> impl futures_util::Stream<Item = Result<StreamChunk, LlmError>> + Send {
    futures_util::stream::unfold(
        (words.into_iter(), false),
        move |(mut it, done)| async move {
            if done {
                return None;
            }
            tokio::time::sleep(delay).await;
            match it.next() {
                Some(w) => Some((Ok(StreamChunk::Token(w)), (it, false))),
                None => Some((
                    Ok(StreamChunk::Done {
                        finish_reason: coda_actors::llm::FinishReason::Stop,
                        usage: None,
                    }),
                    (it, true),
                )),
            }
        },
    )
}

/// Collects every event the hub publishes.
struct Rig {
    kernel: Kernel,
    events: Arc<Mutex<Vec<RawEnvelope>>>,
    provider: Arc<Scripted>,
    _hub: HubHandle,
    _store: tempfile::TempDir,
}

/// Memory on a real sled store and Tools with the built-ins, under the kernel's budget
/// (as `coda serve` starts them).
fn rooms(
    hub: &HubHandle,
    components: &ComponentRegistry,
    budget: RestartBudget,
    dir: &std::path::Path,
) -> Rooms {
    let sup = |name| Supervision::new(name, budget, hub.clone(), components.clone());
    let storage: Arc<dyn Storage> = Arc::new(SledStore::open(&dir.join("store")).expect("store"));
    let engine = MemoryEngine::open(storage, MemorySettings::default()).expect("engine");
    let memory = MemoryActor::new(Arc::new(engine), Some(hub.clone()))
        .expect("memory")
        .supervised(sup("memory"));
    let memory = Supervisor::start(move |_| memory);
    let mut registry = ToolRegistry::new(RegistrySettings::default());
    let timers = TimerService::new(Some(hub.clone()), None).start();
    register_builtins(
        &mut registry,
        BuiltinDeps {
            memory: Some(memory.clone()),
            components: Some(components.clone()),
            timers: Some(timers.clone()),
            ..BuiltinDeps::default()
        },
    )
    .expect("builtins");
    let safe: BTreeMap<String, Permission> = BUILTIN_TOOLS
        .iter()
        .map(|n| (n.to_string(), Permission::Safe))
        .collect();
    registry.set_permissions(&safe).expect("permissions");
    let tools = ToolsActor::new(registry, Some(hub.clone())).supervised(sup("tools"));
    let tools = Supervisor::start(move |_| tools);
    Rooms {
        memory: Some(memory),
        tools: Some(tools),
        matcher: None,
        device_audio: None,
        speech: None,
        timers: Some(timers),
    }
}

async fn rig(answer: &str, delay_ms: u64, budget: RestartBudget) -> Rig {
    let hub = EventHub::start_hub(HubSettings::default());
    let events = record_events(&hub, 1, TypeMask::ALL);
    let provider = Arc::new(Scripted {
        answer: answer.into(),
        delay: Duration::from_millis(delay_ms),
        requests: Mutex::new(Vec::new()),
    });
    let engine = Arc::new(EspeakEngine::new(EspeakConfig {
        binary: "espeak-ng".into(),
        voice: "en-us".into(),
        rate: 175,
    }));
    let store = tempfile::tempdir().expect("tempdir");
    let components = ComponentRegistry::new();
    let rooms = rooms(&hub, &components, budget, store.path());
    let kernel = Kernel::start(
        hub.clone(),
        components,
        KernelSettings {
            budget,
            // Speech-to-text's model is not loaded: these tests are about text turns and
            // restarts, and its state must not depend on what the machine has installed.
            stt: coda_actors::stt::SttSettings {
                preload: false,
                ..Default::default()
            },
            ..Default::default()
        },
        Ok(provider.clone()),
        engine,
        rooms,
    );
    Rig {
        kernel,
        events,
        provider,
        _hub: hub,
        _store: store,
    }
}

impl Rig {
    async fn wait_for(
        &self,
        what: &str,
        pred: impl Fn(&[RawEnvelope]) -> bool,
    ) -> Vec<RawEnvelope> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            {
                let ev = self.events.lock().unwrap();
                if pred(&ev) {
                    return ev.clone();
                }
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn turn(&self, session: &str, text: &str) -> String {
        self.kernel
            .orchestrator
            .send(TextTurn {
                session_id: session.into(),
                text: text.into(),
                source: TurnSource::Text,
            })
            .await
            .expect("mailbox")
            .expect("turn started")
            .turn_id
    }

    async fn wait_turn_done(&self, turn: &str) -> Vec<RawEnvelope> {
        let t = turn.to_string();
        self.wait_for(&format!("latency_trace of {turn}"), move |ev| {
            ev.iter()
                .any(|e| e.event_type == "latency_trace" && e.data["turn_id"] == t.as_str())
        })
        .await
    }
}

fn of_turn<'a>(ev: &'a [RawEnvelope], turn: &str) -> Vec<&'a RawEnvelope> {
    ev.iter()
        .filter(|e| e.data.get("turn_id").and_then(|t| t.as_str()) == Some(turn))
        .collect()
}

fn types(ev: &[&RawEnvelope]) -> Vec<String> {
    ev.iter().map(|e| e.event_type.clone()).collect()
}

fn pos(types: &[String], t: &str) -> usize {
    types
        .iter()
        .position(|x| x == t)
        .unwrap_or_else(|| panic!("no {t} in {types:?}"))
}

#[actix_rt::test]
async fn a_text_turn_yields_the_whole_sequence_in_order() {
    let rig = rig(
        "The sky is blue. It scatters light. That is all.",
        5,
        RestartBudget::default(),
    )
    .await;
    let turn = rig.turn("s1", "why is the sky blue").await;
    let ev = rig.wait_turn_done(&turn).await;
    let mine = of_turn(&ev, &turn);
    let t = types(&mine);
    // Every stage, in order, under one turn id.
    let order = [
        "conversation_turn",
        "intent_result",
        "llm_start",
        "llm_token",
        "tts_start",
        "llm_result",
        "tts_result",
        "latency_trace",
    ];
    let mut last = 0;
    for o in order {
        let p = pos(&t, o);
        assert!(p >= last, "{o} out of order in {t:?}");
        last = p;
    }
    // Speech started on the first sentence, before generation finished.
    assert!(pos(&t, "tts_start") < pos(&t, "llm_result"));
    assert_eq!(t.iter().filter(|x| *x == "tts_progress").count(), 3);
    // Both messages, and the modes idle → thinking → speaking → idle for this session.
    let msgs: Vec<_> = mine
        .iter()
        .filter(|e| e.event_type == "conversation_message")
        .collect();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].data["role"], "user");
    assert_eq!(
        msgs[1].data["content"],
        "The sky is blue. It scatters light. That is all."
    );
    let modes: Vec<String> = ev
        .iter()
        .filter(|e| e.event_type == "mode_change" && e.session_id == "s1")
        .map(|e| e.data["mode"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(modes, ["thinking", "speaking", "idle"]);
    let trace = mine
        .iter()
        .find(|e| e.event_type == "latency_trace")
        .unwrap();
    for k in [
        "intent_ms",
        "llm_ttft_ms",
        "llm_ms",
        "tts_first_audio_ms",
        "total_ms",
    ] {
        assert!(
            trace.data[k].as_f64().is_some_and(|v| v >= 0.0),
            "{k} in {}",
            trace.data
        );
    }
    // The seq of the stream is strictly increasing.
    assert!(ev.windows(2).all(|w| w[1].seq > w[0].seq));
}

#[actix_rt::test]
async fn interrupt_mid_generation_keeps_only_what_was_said() {
    let answer = "First sentence here. Second one follows. Third is long and slow to come out. Fourth never said.";
    let rig = rig(answer, 60, RestartBudget::default()).await;
    let turn = rig.turn("s1", "talk to me").await;
    // Wait until the first sentence has been spoken and the third is being generated,
    // then barge in.
    let t = turn.clone();
    rig.wait_for("first tts_progress and 8 tokens", move |ev| {
        ev.iter()
            .any(|e| e.event_type == "tts_progress" && e.data["turn_id"] == t.as_str())
            && ev
                .iter()
                .filter(|e| e.event_type == "llm_token" && e.data["turn_id"] == t.as_str())
                .count()
                >= 8
    })
    .await;
    let asked = Instant::now();
    let report = rig
        .kernel
        .orchestrator
        .send(Interrupt { session_id: None })
        .await
        .unwrap();
    let took = asked.elapsed();
    assert!(took < Duration::from_millis(100), "interrupt took {took:?}");
    assert_eq!(report.turns, vec![turn.clone()]);
    assert!(report.spoken[0].starts_with("First sentence here."));
    // Generated but never spoken: cut, and not in what was said.
    assert!(!report.cut[0].is_empty(), "{report:?}");
    assert!(!report.cut[0].contains("First sentence"), "{report:?}");
    assert!(!report.spoken[0].contains("Fourth"), "{report:?}");
    let ev = rig.wait_turn_done(&turn).await;
    let mine = of_turn(&ev, &turn);
    let cut_msg = mine
        .iter()
        .find(|e| e.event_type == "conversation_message" && e.data["role"] == "assistant")
        .expect("assistant message");
    assert_eq!(cut_msg.data["interrupted"], true);
    assert!(!cut_msg.data["content"].as_str().unwrap().contains("Fourth"));
    // No more tokens for the turn after the interrupt settled.
    let n = mine.iter().filter(|e| e.event_type == "llm_token").count();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = rig
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.event_type == "llm_token" && e.data["turn_id"] == turn.as_str())
        .count();
    assert_eq!(n, after, "generation went on after interrupt");
    // The next turn's context holds only what was spoken.
    let next = rig.turn("s1", "and then?").await;
    rig.wait_for("second llm request", |_| true).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while rig.provider.requests.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let req = rig.provider.requests.lock().unwrap()[1].clone();
    let said = req
        .messages
        .iter()
        .find(|m| m.role == coda_actors::llm::ChatRole::Assistant)
        .expect("assistant in context");
    assert!(said.content.starts_with("First sentence here."));
    assert!(!said.content.contains("Fourth"));
    rig.kernel
        .orchestrator
        .send(Interrupt {
            session_id: Some("s1".into()),
        })
        .await
        .unwrap();
    let _ = next;
}

#[actix_rt::test]
async fn two_sessions_at_once_stay_separate() {
    let rig = rig("Alpha answer. Done.", 10, RestartBudget::default()).await;
    let (a, b) = (
        rig.turn("sa", "question a").await,
        rig.turn("sb", "question b").await,
    );
    rig.wait_turn_done(&a).await;
    let ev = rig.wait_turn_done(&b).await;
    for (turn, session) in [(&a, "sa"), (&b, "sb")] {
        let mine = of_turn(&ev, turn);
        assert!(
            mine.iter().all(|e| e.session_id == session),
            "{turn} leaked across sessions"
        );
        assert!(types(&mine).contains(&"latency_trace".to_string()));
        assert_eq!(
            mine.iter()
                .filter(|e| e.event_type == "conversation_message")
                .count(),
            2
        );
    }
}

async fn inject(rig: &Rig, component: &str, fault: InjectFault) {
    match component {
        "orchestrator" => rig.kernel.orchestrator.do_send(fault),
        "intent_router" => rig.kernel.router.do_send(fault),
        "llm" => rig.kernel.llm.do_send(fault),
        "tts" => rig.kernel.tts.do_send(fault),
        "memory" => rig.kernel.memory.as_ref().expect("memory").do_send(fault),
        "tools" => rig.kernel.tools.as_ref().expect("tools").do_send(fault),
        "stt" => rig.kernel.stt.do_send(fault),
        _ => unreachable!(),
    }
}

fn statuses(ev: &[RawEnvelope], component: &str) -> Vec<String> {
    ev.iter()
        .filter(|e| e.event_type == "component_status" && e.data["component"] == component)
        .map(|e| e.data["state"].as_str().unwrap().to_string())
        .collect()
}

#[actix_rt::test]
async fn every_actor_restarts_after_a_panic_and_the_next_turn_succeeds() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let rig = rig("Fine. Thanks.", 1, RestartBudget::default()).await;
    for component in [
        "orchestrator",
        "intent_router",
        "llm",
        "tts",
        "stt",
        "memory",
        "tools",
    ] {
        for fault in [InjectFault::PanicInHandler, InjectFault::PanicInBlocking] {
            let before = statuses(&rig.events.lock().unwrap(), component).len();
            inject(&rig, component, fault).await;
            let c = component.to_string();
            let ev = rig
                .wait_for(&format!("{component} back to running"), move |ev| {
                    let s = statuses(ev, &c);
                    s.len() >= before + 2
                        && s[s.len() - 2] == "restarting"
                        && s[s.len() - 1] == "running"
                })
                .await;
            assert!(ev
                .iter()
                .any(|e| e.event_type == "system_error" && e.data["component"] == component));
            let turn = rig.turn("s1", "still there?").await;
            let ev = rig.wait_turn_done(&turn).await;
            let mine = of_turn(&ev, &turn);
            assert!(
                mine.iter().any(|e| e.event_type == "llm_result"),
                "turn after a {component} {fault:?} did not succeed: {:?}",
                types(&mine)
            );
        }
    }
    // The restarted rooms still do their own work: a tool turn, and memory answering.
    let turn = rig.turn("s1", "what time is it").await;
    let ev = rig.wait_turn_done(&turn).await;
    let mine = of_turn(&ev, &turn);
    assert!(
        mine.iter().any(|e| e.event_type == "tool_result"),
        "tool turn after restarts: {:?}",
        types(&mine)
    );
    let found = rig
        .kernel
        .memory
        .as_ref()
        .expect("memory")
        .send(search("still"))
        .await
        .expect("mailbox");
    assert!(found.is_ok(), "memory after restarts: {found:?}");
    std::panic::set_hook(prev);
}

fn search(query: &str) -> Search {
    Search {
        query: query.into(),
        limit: Some(5),
        session_id: None,
        turn_id: None,
    }
}

#[actix_rt::test]
async fn degraded_memory_and_tools_refuse_and_turns_still_answer() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let budget = RestartBudget {
        max_restarts: 1,
        period: Duration::from_secs(60),
    };
    let rig = rig("Answered without memory.", 1, budget).await;
    for _ in 0..2 {
        inject(&rig, "memory", InjectFault::PanicInBlocking).await;
        inject(&rig, "tools", InjectFault::PanicInHandler).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rig.wait_for("memory and tools degraded", |ev| {
        statuses(ev, "memory").last().map(String::as_str) == Some("degraded")
            && statuses(ev, "tools").last().map(String::as_str) == Some("degraded")
    })
    .await;
    let memory = rig.kernel.memory.as_ref().expect("memory");
    match memory.send(search("anything")).await.expect("mailbox") {
        Err(MemoryFailure::Unavailable(m)) => assert!(m.contains("degraded"), "{m}"),
        other => panic!("degraded memory answered {other:?}"),
    }
    let tools = rig.kernel.tools.as_ref().expect("tools");
    let call = Call {
        name: "clock".into(),
        arguments: serde_json::json!({}),
        session_id: None,
        turn_id: None,
        call_id: None,
        confirmed: false,
    };
    match tools.send(call).await.expect("mailbox") {
        Err(ToolFailure::Unavailable(m)) => assert!(m.contains("degraded"), "{m}"),
        other => panic!("degraded tools answered {other:?}"),
    }
    // The conversation goes on without them.
    let turn = rig.turn("s1", "hello again").await;
    let ev = rig.wait_turn_done(&turn).await;
    let mine = of_turn(&ev, &turn);
    assert!(
        mine.iter().any(|e| e.event_type == "llm_result"),
        "turn with degraded rooms: {:?}",
        types(&mine)
    );
    std::panic::set_hook(prev);
}

#[actix_rt::test]
async fn an_exhausted_budget_degrades_and_the_rest_keeps_serving() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let budget = RestartBudget {
        max_restarts: 2,
        period: Duration::from_secs(60),
    };
    let rig = rig("Still answering.", 1, budget).await;
    for _ in 0..3 {
        rig.kernel.tts.do_send(InjectFault::PanicInHandler);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rig.wait_for("tts degraded", |ev| {
        statuses(ev, "tts").last().map(String::as_str) == Some("degraded")
    })
    .await;
    // Speech is refused, the turn still answers in text.
    let turn = rig.turn("s1", "hello?").await;
    let ev = rig.wait_turn_done(&turn).await;
    let mine = of_turn(&ev, &turn);
    let t = types(&mine);
    assert!(t.contains(&"llm_result".to_string()));
    let err = mine
        .iter()
        .find(|e| e.event_type == "tts_error")
        .expect("tts_error");
    assert!(err.data["message"].as_str().unwrap().contains("degraded"));
    std::panic::set_hook(prev);
}

//! The orchestrator with fake engines: a router that always says "LLM", a model that
//! answers from a script (tokens, then done or a failure), and speech that records what
//! it is asked and answers as told. Each test drives one path through the phases and
//! checks what the hub and the engines saw.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;

use super::*;
use crate::components::ComponentRegistry;
use crate::hub::{record_events, EventHub, HubSettings, Recorded, TypeMask};
use crate::llm::actor::{CancelGeneration, Generate, LlmUpdate};
use crate::tts::{CancelTurn, FinishTurn, Hold, HoldTurn, Speak, TtsUpdate};

type Log = Arc<Mutex<Vec<String>>>;

struct Router;
impl Actor for Router {
    type Context = Context<Self>;
}
impl Handler<RouteText> for Router {
    type Result = MessageResult<RouteText>;
    fn handle(&mut self, _: RouteText, _: &mut Context<Self>) -> Self::Result {
        MessageResult(IntentDecision {
            intent: "llm.chat".into(),
            confidence: 1.0,
            decision: Decision::Llm,
            elapsed_ms: 0.1,
        })
    }
}

/// How the fake model answers.
#[derive(Clone)]
enum Script {
    /// These tokens, then done.
    Answer(Vec<&'static str>),
    /// These tokens, then a failure.
    FailAfter(Vec<&'static str>),
    /// Tokens and never an end (for interrupts).
    Hang(Vec<&'static str>),
}

struct Model {
    script: Script,
    log: Log,
}
impl Actor for Model {
    type Context = Context<Self>;
}
impl Handler<Generate> for Model {
    type Result = Result<(), LlmError>;
    fn handle(&mut self, g: Generate, _: &mut Context<Self>) -> Self::Result {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("generate {}", g.turn_id));
        let (tokens, end) = match &self.script {
            Script::Answer(t) => (t.clone(), Some(true)),
            Script::FailAfter(t) => (t.clone(), Some(false)),
            Script::Hang(t) => (t.clone(), None),
        };
        let mut text = String::new();
        for t in tokens {
            text.push_str(t);
            g.reply_to.do_send(LlmUpdate::Token {
                turn_id: g.turn_id.clone(),
                text: t.to_string(),
            });
        }
        match end {
            Some(true) => g.reply_to.do_send(LlmUpdate::Done {
                turn_id: g.turn_id,
                text,
                ttft_ms: Some(1.0),
                total_ms: 5.0,
                tool_calls: Vec::new(),
            }),
            Some(false) => g.reply_to.do_send(LlmUpdate::Failed {
                turn_id: g.turn_id,
                error: LlmError::Unavailable("the fake model gave up".into()),
            }),
            None => {}
        }
        Ok(())
    }
}
impl Handler<CancelGeneration> for Model {
    type Result = ();
    fn handle(&mut self, c: CancelGeneration, _: &mut Context<Self>) {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("cancel generation {}", c.turn_id));
    }
}

/// How the fake speech answers.
#[derive(Clone, Copy, PartialEq)]
enum Voice {
    /// Speaks every sentence and reports done when asked to finish.
    Speaks,
    /// Refuses every sentence.
    Refuses,
    /// Speaks every sentence on a device that has played 40 % of each so far.
    PlaysPart,
}

struct Speech {
    voice: Voice,
    log: Log,
    reply_to: Option<Recipient<TtsUpdate>>,
}
impl Actor for Speech {
    type Context = Context<Self>;
}
impl Handler<Speak> for Speech {
    type Result = Result<(), String>;
    fn handle(&mut self, s: Speak, _: &mut Context<Self>) -> Self::Result {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("speak {}", s.text));
        if self.voice == Voice::Refuses {
            return Err("the fake speech refuses".into());
        }
        if self.voice == Voice::PlaysPart {
            s.progress.record(1000, 400, true);
        }
        s.reply_to.do_send(TtsUpdate::Spoken {
            turn_id: s.turn_id,
            index: s.index,
            text: s.text,
            audio_ms: 100.0,
            synth_ms: 1.0,
        });
        self.reply_to = Some(s.reply_to);
        Ok(())
    }
}
impl Handler<FinishTurn> for Speech {
    type Result = ();
    fn handle(&mut self, f: FinishTurn, _: &mut Context<Self>) {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("finish {}", f.turn_id));
        if let Some(r) = &self.reply_to {
            r.do_send(TtsUpdate::Done {
                turn_id: f.turn_id,
                audio_ms: 100.0,
                duration_ms: 7.0,
            });
        }
    }
}
impl Handler<CancelTurn> for Speech {
    type Result = ();
    fn handle(&mut self, c: CancelTurn, _: &mut Context<Self>) {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("cancel speech {}", c.turn_id));
    }
}

impl Handler<HoldTurn> for Speech {
    type Result = ();
    fn handle(&mut self, h: HoldTurn, _: &mut Context<Self>) {
        let what = match h.hold {
            Hold::Pause => "hold".to_string(),
            Hold::Resume { reason, .. } => format!("go on ({reason}) with"),
        };
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{what} speech {}", h.turn_id));
    }
}

struct Rig {
    orchestrator: Addr<Orchestrator>,
    events: Recorded,
    log: Log,
}

fn rig(script: Script, voice: Voice) -> Rig {
    rig_with(script, voice, ConversationSettings::default())
}

fn rig_with(script: Script, voice: Voice, settings: ConversationSettings) -> Rig {
    let hub = EventHub::start_hub(HubSettings::default());
    let events = record_events(&hub, 1, TypeMask::ALL);
    let log: Log = Arc::default();
    let router = Router.start();
    let model = Model {
        script,
        log: log.clone(),
    }
    .start();
    let speech = Speech {
        voice,
        log: log.clone(),
        reply_to: None,
    }
    .start();
    let engines = Engines {
        route: router.recipient(),
        generate: model.clone().recipient(),
        cancel_generation: model.recipient(),
        speak: speech.clone().recipient(),
        finish_speech: speech.clone().recipient(),
        cancel_speech: speech.clone().recipient(),
        hold_speech: speech.recipient(),
    };
    let components = ComponentRegistry::new();
    let sup = Supervision::new("orchestrator", Default::default(), hub, components);
    let orchestrator = Orchestrator::new(sup, engines, settings).start();
    Rig {
        orchestrator,
        events,
        log,
    }
}

impl Rig {
    async fn turn(&self, text: &str) -> String {
        self.turn_in("s", text).await.expect("the turn starts")
    }

    async fn turn_in(&self, session: &str, text: &str) -> Result<String, TurnStartError> {
        self.orchestrator
            .send(TextTurn {
                session_id: session.into(),
                text: text.into(),
                source: TurnSource::Text,
            })
            .await
            .expect("the orchestrator runs")
            .map(|t| t.turn_id)
    }

    fn count(&self, event_type: &str) -> usize {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| e.event_type == event_type)
            .count()
    }

    /// The types of the turn's events once its `latency_trace` is out (or after 3 s).
    async fn finished(&self, turn: &str) -> Vec<String> {
        for _ in 0..300 {
            let done = self.types(turn).iter().any(|t| t == "latency_trace");
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.types(turn)
    }

    fn types(&self, turn: &str) -> Vec<String> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| e.data["turn_id"] == serde_json::json!(turn))
            .map(|e| e.event_type.clone())
            .collect()
    }

    /// Speech began in `session` (what Stt says when an utterance opens).
    async fn speech_starts(&self, session: &str) {
        self.listening(session, true).await;
    }

    /// A transcript of speech in `session`, as Stt hands it over.
    async fn transcript(&self, session: &str, text: &str) -> Result<TurnStarted, TurnStartError> {
        let now = std::time::Instant::now();
        self.orchestrator
            .send(VoiceTurn {
                session_id: session.into(),
                text: text.into(),
                turn_id: "t-v0001".into(),
                stt_ms: 1.0,
                speech_ended: now,
                utterance_ended: now,
                span: tracing::Span::none(),
            })
            .await
            .expect("the orchestrator runs")
    }

    /// The utterance in `session` held no speech (what Stt says for an empty transcript).
    async fn no_speech(&self, session: &str) {
        self.listening(session, false).await;
    }

    async fn listening(&self, session: &str, on: bool) {
        self.orchestrator
            .send(Listening {
                session_id: session.into(),
                on,
            })
            .await
            .expect("the orchestrator runs");
    }

    /// The modes `session` went through, in order, once the last is `mode` (or after 1 s).
    async fn modes_until(&self, session: &str, mode: &str) -> Vec<String> {
        let mut modes = Vec::new();
        for _ in 0..100 {
            modes = self
                .events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|e| e.event_type == "mode_change" && e.session_id == session)
                .filter_map(|e| e.data["mode"].as_str().map(str::to_string))
                .collect();
            if modes.last().is_some_and(|m| m == mode) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        modes
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn trace(&self, turn: &str) -> serde_json::Value {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|e| {
                e.event_type == "latency_trace" && e.data["turn_id"] == serde_json::json!(turn)
            })
            .map(|e| e.data.clone())
            .unwrap_or_default()
    }
}

#[actix_rt::test]
async fn an_answer_is_spoken_then_the_turn_ends_after_its_speech() {
    let r = rig(
        Script::Answer(vec!["Paris is ", "the capital. ", "It is big."]),
        Voice::Speaks,
    );
    let turn = r.turn("what is the capital of france").await;
    let types = r.finished(&turn).await;
    assert!(types.contains(&"latency_trace".to_string()), "{types:?}");
    let log = r.log();
    let pos = |what: &str| {
        log.iter()
            .position(|l| l.starts_with(what))
            .unwrap_or_else(|| panic!("no {what} in {log:?}"))
    };
    // Routing → answering (generate) → sentences to speech → draining (finish) → done.
    assert!(
        pos("generate") < pos("speak Paris is the capital."),
        "{log:?}"
    );
    assert!(pos("speak It is big.") < pos("finish"), "{log:?}");
    let trace = r.trace(&turn);
    assert_eq!(trace["llm_ms"], serde_json::json!(5.0), "{trace}");
    assert_eq!(trace["tts_ms"], serde_json::json!(7.0), "{trace}");
    assert!(trace["tts_first_audio_ms"].as_f64().is_some(), "{trace}");
    assert!(trace["intent_ms"].as_f64().is_some(), "{trace}");
    // The assistant's message went out once, before the trace.
    let messages = types
        .iter()
        .filter(|t| *t == "conversation_message")
        .count();
    assert_eq!(messages, 2, "user and assistant: {types:?}");
}

#[actix_rt::test]
async fn a_model_failure_before_any_speech_ends_the_turn_at_once() {
    let r = rig(Script::FailAfter(vec![]), Voice::Speaks);
    let turn = r.turn("hello").await;
    let types = r.finished(&turn).await;
    assert!(types.contains(&"latency_trace".to_string()), "{types:?}");
    assert!(
        !r.log().iter().any(|l| l.starts_with("finish")),
        "nothing to drain: {:?}",
        r.log()
    );
}

#[actix_rt::test]
async fn a_model_failure_after_a_sentence_lets_that_sentence_finish() {
    let r = rig(
        Script::FailAfter(vec!["First part. ", "and then"]),
        Voice::Speaks,
    );
    let turn = r.turn("hello").await;
    let types = r.finished(&turn).await;
    assert!(types.contains(&"latency_trace".to_string()), "{types:?}");
    let log = r.log();
    assert!(log.iter().any(|l| l == "speak First part."), "{log:?}");
    assert!(log.iter().any(|l| l.starts_with("finish")), "{log:?}");
}

#[actix_rt::test]
async fn refused_speech_leaves_the_text_answer_and_the_turn_ends() {
    let r = rig(
        Script::Answer(vec!["One. ", "Two. ", "Three."]),
        Voice::Refuses,
    );
    let turn = r.turn("count").await;
    let types = r.finished(&turn).await;
    assert!(types.contains(&"latency_trace".to_string()), "{types:?}");
    let errors = types.iter().filter(|t| *t == "tts_error").count();
    assert_eq!(errors, 1, "said once: {types:?}");
    // The refusals arrive after the whole answer was queued and speech was asked to
    // finish (it never reports done): the failure itself ends the drain.
    let log = r.log();
    assert!(log.iter().any(|l| l.starts_with("finish")), "{log:?}");
    let trace = r.trace(&turn);
    assert!(
        trace["tts_first_audio_ms"].is_null(),
        "nothing was heard: {trace}"
    );
}

#[actix_rt::test]
async fn an_interrupt_cancels_generation_and_speech_and_keeps_what_was_said() {
    let r = rig(
        Script::Hang(vec!["Said already. ", "never said"]),
        Voice::Speaks,
    );
    let turn = r.turn("talk").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = r
        .orchestrator
        .send(Interrupt {
            session_id: Some("s".into()),
        })
        .await
        .expect("runs");
    assert_eq!(report.turns, vec![turn.clone()]);
    assert_eq!(report.spoken, vec!["Said already.".to_string()]);
    assert_eq!(report.cut, vec!["never said".to_string()]);
    let log = r.log();
    assert!(
        log.contains(&format!("cancel generation {turn}")),
        "{log:?}"
    );
    assert!(log.contains(&format!("cancel speech {turn}")), "{log:?}");
    let types = r.finished(&turn).await;
    assert!(types.contains(&"latency_trace".to_string()), "{types:?}");
    // A second interrupt finds nothing.
    let again = r
        .orchestrator
        .send(Interrupt {
            session_id: Some("s".into()),
        })
        .await
        .expect("runs");
    assert!(again.turns.is_empty());
}

#[actix_rt::test]
async fn turns_in_flight_are_capped_but_a_session_may_replace_its_own() {
    let r = rig_with(
        Script::Hang(vec!["Thinking. "]),
        Voice::Speaks,
        ConversationSettings {
            max_turns_in_flight: 2,
            ..Default::default()
        },
    );
    r.turn_in("a", "one").await.expect("first");
    r.turn_in("b", "two").await.expect("second");
    let e = r.turn_in("c", "three").await.expect_err("over the cap");
    assert!(e.to_string().contains("max_turns_in_flight"), "{e}");
    // Barging in on its own turn is not a new one.
    r.turn_in("a", "again").await.expect("replaces a's turn");
}

#[actix_rt::test]
async fn the_least_recently_used_idle_conversation_is_forgotten() {
    let r = rig_with(
        Script::Answer(vec!["Fine."]),
        Voice::Speaks,
        ConversationSettings {
            max_sessions: 2,
            max_turns_in_flight: 2,
            ..Default::default()
        },
    );
    for s in ["a", "b"] {
        let t = r.turn_in(s, "hi").await.expect("starts");
        r.finished(&t).await;
    }
    let t = r.turn_in("a", "hi").await.expect("starts"); // a is now the more recent
    r.finished(&t).await;
    assert_eq!(r.count("conversation_start"), 2);
    let t = r.turn_in("c", "hi").await.expect("starts"); // forgets b
    r.finished(&t).await;
    let t = r.turn_in("a", "hi").await.expect("starts"); // a was kept
    r.finished(&t).await;
    assert_eq!(r.count("conversation_start"), 3);
    r.turn_in("b", "hi").await.expect("starts"); // b starts over
    assert_eq!(r.count("conversation_start"), 4);
}

#[test]
fn cut_part_is_the_unspoken_rest() {
    let spoken = vec!["One.".to_string(), "Two.".to_string()];
    assert_eq!(cut_part("One. Two. Three. Four.", &spoken), "Three. Four.");
    assert_eq!(cut_part("One.", &[]), "One.");
}

async fn speaking_rig(barge_in: bool) -> (Rig, String) {
    speaking_rig_with(barge_in, Voice::Speaks).await
}

async fn speaking_rig_with(barge_in: bool, voice: Voice) -> (Rig, String) {
    speaking_rig_settings(
        voice,
        ConversationSettings {
            barge_in,
            ..Default::default()
        },
    )
    .await
}

async fn speaking_rig_settings(voice: Voice, settings: ConversationSettings) -> (Rig, String) {
    let r = rig_with(
        Script::Hang(vec!["The first sentence is spoken. ", "and more"]),
        voice,
        settings,
    );
    let turn = r.turn("tell me a story").await;
    for _ in 0..300 {
        if r.log().iter().any(|l| l.starts_with("speak ")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (r, turn)
}

impl Rig {
    /// The interrupted assistant message, once published.
    async fn interrupted_message(&self) -> serde_json::Value {
        for _ in 0..100 {
            let found = self
                .events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|e| e.event_type == "conversation_message" && e.data["interrupted"] == true)
                .map(|e| e.data.clone());
            if let Some(m) = found {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no interrupted assistant message");
    }
}

/// Speech over the answer pauses its playback and nothing else; its transcript, the next
/// turn, interrupts it.
#[actix_rt::test]
async fn speech_over_the_answer_pauses_it_and_its_transcript_interrupts_it() {
    let (r, turn) = speaking_rig(true).await;
    r.speech_starts("s").await;
    let log = r.log();
    assert!(log.contains(&format!("hold speech {turn}")), "{log:?}");
    assert!(!log.iter().any(|l| l.starts_with("cancel")), "{log:?}");
    let modes = r.modes_until("s", "listening").await;
    assert_eq!(
        modes.last().map(String::as_str),
        Some("listening"),
        "{modes:?}"
    );

    let next = r.turn("stop, what time is it?").await;
    let log = r.log();
    assert!(log.contains(&format!("cancel speech {turn}")), "{log:?}");
    assert!(
        log.contains(&format!("cancel generation {turn}")),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.starts_with("go on")), "{log:?}");
    let cut = r.interrupted_message().await;
    assert_eq!(cut["content"], "The first sentence is spoken.", "{cut}");
    assert_ne!(next, turn);
}

/// What turns out not to be speech (no transcript) lets the answer go on: playback
/// resumes, mode speaking again, nothing cancelled, and the answer ends whole.
#[actix_rt::test]
async fn speech_over_the_answer_that_was_no_speech_lets_it_go_on() {
    let (r, turn) = speaking_rig(true).await;
    r.speech_starts("s").await;
    r.no_speech("s").await;
    let log = r.log();
    assert!(
        log.contains(&format!("go on (no_speech) with speech {turn}")),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.starts_with("cancel")), "{log:?}");
    let modes = r.modes_until("s", "speaking").await;
    assert!(
        modes.ends_with(&["listening".into(), "speaking".into()]),
        "{modes:?}"
    );
    // A second false start is held and released the same way.
    r.speech_starts("s").await;
    r.no_speech("s").await;
    let holds = r.log().iter().filter(|l| l.starts_with("hold")).count();
    assert_eq!(holds, 2);
    assert!(r.types(&turn).iter().all(|t| t != "latency_trace"));
    assert_eq!(
        r.count("conversation_message"),
        1,
        "only the user's message"
    );
}

/// An utterance over the answer that never ends lets it go on after `hold_max`; the guard
/// of an earlier pause of the same answer does not end a later one early.
#[actix_rt::test]
async fn a_pause_that_never_ends_goes_on_after_its_own_guard() {
    let (r, turn) = speaking_rig_settings(
        Voice::Speaks,
        ConversationSettings {
            hold_max: Duration::from_millis(1000),
            ..Default::default()
        },
    )
    .await;
    let timeouts = || {
        r.log()
            .iter()
            .filter(|l| l.starts_with("go on (timeout)"))
            .count()
    };
    r.speech_starts("s").await;
    r.no_speech("s").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The second pause's guard ends it at ~1.5 s; the first one's fires at ~1 s.
    r.speech_starts("s").await;
    tokio::time::sleep(Duration::from_millis(750)).await;
    assert_eq!(timeouts(), 0, "{:?}", r.log());
    assert_eq!(
        r.modes_until("s", "listening")
            .await
            .last()
            .map(String::as_str),
        Some("listening")
    );
    tokio::time::sleep(Duration::from_millis(750)).await;
    assert_eq!(timeouts(), 1, "{:?}", r.log());
    assert!(r
        .log()
        .contains(&format!("go on (timeout) with speech {turn}")));
    let modes = r.modes_until("s", "speaking").await;
    assert_eq!(
        modes.last().map(String::as_str),
        Some("speaking"),
        "{modes:?}"
    );
}

/// A transcript that is the answer's own words, garbled (echo cancellation let some of its
/// voice through), lets it go on; a question over it interrupts it.
#[actix_rt::test]
async fn the_answers_own_voice_heard_over_it_lets_it_go_on() {
    let (r, turn) = speaking_rig(true).await;
    r.speech_starts("s").await;
    let heard = r.transcript("s", "the first sentence is spoke").await;
    assert!(heard.is_err(), "{heard:?}");
    let log = r.log();
    assert!(
        log.contains(&format!("go on (own_voice) with speech {turn}")),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.starts_with("cancel")), "{log:?}");

    r.speech_starts("s").await;
    let next = r.transcript("s", "what time is it in Tokyo").await;
    assert_eq!(next.map(|t| t.turn_id), Ok("t-v0001".to_string()));
    assert!(r.log().contains(&format!("cancel speech {turn}")));
}

/// A client plays the audio: what was synthesised while the answer was held was never
/// heard, so it is cut, not kept as said.
#[actix_rt::test]
async fn sentences_made_while_the_answer_is_held_are_not_said() {
    let (r, turn) = speaking_rig(true).await;
    r.speech_starts("s").await;
    r.orchestrator
        .send(LlmUpdate::Token {
            turn_id: turn.clone(),
            text: " still. The third one. And".into(),
        })
        .await
        .expect("the orchestrator runs");
    for _ in 0..100 {
        if r.log().iter().any(|l| l.contains("The third one.")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    r.turn("stop").await;
    let m = r.interrupted_message().await;
    assert_eq!(m["content"], "The first sentence is spoken.", "{m}");
    assert!(
        m["cut"]
            .as_str()
            .is_some_and(|c| c.contains("The third one.")),
        "{m}"
    );
}

/// Played on a device, what counts as said is what the device played: 40 % of the
/// sentence's samples is its first two words, the rest is cut.
#[actix_rt::test]
async fn an_interrupted_answer_keeps_only_what_was_played() {
    let (r, _) = speaking_rig_with(true, Voice::PlaysPart).await;
    r.speech_starts("s").await;
    r.turn("stop").await;
    let m = r.interrupted_message().await;
    assert_eq!(m["content"], "The first", "{m}");
    assert!(
        m["cut"]
            .as_str()
            .is_some_and(|c| c.starts_with("sentence is spoken.")),
        "{m}"
    );
}

#[test]
fn the_words_heard_end_within_the_fraction_played() {
    let s = "The first sentence is spoken.";
    assert_eq!(words_up_to(s, 0.0), "");
    assert_eq!(words_up_to(s, 0.1), "");
    assert_eq!(words_up_to(s, 0.11), "The");
    assert_eq!(words_up_to(s, 0.4), "The first");
    assert_eq!(words_up_to(s, 0.99), "The first sentence is");
    assert_eq!(words_up_to(s, 1.0), s);
    assert_eq!(words_up_to("héllo wörld", 0.5), "héllo");
    assert_eq!(words_up_to("", 0.5), "");
}

#[actix_rt::test]
async fn without_barge_in_speech_waits_for_its_turn() {
    let (r, turn) = speaking_rig(false).await;
    r.speech_starts("s").await;
    let log = r.log();
    assert!(
        !log.iter()
            .any(|l| l.starts_with("cancel") || l.starts_with("hold")),
        "{log:?}"
    );
    assert!(r.types(&turn).iter().all(|t| t != "latency_trace"));
}

fn fired(session: &str) -> crate::tools::builtin::timer::TimerFired {
    crate::tools::builtin::timer::TimerFired {
        timer: crate::tools::builtin::timer::TimerInfo {
            timer_id: "timer-1".into(),
            label: Some("tea".into()),
            seconds: 2.0,
            due_at: 0.0,
            remaining_s: 0.0,
            session_id: Some(session.into()),
        },
        text: "Your 2 second timer for tea is done.".into(),
    }
}

impl Rig {
    fn alarms(&self) -> Vec<serde_json::Value> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| e.event_type == "alarm")
            .map(|e| {
                let mut d = e.data.clone();
                d["session"] = e.session_id.clone().into();
                d
            })
            .collect()
    }

    async fn alarm_stops(&self) -> serde_json::Value {
        for _ in 0..1000 {
            if let Some(a) = self.alarms().into_iter().find(|a| a["ringing"] == false) {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the alarm never stopped: {:?}", self.alarms());
    }

    fn rings(&self) -> usize {
        self.log()
            .iter()
            .filter(|l| l.as_str() == "speak Your 2 second timer for tea is done.")
            .count()
    }
}

/// A timer that goes off rings in its session: `alarm`, then its text spoken there, three
/// times, two seconds apart; then it has rung out.
#[actix_rt::test]
async fn an_alarm_rings_in_its_session_three_times_then_stops() {
    let r = rig(Script::Answer(vec!["ok"]), Voice::Speaks);
    r.orchestrator.send(fired("kitchen")).await.unwrap();
    for _ in 0..100 {
        if !r.alarms().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let a = r.alarms();
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["ringing"], true);
    assert_eq!(a[0]["session"], "kitchen");
    assert_eq!(a[0]["label"], "tea");
    let stopped = r.alarm_stops().await;
    assert_eq!(stopped["reason"], "rang_out", "{stopped}");
    assert_eq!(r.rings(), alarm::RINGS as usize, "{:?}", r.log());
    let log = r.log();
    let speaks: Vec<&String> = log.iter().filter(|l| l.starts_with("speak ")).collect();
    assert_eq!(speaks.len(), 3, "{log:?}");
}

/// Speech in the session (the wake word, an utterance) silences a ringing alarm at once,
/// and no later ring starts.
#[actix_rt::test]
async fn speech_silences_a_ringing_alarm() {
    let r = rig(Script::Answer(vec!["ok"]), Voice::Speaks);
    r.orchestrator.send(fired("s")).await.unwrap();
    r.speech_starts("s").await;
    let stopped = r.alarm_stops().await;
    assert_eq!(stopped["reason"], "stopped", "{stopped}");
    assert!(
        r.log()
            .contains(&"cancel speech timer-1-ring-1".to_string()),
        "{:?}",
        r.log()
    );
    tokio::time::sleep(alarm::RING_GAP + Duration::from_millis(300)).await;
    assert_eq!(r.rings(), 1, "{:?}", r.log());
}

/// An interrupt of the session, or a new input there, silences it too; another session's
/// alarm rings on.
#[actix_rt::test]
async fn an_interrupt_or_new_input_silences_only_its_sessions_alarm() {
    let r = rig(Script::Answer(vec!["ok"]), Voice::Speaks);
    r.orchestrator.send(fired("a")).await.unwrap();
    r.orchestrator.send(fired("b")).await.unwrap();
    r.orchestrator
        .send(Interrupt {
            session_id: Some("a".into()),
        })
        .await
        .unwrap();
    let stopped = r.alarm_stops().await;
    assert_eq!(stopped["session"], "a", "{stopped}");
    r.turn_in("b", "thanks").await.expect("starts");
    for _ in 0..100 {
        if r.alarms().iter().filter(|a| a["ringing"] == false).count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let off: Vec<_> = r
        .alarms()
        .into_iter()
        .filter(|a| a["ringing"] == false)
        .map(|a| a["session"].clone())
        .collect();
    assert_eq!(off, vec![serde_json::json!("a"), serde_json::json!("b")]);
}

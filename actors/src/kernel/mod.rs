//! The kernel: starts the subsystem actors under supervision and hands out their
//! addresses. Each actor runs under an actix `Supervisor` (restart on stop) with a
//! [`Supervision`] record (restart budget, `component_status`); a watchdog marks an actor
//! whose task died outright as `stopped` so callers get `unavailable` instead of silence.

mod handle;

pub use handle::{KernelHandle, KernelRequestError};

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use coda_protocol::{ComponentState, Level, SystemError, SYSTEM_SESSION};

use crate::components::ComponentRegistry;
use crate::hub::HubHandle;
use crate::intent::{IntentRouter, ToolMatcher};
use crate::llm::actor::{LlmActor, ProviderSlot};
use crate::orchestrator::{ConversationSettings, Engines, Orchestrator};
use crate::stt::{SttActor, SttSettings};
use crate::supervise::{RestartBudget, Supervision};
use crate::tts::{TtsActor, TtsEngine, TtsOutput};

/// Kernel settings.
#[derive(Debug, Clone, Default)]
pub struct KernelSettings {
    /// Restarts per component before it is degraded.
    pub budget: RestartBudget,
    /// Conversation behaviour.
    pub conversation: ConversationSettings,
    /// Speech-to-text.
    pub stt: SttSettings,
    /// Playback and `tts_audio` (default: no playback).
    pub tts_output: TtsOutput,
    /// The input device (AudioCapture); `None`: no capture actor.
    pub audio: Option<crate::audio::AudioSettings>,
    /// The wake word (WakeWord); `None`: wake mode is refused.
    pub wake: Option<crate::wake::WakeSettings>,
    /// Prices per model, for the cost in `llm_result` and `/metrics`.
    pub prices: crate::llm::usage::Prices,
}

/// The rooms started outside the kernel that it uses when present.
#[derive(Clone, Default)]
pub struct Rooms {
    /// Conversations and context.
    pub memory: Option<Addr<crate::memory::MemoryActor>>,
    /// Tool calls (and, by default, tool intents by rule).
    pub tools: Option<Addr<crate::tools::ToolsActor>>,
    /// A tool-intent matcher other than the tools room's rules.
    pub matcher: Option<ToolMatcher>,
    /// The input-device speech producer (AudioCapture), when this build has one:
    /// `stt_start`/`stt_stop` with `source: "device"` go here. The one wiring point for it.
    pub device_audio: Option<Recipient<crate::voice::DeviceListen>>,
    /// Where AudioCapture sends speech (the Stt actor); `None`: logged and dropped.
    pub speech: Option<Recipient<crate::voice::SpeechAudio>>,
    /// The timers: those that go off ring through the Orchestrator.
    pub timers: Option<Addr<crate::tools::builtin::timer::TimerService>>,
}

/// The running kernel's actors.
#[derive(Clone)]
pub struct Kernel {
    /// The turn state machine.
    pub orchestrator: Addr<Orchestrator>,
    /// Intent routing.
    pub router: Addr<IntentRouter>,
    /// The language model.
    pub llm: Addr<LlmActor>,
    /// Speech.
    pub tts: Addr<TtsActor>,
    /// Conversations and long-term memory, when running.
    pub memory: Option<Addr<crate::memory::MemoryActor>>,
    /// Tools, when running.
    pub tools: Option<Addr<crate::tools::ToolsActor>>,
    /// Speech-to-text: give `stt.clone().recipient()` to speech producers.
    pub stt: Addr<SttActor>,
    /// The input-device speech producer, when wired (see [`Rooms::device_audio`]).
    pub device_audio: Option<Recipient<crate::voice::DeviceListen>>,
    /// The input device, when `KernelSettings::audio` asked for it.
    pub audio: Option<Addr<crate::audio::AudioCapture>>,
    /// The wake word, when `KernelSettings::wake` asked for it.
    pub wake: Option<Addr<crate::wake::WakeWord>>,
    /// Wake word detectors and follow-up windows, shared with the speech producers.
    pub hands: crate::voice::Hands,
}

impl Kernel {
    /// Starts every actor on the current arbiter.
    pub fn start(
        hub: HubHandle,
        components: ComponentRegistry,
        settings: KernelSettings,
        provider: ProviderSlot,
        tts_engine: Arc<dyn TtsEngine>,
        rooms: Rooms,
    ) -> Kernel {
        let tools = rooms.matcher.clone().or_else(|| {
            rooms.tools.as_ref().map(|_| {
                let m: ToolMatcher = Arc::new(|text: &str| {
                    crate::tools::match_intent(text)
                        .map(|m| (m.tool.to_string(), m.arguments, m.confidence))
                });
                m
            })
        });
        let sup = |name| Supervision::starting(name, settings.budget, &hub, &components);
        if let Err(e) = &provider {
            tracing::warn!(error = %e, "no language model: turns that need one will fail with llm_error");
        }
        let router_sup = sup("intent_router");
        let router = Supervisor::start(move |_| IntentRouter::new(router_sup, tools));
        let llm_sup = sup("llm");
        let prices = settings.prices.clone();
        let llm = Supervisor::start(move |_| LlmActor::new(llm_sup, provider).with_prices(prices));
        let tts_sup = sup("tts");
        let engine = tts_engine.clone();
        let tts_output = settings.tts_output.clone();
        let hands = crate::voice::Hands::default();
        let echo = hands.echo.clone();
        let tts = Supervisor::start(move |_| {
            TtsActor::new(tts_sup, engine)
                .with_output(tts_output.clone())
                .with_echo(echo.clone())
        });
        let wake = settings.wake.clone().map(|wake_settings| {
            let wake_sup = sup("wake_word");
            let (c, models) = (components.clone(), hands.wake.clone());
            Supervisor::start(move |_| {
                crate::wake::WakeWord::new(wake_sup, c, wake_settings.clone(), models.clone())
            })
        });
        let orch_sup = sup("orchestrator");
        let (r, l, t) = (router.clone(), llm.clone(), tts.clone());
        let conversation = settings.conversation.clone();
        let (memory, tools_addr) = (rooms.memory.clone(), rooms.tools.clone());
        let follow_ups = hands.follow_ups.clone();
        let orchestrator = Supervisor::start(move |_| {
            Orchestrator::new(orch_sup, Engines::of(&r, &l, &t), conversation)
                .with_memory(memory)
                .with_tools(tools_addr)
                .with_follow_ups(follow_ups)
        });
        if let Some(timers) = &rooms.timers {
            timers.do_send(crate::tools::builtin::timer::ConnectFired(
                orchestrator.clone().recipient(),
            ));
        }

        let stt_sup = sup("stt");
        let (o, stt_settings) = (orchestrator.clone(), settings.stt.clone());
        let stt = Supervisor::start(move |_| SttActor::new(stt_sup, stt_settings, o));
        if let Some(v) = settings.wake.as_ref().and_then(|w| w.verify) {
            hands.wake.set_verifier(
                Arc::new(crate::stt::SttVerifier(stt.clone().recipient())),
                v,
            );
        }

        // The input device reports speech to Stt (unless the caller wired another
        // listener), and `stt_start {source:"device"}` reaches it through `device_audio`.
        let audio = settings.audio.clone().map(|audio_settings| {
            let audio_sup = sup("audio");
            let c = components.clone();
            let speech = rooms
                .speech
                .clone()
                .or_else(|| Some(stt.clone().recipient()));
            let h = hands.clone();
            Supervisor::start(move |_| {
                crate::audio::AudioCapture::new(audio_sup, c, audio_settings, speech).with_hands(h)
            })
        });
        let device_audio = rooms
            .device_audio
            .clone()
            .or_else(|| audio.as_ref().map(|a| a.clone().recipient()));

        // Can the speech engine speak at all? Say so once, up front.
        let (h, c) = (hub.clone(), components.clone());
        actix_rt::spawn(async move {
            if let Err(e) = tts_engine.check().await {
                tracing::warn!(error = %e, "speech engine not usable; answers will be text only");
                c.set(&h, "tts", ComponentState::Degraded, Some(e.to_string()));
            }
        });

        let kernel = Kernel {
            orchestrator,
            router,
            llm,
            tts,
            memory: rooms.memory,
            tools: rooms.tools,
            stt,
            device_audio,
            audio,
            wake,
            hands,
        };
        kernel.watch(hub, components);
        kernel
    }

    /// Every second: an actor whose task died (a panic that escaped containment) is
    /// reported as `stopped` once.
    fn watch(&self, hub: HubHandle, components: ComponentRegistry) {
        let k = self.clone();
        actix_rt::spawn(async move {
            let mut reported = [false; 9];
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let alive = [
                    ("orchestrator", k.orchestrator.connected()),
                    ("intent_router", k.router.connected()),
                    ("llm", k.llm.connected()),
                    ("tts", k.tts.connected()),
                    ("memory", k.memory.as_ref().is_none_or(|a| a.connected())),
                    ("tools", k.tools.as_ref().is_none_or(|a| a.connected())),
                    ("stt", k.stt.connected()),
                    ("audio", k.audio.as_ref().is_none_or(|a| a.connected())),
                    ("wake_word", k.wake.as_ref().is_none_or(|a| a.connected())),
                ];
                for (i, (name, up)) in alive.iter().enumerate() {
                    if !up && !reported[i] {
                        reported[i] = true;
                        tracing::error!(component = name, "component task died");
                        hub.publish(
                            SYSTEM_SESSION,
                            &SystemError {
                                level: Level::Critical,
                                component: name.to_string(),
                                code: "stopped".into(),
                                message: format!("{name} stopped unexpectedly; requests to it fail until restart"),
                            },
                        );
                        components.set(
                            &hub,
                            name,
                            ComponentState::Stopped,
                            Some("task died".into()),
                        );
                    }
                }
            }
        });
    }
}

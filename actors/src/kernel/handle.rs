//! What a client session may ask of the assistant, by intent: start a turn, interrupt,
//! hand over speech, listen on the device, read memories. Sessions hold a
//! [`KernelHandle`] and never a concrete actor; every failure is a typed
//! [`KernelRequestError`].

use std::future::Future;

use actix::prelude::*;
use coda_protocol::MemoryItems;

use super::Kernel;
use crate::memory::MemoryFailure;
use crate::orchestrator::{
    Interrupt, InterruptReport, TextTurn, TurnSource, TurnStartError, TurnStarted,
};
use crate::voice::{DeviceListen, SpeechAudio};

/// Why a request to the assistant was not answered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KernelRequestError {
    /// That part of the assistant does not run in this server.
    #[error("{0}")]
    NotRunning(String),
    /// It is restarting; the same request may work in a moment.
    #[error("{0}")]
    Restarting(String),
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// It refused (degraded, no device, busy).
    #[error("{0}")]
    Unavailable(String),
    /// It failed while answering.
    #[error("{0}")]
    Failed(String),
}

/// The assistant as sessions see it (cheap to clone; `None` inside: no pipeline, and every
/// request says so).
#[derive(Clone, Default)]
pub struct KernelHandle {
    kernel: Option<Kernel>,
}

type Reply<T> = Result<T, KernelRequestError>;

fn not_running<T>(what: &str) -> Reply<T> {
    Err(KernelRequestError::NotRunning(what.to_string()))
}

impl KernelHandle {
    /// A handle on `kernel` (`None`: a server without the conversation pipeline).
    pub fn new(kernel: Option<Kernel>) -> Self {
        KernelHandle { kernel }
    }

    /// Starts a turn from text.
    pub fn start_turn(
        &self,
        session_id: String,
        text: String,
        source: TurnSource,
    ) -> impl Future<Output = Reply<TurnStarted>> + 'static {
        let orchestrator = self.kernel.as_ref().map(|k| k.orchestrator.clone());
        async move {
            let Some(o) = orchestrator else {
                return not_running("the conversation pipeline is not running");
            };
            match o
                .send(TextTurn {
                    session_id,
                    text,
                    source,
                })
                .await
            {
                Ok(Ok(started)) => Ok(started),
                Ok(Err(TurnStartError::Invalid(why))) => Err(KernelRequestError::Invalid(why)),
                Ok(Err(TurnStartError::Unavailable(why))) => {
                    Err(KernelRequestError::Unavailable(why))
                }
                Err(_) => Err(KernelRequestError::Restarting(
                    "the orchestrator is restarting".into(),
                )),
            }
        }
    }

    /// Stops every turn in flight (the assistant has one voice).
    pub fn interrupt(&self) -> impl Future<Output = Reply<InterruptReport>> + 'static {
        let orchestrator = self.kernel.as_ref().map(|k| k.orchestrator.clone());
        async move {
            let Some(o) = orchestrator else {
                return not_running("the conversation pipeline is not running");
            };
            o.send(Interrupt { session_id: None }).await.map_err(|_| {
                KernelRequestError::Restarting("the orchestrator is restarting".into())
            })
        }
    }

    /// Where a session's own speech (client audio) goes.
    pub fn speech_in(&self) -> Option<Recipient<SpeechAudio>> {
        self.kernel.as_ref().map(|k| k.stt.clone().recipient())
    }

    /// A wake-mode listening for `session_id`'s client audio, or why there is none.
    pub fn wake_listening(
        &self,
        session_id: &str,
    ) -> Result<crate::voice::WakeListening, crate::wake::WakeError> {
        match &self.kernel {
            Some(k) => k.hands.listen(session_id),
            None => Err(crate::wake::WakeError::Unavailable(
                "the wake word component is not running".into(),
            )),
        }
    }

    /// Resolves once the wake word reference is no longer loading (at most 30 s; at once
    /// without a kernel).
    pub fn wake_loaded(&self) -> impl Future<Output = ()> + 'static {
        let models = self.kernel.as_ref().map(|k| k.hands.wake.clone());
        async move {
            if let Some(m) = models {
                m.loaded(std::time::Duration::from_secs(30)).await;
            }
        }
    }

    /// Is the server's own input device wired?
    pub fn has_device(&self) -> bool {
        self.kernel
            .as_ref()
            .is_some_and(|k| k.device_audio.is_some())
    }

    /// Starts or stops listening on the server's input device. A refused start is
    /// `Unavailable`, a stop with nothing listening `Invalid`.
    pub fn device_listen(
        &self,
        request: DeviceListen,
    ) -> impl Future<Output = Reply<()>> + 'static {
        let device = self.kernel.as_ref().and_then(|k| k.device_audio.clone());
        let wake = self.wake_loaded();
        let wake_mode = matches!(
            request,
            DeviceListen::Start {
                mode: coda_protocol::SttMode::Wake,
                ..
            }
        );
        async move {
            if wake_mode {
                wake.await;
            }
            let Some(device) = device else {
                return not_running(
                    "no audio capture in this build: send stt_start {\"source\":\"client\"} and stream PCM as binary frames",
                );
            };
            let stop = matches!(request, DeviceListen::Stop { .. });
            match device.send(request).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(why)) if stop => Err(KernelRequestError::Invalid(why)),
                Ok(Err(why)) => Err(KernelRequestError::Unavailable(why)),
                Err(_) => Err(KernelRequestError::Restarting(
                    "audio capture is restarting".into(),
                )),
            }
        }
    }

    /// A read of long-term memory (`memory::Search`, `memory::List`).
    pub fn memory<M>(&self, query: M) -> impl Future<Output = Reply<MemoryItems>> + 'static
    where
        M: Message<Result = Result<MemoryItems, MemoryFailure>> + Send + 'static,
        crate::memory::MemoryActor: Handler<M>,
    {
        let memory = self.kernel.as_ref().and_then(|k| k.memory.clone());
        async move {
            let Some(m) = memory else {
                return not_running("memory is not running");
            };
            memory_reply(m.send(query).await)
        }
    }
}

fn memory_reply(
    res: Result<Result<MemoryItems, MemoryFailure>, MailboxError>,
) -> Reply<MemoryItems> {
    match res {
        Ok(Ok(items)) => Ok(items),
        Ok(Err(f @ MemoryFailure::Invalid(_))) => Err(KernelRequestError::Invalid(f.to_string())),
        Ok(Err(f @ MemoryFailure::Unavailable(_))) => {
            Err(KernelRequestError::Unavailable(f.to_string()))
        }
        Ok(Err(f)) => Err(KernelRequestError::Failed(f.to_string())),
        Err(_) => Err(KernelRequestError::Restarting(
            "memory is restarting".into(),
        )),
    }
}

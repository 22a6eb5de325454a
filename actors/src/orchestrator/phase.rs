//! A turn's phase and its one transition function, and its latency figures by stage.
//!
//! routing → answering → draining speech → done, or interrupted / failed from anywhere.
//! The answer text may complete before its speech does (`draining speech`: the queued
//! sentences are still being synthesised or played); speech that fails leaves the text
//! answer standing. Home Assistant's `assist_pipeline` (a stage enum, each stage
//! started and ended once) is the model.

/// Where a turn is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The intent router is deciding who answers.
    Routing,
    /// The answer is being produced (model, tool or a canned text).
    Answering,
    /// The answer text is complete; its queued speech is finishing.
    DrainingSpeech,
    /// Over: answered (with or without speech).
    Done,
    /// Cut short by new input or `interrupt`.
    Interrupted,
    /// Aborted (the orchestrator restarted under it).
    Failed,
}

impl Phase {
    /// Nothing more happens to the turn.
    pub fn is_over(self) -> bool {
        matches!(self, Phase::Done | Phase::Interrupted | Phase::Failed)
    }
}

/// What happened to a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnEvent {
    /// The router decided.
    Routed,
    /// The answer text is complete (generation ended or failed, a tool or canned answer).
    AnswerComplete,
    /// Every queued sentence was spoken.
    SpeechDone,
    /// Speech failed (the text answer stands).
    SpeechFailed,
    /// New input or `interrupt`.
    Interrupted,
    /// The orchestrator restarted.
    Aborted,
}

/// The turn's speech so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Speech {
    /// Sentences sent to speech.
    pub queued: u32,
    /// Speech failed; nothing more is queued.
    pub failed: bool,
}

impl Speech {
    /// Is there speech still to wait for?
    pub fn pending(self) -> bool {
        self.queued > 0 && !self.failed
    }
}

/// The one transition function: the phase after `event` in `phase`.
pub fn next(phase: Phase, event: TurnEvent, speech: Speech) -> Phase {
    use Phase as P;
    use TurnEvent as E;
    match (phase, event) {
        (p, _) if p.is_over() => p,
        (_, E::Interrupted) => P::Interrupted,
        (_, E::Aborted) => P::Failed,
        (P::Routing, E::Routed) => P::Answering,
        (P::Routing | P::Answering, E::AnswerComplete) => {
            if speech.pending() {
                P::DrainingSpeech
            } else {
                P::Done
            }
        }
        (P::DrainingSpeech, E::SpeechDone | E::SpeechFailed) => P::Done,
        // Speech failing while the answer is still produced: the text goes on; the turn
        // ends with it.
        (p, _) => p,
    }
}

/// The stages a turn's latency is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Speech-to-text time.
    Stt,
    /// End of speech → end of the utterance.
    Endpoint,
    /// End of the utterance → transcript.
    SttWait,
    /// Routing decision.
    Intent,
    /// First model token.
    LlmFirstToken,
    /// Whole generation.
    Llm,
    /// End of the input → first audio.
    FirstAudio,
    /// First sentence queued → last one spoken.
    Tts,
}

const STAGES: usize = 8;

impl Stage {
    fn index(self) -> usize {
        self as usize
    }
}

/// Milliseconds per stage, each measured at most once.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency([Option<f64>; STAGES]);

impl Latency {
    /// The figure of `stage`, if measured.
    pub fn get(&self, stage: Stage) -> Option<f64> {
        self.0[stage.index()]
    }

    /// Records `stage` (a later figure replaces an earlier one).
    pub fn set(&mut self, stage: Stage, ms: f64) {
        self.0[stage.index()] = Some(ms);
    }

    /// Records `stage` unless it was measured already; true when this was the first.
    pub fn first(&mut self, stage: Stage, ms: f64) -> bool {
        let slot = &mut self.0[stage.index()];
        if slot.is_some() {
            return false;
        }
        *slot = Some(ms);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: Speech = Speech {
        queued: 0,
        failed: false,
    };
    const QUEUED: Speech = Speech {
        queued: 2,
        failed: false,
    };
    const FAILED: Speech = Speech {
        queued: 2,
        failed: true,
    };

    #[test]
    fn routing_leads_to_answering() {
        assert_eq!(
            next(Phase::Routing, TurnEvent::Routed, NONE),
            Phase::Answering
        );
    }

    #[test]
    fn a_complete_answer_without_speech_is_done() {
        assert_eq!(
            next(Phase::Answering, TurnEvent::AnswerComplete, NONE),
            Phase::Done
        );
        // A canned answer decided at routing (stop) ends there too.
        assert_eq!(
            next(Phase::Routing, TurnEvent::AnswerComplete, NONE),
            Phase::Done
        );
    }

    #[test]
    fn a_complete_answer_with_speech_drains_it() {
        assert_eq!(
            next(Phase::Answering, TurnEvent::AnswerComplete, QUEUED),
            Phase::DrainingSpeech
        );
        assert_eq!(
            next(Phase::DrainingSpeech, TurnEvent::SpeechDone, QUEUED),
            Phase::Done
        );
    }

    #[test]
    fn failed_speech_leaves_the_text_answer() {
        // While answering: the text goes on.
        assert_eq!(
            next(Phase::Answering, TurnEvent::SpeechFailed, FAILED),
            Phase::Answering
        );
        // Then the answer completes with nothing to wait for.
        assert_eq!(
            next(Phase::Answering, TurnEvent::AnswerComplete, FAILED),
            Phase::Done
        );
        // While draining: over.
        assert_eq!(
            next(Phase::DrainingSpeech, TurnEvent::SpeechFailed, FAILED),
            Phase::Done
        );
    }

    #[test]
    fn interrupt_and_abort_end_any_live_phase() {
        for p in [Phase::Routing, Phase::Answering, Phase::DrainingSpeech] {
            assert_eq!(next(p, TurnEvent::Interrupted, QUEUED), Phase::Interrupted);
            assert_eq!(next(p, TurnEvent::Aborted, QUEUED), Phase::Failed);
        }
    }

    #[test]
    fn over_is_over() {
        for p in [Phase::Done, Phase::Interrupted, Phase::Failed] {
            for e in [
                TurnEvent::Routed,
                TurnEvent::AnswerComplete,
                TurnEvent::SpeechDone,
                TurnEvent::SpeechFailed,
                TurnEvent::Interrupted,
                TurnEvent::Aborted,
            ] {
                assert_eq!(next(p, e, QUEUED), p, "{p:?} + {e:?}");
            }
        }
    }

    #[test]
    fn out_of_order_events_change_nothing() {
        assert_eq!(
            next(Phase::Routing, TurnEvent::SpeechDone, QUEUED),
            Phase::Routing
        );
        assert_eq!(
            next(Phase::DrainingSpeech, TurnEvent::Routed, QUEUED),
            Phase::DrainingSpeech
        );
    }

    #[test]
    fn latency_stages_are_kept_apart_and_first_wins() {
        let mut l = Latency::default();
        assert!(l.first(Stage::FirstAudio, 120.0));
        assert!(!l.first(Stage::FirstAudio, 300.0));
        l.set(Stage::Llm, 50.0);
        assert_eq!(l.get(Stage::FirstAudio), Some(120.0));
        assert_eq!(l.get(Stage::Llm), Some(50.0));
        assert_eq!(l.get(Stage::Stt), None);
    }
}

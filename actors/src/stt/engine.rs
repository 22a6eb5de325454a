//! The whisper.cpp engine (through whisper-rs): one loaded model, a small pool of decoder
//! states so concurrent transcriptions do not re-allocate their buffers, and transcription
//! of one utterance with the encoder's audio context trimmed to the audio's length.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Instant;

use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters};

use super::{SttFailure, Transcript};
use crate::voice::SPEECH_SAMPLE_RATE;

/// A loaded whisper model.
pub struct WhisperEngine {
    ctx: WhisperContext,
    states: Mutex<Vec<whisper_rs::WhisperState>>,
    language: String,
    threads: i32,
    multilingual: bool,
    n_audio_ctx: i32,
}

impl std::fmt::Debug for WhisperEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperEngine")
            .field("language", &self.language)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

/// Encoder positions for `seconds` of audio: whisper's encoder sees 50 positions per
/// second; a short command needs a fraction of the 30 s window (1500), which is most of
/// the cost. A margin of 64 positions (1.3 s) keeps the last word, rounded up to 64.
pub fn audio_ctx_for(seconds: f64, n_audio_ctx: i32) -> i32 {
    let needed = (seconds * 50.0).ceil() as i32 + 64;
    let rounded = (needed + 63) / 64 * 64;
    rounded.clamp(128, n_audio_ctx.max(128))
}

impl WhisperEngine {
    /// Loads the model at `path` (checked first, so a truncated file is a clear error and
    /// never reaches whisper.cpp). `language`: `en`, another code, or `auto`; `threads`:
    /// 0 = [`super::default_threads`].
    pub fn load(path: &Path, language: &str, threads: usize) -> Result<WhisperEngine, SttFailure> {
        static HOOKS: Once = Once::new();
        // whisper.cpp's log lines go to tracing instead of raw stderr.
        HOOKS.call_once(whisper_rs::install_logging_hooks);
        let (hp, _) = crate::models::whisper::check_ggml(path).map_err(|e| {
            SttFailure::ModelInvalid(format!(
                "{e}; pull it again (`coda models pull whisper-tiny.en`) or convert it again"
            ))
        })?;
        let path_str = path.to_str().ok_or_else(|| {
            SttFailure::ModelInvalid(format!("{}: path is not UTF-8", path.display()))
        })?;
        let mut params = WhisperContextParameters::default();
        params.use_gpu(false);
        let ctx = WhisperContext::new_with_params(path_str, params).map_err(|e| {
            SttFailure::ModelInvalid(format!("whisper.cpp cannot load {}: {e}", path.display()))
        })?;
        let multilingual = hp.multilingual();
        let language = if language.is_empty() {
            "en".to_string()
        } else {
            language.to_string()
        };
        if !multilingual && language != "en" {
            return Err(SttFailure::ModelInvalid(format!(
                "{} is an English-only model; stt.language = \"{language}\" needs a multilingual one (or set it to \"en\")",
                path.display()
            )));
        }
        if language != "auto"
            && (language.contains('\0') || whisper_rs::get_lang_id(&language).is_none())
        {
            return Err(SttFailure::ModelInvalid(format!(
                "stt.language = \"{language}\" is not a language whisper knows"
            )));
        }
        let threads = if threads == 0 {
            super::default_threads()
        } else {
            threads
        };
        Ok(WhisperEngine {
            ctx,
            states: Mutex::new(Vec::new()),
            language,
            threads: threads as i32,
            multilingual,
            n_audio_ctx: hp.n_audio_ctx,
        })
    }

    /// Transcribes 16 kHz mono samples. `abort`, when set while running, stops whisper.cpp
    /// at its next check and returns [`SttFailure::Cancelled`].
    pub fn transcribe(
        &self,
        samples: &[f32],
        abort: Option<Arc<AtomicBool>>,
    ) -> Result<Transcript, SttFailure> {
        let t0 = Instant::now();
        let rate = SPEECH_SAMPLE_RATE as usize;
        let audio_ms = samples.len() as f64 * 1000.0 / rate as f64;
        // whisper.cpp wants at least a second; silence pads shorter clips. Non-finite
        // samples (a broken producer) become silence rather than NaNs in the encoder.
        let mut pcm: Vec<f32> = samples
            .iter()
            .map(|s| {
                if s.is_finite() {
                    s.clamp(-1.0, 1.0)
                } else {
                    0.0
                }
            })
            .collect();
        if pcm.len() < rate + rate / 10 {
            pcm.resize(rate + rate / 10, 0.0);
        }
        let seconds = pcm.len() as f64 / rate as f64;

        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_n_threads(self.threads);
        params.set_translate(false);
        params.set_no_context(true);
        params.set_no_timestamps(true);
        params.set_print_special(false);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_timestamps(false);
        params.set_suppress_blank(true);
        // No temperature fallback: a re-decode at a higher temperature doubles the time
        // of a command for little gain on short audio.
        params.set_temperature_inc(0.0);
        params.set_language(Some(self.language.as_str()));
        if seconds < 29.0 {
            params.set_audio_ctx(audio_ctx_for(seconds, self.n_audio_ctx));
            params.set_single_segment(true);
        }
        if let Some(flag) = abort.clone() {
            params.set_abort_callback_safe(move || flag.load(Ordering::Relaxed));
        }

        let mut state = match self.states.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            Some(s) => s,
            None => self
                .ctx
                .create_state()
                .map_err(|e| SttFailure::Failed(format!("cannot create a whisper state: {e}")))?,
        };
        let result = state.full(params, &pcm);
        let aborted = abort.as_ref().is_some_and(|f| f.load(Ordering::Relaxed));
        if aborted {
            self.give_back(state);
            return Err(SttFailure::Cancelled);
        }
        if let Err(e) = result {
            // A state whisper.cpp failed in is not reused.
            return Err(SttFailure::Failed(format!("whisper.cpp failed: {e}")));
        }
        let eot = self.ctx.token_eot();
        let mut text = String::new();
        let (mut p_sum, mut p_n) = (0f64, 0usize);
        for segment in state.as_iter() {
            if let Ok(t) = segment.to_str_lossy() {
                text.push_str(&t);
            }
            for i in 0..segment.n_tokens() {
                if let Some(token) = segment.get_token(i) {
                    if token.token_id() < eot {
                        p_sum += f64::from(token.token_probability());
                        p_n += 1;
                    }
                }
            }
        }
        let language = if self.multilingual && self.language == "auto" {
            whisper_rs::get_lang_str(state.full_lang_id_from_state())
                .unwrap_or("auto")
                .to_string()
        } else {
            self.language.clone()
        };
        self.give_back(state);
        Ok(Transcript {
            text: clean(&text),
            confidence: if p_n == 0 { 0.0 } else { p_sum / p_n as f64 },
            language,
            audio_ms,
            elapsed_ms: t0.elapsed().as_secs_f64() * 1000.0,
        })
    }

    fn give_back(&self, state: whisper_rs::WhisperState) {
        let mut pool = self.states.lock().unwrap_or_else(|p| p.into_inner());
        // Two states cover an interim and a final transcription side by side.
        if pool.len() < 2 {
            pool.push(state);
        }
    }
}

/// Whisper's text without its leading space and with the non-speech markers it writes for
/// silence (`[BLANK_AUDIO]`, `(silence)`) dropped.
fn clean(text: &str) -> String {
    let t = text.trim();
    let bracketed = |s: &str| {
        (s.starts_with('[') && s.ends_with(']')) || (s.starts_with('(') && s.ends_with(')'))
    };
    if bracketed(t) {
        return String::new();
    }
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn audio_context_follows_the_audio() {
        use super::audio_ctx_for;
        assert_eq!(audio_ctx_for(1.1, 1500), 128);
        assert_eq!(audio_ctx_for(3.0, 1500), 256);
        assert!(audio_ctx_for(10.0, 1500) >= 564);
        assert_eq!(audio_ctx_for(40.0, 1500), 1500);
    }

    #[test]
    fn markers_are_not_text() {
        assert_eq!(super::clean(" [BLANK_AUDIO]"), "");
        assert_eq!(super::clean(" (silence) "), "");
        assert_eq!(super::clean("  Turn on   the light."), "Turn on the light.");
    }
}

//! The whisper.cpp engine (through whisper-rs): one loaded model, a small pool of decoder
//! states so concurrent transcriptions do not re-allocate their buffers, and transcription
//! of one utterance with the encoder's audio context trimmed to the audio's length.

use std::ffi::{c_char, c_void, CStr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Instant;

use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters};

use super::{SttFailure, Transcript};
use crate::voice::SPEECH_SAMPLE_RATE;
use crate::wake::verify::{phrase_check, Phrase};

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
/// the cost. A margin of 64 positions (1.3 s) keeps the last word, rounded up to 64, and
/// never under 256 (5 s): measured on spoken commands, narrower windows make tiny.en
/// loop on one-word commands ("Stop! Stop! Stop!…" at 128, right at 256).
pub fn audio_ctx_for(seconds: f64, n_audio_ctx: i32) -> i32 {
    let needed = (seconds * 50.0).ceil() as i32 + 64;
    let rounded = (needed + 63) / 64 * 64;
    rounded.clamp(MIN_AUDIO_CTX, n_audio_ctx.max(MIN_AUDIO_CTX))
}

/// The encoder window for scoring a clip of `seconds` ([`WhisperEngine::phrase_score`]):
/// the clip and 32 positions (`coda bench wake`: 70 took 25 ms more per check for no
/// better separation of the word from other speech).
pub fn clip_audio_ctx(seconds: f64, n_audio_ctx: i32) -> i32 {
    ((seconds * 50.0).ceil() as i32 + 32).clamp(64, n_audio_ctx.max(64))
}

/// `ln softmax(logits)[token]`; a token outside the vocabulary is impossible.
fn log_softmax_at(logits: &[f32], token: i32) -> f64 {
    let Some(&at) = usize::try_from(token).ok().and_then(|t| logits.get(t)) else {
        return f64::NEG_INFINITY;
    };
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = logits.iter().map(|l| f64::from(l - max).exp()).sum();
    f64::from(at - max) - z.ln()
}

/// `samples` as whisper.cpp takes them: at least 1.1 s (silence pads shorter clips), and
/// non-finite samples (a broken producer) as silence rather than NaNs in the encoder.
fn pcm_of(samples: &[f32]) -> Vec<f32> {
    let min = SPEECH_SAMPLE_RATE as usize * 11 / 10;
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
    if pcm.len() < min {
        pcm.resize(min, 0.0);
    }
    pcm
}

/// The narrowest encoder window used.
const MIN_AUDIO_CTX: i32 = 256;

impl WhisperEngine {
    /// Loads the model at `path` (checked first, so a truncated file is a clear error and
    /// never reaches whisper.cpp). `language`: `en`, another code, or `auto`; `threads`:
    /// 0 = [`super::default_threads`].
    pub fn load(path: &Path, language: &str, threads: usize) -> Result<WhisperEngine, SttFailure> {
        static HOOKS: Once = Once::new();
        // whisper.cpp's log lines go to tracing instead of raw stderr; its chatter (model
        // load, buffer sizes) at DEBUG.
        // SAFETY: `whisper_log` is a plain function valid for the whole process.
        HOOKS.call_once(|| unsafe {
            whisper_rs::whisper_rs_sys::whisper_log_set(Some(whisper_log), std::ptr::null_mut());
            whisper_rs::whisper_rs_sys::ggml_log_set(Some(whisper_log), std::ptr::null_mut());
        });
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
    ///
    /// The encoder runs on a window trimmed to the audio ([`audio_ctx_for`]), which is
    /// what makes a short command fast; a trimmed window can make the decoder loop or
    /// drift, so a result that [`degenerate`] rejects is decoded again on a wider window,
    /// and finally on the full 30 s one (whisper's own setting, never degenerate-checked)
    /// — unless it is one phrase over and over, whose first copy is kept ([`loop_unit`]).
    pub fn transcribe(
        &self,
        samples: &[f32],
        abort: Option<Arc<AtomicBool>>,
    ) -> Result<Transcript, SttFailure> {
        let t0 = Instant::now();
        let rate = SPEECH_SAMPLE_RATE as usize;
        let audio_ms = samples.len() as f64 * 1000.0 / rate as f64;
        let pcm = pcm_of(samples);
        let seconds = pcm.len() as f64 / rate as f64;
        let speech_s = audio_ms / 1000.0;

        let mut state = self.take_state()?;
        let mut attempts = 0u32;
        let mut last = None;
        for audio_ctx in context_plan(seconds, self.n_audio_ctx) {
            attempts += 1;
            let full = audio_ctx >= self.n_audio_ctx;
            let decoded = match self.decode(&mut state, &pcm, audio_ctx, speech_s, abort.as_ref()) {
                Ok(d) => d,
                Err(e) => {
                    if matches!(e, SttFailure::Cancelled) {
                        self.give_back(state);
                    }
                    // A state whisper.cpp failed in is not reused.
                    return Err(e);
                }
            };
            let verdict = if full {
                None
            } else {
                degenerate(&decoded.text, speech_s, decoded.hit_cap)
            };
            let decoded = match verdict {
                None => decoded,
                // A pure loop ("Volume up. Volume up. Volume…") is rejected, yet its first
                // copy is what was said: kept, it saves the wider window's decode
                // (`coda bench stt`, see docs/voice.md).
                Some(why) => match loop_unit(&decoded.text)
                    .filter(|u| degenerate(u, speech_s, false).is_none())
                {
                    Some(unit) => {
                        tracing::debug!(audio_ctx, %why, text = %decoded.text, kept = %unit, "transcript looped; its first copy kept");
                        Decoded {
                            text: unit,
                            hit_cap: false,
                            ..decoded
                        }
                    }
                    None => {
                        tracing::debug!(audio_ctx, %why, text = %decoded.text, "transcript rejected; decoding on a wider window");
                        last = Some((decoded, audio_ctx));
                        continue;
                    }
                },
            };
            last = Some((decoded, audio_ctx));
            break;
        }
        let language = if self.multilingual && self.language == "auto" {
            whisper_rs::get_lang_str(state.full_lang_id_from_state())
                .unwrap_or("auto")
                .to_string()
        } else {
            self.language.clone()
        };
        self.give_back(state);
        let (decoded, audio_ctx) =
            last.ok_or_else(|| SttFailure::Failed("no decoding ran".into()))?;
        Ok(Transcript {
            text: decoded.text,
            confidence: decoded.confidence,
            language,
            audio_ms,
            elapsed_ms: t0.elapsed().as_secs_f64() * 1000.0,
            audio_ctx,
            attempts,
        })
    }

    /// How likely whisper finds it that a short clip says one of `phrases`: each phrase's
    /// tokens forced through the decoder after one encoding of the clip (on an encoder
    /// window fitted to it: [`clip_audio_ctx`]), their log-probabilities combined by
    /// [`phrase_check`]; the likeliest phrase's score. Free transcription is no judge
    /// here: tiny.en writes an unfamiliar name said by an unusual voice as other words
    /// ("Take all that"), while the name stays likely. `abort`, once set, stops the check
    /// at whisper.cpp's next step or the next phrase ([`SttFailure::Cancelled`]).
    pub fn phrase_score(
        &self,
        samples: &[f32],
        phrases: &[Phrase],
        abort: Option<&Arc<AtomicBool>>,
    ) -> Result<f64, SttFailure> {
        let rate = SPEECH_SAMPLE_RATE as usize;
        let pcm = pcm_of(samples);
        let failed =
            |e: whisper_rs::WhisperError| SttFailure::Failed(format!("whisper.cpp failed: {e}"));
        let mut prefix = vec![self.ctx.token_sot()];
        if self.multilingual {
            let lang = whisper_rs::get_lang_id(&self.language).unwrap_or(0);
            prefix.push(self.ctx.token_lang(lang));
            prefix.push(self.ctx.token_transcribe());
        }
        prefix.push(self.ctx.token_not());
        let tokens = |text: &str| -> Result<Vec<whisper_rs::WhisperTokenId>, SttFailure> {
            match text {
                "" => Ok(Vec::new()),
                t => self.ctx.tokenize(t, 64).map_err(failed),
            }
        };
        // Each part on its own: whisper's tokenizer splits words (and punctuation) before
        // merging, so the parts' tokens joined are the phrase's.
        let mut sequences = Vec::new();
        for phrase in phrases {
            let (lead, joiner, name) = (
                tokens(&phrase.lead)?,
                tokens(&phrase.joiner)?,
                tokens(&phrase.name)?,
            );
            if !name.is_empty() {
                sequences.push((lead, joiner, name));
            }
        }
        if sequences.is_empty() {
            return Err(SttFailure::Failed("no phrase to score".into()));
        }
        let mut state = self.take_state()?;
        // One pass of `full` encodes the clip on the trimmed window (whisper.cpp sets the
        // window only there) and decodes a single token; the phrases are scored after it.
        let mut params = self.params();
        params.set_audio_ctx(clip_audio_ctx(
            pcm.len() as f64 / rate as f64,
            self.n_audio_ctx,
        ));
        params.set_single_segment(true);
        params.set_max_tokens(1);
        if let Err(e) = full_abortable(&mut state, params, &pcm, abort) {
            if matches!(e, SttFailure::Cancelled) {
                self.give_back(state);
            }
            return Err(e);
        }
        let threads = self.threads.max(1) as usize;
        let mut best = f64::NEG_INFINITY;
        // whisper.cpp keeps logits for the last token of a decode call only, so tokens go
        // in one per call; the spellings share their start (" Hey"), which stays in the
        // decoder's cache: each call costs a pass over the whole vocabulary's projection.
        let mut cached: Vec<whisper_rs::WhisperTokenId> = Vec::new();
        let mut logits_after: Vec<Vec<f32>> = Vec::new();
        for (lead, joiner, name) in &sequences {
            if abort.is_some_and(|f| f.load(Ordering::Relaxed)) {
                self.give_back(state);
                return Err(SttFailure::Cancelled);
            }
            let tokens: Vec<_> = prefix
                .iter()
                .chain(lead)
                .chain(joiner)
                .chain(name)
                .copied()
                .collect();
            let fed = &tokens[..tokens.len() - 1];
            let shared = cached.iter().zip(fed).take_while(|(a, b)| a == b).count();
            cached.truncate(shared);
            logits_after.truncate(shared);
            for (i, token) in fed.iter().enumerate().skip(shared) {
                // n_past = i drops whatever the cache held from position i on
                state.decode(&[*token], i, threads).map_err(failed)?;
                cached.push(*token);
                logits_after.push(state.get_logits().map_err(failed)?.to_vec());
            }
            let log_probs: Vec<f64> = (prefix.len() - 1..fed.len())
                .map(|i| log_softmax_at(&logits_after[i], tokens[i + 1]))
                .collect();
            let name_from = lead.len() + joiner.len();
            best = best.max(phrase_check(
                &log_probs[..lead.len()],
                &log_probs[name_from..],
            ));
        }
        self.give_back(state);
        Ok(best)
    }

    /// One whisper.cpp run over `pcm` with the encoder window `audio_ctx`.
    fn decode(
        &self,
        state: &mut whisper_rs::WhisperState,
        pcm: &[f32],
        audio_ctx: i32,
        speech_s: f64,
        abort: Option<&Arc<AtomicBool>>,
    ) -> Result<Decoded, SttFailure> {
        let mut params = self.params();
        params.set_suppress_blank(true);
        let cap = token_cap(speech_s);
        if audio_ctx < self.n_audio_ctx {
            params.set_audio_ctx(audio_ctx);
            params.set_single_segment(true);
            params.set_max_tokens(cap);
        }
        full_abortable(state, params, pcm, abort)?;
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
        let text = clean(&text);
        Ok(Decoded {
            // Silence markers are not text: nothing heard, no confidence in it.
            confidence: if p_n == 0 || text.is_empty() {
                0.0
            } else {
                p_sum / p_n as f64
            },
            text,
            hit_cap: audio_ctx < self.n_audio_ctx && p_n as i32 >= cap,
        })
    }

    /// Greedy decoding of one clip, quiet, in the configured language. No temperature
    /// fallback inside whisper.cpp: a degenerate transcript is decoded again on a wider
    /// window instead, which fixes what the trimmed window broke.
    fn params(&self) -> FullParams<'_, '_> {
        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_n_threads(self.threads);
        params.set_translate(false);
        params.set_no_context(true);
        params.set_no_timestamps(true);
        params.set_print_special(false);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_timestamps(false);
        params.set_temperature_inc(0.0);
        params.set_language(Some(self.language.as_str()));
        params
    }

    fn take_state(&self) -> Result<whisper_rs::WhisperState, SttFailure> {
        let pooled = self.states.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match pooled {
            Some(s) => Ok(s),
            None => {
                tracing::debug!("allocating a whisper state");
                self.ctx
                    .create_state()
                    .map_err(|e| SttFailure::Failed(format!("cannot create a whisper state: {e}")))
            }
        }
    }

    fn give_back(&self, state: whisper_rs::WhisperState) {
        let mut pool = self.states.lock().unwrap_or_else(|p| p.into_inner());
        // Two states cover an interim and a final transcription side by side.
        if pool.len() < 2 {
            pool.push(state);
        }
    }
}

/// `state.full`, stopped at whisper.cpp's next check once `abort` is set
/// ([`SttFailure::Cancelled`]).
fn full_abortable(
    state: &mut whisper_rs::WhisperState,
    mut params: FullParams<'_, '_>,
    pcm: &[f32],
    abort: Option<&Arc<AtomicBool>>,
) -> Result<(), SttFailure> {
    if let Some(flag) = abort {
        // whisper-rs 0.16's `set_abort_callback_safe` is unsound: its trampoline reads
        // the boxed closure as the caller's closure type, so whisper.cpp "aborts" on
        // whatever the heap holds there (error -6 in about half of the process starts)
        // and it leaks the box on every call. Our trampoline gets a pointer to the flag,
        // which `abort` keeps alive until `full` returns.
        // SAFETY: `abort_requested` only reads an AtomicBool through the pointer, and
        // the Arc it points into outlives this call.
        unsafe {
            params.set_abort_callback(Some(abort_requested));
            params.set_abort_callback_user_data(Arc::as_ptr(flag) as *mut c_void);
        }
    }
    ABORTING.with(|a| a.set(false));
    let result = state.full(params, pcm);
    if abort.is_some_and(|f| f.load(Ordering::Relaxed)) {
        return Err(SttFailure::Cancelled);
    }
    result.map_err(|e| SttFailure::Failed(format!("whisper.cpp failed: {e}")))
}

thread_local! {
    /// This thread's whisper.cpp run was told to abort: the "failed to encode" it then
    /// logs is ours, not an error.
    static ABORTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// whisper.cpp's abort check: the user data is the `AtomicBool` of [`WhisperEngine::transcribe`].
unsafe extern "C" fn abort_requested(user_data: *mut c_void) -> bool {
    if user_data.is_null() {
        return false;
    }
    // SAFETY: set by `decode` to `Arc::as_ptr` of a flag that outlives the call.
    let flag = unsafe { &*(user_data as *const AtomicBool) };
    let abort = flag.load(Ordering::Relaxed);
    if abort {
        ABORTING.with(|a| a.set(true));
    }
    abort
}

/// whisper.cpp and ggml log lines: errors and warnings as such, the rest at DEBUG.
unsafe extern "C" fn whisper_log(
    level: whisper_rs::whisper_rs_sys::ggml_log_level,
    text: *const c_char,
    _: *mut c_void,
) {
    if text.is_null() {
        return;
    }
    // SAFETY: whisper.cpp passes a NUL-terminated string valid for this call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    match level {
        whisper_rs::whisper_rs_sys::ggml_log_level_GGML_LOG_LEVEL_ERROR
            if !ABORTING.with(std::cell::Cell::get) =>
        {
            tracing::error!(target: "coda::whisper", "{text}")
        }
        whisper_rs::whisper_rs_sys::ggml_log_level_GGML_LOG_LEVEL_WARN => {
            tracing::warn!(target: "coda::whisper", "{text}")
        }
        _ => tracing::debug!(target: "coda::whisper", "{text}"),
    }
}

/// One decoding's result.
struct Decoded {
    text: String,
    confidence: f64,
    /// The decoder stopped at [`token_cap`].
    hit_cap: bool,
}

/// The encoder windows to try, narrowest first, ending with the model's full window.
pub fn context_plan(seconds: f64, n_audio_ctx: i32) -> Vec<i32> {
    let first = audio_ctx_for(seconds, n_audio_ctx);
    let mut plan = vec![first];
    // Twice as wide fixes most of what the first window broke, at a fraction of the full
    // window's cost.
    if first * 2 < n_audio_ctx * 2 / 3 {
        plan.push(first * 2);
    }
    if first < n_audio_ctx {
        plan.push(n_audio_ctx);
    }
    plan
}

/// Most tokens `speech_s` seconds of speech can produce: about 5 words (7 tokens with
/// punctuation) a second even for fast speech, plus room for a short clip.
pub fn token_cap(speech_s: f64) -> i32 {
    12 + (speech_s.max(0.0) * 7.0).ceil() as i32
}

/// Why a transcript of `speech_s` seconds cannot be what was said, if it cannot: the
/// decoder hit the token cap, wrote more words than anyone says in that time, or repeats
/// itself (a word or pair three times in a row, a longer phrase twice) — the failure modes
/// of a trimmed encoder window.
pub fn degenerate(text: &str, speech_s: f64, hit_cap: bool) -> Option<String> {
    if hit_cap {
        return Some("reached the token cap for the audio's length".into());
    }
    let words: Vec<String> = plain_words(text).into_iter().map(|(_, w)| w).collect();
    let most = 4.0 + 5.0 * speech_s.max(0.0);
    if words.len() as f64 > most {
        return Some(format!(
            "{} words for {:.1} s of audio",
            words.len(),
            speech_s
        ));
    }
    for n in 1..=words.len() / 2 {
        let times = if n <= 2 { 3 } else { 2 };
        if words.len() < n * times {
            break;
        }
        for start in 0..=words.len() - n * times {
            let gram = &words[start..start + n];
            if (1..times).all(|k| &words[start + k * n..start + (k + 1) * n] == gram) {
                return Some(format!("\"{}\" repeated {times} times", gram.join(" ")));
            }
        }
    }
    None
}

/// The words of `text` as [`degenerate`] compares them: letters, digits and apostrophes,
/// lower case; (index in the text's whitespace-split words, word).
fn plain_words(text: &str) -> Vec<(usize, String)> {
    text.split_whitespace()
        .enumerate()
        .filter_map(|(i, w)| {
            let w: String = w
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .flat_map(char::to_lowercase)
                .collect();
            (!w.is_empty()).then_some((i, w))
        })
        .collect()
}

/// The first copy of a text that is nothing but one phrase over and over (at least twice,
/// the last copy perhaps cut short: where the decoder hit its cap), as written; `None` for
/// anything else.
pub fn loop_unit(text: &str) -> Option<String> {
    let words = plain_words(text);
    let n =
        (1..=words.len() / 2).find(|&n| (n..words.len()).all(|i| words[i].1 == words[i % n].1))?;
    let raw: Vec<&str> = text.split_whitespace().collect();
    Some(raw[..=words[n - 1].0].join(" "))
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
        assert_eq!(audio_ctx_for(1.1, 1500), 256);
        assert_eq!(audio_ctx_for(3.0, 1500), 256);
        assert_eq!(audio_ctx_for(4.0, 1500), 320);
        assert!(audio_ctx_for(10.0, 1500) >= 564);
        assert_eq!(audio_ctx_for(40.0, 1500), 1500);
    }

    #[test]
    fn loops_and_impossible_lengths_are_degenerate() {
        use super::degenerate;
        assert!(degenerate("Stop. Stop. Stop. Stop.", 0.7, false).is_some());
        let looped = "turn on the kitchen lights please turn on the kitchen lights please";
        assert!(degenerate(looped, 1.9, false).is_some());
        assert!(degenerate("Stop.", 0.7, false).is_none());
        assert!(degenerate("Turn on the kitchen lights, please.", 1.9, false).is_none());
        assert!(degenerate("What is the capital of France?", 2.0, false).is_none());
        // Twelve distinct words cannot be said in one second.
        let many = "one two three four five six seven eight nine ten eleven twelve";
        assert!(degenerate(many, 1.0, false).is_some());
        assert!(degenerate("fine", 1.0, true).is_some());
        assert!(degenerate("", 1.0, false).is_none());
    }

    #[test]
    fn a_pure_loop_gives_its_first_copy() {
        use super::loop_unit;
        let cut = "Who wrote the book Moby Dick? Who wrote the book Moby Dick? Who wrote the";
        assert_eq!(
            loop_unit(cut).as_deref(),
            Some("Who wrote the book Moby Dick?")
        );
        assert_eq!(
            loop_unit("Stop. Stop. Stop. Stop.").as_deref(),
            Some("Stop.")
        );
        assert_eq!(
            loop_unit("Volume up. volume up! Volume").as_deref(),
            Some("Volume up.")
        );
        // Anything else in it, or a single copy: not a loop.
        assert_eq!(loop_unit("Stop. Stop. Stop the music."), None);
        assert_eq!(loop_unit("Turn on the lights. Turn off the lights."), None);
        assert_eq!(loop_unit("Who wrote the book Moby Dick? Who"), None);
        assert_eq!(loop_unit("Stop."), None);
        assert_eq!(loop_unit(""), None);
    }

    #[test]
    fn the_plan_ends_at_the_full_window() {
        let plan = super::context_plan(2.0, 1500);
        assert_eq!(plan, vec![256, 512, 1500]);
        assert_eq!(super::context_plan(40.0, 1500), vec![1500]);
    }

    #[test]
    fn markers_are_not_text() {
        assert_eq!(super::clean(" [BLANK_AUDIO]"), "");
        assert_eq!(super::clean(" (silence) "), "");
        assert_eq!(super::clean("  Turn on   the light."), "Turn on the light.");
    }
}

//! `coda bench echo`: echo cancellation in a synthetic room. The assistant's voice
//! (espeak-ng) plays; the microphone hears it through a decaying room response delayed
//! `--delays` ms, plus a second talker who starts speaking over it after 3 s (barge-in),
//! plus a little noise. The canceller runs on 10 ms frames exactly as on the capture
//! thread (the reference fed as it plays); measured: echo reduction (ERLE) before and
//! after 1 s, and the second talker's words through whisper from the clean recording,
//! the raw microphone and the cancelled one.

use anyhow::{bail, Context};
use coda_actors::audio::convert::rms;
use coda_actors::audio::echo::{EchoCanceller, EchoReference, FRAME};
use coda_actors::audio::vad::{Vad, VadEvent, VadSettings, FRAME as VAD_FRAME};
use coda_actors::wake::synth::{speak, Voice};
use serde::Serialize;

use crate::config::Loaded;

/// `coda bench echo` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct EchoBenchArgs {
    /// Echo path delays to measure, ms (speaker → microphone, device buffers included).
    #[arg(long, value_delimiter = ',', default_values_t = [40u32, 80, 120])]
    pub delays: Vec<u32>,
    /// Level of the echo against the second talker, dB (positive: the speaker is louder).
    #[arg(long, default_value_t = 6.0, allow_negative_numbers = true)]
    pub echo_db: f64,
    /// Energy of the room's reflections against the direct sound, dB (-10: a speaker a
    /// few cm from the microphone in a furnished room; 0 or more: far off, bare walls).
    #[arg(long, default_value_t = -10.0, allow_negative_numbers = true)]
    pub reverb_db: f64,
    /// Seed of the room's reflections and the noise floor (other rooms of the same kind).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Skip whisper (echo reduction only).
    #[arg(long)]
    pub no_stt: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What the assistant says (it keeps talking through the barge-in).
const ASSISTANT: &str = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. It is easy to tell the depth of a well. These days a chicken leg is a rare dish. Rice is often served in round bowls.";

/// What the person says over it, one per delay in turn.
const PERSON: [&str; 3] = [
    "stop and set a timer for ten minutes",
    "what is the weather like in paris tomorrow",
    "turn off the lights in the living room",
];

const ASSISTANT_VOICE: Voice = Voice {
    voice: "en-us",
    variant: "m3",
    wpm: 165,
    pitch: 50,
};
const PERSON_VOICE: Voice = Voice {
    voice: "en-gb",
    variant: "f2",
    wpm: 160,
    pitch: 60,
};

/// The person starts talking here, s.
const BARGE_IN_S: f64 = 3.0;
/// With barge-in the assistant falls silent this long after the VAD starts the person's
/// utterance: the speaker's 5 ms tick and its buffer (`coda bench audio`), rounded up.
const SPEAKER_STOP_MS: f64 = 20.0;
const RATE: usize = 16_000;

#[derive(Debug, Serialize)]
struct Row {
    delay_ms: u32,
    /// Echo reduction (ERLE) over the first 0.5 s, 0.5–1 s and the rest of the echo-only
    /// audio, dB.
    erle_0_500ms_db: f64,
    erle_500_1000ms_db: f64,
    erle_after_1s_db: f64,
    /// Echo reduction while both talk (of the echo part, from a run on the echo alone).
    erle_double_talk_db: f64,
    said: String,
    /// The person's words recorded without the echo.
    clean: Option<Heard>,
    /// The assistant stops speaking when the VAD hears the person start (what barge-in
    /// by voice does).
    barge_in: Case,
    /// The assistant talks on over the person (barge-in off).
    talk_over: Case,
    /// When the VAD starts the person's utterance in the recording without the echo, ms
    /// after their voice begins: the detector's own delay, which no canceller removes.
    vad_clean_start_ms: Option<f64>,
    /// Utterances the VAD starts on the cancelled audio while the assistant speaks alone,
    /// over the whole of its speech (`assistant_speech_s`): each one, with barge-in on,
    /// pauses the answer until it is transcribed.
    vad_false_starts_echo_only: usize,
    /// What whisper makes of each of them (AEC3's linear output over the utterance, as
    /// Coda cuts it): an empty text lets the answer go on, and so do words that are the
    /// answer's own (`false_starts_own_voice`); other words interrupt it.
    false_starts_heard: Option<Vec<String>>,
    /// Of those with words, how many the orchestrator takes for the answer's own voice
    /// (matched here against the whole answer; Coda matches the sentences being played).
    false_starts_own_voice: Option<usize>,
    assistant_speech_s: f64,
    /// CPU of the canceller, % of one core in real time.
    cpu_percent_of_one_core: f64,
    underruns: u64,
}

#[derive(Debug, Serialize)]
struct Case {
    /// The raw microphone.
    microphone: Option<Heard>,
    /// The fully cancelled audio (what the VAD and the wake word hear).
    cancelled: Option<Heard>,
    /// What Coda transcribes: AEC3's linear output (the echo path's estimate subtracted,
    /// nothing suppressed), cut where the VAD on the cancelled audio starts the utterance.
    transcribed: Option<Heard>,
    /// Utterances the VAD starts on the assistant's own voice before the person speaks.
    vad_false_starts_microphone: usize,
    vad_false_starts_cancelled: usize,
    /// When the VAD (as configured) starts the person's utterance in the cancelled audio,
    /// ms after the person's voice begins (the recording's leading silence excluded):
    /// what triggers barge-in.
    vad_person_start_ms: Option<f64>,
    /// When the assistant fell silent, ms after the person started (barge-in).
    assistant_stopped_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Heard {
    text: String,
    wer_percent: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    echo_db: f64,
    reverb_db: f64,
    seed: u64,
    rows: Vec<Row>,
}

/// A room response: the direct sound after `delay` samples, then 250 ms of
/// exponentially decaying reflections (RT60 250 ms) carrying `reverb_db` of the direct
/// sound's energy; seeded so runs compare.
fn room(delay: usize, reverb_db: f64, seed: u64) -> Vec<f32> {
    let tail = RATE / 4;
    let reflections = noise(tail, seed, 1.0);
    let mut ir = vec![0.0; delay + tail];
    ir[delay] = 1.0;
    // 60 dB down in 250 ms.
    let decay = (1e-3f32).powf(1.0 / (0.25 * RATE as f32));
    // Uniform noise has energy 1/3 per sample; the decay sums to 1 / (1 - decay²).
    let energy = 10f32.powf(reverb_db as f32 / 10.0);
    let mut g = (energy * 3.0 * (1.0 - decay * decay)).sqrt();
    for (v, n) in ir.iter_mut().skip(delay + 16).zip(&reflections) {
        *v = g * n;
        g *= decay;
    }
    ir
}

/// `x` through `h` (FFT convolution), `x.len()` samples.
fn convolve(x: &[f32], h: &[f32]) -> Vec<f32> {
    use realfft::RealFftPlanner;
    let n = (x.len() + h.len()).next_power_of_two();
    let mut planner = RealFftPlanner::<f32>::new();
    let fwd = planner.plan_fft_forward(n);
    let inv = planner.plan_fft_inverse(n);
    let spectrum = |v: &[f32]| {
        let mut buf = vec![0.0; n];
        buf[..v.len()].copy_from_slice(v);
        let mut out = fwd.make_output_vec();
        let _ = fwd.process(&mut buf, &mut out);
        out
    };
    let (a, b) = (spectrum(x), spectrum(h));
    let mut prod: Vec<_> = a.iter().zip(&b).map(|(p, q)| p * q).collect();
    let mut out = vec![0.0; n];
    let _ = inv.process(&mut prod, &mut out);
    let scale = 1.0 / n as f32;
    out.truncate(x.len());
    out.iter_mut().for_each(|v| *v *= scale);
    out
}

/// Uniform noise in ±`amp`, seeded so runs compare.
fn noise(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-amp..=amp)).collect()
}

fn db(ratio: f64) -> f64 {
    10.0 * ratio.max(1e-12).log10()
}

/// Energy ratio of `echo` to `left` over `range` (samples), dB.
fn erle(echo: &[f32], left: &[f32], range: std::ops::Range<usize>) -> f64 {
    erle_over(echo, left, &[range])
}

/// Energy ratio of `echo` to `left` over `ranges` (samples) together, dB.
fn erle_over(echo: &[f32], left: &[f32], ranges: &[std::ops::Range<usize>]) -> f64 {
    let energy = |v: &[f32]| -> f64 {
        ranges
            .iter()
            .flat_map(|r| v[r.clone()].iter())
            .map(|x| f64::from(*x).powi(2))
            .sum()
    };
    db(energy(echo) / energy(left).max(1e-12))
}

/// Runs the canceller over `mic` with `far` as what played, frame by frame as the capture
/// thread does; returns the output (aligned with `mic`) and its CPU time, µs.
fn cancel(far: &[f32], mic: &[f32]) -> anyhow::Result<Cancelled> {
    let reference = EchoReference::new();
    let mut c = EchoCanceller::new(reference.clone())?;
    let (mut out, mut linear) = (Vec::with_capacity(mic.len()), Vec::with_capacity(mic.len()));
    let cpu0 = super::thread_cpu_us();
    for (i, m) in mic.chunks(FRAME).enumerate() {
        let f = far
            .get(i * FRAME..((i + 1) * FRAME).min(far.len()))
            .unwrap_or(&[]);
        reference.played(RATE as u32, f);
        let (o, l) = c.process_both(m);
        out.extend(o);
        linear.extend(l);
    }
    let cpu_us = super::thread_cpu_us().saturating_sub(cpu0);
    out.resize(mic.len(), 0.0);
    linear.resize(mic.len(), 0.0);
    Ok(Cancelled {
        out,
        linear,
        cpu_us,
        underruns: c.stats().underruns,
    })
}

/// What [`cancel`] made of a recording.
struct Cancelled {
    out: Vec<f32>,
    linear: Vec<f32>,
    cpu_us: u64,
    underruns: u64,
}

/// Samples of leading silence in a recording: up to its first 5 ms whose level is within
/// 30 dB of its loudest 5 ms.
fn speech_onset(audio: &[f32]) -> usize {
    let win = RATE / 200;
    let loudest = audio.chunks(win).map(rms).fold(0.0f32, f32::max);
    audio
        .chunks(win)
        .position(|c| rms(c) >= loudest * 10f32.powf(-30.0 / 20.0))
        .map_or(0, |i| i * win)
}

/// Utterance starts of the VAD over `audio`, as sample positions where it fired.
fn vad_starts(audio: &[f32], settings: VadSettings) -> Vec<usize> {
    vad_utterances(audio, settings)
        .into_iter()
        .map(|u| u.start)
        .collect()
}

/// The VAD's utterances over `audio`: from where it fired to where it declared the end
/// (or the end of the audio).
fn vad_utterances(audio: &[f32], settings: VadSettings) -> Vec<std::ops::Range<usize>> {
    let mut vad = Vad::new(settings);
    let mut found: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, f) in audio.chunks_exact(VAD_FRAME).enumerate() {
        let at = (i + 1) * VAD_FRAME;
        match vad.push_frame(f) {
            VadEvent::SpeechStart { .. } => found.push(at..audio.len()),
            VadEvent::SpeechEnd { .. } => {
                if let Some(u) = found.last_mut() {
                    u.end = at;
                }
            }
            VadEvent::None => {}
        }
    }
    found
}

/// "N ms in", or "never".
fn ms_in(ms: Option<f64>) -> String {
    ms.map(|v| format!("{v:.0} ms in"))
        .unwrap_or_else(|| "never".into())
}

/// `coda bench echo`.
pub fn run(loaded: &Loaded, args: EchoBenchArgs) -> anyhow::Result<()> {
    if args.delays.is_empty() {
        bail!("--delays needs at least one delay");
    }
    let espeak = &loaded.settings.wake_settings().espeak;
    let segment = loaded.settings.audio_settings().segment;
    let vad_settings = segment.vad;
    let far = speak(espeak, &ASSISTANT_VOICE, ASSISTANT).context("the assistant's voice")?;
    #[cfg(feature = "stt")]
    let engine = if args.no_stt {
        None
    } else {
        let s = crate::cmd::transcribe::stt_settings(loaded, None, None);
        Some(coda_actors::stt::load_engine(&s)?)
    };
    let ms = |t: usize| t * RATE / 1000;
    let mut rows = Vec::new();
    for (k, &delay_ms) in args.delays.iter().enumerate() {
        let said = PERSON[k % PERSON.len()];
        let near = speak(espeak, &PERSON_VOICE, said).context("the second talker's voice")?;
        let start = (BARGE_IN_S * RATE as f64) as usize;
        let end = start + near.len();
        // Where the person's voice begins: espeak-ng's recording opens with silence,
        // which is not speech to stop for.
        let onset = start + speech_onset(&near);
        let after_onset = |p: usize| (p as f64 - onset as f64) * 1000.0 / RATE as f64;
        // Where the VAD first starts an utterance once the person is there.
        let heard_in = |starts: &[usize]| starts.iter().copied().find(|&p| p >= start);
        if end + RATE > far.len() {
            bail!("the assistant's speech is too short for the barge-in");
        }
        let len = far.len();
        let seed = k as u64 + 100 * args.seed;
        let ir = room(delay_ms as usize * RATE / 1000, args.reverb_db, 11 + seed);
        // Levels: the echo `echo_db` above the person's speech (the same gain when the
        // assistant stops early).
        let near_level = rms(&near).max(1e-6);
        let gain = near_level * 10f32.powf(args.echo_db as f32 / 20.0)
            / rms(&convolve(&far, &ir)).max(1e-6);
        let floor = noise(len, 5 + seed, near_level * 0.003);
        let mut clean: Vec<f32> = floor.clone();
        for (c, n) in clean[start..end].iter_mut().zip(&near) {
            *c += n;
        }
        // The microphone when the assistant plays `played`: its echo in the room over the
        // person and the noise floor.
        let echo_of = |played: &[f32]| -> Vec<f32> {
            convolve(played, &ir).iter().map(|v| v * gain).collect()
        };
        let mic_of =
            |echo: &[f32]| -> Vec<f32> { clean.iter().zip(echo).map(|(c, e)| c + e).collect() };

        // What the Segmenter cuts: from its pre-roll before the VAD's start (or before the
        // person, for the recordings no VAD decides on) to 500 ms after the person.
        let preroll = ms((segment.preroll_ms + vad_settings.start_ms) as usize);
        let cut = |from: usize| from.saturating_sub(preroll)..(end + ms(500)).min(len);
        #[cfg(feature = "stt")]
        let hear =
            |audio: &[f32], window: std::ops::Range<usize>| -> anyhow::Result<Option<Heard>> {
                let Some(engine) = engine.as_ref() else {
                    return Ok(None);
                };
                let t = engine.transcribe(&audio[window], None)?;
                Ok(Some(Heard {
                    wer_percent: 100.0 * crate::wer::wer(said, &t.text),
                    text: t.text.trim().to_string(),
                }))
            };
        #[cfg(not(feature = "stt"))]
        let hear =
            |_: &[f32], _: std::ops::Range<usize>| -> anyhow::Result<Option<Heard>> { Ok(None) };

        // One run of the canceller over the room while the assistant plays `played`.
        let case = |played: &[f32],
                    echo: &[f32],
                    stopped: Option<f64>|
         -> anyhow::Result<(Case, Cancelled)> {
            let mic = mic_of(echo);
            let c = cancel(played, &mic)?;
            let before = |v: &[usize]| v.iter().filter(|&&p| p < start).count();
            let cancelled = vad_starts(&c.out, vad_settings);
            let heard_at = heard_in(&cancelled);
            let window = cut(heard_at.unwrap_or(start));
            let case = Case {
                microphone: hear(&mic, cut(start))?,
                cancelled: hear(&c.out, window.clone())?,
                transcribed: hear(&c.linear, window)?,
                vad_false_starts_microphone: before(&vad_starts(&mic, vad_settings)),
                vad_false_starts_cancelled: before(&cancelled),
                vad_person_start_ms: heard_at.map(after_onset),
                assistant_stopped_ms: stopped,
            };
            Ok((case, c))
        };
        // Talked over; then the assistant stops where that run's VAD heard the person start
        // (plus the speaker's stop), as barge-in does.
        let echo = echo_of(&far);
        let (talk_over, measured) = case(&far, &echo, None)?;
        let stop_ms = talk_over.vad_person_start_ms.unwrap_or(1000.0) + SPEAKER_STOP_MS;
        let mut stopped = far.clone();
        stopped[(onset + ms(stop_ms.max(0.0) as usize)).min(len)..].fill(0.0);
        let (barge_in, _) = case(&stopped, &echo_of(&stopped), Some(stop_ms))?;
        let out = &measured.out;
        // The echo alone through the canceller, for its reduction while both talk.
        let echo_only: Vec<f32> = echo.iter().zip(&floor).map(|(e, n)| e + n).collect();
        let echo_alone = cancel(&far, &echo_only)?;
        let false_starts = vad_utterances(&echo_alone.out, vad_settings);
        // `None` without whisper (`--no-stt`).
        let false_starts_heard: Option<Vec<String>> = false_starts
            .iter()
            .map(|u| hear(&echo_alone.linear, u.start.saturating_sub(preroll)..u.end))
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .map(|h| h.map(|h| h.text))
            .collect();
        let echo_out = echo_alone.out;
        let secs = len as f64 / RATE as f64;
        rows.push(Row {
            delay_ms,
            erle_0_500ms_db: erle(&echo, out, 0..ms(500)),
            erle_500_1000ms_db: erle(&echo, out, ms(500)..ms(1000)),
            // Both echo-only stretches after 1 s.
            erle_after_1s_db: erle_over(&echo, out, &[ms(1000)..start, end + ms(300)..len]),
            erle_double_talk_db: erle(&echo, &echo_out, start..end),
            said: said.to_string(),
            clean: hear(&clean, cut(start))?,
            vad_clean_start_ms: heard_in(&vad_starts(&clean, vad_settings)).map(after_onset),
            vad_false_starts_echo_only: false_starts.len(),
            false_starts_own_voice: false_starts_heard.as_ref().map(|texts| {
                texts
                    .iter()
                    .filter(|t| coda_actors::orchestrator::own_voice::is_own_voice(t, ASSISTANT))
                    .count()
            }),
            false_starts_heard,
            assistant_speech_s: secs,
            barge_in,
            talk_over,
            cpu_percent_of_one_core: measured.cpu_us as f64 / 1e4 / secs,
            underruns: measured.underruns,
        });
    }
    let report = Report {
        echo_db: args.echo_db,
        reverb_db: args.reverb_db,
        seed: args.seed,
        rows,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "echo cancellation (AEC3), synthetic room {} (reflections {:+.0} dB, RT60 250 ms), echo {:+.0} dB over the second talker",
        report.seed, report.reverb_db, report.echo_db
    );
    for r in &report.rows {
        println!(
            "  delay {:>3} ms: echo reduced {:>5.1} dB in 0–0.5 s, {:>5.1} dB in 0.5–1 s, {:>5.1} dB after 1 s, {:>5.1} dB while both talk; CPU {:.1}% of a core",
            r.delay_ms,
            r.erle_0_500ms_db,
            r.erle_500_1000ms_db,
            r.erle_after_1s_db,
            r.erle_double_talk_db,
            r.cpu_percent_of_one_core
        );
        println!(
            "    the VAD starts on the assistant's voice alone, cancelled: {} in {:.1} s; on the person without the echo: {}",
            r.vad_false_starts_echo_only,
            r.assistant_speech_s,
            ms_in(r.vad_clean_start_ms)
        );
        if let Some(texts) = r.false_starts_heard.as_ref().filter(|t| !t.is_empty()) {
            let worded: Vec<&String> = texts.iter().filter(|t| !t.is_empty()).collect();
            println!(
                "      transcribed: {} without words, {} the answer's own words (it goes on), {} other words (it stops): {worded:?}",
                texts.len() - worded.len(),
                r.false_starts_own_voice.unwrap_or(0),
                worded.len() - r.false_starts_own_voice.unwrap_or(0)
            );
        }
        if let Some(h) = &r.clean {
            println!(
                "    clean                 WER {:>5.1}%  {:?}",
                h.wer_percent, h.text
            );
        }
        for (case, c) in [("talk-over", &r.talk_over), ("barge-in", &r.barge_in)] {
            println!(
                "    {case}: VAD starts on the assistant's voice: {} raw, {} cancelled; the person's start heard {}{}",
                c.vad_false_starts_microphone,
                c.vad_false_starts_cancelled,
                ms_in(c.vad_person_start_ms),
                c.assistant_stopped_ms
                    .map(|v| format!("; the assistant stopped {v:.0} ms in"))
                    .unwrap_or_default()
            );
            for (what, h) in [
                ("microphone", &c.microphone),
                ("cancelled", &c.cancelled),
                ("transcribed", &c.transcribed),
            ] {
                if let Some(h) = h {
                    println!(
                        "      {what:<11}         WER {:>5.1}%  {:?}",
                        h.wer_percent, h.text
                    );
                }
            }
        }
    }
    Ok(())
}

//! The built-in detector: the wake word's reference is a set of example utterances kept as
//! feature frames ([`features`]) and a codebook of speech sounds; frames are compared as
//! posteriorgrams (how each falls among the codebook's sounds), which vary less between
//! speakers than the features do. Each 10 ms of input extends a subsequence dynamic time
//! warping (DTW) match against every example, and the word is detected where the mean
//! frame distance along the best paths of the [`BEST_OF`] closest examples is low enough. The detection is reported once the
//! match has stopped improving for [`PATIENCE`] frames, i.e. ~60 ms after the word ends,
//! with where the word started and ended in the stream (so what follows it can be
//! transcribed without it).

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::features::{self, Frame, MeanNorm, Mfcc, Raw, HOP, WINDOW};
use super::{Detection, WakeDetector, WakeError};

/// The wake word starts a request: it is said after a pause (this long, at least this
/// much quieter than the word), not in the middle of a sentence. Matches inside running
/// speech were most of the false wakes (`coda bench wake`: 374 an hour at 96.9 % of the
/// words detected without the check, 18 an hour at 100 % with it).
pub const PAUSE_MS: u64 = 200;
pub const PAUSE_DB: f32 = 10.0;
/// In noise the pause is only as quiet as the noise: a pause within this much of the
/// quietest [`PAUSE_MS`] of the last seconds counts too, when the word stands at least
/// [`PAUSE_DB_IN_NOISE`] above it (at 10 dB SNR the 10 dB rule refused most words).
pub const FLOOR_DB: f32 = 3.0;
pub const PAUSE_DB_IN_NOISE: f32 = 5.0;

/// Frames without a better match before a detection is reported.
pub const PATIENCE: u64 = 6;
/// A slow speaker's word can match the examples before it ends ("hey co…"), dip at a
/// closure and match far better at its real end (`coda bench wake`: 0.037, then 0.091
/// 300 ms later). A match overlapping the last one reported is reported again when its
/// score is at least this many times better and it ends [`REVISE_LATER`] frames later or
/// more; other overlapping ones are the same word. (The partial and the whole word differed
/// 2–2.5× where measured; a small gain would send every wobble of a match to the check.)
pub const REVISE_GAIN: f32 = 1.5;
pub const REVISE_LATER: u64 = 10;
/// Version of the reference file format (and of the features it holds).
pub const FORMAT: u32 = 1;
/// Examples averaged for a detection's score: one example matching by chance is not
/// enough.
pub const BEST_OF: usize = 3;

/// A wake word reference: what `coda wake train` writes and the detector matches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reference {
    /// Format version ([`FORMAT`]).
    pub format: u32,
    /// The words, e.g. `hey coda`.
    pub word: String,
    /// Where the examples came from (`espeak-ng`, file names): for `coda wake info`.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Feature frames of each example (trimmed of silence).
    pub examples: Vec<Vec<Frame>>,
    /// Centroids of speech sounds (spherical k-means over the examples and other speech):
    /// frames are compared by how they fall among these (posteriorgrams), which varies
    /// less between speakers than the features themselves.
    #[serde(default)]
    pub codebook: Vec<Frame>,
}

/// Sounds in the codebook.
pub const CODEBOOK: usize = 64;
/// Sounds of each input frame's posterior the matcher uses.
const TOP_SOUNDS: usize = 16;

/// Spherical k-means of `frames` into at most `k` unit centroids (deterministic).
pub fn codebook(frames: &[Frame], k: usize) -> Vec<Frame> {
    if frames.is_empty() {
        return Vec::new();
    }
    let k = k.min(frames.len());
    let stride = frames.len() / k;
    let mut centroids: Vec<Frame> = (0..k).map(|i| frames[i * stride]).collect();
    let mut assign = vec![0usize; frames.len()];
    for _ in 0..12 {
        for (a, f) in assign.iter_mut().zip(frames) {
            *a = nearest(&centroids, f);
        }
        let mut sums = vec![[0f32; features::DIMS]; k];
        for (a, f) in assign.iter().zip(frames) {
            for (s, v) in sums[*a].iter_mut().zip(f) {
                *s += v;
            }
        }
        for (c, mut sum) in centroids.iter_mut().zip(sums) {
            if sum.iter().any(|v| *v != 0.0) {
                features::normalize(&mut sum);
                *c = sum;
            }
        }
    }
    centroids
}

fn dot(a: &Frame, b: &Frame) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn nearest(centroids: &[Frame], f: &Frame) -> usize {
    let mut best = (0, f32::MIN);
    for (i, c) in centroids.iter().enumerate() {
        let d = dot(c, f);
        if d > best.1 {
            best = (i, d);
        }
    }
    best.0
}

/// Sharpness of the posteriorgram (a softmax over cosine similarities); chosen with
/// `coda bench wake` (10 and 35 separated worse).
const BETA: f32 = 20.0;

/// How `f` falls among the `codebook` sounds (sums to 1).
fn posterior(codebook: &[Frame], f: &Frame, out: &mut Vec<f32>) {
    out.clear();
    out.extend(codebook.iter().map(|c| BETA * dot(c, f)));
    let max = out.iter().copied().fold(f32::MIN, f32::max);
    let mut sum = 0.0;
    for v in out.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in out.iter_mut() {
        *v /= sum;
    }
}

/// Shortest and longest example accepted, ms.
const MIN_EXAMPLE_MS: usize = 200;
const MAX_EXAMPLE_MS: usize = 3000;

impl Reference {
    /// Builds a reference from 16 kHz clips of the word (each trimmed of the silence
    /// around it). Clips too short or long after trimming are refused, naming which.
    pub fn build(
        word: &str,
        clips: &[(String, Vec<f32>)],
        background: &[Vec<f32>],
    ) -> Result<Reference, WakeError> {
        if clips.is_empty() {
            return Err(WakeError::Invalid("no example recordings given".into()));
        }
        let mut examples = Vec::with_capacity(clips.len());
        let mut sources = Vec::with_capacity(clips.len());
        for (name, clip) in clips {
            let word_audio = trim(clip);
            let ms = word_audio.len() / 16;
            if !(MIN_EXAMPLE_MS..=MAX_EXAMPLE_MS).contains(&ms) {
                return Err(WakeError::Invalid(format!(
                    "{name}: {ms} ms of sound after trimming silence; a wake word example must be {MIN_EXAMPLE_MS}–{MAX_EXAMPLE_MS} ms"
                )));
            }
            examples.push(features::of_clip(word_audio));
            sources.push(name.clone());
        }
        let mut pool: Vec<Frame> = examples.iter().flatten().copied().collect();
        for clip in background {
            pool.extend(features::of_clip(trim(clip)));
        }
        let codebook = codebook(&pool, CODEBOOK);
        Ok(Reference {
            format: FORMAT,
            word: word.trim().to_string(),
            sources,
            examples,
            codebook,
        })
    }

    /// Reads a reference file.
    pub fn load(path: &Path) -> Result<Reference, WakeError> {
        let bytes = std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                WakeError::Missing(path.display().to_string())
            } else {
                WakeError::Invalid(format!("cannot read {}: {e}", path.display()))
            }
        })?;
        Self::from_bytes(&bytes).map_err(|e| WakeError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Parses and checks a reference.
    pub fn from_bytes(bytes: &[u8]) -> Result<Reference, String> {
        let r: Reference =
            serde_json::from_slice(bytes).map_err(|e| format!("not a wake word reference: {e}"))?;
        if r.format != FORMAT {
            return Err(format!(
                "reference format {} (this coda reads {FORMAT}); build it again with `coda wake train`",
                r.format
            ));
        }
        let max = MAX_EXAMPLE_MS / 10 + 10;
        if r.examples.is_empty()
            || r.codebook.is_empty()
            || r.examples.iter().any(|e| e.len() < 3 || e.len() > max)
            || r.examples
                .iter()
                .flatten()
                .flatten()
                .any(|v| !v.is_finite())
            || r.codebook.iter().flatten().any(|v| !v.is_finite())
        {
            return Err("the reference holds no usable examples".into());
        }
        Ok(r)
    }

    /// Writes the reference (to a temporary file first, so a reader never sees half).
    pub fn save(&self, path: &Path) -> Result<(), WakeError> {
        let bytes = serde_json::to_vec(self).map_err(|e| WakeError::Invalid(e.to_string()))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| WakeError::Invalid(format!("cannot create {}: {e}", dir.display())))?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| WakeError::Invalid(format!("cannot write {}: {e}", path.display())))
    }
}

/// The part of `clip` between its first and last frame within 35 dB of its loudest (and
/// above -60 dBFS), with 30 ms either side.
pub fn trim(clip: &[f32]) -> &[f32] {
    let db: Vec<f32> = clip
        .chunks(HOP)
        .map(crate::audio::vad::frame_dbfs)
        .collect();
    let peak = db.iter().copied().fold(f32::MIN, f32::max);
    let floor = (peak - 35.0).max(-60.0);
    let (Some(first), Some(last)) = (
        db.iter().position(|&d| d > floor),
        db.iter().rposition(|&d| d > floor),
    ) else {
        return &clip[..0];
    };
    let start = (first * HOP).saturating_sub(480);
    let end = ((last + 1) * HOP + 480).min(clip.len());
    &clip[start..end]
}

/// A loaded reference, shared by every detector made from it.
pub struct TemplateModel {
    word: String,
    examples: Arc<[Vec<Vec<f32>>]>,
    codebook: Arc<[Frame]>,
    threshold: f32,
}

impl TemplateModel {
    /// Detectors of `reference` report scores at or above `threshold` (0–1).
    pub fn new(reference: Reference, threshold: f32) -> TemplateModel {
        let codebook: Arc<[Frame]> = reference.codebook.into();
        let mut p = Vec::new();
        let examples = reference
            .examples
            .iter()
            .map(|e| {
                e.iter()
                    .map(|f| {
                        posterior(&codebook, f, &mut p);
                        p.clone()
                    })
                    .collect()
            })
            .collect();
        TemplateModel {
            word: reference.word,
            examples,
            codebook,
            threshold,
        }
    }

    pub fn word(&self) -> &str {
        &self.word
    }

    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    pub fn detector(&self) -> TemplateDetector {
        self.detector_at(self.threshold)
    }

    /// A detector reporting scores at or above `threshold` instead.
    pub fn detector_at(&self, threshold: f32) -> TemplateDetector {
        TemplateDetector::new(
            self.word.clone(),
            self.examples.clone(),
            self.codebook.clone(),
            threshold,
        )
    }
}

/// Best path ending at one example frame: accumulated distance, steps, first sample.
#[derive(Clone, Copy)]
struct Cell {
    cost: f32,
    steps: u32,
    start: u64,
    /// Steps in a row that advanced only one side (input or example).
    skew: u8,
}

/// At most this many one-sided steps in a row: a path may stretch or squeeze the word
/// (speaking rates differ) but not hold one frame against a whole syllable.
const MAX_SKEW: u8 = 3;

const EMPTY: Cell = Cell {
    cost: f32::INFINITY,
    steps: 1,
    start: 0,
    skew: 0,
};

impl Cell {
    fn mean(&self) -> f32 {
        self.cost / self.steps as f32
    }
}

#[derive(Clone, Copy)]
struct Candidate {
    score: f32,
    start: u64,
    end: u64,
}

/// One stream's detector.
pub struct TemplateDetector {
    word: String,
    examples: Arc<[Vec<Vec<f32>>]>,
    codebook: Arc<[Frame]>,
    post: Vec<f32>,
    top: Vec<(usize, f32)>,
    threshold: f32,
    mfcc: Mfcc,
    norm: MeanNorm,
    columns: Vec<Vec<Cell>>,
    next: Vec<Cell>,
    frames: Vec<(u64, Raw)>,
    candidate: Option<Candidate>,
    /// The last detection reported: matches overlapping it are that word again.
    reported: Option<Candidate>,
    ends: Vec<(f32, u64)>,
    /// The best score seen since the last [`TemplateDetector::best_score`] call.
    best: f32,
    /// Recent frames' energy: (window end, dB).
    energy: std::collections::VecDeque<(u64, f32)>,
}

impl TemplateDetector {
    fn new(
        word: String,
        examples: Arc<[Vec<Vec<f32>>]>,
        codebook: Arc<[Frame]>,
        threshold: f32,
    ) -> TemplateDetector {
        let columns = examples.iter().map(|e| vec![EMPTY; e.len()]).collect();
        TemplateDetector {
            word,
            examples,
            codebook,
            post: Vec::new(),
            top: Vec::new(),
            threshold,
            mfcc: Mfcc::new(),
            norm: MeanNorm::default(),
            columns,
            next: Vec::new(),
            frames: Vec::new(),
            candidate: None,
            reported: None,
            ends: Vec::new(),
            best: 0.0,
            energy: std::collections::VecDeque::new(),
        }
    }

    /// The highest score since the last call (for `coda wake test --scores`).
    pub fn best_score(&mut self) -> f32 {
        std::mem::take(&mut self.best)
    }

    fn step(&mut self, end: u64, x: &Frame) -> Option<Detection> {
        let start_here = end.saturating_sub(WINDOW as u64);
        self.ends.clear();
        posterior(&self.codebook, x, &mut self.post);
        // The input frame's few likeliest sounds carry nearly all of its posterior: the
        // similarity to an example frame is summed over those alone.
        self.top.clear();
        self.top.extend(self.post.iter().copied().enumerate());
        let k = TOP_SOUNDS.min(self.top.len());
        if k > 0 {
            self.top
                .select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
        }
        self.top.truncate(k);
        let q = &self.top;
        for (example, col) in self.examples.iter().zip(self.columns.iter_mut()) {
            let m = example.len();
            self.next.clear();
            for (j, t) in example.iter().enumerate() {
                let sim: f32 = q.iter().map(|&(i, v)| t[i] * v).sum();
                let d = -(sim.max(1e-3)).ln();
                let (from, skew) = if j == 0 {
                    let fresh = Cell {
                        cost: 0.0,
                        steps: 0,
                        start: start_here,
                        skew: 0,
                    };
                    (fresh, 0)
                } else {
                    let mut best = (col[j - 1], 0);
                    for c in [col[j], self.next[j - 1]] {
                        if c.skew < MAX_SKEW && c.mean() < best.0.mean() {
                            best = (c, c.skew + 1);
                        }
                    }
                    best
                };
                self.next.push(Cell {
                    cost: from.cost + d,
                    steps: from.steps + 1,
                    start: from.start,
                    skew,
                });
            }
            col.copy_from_slice(&self.next);
            let last = col[m - 1];
            let frames = (end - last.start) / HOP as u64;
            if last.cost.is_finite() && frames >= m as u64 / 2 && frames <= 2 * m as u64 {
                self.ends.push((last.mean(), last.start));
            }
        }
        if self.ends.len() < BEST_OF.min(self.examples.len()) {
            return self.settle(end);
        }
        self.ends.sort_by(|a, b| a.0.total_cmp(&b.0));
        let k = BEST_OF.min(self.ends.len());
        let mean = self.ends[..k].iter().map(|e| e.0).sum::<f32>() / k as f32;
        let score = (-mean).exp().clamp(0.0, 1.0);
        self.best = self.best.max(score);
        let start = self.ends[0].1;
        let same_word = self.reported.is_some_and(|r| {
            start < r.end
                && (score < r.score * REVISE_GAIN || end < r.end + REVISE_LATER * HOP as u64)
        });
        if score >= self.threshold && !same_word && self.candidate.is_none_or(|c| score > c.score) {
            self.candidate = Some(Candidate { score, start, end });
        }
        self.settle(end)
    }

    /// Reports the candidate once it has not improved for [`PATIENCE`] frames.
    fn settle(&mut self, end: u64) -> Option<Detection> {
        let c = self.candidate?;
        if end < c.end + PATIENCE * HOP as u64 {
            return None;
        }
        self.candidate = None;
        if !self.paused_before(&c) {
            return None;
        }
        // The paths go on: a better reading of the same word may still come (see
        // [`REVISE_GAIN`]); weaker ones overlapping this are suppressed.
        self.reported = Some(c);
        Some(self.detection(&c))
    }

    fn detection(&self, c: &Candidate) -> Detection {
        Detection {
            word: self.word.clone(),
            score: c.score,
            start: c.start,
            end: c.end,
            verified: None,
        }
    }

    /// The word's mean level, dB (the frames wholly inside it).
    fn word_db(&self, start: u64, end: u64) -> Option<f32> {
        self.mean_db(start + WINDOW as u64, end)
    }

    fn mean_db(&self, from: u64, to: u64) -> Option<f32> {
        let v: Vec<f32> = self
            .energy
            .iter()
            .filter(|(e, _)| *e > from && *e <= to)
            .map(|(_, d)| *d)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f32>() / v.len() as f32)
    }

    /// Is `quiet` a pause beside a word at `word` dB: [`PAUSE_DB`] quieter, or in noise
    /// as quiet as the stream gets ([`FLOOR_DB`]) and [`PAUSE_DB_IN_NOISE`] quieter.
    fn is_pause(&self, word: f32, quiet: f32) -> bool {
        word - quiet >= PAUSE_DB
            || (word - quiet >= PAUSE_DB_IN_NOISE && quiet <= self.floor() + FLOOR_DB)
    }

    /// Was the word said after a pause: the [`PAUSE_MS`] before it at least
    /// [`PAUSE_DB`] quieter than the word, or as quiet as the stream gets ([`FLOOR_DB`])?
    fn paused_before(&self, c: &Candidate) -> bool {
        // At the very start of the stream there is nothing before: a pause.
        let Some(before) = self.mean_db(c.start.saturating_sub(PAUSE_MS * 16), c.start) else {
            return true;
        };
        let word = self.word_db(c.start, c.end).unwrap_or(before);
        self.is_pause(word, before)
    }

    /// The quietest [`PAUSE_MS`] in the energy kept (the last 8 s), dB.
    fn floor(&self) -> f32 {
        let n = (PAUSE_MS * 16 / HOP as u64).max(1) as usize;
        let db: Vec<f32> = self.energy.iter().map(|e| e.1).collect();
        if db.len() < n {
            return f32::NEG_INFINITY;
        }
        let mut sum: f32 = db[..n].iter().sum();
        let mut low = sum;
        for i in n..db.len() {
            sum += db[i] - db[i - n];
            low = low.min(sum);
        }
        low / n as f32
    }
}

impl WakeDetector for TemplateDetector {
    fn word(&self) -> &str {
        &self.word
    }

    fn push(&mut self, samples: &[f32]) -> Option<Detection> {
        let mut frames = std::mem::take(&mut self.frames);
        frames.clear();
        self.mfcc.push(samples, &mut frames);
        let mut found = None;
        for (end, raw) in &frames {
            self.energy.push_back((*end, raw.db));
            if self.energy.len() > 800 {
                self.energy.pop_front();
            }
            let x = self.norm.push(raw);
            if let Some(d) = self.step(*end, &x) {
                found = Some(d);
            }
        }
        self.frames = frames;
        found
    }

    fn provisional(&self) -> Option<Detection> {
        let c = self.candidate?;
        self.paused_before(&c).then(|| self.detection(&c))
    }

    /// Every frame heard since the word ended (wholly after it) at least
    /// [`PAUSE_DB_IN_NOISE`] under the word's mean: the loudest, not their mean, so the
    /// next syllable of a longer word ("echo ca|ncel") shows. (Not [`PAUSE_DB`]: right
    /// after a word in a room its echo is still fading.)
    fn paused_after(&self, d: &Detection) -> bool {
        let after: Vec<f32> = self
            .energy
            .iter()
            .filter(|(e, _)| *e >= d.end + WINDOW as u64)
            .map(|(_, db)| *db)
            .collect();
        let (Some(loudest), Some(word)) = (
            after.iter().copied().reduce(f32::max),
            self.word_db(d.start, d.end),
        ) else {
            return false;
        };
        word - loudest >= PAUSE_DB_IN_NOISE
    }

    fn reset(&mut self) {
        self.mfcc.reset();
        self.candidate = None;
        self.reported = None;
        for col in &mut self.columns {
            col.fill(EMPTY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "word": tones with harmonics, one per (frequency, ms), at `rate` times speed.
    fn word(parts: &[(f32, usize)], rate: f32, pitch: f32) -> Vec<f32> {
        let mut out = Vec::new();
        for &(hz, ms) in parts {
            let n = (ms as f32 * 16.0 / rate) as usize;
            for i in 0..n {
                let t = i as f32 / 16_000.0;
                let f = hz * pitch;
                let env = (i.min(n - i) as f32 / 160.0).min(1.0);
                let v = (2.0 * std::f32::consts::PI * f * t).sin()
                    + 0.5 * (4.0 * std::f32::consts::PI * f * t).sin()
                    + 0.25 * (6.0 * std::f32::consts::PI * f * t).sin();
                out.push(0.2 * env * v);
            }
        }
        out
    }

    /// Quiet noise: `n` samples of the VAD tests' xorshift noise at ±0.002.
    fn hiss(n: usize, seed: u32) -> Vec<f32> {
        crate::audio::vad::tests::noise(n as u32 / 16, 0.002, seed)
    }

    const WAKE: [(f32, usize); 3] = [(300.0, 180), (900.0, 160), (500.0, 220)];
    const OTHER: [(f32, usize); 3] = [(700.0, 200), (250.0, 150), (1100.0, 200)];

    fn reference() -> Reference {
        let clips: Vec<(String, Vec<f32>)> = [(1.0, 1.0), (0.9, 1.05), (1.1, 0.95), (1.0, 1.1)]
            .iter()
            .enumerate()
            .map(|(i, &(rate, pitch))| {
                let mut c = hiss(3_200, i as u32 + 1);
                c.extend(word(&WAKE, rate, pitch));
                c.extend(hiss(3_200, i as u32 + 7));
                (format!("example {i}"), c)
            })
            .collect();
        let background = vec![
            word(&OTHER, 1.0, 1.0),
            word(&[(400.0, 300), (1500.0, 200), (200.0, 300)], 1.0, 1.0),
        ];
        Reference::build("hey test", &clips, &background).expect("a reference")
    }

    #[test]
    fn detects_the_word_once_where_it_ends_and_not_other_sounds() {
        let r = reference();
        assert_eq!(r.examples.len(), 4);
        let bytes = serde_json::to_vec(&r).expect("json");
        let r = Reference::from_bytes(&bytes).expect("round trip");
        let model = TemplateModel::new(r, 0.06);
        let mut d = model.detector();
        let mut stream = hiss(16_000, 3);
        stream.extend(word(&OTHER, 1.0, 1.0));
        stream.extend(hiss(8_000, 4));
        let start = stream.len() as u64;
        stream.extend(word(&WAKE, 0.95, 1.02));
        let end = stream.len() as u64;
        stream.extend(hiss(16_000, 5));
        let mut hits = Vec::new();
        for chunk in stream.chunks(320) {
            hits.extend(d.push(chunk));
        }
        assert_eq!(hits.len(), 1, "{hits:?}, best score {}", d.best_score());
        let h = &hits[0];
        assert!(h.score >= 0.06, "{h:?}");
        assert!(h.end.abs_diff(end) <= 1_600, "ends at {} not {end}", h.end);
        assert!(
            h.start.abs_diff(start) <= 1_600,
            "starts at {} not {start}",
            h.start
        );
    }

    #[test]
    fn the_word_inside_running_sound_is_not_a_wake_word() {
        let model = TemplateModel::new(reference(), 0.06);
        let run = |gap: usize| {
            let mut d = model.detector();
            let mut stream = hiss(8_000, 3);
            stream.extend(word(&OTHER, 1.0, 1.0));
            stream.extend(hiss(gap, 4));
            stream.extend(word(&WAKE, 1.0, 1.0));
            stream.extend(hiss(16_000, 5));
            stream.chunks(320).filter_map(|c| d.push(c)).count()
        };
        assert_eq!(run(6_400), 1, "after a 400 ms pause");
        assert_eq!(run(0), 0, "straight after other sound");
    }

    #[test]
    fn the_match_is_offered_before_it_is_reported_and_what_followed_it_is_known() {
        let model = TemplateModel::new(reference(), 0.06);
        // The word followed by a pause, or at once by more sound (a longer word).
        let run = |after: Vec<f32>| {
            let mut d = model.detector();
            let mut stream = hiss(8_000, 3);
            stream.extend(word(&WAKE, 1.0, 1.0));
            stream.extend(after);
            stream.extend(hiss(16_000, 5));
            let mut offered = Vec::new();
            for chunk in stream.chunks(160) {
                if let Some(found) = d.push(chunk) {
                    return (offered, found.clone(), d.paused_after(&found));
                }
                offered.extend(d.provisional());
            }
            panic!("no detection, best score {}", d.best_score());
        };
        let (offered, found, paused) = run(Vec::new());
        assert!(paused);
        // Offered while the matcher waited to be sure: the reading it then reported,
        // for as many frames as it waited.
        let last = offered.last().expect("offered before it was reported");
        assert_eq!(
            (last.start, last.end, last.score),
            (found.start, found.end, found.score)
        );
        let same = offered.iter().filter(|o| o.end == found.end).count() as u64;
        assert_eq!(same, PATIENCE, "{offered:?}");
        let (_, _, paused) = run(word(&OTHER, 1.0, 1.0));
        assert!(!paused, "sound went on after the word");
    }

    #[test]
    fn in_steady_noise_the_pause_is_as_quiet_as_the_noise() {
        let model = TemplateModel::new(reference(), 0.03);
        let mut stream = vec![0.0; 32_000];
        stream.extend(word(&WAKE, 1.0, 1.0));
        stream.extend(vec![0.0; 16_000]);
        // Noise about 8 dB under the word, throughout: the pause before the word is no
        // quieter than that.
        let noise = crate::audio::vad::tests::noise(stream.len() as u32 / 16, 0.11, 9);
        for (s, n) in stream.iter_mut().zip(noise) {
            *s += n;
        }
        let mut d = model.detector();
        let found: Vec<Detection> = stream.chunks(320).filter_map(|c| d.push(c)).collect();
        assert_eq!(found.len(), 1, "{found:?}");
    }

    #[test]
    fn bad_examples_and_files_are_refused() {
        let short = vec![("short".to_string(), word(&[(300.0, 100)], 1.0, 1.0))];
        let e = Reference::build("w", &short, &[]).expect_err("too short");
        assert!(e.to_string().contains("short:"), "{e}");
        assert!(Reference::build("w", &[], &[]).is_err());
        let silent = vec![("silent".to_string(), vec![0.0; 16_000])];
        assert!(Reference::build("w", &silent, &[]).is_err());
        assert!(Reference::from_bytes(b"{}").is_err());
        assert!(Reference::from_bytes(b"\xff\x00").is_err());
        let mut r = reference();
        r.format = 99;
        let e = Reference::from_bytes(&serde_json::to_vec(&r).expect("json")).expect_err("format");
        assert!(e.contains("coda wake train"), "{e}");
        let mut r = reference();
        r.examples[0][0][0] = f32::NAN;
        // serde_json writes NaN as null, which is not a number.
        assert!(Reference::from_bytes(&serde_json::to_vec(&r).expect("json")).is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = Reference::load(&dir.path().join("none.json")).expect_err("missing");
        assert!(matches!(missing, WakeError::Missing(_)));
        let path = dir.path().join("w.json");
        reference().save(&path).expect("saved");
        assert_eq!(Reference::load(&path).expect("loads").examples.len(), 4);
    }
}

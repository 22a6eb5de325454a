//! `coda bench ...`: one file per benchmark, each with its flags and its `run`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use clap::Subcommand;

use crate::cmd::ConfigChoice;
use crate::config::Loaded;

pub mod ask_startup;
pub mod audio;
pub mod cluster;
pub mod echo;
pub mod fanout;
pub mod llm;
pub mod llm_token;
pub mod memory;
mod pool;
pub mod satellite;
pub mod stt;
pub mod tts;
pub mod turn;
pub mod vcs;
pub mod voice;
pub mod wake;

/// `coda bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Event fan-out: one server, N clients, R events/s for S seconds.
    Fanout(fanout::FanoutArgs),
    /// The embedded LLM: load time, time to first token, tokens/s, RSS (optionally beside
    /// llama.cpp on the same GGUF).
    Llm(llm::LlmBenchArgs),
    /// Text turns through the real pipeline (the configured LLM and speech engines).
    Turn(turn::TurnArgs),
    /// Memory store: acknowledged writes, ranked search and turn context on N memories.
    Memory(memory::MemoryBenchArgs),
    /// LLM engine overhead per token: provider socket write → stream yield (loopback).
    LlmToken(llm_token::LlmTokenArgs),
    /// `coda ask` start-up: process spawn → first byte at the provider (loopback).
    AskStartup(ask_startup::AskStartupArgs),
    /// Speech-to-text: time to transcribe a short command, real-time factor, optionally
    /// beside whisper.cpp's own `whisper-cli` on the same file.
    Stt(stt::SttBenchArgs),
    /// Speech engines: time to first audio and total for a two-sentence answer.
    Tts(tts::TtsBenchArgs),
    /// Audio paths: interrupt → playback stopped, end of speech → utterance ended.
    Audio(audio::AudioBenchArgs),
    /// Spoken turns end to end: WAVs streamed as client audio in real time over a real
    /// WebSocket; the waterfall from the end of speech to the first audio, per mode.
    Voice(voice::VoiceBenchArgs),
    /// The wake word on held-out voices in a noisy room: detection rate, false wakes per
    /// hour of other speech, detection delay, CPU.
    Wake(wake::WakeBenchArgs),
    /// Echo cancellation in a synthetic room: echo reduction after convergence, and a
    /// second talker's words through whisper with and without it.
    Echo(echo::EchoBenchArgs),
    /// The cluster stream: two nodes on a real nats-server; what the hop through
    /// JetStream adds between node A's hub and a dashboard on node B. With `--pool`: what
    /// the LLM pool's hop adds to the time to the first token.
    Cluster(cluster::ClusterBenchArgs),
    /// A spoken turn through a satellite against the same turn on the core's own device
    /// (end of speech → first audio).
    Satellite(satellite::SatelliteBenchArgs),
    /// The coding tools' version control: status and diff per VCS on a generated
    /// project, beside the same program run directly.
    Vcs(vcs::VcsBenchArgs),
}

/// Runs a benchmark with the configuration the global flags chose; the benchmarks that
/// start a server pass the same flags on to it.
pub fn run(loaded: &Loaded, choice: &ConfigChoice, cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Fanout(args) => fanout::run(choice, &args),
        BenchCommand::Cluster(args) => cluster::run(choice, &args),
        BenchCommand::Satellite(args) => satellite::run(loaded, choice, &args),
        BenchCommand::Llm(args) => llm::run(loaded, args),
        BenchCommand::Turn(args) => turn::run(choice, &args),
        BenchCommand::Memory(args) => memory::run(&args),
        BenchCommand::LlmToken(args) => llm_token::run(&args),
        BenchCommand::AskStartup(args) => ask_startup::run(&args),
        BenchCommand::Stt(args) => stt::run(loaded, args),
        BenchCommand::Tts(args) => tts::run(&loaded.settings, args),
        BenchCommand::Audio(args) => audio::run(&loaded.settings, args),
        BenchCommand::Voice(args) => voice::run(choice, &args),
        BenchCommand::Wake(args) => wake::run(loaded, args),
        BenchCommand::Echo(args) => echo::run(loaded, args),
        BenchCommand::Vcs(args) => vcs::run(&args),
    }
}

/// Starts `coda serve` on a free port with the caller's configuration (and a private
/// store), returning the child and its WebSocket URL.
pub(crate) fn spawn_server(
    tmp: &Path,
    choice: &ConfigChoice,
    extra: &[&str],
) -> anyhow::Result<(ChildGuard, String)> {
    spawn_server_env(tmp, choice, extra, &[])
}

/// [`spawn_server`] with more environment (config overrides such as `CODA__CLUSTER__…`).
pub(crate) fn spawn_server_env(
    tmp: &Path,
    choice: &ConfigChoice,
    extra: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<(ChildGuard, String)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(choice.as_args())
        .args(["serve", "--port", "0"])
        .args(extra)
        .env("CODA__STORAGE__PATH", tmp.join("store"))
        .env("CODA__AUTH__TOKEN_FILE", tmp.join("token"))
        .env("CODA__SERVER__RATE_LIMIT_PER_S", "1000")
        // A benchmark's clients all connect at once from loopback.
        .env("CODA__SERVER__CONNECT_RATE_PER_IP", "100000")
        .env("CODA__SERVER__MAX_CONNECTIONS_PER_IP", "100000")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout from server"))?;
    let child = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .trim()
        .strip_prefix("listening ")
        .ok_or_else(|| anyhow::anyhow!("server did not start: {line:?}"))?
        .to_string();
    Ok((child, url))
}

/// The spawned server; killed and reaped when dropped.
pub(crate) struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ChildGuard {
    pub(crate) fn id(&self) -> u32 {
        self.0.id()
    }
}

/// The `p` quantile (0–1) of sorted samples by nearest rank (0 for none): the one
/// percentile of every bench. Exact on the few dozen samples a bench has, where an HDR
/// histogram would only add its bucket rounding.
pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// p50, p95, max and count of millisecond samples, as `bench tts` and `bench audio` print.
fn summary(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(|a, b| a.total_cmp(b));
    serde_json::json!({"p50_ms": pct(&v, 0.5), "p95_ms": pct(&v, 0.95), "max_ms": v.last().copied().unwrap_or(0.0), "n": v.len()})
}

/// Writes 16 kHz mono samples as a 16-bit WAV (whisper-cli reads only that).
pub(crate) fn write_wav_16k(path: &Path, samples: &[f32]) -> anyhow::Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: coda_actors::voice::SPEECH_SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)?;
    for s in samples {
        w.write_sample((s.clamp(-1.0, 1.0) * 32767.0) as i16)?;
    }
    w.finalize()?;
    Ok(())
}

/// CPU time of the calling thread, µs: unlike wall time it does not count the time the
/// thread waited for a core, so it shows the operation's own cost on a busy machine.
#[cfg(unix)]
pub(crate) fn thread_cpu_us() -> u64 {
    cpu_clock_us(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of the whole process, µs (all its threads: whisper.cpp's workers too).
#[cfg(unix)]
pub(crate) fn process_cpu_us() -> u64 {
    cpu_clock_us(libc::CLOCK_PROCESS_CPUTIME_ID)
}

#[cfg(unix)]
fn cpu_clock_us(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

#[cfg(not(unix))]
pub(crate) fn thread_cpu_us() -> u64 {
    0
}

#[cfg(not(unix))]
pub(crate) fn process_cpu_us() -> u64 {
    0
}

/// Speaks `text` into the WAV file `path` with espeak-ng (en-us, 165 wpm): the benchmarks'
/// default spoken input.
pub(crate) fn espeak_wav(path: &Path, text: &str) -> anyhow::Result<()> {
    let status = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "165", "-w"])
        .arg(path)
        .arg(text)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run espeak-ng ({e})"))?;
    if !status.success() {
        anyhow::bail!("espeak-ng failed ({status})");
    }
    Ok(())
}

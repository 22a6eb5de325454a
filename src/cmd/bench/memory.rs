//! `coda bench memory`: the memory engine on a real sled store in a temporary directory.
//! Loads N synthetic memories (Zipf-distributed vocabulary, so common words have long
//! posting lists as in real text), then measures acknowledged (flushed) write latency,
//! ranked search latency, a turn's context-building latency, the index rebuild at open and
//! the store's size on disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use coda_actors::llm::ChatRole;
use coda_actors::memory::{MemoryEngine, MemorySettings, NewMemory, NewMessage, WriteJob};
use coda_actors::store::{SledStore, Storage};
use hdrhistogram::Histogram;

/// `coda bench memory` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct MemoryBenchArgs {
    /// Memories stored before measuring.
    #[arg(long, default_value_t = 100_000)]
    pub memories: usize,
    /// Searches measured.
    #[arg(long, default_value_t = 5_000)]
    pub searches: usize,
    /// Context builds measured.
    #[arg(long, default_value_t = 5_000)]
    pub contexts: usize,
    /// Single acknowledged writes measured (each waits for its flush).
    #[arg(long, default_value_t = 500)]
    pub writes: usize,
    /// Store directory (default: a new temporary directory, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The measured figures (latencies in milliseconds).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemoryBenchReport {
    pub memories: usize,
    pub load_s: f64,
    pub load_per_s: f64,
    pub write_ack_p50_ms: f64,
    pub write_ack_p99_ms: f64,
    pub write_ack_max_ms: f64,
    pub group_commit_100_ms: f64,
    pub search_p50_ms: f64,
    pub search_p99_ms: f64,
    pub search_max_ms: f64,
    pub search_cpu_p50_ms: f64,
    pub search_cpu_p99_ms: f64,
    pub context_p50_ms: f64,
    pub context_p99_ms: f64,
    pub context_max_ms: f64,
    pub context_cpu_p50_ms: f64,
    pub context_cpu_p99_ms: f64,
    pub load_average: Option<f64>,
    pub open_with_index_s: f64,
    pub size_on_disk_bytes: u64,
    pub size_per_1000_memories_kib: f64,
    pub files_on_disk_bytes: u64,
}

impl MemoryBenchReport {
    fn print(&self) {
        println!("memory bench: {} memories on sled", self.memories);
        println!(
            "  load             {:.1} s ({:.0} memories/s, group commits of 1000)",
            self.load_s, self.load_per_s
        );
        println!(
            "  acked write      p50 {:.3} ms   p99 {:.3} ms   max {:.3} ms   (one store + flush each)",
            self.write_ack_p50_ms, self.write_ack_p99_ms, self.write_ack_max_ms
        );
        println!(
            "  group commit     {:.3} ms for 100 writes with one flush",
            self.group_commit_100_ms
        );
        println!(
            "  search           p50 {:.3} ms   p99 {:.3} ms   max {:.3} ms   (CPU p50 {:.3} ms  p99 {:.3} ms)",
            self.search_p50_ms,
            self.search_p99_ms,
            self.search_max_ms,
            self.search_cpu_p50_ms,
            self.search_cpu_p99_ms
        );
        println!(
            "  turn context     p50 {:.3} ms   p99 {:.3} ms   max {:.3} ms   (CPU p50 {:.3} ms  p99 {:.3} ms)",
            self.context_p50_ms,
            self.context_p99_ms,
            self.context_max_ms,
            self.context_cpu_p50_ms,
            self.context_cpu_p99_ms
        );
        if let Some(load) = self.load_average {
            println!(
                "  machine load     {load:.1} (1-minute average; wall-time tails include waiting for a core)"
            );
        }
        println!("  open + index     {:.2} s", self.open_with_index_s);
        println!(
            "  size on disk     {:.1} MiB ({:.1} KiB per 1000 memories; files {:.1} MiB)",
            self.size_on_disk_bytes as f64 / 1048576.0,
            self.size_per_1000_memories_kib,
            self.files_on_disk_bytes as f64 / 1048576.0
        );
    }
}

/// Deterministic pseudo-random numbers (xorshift64*), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A vocabulary of pronounceable words with Zipf frequencies (s = 1).
struct Vocabulary {
    words: Vec<String>,
    cdf: Vec<f64>,
}

impl Vocabulary {
    fn new(size: usize, rng: &mut Rng) -> Vocabulary {
        const ONSETS: &[&str] = &[
            "b", "c", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v", "br", "st", "tr",
            "pl", "gr",
        ];
        const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ai", "ou", "ea"];
        let mut words = Vec::with_capacity(size);
        let mut seen = std::collections::HashSet::new();
        while words.len() < size {
            let syllables = 1 + rng.below(3);
            let mut w = String::new();
            for _ in 0..syllables {
                w.push_str(ONSETS[rng.below(ONSETS.len())]);
                w.push_str(VOWELS[rng.below(VOWELS.len())]);
            }
            w.push_str(["n", "r", "l", "x", "k", ""][rng.below(6)]);
            if seen.insert(w.clone()) {
                words.push(w);
            }
        }
        let total: f64 = (1..=size).map(|r| 1.0 / r as f64).sum();
        let mut acc = 0.0;
        let cdf = (1..=size)
            .map(|r| {
                acc += 1.0 / r as f64 / total;
                acc
            })
            .collect();
        Vocabulary { words, cdf }
    }

    fn word(&self, rng: &mut Rng) -> &str {
        let u = rng.unit();
        let i = self
            .cdf
            .partition_point(|&c| c < u)
            .min(self.words.len() - 1);
        &self.words[i]
    }

    fn sentence(&self, rng: &mut Rng, min: usize, max: usize) -> String {
        let n = min + rng.below(max - min + 1);
        (0..n).map(|_| self.word(rng)).collect::<Vec<_>>().join(" ")
    }
}

/// Wall and CPU-time histograms of one operation.
struct Timed {
    wall: Histogram<u64>,
    cpu: Histogram<u64>,
}

impl Timed {
    fn new() -> anyhow::Result<Timed> {
        Ok(Timed {
            wall: histogram()?,
            cpu: histogram()?,
        })
    }

    fn time<T>(&mut self, f: impl FnOnce() -> T) -> anyhow::Result<T> {
        let (c0, t0) = (super::thread_cpu_us(), Instant::now());
        let out = f();
        let (wall, cpu) = (t0.elapsed().as_micros() as u64, super::thread_cpu_us() - c0);
        self.wall.record(wall.max(1))?;
        self.cpu.record(cpu.max(1))?;
        Ok(out)
    }
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Measures, returning the figures.
pub fn measure(args: &MemoryBenchArgs) -> anyhow::Result<MemoryBenchReport> {
    let tmp = tempfile::Builder::new()
        .prefix("coda-bench-memory-")
        .tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().join("store"));
    let settings = MemorySettings::default();
    let open = |dir: &Path| -> anyhow::Result<MemoryEngine> {
        let storage: Arc<dyn Storage> = Arc::new(SledStore::open(dir)?);
        Ok(MemoryEngine::open(storage, settings.clone())?)
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let vocab = Vocabulary::new(20_000, &mut rng);
    const TAGS: &[&str] = &[
        "preference",
        "family",
        "work",
        "health",
        "travel",
        "food",
        "music",
        "home",
    ];

    // Load.
    let engine = open(&dir)?;
    let started = Instant::now();
    let mut loaded = 0;
    while loaded < args.memories {
        let n = 1000.min(args.memories - loaded);
        let jobs = (0..n)
            .map(|_| {
                WriteJob::Store(NewMemory {
                    content: vocab.sentence(&mut rng, 6, 24),
                    tags: vec![TAGS[rng.below(TAGS.len())].to_string()],
                    source: "bench".into(),
                    ..Default::default()
                })
            })
            .collect();
        for r in engine.commit(jobs) {
            r?;
        }
        loaded += n;
    }
    let load_s = started.elapsed().as_secs_f64();

    // A conversation for the context builds: 40 turns.
    for turn in 0..40 {
        for role in [ChatRole::User, ChatRole::Assistant] {
            engine.append(NewMessage {
                session_id: "bench".into(),
                role,
                content: format!("{}. {}", vocab.sentence(&mut rng, 8, 30), turn),
                turn_id: Some(format!("t-{turn}")),
                tool_calls: Vec::new(),
                tool_call_id: None,
                metadata: serde_json::Value::Null,
            })?;
        }
    }

    // Acknowledged single writes.
    let mut writes = histogram()?;
    for _ in 0..args.writes {
        let content = vocab.sentence(&mut rng, 6, 24);
        let t = Instant::now();
        engine.store(NewMemory {
            content,
            source: "bench".into(),
            ..Default::default()
        })?;
        writes.record(t.elapsed().as_micros().max(1) as u64)?;
    }
    let t = Instant::now();
    let jobs = (0..100)
        .map(|_| {
            WriteJob::Store(NewMemory {
                content: vocab.sentence(&mut rng, 6, 24),
                source: "bench".into(),
                ..Default::default()
            })
        })
        .collect();
    for r in engine.commit(jobs) {
        r?;
    }
    let group_commit_100_ms = t.elapsed().as_secs_f64() * 1e3;

    // Searches: 1–3 words, Zipf-drawn (common words included: the slow case).
    let mut searches = Timed::new()?;
    let limit = settings.default_limit;
    for _ in 0..args.searches {
        let q = vocab.sentence(&mut rng, 1, 3);
        let hits = searches.time(|| engine.search(&q, limit))?;
        std::hint::black_box(hits);
    }

    // A turn's context: memories + summary + recent turns within the default budget.
    let mut contexts = Timed::new()?;
    for _ in 0..args.contexts {
        let q = format!("what about {}?", vocab.sentence(&mut rng, 2, 8));
        let ctx = contexts.time(|| engine.build_context("bench", &q, None))??;
        std::hint::black_box(ctx);
    }

    let total = engine.memory_count();
    engine.storage().flush()?;
    let size_on_disk_bytes = engine.storage().size_on_disk()?;
    drop(engine);
    let files_on_disk_bytes = dir_size(&dir);

    let t = Instant::now();
    let reopened = open(&dir)?;
    let open_with_index_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(reopened.memory_count() == total, "memories lost on reopen");

    Ok(MemoryBenchReport {
        memories: args.memories,
        load_s,
        load_per_s: args.memories as f64 / load_s.max(1e-9),
        write_ack_p50_ms: ms(&writes, 0.5),
        write_ack_p99_ms: ms(&writes, 0.99),
        write_ack_max_ms: writes.max() as f64 / 1000.0,
        group_commit_100_ms,
        search_p50_ms: ms(&searches.wall, 0.5),
        search_p99_ms: ms(&searches.wall, 0.99),
        search_max_ms: searches.wall.max() as f64 / 1000.0,
        search_cpu_p50_ms: ms(&searches.cpu, 0.5),
        search_cpu_p99_ms: ms(&searches.cpu, 0.99),
        context_p50_ms: ms(&contexts.wall, 0.5),
        context_p99_ms: ms(&contexts.wall, 0.99),
        context_max_ms: contexts.wall.max() as f64 / 1000.0,
        context_cpu_p50_ms: ms(&contexts.cpu, 0.5),
        context_cpu_p99_ms: ms(&contexts.cpu, 0.99),
        load_average: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok())),
        open_with_index_s,
        size_on_disk_bytes,
        size_per_1000_memories_kib: size_on_disk_bytes as f64 / 1024.0 / (total as f64 / 1000.0),
        files_on_disk_bytes,
    })
}

/// `coda bench memory`.
pub fn run(args: &MemoryBenchArgs) -> anyhow::Result<()> {
    let report = measure(args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
    }
    Ok(())
}

//! The in-memory search index over long-term memories: an inverted index ranked with
//! BM25 (the ranking Lucene and Tantivy default to), terms lower-cased and stemmed
//! (Snowball English via `rust-stemmers`) so "teas" finds "tea" and "running" finds "run".
//!
//! The store is the truth; this index is rebuilt from it at start (100,000 memories take
//! well under a second) and kept in step by the engine after each acknowledged write.
//! Records are held here too (`Arc`), so a search answers without touching the disk.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use rust_stemmers::{Algorithm, Stemmer};

use super::records::MemoryRecord;

/// BM25 term-frequency saturation.
const K1: f32 = 1.2;
/// BM25 length normalisation.
const B: f32 = 0.75;
/// Weight of a tag word compared with a word of the text.
const TAG_WEIGHT: u16 = 2;

/// Common English words that carry no meaning for recall.
const STOPWORDS: &[&str] = &[
    "a", "about", "an", "and", "are", "as", "at", "be", "by", "did", "do", "does", "for", "from",
    "has", "have", "i", "in", "is", "it", "its", "me", "my", "of", "on", "or", "so", "that", "the",
    "their", "them", "there", "these", "this", "to", "was", "we", "were", "what", "when", "where",
    "which", "who", "will", "with", "you", "your",
];

/// Splits text into index terms: lower-cased alphanumeric words, stop words dropped,
/// stemmed.
pub struct Tokenizer {
    stemmer: Stemmer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokenizer(english)")
    }
}

impl Default for Tokenizer {
    fn default() -> Self {
        Tokenizer {
            stemmer: Stemmer::create(Algorithm::English),
        }
    }
}

impl Tokenizer {
    /// The terms of `text`, in order, repeats kept.
    pub fn terms(&self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for word in text.split(|c: char| !c.is_alphanumeric()) {
            if word.is_empty() {
                continue;
            }
            let lower = word.to_lowercase();
            if STOPWORDS.binary_search(&lower.as_str()).is_ok() {
                continue;
            }
            out.push(self.stemmer.stem(&lower).into_owned());
        }
        out
    }
}

#[derive(Debug, Clone, Copy)]
struct Posting {
    doc: u32,
    tf: u16,
}

/// A scored hit.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The memory.
    pub record: Arc<MemoryRecord>,
    /// BM25 score (higher is better; comparable within one query only).
    pub score: f64,
}

thread_local! {
    /// Per-thread score accumulator, reused across queries (zeroed where it was touched).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The index. Not thread-safe by itself: the engine holds it behind a `RwLock`.
///
/// Documents live in slots (columns kept apart so a query's passes stay cache-friendly);
/// posting lists are in slot order, so a list can be binary-searched for one document.
#[derive(Debug, Default)]
pub struct Index {
    tokenizer: Tokenizer,
    terms: HashMap<String, u32>,
    postings: Vec<Vec<Posting>>,
    /// Live documents per term.
    df: Vec<u32>,
    records: Vec<Arc<MemoryRecord>>,
    lens: Vec<u32>,
    alive: Vec<bool>,
    doc_terms: Vec<Box<[u32]>>,
    slot_of: HashMap<u64, u32>,
    live: usize,
    live_len: u64,
    /// Slots are in id order (ids only grow), so "newest" is a reverse walk; false once
    /// an older id was inserted after a newer one.
    out_of_order: bool,
    max_id: u64,
}

impl Index {
    /// An empty index.
    pub fn new() -> Index {
        Index::default()
    }

    /// Live memories.
    pub fn len(&self) -> usize {
        self.live
    }

    /// No live memories?
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The highest id indexed (dead ones included), to seed the id clock.
    pub fn max_id(&self) -> u64 {
        self.max_id
    }

    /// The tokenizer (shared with callers that need the same terms).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Adds (or replaces) a memory.
    pub fn insert(&mut self, record: Arc<MemoryRecord>) {
        self.remove(record.id);
        if record.id < self.max_id {
            self.out_of_order = true;
        }
        self.max_id = self.max_id.max(record.id);
        let slot = self.records.len() as u32;
        let mut counts: HashMap<String, u16> = HashMap::new();
        let mut len = 0u32;
        for term in self.tokenizer.terms(&record.content) {
            let c = counts.entry(term).or_default();
            *c = c.saturating_add(1);
            len += 1;
        }
        for tag in &record.tags {
            for term in self.tokenizer.terms(tag) {
                let c = counts.entry(term).or_default();
                *c = c.saturating_add(TAG_WEIGHT);
                len += 1;
            }
        }
        let mut ids = Vec::with_capacity(counts.len());
        for (term, tf) in counts {
            let next = self.postings.len() as u32;
            let id = *self.terms.entry(term).or_insert(next);
            if id == next {
                self.postings.push(Vec::new());
                self.df.push(0);
            }
            self.postings[id as usize].push(Posting { doc: slot, tf });
            self.df[id as usize] += 1;
            ids.push(id);
        }
        self.slot_of.insert(record.id, slot);
        self.records.push(record);
        self.lens.push(len);
        self.alive.push(true);
        self.doc_terms.push(ids.into_boxed_slice());
        self.live += 1;
        self.live_len += u64::from(len);
    }

    /// Removes a memory; `true` if it was there.
    pub fn remove(&mut self, id: u64) -> bool {
        let Some(slot) = self.slot_of.remove(&id) else {
            return false;
        };
        let slot = slot as usize;
        self.alive[slot] = false;
        for &t in self.doc_terms[slot].iter() {
            self.df[t as usize] -= 1;
        }
        self.live -= 1;
        self.live_len -= u64::from(self.lens[slot]);
        // Postings of dead documents are skipped at query time; rebuild once they are
        // a large share, so searches do not slow down after many deletions.
        let dead = self.records.len() - self.live;
        if dead > 1024 && dead > self.live {
            self.rebuild();
        }
        true
    }

    fn rebuild(&mut self) {
        let mut records: Vec<Arc<MemoryRecord>> = self
            .records
            .iter()
            .zip(&self.alive)
            .filter(|(_, &alive)| alive)
            .map(|(r, _)| r.clone())
            .collect();
        let max_id = self.max_id;
        *self = Index {
            tokenizer: std::mem::take(&mut self.tokenizer),
            ..Index::default()
        };
        records.sort_unstable_by_key(|r| r.id);
        self.max_id = max_id;
        for r in records {
            self.insert(r);
        }
    }

    /// One memory by id.
    pub fn get(&self, id: u64) -> Option<Arc<MemoryRecord>> {
        self.slot_of
            .get(&id)
            .map(|&slot| self.records[slot as usize].clone())
    }

    /// Newest first, skipping `offset`.
    pub fn newest(&self, offset: usize, limit: usize) -> Vec<Arc<MemoryRecord>> {
        let live = self
            .records
            .iter()
            .zip(&self.alive)
            .filter(|(_, &alive)| alive)
            .map(|(r, _)| r);
        if !self.out_of_order {
            let rev: Vec<&Arc<MemoryRecord>> = live.collect();
            return rev
                .into_iter()
                .rev()
                .skip(offset)
                .take(limit)
                .cloned()
                .collect();
        }
        let mut all: Vec<&Arc<MemoryRecord>> = live.collect();
        all.sort_unstable_by_key(|r| std::cmp::Reverse(r.id));
        all.into_iter().skip(offset).take(limit).cloned().collect()
    }

    /// The best `limit` memories for `query` (BM25; ties go to the newer memory). A query
    /// with no searchable word finds nothing.
    ///
    /// Term at a time, rarest (highest-weight) terms first, with MaxScore pruning: once
    /// the documents already scored hold a top `limit` whose weakest member beats what
    /// the remaining terms could add to a new document, the remaining (common) terms only
    /// update the candidates, found by binary search in their lists instead of a scan.
    pub fn search(&self, query: &str, limit: usize) -> Vec<Hit> {
        if limit == 0 || self.live == 0 {
            return Vec::new();
        }
        let mut query_terms: Vec<u32> = self
            .tokenizer
            .terms(query)
            .iter()
            .filter_map(|t| self.terms.get(t).copied())
            .filter(|&t| self.df[t as usize] > 0)
            .collect();
        query_terms.sort_unstable();
        query_terms.dedup();
        if query_terms.is_empty() {
            return Vec::new();
        }
        let n = self.live as f32;
        let avg_len = (self.live_len as f32 / n).max(1.0);
        let idf = |t: u32| {
            let df = self.df[t as usize] as f32;
            (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
        };
        // Highest weight first; `ub` bounds what a term can add to any document.
        let mut weighted: Vec<(u32, f32)> = query_terms.iter().map(|&t| (t, idf(t))).collect();
        weighted.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        let mut rest_ub: f32 = weighted.iter().map(|(_, w)| w * (K1 + 1.0)).sum();
        let norm_a = K1 * (1.0 - B);
        let norm_b = K1 * B / avg_len;

        SCRATCH.with(|cell| {
            let mut scores = cell.borrow_mut();
            if scores.len() < self.records.len() {
                scores.resize(self.records.len(), 0.0);
            }
            let mut candidates: Vec<u32> = Vec::new();
            let mut pruned = false;
            for &(term, w) in &weighted {
                let list = &self.postings[term as usize];
                rest_ub -= w * (K1 + 1.0);
                let score_of = |p: &Posting| {
                    let tf = f32::from(p.tf);
                    w * tf * (K1 + 1.0) / (tf + norm_a + norm_b * self.lens[p.doc as usize] as f32)
                };
                if !pruned {
                    for p in list {
                        if !self.alive[p.doc as usize] {
                            continue;
                        }
                        let slot = &mut scores[p.doc as usize];
                        if *slot == 0.0 {
                            candidates.push(p.doc);
                        }
                        *slot += score_of(p);
                    }
                } else if candidates.len() * 16 < list.len() {
                    for &doc in &candidates {
                        if let Ok(i) = list.binary_search_by_key(&doc, |p| p.doc) {
                            scores[doc as usize] += score_of(&list[i]);
                        }
                    }
                } else {
                    for p in list {
                        let slot = &mut scores[p.doc as usize];
                        if *slot != 0.0 {
                            *slot += score_of(p);
                        }
                    }
                }
                // Can a document not yet seen still reach the top `limit`?
                if candidates.len() >= limit && rest_ub > 0.0 {
                    let threshold = kth_best(&scores, &candidates, limit);
                    if rest_ub < threshold {
                        pruned = true;
                        // Candidates that cannot reach the threshold are dropped.
                        candidates.retain(|&d| {
                            let keep = scores[d as usize] + rest_ub >= threshold;
                            if !keep {
                                scores[d as usize] = 0.0;
                            }
                            keep
                        });
                    }
                }
            }
            // Top-k with a min-heap of size `limit`.
            let mut heap: BinaryHeap<Ranked> = BinaryHeap::with_capacity(limit + 1);
            for &doc in &candidates {
                let r = Ranked {
                    score: scores[doc as usize],
                    id: self.records[doc as usize].id,
                    slot: doc,
                };
                scores[doc as usize] = 0.0;
                if heap.len() < limit {
                    heap.push(r);
                } else if let Some(worst) = heap.peek() {
                    if r.better_than(worst) {
                        heap.pop();
                        heap.push(r);
                    }
                }
            }
            let mut best = heap.into_vec();
            best.sort_unstable_by(|a, b| {
                if a.better_than(b) {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            });
            best.into_iter()
                .map(|r| Hit {
                    record: self.records[r.slot as usize].clone(),
                    score: f64::from(r.score),
                })
                .collect()
        })
    }
}

/// The `k`-th best score among `candidates` (k ≥ 1, candidates.len() ≥ k).
fn kth_best(scores: &[f32], candidates: &[u32], k: usize) -> f32 {
    let mut s: Vec<f32> = candidates.iter().map(|&d| scores[d as usize]).collect();
    let (_, kth, _) = s.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    *kth
}

#[derive(Debug, Clone, Copy)]
struct Ranked {
    score: f32,
    id: u64,
    slot: u32,
}

impl Ranked {
    fn better_than(&self, other: &Ranked) -> bool {
        match self.score.total_cmp(&other.score) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => self.id > other.id,
        }
    }
}

// The heap keeps the *worst* on top, so `peek` is the one to evict.
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        if self.better_than(other) {
            Ordering::Less
        } else if other.better_than(self) {
            Ordering::Greater
        } else {
            Ordering::Equal
        }
    }
}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Ranked {}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, content: &str, tags: &[&str]) -> Arc<MemoryRecord> {
        Arc::new(MemoryRecord {
            v: 1,
            id,
            content: content.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            session_id: None,
            turn_id: None,
            source: "test".into(),
            importance: None,
            created_at: id as f64,
        })
    }

    #[test]
    fn stopwords_are_sorted_for_binary_search() {
        let mut sorted = STOPWORDS.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, STOPWORDS);
    }

    #[test]
    fn tokenizer_stems_and_drops_stopwords() {
        let t = Tokenizer::default();
        assert_eq!(
            t.terms("The user prefers green teas!"),
            ["user", "prefer", "green", "tea"]
        );
        assert_eq!(t.terms("Running, runs"), ["run", "run"]);
        assert!(t.terms("what is it").is_empty());
    }

    #[test]
    fn ranks_by_relevance_and_stemming_matches() {
        let mut ix = Index::new();
        ix.insert(rec(1, "The user prefers green tea in the morning", &[]));
        ix.insert(rec(2, "The user's sister is called Anna", &["family"]));
        ix.insert(rec(3, "Tea tea tea: the user drinks a lot of tea", &[]));
        ix.insert(rec(4, "Dentist appointment on Friday", &["calendar"]));
        let hits = ix.search("teas", 10);
        let ids: Vec<u64> = hits.iter().map(|h| h.record.id).collect();
        assert_eq!(ids, [3, 1], "more occurrences rank higher");
        assert!(hits[0].score > hits[1].score);
        // Tags are searchable.
        assert_eq!(ix.search("family", 10)[0].record.id, 2);
        // Rare words weigh more than common ones.
        let hits = ix.search("user dentist", 10);
        assert_eq!(hits[0].record.id, 4);
        assert!(ix.search("the of and", 10).is_empty());
        assert!(ix.search("unknownword", 10).is_empty());
    }

    #[test]
    fn remove_and_replace() {
        let mut ix = Index::new();
        ix.insert(rec(1, "green tea", &[]));
        ix.insert(rec(2, "black tea", &[]));
        assert!(ix.remove(1));
        assert!(!ix.remove(1));
        assert_eq!(ix.len(), 1);
        let ids: Vec<u64> = ix.search("tea", 10).iter().map(|h| h.record.id).collect();
        assert_eq!(ids, [2]);
        ix.insert(rec(2, "coffee", &[]));
        assert!(ix.search("tea", 10).is_empty(), "replaced text is gone");
        assert_eq!(ix.search("coffee", 10).len(), 1);
        assert_eq!(ix.len(), 1);
        assert_eq!(ix.max_id(), 2);
    }

    #[test]
    fn newest_first_and_limit() {
        let mut ix = Index::new();
        for i in 1..=5 {
            ix.insert(rec(i, &format!("note {i}"), &[]));
        }
        let ids: Vec<u64> = ix.newest(0, 3).iter().map(|r| r.id).collect();
        assert_eq!(ids, [5, 4, 3]);
        let ids: Vec<u64> = ix.newest(3, 10).iter().map(|r| r.id).collect();
        assert_eq!(ids, [2, 1]);
        ix.insert(rec(0, "an older one, inserted late", &[]));
        let ids: Vec<u64> = ix.newest(0, 10).iter().map(|r| r.id).collect();
        assert_eq!(ids, [5, 4, 3, 2, 1, 0]);
        let hits = ix.search("note", 2);
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].record.id, 5, "equal scores: newest first");
    }

    /// Pruned search must give exactly what scoring every document would.
    #[test]
    fn pruned_search_matches_exhaustive_bm25() {
        let mut seed = 0x1234_5678_9abc_def1u64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        // Skewed vocabulary: word i appears with weight ~ 1/(i+1).
        let word = |r: u64| format!("w{}", (200.0 / (r as f64 + 1.0)) as u64);
        let mut ix = Index::new();
        for id in 0..3000u64 {
            let n = 3 + rnd(12);
            let text: Vec<String> = (0..n).map(|_| word(rnd(200))).collect();
            ix.insert(rec(id, &text.join(" "), &[]));
        }
        for id in (0..3000u64).step_by(7) {
            ix.remove(id);
        }
        let avg = ix.live_len as f64 / ix.live as f64;
        let tokenized: Vec<Vec<String>> = ix
            .records
            .iter()
            .map(|r| ix.tokenizer.terms(&r.content))
            .collect();
        for _ in 0..200 {
            let q: Vec<String> = (0..1 + rnd(5)).map(|_| word(rnd(200))).collect();
            let query = q.join(" ");
            let k = 1 + rnd(10) as usize;
            let got: Vec<(u64, f64)> = ix
                .search(&query, k)
                .iter()
                .map(|h| (h.record.id, h.score))
                .collect();
            // Exhaustive BM25.
            let mut terms = ix.tokenizer.terms(&query);
            terms.sort();
            terms.dedup();
            let n = ix.live as f64;
            let mut all: Vec<(u64, f64)> = Vec::new();
            for (slot, r) in ix.records.iter().enumerate() {
                if !ix.alive[slot] {
                    continue;
                }
                let doc_terms = &tokenized[slot];
                let mut score = 0.0;
                for t in &terms {
                    let tf = doc_terms.iter().filter(|d| *d == t).count() as f64;
                    if tf == 0.0 {
                        continue;
                    }
                    let df = ix.terms.get(t).map(|&i| ix.df[i as usize]).unwrap_or(0) as f64;
                    let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                    let norm = 1.2 * (1.0 - 0.75 + 0.75 * ix.lens[slot] as f64 / avg);
                    score += idf * tf * 2.2 / (tf + norm);
                }
                if score > 0.0 {
                    all.push((r.id, score));
                }
            }
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
            all.truncate(k);
            assert_eq!(got.len(), all.len(), "{query}");
            for (g, w) in got.iter().zip(&all) {
                assert!((g.1 - w.1).abs() < 1e-3, "{query}: {got:?} vs {all:?}");
            }
            // Same set of scores (ids may differ only between near-equal scores).
            let got_ids: Vec<u64> = got.iter().map(|g| g.0).collect();
            for w in &all {
                assert!(
                    got_ids.contains(&w.0)
                        || all.iter().any(|x| x.0 != w.0 && (x.1 - w.1).abs() < 1e-3),
                    "{query}: missing {w:?}"
                );
            }
        }
    }

    #[test]
    fn many_deletions_rebuild_the_index() {
        let mut ix = Index::new();
        for i in 0..3000 {
            ix.insert(rec(i, &format!("word{} common", i % 7), &[]));
        }
        for i in 0..2500 {
            assert!(ix.remove(i));
        }
        assert_eq!(ix.len(), 500);
        assert!(ix.records.len() < 3000, "rebuilt: dead slots dropped");
        assert_eq!(ix.search("common", 1000).len(), 500);
        assert!(ix.get(2999).is_some() && ix.get(0).is_none());
    }
}

//! The model's own tokenizer, built from the GGUF metadata alone (no side files): byte-level
//! BPE (`tokenizer.ggml.model = "gpt2"`, used by SmolLM, Llama 3, Qwen and most recent
//! models) via the `tokenizers` crate, or SentencePiece-style score merging
//! (`tokenizer.ggml.model = "llama"`, used by Gemma and Llama 2) as llama.cpp does it;
//! and a byte table for decoding so a stream of tokens can be turned into UTF-8 text
//! piece by piece.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::tokenizer::SplitDelimiterBehavior;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

use crate::gguf::{Gguf, GgufError, Value};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TYPE_CONTROL: u64 = 3;
const TYPE_USER_DEFINED: u64 = 4;
const TYPE_UNUSED: u64 = 5;
const TYPE_BYTE: u64 = 6;

/// Texts of control tokens that end a turn in common chat formats.
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|endoftext|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_text|>",
    "</s>",
];

/// Splits used by llama.cpp for the named pre-tokenizers.
const REGEX_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const REGEX_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer of one model.
pub struct Tokenizer {
    encoder: Encoder,
    /// Bytes each token decodes to (`None`: a control token, never shown).
    bytes: Vec<Option<Vec<u8>>>,
    /// Token texts as stored (for templates and diagnostics).
    texts: Vec<String>,
    /// Tokens that end generation.
    eog: HashSet<u32>,
    /// Beginning-of-sequence token.
    pub bos: Option<u32>,
    /// End-of-sequence token.
    pub eos: Option<u32>,
    add_bos: bool,
}

/// Bytes each token decodes to (`None`: a control token).
type TokenBytes = Vec<Option<Vec<u8>>>;

enum Encoder {
    /// Byte-level BPE.
    Bpe(Box<HfTokenizer>),
    /// SentencePiece-style merging by score.
    Spm(Box<Spm>),
}

/// A SentencePiece (`llama`) vocabulary: pieces with scores, `▁` for spaces, bytes as
/// `<0xNN>` tokens for characters it lacks.
struct Spm {
    vocab: HashMap<String, u32>,
    scores: Vec<f32>,
    byte_tokens: [Option<u32>; 256],
    unk: Option<u32>,
    /// Control and user-defined tokens, matched whole before merging; indexed by their
    /// first byte, longest first.
    specials: HashMap<u8, Vec<(String, u32)>>,
    add_space_prefix: bool,
    /// Specials that swallow the whitespace after them (llama.cpp does this for Phi-3,
    /// whose Hugging Face tokenizer marks its added tokens `rstrip`).
    rstrip: HashSet<u32>,
}

/// A candidate merge of two adjacent symbols.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// Length of the merged text when queued (stale if the symbols changed since).
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Highest score first; among equals, the leftmost (llama.cpp's order).
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

impl Spm {
    /// Splits `text` into specials and plain fragments, and tokenises each.
    fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let bytes = text.as_bytes();
        let (mut start, mut i) = (0, 0);
        // llama.cpp prefixes a space to the text at the start and after each special.
        let mut after_special = true;
        while i < bytes.len() {
            let hit = self.specials.get(&bytes[i]).and_then(|cands| {
                cands
                    .iter()
                    .find(|(s, _)| bytes[i..].starts_with(s.as_bytes()))
            });
            if let Some((s, id)) = hit {
                if start < i {
                    self.encode_plain(&text[start..i], after_special, &mut out);
                }
                out.push(*id);
                i += s.len();
                if self.rstrip.contains(id) {
                    while i < bytes.len() && b" \t\n\r\x0b\x0c".contains(&bytes[i]) {
                        i += 1;
                    }
                }
                after_special = true;
                start = i;
            } else {
                i += 1;
            }
        }
        if start < bytes.len() {
            self.encode_plain(&text[start..], after_special, &mut out);
        }
        out
    }

    fn encode_plain(&self, text: &str, after_special: bool, out: &mut Vec<u32>) {
        let mut s = String::with_capacity(text.len() + 3);
        if self.add_space_prefix && after_special {
            s.push('\u{2581}');
        }
        s.push_str(&text.replace(' ', "\u{2581}"));
        // Symbols: byte ranges of `s`, linked left and right; merged ones have len 0.
        let mut start: Vec<usize> = Vec::new();
        let mut len: Vec<usize> = Vec::new();
        for (i, ch) in s.char_indices() {
            start.push(i);
            len.push(ch.len_utf8());
        }
        let n = start.len();
        let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
        let mut next: Vec<Option<usize>> = (0..n).map(|i| (i + 1 < n).then_some(i + 1)).collect();
        let mut heap = BinaryHeap::new();
        let push =
            |heap: &mut BinaryHeap<Bigram>, l: usize, r: usize, start: &[usize], len: &[usize]| {
                let text = &s[start[l]..start[r] + len[r]];
                if let Some(&id) = self.vocab.get(text) {
                    heap.push(Bigram {
                        score: self.scores.get(id as usize).copied().unwrap_or(0.0),
                        left: l,
                        right: r,
                        len: text.len(),
                    });
                }
            };
        for i in 1..n {
            push(&mut heap, i - 1, i, &start, &len);
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (b.left, b.right);
            if len[l] == 0 || len[r] == 0 || len[l] + len[r] != b.len || next[l] != Some(r) {
                continue;
            }
            len[l] += len[r];
            len[r] = 0;
            next[l] = next[r];
            if let Some(nn) = next[r] {
                prev[nn] = Some(l);
            }
            if let Some(p) = prev[l] {
                push(&mut heap, p, l, &start, &len);
            }
            if let Some(nn) = next[l] {
                push(&mut heap, l, nn, &start, &len);
            }
        }
        let mut i = if n > 0 { Some(0) } else { None };
        while let Some(k) = i {
            let piece = &s[start[k]..start[k] + len[k]];
            match self.vocab.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for b in piece.bytes() {
                        if let Some(id) = self.byte_tokens[b as usize].or(self.unk) {
                            out.push(id);
                        }
                    }
                }
            }
            i = next[k];
        }
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.texts.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

/// GPT-2's byte ↔ printable-character table: byte-level BPE vocabularies store each byte
/// as one of these characters.
fn unicode_to_byte() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut extra = 0u32;
    for b in 0u32..256 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
        let c = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        if let Some(ch) = char::from_u32(c) {
            map.insert(ch, b as u8);
        }
    }
    map
}

fn id_of(g: &Gguf, key: &str) -> Option<u32> {
    g.get(key)
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata.
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer, GgufError> {
        let model = g.str("tokenizer.ggml.model")?;
        if model != "gpt2" && model != "llama" {
            return Err(g.missing(format!(
                "tokenizer `{model}` is not supported by the embedded engine (it reads byte-level BPE, `gpt2`, and SentencePiece, `llama`)"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>, GgufError> {
            let arr = g
                .get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| g.missing(format!("metadata `{key}` (an array) is missing")))?;
            arr.iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| g.missing(format!("`{key}` holds a non-string")))
                })
                .collect()
        };
        let texts = strings("tokenizer.ggml.tokens")?;
        let types: Vec<u64> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(a) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            None => vec![1; texts.len()],
        };
        let (encoder, bytes) = if model == "llama" {
            spm(g, &texts, &types)?
        } else {
            bpe(g, &texts, &types, strings("tokenizer.ggml.merges")?)?
        };

        let bos = id_of(g, "tokenizer.ggml.bos_token_id");
        let eos = id_of(g, "tokenizer.ggml.eos_token_id");
        let mut eog: HashSet<u32> = [
            eos,
            id_of(g, "tokenizer.ggml.eot_token_id"),
            id_of(g, "tokenizer.ggml.eom_token_id"),
        ]
        .into_iter()
        .flatten()
        .collect();
        for (i, (s, &t)) in texts.iter().zip(&types).enumerate() {
            if t == TYPE_CONTROL && END_OF_TURN.contains(&s.as_str()) {
                eog.insert(i as u32);
            }
        }
        Ok(Tokenizer {
            encoder,
            bytes,
            texts,
            eog,
            bos,
            eos,
            add_bos: g
                .get("tokenizer.ggml.add_bos_token")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// Token ids of `text`, with special-token texts matched whole, and BOS first when the
    /// model asks for it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let mut ids = match &self.encoder {
            Encoder::Bpe(hf) => hf
                .encode(text, false)
                .map_err(|e| e.to_string())?
                .get_ids()
                .to_vec(),
            Encoder::Spm(spm) => spm.encode(text),
        };
        if self.add_bos {
            if let Some(b) = self.bos {
                if ids.first() != Some(&b) {
                    ids.insert(0, b);
                }
            }
        }
        Ok(ids)
    }

    /// The bytes a token adds to the output (empty for control tokens).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes
            .get(id as usize)
            .and_then(|b| b.as_deref())
            .unwrap_or(&[])
    }

    /// Does this token end generation?
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// A token's stored text.
    pub fn text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(String::as_str)
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }

    /// Decodes ids to text (lossy for incomplete UTF-8).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| self.token_bytes(i).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Bytes per token and the encoder of a byte-level BPE vocabulary.
fn bpe(
    g: &Gguf,
    texts: &[String],
    types: &[u64],
    merges: Vec<String>,
) -> Result<(Encoder, TokenBytes), GgufError> {
    let merges: Vec<(String, String)> = merges
        .into_iter()
        .filter_map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect();
    let vocab: tokenizers::models::bpe::Vocab = texts
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| g.missing(format!("cannot build the BPE tokenizer: {e}")))?;
    let mut hf = HfTokenizer::new(bpe);
    let pre = g
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("gpt2");
    hf.with_pre_tokenizer(Some(pre_tokenizer(pre).map_err(|e| {
        g.missing(format!("cannot build the `{pre}` pre-tokenizer: {e}"))
    })?));
    hf.with_decoder(Some(ByteLevelDecoder::default()));
    // Control and user-defined tokens are matched whole in the text, as llama.cpp does
    // with special-token parsing on (chat templates write them literally).
    let specials: Vec<AddedToken> = texts
        .iter()
        .zip(types)
        .filter(|(_, &t)| t == TYPE_CONTROL || t == TYPE_USER_DEFINED)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    hf.add_special_tokens(specials)
        .map_err(|e| g.missing(format!("cannot add the special tokens: {e}")))?;

    let table = unicode_to_byte();
    let bytes = texts
        .iter()
        .zip(types)
        .map(|(s, &t)| match t {
            TYPE_CONTROL | TYPE_UNUSED => None,
            TYPE_USER_DEFINED => Some(s.as_bytes().to_vec()),
            _ => {
                let mut out = Vec::with_capacity(s.len());
                for ch in s.chars() {
                    match table.get(&ch) {
                        Some(&b) => out.push(b),
                        None => {
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
                Some(out)
            }
        })
        .collect();
    Ok((Encoder::Bpe(Box::new(hf)), bytes))
}

/// `<0xNN>` → NN.
fn byte_token(s: &str) -> Option<u8> {
    let hex = s.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

/// Bytes per token and the encoder of a SentencePiece vocabulary.
fn spm(g: &Gguf, texts: &[String], types: &[u64]) -> Result<(Encoder, TokenBytes), GgufError> {
    let scores: Vec<f32> = g
        .get("tokenizer.ggml.scores")
        .and_then(Value::as_array)
        .ok_or_else(|| g.missing("metadata `tokenizer.ggml.scores` (an array) is missing".into()))?
        .iter()
        .map(|v| v.as_f64().unwrap_or(0.0) as f32)
        .collect();
    let mut vocab = HashMap::with_capacity(texts.len());
    let mut byte_tokens = [None; 256];
    let mut specials: HashMap<u8, Vec<(String, u32)>> = HashMap::new();
    let mut bytes = Vec::with_capacity(texts.len());
    for (i, (s, &t)) in texts.iter().zip(types).enumerate() {
        let id = i as u32;
        match t {
            TYPE_BYTE => {
                if let Some(b) = byte_token(s) {
                    byte_tokens[b as usize] = Some(id);
                }
            }
            TYPE_CONTROL | TYPE_USER_DEFINED if !s.is_empty() => {
                if let Some(&b0) = s.as_bytes().first() {
                    specials.entry(b0).or_default().push((s.clone(), id));
                }
            }
            _ => {}
        }
        if t != TYPE_CONTROL && t != TYPE_BYTE {
            vocab.entry(s.clone()).or_insert(id);
        }
        bytes.push(match t {
            TYPE_CONTROL | TYPE_UNUSED => None,
            TYPE_BYTE => byte_token(s).map(|b| vec![b]),
            _ => Some(s.replace('\u{2581}', " ").into_bytes()),
        });
    }
    for list in specials.values_mut() {
        list.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
    }
    // llama.cpp's rule, by model name: every special but <unk>, <s> and <|endoftext|>.
    let name = g
        .get("general.name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_lowercase();
    let rstrip = if name.contains("phi-3") || name.contains("phi3") {
        specials
            .values()
            .flatten()
            .filter(|(s, _)| !["<unk>", "<s>", "<|endoftext|>"].contains(&s.as_str()))
            .map(|&(_, id)| id)
            .collect()
    } else {
        HashSet::new()
    };
    let spm = Spm {
        vocab,
        scores,
        byte_tokens,
        unk: id_of(g, "tokenizer.ggml.unknown_token_id"),
        specials,
        add_space_prefix: g
            .get("tokenizer.ggml.add_space_prefix")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        rstrip,
    };
    Ok((Encoder::Spm(Box::new(spm)), bytes))
}

fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, String> {
    // No prefix space: llama.cpp never adds one for BPE, and with one `<|im_start|>user`
    // would tokenise `user` as ` user`.
    let byte_level = |regex: bool| ByteLevel::new(false, true, regex);
    let split = |re: &str| -> Result<PreTokenizerWrapper, String> {
        Ok(Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| e.to_string())?
        .into())
    };
    Ok(match pre {
        // Digits one by one, then GPT-2's split.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into()
        }
        "llama3" | "llama-bpe" | "smaug-bpe" | "falcon3" | "pixtral" => {
            Sequence::new(vec![split(REGEX_LLAMA3)?, byte_level(false).into()]).into()
        }
        "qwen2" | "deepseek-r1-qwen" => {
            Sequence::new(vec![split(REGEX_QWEN2)?, byte_level(false).into()]).into()
        }
        _ => byte_level(true).into(),
    })
}

/// Turns a stream of token bytes into valid UTF-8 pieces: bytes of a character split across
/// tokens are held until the character is complete.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes; returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // An unfinished character: hold its bytes for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // An invalid sequence is replaced, not held.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left (lossy).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_covers_every_byte() {
        let t = unicode_to_byte();
        assert_eq!(t.len(), 256);
        assert_eq!(t[&'Ġ'], b' ');
        assert_eq!(t[&'Ċ'], b'\n');
        assert_eq!(t[&'a'], b'a');
    }

    #[test]
    fn utf8_stream_holds_split_characters() {
        let mut s = Utf8Stream::default();
        let e = "é".as_bytes();
        assert_eq!(s.push(b"caf"), "caf");
        assert_eq!(s.push(&e[..1]), "");
        assert_eq!(s.push(&e[1..]), "é");
        assert_eq!(s.push(&[0xff, b'x']), "\u{fffd}x");
        assert_eq!(s.push(&e[..1]), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }

    /// A tiny SentencePiece vocabulary: merges by score, a byte fallback, a special token
    /// matched whole, `▁` decoded as a space.
    #[test]
    fn sentencepiece_merges_by_score_with_byte_fallback() {
        use crate::gguf::{self, ValueType};
        let toks = [
            ("<unk>", 2, 0.0),
            ("<s>", 3, 0.0),
            ("</s>", 3, 0.0),
            ("<0x41>", 6, 0.0),
            ("\u{2581}", 1, -10.0),
            ("h", 1, -10.0),
            ("e", 1, -10.0),
            ("l", 1, -10.0),
            ("o", 1, -10.0),
            ("he", 1, -1.0),
            ("ll", 1, -2.0),
            ("hell", 1, -3.0),
            ("hello", 1, -4.0),
            ("<start_of_turn>", 3, 0.0),
        ];
        let mut meta = std::collections::BTreeMap::new();
        meta.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
        meta.insert(
            "tokenizer.ggml.tokens".into(),
            Value::Array(
                ValueType::String,
                toks.iter().map(|t| Value::String(t.0.into())).collect(),
            ),
        );
        meta.insert(
            "tokenizer.ggml.token_type".into(),
            Value::Array(
                ValueType::I32,
                toks.iter().map(|t| Value::I32(t.1)).collect(),
            ),
        );
        meta.insert(
            "tokenizer.ggml.scores".into(),
            Value::Array(
                ValueType::F32,
                toks.iter().map(|t| Value::F32(t.2)).collect(),
            ),
        );
        meta.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
        meta.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
        meta.insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.gguf");
        gguf::write(&path, &meta, &[], |_| Ok(Vec::new())).expect("write");
        let t = Tokenizer::from_gguf(&Gguf::open(&path).expect("reads")).expect("builds");
        let ids = t.encode("hello A<start_of_turn>").expect("encodes");
        assert_eq!(ids, vec![1, 12, 4, 3, 13]);
        assert_eq!(t.decode(&ids), "hello A");
    }
}

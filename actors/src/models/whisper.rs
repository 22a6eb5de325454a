//! Whisper models for the store: the converter from a CTranslate2 (faster-whisper) model
//! directory to the ggml file whisper.cpp loads, and a checker for existing ggml files.
//!
//! The format facts this follows are in the design notes (WHISPER_CT2.md): CTranslate2's
//! `model.bin` (version 6) holds named tensors with fused attention projections; the ggml
//! file holds hyperparameters, 80 (or 128) Slaney mel filters, the GPT-2 byte-level
//! vocabulary as raw bytes, then the tensors under openai-whisper's names. 2-D and
//! convolution weights are written as f16, everything else as f32; int8/int16 quantised
//! CTranslate2 weights are dequantised with their `weight_scale`.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

// Both file formats are little-endian and are read and written with bulk byte casts.
#[cfg(target_endian = "big")]
compile_error!("the whisper model converter assumes a little-endian host");

use half::slice::HalfFloatSliceExt;
use zerocopy::IntoBytes;

/// The ggml file magic (`"ggml"` as a little-endian u32).
pub const GGML_MAGIC: u32 = 0x6767_6d6c;

/// Whisper's audio front end: 16 kHz, 400-point FFT (201 bins).
const SAMPLE_RATE: f64 = 16_000.0;
const N_FFT: usize = 400;

/// What can go wrong converting or checking a whisper model.
#[derive(Debug, thiserror::Error)]
pub enum WhisperModelError {
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file ends before what its header announces.
    #[error(
        "{path} is truncated: {what} at byte {offset} runs past the end of the file ({len} bytes)"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// Where.
        offset: u64,
        /// The file's length.
        len: u64,
    },
    /// Not the expected format.
    #[error("{path}: {message}")]
    Format {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor the model needs is absent.
    #[error("{path}: missing tensor `{name}` (not a complete CTranslate2 Whisper model)")]
    Missing {
        /// model.bin.
        path: PathBuf,
        /// The tensor.
        name: String,
    },
}

/// The hyperparameters at the start of a ggml whisper file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct WhisperHparams {
    /// Vocabulary size (51864 English-only, 51865+ multilingual).
    pub n_vocab: i32,
    /// Audio positions (1500).
    pub n_audio_ctx: i32,
    /// Encoder width.
    pub n_audio_state: i32,
    /// Encoder attention heads.
    pub n_audio_head: i32,
    /// Encoder layers.
    pub n_audio_layer: i32,
    /// Text positions (448).
    pub n_text_ctx: i32,
    /// Decoder width.
    pub n_text_state: i32,
    /// Decoder attention heads.
    pub n_text_head: i32,
    /// Decoder layers.
    pub n_text_layer: i32,
    /// Mel bands (80, or 128 for large-v3).
    pub n_mels: i32,
    /// Weight type: ggml's file type (1 = f16, 7 = q8_0), plus 1000 × the quantisation
    /// version in quantised files.
    pub ftype: i32,
}

impl WhisperHparams {
    /// The usual size name (`tiny`, `base`, ...) from the encoder's layers and width.
    pub fn size_name(&self) -> &'static str {
        match (self.n_audio_layer, self.n_audio_state) {
            (4, 384) => "tiny",
            (6, 512) => "base",
            (12, 768) => "small",
            (24, 1024) => "medium",
            (32, 1280) => "large",
            _ => "custom",
        }
    }

    /// The weights' type: `f16`, `q8_0`, ….
    pub fn weights_name(&self) -> String {
        match self.ftype % 1000 {
            0 => "f32".into(),
            1 => "f16".into(),
            2 => "q4_0".into(),
            3 => "q4_1".into(),
            7 => "q8_0".into(),
            8 => "q5_0".into(),
            9 => "q5_1".into(),
            t => format!("ggml file type {t}"),
        }
    }

    /// Is the vocabulary the multilingual one?
    pub fn multilingual(&self) -> bool {
        self.n_vocab >= 51865
    }

    /// How many tensors a complete file of this shape holds.
    pub fn expected_tensors(&self) -> usize {
        // Encoder: positions, 2 convs (w, b), per block 15, final norm (w, b).
        // Decoder: positions, token embedding, per block 24, final norm (w, b).
        (7 + 15 * self.n_audio_layer + 4 + 24 * self.n_text_layer).max(0) as usize
    }
}

/// What [`convert_ct2`] made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertReport {
    /// The written file's hyperparameters.
    pub hparams: WhisperHparams,
    /// Tensors written.
    pub tensors: usize,
    /// Vocabulary entries written.
    pub vocab: usize,
    /// The weights' type in model.bin (`float16`, `int8`, ...).
    pub source_dtype: String,
    /// Bytes written.
    pub bytes: u64,
}

/// How the converter stores the weight matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhisperWeights {
    /// 16-bit floats, as the checkpoints are.
    F16,
    /// ggml's Q8_0 (per 32 values, an f16 scale and 32 signed bytes): about half the size,
    /// and whisper.cpp's encoder and decoder run faster on it (docs/voice.md, Models).
    #[default]
    Q8_0,
}

impl WhisperWeights {
    /// The file header's `ftype`: ggml's file type, quantised ones tagged with ggml's
    /// quantisation version (2) times 1000, as whisper.cpp's own quantiser writes it.
    fn ftype(self) -> i32 {
        match self {
            WhisperWeights::F16 => 1,
            WhisperWeights::Q8_0 => 2 * 1000 + 7,
        }
    }

    /// `f16`, `q8_0`.
    pub fn name(self) -> &'static str {
        match self {
            WhisperWeights::F16 => "f16",
            WhisperWeights::Q8_0 => "q8_0",
        }
    }
}

/// ggml type ids of the tensors written.
const GGML_F32: i32 = 0;
const GGML_F16: i32 = 1;
const GGML_Q8_0: i32 = 8;
/// Values per Q8_0 block.
const QK8_0: usize = 32;

/// `values` (a multiple of 32) as ggml Q8_0 blocks, by ggml's reference rule
/// (`quantize_row_q8_0_ref`): scale max|x| / 127, each value times its inverse, rounded
/// half away from zero.
pub fn q8_0_blocks(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / QK8_0 * 34);
    for block in values.chunks_exact(QK8_0) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

// ---- mel filters ---------------------------------------------------------------------------

fn hz_to_mel(f: f64) -> f64 {
    // Slaney's scale (librosa's default, htk=False): linear below 1 kHz, log above.
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = (6.4f64).ln() / 27.0;
    if f >= min_log_hz {
        min_log_mel + (f / min_log_hz).ln() / logstep
    } else {
        f / f_sp
    }
}

fn mel_to_hz(m: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = (6.4f64).ln() / 27.0;
    if m >= min_log_mel {
        min_log_hz * (logstep * (m - min_log_mel)).exp()
    } else {
        f_sp * m
    }
}

/// Slaney-normalised mel filters, `n_mels` × 201, row-major, for 16 kHz audio and a
/// 400-point FFT: what librosa's `filters.mel(sr=16000, n_fft=400, n_mels=n)` returns and
/// openai-whisper ships as `mel_filters.npz`.
pub fn mel_filters(n_mels: usize) -> Vec<f32> {
    let n_bins = N_FFT / 2 + 1;
    let fft_freqs: Vec<f64> = (0..n_bins)
        .map(|i| i as f64 * (SAMPLE_RATE / 2.0) / (n_bins - 1) as f64)
        .collect();
    let (min_mel, max_mel) = (hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2.0));
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(min_mel + (max_mel - min_mel) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut out = vec![0f32; n_mels * n_bins];
    for m in 0..n_mels {
        let (lo, mid, hi) = (mel_f[m], mel_f[m + 1], mel_f[m + 2]);
        let enorm = 2.0 / (hi - lo);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let lower = (f - lo) / (mid - lo);
            let upper = (hi - f) / (hi - mid);
            let w = lower.min(upper).max(0.0);
            out[m * n_bins + k] = (w * enorm) as f32;
        }
    }
    out
}

// ---- GPT-2 byte-level characters -------------------------------------------------------------

/// The inverse of GPT-2's `bytes_to_unicode`: the character standing for each byte.
pub fn gpt2_byte_decoder() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = printable.clone();
    let mut n = 0;
    for b in 0..=255u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    printable
        .iter()
        .zip(&chars)
        .filter_map(|(&b, &c)| Some((char::from_u32(c)?, b as u8)))
        .collect()
}

/// One token's raw bytes from its byte-level spelling.
fn token_bytes(token: &str, decoder: &HashMap<char, u8>) -> Option<Vec<u8>> {
    token.chars().map(|c| decoder.get(&c).copied()).collect()
}

// ---- CTranslate2 model.bin -------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Ct2Var {
    dims: Vec<usize>,
    dtype: u8,
    offset: u64,
    nbytes: u64,
}

impl Ct2Var {
    fn elements(&self) -> usize {
        self.dims.iter().product()
    }
}

fn dtype_name(d: u8) -> &'static str {
    match d {
        0 => "float32",
        1 => "int8",
        2 => "int16",
        3 => "int32",
        4 => "float16",
        5 => "bfloat16",
        _ => "unknown",
    }
}

fn dtype_size(d: u8) -> Option<usize> {
    match d {
        0 | 3 => Some(4),
        1 => Some(1),
        2 | 4 | 5 => Some(2),
        _ => None,
    }
}

/// A parsed model.bin: variable headers (data stays on disk until asked for).
struct Ct2Model {
    path: PathBuf,
    file: BufReader<File>,
    len: u64,
    vars: HashMap<String, Ct2Var>,
}

/// A bounds-checked little-endian reader over the file's header part.
struct HeaderReader<'a> {
    path: &'a Path,
    file: &'a mut BufReader<File>,
    pos: u64,
    len: u64,
}

impl HeaderReader<'_> {
    fn take(&mut self, n: u64, what: &str) -> Result<Vec<u8>, WhisperModelError> {
        if self.pos + n > self.len {
            return Err(WhisperModelError::Truncated {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                offset: self.pos,
                len: self.len,
            });
        }
        let mut buf = vec![0u8; n as usize];
        self.file
            .read_exact(&mut buf)
            .map_err(|source| WhisperModelError::Io {
                path: self.path.to_path_buf(),
                source,
            })?;
        self.pos += n;
        Ok(buf)
    }

    fn u8(&mut self, what: &str) -> Result<u8, WhisperModelError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, WhisperModelError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, WhisperModelError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self, what: &str) -> Result<String, WhisperModelError> {
        let n = self.u16(what)?;
        let b = self.take(u64::from(n), what)?;
        let b = b.strip_suffix(&[0]).unwrap_or(&b);
        Ok(String::from_utf8_lossy(b).into_owned())
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<(), WhisperModelError> {
        if self.pos + n > self.len {
            return Err(WhisperModelError::Truncated {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                offset: self.pos,
                len: self.len,
            });
        }
        self.file
            .seek(SeekFrom::Current(n as i64))
            .map_err(|source| WhisperModelError::Io {
                path: self.path.to_path_buf(),
                source,
            })?;
        self.pos += n;
        Ok(())
    }
}

impl Ct2Model {
    fn open(path: &Path) -> Result<Ct2Model, WhisperModelError> {
        let io = |source| WhisperModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let f = File::open(path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        let mut file = BufReader::with_capacity(1 << 20, f);
        let format = |message: String| WhisperModelError::Format {
            path: path.to_path_buf(),
            message,
        };
        let mut vars = HashMap::new();
        {
            let mut r = HeaderReader {
                path,
                file: &mut file,
                pos: 0,
                len,
            };
            let version = r.u32("the version")?;
            if !(5..=6).contains(&version) {
                return Err(format(format!(
                    "not a CTranslate2 model.bin this converter reads (version {version}; expected 6)"
                )));
            }
            let spec = r.string("the spec name")?;
            if spec != "WhisperSpec" {
                return Err(format(format!(
                    "a CTranslate2 `{spec}` model, not a Whisper model"
                )));
            }
            let _revision = r.u32("the spec revision")?;
            let nvars = r.u32("the variable count")?;
            if nvars > 100_000 {
                return Err(format(format!("implausible variable count {nvars}")));
            }
            for i in 0..nvars {
                let what = format!("variable {i}");
                let name = r.string(&what)?;
                let rank = r.u8(&what)?;
                if rank > 8 {
                    return Err(format(format!("variable `{name}` has rank {rank}")));
                }
                let mut dims = Vec::with_capacity(rank as usize);
                for _ in 0..rank {
                    dims.push(r.u32(&what)? as usize);
                }
                let dtype = r.u8(&what)?;
                let nbytes = u64::from(r.u32(&what)?);
                let offset = r.pos;
                let var = Ct2Var {
                    dims,
                    dtype,
                    offset,
                    nbytes,
                };
                let expect = dtype_size(dtype)
                    .map(|s| s as u64 * var.elements() as u64)
                    .ok_or_else(|| format(format!("variable `{name}` has unknown type {dtype}")))?;
                if expect != nbytes {
                    return Err(format(format!(
                        "variable `{name}`: {nbytes} bytes for {} {} elements",
                        var.elements(),
                        dtype_name(dtype)
                    )));
                }
                r.skip(nbytes, &format!("the data of `{name}`"))?;
                vars.insert(name, var);
            }
            // Aliases (decoder/projection → the embeddings) are not needed: whisper.cpp
            // ties the output projection to the token embedding itself. Their presence
            // still marks a complete file.
            let aliases = r.u32("the alias count")?;
            if aliases > 100_000 {
                return Err(format(format!("implausible alias count {aliases}")));
            }
            for _ in 0..aliases {
                r.string("an alias")?;
                r.string("an alias")?;
            }
        }
        Ok(Ct2Model {
            path: path.to_path_buf(),
            file,
            len,
            vars,
        })
    }

    fn var(&self, name: &str) -> Result<&Ct2Var, WhisperModelError> {
        self.vars
            .get(name)
            .ok_or_else(|| WhisperModelError::Missing {
                path: self.path.clone(),
                name: name.to_string(),
            })
    }

    fn raw(&mut self, name: &str) -> Result<(Ct2Var, Vec<u8>), WhisperModelError> {
        let var = self.var(name)?.clone();
        if var.offset + var.nbytes > self.len {
            return Err(WhisperModelError::Truncated {
                path: self.path.clone(),
                what: format!("the data of `{name}`"),
                offset: var.offset,
                len: self.len,
            });
        }
        let io = |source| WhisperModelError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.seek(SeekFrom::Start(var.offset)).map_err(io)?;
        let mut buf = vec![0u8; var.nbytes as usize];
        self.file.read_exact(&mut buf).map_err(io)?;
        Ok((var, buf))
    }

    /// A variable as f32, dequantised when stored as int8/int16 with a `_scale`.
    fn f32(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>), WhisperModelError> {
        let (var, buf) = self.raw(name)?;
        let values: Vec<f32> = match var.dtype {
            // Both formats are little-endian, like every host Coda runs on: bulk casts
            // and half's slice conversion instead of per-element work.
            0 => {
                let mut v = vec![0f32; var.elements()];
                v.as_mut_bytes().copy_from_slice(&buf);
                v
            }
            4 => {
                let mut h = vec![half::f16::ZERO; var.elements()];
                h.as_mut_bytes().copy_from_slice(&buf);
                let mut v = vec![0f32; h.len()];
                h.convert_to_f32_slice(&mut v);
                v
            }
            5 => {
                let mut h = vec![half::bf16::ZERO; var.elements()];
                h.as_mut_bytes().copy_from_slice(&buf);
                let mut v = vec![0f32; h.len()];
                h.convert_to_f32_slice(&mut v);
                v
            }
            1 | 2 => {
                let q: Vec<f32> = if var.dtype == 1 {
                    buf.iter().map(|&b| f32::from(b as i8)).collect()
                } else {
                    buf.chunks_exact(2)
                        .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])))
                        .collect()
                };
                let scale_name = format!("{name}_scale");
                if !self.vars.contains_key(&scale_name) {
                    return Err(WhisperModelError::Format {
                        path: self.path.clone(),
                        message: format!(
                            "`{name}` is {} without `{scale_name}`: cannot dequantise it",
                            dtype_name(var.dtype)
                        ),
                    });
                }
                let (_, scale) = self.f32(&scale_name)?;
                dequantise(&q, &var.dims, &scale).ok_or_else(|| WhisperModelError::Format {
                    path: self.path.clone(),
                    message: format!(
                        "`{scale_name}` has {} values for `{name}` of shape {:?}",
                        scale.len(),
                        var.dims
                    ),
                })?
            }
            other => {
                return Err(WhisperModelError::Format {
                    path: self.path.clone(),
                    message: format!(
                        "`{name}` has type {} which holds no weights",
                        dtype_name(other)
                    ),
                })
            }
        };
        Ok((var.dims, values))
    }

    /// A scalar (e.g. `encoder/num_heads`) as an integer.
    fn scalar(&mut self, name: &str) -> Option<i64> {
        let (var, buf) = self.raw(name).ok()?;
        if !var.dims.is_empty() {
            return None;
        }
        Some(match var.dtype {
            1 => i64::from(buf[0] as i8),
            2 => i64::from(i16::from_le_bytes([buf[0], buf[1]])),
            3 => i64::from(i32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]])),
            0 => f32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as i64,
            _ => return None,
        })
    }

    fn layers(&self, prefix: &str) -> usize {
        let set: BTreeSet<usize> = self
            .vars
            .keys()
            .filter_map(|k| k.strip_prefix(prefix)?.split('/').next()?.parse().ok())
            .collect();
        set.len()
    }
}

/// CTranslate2 dequantisation: `w = q / scale`, one scale per row (int8) or one for all.
fn dequantise(q: &[f32], dims: &[usize], scale: &[f32]) -> Option<Vec<f32>> {
    let rows = dims.first().copied().unwrap_or(1).max(1);
    let cols = q.len() / rows;
    if scale.len() == 1 {
        let s = scale[0];
        return Some(q.iter().map(|v| v / s).collect());
    }
    if scale.len() != rows {
        return None;
    }
    Some(
        q.iter()
            .enumerate()
            .map(|(i, v)| v / scale[i / cols.max(1)])
            .collect(),
    )
}

// ---- the conversion --------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    F32,
    F16,
}

/// One output tensor: which source, which rows of it, and how to write it.
struct Planned {
    name: String,
    src: String,
    rows: Option<Range<usize>>,
    out: Out,
    /// numpy-order shape of the written tensor (reversed in the file).
    shape: Vec<usize>,
}

impl Planned {
    /// The ggml type it is written in: whisper.cpp loads the matrices (2-D f16 weights)
    /// in the file's weight type and keeps the convolutions in f16.
    fn ttype(&self, weights: WhisperWeights) -> i32 {
        match (self.out, weights) {
            (Out::F32, _) => GGML_F32,
            (Out::F16, WhisperWeights::Q8_0) if self.shape.len() == 2 => GGML_Q8_0,
            (Out::F16, _) => GGML_F16,
        }
    }
}

fn plan(m: &Ct2Model, hp: &WhisperHparams) -> Result<Vec<Planned>, WhisperModelError> {
    let mut p = Vec::new();
    let mut add = |name: String,
                   src: String,
                   rows: Option<Range<usize>>,
                   out: Out|
     -> Result<(), WhisperModelError> {
        let var = m.var(&src)?;
        let mut shape = var.dims.clone();
        if let Some(r) = &rows {
            if shape.is_empty() || r.end > shape[0] {
                return Err(WhisperModelError::Format {
                    path: m.path.clone(),
                    message: format!(
                        "`{src}` of shape {:?} cannot be split at rows {r:?}",
                        var.dims
                    ),
                });
            }
            shape[0] = r.len();
        }
        p.push(Planned {
            name,
            src,
            rows,
            out,
            shape,
        });
        Ok(())
    };
    let d_a = hp.n_audio_state as usize;
    let d_t = hp.n_text_state as usize;
    let lin = |add: &mut dyn FnMut(
        String,
        String,
        Option<Range<usize>>,
        Out,
    ) -> Result<(), WhisperModelError>,
               dst: &str,
               src: &str,
               rows: Option<Range<usize>>,
               bias: bool|
     -> Result<(), WhisperModelError> {
        add(
            format!("{dst}.weight"),
            format!("{src}/weight"),
            rows.clone(),
            Out::F16,
        )?;
        if bias {
            add(format!("{dst}.bias"), format!("{src}/bias"), rows, Out::F32)?;
        }
        Ok(())
    };
    let norm = |add: &mut dyn FnMut(
        String,
        String,
        Option<Range<usize>>,
        Out,
    ) -> Result<(), WhisperModelError>,
                dst: &str,
                src: &str|
     -> Result<(), WhisperModelError> {
        add(
            format!("{dst}.weight"),
            format!("{src}/gamma"),
            None,
            Out::F32,
        )?;
        add(format!("{dst}.bias"), format!("{src}/beta"), None, Out::F32)
    };

    // The feed-forward part of a block, the same in the encoder and the decoder.
    let ffn = |add: &mut dyn FnMut(
        String,
        String,
        Option<Range<usize>>,
        Out,
    ) -> Result<(), WhisperModelError>,
               d: &str,
               s: &str|
     -> Result<(), WhisperModelError> {
        lin(
            add,
            &format!("{d}.mlp.0"),
            &format!("{s}/ffn/linear_0"),
            None,
            true,
        )?;
        lin(
            add,
            &format!("{d}.mlp.2"),
            &format!("{s}/ffn/linear_1"),
            None,
            true,
        )?;
        norm(add, &format!("{d}.mlp_ln"), &format!("{s}/ffn/layer_norm"))
    };

    add(
        "encoder.positional_embedding".into(),
        "encoder/position_encodings/encodings".into(),
        None,
        Out::F32,
    )?;
    for c in ["conv1", "conv2"] {
        add(
            format!("encoder.{c}.weight"),
            format!("encoder/{c}/weight"),
            None,
            Out::F16,
        )?;
        add(
            format!("encoder.{c}.bias"),
            format!("encoder/{c}/bias"),
            None,
            Out::F32,
        )?;
    }
    for i in 0..hp.n_audio_layer {
        let (s, d) = (format!("encoder/layer_{i}"), format!("encoder.blocks.{i}"));
        let sa = format!("{s}/self_attention");
        lin(
            &mut add,
            &format!("{d}.attn.query"),
            &format!("{sa}/linear_0"),
            Some(0..d_a),
            true,
        )?;
        lin(
            &mut add,
            &format!("{d}.attn.key"),
            &format!("{sa}/linear_0"),
            Some(d_a..2 * d_a),
            false,
        )?;
        lin(
            &mut add,
            &format!("{d}.attn.value"),
            &format!("{sa}/linear_0"),
            Some(2 * d_a..3 * d_a),
            true,
        )?;
        lin(
            &mut add,
            &format!("{d}.attn.out"),
            &format!("{sa}/linear_1"),
            None,
            true,
        )?;
        norm(
            &mut add,
            &format!("{d}.attn_ln"),
            &format!("{sa}/layer_norm"),
        )?;
        ffn(&mut add, &d, &s)?;
    }
    norm(&mut add, "encoder.ln_post", "encoder/layer_norm")?;

    add(
        "decoder.positional_embedding".into(),
        "decoder/position_encodings/encodings".into(),
        None,
        Out::F32,
    )?;
    add(
        "decoder.token_embedding.weight".into(),
        "decoder/embeddings/weight".into(),
        None,
        Out::F16,
    )?;
    for i in 0..hp.n_text_layer {
        let (s, d) = (format!("decoder/layer_{i}"), format!("decoder.blocks.{i}"));
        let sa = format!("{s}/self_attention");
        lin(
            &mut add,
            &format!("{d}.attn.query"),
            &format!("{sa}/linear_0"),
            Some(0..d_t),
            true,
        )?;
        lin(
            &mut add,
            &format!("{d}.attn.key"),
            &format!("{sa}/linear_0"),
            Some(d_t..2 * d_t),
            false,
        )?;
        lin(
            &mut add,
            &format!("{d}.attn.value"),
            &format!("{sa}/linear_0"),
            Some(2 * d_t..3 * d_t),
            true,
        )?;
        lin(
            &mut add,
            &format!("{d}.attn.out"),
            &format!("{sa}/linear_1"),
            None,
            true,
        )?;
        norm(
            &mut add,
            &format!("{d}.attn_ln"),
            &format!("{sa}/layer_norm"),
        )?;
        let ca = format!("{s}/attention");
        lin(
            &mut add,
            &format!("{d}.cross_attn.query"),
            &format!("{ca}/linear_0"),
            None,
            true,
        )?;
        lin(
            &mut add,
            &format!("{d}.cross_attn.key"),
            &format!("{ca}/linear_1"),
            Some(0..d_t),
            false,
        )?;
        lin(
            &mut add,
            &format!("{d}.cross_attn.value"),
            &format!("{ca}/linear_1"),
            Some(d_t..2 * d_t),
            true,
        )?;
        lin(
            &mut add,
            &format!("{d}.cross_attn.out"),
            &format!("{ca}/linear_2"),
            None,
            true,
        )?;
        norm(
            &mut add,
            &format!("{d}.cross_attn_ln"),
            &format!("{ca}/layer_norm"),
        )?;
        ffn(&mut add, &d, &s)?;
    }
    norm(&mut add, "decoder.ln", "decoder/layer_norm")?;

    // Conv biases are [n, 1] in whisper.cpp.
    for t in &mut p {
        if t.name.starts_with("encoder.conv") && t.name.ends_with(".bias") {
            t.shape.push(1);
        }
    }
    Ok(p)
}

fn read_vocabulary(dir: &Path) -> Result<Vec<String>, WhisperModelError> {
    let txt = dir.join("vocabulary.txt");
    let json = dir.join("vocabulary.json");
    let tokens: Vec<String> = if txt.is_file() {
        let text = std::fs::read_to_string(&txt).map_err(|source| WhisperModelError::Io {
            path: txt.clone(),
            source,
        })?;
        text.lines().map(str::to_string).collect()
    } else if json.is_file() {
        let bytes = std::fs::read(&json).map_err(|source| WhisperModelError::Io {
            path: json.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| WhisperModelError::Format {
            path: json.clone(),
            message: format!("not a JSON list of tokens: {e}"),
        })?
    } else {
        return Err(WhisperModelError::Format {
            path: dir.to_path_buf(),
            message:
                "no vocabulary.txt or vocabulary.json (not a CTranslate2 Whisper model directory)"
                    .into(),
        });
    };
    let end = tokens
        .iter()
        .position(|t| t == "<|endoftext|>")
        .ok_or_else(|| WhisperModelError::Format {
            path: dir.to_path_buf(),
            message: "the vocabulary has no <|endoftext|> token".into(),
        })?;
    Ok(tokens[..end].to_vec())
}

/// An I/O error on `path`.
fn io_err(path: &Path) -> impl Fn(std::io::Error) -> WhisperModelError + '_ {
    move |source| WhisperModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `out` through `write` into `out.partial`, synced and renamed over `out` only
/// when complete; on an error the partial file is removed and `out` left as it was.
fn write_whole<T>(
    out: &Path,
    write: impl FnOnce(&mut BufWriter<File>, &Path) -> Result<T, WhisperModelError>,
) -> Result<T, WhisperModelError> {
    let tmp = out.with_extension("partial");
    let result = (|| {
        let f = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let value = write(&mut w, &tmp)?;
        w.flush().map_err(io_err(&tmp))?;
        let f = w.into_inner().map_err(|e| WhisperModelError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        f.sync_all().map_err(io_err(&tmp))?;
        Ok(value)
    })();
    match result {
        Ok(value) => {
            std::fs::rename(&tmp, out).map_err(io_err(out))?;
            Ok(value)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Converts the CTranslate2 Whisper model in `dir` (model.bin, vocabulary.txt or .json)
/// into a ggml file at `out` (written to `out.partial` first, renamed when complete).
/// `progress(done, total)` reports bytes written.
pub fn convert_ct2(
    dir: &Path,
    out: &Path,
    weights: WhisperWeights,
    mut progress: impl FnMut(u64, u64),
) -> Result<ConvertReport, WhisperModelError> {
    let model_path = dir.join("model.bin");
    if !model_path.is_file() {
        return Err(WhisperModelError::Format {
            path: dir.to_path_buf(),
            message: "no model.bin (not a CTranslate2 model directory)".into(),
        });
    }
    let mut m = Ct2Model::open(&model_path)?;
    let vocab = read_vocabulary(dir)?;
    let decoder = gpt2_byte_decoder();

    let dims = |m: &Ct2Model, name: &str, n: usize| -> Result<Vec<usize>, WhisperModelError> {
        let v = m.var(name)?;
        if v.dims.len() != n {
            return Err(WhisperModelError::Format {
                path: m.path.clone(),
                message: format!("`{name}` has shape {:?}, expected {n} dimensions", v.dims),
            });
        }
        Ok(v.dims.clone())
    };
    let emb = dims(&m, "decoder/embeddings/weight", 2)?;
    let apos = dims(&m, "encoder/position_encodings/encodings", 2)?;
    let tpos = dims(&m, "decoder/position_encodings/encodings", 2)?;
    let conv1 = dims(&m, "encoder/conv1/weight", 3)?;
    let n_audio_layer = m.layers("encoder/layer_");
    let n_text_layer = m.layers("decoder/layer_");
    let heads = |m: &mut Ct2Model, name: &str, width: usize| {
        m.scalar(name)
            .filter(|h| *h > 0)
            .map(|h| h as usize)
            .unwrap_or(width / 64)
    };
    let n_audio_head = heads(&mut m, "encoder/num_heads", apos[1]);
    let n_text_head = heads(&mut m, "decoder/num_heads", tpos[1]);
    let as_i32 = |v: usize| i32::try_from(v).unwrap_or(i32::MAX);
    let hp = WhisperHparams {
        n_vocab: as_i32(emb[0]),
        n_audio_ctx: as_i32(apos[0]),
        n_audio_state: as_i32(apos[1]),
        n_audio_head: as_i32(n_audio_head),
        n_audio_layer: as_i32(n_audio_layer),
        n_text_ctx: as_i32(tpos[0]),
        n_text_state: as_i32(tpos[1]),
        n_text_head: as_i32(n_text_head),
        n_text_layer: as_i32(n_text_layer),
        n_mels: as_i32(conv1[1]),
        ftype: weights.ftype(),
    };
    if n_audio_layer == 0 || n_text_layer == 0 {
        return Err(WhisperModelError::Format {
            path: model_path,
            message: "no encoder or decoder layers".into(),
        });
    }
    if vocab.len() > emb[0] {
        return Err(WhisperModelError::Format {
            path: dir.to_path_buf(),
            message: format!(
                "{} vocabulary entries for an embedding of {} rows",
                vocab.len(),
                emb[0]
            ),
        });
    }
    let source_dtype = dtype_name(m.var("decoder/embeddings/weight")?.dtype).to_string();
    let planned = plan(&m, &hp)?;
    if let Some(t) = planned
        .iter()
        .find(|t| t.ttype(weights) == GGML_Q8_0 && !t.shape[1].is_multiple_of(QK8_0))
    {
        return Err(WhisperModelError::Format {
            path: model_path,
            message: format!(
                "`{}` has rows of {} values, which Q8_0 (blocks of {QK8_0}) cannot hold; convert with f16 weights",
                t.name, t.shape[1]
            ),
        });
    }
    let size_of = |t: &Planned| {
        let n = t.shape.iter().product::<usize>() as u64;
        ggml_bytes(t.ttype(weights), n).unwrap_or(n * 4)
    };
    let total: u64 = planned.iter().map(size_of).sum();

    let bytes = write_whole(out, |w, tmp| {
        let mut written = 0u64;
        let mut put = |w: &mut BufWriter<File>, bytes: &[u8]| -> Result<(), WhisperModelError> {
            written += bytes.len() as u64;
            w.write_all(bytes).map_err(io_err(tmp))
        };
        let i32s =
            |vals: &[i32]| -> Vec<u8> { vals.iter().flat_map(|v| v.to_le_bytes()).collect() };
        put(w, &GGML_MAGIC.to_le_bytes())?;
        put(
            w,
            &i32s(&[
                hp.n_vocab,
                hp.n_audio_ctx,
                hp.n_audio_state,
                hp.n_audio_head,
                hp.n_audio_layer,
                hp.n_text_ctx,
                hp.n_text_state,
                hp.n_text_head,
                hp.n_text_layer,
                hp.n_mels,
                hp.ftype,
            ]),
        )?;
        let n_mels = hp.n_mels as usize;
        put(w, &i32s(&[hp.n_mels, (N_FFT / 2 + 1) as i32]))?;
        put(w, mel_filters(n_mels).as_bytes())?;
        put(w, &i32s(&[as_i32(vocab.len())]))?;
        for (i, token) in vocab.iter().enumerate() {
            let bytes = token_bytes(token, &decoder).ok_or_else(|| WhisperModelError::Format {
                path: dir.to_path_buf(),
                message: format!("vocabulary entry {i} `{token}` is not GPT-2 byte-level text"),
            })?;
            put(w, &i32s(&[as_i32(bytes.len())]))?;
            put(w, &bytes)?;
        }
        let mut cache: Option<(String, Vec<usize>, Vec<f32>)> = None;
        let mut done = 0u64;
        for t in &planned {
            if cache.as_ref().is_none_or(|(n, _, _)| *n != t.src) {
                let (d, v) = m.f32(&t.src)?;
                cache = Some((t.src.clone(), d, v));
            }
            let Some((_, src_dims, values)) = &cache else {
                continue;
            };
            let slice: &[f32] = match &t.rows {
                Some(r) => {
                    let cols: usize = src_dims[1..].iter().product();
                    &values[r.start * cols..r.end * cols]
                }
                None => values,
            };
            let ttype = t.ttype(weights);
            let mut header = i32s(&[as_i32(t.shape.len()), as_i32(t.name.len()), ttype]);
            for d in t.shape.iter().rev() {
                header.extend_from_slice(&as_i32(*d).to_le_bytes());
            }
            header.extend_from_slice(t.name.as_bytes());
            put(w, &header)?;
            match ttype {
                GGML_F32 => put(w, slice.as_bytes())?,
                GGML_Q8_0 => put(w, &q8_0_blocks(slice))?,
                _ => {
                    let mut h = vec![half::f16::ZERO; slice.len()];
                    h.convert_from_f32_slice(slice);
                    put(w, h.as_bytes())?;
                }
            }
            done += size_of(t);
            progress(done, total);
        }
        Ok(written)
    })?;
    Ok(ConvertReport {
        hparams: hp,
        tensors: planned.len(),
        vocab: vocab.len(),
        source_dtype,
        bytes,
    })
}

// ---- checking a ggml file --------------------------------------------------------------------

/// Bytes of `n` elements of a ggml type, for the types whisper models use.
fn ggml_bytes(ttype: i32, n: u64) -> Option<u64> {
    // (block size, bytes per block)
    let (block, size) = match ttype {
        0 => (1, 4),
        1 => (1, 2),
        2 => (32, 18),
        3 => (32, 20),
        6 => (32, 22),
        7 => (32, 24),
        8 => (32, 34),
        _ => return None,
    };
    n.is_multiple_of(block).then_some(n / block * size)
}

/// Reads and checks a ggml whisper file: magic, plausible hyperparameters, mel filters,
/// vocabulary, and every tensor header with its data inside the file and the tensor count
/// a model of this shape has. A truncated or foreign file is a clear error.
pub fn check_ggml(path: &Path) -> Result<(WhisperHparams, usize), WhisperModelError> {
    let io = |source| WhisperModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut file = BufReader::new(f);
    let mut r = HeaderReader {
        path,
        file: &mut file,
        pos: 0,
        len,
    };
    let format = |message: String| WhisperModelError::Format {
        path: path.to_path_buf(),
        message,
    };
    let magic = r.u32("the magic")?;
    if magic != GGML_MAGIC {
        return Err(format(format!(
            "not a ggml whisper model (magic {magic:#010x}, expected {GGML_MAGIC:#010x})"
        )));
    }
    let mut h = [0i32; 11];
    for v in &mut h {
        *v = r.u32("the hyperparameters")? as i32;
    }
    let hp = WhisperHparams {
        n_vocab: h[0],
        n_audio_ctx: h[1],
        n_audio_state: h[2],
        n_audio_head: h[3],
        n_audio_layer: h[4],
        n_text_ctx: h[5],
        n_text_state: h[6],
        n_text_head: h[7],
        n_text_layer: h[8],
        n_mels: h[9],
        ftype: h[10],
    };
    if h[..10].iter().any(|v| *v <= 0 || *v > 1_000_000) || hp.n_mels > 512 {
        return Err(format(format!("implausible hyperparameters {hp:?}")));
    }
    let n_mel = r.u32("the mel filter shape")?;
    let n_fft = r.u32("the mel filter shape")?;
    if n_mel > 512 || n_fft > 4096 {
        return Err(format(format!(
            "implausible mel filter shape {n_mel}x{n_fft}"
        )));
    }
    r.skip(u64::from(n_mel) * u64::from(n_fft) * 4, "the mel filters")?;
    let n_words = r.u32("the vocabulary size")?;
    if n_words as i32 > hp.n_vocab {
        return Err(format(format!(
            "{n_words} vocabulary entries for n_vocab {}",
            hp.n_vocab
        )));
    }
    for i in 0..n_words {
        let l = r.u32("a vocabulary entry")?;
        if l > 4096 {
            return Err(format(format!("vocabulary entry {i} has length {l}")));
        }
        r.skip(u64::from(l), "a vocabulary entry")?;
    }
    let mut tensors = 0usize;
    while r.pos < len {
        let what = format!("tensor {tensors}");
        let n_dims = r.u32(&what)?;
        let name_len = r.u32(&what)?;
        let ttype = r.u32(&what)? as i32;
        if !(1..=4).contains(&n_dims) || name_len == 0 || name_len > 1024 {
            return Err(format(format!(
                "{what} has a corrupt header ({n_dims} dims, name of {name_len} bytes)"
            )));
        }
        let mut n = 1u64;
        for _ in 0..n_dims {
            n = n.saturating_mul(u64::from(r.u32(&what)?));
        }
        let name = String::from_utf8_lossy(&r.take(u64::from(name_len), &what)?).into_owned();
        let bytes = ggml_bytes(ttype, n)
            .ok_or_else(|| format(format!("tensor `{name}` has unsupported type {ttype}")))?;
        r.skip(bytes, &format!("the data of tensor `{name}`"))?;
        tensors += 1;
    }
    if tensors != hp.expected_tensors() {
        return Err(format(format!(
            "{tensors} tensors where a model of this shape has {}: incomplete or not a whisper model",
            hp.expected_tensors()
        )));
    }
    Ok((hp, tensors))
}

/// Writes the f16 ggml whisper model `src` to `out` with its matrices (2-D f16 tensors) in
/// Q8_0 (`out.partial` first, renamed when complete;
/// `src` is checked with [`check_ggml`] before anything is written). Only f16 models: one
/// already quantised, or in f32, is a clear error.
pub fn requantize_ggml(
    src: &Path,
    out: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<(WhisperHparams, usize), WhisperModelError> {
    let (hp, tensors) = check_ggml(src)?;
    let format = |message: String| WhisperModelError::Format {
        path: src.to_path_buf(),
        message,
    };
    if hp.ftype % 1000 != WhisperWeights::F16.ftype() {
        return Err(format(format!(
            "its weights are of ggml file type {} (not f16): only an f16 model can be requantised",
            hp.ftype
        )));
    }
    let io_src = io_err(src);
    let f = File::open(src).map_err(&io_src)?;
    let total = f.metadata().map_err(&io_src)?.len();
    let mut r = BufReader::with_capacity(1 << 20, f);
    write_whole(out, |w, tmp| {
        let mut read = |n: usize| -> Result<Vec<u8>, WhisperModelError> {
            let mut b = vec![0u8; n];
            r.read_exact(&mut b).map_err(&io_src)?;
            Ok(b)
        };
        let le = |b: &[u8]| i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let put = |w: &mut BufWriter<File>, parts: &[&[u8]]| -> Result<(), WhisperModelError> {
            parts
                .iter()
                .try_for_each(|b| w.write_all(b).map_err(io_err(tmp)))
        };
        // Everything up to the tensors is copied but the file type.
        let mut head = read(4 + 11 * 4)?;
        head[44..48].copy_from_slice(&WhisperWeights::Q8_0.ftype().to_le_bytes());
        let mels = read(8)?;
        let mel_data = read((le(&mels[..4]) as usize) * (le(&mels[4..]) as usize) * 4)?;
        let n_words = read(4)?;
        put(w, &[&head, &mels, &mel_data, &n_words])?;
        for _ in 0..le(&n_words) {
            let l = read(4)?;
            let word = read(le(&l) as usize)?;
            put(w, &[&l, &word])?;
        }
        let mut done = 0u64;
        for _ in 0..tensors {
            let mut h = read(12)?;
            let (n_dims, name_len, ttype) = (le(&h[..4]), le(&h[4..8]), le(&h[8..]));
            let dims_raw = read(n_dims as usize * 4)?;
            let dims: Vec<u64> = dims_raw.chunks_exact(4).map(|d| le(d) as u64).collect();
            let name = read(name_len as usize)?;
            let n: u64 = dims.iter().product();
            let bytes = ggml_bytes(ttype, n).unwrap_or(0);
            let mut data = read(bytes as usize)?;
            if ttype == GGML_F16 && n_dims == 2 {
                if !dims[0].is_multiple_of(QK8_0 as u64) {
                    return Err(format(format!(
                        "`{}` has rows of {} values, which Q8_0 (blocks of {QK8_0}) cannot hold",
                        String::from_utf8_lossy(&name),
                        dims[0]
                    )));
                }
                let values: Vec<f32> = data
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect();
                data = q8_0_blocks(&values);
                h[8..].copy_from_slice(&GGML_Q8_0.to_le_bytes());
            }
            put(w, &[&h, &dims_raw, &name, &data])?;
            done += 12 + (dims_raw.len() + name.len()) as u64 + bytes;
            progress(done, total);
        }
        Ok(())
    })?;
    check_ggml(out)
}

/// Does this file start with the ggml magic?
pub fn is_ggml(path: &Path) -> bool {
    let mut b = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
        && u32::from_le_bytes(b) == GGML_MAGIC
}

#[cfg(test)]
mod tests;

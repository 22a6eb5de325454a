//! GGUF files: reading the header (metadata and tensor directory) with every length and
//! offset checked against the file, reading one tensor's bytes, and writing a new file.
//!
//! Format: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md> (versions 2 and 3).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::quant::GgmlType;

/// `GGUF` in little-endian.
const MAGIC: u32 = 0x4655_4747;
/// The default data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Limits that keep a corrupt header from asking for absurd allocations.
const MAX_STRING: u64 = 64 << 20;
const MAX_DIMS: u32 = 4;

/// What can go wrong reading or writing a GGUF.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not a GGUF at all.
    #[error("{0}: not a GGUF file (no GGUF magic at the start)")]
    NotGguf(PathBuf),
    /// A GGUF version this reader does not know.
    #[error("{path}: GGUF version {version} is not supported (2 and 3 are)")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u32,
    },
    /// The file ends early.
    #[error(
        "{path}: truncated GGUF ({what}); the file is incomplete — download or import it again"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Where it ended.
        what: String,
    },
    /// The structure is inconsistent.
    #[error("{path}: corrupt GGUF: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A needed metadata key or tensor is missing or has the wrong type.
    #[error("{path}: {what}")]
    Missing {
        /// The file.
        path: PathBuf,
        /// What is missing.
        what: String,
    },
    /// A tensor type this engine cannot read.
    #[error("{path}: tensor `{tensor}` has type {ty}, which this engine cannot read (it reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)")]
    UnsupportedType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its ggml type name.
        ty: String,
    },
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f32
    F32(f32),
    /// f64
    F64(f64),
    /// bool
    Bool(bool),
    /// UTF-8 string (invalid bytes replaced).
    String(String),
    /// A typed array (all elements of one type).
    Array(ValueType, Vec<Value>),
}

/// The type tag of a metadata value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// 0
    U8,
    /// 1
    I8,
    /// 2
    U16,
    /// 3
    I16,
    /// 4
    U32,
    /// 5
    I32,
    /// 6
    F32,
    /// 7
    Bool,
    /// 8
    String,
    /// 9
    Array,
    /// 10
    U64,
    /// 11
    I64,
    /// 12
    F64,
}

impl ValueType {
    fn from_u32(v: u32) -> Option<ValueType> {
        Some(match v {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return None,
        })
    }

    fn to_u32(self) -> u32 {
        match self {
            ValueType::U8 => 0,
            ValueType::I8 => 1,
            ValueType::U16 => 2,
            ValueType::I16 => 3,
            ValueType::U32 => 4,
            ValueType::I32 => 5,
            ValueType::F32 => 6,
            ValueType::Bool => 7,
            ValueType::String => 8,
            ValueType::Array => 9,
            ValueType::U64 => 10,
            ValueType::I64 => 11,
            ValueType::F64 => 12,
        }
    }

    /// Smallest encoded size of one element (to bound array lengths by the file size).
    fn min_size(self) -> u64 {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
            ValueType::Array => 12,
        }
    }
}

impl Value {
    /// The type tag.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F32(_) => ValueType::F32,
            Value::F64(_) => ValueType::F64,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
        }
    }

    /// Any integer as u64 (negative ones are `None`).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any number as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The string, when it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bool, when it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, when it is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, v) => Some(v),
            _ => None,
        }
    }
}

/// One tensor's directory entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// ggml dimensions, fastest-varying first (`[cols, rows]` for a matrix).
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Size of the data in bytes.
    pub fn byte_size(&self) -> u64 {
        self.ty.byte_size(self.elements())
    }
}

/// A parsed GGUF header.
#[derive(Debug, Clone)]
pub struct Gguf {
    /// The file it came from.
    pub path: PathBuf,
    /// The format version.
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensor directory, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
    /// Total file size.
    pub file_size: u64,
}

struct Reader<R> {
    inner: R,
    pos: u64,
    size: u64,
    path: PathBuf,
}

impl<R: Read> Reader<R> {
    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, GgufError> {
        if n > self.size.saturating_sub(self.pos) {
            return Err(self.truncated(what));
        }
        let len = usize::try_from(n).map_err(|_| self.corrupt(format!("{what} too large")))?;
        let mut buf = vec![0u8; len];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| self.io(e, what))?;
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        if (N as u64) > self.size.saturating_sub(self.pos) {
            return Err(self.truncated(what));
        }
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| self.io(e, what))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        if len > MAX_STRING {
            return Err(self.corrupt(format!("{what}: string of {len} bytes")));
        }
        let bytes = self.bytes(len, what)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    fn value(&mut self, ty: ValueType, what: &str, depth: u32) -> Result<Value, GgufError> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(what)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.corrupt(format!("{what}: bool byte {b}"))),
            },
            ValueType::String => Value::String(self.string(what)?),
            ValueType::Array => {
                if depth > 2 {
                    return Err(self.corrupt(format!("{what}: arrays nested too deep")));
                }
                let raw = self.u32(what)?;
                let elem = ValueType::from_u32(raw)
                    .ok_or_else(|| self.corrupt(format!("{what}: unknown array type {raw}")))?;
                let len = self.u64(what)?;
                let left = self.size.saturating_sub(self.pos);
                if len.saturating_mul(elem.min_size()) > left {
                    return Err(self.truncated(what));
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(elem, what, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }

    fn truncated(&self, what: &str) -> GgufError {
        GgufError::Truncated {
            path: self.path.clone(),
            what: format!("ends inside {what} at byte {}", self.pos),
        }
    }

    fn corrupt(&self, what: String) -> GgufError {
        GgufError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    fn io(&self, e: std::io::Error, what: &str) -> GgufError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            self.truncated(what)
        } else {
            GgufError::Io {
                path: self.path.clone(),
                source: e,
            }
        }
    }
}

impl Gguf {
    /// Reads and checks the header of `path`: metadata, tensor directory, and that every
    /// tensor's data lies inside the file.
    pub fn open(path: &Path) -> Result<Gguf, GgufError> {
        let io = |e| GgufError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let file = File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let mut r = Reader {
            inner: BufReader::with_capacity(1 << 20, file),
            pos: 0,
            size,
            path: path.to_path_buf(),
        };
        if size < 4 {
            return Err(GgufError::NotGguf(path.to_path_buf()));
        }
        if r.u32("magic")? != MAGIC {
            return Err(GgufError::NotGguf(path.to_path_buf()));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version {
                path: path.to_path_buf(),
                version,
            });
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // Each entry takes at least 8 (+ more) bytes: bounds the counts by the file size.
        if n_tensors.saturating_add(n_kv).saturating_mul(8) > size {
            return Err(r.corrupt(format!(
                "claims {n_tensors} tensors and {n_kv} metadata entries in a {size}-byte file"
            )));
        }
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key #{i}"))?;
            let raw = r.u32(&format!("type of metadata `{key}`"))?;
            let ty = ValueType::from_u32(raw)
                .ok_or_else(|| r.corrupt(format!("metadata `{key}` has unknown type {raw}")))?;
            let value = r.value(ty, &format!("metadata `{key}`"), 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor name #{i}"))?;
            let n_dims = r.u32(&format!("dimensions of `{name}`"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(r.corrupt(format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&format!("dimensions of `{name}`"))?);
            }
            let raw = r.u32(&format!("type of `{name}`"))?;
            let ty = GgmlType::from_u32(raw)
                .ok_or_else(|| r.corrupt(format!("tensor `{name}` has unknown type {raw}")))?;
            let offset = r.u64(&format!("offset of `{name}`"))?;
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => return Err(r.corrupt(format!("bad general.alignment {v:?}"))),
            },
        };
        let data_offset = r.pos.div_ceil(alignment) * alignment;
        let gguf = Gguf {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_offset,
            file_size: size,
        };
        for t in &gguf.tensors {
            let elements = t
                .dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| gguf.corrupt(format!("tensor `{}` is too large", t.name)))?;
            if elements % t.ty.block_elems() != 0 {
                return Err(gguf.corrupt(format!(
                    "tensor `{}` has {elements} elements, not a whole number of {} blocks",
                    t.name,
                    t.ty.name()
                )));
            }
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.ty.byte_size(elements)))
                .ok_or_else(|| gguf.corrupt(format!("tensor `{}` offset overflows", t.name)))?;
            if end > size {
                return Err(GgufError::Truncated {
                    path: path.to_path_buf(),
                    what: format!(
                        "tensor `{}` needs bytes up to {end} but the file has {size}",
                        t.name
                    ),
                });
            }
        }
        Ok(gguf)
    }

    fn corrupt(&self, what: String) -> GgufError {
        GgufError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required string.
    pub fn str(&self, key: &str) -> Result<&str, GgufError> {
        self.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| self.missing(format!("metadata `{key}` (a string) is missing")))
    }

    /// A required unsigned integer.
    pub fn u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| self.missing(format!("metadata `{key}` (an integer) is missing")))
    }

    /// An optional number.
    pub fn f64_or(&self, key: &str, default: f64) -> f64 {
        self.get(key).and_then(Value::as_f64).unwrap_or(default)
    }

    /// A "missing" error for this file.
    pub fn missing(&self, what: String) -> GgufError {
        GgufError::Missing {
            path: self.path.clone(),
            what,
        }
    }

    /// A tensor's directory entry.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Reads one tensor's raw bytes.
    pub fn read_raw(&self, file: &mut File, t: &TensorInfo) -> Result<Vec<u8>, GgufError> {
        let io = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                GgufError::Truncated {
                    path: self.path.clone(),
                    what: format!("ends inside tensor `{}`", t.name),
                }
            } else {
                GgufError::Io {
                    path: self.path.clone(),
                    source: e,
                }
            }
        };
        let len =
            usize::try_from(t.byte_size()).map_err(|_| self.corrupt("tensor too large".into()))?;
        file.seek(SeekFrom::Start(self.data_offset + t.offset))
            .map_err(io)?;
        let mut buf = vec![0u8; len];
        crate::arena::huge_pages(buf.as_mut_ptr(), buf.len());
        file.read_exact(&mut buf).map_err(io)?;
        Ok(buf)
    }

    /// The matrices' element types (tensors of two or more dimensions), each with how
    /// many tensors have it, most bytes first (e.g. `Q5_0, Q8_0, Q4_K, Q6_K` for a Q4_K_M).
    pub fn matrix_types(&self) -> Vec<(&'static str, usize)> {
        let mut by: Vec<(&'static str, usize, u64)> = Vec::new();
        for t in self.tensors.iter().filter(|t| t.dims.len() >= 2) {
            match by.iter_mut().find(|(n, _, _)| *n == t.ty.name()) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += t.byte_size();
                }
                None => by.push((t.ty.name(), 1, t.byte_size())),
            }
        }
        by.sort_by_key(|e| std::cmp::Reverse(e.2));
        by.into_iter().map(|(n, c, _)| (n, c)).collect()
    }

    /// `general.architecture` and its `context_length`, when present.
    pub fn arch_and_context(&self) -> (Option<&str>, Option<u64>) {
        let arch = self.get("general.architecture").and_then(Value::as_str);
        let ctx = arch.and_then(|a| {
            self.get(&format!("{a}.context_length"))
                .and_then(Value::as_u64)
        });
        (arch, ctx)
    }

    /// Opens the file for [`Gguf::read_raw`].
    pub fn open_data(&self) -> Result<File, GgufError> {
        File::open(&self.path).map_err(|e| GgufError::Io {
            path: self.path.clone(),
            source: e,
        })
    }
}

/// A tensor to write: its name, ggml dims and type; its bytes come from a callback.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    /// Name.
    pub name: String,
    /// ggml dims (fastest first).
    pub dims: Vec<u64>,
    /// Type.
    pub ty: GgmlType,
}

impl TensorSpec {
    fn byte_size(&self) -> u64 {
        self.ty.byte_size(self.dims.iter().product())
    }
}

fn write_string<W: Write>(w: &mut W, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value<W: Write>(w: &mut W, v: &Value) -> std::io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&[*x]),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[u8::from(*x)]),
        Value::String(s) => write_string(w, s),
        Value::Array(ty, items) => {
            w.write_all(&ty.to_u32().to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            for item in items {
                write_value(w, item)?;
            }
            Ok(())
        }
    }
}

/// Writes a GGUF (version 3) to `path`: `metadata`, the directory of `tensors`, then each
/// tensor's bytes as `data(i)` returns them (one at a time, so a large model is never
/// whole in memory). Goes through a temporary file renamed into place, so a crash never
/// leaves a half-written model under that name.
pub fn write(
    path: &Path,
    metadata: &BTreeMap<String, Value>,
    tensors: &[TensorSpec],
    mut data: impl FnMut(usize) -> Result<Vec<u8>, GgufError>,
) -> Result<(), GgufError> {
    let tmp = path.with_extension("gguf.partial");
    let io = |e| GgufError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let alignment = metadata
        .get("general.alignment")
        .and_then(Value::as_u64)
        .filter(|a| *a > 0 && a.is_power_of_two())
        .unwrap_or(DEFAULT_ALIGNMENT);
    let result = (|| {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(io)?);
        let mut header = Vec::new();
        header.extend_from_slice(&MAGIC.to_le_bytes());
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            write_string(&mut header, k).map_err(io)?;
            header.extend_from_slice(&v.value_type().to_u32().to_le_bytes());
            write_value(&mut header, v).map_err(io)?;
        }
        let mut offset = 0u64;
        for t in tensors {
            write_string(&mut header, &t.name).map_err(io)?;
            header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ty.to_u32().to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.byte_size()).div_ceil(alignment) * alignment;
        }
        let pad = |len: u64| (len.div_ceil(alignment) * alignment - len) as usize;
        let zeros = vec![0u8; alignment as usize];
        w.write_all(&header).map_err(io)?;
        w.write_all(&zeros[..pad(header.len() as u64)])
            .map_err(io)?;
        for (i, t) in tensors.iter().enumerate() {
            let bytes = data(i)?;
            if bytes.len() as u64 != t.byte_size() {
                return Err(GgufError::Corrupt {
                    path: path.to_path_buf(),
                    what: format!(
                        "tensor `{}`: {} bytes given, {} expected",
                        t.name,
                        bytes.len(),
                        t.byte_size()
                    ),
                });
            }
            w.write_all(&bytes).map_err(io)?;
            w.write_all(&zeros[..pad(bytes.len() as u64)]).map_err(io)?;
        }
        w.flush().map_err(io)?;
        w.get_ref().sync_all().map_err(io)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(io)
}

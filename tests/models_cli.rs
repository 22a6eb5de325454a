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

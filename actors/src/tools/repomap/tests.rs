//! The map on fixture projects written to temp dirs.

use super::*;

fn write(root: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

const LIB: &str = r#"//! A tiny parser crate.
pub mod lexer;

/// Parses text into tokens.
#[derive(Debug)]
pub struct Parser {
    depth: usize,
}

impl Parser {
    /// Makes a parser.
    pub fn new() -> Self {
        Parser { depth: 0 }
    }

    pub fn parse(&self, text: &str) -> Vec<lexer::Token> {
        lexer::tokenize(text)
    }
}

/// The largest input.
pub const MAX_INPUT: usize = 1024;

pub enum Mode {
    Strict,
    Loose,
}

/// Walks a tree.
pub trait Visitor {
    fn visit(&self);
}

macro_rules! noisy {
    () => {};
}
"#;

const LEXER: &str = r#"
/// One token.
pub struct Token(pub String);

pub fn tokenize(text: &str) -> Vec<Token> {
    text.split_whitespace().map(|w| Token(w.to_string())).collect()
}
"#;

const MAIN: &str = r#"
fn main() {
    let p = fixture::Parser::new();
    let tokens = p.parse("a b c");
    println!("{}", tokens.len());
}
"#;

fn unused() -> String {
    (0..40)
        .map(|i| {
            format!(
                "/// Helper number {i}.\npub fn unused_helper_{i}(x: u32) -> u32 {{ x + {i} }}\n"
            )
        })
        .collect()
}

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            ("src/lib.rs", LIB),
            ("src/lexer.rs", LEXER),
            ("src/main.rs", MAIN),
            ("src/unused.rs", &unused()),
            ("target/generated.rs", "pub fn generated() {}"),
            (".gitignore", "target/\n"),
        ],
    );
    dir
}

fn settings(tokens: usize) -> RepoMapSettings {
    RepoMapSettings {
        tokens,
        ..Default::default()
    }
}

#[test]
fn what_the_chat_file_uses_ranks_first() {
    let dir = fixture();
    let map = build(dir.path(), &[PathBuf::from("src/main.rs")], &settings(4000)).unwrap();
    let first = &map.files[0];
    assert_eq!(first.path, "src/lib.rs", "{}", map.text);
    // In rank order (before grouping): the best definition is one main.rs uses.
    let ranked = {
        let tags = map
            .files
            .iter()
            .flat_map(|f| f.definitions.iter().map(move |d| (f, d)));
        let mut v: Vec<_> = tags.collect();
        v.sort_by(|a, b| b.1.rank.total_cmp(&a.1.rank));
        v
    };
    assert!(
        ["Parser", "new", "parse"].contains(&ranked[0].1.name.as_str()),
        "{:?}",
        ranked
            .iter()
            .take(5)
            .map(|(f, d)| (&f.path, &d.name, d.rank))
            .collect::<Vec<_>>()
    );
    let rank_of = |name: &str| {
        ranked
            .iter()
            .find(|(_, d)| d.name == name)
            .map(|(_, d)| d.rank)
    };
    assert!(
        rank_of("Parser") > rank_of("unused_helper_3"),
        "{}",
        map.text
    );
    assert!(
        rank_of("tokenize") > rank_of("unused_helper_3"),
        "{}",
        map.text
    );
    // The chat file's own definitions are in the chat already; ignored files are out.
    assert!(
        !map.text.contains("src/main.rs") && !map.text.contains("generated"),
        "{}",
        map.text
    );
}

#[test]
fn the_map_never_exceeds_its_budget_and_grows_with_it() {
    let dir = fixture();
    let mut last = 0;
    for tokens in [0, 20, 60, 150, 400, 5000] {
        let map = build(dir.path(), &[], &settings(tokens)).unwrap();
        assert!(
            map.tokens <= tokens,
            "{} > {tokens}:\n{}",
            map.tokens,
            map.text
        );
        assert_eq!(map.tokens, estimate_tokens(&map.text));
        let n: usize = map.files.iter().map(|f| f.definitions.len()).sum();
        assert!(n >= last, "{n} < {last} at {tokens}");
        last = n;
    }
    assert!(last > 40, "everything fits in 5000 tokens: {last}");
}

#[test]
fn rust_kinds_and_doc_comments() {
    let dir = fixture();
    let map = build(dir.path(), &[], &settings(100_000)).unwrap();
    let def = |name: &str| {
        map.files
            .iter()
            .flat_map(|f| &f.definitions)
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("no {name} in\n{}", map.text))
            .clone()
    };
    for (name, kind) in [
        ("Parser", "struct"),
        ("Mode", "enum"),
        ("Visitor", "trait"),
        ("MAX_INPUT", "constant"),
        ("new", "method"),
        ("tokenize", "function"),
        ("lexer", "module"),
        ("noisy", "macro"),
    ] {
        assert_eq!(def(name).kind, kind, "{name}");
    }
    assert_eq!(
        def("Parser").doc.as_deref(),
        Some("Parses text into tokens.")
    );
    assert_eq!(def("new").doc.as_deref(), Some("Makes a parser."));
    assert_eq!(def("Parser").signature, "pub struct Parser {");
    assert_eq!(def("Parser").line, 6);
}

#[test]
fn every_language_gives_its_definitions() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            (
                "app.py",
                "LIMIT = 10\n\nclass Shop:\n    \"\"\"A shop.\"\"\"\n    def buy(self):\n        return helper()\n\ndef helper():\n    pass\n",
            ),
            ("web.js", "// Adds.\nfunction add(a, b) { return a + b; }\nclass Cart { total() { return add(1, 2); } }\n"),
            ("types.ts", "export interface Item { id: number }\nexport class Store { get(): Item { return load(); } }\nexport function load(): Item { return { id: 1 }; }\nexport enum Color { Red }\n"),
            ("main.go", "package main\n\nconst Answer = 42\n\ntype Server struct{}\n\nfunc (s *Server) Run() {}\n\nfunc main() { s := Server{}; s.Run() }\n"),
            ("lib.c", "#define SIZE 8\nstruct point { int x; };\n/* Sums. */\nint sum(int a, int b) { return a + b; }\n"),
            ("shape.cpp", "class Shape {\npublic:\n  double area();\n};\nnamespace geo { int count() { return 1; } }\n"),
        ],
    );
    let map = build(dir.path(), &[], &settings(100_000)).unwrap();
    let has = |file: &str, name: &str, kind: &str| {
        map.files.iter().any(|f| {
            f.path == file
                && f.definitions
                    .iter()
                    .any(|d| d.name == name && d.kind == kind)
        })
    };
    for (file, name, kind) in [
        ("app.py", "Shop", "class"),
        ("app.py", "buy", "function"),
        ("app.py", "LIMIT", "constant"),
        ("web.js", "add", "function"),
        ("web.js", "Cart", "class"),
        ("types.ts", "Item", "interface"),
        ("types.ts", "Store", "class"),
        ("types.ts", "Color", "enum"),
        ("main.go", "Answer", "constant"),
        ("main.go", "Server", "type"),
        ("main.go", "Run", "method"),
        ("lib.c", "sum", "function"),
        ("lib.c", "point", "class"),
        ("lib.c", "SIZE", "constant"),
        ("shape.cpp", "Shape", "class"),
    ] {
        assert!(
            has(file, name, kind),
            "{file}: no {kind} {name} in\n{}",
            map.text
        );
    }
    let shop = map
        .files
        .iter()
        .flat_map(|f| &f.definitions)
        .find(|d| d.name == "Shop");
    assert_eq!(shop.and_then(|d| d.doc.as_deref()), Some("A shop."));
    let add = map
        .files
        .iter()
        .flat_map(|f| &f.definitions)
        .find(|d| d.name == "add");
    assert_eq!(add.and_then(|d| d.doc.as_deref()), Some("Adds."));
}

#[test]
fn tags_are_cached_per_file_by_size_and_time() {
    let dir = fixture();
    let cache = tempfile::tempdir().unwrap();
    let s = RepoMapSettings {
        cache_dir: Some(cache.path().to_path_buf()),
        ..settings(1000)
    };
    let first = build(dir.path(), &[], &s).unwrap();
    assert_eq!(first.stats.parsed, first.stats.files);
    assert_eq!(first.stats.files, 4);
    let again = build(dir.path(), &[], &s).unwrap();
    assert_eq!(again.stats.parsed, 0);
    assert_eq!(again.text, first.text);
    // One file changed: only it is read again, and the map shows the change.
    std::fs::write(
        dir.path().join("src/lexer.rs"),
        format!("{LEXER}\n/// Counts.\npub fn count_tokens() -> usize {{ 0 }}\n"),
    )
    .unwrap();
    let changed = build(
        dir.path(),
        &[],
        &RepoMapSettings {
            tokens: 100_000,
            ..s
        },
    )
    .unwrap();
    assert_eq!(changed.stats.parsed, 1);
    assert!(changed.text.contains("count_tokens"), "{}", changed.text);
}

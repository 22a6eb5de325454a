//! The languages of the repo map: which files, which grammar, which tag query.
//!
//! Each grammar crate ships a tag query (`TAGS_QUERY`: definitions of functions, methods,
//! classes, modules and the calls that reference them). What the map also wants is added
//! here: constants, Rust's structs, enums and traits by their own names (the stock query
//! calls them all `class`/`interface`), and type references, so a struct used as a type
//! counts as used and not only a function called.

use tree_sitter_tags::TagsConfiguration;

/// A language the map reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lang {
    Rust,
    Python,
    JavaScript,
    TypeScript,
    Tsx,
    Go,
    C,
    Cpp,
}

impl Lang {
    /// By file extension.
    pub fn of(path: &std::path::Path) -> Option<Lang> {
        let ext = path.extension()?.to_str()?;
        Some(match ext {
            "rs" => Lang::Rust,
            "py" | "pyi" => Lang::Python,
            "js" | "jsx" | "mjs" | "cjs" => Lang::JavaScript,
            "ts" | "mts" | "cts" => Lang::TypeScript,
            "tsx" => Lang::Tsx,
            "go" => Lang::Go,
            "c" | "h" => Lang::C,
            "cc" | "cpp" | "cxx" | "hpp" | "hh" | "hxx" => Lang::Cpp,
            _ => return None,
        })
    }

    /// The tag configuration (grammar and query).
    pub fn config(self) -> Result<TagsConfiguration, tree_sitter_tags::Error> {
        let (language, query): (tree_sitter::Language, String) = match self {
            Lang::Rust => (tree_sitter_rust::LANGUAGE.into(), RUST.to_string()),
            Lang::Python => (
                tree_sitter_python::LANGUAGE.into(),
                format!("{}\n{PYTHON_EXTRA}", tree_sitter_python::TAGS_QUERY),
            ),
            Lang::JavaScript => (
                tree_sitter_javascript::LANGUAGE.into(),
                tree_sitter_javascript::TAGS_QUERY.to_string(),
            ),
            Lang::TypeScript => (
                tree_sitter_typescript::LANGUAGE_TYPESCRIPT.into(),
                format!("{}\n{TS_EXTRA}", tree_sitter_typescript::TAGS_QUERY),
            ),
            Lang::Tsx => (
                tree_sitter_typescript::LANGUAGE_TSX.into(),
                format!("{}\n{TS_EXTRA}", tree_sitter_typescript::TAGS_QUERY),
            ),
            Lang::Go => (
                tree_sitter_go::LANGUAGE.into(),
                format!("{}\n{GO_EXTRA}", tree_sitter_go::TAGS_QUERY),
            ),
            Lang::C => (
                tree_sitter_c::LANGUAGE.into(),
                format!("{}\n{C_EXTRA}", tree_sitter_c::TAGS_QUERY),
            ),
            Lang::Cpp => (
                tree_sitter_cpp::LANGUAGE.into(),
                format!("{}\n{C_EXTRA}", tree_sitter_cpp::TAGS_QUERY),
            ),
        };
        TagsConfiguration::new(language, &query, "")
    }

    /// Every language's query together: tags cached under other queries are stale.
    pub fn queries_fingerprint() -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for q in [
            RUST,
            PYTHON_EXTRA,
            TS_EXTRA,
            GO_EXTRA,
            C_EXTRA,
            tree_sitter_python::TAGS_QUERY,
            tree_sitter_javascript::TAGS_QUERY,
            tree_sitter_typescript::TAGS_QUERY,
            tree_sitter_go::TAGS_QUERY,
            tree_sitter_c::TAGS_QUERY,
            tree_sitter_cpp::TAGS_QUERY,
        ] {
            h.update(q.as_bytes());
        }
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Line comments that document what follows them.
    pub fn doc_prefixes(self) -> &'static [&'static str] {
        match self {
            // `//!` documents the enclosing item, not the next one.
            Lang::Rust => &["///"],
            Lang::Python => &["#"],
            _ => &["///", "//", "/**", "/*", "*"],
        }
    }
}

/// Rust, in full: the stock query names structs, enums, unions and aliases all `class`.
const RUST: &str = r#"
(struct_item name: (type_identifier) @name) @definition.struct
(enum_item name: (type_identifier) @name) @definition.enum
(union_item name: (type_identifier) @name) @definition.union
(type_item name: (type_identifier) @name) @definition.type
(impl_item body: (declaration_list (function_item name: (identifier) @name) @definition.method))
(trait_item body: (declaration_list (function_item name: (identifier) @name) @definition.method))
(trait_item body: (declaration_list (function_signature_item name: (identifier) @name) @definition.method))
(source_file (function_item name: (identifier) @name) @definition.function)
(mod_item body: (declaration_list (function_item name: (identifier) @name) @definition.function))
(trait_item name: (type_identifier) @name) @definition.trait
(mod_item name: (identifier) @name) @definition.module
(macro_definition name: (identifier) @name) @definition.macro
(const_item name: (identifier) @name) @definition.constant
(static_item name: (identifier) @name) @definition.constant

(call_expression function: (identifier) @name) @reference.call
(call_expression function: (field_expression field: (field_identifier) @name)) @reference.method_call
(call_expression function: (scoped_identifier name: (identifier) @name)) @reference.call
(macro_invocation macro: (identifier) @name) @reference.call
(impl_item trait: (type_identifier) @name) @reference.implementation
(impl_item type: (type_identifier) @name !trait) @reference.implementation
(type_arguments (type_identifier) @name) @reference.type
(parameter type: (type_identifier) @name) @reference.type
(parameter type: (reference_type type: (type_identifier) @name)) @reference.type
(let_declaration type: (type_identifier) @name) @reference.type
(field_declaration type: (type_identifier) @name) @reference.type
(struct_expression name: (type_identifier) @name) @reference.type
(scoped_identifier path: (identifier) @name) @reference.type
(scoped_identifier path: (scoped_identifier name: (identifier) @name)) @reference.type
(scoped_type_identifier name: (type_identifier) @name) @reference.type
(function_item return_type: (type_identifier) @name) @reference.type
"#;

const PYTHON_EXTRA: &str = r#"
(module (expression_statement (assignment left: (identifier) @name) @definition.constant))
"#;

const TS_EXTRA: &str = r#"
(function_declaration name: (identifier) @name) @definition.function
(class_declaration name: (type_identifier) @name) @definition.class
(method_definition name: (property_identifier) @name) @definition.method
(enum_declaration name: (identifier) @name) @definition.enum
(type_alias_declaration name: (type_identifier) @name) @definition.type
(call_expression function: (identifier) @name) @reference.call
(call_expression function: (member_expression property: (property_identifier) @name)) @reference.method_call
"#;

const GO_EXTRA: &str = r#"
(const_spec name: (identifier) @name) @definition.constant
"#;

const C_EXTRA: &str = r#"
(preproc_def name: (identifier) @name) @definition.constant
(call_expression function: (identifier) @name) @reference.call
(type_identifier) @name @reference.type
"#;

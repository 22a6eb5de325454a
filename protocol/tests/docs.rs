//! Keeps `docs/protocol.md` in agreement with the code.
//!
//! The document has a `## Command reference` part and an `## Event reference` part; in
//! each, one ``### `name` `` section per type, in the order of `CommandType::ALL` and
//! `EventType::ALL`. Other `###` headings (categories) are allowed there and end the
//! previous section. Checked here:
//!
//! * every type has its section, and every section names a known type;
//! * every field of the type (from its JSON Schema, nested ones included) is named in
//!   backticks in the section's text, and the first table of the section marks exactly
//!   the optional top-level fields as `optional` (or `null`);
//! * every event section states its retention class and has JSON examples that parse as
//!   an `Envelope` of that type, round-trip through `EventData`, and contain no field the
//!   code does not know;
//! * every command section has JSON examples that `parse_command` accepts as that command
//!   and that contain no field the code does not know;
//! * every JSON block in the document is valid JSON, and every error code is documented.

use std::collections::BTreeSet;

use coda_protocol::*;
use serde_json::Value;

const DOC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");

#[derive(Debug, Clone, Copy, PartialEq)]
enum Part {
    Other,
    Commands,
    Events,
}

#[derive(Debug)]
struct CodeBlock {
    lang: String,
    text: String,
    line: usize,
}

#[derive(Debug)]
struct Section {
    part: Part,
    name: String,
    line: usize,
    /// The section's text outside code blocks.
    prose: String,
    blocks: Vec<CodeBlock>,
}

struct Doc {
    sections: Vec<Section>,
    /// Every code block of the document, sections included.
    blocks: Vec<CodeBlock>,
    /// Every line of the document outside code blocks.
    prose: String,
    /// Problems found while reading the structure.
    problems: Vec<String>,
}

fn read_doc() -> Doc {
    let text = std::fs::read_to_string(DOC_PATH)
        .unwrap_or_else(|error| panic!("cannot read {DOC_PATH}: {error}"));
    parse_doc(&text)
}

/// The type name of a ``### `name` `` heading.
fn type_heading(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("### `")?;
    let name = rest.strip_suffix('`')?;
    name.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        .then_some(name)
}

fn parse_doc(text: &str) -> Doc {
    let mut doc = Doc {
        sections: Vec::new(),
        blocks: Vec::new(),
        prose: String::new(),
        problems: Vec::new(),
    };
    let mut part = Part::Other;
    let mut current: Option<Section> = None;
    let mut fence: Option<CodeBlock> = None;

    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if let Some(block) = fence.as_mut() {
            if line.trim_start().starts_with("```") {
                let block = fence.take().expect("inside a fence");
                if let Some(section) = current.as_mut() {
                    section.blocks.push(CodeBlock {
                        lang: block.lang.clone(),
                        text: block.text.clone(),
                        line: block.line,
                    });
                }
                doc.blocks.push(block);
            } else {
                block.text.push_str(line);
                block.text.push('\n');
            }
            continue;
        }
        if let Some(lang) = line.trim_start().strip_prefix("```") {
            fence = Some(CodeBlock {
                lang: lang.trim().to_owned(),
                text: String::new(),
                line: number,
            });
            continue;
        }
        doc.prose.push_str(line);
        doc.prose.push('\n');

        let level = line.bytes().take_while(|&b| b == b'#').count();
        let is_heading = (1..=6).contains(&level) && line.as_bytes().get(level) == Some(&b' ');
        if is_heading && level <= 3 {
            if let Some(section) = current.take() {
                doc.sections.push(section);
            }
            if level <= 2 {
                part = if line.starts_with("## Command reference") {
                    Part::Commands
                } else if line.starts_with("## Event reference") {
                    Part::Events
                } else {
                    Part::Other
                };
            } else if let Some(name) = type_heading(line) {
                if part == Part::Other {
                    doc.problems.push(format!(
                        "line {number}: `{name}` heading outside the command and event references"
                    ));
                }
                current = Some(Section {
                    part,
                    name: name.to_owned(),
                    line: number,
                    prose: String::new(),
                    blocks: Vec::new(),
                });
                continue;
            } else if line.starts_with("### `") {
                doc.problems
                    .push(format!("line {number}: malformed type heading {line:?}"));
            }
        }
        if let Some(section) = current.as_mut() {
            section.prose.push_str(line);
            section.prose.push('\n');
        }
    }
    if let Some(block) = fence {
        doc.problems
            .push(format!("line {}: code block never closed", block.line));
    }
    if let Some(section) = current {
        doc.sections.push(section);
    }
    doc
}

fn sections(doc: &Doc, part: Part) -> Vec<&Section> {
    doc.sections.iter().filter(|s| s.part == part).collect()
}

fn json_blocks(section: &Section) -> Vec<&CodeBlock> {
    section.blocks.iter().filter(|b| b.lang == "json").collect()
}

/// JSON equality where numbers compare by value (`1500` equals `1500.0`).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Every property name in a schema, nested ones included.
fn property_names(schema: &Value, names: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Object(properties)) = map.get("properties") {
                names.extend(properties.keys().cloned());
            }
            for value in map.values() {
                property_names(value, names);
            }
        }
        Value::Array(items) => {
            for item in items {
                property_names(item, names);
            }
        }
        _ => {}
    }
}

/// Checks the field list of `schema` against a section; returns problems.
fn check_fields(kind: &str, section: &Section, schema: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let where_ = format!("{kind} `{}` (line {})", section.name, section.line);

    let mut names = BTreeSet::new();
    property_names(schema, &mut names);
    for name in &names {
        if !section.prose.contains(&format!("`{name}`")) {
            problems.push(format!("{where_}: field `{name}` is not documented"));
        }
    }

    // The first table lists the top-level fields; optional ones say so.
    let rows: Vec<&str> = section
        .prose
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .collect();
    let required: BTreeSet<&str> = schema["required"]
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let top: BTreeSet<&str> = schema["properties"]
        .as_object()
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let mut listed = BTreeSet::new();
    for row in rows.iter().skip(2) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(field) = cells
            .get(1)
            .and_then(|c| c.strip_prefix('`'))
            .and_then(|c| c.strip_suffix('`'))
        else {
            problems.push(format!("{where_}: table row without a field name: {row}"));
            continue;
        };
        listed.insert(field);
        if !top.contains(field) {
            problems.push(format!(
                "{where_}: table lists `{field}`, which the code does not have"
            ));
            continue;
        }
        let type_cell = cells.get(2).copied().unwrap_or_default();
        let says_optional = type_cell.contains("optional") || type_cell.contains("null");
        let is_optional = !required.contains(field);
        if says_optional != is_optional {
            problems.push(format!(
                "{where_}: `{field}` is {} in the code but the table says {type_cell:?}",
                if is_optional { "optional" } else { "required" }
            ));
        }
    }
    if !top.is_empty() && listed != top {
        problems.push(format!(
            "{where_}: the first table lists {listed:?}, the code has {top:?}"
        ));
    }
    if top.is_empty() && !section.prose.contains("No fields") {
        problems.push(format!("{where_}: has no fields; say \"No fields.\""));
    }
    problems
}

fn retention_label(retention: Retention) -> &'static str {
    match retention {
        Retention::Important => "important",
        Retention::LatestOnly => "latest-only",
        Retention::Transient => "transient",
        Retention::Direct => "direct",
    }
}

fn check_event_example(event_type: EventType, block: &CodeBlock) -> Result<(), String> {
    let original: Value =
        serde_json::from_str(&block.text).map_err(|e| format!("not JSON: {e}"))?;
    let envelope: Envelope =
        serde_json::from_value(original.clone()).map_err(|e| format!("not an Envelope: {e}"))?;
    if envelope.event_type() != event_type {
        return Err(format!("is a `{}` envelope", envelope.event_type()));
    }
    if envelope.version != PROTOCOL_VERSION {
        return Err(format!("has version {:?}", envelope.version));
    }
    // Round trip through EventData.
    let data = serde_json::to_value(&envelope.event).map_err(|e| e.to_string())?;
    let back: EventData = serde_json::from_value(data).map_err(|e| e.to_string())?;
    if back != envelope.event {
        return Err("does not round-trip through EventData".into());
    }
    // Nothing in the example that the code would drop (a misspelt optional field, say).
    let reserialized = serde_json::to_value(&envelope).map_err(|e| e.to_string())?;
    if !same_json(&reserialized, &original) {
        return Err(format!(
            "has fields the code does not know, or nulls for absent fields:\n  doc:  {original}\n  code: {reserialized}"
        ));
    }
    // The tolerant reader agrees, and replayed events decode too.
    let raw: RawEnvelope =
        serde_json::from_value(original).map_err(|e| format!("not a RawEnvelope: {e}"))?;
    match raw.decode() {
        Some(Ok(event)) if event == envelope.event => {}
        other => return Err(format!("RawEnvelope::decode gave {other:?}")),
    }
    if let EventData::Replay(replay) = &envelope.event {
        for inner in &replay.events {
            let decoded = inner
                .to_envelope()
                .ok_or_else(|| format!("replayed type `{}` is unknown", inner.event_type))?
                .map_err(|e| format!("replayed `{}` does not decode: {e}", inner.event_type))?;
            let reserialized = serde_json::to_value(&decoded).map_err(|e| e.to_string())?;
            let raw_value = serde_json::to_value(inner).map_err(|e| e.to_string())?;
            if !same_json(&reserialized, &raw_value) {
                return Err(format!(
                    "replayed `{}` has unknown fields",
                    inner.event_type
                ));
            }
            if inner.known_type().map(EventType::retention) == Some(Retention::Direct) {
                return Err("a replay holds a direct reply".into());
            }
        }
    }
    Ok(())
}

fn check_command_example(command_type: CommandType, block: &CodeBlock) -> Result<(), String> {
    let request = parse_command(&block.text).map_err(|r| format!("rejected: {r}"))?;
    if request.command.command_type() != command_type {
        return Err(format!("is a `{}` command", request.command.command_type()));
    }
    // Nothing in the example that the code would drop.
    let mut original: Value =
        serde_json::from_str(&block.text).map_err(|e| format!("not JSON: {e}"))?;
    if let Value::Object(frame) = &mut original {
        frame.retain(|_, value| !value.is_null());
        frame
            .entry("data")
            .or_insert_with(|| Value::Object(Default::default()));
    }
    let rebuilt: Value = serde_json::from_str(&request.to_json()).map_err(|e| e.to_string())?;
    if !same_json(&rebuilt, &original) {
        return Err(format!(
            "has fields the code does not know:\n  doc:  {original}\n  code: {rebuilt}"
        ));
    }
    Ok(())
}

#[test]
fn document_structure_is_sound() {
    let doc = read_doc();
    assert!(doc.problems.is_empty(), "{}", doc.problems.join("\n"));
    for section in &doc.sections {
        assert_ne!(section.part, Part::Other, "{section:?}");
    }
}

#[test]
fn every_command_has_one_section_in_order() {
    let doc = read_doc();
    let names: Vec<&str> = sections(&doc, Part::Commands)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    for name in &names {
        assert!(
            CommandType::parse(name).is_some(),
            "`### \\`{name}\\`` in the command reference names no command"
        );
    }
    let expected: Vec<&str> = CommandType::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        names, expected,
        "command sections (missing, extra or out of order)"
    );
}

#[test]
fn every_event_has_one_section_in_order() {
    let doc = read_doc();
    let names: Vec<&str> = sections(&doc, Part::Events)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    for name in &names {
        assert!(
            EventType::parse(name).is_some(),
            "`### \\`{name}\\`` in the event reference names no event type"
        );
    }
    let expected: Vec<&str> = EventType::ALL.iter().map(|e| e.as_str()).collect();
    assert_eq!(
        names, expected,
        "event sections (missing, extra or out of order)"
    );
}

#[test]
fn event_sections_document_every_field() {
    let doc = read_doc();
    let schema = schema_json();
    let mut problems = Vec::new();
    for section in sections(&doc, Part::Events) {
        problems.extend(check_fields(
            "event",
            section,
            &schema["events"][section.name.as_str()],
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn command_sections_document_every_field() {
    let doc = read_doc();
    let schema = schema_json();
    let mut problems = Vec::new();
    for section in sections(&doc, Part::Commands) {
        problems.extend(check_fields(
            "command",
            section,
            &schema["commands"][section.name.as_str()],
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn event_sections_state_their_retention() {
    let doc = read_doc();
    let mut problems = Vec::new();
    for section in sections(&doc, Part::Events) {
        let Some(event_type) = EventType::parse(&section.name) else {
            continue;
        };
        let expected = format!("**Retention:** {}", retention_label(event_type.retention()));
        let stated: Vec<&str> = section
            .prose
            .lines()
            .filter(|line| line.starts_with("**Retention:**"))
            .collect();
        if stated.len() != 1 || !stated[0].starts_with(&expected) {
            problems.push(format!(
                "`{}`: expected one line starting with {expected:?}, found {stated:?}",
                section.name
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn event_examples_are_valid_envelopes() {
    let doc = read_doc();
    let mut problems = Vec::new();
    for section in sections(&doc, Part::Events) {
        let Some(event_type) = EventType::parse(&section.name) else {
            continue;
        };
        let blocks = json_blocks(section);
        if blocks.is_empty() {
            problems.push(format!("`{}` has no ```json example", section.name));
        }
        for block in blocks {
            if let Err(problem) = check_event_example(event_type, block) {
                problems.push(format!(
                    "`{}` example at line {}: {problem}",
                    section.name, block.line
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn command_examples_parse_as_their_command() {
    let doc = read_doc();
    let mut problems = Vec::new();
    for section in sections(&doc, Part::Commands) {
        let Some(command_type) = CommandType::parse(&section.name) else {
            continue;
        };
        let blocks = json_blocks(section);
        if blocks.is_empty() {
            problems.push(format!("`{}` has no ```json example", section.name));
        }
        for block in blocks {
            if let Err(problem) = check_command_example(command_type, block) {
                problems.push(format!(
                    "`{}` example at line {}: {problem}",
                    section.name, block.line
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_json_block_is_json() {
    let doc = read_doc();
    let mut problems = Vec::new();
    for block in doc.blocks.iter().filter(|b| b.lang == "json") {
        if let Err(error) = serde_json::from_str::<Value>(&block.text) {
            problems.push(format!("line {}: {error}", block.line));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn general_examples_are_valid() {
    // The examples in the envelope and command sections before the references.
    let doc = read_doc();
    let envelope_example = doc
        .blocks
        .iter()
        .find(|b| b.lang == "json" && b.text.contains("\"seq\""))
        .expect("an envelope example");
    serde_json::from_str::<Envelope>(&envelope_example.text).expect("the envelope example");
    let command_example = doc
        .blocks
        .iter()
        .find(|b| b.lang == "json" && b.text.contains("\"timestamp\":\"2025"))
        .expect("a command example");
    parse_command(&command_example.text).expect("the command example");
}

#[test]
fn every_error_code_is_documented() {
    let doc = read_doc();
    for code in ErrorCode::ALL {
        let row = format!("| `{code}` |");
        assert!(
            doc.prose.contains(&row),
            "error code `{code}` has no row in the errors table"
        );
    }
}

#[test]
fn document_states_the_current_version() {
    let doc = read_doc();
    assert!(
        doc.prose
            .lines()
            .next()
            .is_some_and(|title| title.contains(PROTOCOL_VERSION)),
        "the title should name protocol version {PROTOCOL_VERSION}"
    );
}

#[test]
fn checker_catches_mistakes() {
    // The parser and the checks themselves, on a small broken document.
    let text = "# T\n## Event reference\n### `mode_change`\n**Retention:** latest-only.\n\n\
                | field | type | description |\n|---|---|---|\n| `mode` | string | x |\n\n\
                ```json\n{\"version\":\"1.0\",\"seq\":1,\"timestamp\":1.0,\"type\":\"mode_change\",\
                \"session_id\":\"system\",\"data\":{\"mode\":\"idle\",\"previus\":\"busy\"}}\n```\n\
                ## Other\n### `stray`\n";
    let doc = parse_doc(text);
    assert_eq!(doc.problems.len(), 1, "{:?}", doc.problems);
    let events = sections(&doc, Part::Events);
    assert_eq!(events.len(), 1);
    let section = events[0];
    let schema = schema_json();
    let problems = check_fields("event", section, &schema["events"]["mode_change"]);
    assert!(
        problems.iter().any(|p| p.contains("`previous`")),
        "{problems:?}"
    );
    let blocks = json_blocks(section);
    assert_eq!(blocks.len(), 1);
    let error = check_event_example(EventType::ModeChange, blocks[0]).expect_err("misspelt field");
    assert!(error.contains("does not know"), "{error}");
}

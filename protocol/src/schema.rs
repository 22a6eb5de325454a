//! The JSON Schema of the whole protocol, as one document.

use schemars::generate::SchemaSettings;
use schemars::{Schema, SchemaGenerator};
use serde_json::{Map, Value};

use crate::commands::data_schema;
use crate::events::{
    payload_schema, ComponentTiming, Config, HelloReply, MemoryItems, RawEnvelope, SystemInfo,
};
use crate::kinds::{CommandType, EventType};
use crate::version::PROTOCOL_VERSION;

/// The JSON Schema dialect of every schema in [`schema_json`].
pub const JSON_SCHEMA_DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// Every schema of the protocol in one JSON document:
///
/// ```json
/// {
///   "protocol_version": "1.0",
///   "json_schema_dialect": "https://json-schema.org/draft/2020-12/schema",
///   "envelope": { "...": "schema of every server message (RawEnvelope)" },
///   "events":   { "stt_result": { "...": "schema of its data" } },
///   "commands": { "text_input": { "...": "schema of its data" } },
///   "replies":  { "hello": { "...": "schema of the command_result data answering it" } }
/// }
/// ```
///
/// `replies` covers the commands whose `command_result` carries more than `{}`: `hello`,
/// the `get_*` commands and the memory commands.
///
/// Each schema is self-contained (JSON Schema 2020-12, subschemas inlined, no `$ref`), and
/// describes what a reader accepts: unknown properties are allowed everywhere.
pub fn schema_json() -> Value {
    let mut generator = SchemaGenerator::new(SchemaSettings::draft2020_12().with(|settings| {
        settings.inline_subschemas = true;
        settings.meta_schema = None;
    }));

    let envelope = generator.root_schema_for::<RawEnvelope>().to_value();

    let mut events = Map::new();
    for &event_type in EventType::ALL {
        let schema = payload_schema(&mut generator, event_type).to_value();
        events.insert(event_type.as_str().to_owned(), schema);
    }

    let mut commands = Map::new();
    for &command_type in CommandType::ALL {
        let schema = data_schema(&mut generator, command_type).to_value();
        commands.insert(command_type.as_str().to_owned(), schema);
    }

    let mut replies = Map::new();
    for &command_type in CommandType::ALL {
        if let Some(schema) = reply_schema(&mut generator, command_type) {
            replies.insert(command_type.as_str().to_owned(), schema.to_value());
        }
    }

    let mut document = Map::new();
    document.insert("protocol_version".to_owned(), PROTOCOL_VERSION.into());
    document.insert("json_schema_dialect".to_owned(), JSON_SCHEMA_DIALECT.into());
    document.insert("envelope".to_owned(), envelope);
    document.insert("events".to_owned(), Value::Object(events));
    document.insert("commands".to_owned(), Value::Object(commands));
    document.insert("replies".to_owned(), Value::Object(replies));
    Value::Object(document)
}

/// The schema of the `data` of the `command_result` answering `command_type`, when it is
/// more than `{}`.
fn reply_schema(generator: &mut SchemaGenerator, command_type: CommandType) -> Option<Schema> {
    let schema = match command_type {
        CommandType::Hello => generator.root_schema_for::<HelloReply>(),
        CommandType::GetSystemInfo => generator.root_schema_for::<SystemInfo>(),
        CommandType::GetPerformanceMetrics => generator.root_schema_for::<ComponentTiming>(),
        CommandType::GetConfig => generator.root_schema_for::<Config>(),
        CommandType::MemorySearch | CommandType::MemoryList => {
            generator.root_schema_for::<MemoryItems>()
        }
        CommandType::Auth
        | CommandType::Subscribe
        | CommandType::Unsubscribe
        | CommandType::Resume
        | CommandType::TextInput
        | CommandType::SttStart
        | CommandType::SttStop
        | CommandType::Interrupt
        | CommandType::DemoFlow
        | CommandType::Ping
        | CommandType::TokenCreate
        | CommandType::TokenList
        | CommandType::TokenRevoke
        | CommandType::TokenRotate => return None,
    };
    Some(schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains_ref(value: &Value) -> bool {
        match value {
            Value::Object(map) => map.contains_key("$ref") || map.values().any(contains_ref),
            Value::Array(items) => items.iter().any(contains_ref),
            _ => false,
        }
    }

    #[test]
    fn every_type_has_a_schema() {
        let schema = schema_json();
        assert_eq!(schema["protocol_version"], PROTOCOL_VERSION);
        for event_type in EventType::ALL {
            let payload = &schema["events"][event_type.as_str()];
            assert_eq!(payload["type"], "object", "{event_type}");
            assert!(payload["title"].is_string(), "{event_type}");
        }
        for command_type in CommandType::ALL {
            let data = &schema["commands"][command_type.as_str()];
            assert_eq!(data["type"], "object", "{command_type}");
        }
        let events = schema["events"].as_object().map(Map::len);
        assert_eq!(events, Some(EventType::ALL.len()));
        let commands = schema["commands"].as_object().map(Map::len);
        assert_eq!(commands, Some(CommandType::ALL.len()));
    }

    #[test]
    fn envelope_schema_has_the_six_fields() {
        let schema = schema_json();
        let required = schema["envelope"]["required"].as_array().cloned();
        let mut required: Vec<String> = required
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        required.sort();
        assert_eq!(
            required,
            ["data", "seq", "session_id", "timestamp", "type", "version"]
        );
    }

    #[test]
    fn schemas_are_self_contained() {
        let schema = schema_json();
        assert!(
            !contains_ref(&schema),
            "a $ref would not resolve inside the bundle"
        );
    }

    #[test]
    fn schemas_carry_field_docs_and_enums() {
        let schema = schema_json();
        let stt = &schema["events"]["stt_result"];
        assert!(stt["properties"]["confidence"]["description"].is_string());
        let required = stt["required"].as_array().cloned().unwrap_or_default();
        assert!(required.contains(&Value::from("text")));
        assert!(!required.contains(&Value::from("turn_id")));
        let modes = &schema["events"]["mode_change"]["properties"]["mode"];
        assert!(modes.to_string().contains("listening"), "{modes}");
        let code = &schema["events"]["command_error"]["properties"]["code"];
        assert!(code.to_string().contains("unknown_command"), "{code}");
    }

    #[test]
    fn schema_is_stable() {
        assert_eq!(schema_json(), schema_json());
    }
}

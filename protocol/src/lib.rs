//! Coda's wire protocol: everything a client needs to talk to a Coda server, and nothing
//! else (no async runtime, no WebSocket library: bring your own).
//!
//! The full reference, with an example of every event and command, is `docs/protocol.md`
//! in the Coda repository; [`schema_json`] gives the JSON Schema of all of it.
//!
//! # Transport
//!
//! One WebSocket, by default `ws://127.0.0.1:8765/ws`. Text frames carry JSON: events from
//! the server, commands from the client. Binary frames from the client carry microphone
//! audio (PCM 16-bit little-endian, mono, 16 kHz), accepted only between
//! `stt_start {"source":"client"}` and `stt_stop`.
//!
//! # Events: server → client
//!
//! Every server message is an *envelope*:
//!
//! ```json
//! {"version":"1.0","seq":143,"timestamp":1713943123.771,"type":"stt_result",
//!  "session_id":"cli-01","data":{"text":"Hello world","confidence":0.95,"duration_ms":1500.0,"language":"en"}}
//! ```
//!
//! * `version`: the server's protocol version, `"MAJOR.MINOR"`;
//! * `seq`: position in the server's single event stream, +1 per event. With a type
//!   filter you see gaps; that is not loss. Direct replies (`replay`, `config`,
//!   `command_result`, `command_error`) go to one client only and are not numbered: their
//!   `seq` repeats the last stream `seq` that connection was sent (0 if none);
//! * `timestamp`: unix seconds (float), when the server's hub accepted the event;
//! * `type`: one of [`EventType`], `snake_case`;
//! * `session_id`: the conversation session, or [`SYSTEM_SESSION`] (`"system"`) for
//!   process-wide events;
//! * `data`: the payload, an object; one struct per type, named like the type in
//!   `UpperCamelCase` (`stt_result` → [`SttResult`]).
//!
//! Two ways to read a frame:
//!
//! * [`Envelope`]: typed in one step (`envelope.event` is an [`EventData`]), but fails on
//!   a type this version does not know;
//! * [`RawEnvelope`]: never fails on a well-formed frame; [`RawEnvelope::decode`] gives
//!   the typed payload, or `None` for an unknown type. Use this in long-lived clients.
//!
//! # Commands: client → server
//!
//! `{"id":"c-17","type":"text_input","data":{"text":"what time is it"}}`: `type` is
//! required, `data` is an object (missing means `{}`), `id` an optional string. A command
//! with an `id` is answered exactly once, to you only, with a [`CommandResult`] or
//! [`CommandError`] carrying that `id`. Build commands with [`CommandRequest`] and
//! [`Command`]; servers parse them with [`parse_command`].
//!
//! # Compatibility
//!
//! Clients and servers with the same MAJOR version understand each other: a MINOR only adds
//! event types, optional fields and commands. So **ignore event types and fields you do
//! not know** (both types here do the latter for you). A client whose MAJOR differs is
//! refused after `hello` with a `system_error` of code `version_mismatch`. See
//! [`check_compatible`].
//!
//! # Example
//!
//! ```
//! use coda_protocol::{
//!     check_compatible, Command, CommandRequest, EventData, Mode, RawEnvelope, TextInput,
//! };
//!
//! // A frame received from the server.
//! let frame = r#"{"version":"1.0","seq":7,"timestamp":1713943123.771,"type":"mode_change",
//!                 "session_id":"system","data":{"mode":"listening","previous":"idle"}}"#;
//! let raw: RawEnvelope = serde_json::from_str(frame).expect("an envelope");
//! check_compatible(&raw.version).expect("same MAJOR");
//! match raw.decode() {
//!     Some(Ok(EventData::ModeChange(change))) => assert_eq!(change.mode, Mode::Listening),
//!     Some(Ok(_other)) => {}                      // a known type this client ignores
//!     Some(Err(error)) => panic!("bad payload: {error}"),
//!     None => {}                                  // a type from a newer MINOR: skip it
//! }
//!
//! // A command to send.
//! let request = CommandRequest::new(Command::TextInput(TextInput {
//!     text: "what time is it".into(),
//!     session_id: None,
//! }))
//! .with_id("c-17");
//! assert_eq!(
//!     request.to_json(),
//!     r#"{"id":"c-17","type":"text_input","data":{"text":"what time is it"}}"#
//! );
//! ```
//!
//! Servers build events the other way round:
//!
//! ```
//! use coda_protocol::{Envelope, LlmToken, EventPayload, EventType};
//! let token = LlmToken { turn_id: "t-1".into(), index: 0, text: "Hello".into() };
//! assert_eq!(LlmToken::TYPE, EventType::LlmToken);
//! let envelope = Envelope::new(42, 1713943123.8, "cli-01", token);
//! let json = serde_json::to_string(&envelope).expect("serializable");
//! assert!(json.starts_with(r#"{"version":"1.0","seq":42,"#));
//! ```

#![warn(missing_docs)]

pub mod commands;
pub mod events;
pub mod kinds;
pub mod schema;
pub mod version;

pub use commands::*;
pub use events::*;
pub use kinds::{CommandType, ErrorCode, EventType, Retention};
pub use schema::{schema_json, JSON_SCHEMA_DIALECT};
pub use version::{
    check_compatible, parse_version, VersionError, PROTOCOL_MAJOR, PROTOCOL_MINOR, PROTOCOL_VERSION,
};

//! A Wyoming protocol server (Home Assistant's voice protocol: TCP, a JSON header line,
//! optional JSON data and binary payload per event), so Home Assistant's Assist pipeline
//! and Wyoming satellites can use Coda as their local voice backend:
//!
//! - `describe` → `info` naming what this server offers;
//! - speech-to-text: `transcribe`, `audio-start`, `audio-chunk`…, `audio-stop` →
//!   `transcript` (the Stt actor's model, any rate/channel count resampled to 16 kHz mono);
//! - text-to-speech: `synthesize` → `audio-start`, `audio-chunk`…, `audio-stop`;
//! - wake word: `detect`, then audio → `detection` (once) or, at `audio-stop`,
//!   `not-detected`;
//! - conversation: `transcript` (text from the client) → a turn of Coda's own pipeline
//!   (intents, tools, memory, the LLM) → `handled` with the answer, or `not-handled`;
//! - `ping` → `pong`.
//!
//! A frame that cannot be read is answered with `error` and the connection closed;
//! events of types it does not serve are ignored, as the protocol expects.

mod answers;
pub mod codec;
mod server;

pub use answers::TurnAnswers;
pub use server::{serve, WyomingServices, WyomingSettings};

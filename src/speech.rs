//! The configured speech engine (`coda_actors::tts::registry` on `[tts]`), shared by
//! `coda serve`, `coda say` and `coda bench tts`.

use std::sync::Arc;

use coda_actors::tts::registry::{self, EngineKind};
use coda_actors::tts::TtsEngine;

use crate::config::Settings;

/// The speech engine `[tts]` names (or `engine`), speaking with `voice` when given.
pub fn tts_engine(
    s: &Settings,
    engine: Option<EngineKind>,
    voice: Option<&str>,
) -> anyhow::Result<Arc<dyn TtsEngine>> {
    let mut settings = s.tts_settings();
    if let Some(e) = engine {
        settings.engine = e;
    }
    Ok(registry::build(&settings, voice)?)
}

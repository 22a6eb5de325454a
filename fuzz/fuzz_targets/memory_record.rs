//! Any bytes found under a memory-store key: decoded as each record type or refused,
//! and a decoded record turned into what clients are sent; never a panic.
#![no_main]

use coda_actors::memory::records::{decode, MemoryRecord, MessageRecord, SessionMeta};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = decode::<MemoryRecord>("memory", data) {
        let _ = r.memory_id();
        let _ = r.to_item(Some(0.5));
    }
    if let Ok(m) = decode::<MessageRecord>("message", data) {
        let _ = m.message_id("s");
        let _ = m.to_chat();
    }
    let _ = decode::<SessionMeta>("session", data);
});

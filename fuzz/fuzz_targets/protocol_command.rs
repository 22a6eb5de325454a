//! Any text a client sends: parsed into a command or a coded rejection, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(request) = coda_protocol::parse_command(text) {
            let _ = request.command.validate();
            let _ = request.command.command_type();
        }
    }
});

//! One scratch file per fuzz process (in /dev/shm when there is one), rewritten per input.

use std::path::PathBuf;

pub fn scratch_file(name: &str, data: &[u8]) -> Option<PathBuf> {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("coda-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(name);
    std::fs::write(&path, data).ok()?;
    Some(path)
}

//! The per-boot token: a fresh random secret each time the server starts, written to a
//! 0600 file in the user's runtime directory so that the CLI's own clients (same user) can
//! connect when `auth.required = true`, without anyone creating a token first.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use rand::RngCore as _;
use subtle::ConstantTimeEq as _;

use super::tokens;

/// A per-boot secret (same `coda_…` format as stored tokens). Its Debug output is redacted.
#[derive(Clone)]
pub struct BootToken {
    secret: String,
}

impl std::fmt::Debug for BootToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootToken")
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl BootToken {
    /// A new random token (32 bytes from the OS RNG).
    pub fn generate() -> BootToken {
        let secret = tokens::new_secret().unwrap_or_else(|err| {
            // The thread RNG is a CSPRNG seeded from the OS too; it only differs in not
            // asking the OS each time, so it is a sound fallback for a transient failure.
            tracing::warn!(error = %err, "OS random source failed; using the thread RNG");
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            tokens::encode_secret(&bytes)
        });
        BootToken { secret }
    }

    /// Wraps a known secret (e.g. one read back with [`BootToken::read`]).
    pub fn from_secret(secret: impl Into<String>) -> BootToken {
        BootToken {
            secret: secret.into(),
        }
    }

    /// The secret itself, for a client that must send it. Never log it.
    pub fn expose_secret(&self) -> &str {
        &self.secret
    }

    /// Whether `candidate` is this token, compared in constant time (surrounding whitespace
    /// ignored).
    pub fn matches(&self, candidate: &str) -> bool {
        let candidate = candidate.trim();
        // An empty secret must never match an empty candidate.
        !self.secret.is_empty() && bool::from(self.secret.as_bytes().ct_eq(candidate.as_bytes()))
    }

    /// Writes the secret to `path`, readable by the owner only (0600), creating the parent
    /// directory with 0700 when missing.
    ///
    /// Atomic: a temporary file created with mode 0600 in the same directory is written,
    /// synced, then renamed over `path`, so the file is never world-readable, not even
    /// briefly, and a reader never sees half a token. An existing parent directory that
    /// belongs to another user is refused (someone else could swap the file).
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let file_name = path.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("token path {} has no file name", path.display()),
            )
        })?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        create_private_dir(parent)?;

        let mut nonce = [0u8; 6];
        rand::rng().fill_bytes(&mut nonce);
        let tmp = parent.join(format!(
            ".{}.{}.{}.tmp",
            file_name.to_string_lossy(),
            std::process::id(),
            hex::encode(nonce)
        ));
        let result = write_new_private(&tmp, parent, self.secret.as_bytes())
            .and_then(|()| fs::rename(&tmp, path));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
            return result;
        }
        // Make the rename itself durable; best effort (not every platform can sync a dir).
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Reads a token file: its content, whitespace trimmed. An empty file is an
    /// `InvalidData` error.
    pub fn read(path: &Path) -> io::Result<String> {
        let text = fs::read_to_string(path)?;
        let secret = text.trim();
        if secret.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("token file {} is empty", path.display()),
            ));
        }
        Ok(secret.to_owned())
    }

    /// Removes a token file (at shutdown); a file already gone is not an error.
    pub fn remove(path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Where the server on `port` keeps its boot token: `$XDG_RUNTIME_DIR/coda/<port>.token`
    /// (a per-user tmpfs directory), or `<temp dir>/coda-<uid>/<port>.token` when
    /// `XDG_RUNTIME_DIR` is unset or not absolute.
    pub fn default_path(port: u16) -> PathBuf {
        let file = format!("{port}.token");
        match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
            Some(dir) if dir.is_absolute() => dir.join("coda").join(file),
            _ => {
                let user = match current_uid() {
                    Some(uid) => format!("coda-{uid}"),
                    None => "coda".to_owned(),
                };
                std::env::temp_dir().join(user).join(file)
            }
        }
    }
}

/// Creates `dir` (and parents) with mode 0700 when missing; checks it is a directory.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", dir.display()),
        )),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let mut builder = fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
                builder.mode(0o700);
                builder.create(dir)?;
                // The umask can only narrow 0700, and a narrower directory is unusable.
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            }
            #[cfg(not(unix))]
            {
                builder.create(dir)
            }
        }
        Err(err) => Err(err),
    }
}

/// Creates `path` (which must not exist) with mode 0600 and writes `content` + newline,
/// synced. Refuses when `parent` belongs to another user than the new file.
fn write_new_private(path: &Path, parent: &Path, content: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        // Set at creation, so there is no moment with wider permissions.
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        // The new file's owner is us: compare it with the directory's owner.
        let ours = file.metadata()?.uid();
        let dirs = fs::metadata(parent)?.uid();
        if ours != dirs {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "refusing to write a token into {}: the directory belongs to another user",
                    parent.display()
                ),
            ));
        }
        // The umask cannot widen the mode; set it anyway so it is exactly 0600.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = parent;
    file.write_all(content)?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// This process's user id without libc: the owner of `/proc/self` (Linux), else of a probe
/// file created in the temp dir.
fn current_uid() -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        if let Ok(meta) = fs::metadata("/proc/self") {
            return Some(meta.uid());
        }
        let mut nonce = [0u8; 6];
        rand::rng().fill_bytes(&mut nonce);
        let probe = std::env::temp_dir().join(format!(
            ".coda-uid-probe-{}-{}",
            std::process::id(),
            hex::encode(nonce)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .ok()?;
        let uid = file.metadata().ok().map(|m| m.uid());
        let _ = fs::remove_file(&probe);
        uid
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_has_the_secret_format_and_differs() {
        let a = BootToken::generate();
        let b = BootToken::generate();
        assert!(tokens::is_well_formed(a.expose_secret()));
        assert_ne!(a.expose_secret(), b.expose_secret());
    }

    #[test]
    fn matches_only_the_same_secret() {
        let token = BootToken::generate();
        let secret = token.expose_secret().to_owned();
        assert!(token.matches(&secret));
        assert!(token.matches(&format!("{secret}\n")));
        assert!(!token.matches(&secret[..secret.len() - 1]));
        assert!(!token.matches(""));
        assert!(!token.matches(BootToken::generate().expose_secret()));
        assert!(!BootToken::from_secret("").matches(""));
    }

    #[test]
    fn debug_is_redacted() {
        let token = BootToken::generate();
        let text = format!("{token:?} {token:#?}");
        assert!(!text.contains(token.expose_secret()), "{text}");
        assert!(!text.contains(&token.expose_secret()[5..15]), "{text}");
        assert!(text.contains("redacted"));
    }

    #[cfg(unix)]
    #[test]
    fn written_file_is_0600_in_a_0700_dir_and_reads_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let t = tempfile::tempdir().expect("tempdir");
        let path = t.path().join("run").join("coda").join("8765.token");
        let token = BootToken::generate();
        token.write(&path).expect("write");
        let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("parent")), 0o700);
        assert_eq!(BootToken::read(&path).expect("read"), token.expose_secret());

        // Rewriting replaces atomically, keeps 0600 and leaves no temp file behind.
        let next = BootToken::generate();
        next.write(&path).expect("rewrite");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(BootToken::read(&path).expect("read"), next.expose_secret());
        let entries: Vec<_> = fs::read_dir(path.parent().expect("parent"))
            .expect("dir")
            .collect();
        assert_eq!(entries.len(), 1);

        BootToken::remove(&path).expect("remove");
        assert!(!path.exists());
        BootToken::remove(&path).expect("remove twice is fine");
    }

    #[cfg(unix)]
    #[test]
    fn replaces_a_wider_existing_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let t = tempfile::tempdir().expect("tempdir");
        // A pre-existing file with wide permissions is replaced, not reused.
        let path = t.path().join("9.token");
        fs::write(&path, "old").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        BootToken::generate().write(&path).expect("write");
        assert_eq!(
            fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
    }

    #[cfg(unix)]
    #[test]
    fn parent_owned_by_another_user_is_refused() {
        use std::os::unix::fs::MetadataExt as _;
        let t = tempfile::tempdir().expect("tempdir");
        let dir = t.path().join("theirs");
        fs::create_dir(&dir).expect("mkdir");
        // Only root can hand a directory to someone else; elsewhere this case cannot be set up.
        if fs::metadata(&dir).expect("meta").uid() != 0 {
            return;
        }
        std::os::unix::fs::chown(&dir, Some(4242), None).expect("chown");
        let path = dir.join("1.token");
        let err = BootToken::generate().write(&path).expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("another user"), "{err}");
        assert_eq!(
            fs::read_dir(&dir).expect("dir").count(),
            0,
            "temp file cleaned up"
        );
    }

    #[test]
    fn read_refuses_empty_and_missing() {
        let t = tempfile::tempdir().expect("tempdir");
        let path = t.path().join("x.token");
        assert_eq!(
            BootToken::read(&path).expect_err("missing").kind(),
            io::ErrorKind::NotFound
        );
        fs::write(&path, " \n").expect("write");
        assert_eq!(
            BootToken::read(&path).expect_err("empty").kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn default_path_shape() {
        // Only reads the environment (tests run in parallel: never set it here).
        let path = BootToken::default_path(8765);
        assert!(path.ends_with("8765.token"));
        let parent = path.parent().and_then(|p| p.file_name()).expect("parent");
        let parent = parent.to_string_lossy();
        match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
            Some(dir) if dir.is_absolute() => {
                assert_eq!(path, dir.join("coda").join("8765.token"))
            }
            _ => assert!(parent.starts_with("coda-"), "{}", path.display()),
        }
    }

    #[cfg(unix)]
    #[test]
    fn uid_matches_owner_of_a_new_file() {
        use std::os::unix::fs::MetadataExt as _;
        let t = tempfile::tempdir().expect("tempdir");
        let probe = t.path().join("p");
        fs::write(&probe, b"").expect("write");
        assert_eq!(
            current_uid(),
            Some(fs::metadata(&probe).expect("meta").uid())
        );
    }
}

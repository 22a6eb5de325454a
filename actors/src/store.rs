//! Storage: a small key/value trait ([`Storage`]) and its sled implementation ([`SledStore`]).
//!
//! The Memory actor (conversations, memories, the event log) and the token store sit on
//! [`Storage`], not on sled, so the engine can be swapped (redb is the fallback named in the
//! design notes) without touching them.
//!
//! Every call blocks on disk I/O (`put`, `put_many` and `delete` wait for an fsync): call it
//! from a blocking pool or a `SyncArbiter`, never on an actor's event loop.
//!
//! What sled 0.34.7 does when the store is already open (checked, see the tests): it takes an
//! exclusive `flock` (via fs2) on `<dir>/db` with `try_lock_exclusive`, and on failure returns
//! at once — no waiting — `sled::Error::Io` with `ErrorKind::Other` and the message
//! `could not acquire lock on "<dir>/db": Os { code: 11, kind: WouldBlock, .. }`. Because
//! `flock` belongs to the open file description, a second open in the *same* process fails
//! the same way as one from another process. [`SledStore::open`] turns that into
//! [`StoreError::Locked`].
//!
//! Damaged files: sled returns `Corruption` or `Unsupported` for most, but opens a store
//! whose data file is garbage or missing (and no snapshot helps) as an *empty* store, with
//! no error. A marker file written once the store is initialised turns that silent loss
//! into [`StoreError::Corruption`].

use crate::hub::unix_now;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Schema version this build writes and understands (the number of migration steps).
pub const SCHEMA_VERSION: u64 = 2;

/// Tree that holds the store's own bookkeeping; callers of [`Storage`] may not use it.
pub const META_TREE: &str = "meta";

/// Key (in [`META_TREE`]) of the schema version, an 8-byte big-endian `u64`.
const SCHEMA_KEY: &[u8] = b"schema_version";

/// File written next to sled's files once the store is initialised. sled 0.34 opens a
/// store whose data file is garbage (or gone) as an *empty* store, without an error; the
/// marker is how such a silent loss is told apart from a fresh store.
const MARKER_FILE: &str = "CODA_STORE";

const MARKER_TEXT: &str = "This directory is a Coda store (sled 0.34). Do not edit it; \
                           its schema version is kept inside.\n";

/// One schema migration step: brings a store from version `i` to `i + 1`.
///
/// A step may run again if the process dies between the step and its record, so each step
/// must be idempotent.
pub type Migration = fn(&sled::Db) -> Result<(), StoreError>;

/// Migration steps, applied in order; `MIGRATIONS[i]` goes from version `i` to `i + 1`.
const MIGRATIONS: &[Migration] = &[migrate_0_to_1, migrate_1_to_2];

// A new step must come with a bump of SCHEMA_VERSION (and the other way round).
const _: () = assert!(MIGRATIONS.len() as u64 == SCHEMA_VERSION);

/// Version 1 is the first layout: nothing to transform, the step only gets recorded.
fn migrate_0_to_1(_db: &sled::Db) -> Result<(), StoreError> {
    Ok(())
}

/// Version 2 adds the memory room's trees (long-term memories, conversations, saved chat
/// sessions; layouts in `crate::memory::records`). Creating them here, not lazily, means
/// a store that says version 2 always has them, and a build that knows version 2 can rely
/// on their record format (each record also carries its own format number for later
/// in-place upgrades).
fn migrate_1_to_2(db: &sled::Db) -> Result<(), StoreError> {
    for tree in MEMORY_TREES {
        db.open_tree(tree)
            .map_err(|e| StoreError::from_sled(e, Path::new("<migration 1→2>")))?;
    }
    Ok(())
}

/// The trees schema version 2 introduced (owned by the memory room).
pub const MEMORY_TREES: &[&str] = &["memories", "conversations", "chat_sessions"];

/// Errors from the store. Every variant that comes from disk names the store's path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (or another open in this process) holds the store's lock.
    #[error(
        "the store at {} is in use by another Coda process (is `coda serve` already running?)",
        .path.display()
    )]
    Locked {
        /// The store directory.
        path: PathBuf,
    },

    /// The store was written by a newer Coda with a schema this build does not know.
    #[error(
        "the store's schema version is {found}, newer than this build of Coda supports \
         ({supported}); upgrade Coda or use another data directory"
    )]
    SchemaTooNew {
        /// Version recorded in the store.
        found: u64,
        /// Highest version this build understands ([`SCHEMA_VERSION`]).
        supported: u64,
    },

    /// Data in the store cannot be read back.
    #[error(
        "the store at {} is corrupted ({detail}); move the directory aside to start fresh, \
         or restore a backup",
        .path.display()
    )]
    Corruption {
        /// The store directory.
        path: PathBuf,
        /// What was found, for the log.
        detail: String,
    },

    /// A file-system error.
    #[error("I/O error on the store at {}: {source}", .path.display())]
    Io {
        /// The store directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The storage engine refuses the files it found (damaged, or another engine version).
    #[error(
        "the store at {} cannot be opened by this build ({detail}); it may be damaged or \
         written by an incompatible version",
        .path.display()
    )]
    Unsupported {
        /// The store directory.
        path: PathBuf,
        /// The engine's reason.
        detail: String,
    },

    /// The storage engine failed in a way it considers a bug of its own.
    #[error("unexpected storage engine failure on the store at {}: {detail}", .path.display())]
    Internal {
        /// The store directory.
        path: PathBuf,
        /// The engine's message.
        detail: String,
    },

    /// A schema migration step failed; the store stays at the previous version.
    #[error("migrating the store at {} to schema version {to} failed: {source}", .path.display())]
    Migration {
        /// The store directory.
        path: PathBuf,
        /// Version the failed step was migrating to.
        to: u64,
        /// Why it failed.
        #[source]
        source: Box<StoreError>,
    },

    /// The caller used a tree name the store keeps for itself.
    #[error("tree name {tree:?} is reserved for the store's own bookkeeping")]
    ReservedTree {
        /// The refused name.
        tree: String,
    },
}

impl StoreError {
    /// Maps a sled error to a variant naming `path`.
    fn from_sled(err: sled::Error, path: &Path) -> StoreError {
        let path = path.to_path_buf();
        #[allow(unreachable_patterns)] // sled grows a variant under its `failpoints` feature
        match err {
            sled::Error::Io(source) if is_lock_error(&source) => StoreError::Locked { path },
            sled::Error::Io(source) => StoreError::Io { path, source },
            sled::Error::Corruption { at, .. } => StoreError::Corruption {
                path,
                detail: match at {
                    Some(at) => format!("unreadable data at {at:?}"),
                    None => "unreadable data".to_owned(),
                },
            },
            sled::Error::Unsupported(detail) => StoreError::Unsupported { path, detail },
            sled::Error::ReportableBug(detail) => StoreError::Internal { path, detail },
            sled::Error::CollectionNotFound(name) => StoreError::Internal {
                path,
                detail: format!("tree {:?} not found", String::from_utf8_lossy(&name)),
            },
            other => StoreError::Internal {
                path,
                detail: other.to_string(),
            },
        }
    }
}

/// sled reports a held lock as `Io(Other, "could not acquire lock on ...")`; it formats the
/// fs2 error into the message, so the message is all there is to match on.
fn is_lock_error(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock || err.to_string().contains("could not acquire lock")
}

/// One entry: (key, value).
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// One operation of a [`WriteGroup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Set `key` to `value`.
    Put { key: Vec<u8>, value: Vec<u8> },
    /// Remove `key` (no error when absent).
    Delete { key: Vec<u8> },
}

/// Writes to one tree that are applied together or not at all ([`Storage::write_groups`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteGroup {
    pub tree: String,
    /// The operations, in order.
    pub ops: Vec<WriteOp>,
}

impl WriteGroup {
    /// An empty group for `tree`.
    pub fn new(tree: &str) -> WriteGroup {
        WriteGroup {
            tree: tree.to_owned(),
            ops: Vec::new(),
        }
    }

    /// Adds a put.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(WriteOp::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(WriteOp::Delete { key: key.into() });
        self
    }
}

/// A small key/value store with named trees (keyspaces).
///
/// Calls block on disk I/O; run them off the actors' event loops.
pub trait Storage: Send + Sync + 'static {
    /// Reads `key` from `tree`.
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Writes `key` = `value` in `tree`; durable (flushed to disk) when it returns `Ok`.
    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError>;

    /// Writes all `items` to `tree` atomically (all or none) with one flush; durable when it
    /// returns `Ok`.
    fn put_many(&self, tree: &str, items: &[KeyValue]) -> Result<(), StoreError>;

    /// Removes `key` from `tree`; `true` if it was there. Durable when it returns `Ok`
    /// (a revocation must not come back after a crash).
    fn delete(&self, tree: &str, key: &[u8]) -> Result<bool, StoreError>;

    /// Every entry of `tree` whose key starts with `prefix`, in key order (`b""` = all).
    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError>;

    /// Flushes every pending write to disk.
    fn flush(&self) -> Result<(), StoreError>;

    /// Up to `limit` entries of `tree` whose key starts with `prefix`, in *reverse* key
    /// order (the last keys first): "the newest N" for keys that sort by time.
    ///
    /// The default scans the whole prefix; engines override it with a reverse cursor.
    fn scan_prefix_rev(
        &self,
        tree: &str,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let mut all = self.scan_prefix(tree, prefix)?;
        all.reverse();
        all.truncate(limit);
        Ok(all)
    }

    /// Group commit: applies every group (each one atomically: all of its operations or
    /// none) and flushes once; everything is durable when it returns `Ok`. On `Err`, some
    /// groups may have been applied, none is known to be durable.
    ///
    /// The default applies the operations one by one (durable, not atomic per group);
    /// engines override it.
    fn write_groups(&self, groups: &[WriteGroup]) -> Result<(), StoreError> {
        for group in groups {
            for op in &group.ops {
                match op {
                    WriteOp::Put { key, value } => self.put(&group.tree, key, value)?,
                    WriteOp::Delete { key } => {
                        self.delete(&group.tree, key)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Bytes the store takes on disk (sled rewrites in place lazily: expect overhead).
    fn size_on_disk(&self) -> Result<u64, StoreError>;
}

/// [`Storage`] on sled 0.34.7, with a schema version and migrations.
///
/// Dropping it flushes and releases the directory lock.
pub struct SledStore {
    db: sled::Db,
    path: PathBuf,
}

impl std::fmt::Debug for SledStore {
    // Not derived: sled's Debug prints every entry, and this store holds private data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, creating `dir` with mode 0700 on unix.
    ///
    /// Fails with [`StoreError::Locked`] at once when another process (or another open in
    /// this one) has it, [`StoreError::SchemaTooNew`] when a newer Coda wrote it, and a
    /// path-naming [`StoreError`] when its files are damaged; it never panics on bad files.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let io_err = |source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        create_private_dir(dir)?;
        let marker = dir.join(MARKER_FILE);
        let initialised = marker.try_exists().map_err(io_err)?;
        let db = open_db(&sled::Config::new().path(dir), dir)?;
        // Every initialised store has a flushed schema version: none means sled dropped
        // what it could not read. Refuse rather than carry on with an empty store.
        if initialised && read_schema_version(&db, dir)? == 0 {
            return Err(StoreError::Corruption {
                path: dir.to_path_buf(),
                detail: "the storage engine found no readable records in a store that had \
                         them (damaged or missing data file)"
                    .to_owned(),
            });
        }
        let store = SledStore::init(db, dir.to_path_buf(), MIGRATIONS)?;
        if !initialised {
            write_marker(&marker).map_err(io_err)?;
        }
        Ok(store)
    }

    /// Opens a throw-away store (sled's temporary mode: under `/dev/shm` on Linux, removed
    /// on drop), for tests and runs that must not touch the disk.
    pub fn temporary() -> Result<SledStore, StoreError> {
        let path = PathBuf::from("<temporary store>");
        let db = open_db(&sled::Config::new().temporary(true), &path)?;
        SledStore::init(db, path, MIGRATIONS)
    }

    /// The store directory (a placeholder for a temporary store).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version recorded in the store.
    pub fn schema_version(&self) -> Result<u64, StoreError> {
        read_schema_version(&self.db, &self.path)
    }

    fn init(
        db: sled::Db,
        path: PathBuf,
        migrations: &[Migration],
    ) -> Result<SledStore, StoreError> {
        apply_migrations(&db, &path, migrations)?;
        Ok(SledStore { db, path })
    }

    fn err(&self, err: sled::Error) -> StoreError {
        StoreError::from_sled(err, &self.path)
    }

    fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        if name == META_TREE {
            return Err(StoreError::ReservedTree {
                tree: name.to_owned(),
            });
        }
        self.db.open_tree(name).map_err(|e| self.err(e))
    }

    fn flush_db(&self) -> Result<(), StoreError> {
        self.db.flush().map(drop).map_err(|e| self.err(e))
    }
}

impl Storage for SledStore {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.tree(tree)?.get(key).map_err(|e| self.err(e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn put(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.tree(tree)?
            .insert(key, value)
            .map_err(|e| self.err(e))?;
        self.flush_db()
    }

    fn put_many(&self, tree: &str, items: &[KeyValue]) -> Result<(), StoreError> {
        let tree = self.tree(tree)?;
        let mut batch = sled::Batch::default();
        for (key, value) in items {
            batch.insert(key.as_slice(), value.as_slice());
        }
        tree.apply_batch(batch).map_err(|e| self.err(e))?;
        self.flush_db()
    }

    fn delete(&self, tree: &str, key: &[u8]) -> Result<bool, StoreError> {
        let old = self.tree(tree)?.remove(key).map_err(|e| self.err(e))?;
        self.flush_db()?;
        Ok(old.is_some())
    }

    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        self.tree(tree)?
            .scan_prefix(prefix)
            .map(|entry| {
                entry
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| self.err(e))
            })
            .collect()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.flush_db()
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(|e| self.err(e))
    }

    fn scan_prefix_rev(
        &self,
        tree: &str,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.tree(tree)?
            .scan_prefix(prefix)
            .rev()
            .take(limit)
            .map(|entry| {
                entry
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| self.err(e))
            })
            .collect()
    }

    fn write_groups(&self, groups: &[WriteGroup]) -> Result<(), StoreError> {
        for group in groups {
            let tree = self.tree(&group.tree)?;
            let mut batch = sled::Batch::default();
            for op in &group.ops {
                match op {
                    WriteOp::Put { key, value } => batch.insert(key.as_slice(), value.as_slice()),
                    WriteOp::Delete { key } => batch.remove(key.as_slice()),
                }
            }
            tree.apply_batch(batch).map_err(|e| self.err(e))?;
        }
        self.flush_db()
    }
}

/// Opens sled, turning its errors (and any panic on damaged files) into [`StoreError`]s.
fn open_db(config: &sled::Config, path: &Path) -> Result<sled::Db, StoreError> {
    // A store just dropped in this process can hold its lock a moment longer (sled's
    // background threads release their handles asynchronously; seen on a loaded machine).
    // A few short retries cover that; a store held by a live process still fails within
    // a quarter of a second — an answer, not a hang.
    let mut attempt = 0;
    loop {
        match open_db_once(config, path) {
            Err(StoreError::Locked { .. }) if attempt < LOCK_RETRIES => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            other => return other,
        }
    }
}

/// Extra attempts when the store's lock is held (25 ms apart).
const LOCK_RETRIES: u32 = 10;

fn open_db_once(config: &sled::Config, path: &Path) -> Result<sled::Db, StoreError> {
    // sled 0.34 has panicking paths in recovery; damaged files must give an error, not
    // take the server down. The lock file is dropped (released) during the unwind.
    match panic::catch_unwind(AssertUnwindSafe(|| config.open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(err)) => Err(StoreError::from_sled(err, path)),
        Err(_) => Err(StoreError::Corruption {
            path: path.to_path_buf(),
            detail: "the storage engine panicked while reading its files".to_owned(),
        }),
    }
}

/// Creates `dir` (and missing parents) private to the user; an existing one is left alone.
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let io_err = |source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                // Not changed behind the user's back (they chose this directory), but said.
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        path = %dir.display(),
                        "store directory is accessible to other users; consider chmod 700"
                    );
                }
            }
            Ok(())
        }
        Ok(_) => Err(io_err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a directory",
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
                builder.mode(0o700);
                builder.create(dir).map_err(io_err)?;
                // The umask may have narrowed 0700 further (no x bit = unusable): set it.
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(io_err)
            }
            #[cfg(not(unix))]
            {
                builder.create(dir).map_err(io_err)
            }
        }
        Err(e) => Err(io_err(e)),
    }
}

/// Writes the marker file durably (file and directory entry synced).
fn write_marker(marker: &Path) -> io::Result<()> {
    let mut file = std::fs::File::create(marker)?;
    io::Write::write_all(&mut file, MARKER_TEXT.as_bytes())?;
    file.sync_all()?;
    if let Some(dir) = marker.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn read_schema_version(db: &sled::Db, path: &Path) -> Result<u64, StoreError> {
    let meta = db
        .open_tree(META_TREE)
        .map_err(|e| StoreError::from_sled(e, path))?;
    match meta
        .get(SCHEMA_KEY)
        .map_err(|e| StoreError::from_sled(e, path))?
    {
        None => Ok(0),
        Some(raw) => match <[u8; 8]>::try_from(raw.as_ref()) {
            Ok(bytes) => Ok(u64::from_be_bytes(bytes)),
            Err(_) => Err(StoreError::Corruption {
                path: path.to_path_buf(),
                detail: format!("schema version record has {} bytes, expected 8", raw.len()),
            }),
        },
    }
}

/// Brings the store up to `migrations.len()`, recording each step (`schema_version` and
/// `migration.NNNN` = unix time) in [`META_TREE`], flushed after each step.
fn apply_migrations(
    db: &sled::Db,
    path: &Path,
    migrations: &[Migration],
) -> Result<u64, StoreError> {
    let supported = migrations.len() as u64;
    let found = read_schema_version(db, path)?;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    let meta = db
        .open_tree(META_TREE)
        .map_err(|e| StoreError::from_sled(e, path))?;
    for (from, step) in migrations.iter().enumerate().skip(found as usize) {
        let to = from as u64 + 1;
        step(db).map_err(|source| StoreError::Migration {
            path: path.to_path_buf(),
            to,
            source: Box::new(source),
        })?;
        let mut record = sled::Batch::default();
        record.insert(SCHEMA_KEY, &to.to_be_bytes());
        record.insert(
            format!("migration.{to:04}").as_bytes(),
            format!("{:.3}", unix_now()).as_bytes(),
        );
        meta.apply_batch(record)
            .map_err(|e| StoreError::from_sled(e, path))?;
        db.flush().map_err(|e| StoreError::from_sled(e, path))?;
        tracing::info!(path = %path.display(), version = to, "store schema migrated");
    }
    Ok(supported)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    fn store_dir(t: &tempfile::TempDir) -> PathBuf {
        t.path().join("store")
    }

    #[test]
    fn put_get_delete_scan() {
        let store = SledStore::temporary().expect("open");
        assert_eq!(store.get("t", b"a").expect("get"), None);
        store.put("t", b"a", b"1").expect("put");
        store.put("t", b"ab", b"2").expect("put");
        store.put("t", b"b", b"3").expect("put");
        store.put("other", b"a", b"x").expect("put");
        assert_eq!(store.get("t", b"a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(store.get("other", b"a").expect("get"), Some(b"x".to_vec()));

        let scanned = store.scan_prefix("t", b"a").expect("scan");
        assert_eq!(
            scanned,
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"ab".to_vec(), b"2".to_vec())
            ]
        );
        assert_eq!(store.scan_prefix("t", b"").expect("scan").len(), 3);

        assert!(store.delete("t", b"a").expect("delete"));
        assert!(!store.delete("t", b"a").expect("delete again"));
        assert_eq!(store.get("t", b"a").expect("get"), None);

        store
            .put_many(
                "t",
                &[
                    (b"c".to_vec(), b"4".to_vec()),
                    (b"d".to_vec(), b"5".to_vec()),
                ],
            )
            .expect("put_many");
        assert_eq!(store.get("t", b"d").expect("get"), Some(b"5".to_vec()));
        store.flush().expect("flush");
        assert!(store.size_on_disk().expect("size") > 0);
    }

    #[test]
    fn meta_tree_is_reserved() {
        let store = SledStore::temporary().expect("open");
        let err = store
            .put(META_TREE, SCHEMA_KEY, b"x")
            .expect_err("reserved");
        assert!(matches!(err, StoreError::ReservedTree { .. }), "{err:?}");
        assert!(store.get(META_TREE, SCHEMA_KEY).is_err());
    }

    #[test]
    fn values_survive_close_and_reopen() {
        let t = tmp();
        let dir = store_dir(&t);
        {
            let store = SledStore::open(&dir).expect("open");
            store.put("t", b"k", b"v").expect("put");
            store
                .put_many("t", &[(b"k2".to_vec(), b"v2".to_vec())])
                .expect("put_many");
        }
        let store = SledStore::open(&dir).expect("reopen");
        assert_eq!(store.get("t", b"k").expect("get"), Some(b"v".to_vec()));
        assert_eq!(store.get("t", b"k2").expect("get"), Some(b"v2".to_vec()));
    }

    #[cfg(unix)]
    #[test]
    fn new_dir_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let t = tmp();
        let dir = t.path().join("a").join("b");
        let _store = SledStore::open(&dir).expect("open");
        let mode = std::fs::metadata(&dir).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn schema_version_recorded_and_too_new_refused() {
        let t = tmp();
        let dir = store_dir(&t);
        {
            let store = SledStore::open(&dir).expect("open");
            assert_eq!(store.schema_version().expect("version"), SCHEMA_VERSION);
            let meta = store.db.open_tree(META_TREE).expect("meta");
            assert!(meta.get(b"migration.0001").expect("get").is_some());
            // Pretend a newer Coda wrote this store.
            meta.insert(SCHEMA_KEY, &(SCHEMA_VERSION + 1).to_be_bytes())
                .expect("insert");
        }
        let err = SledStore::open(&dir).expect_err("too new");
        match err {
            StoreError::SchemaTooNew { found, supported } => {
                assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
        assert!(err_text(&dir).contains("newer than this build"));
    }

    fn err_text(dir: &Path) -> String {
        match SledStore::open(dir) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn migrations_apply_in_order_and_only_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        fn step(db: &sled::Db) -> Result<(), StoreError> {
            CALLS.fetch_add(1, Ordering::SeqCst);
            db.open_tree("t")
                .and_then(|t| t.insert(b"migrated", b"yes"))
                .map(drop)
                .map_err(|e| StoreError::from_sled(e, Path::new("x")))
        }
        fn failing(_: &sled::Db) -> Result<(), StoreError> {
            Err(StoreError::Internal {
                path: PathBuf::from("x"),
                detail: "boom".into(),
            })
        }
        let t = tmp();
        let dir = store_dir(&t);
        let open = |steps: &[Migration]| {
            let db = open_db(&sled::Config::new().path(&dir), &dir).expect("sled");
            SledStore::init(db, dir.clone(), steps)
        };
        let two: &[Migration] = &[migrate_0_to_1, step];
        let store = open(two).expect("v2");
        assert_eq!(store.schema_version().expect("v"), 2);
        assert_eq!(
            store.get("t", b"migrated").expect("get"),
            Some(b"yes".to_vec())
        );
        drop(store);
        let store = open(two).expect("v2 again");
        drop(store);
        assert_eq!(
            CALLS.load(Ordering::SeqCst),
            1,
            "a recorded step is not re-run"
        );

        // A failing step leaves the recorded version where it was.
        let three: &[Migration] = &[migrate_0_to_1, step, failing];
        let err = open(three).expect_err("fails");
        assert!(
            matches!(err, StoreError::Migration { to: 3, .. }),
            "{err:?}"
        );
        let store = open(two).expect("still v2");
        assert_eq!(store.schema_version().expect("v"), 2);
    }

    #[test]
    fn version_1_store_migrates_to_2_and_keeps_its_data() {
        let t = tmp();
        let dir = store_dir(&t);
        {
            let db = open_db(&sled::Config::new().path(&dir), &dir).expect("sled");
            let store = SledStore::init(db, dir.clone(), &MIGRATIONS[..1]).expect("v1");
            assert_eq!(store.schema_version().expect("v"), 1);
            store.put("auth_tokens", b"k", b"v").expect("put");
            assert!(!store
                .db
                .tree_names()
                .iter()
                .any(|n| n.as_ref() == b"memories"));
        }
        let store = SledStore::open(&dir).expect("open migrates");
        assert_eq!(store.schema_version().expect("v"), 2);
        assert_eq!(
            store.get("auth_tokens", b"k").expect("get"),
            Some(b"v".to_vec())
        );
        let names = store.db.tree_names();
        for tree in MEMORY_TREES {
            assert!(
                names.iter().any(|n| n.as_ref() == tree.as_bytes()),
                "{tree}"
            );
        }
        let meta = store.db.open_tree(META_TREE).expect("meta");
        assert!(meta.get(b"migration.0002").expect("get").is_some());
    }

    #[test]
    fn write_groups_and_reverse_scan() {
        let t = tmp();
        let dir = store_dir(&t);
        {
            let store = SledStore::open(&dir).expect("open");
            let mut a = WriteGroup::new("t");
            a.put(b"k1".to_vec(), b"1".to_vec())
                .put(b"k2".to_vec(), b"2".to_vec())
                .put(b"k3".to_vec(), b"3".to_vec());
            let mut b = WriteGroup::new("u");
            b.put(b"x".to_vec(), b"y".to_vec());
            store.write_groups(&[a, b]).expect("write");
            let mut c = WriteGroup::new("t");
            c.delete(b"k2".to_vec());
            store.write_groups(&[c]).expect("delete");
            let mut bad = WriteGroup::new(META_TREE);
            bad.put(b"x".to_vec(), b"y".to_vec());
            assert!(store.write_groups(&[bad]).is_err(), "reserved tree");
        }
        let store = SledStore::open(&dir).expect("reopen");
        let rev = store.scan_prefix_rev("t", b"k", 10).expect("rev");
        assert_eq!(
            rev,
            vec![
                (b"k3".to_vec(), b"3".to_vec()),
                (b"k1".to_vec(), b"1".to_vec())
            ]
        );
        assert_eq!(store.scan_prefix_rev("t", b"k", 1).expect("rev").len(), 1);
        assert_eq!(store.get("u", b"x").expect("get"), Some(b"y".to_vec()));
    }

    #[test]
    fn second_open_in_same_process_is_locked() {
        let t = tmp();
        let dir = store_dir(&t);
        let first = SledStore::open(&dir).expect("open");
        let started = std::time::Instant::now();
        let err = SledStore::open(&dir).expect_err("locked");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "no waiting"
        );
        match &err {
            StoreError::Locked { path } => assert_eq!(path, &dir),
            other => panic!("expected Locked, got {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains(&dir.display().to_string()), "{text}");
        assert!(text.contains("in use by another Coda process"), "{text}");
        drop(first);
        SledStore::open(&dir).expect("open after release");
    }

    const CHILD_ENV: &str = "CODA_STORE_TEST_LOCK_CHILD";
    const CHILD_READY: &str = "CODA-STORE-CHILD-READY";

    /// Not a test on its own: the child half of `lock_held_by_child_process_is_locked`.
    /// Holds the store open until its stdin closes.
    #[test]
    fn lock_child_helper() {
        let Some(dir) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let store = SledStore::open(Path::new(&dir)).expect("child open");
        println!("{CHILD_READY}");
        let _ = io::Write::flush(&mut io::stdout());
        let mut sink = Vec::new();
        let _ = io::stdin().read_to_end(&mut sink);
        drop(store);
    }

    #[test]
    fn lock_held_by_child_process_is_locked() {
        let t = tmp();
        let dir = store_dir(&t);
        // Create it first so the child only opens (and the parent's handle is closed).
        drop(SledStore::open(&dir).expect("create"));

        let exe = std::env::current_exe().expect("test binary");
        let mut child = Command::new(exe)
            .args(["--exact", "store::tests::lock_child_helper", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(CHILD_ENV, &dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let mut stdout = BufReader::new(child.stdout.take().expect("child stdout"));
        let mut ready = false;
        let mut line = String::new();
        while stdout.read_line(&mut line).expect("child output") > 0 {
            if line.contains(CHILD_READY) {
                ready = true;
                break;
            }
            line.clear();
        }
        assert!(ready, "child never opened the store");

        let result = SledStore::open(&dir);
        drop(child.stdin.take()); // the child exits when its stdin closes
                                  // Keep reading: a child writing its test summary to a closed pipe would fail.
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        let status = child.wait().expect("child wait");
        assert!(status.success());

        match result {
            Err(StoreError::Locked { path }) => assert_eq!(path, dir),
            other => panic!("expected Locked, got {other:?}"),
        }
        SledStore::open(&dir).expect("open after the child exited");
    }

    /// Deterministic garbage (xorshift), so a failing case can be replayed.
    fn garbage(len: usize, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    fn populated(dir: &Path) {
        let store = SledStore::open(dir).expect("open");
        for i in 0..50u32 {
            store
                .put("t", &i.to_be_bytes(), format!("value {i}").as_bytes())
                .expect("put");
        }
    }

    #[test]
    fn garbage_data_file_is_a_clear_corruption_error() {
        let t = tmp();
        let dir = store_dir(&t);
        populated(&dir);
        let db_file = dir.join("db");
        let len = std::fs::metadata(&db_file).expect("db file").len() as usize;
        std::fs::write(&db_file, garbage(len, 0x9e37_79b9_7f4a_7c15)).expect("write garbage");
        let err = SledStore::open(&dir).expect_err("garbage refused");
        assert!(matches!(err, StoreError::Corruption { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&dir.display().to_string()), "{text}");
        assert!(text.contains("corrupted"), "{text}");
    }

    #[test]
    fn lost_data_file_is_not_a_fresh_store() {
        let t = tmp();
        let dir = store_dir(&t);
        populated(&dir);
        assert!(dir.join(MARKER_FILE).exists());
        std::fs::remove_file(dir.join("db")).expect("remove");
        let err = SledStore::open(&dir).expect_err("refused");
        assert!(matches!(err, StoreError::Corruption { .. }), "{err:?}");
    }

    #[test]
    fn garbage_config_file_is_a_clear_error() {
        let t = tmp();
        let dir = store_dir(&t);
        populated(&dir);
        std::fs::write(dir.join("conf"), garbage(300, 7)).expect("write garbage");
        let err = SledStore::open(&dir).expect_err("garbage refused");
        assert!(matches!(err, StoreError::Unsupported { .. }), "{err:?}");
        assert!(err.to_string().contains(&dir.display().to_string()));
    }

    #[test]
    fn damaged_files_never_panic() {
        // Small overwrites at assorted offsets of every file: sled may recover (it keeps
        // what it can verify) or refuse; either way open returns, with a path-naming error.
        let t = tmp();
        for case in 0..12u64 {
            let dir = t.path().join(format!("case{case}"));
            populated(&dir);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .expect("read dir")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            let victim = &files[case as usize % files.len()];
            let mut bytes = std::fs::read(victim).expect("read");
            if bytes.is_empty() {
                continue;
            }
            let at = (case as usize * 37) % bytes.len();
            let end = (at + 16).min(bytes.len());
            bytes[at..end].copy_from_slice(&garbage(end - at, case + 1));
            std::fs::write(victim, &bytes).expect("write");
            let outcome = panic::catch_unwind(|| SledStore::open(&dir).map(drop));
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    assert!(
                        err.to_string().contains(&dir.display().to_string()),
                        "{err}"
                    )
                }
                Err(_) => panic!("open panicked on damaged {}", victim.display()),
            }
        }
    }

    #[test]
    fn path_that_is_a_file_is_an_io_error() {
        let t = tmp();
        let file = t.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        let err = SledStore::open(&file).expect_err("not a dir");
        assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains(&file.display().to_string()));
    }
}

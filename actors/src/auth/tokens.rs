//! Long-lived API tokens: created, listed, rotated and revoked by the CLI, checked on every
//! connection.
//!
//! A secret is `coda_` + 43 characters of base64url (32 random bytes from the OS). The store
//! keeps only its SHA-256 (hex) as the key of a JSON record, so a copy of the data directory
//! does not let anyone in. The lookup is by hash, so comparing the presented secret never
//! happens byte by byte against a stored one (nothing to time).

use std::sync::Arc;
use std::time::Duration;

use crate::hub::unix_now;

use base64::Engine as _;
use rand::TryRngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{Storage, StoreError};

/// Tree of the token records.
pub const TOKEN_TREE: &str = "auth_tokens";

/// Prefix of every Coda secret (so it can be recognised, e.g. by secret scanners).
pub const SECRET_PREFIX: &str = "coda_";

/// Length of the base64url part of a secret (32 bytes, unpadded).
const SECRET_BODY_LEN: usize = 43;

/// Longest accepted token name.
const MAX_NAME_LEN: usize = 64;

/// Makes a fresh secret: `coda_` + base64url(32 bytes from the OS RNG).
pub(crate) fn new_secret() -> Result<String, rand::rand_core::OsError> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes)?;
    Ok(encode_secret(&bytes))
}

pub(crate) fn encode_secret(bytes: &[u8; 32]) -> String {
    let mut secret = String::with_capacity(SECRET_PREFIX.len() + SECRET_BODY_LEN);
    secret.push_str(SECRET_PREFIX);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(bytes, &mut secret);
    secret
}

/// Whether `secret` has the shape of a Coda secret (prefix, length, alphabet).
pub fn is_well_formed(secret: &str) -> bool {
    secret.strip_prefix(SECRET_PREFIX).is_some_and(|body| {
        body.len() == SECRET_BODY_LEN
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Storage key of a secret: lowercase hex SHA-256 of the whole secret string.
fn hash_key(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// What is known about a token: safe to print, log and serialize (`--json`). It holds no
/// secret and no hash; it is also the record stored under the hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Short public id (8 hex chars), for listing and revoking.
    pub id: String,
    /// Name given at creation (kept across rotations).
    pub name: String,
    /// Creation time, unix seconds.
    pub created_at: f64,
    /// Expiry time, unix seconds; `None` = never.
    pub expires_at: Option<f64>,
    /// Revocation time, unix seconds; `None` = not revoked.
    pub revoked_at: Option<f64>,
    /// Id of the token this one replaced, when it came from a rotation.
    pub rotated_from: Option<String>,
}

/// A token's state at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenStatus {
    /// Accepted.
    Active,
    /// Past its expiry.
    Expired,
    /// Revoked (also when expired: revocation wins).
    Revoked,
}

impl TokenInfo {
    /// The token's state at `now` (unix seconds).
    pub fn status_at(&self, now: f64) -> TokenStatus {
        if self.revoked_at.is_some() {
            TokenStatus::Revoked
        } else if self.expires_at.is_some_and(|at| at <= now) {
            TokenStatus::Expired
        } else {
            TokenStatus::Active
        }
    }
}

/// Why a presented token was refused. The Display text is safe to send to the client and
/// to log: it never contains the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No token was presented.
    #[error("no token was presented")]
    Missing,
    /// Well-formed, but no such token.
    #[error("unknown token")]
    Unknown,
    /// The token has expired.
    #[error("token has expired")]
    Expired,
    /// The token has been revoked.
    #[error("token has been revoked")]
    Revoked,
    /// Not a Coda token (expected `coda_` followed by 43 base64url characters).
    #[error("malformed token (expected `coda_` followed by 43 base64url characters)")]
    Malformed,
    /// The token store could not be read: the server's fault, so refuse (fail closed) but
    /// say so rather than blame the token. The cause is logged on the server.
    #[error("token store unavailable; try again later")]
    Unavailable,
}

/// Errors from managing tokens.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No token with that id, and no unrevoked token with that name.
    #[error("no token with id or name {0:?}")]
    NotFound(String),
    /// The name belongs to several unrevoked tokens.
    #[error("{name:?} names {} tokens ({}); use an id", .ids.len(), .ids.join(", "))]
    Ambiguous {
        /// The name given.
        name: String,
        /// Ids of the tokens with that name.
        ids: Vec<String>,
    },
    /// The token is revoked; it cannot be rotated (that would bring it back).
    #[error("token {id} ({name}) is revoked")]
    AlreadyRevoked { id: String, name: String },
    /// The name is not acceptable.
    #[error("invalid token name: {0}")]
    InvalidName(String),
    /// A zero lifetime would make a token that is expired at birth.
    #[error("token lifetime must be longer than zero")]
    InvalidTtl,
    /// A stored record cannot be read.
    #[error("token record is unreadable: {0}")]
    BadRecord(String),
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed: {0}")]
    Random(String),
}

/// Token records on a [`Storage`], in the [`TOKEN_TREE`] tree.
///
/// Calls block on disk I/O (writes are flushed): call them off the event loop.
#[derive(Clone)]
pub struct TokenStore {
    storage: Arc<dyn Storage>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("tree", &TOKEN_TREE)
            .finish_non_exhaustive()
    }
}

impl TokenStore {
    /// A token store on `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> TokenStore {
        TokenStore { storage }
    }

    /// Creates a token named `name`, expiring after `ttl` (`None` = never). Returns its
    /// info and the secret; the secret is shown once and cannot be recovered.
    pub fn create(
        &self,
        name: &str,
        ttl: Option<Duration>,
    ) -> Result<(TokenInfo, String), TokenError> {
        self.create_at(name, ttl, unix_now())
    }

    pub(crate) fn create_at(
        &self,
        name: &str,
        ttl: Option<Duration>,
        now: f64,
    ) -> Result<(TokenInfo, String), TokenError> {
        validate_name(name)?;
        let expires_at = expiry(ttl, now)?;
        let existing = self.records()?;
        let (info, secret, key) = mint(name, now, expires_at, None, &existing)?;
        self.storage
            .put(TOKEN_TREE, key.as_bytes(), &to_record(&info)?)?;
        tracing::info!(id = %info.id, name = %info.name, "token created");
        Ok((info, secret))
    }

    /// Every token (active, expired and revoked), oldest first.
    pub fn list(&self) -> Result<Vec<TokenInfo>, TokenError> {
        let mut all: Vec<TokenInfo> = self.records()?.into_iter().map(|(_, info)| info).collect();
        all.sort_by(|a, b| a.created_at.total_cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(all)
    }

    /// Revokes the token with id (8 hex chars) or name `id_or_name`, effective at once.
    ///
    /// A name selects among unrevoked tokens: several → [`TokenError::Ambiguous`]. Revoking
    /// an already revoked token (by id) changes nothing and returns it as it is.
    pub fn revoke(&self, id_or_name: &str) -> Result<TokenInfo, TokenError> {
        self.revoke_at(id_or_name, unix_now())
    }

    pub(crate) fn revoke_at(&self, id_or_name: &str, now: f64) -> Result<TokenInfo, TokenError> {
        let records = self.records()?;
        let (key, mut info) = resolve(&records, id_or_name)?;
        if info.revoked_at.is_some() {
            return Ok(info);
        }
        info.revoked_at = Some(now);
        self.storage
            .put(TOKEN_TREE, key.as_bytes(), &to_record(&info)?)?;
        tracing::info!(id = %info.id, name = %info.name, "token revoked");
        Ok(info)
    }

    /// Replaces a token with a new secret under the same name, expiring after `ttl`
    /// (`None` = never; the old lifetime is not carried over). The old token is revoked in
    /// the same atomic write. Returns the new token's info and secret.
    pub fn rotate(
        &self,
        id_or_name: &str,
        ttl: Option<Duration>,
    ) -> Result<(TokenInfo, String), TokenError> {
        self.rotate_at(id_or_name, ttl, unix_now())
    }

    pub(crate) fn rotate_at(
        &self,
        id_or_name: &str,
        ttl: Option<Duration>,
        now: f64,
    ) -> Result<(TokenInfo, String), TokenError> {
        let expires_at = expiry(ttl, now)?;
        let records = self.records()?;
        let (old_key, mut old) = resolve(&records, id_or_name)?;
        if old.revoked_at.is_some() {
            return Err(TokenError::AlreadyRevoked {
                id: old.id,
                name: old.name,
            });
        }
        let (info, secret, key) = mint(&old.name, now, expires_at, Some(old.id.clone()), &records)?;
        old.revoked_at = Some(now);
        self.storage.put_many(
            TOKEN_TREE,
            &[
                (key.into_bytes(), to_record(&info)?),
                (old_key.into_bytes(), to_record(&old)?),
            ],
        )?;
        tracing::info!(id = %info.id, old_id = %old.id, name = %info.name, "token rotated");
        Ok((info, secret))
    }

    /// Checks a presented secret now. See [`TokenStore::verify_at`].
    pub fn verify(&self, secret: &str) -> Result<TokenInfo, AuthFailure> {
        self.verify_at(secret, unix_now())
    }

    /// Checks a presented secret at time `now` (unix seconds): its shape, then its record.
    /// A revoked token is reported as revoked even when it has also expired.
    pub fn verify_at(&self, secret: &str, now: f64) -> Result<TokenInfo, AuthFailure> {
        let secret = secret.trim();
        if secret.is_empty() {
            return Err(AuthFailure::Missing);
        }
        if !is_well_formed(secret) {
            return Err(AuthFailure::Malformed);
        }
        let raw = match self.storage.get(TOKEN_TREE, hash_key(secret).as_bytes()) {
            Ok(Some(raw)) => raw,
            Ok(None) => return Err(AuthFailure::Unknown),
            Err(err) => {
                tracing::error!(error = %err, "token store read failed; refusing the token");
                return Err(AuthFailure::Unavailable);
            }
        };
        let info: TokenInfo = match serde_json::from_slice(&raw) {
            Ok(info) => info,
            Err(err) => {
                tracing::error!(error = %err, "unreadable token record; refusing the token");
                return Err(AuthFailure::Unavailable);
            }
        };
        match info.status_at(now) {
            TokenStatus::Active => Ok(info),
            TokenStatus::Expired => Err(AuthFailure::Expired),
            TokenStatus::Revoked => Err(AuthFailure::Revoked),
        }
    }

    /// All records as (hash key, info).
    fn records(&self) -> Result<Vec<(String, TokenInfo)>, TokenError> {
        self.storage
            .scan_prefix(TOKEN_TREE, b"")?
            .into_iter()
            .map(|(key, value)| {
                let key = String::from_utf8(key)
                    .map_err(|_| TokenError::BadRecord("key is not text".into()))?;
                let info = serde_json::from_slice(&value)
                    .map_err(|e| TokenError::BadRecord(e.to_string()))?;
                Ok((key, info))
            })
            .collect()
    }
}

/// A new token (info, secret, storage key) with an id unused in `existing`.
fn mint(
    name: &str,
    now: f64,
    expires_at: Option<f64>,
    rotated_from: Option<String>,
    existing: &[(String, TokenInfo)],
) -> Result<(TokenInfo, String, String), TokenError> {
    let random = |e: rand::rand_core::OsError| TokenError::Random(e.to_string());
    let id = loop {
        let mut bytes = [0u8; 4];
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(random)?;
        let id = hex::encode(bytes);
        if !existing.iter().any(|(_, info)| info.id == id) {
            break id;
        }
    };
    let secret = new_secret().map_err(random)?;
    let key = hash_key(&secret);
    let info = TokenInfo {
        id,
        name: name.to_owned(),
        created_at: now,
        expires_at,
        revoked_at: None,
        rotated_from,
    };
    Ok((info, secret, key))
}

fn to_record(info: &TokenInfo) -> Result<Vec<u8>, TokenError> {
    serde_json::to_vec(info).map_err(|e| TokenError::BadRecord(e.to_string()))
}

fn expiry(ttl: Option<Duration>, now: f64) -> Result<Option<f64>, TokenError> {
    match ttl {
        Some(ttl) if ttl.is_zero() => Err(TokenError::InvalidTtl),
        Some(ttl) => Ok(Some(now + ttl.as_secs_f64())),
        None => Ok(None),
    }
}

fn is_id(s: &str) -> bool {
    s.len() == 8 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn validate_name(name: &str) -> Result<(), TokenError> {
    let reason = if name.trim().is_empty() {
        "it is empty"
    } else if name.trim() != name {
        "it starts or ends with whitespace"
    } else if name.chars().count() > MAX_NAME_LEN {
        "it is longer than 64 characters"
    } else if name.chars().any(char::is_control) {
        "it contains control characters"
    } else if is_id(name) {
        // Ids win when resolving, so such a name could never be selected by name.
        "it looks like a token id (8 hex characters)"
    } else {
        return Ok(());
    };
    Err(TokenError::InvalidName(format!("{name:?}: {reason}")))
}

/// Finds the one token meant by `id_or_name`: an exact id first (any state), else the
/// unrevoked tokens with that name (rotation leaves revoked namesakes behind).
fn resolve(
    records: &[(String, TokenInfo)],
    id_or_name: &str,
) -> Result<(String, TokenInfo), TokenError> {
    if let Some(found) = records.iter().find(|(_, info)| info.id == id_or_name) {
        return Ok(found.clone());
    }
    let mut named: Vec<&(String, TokenInfo)> = records
        .iter()
        .filter(|(_, info)| info.name == id_or_name && info.revoked_at.is_none())
        .collect();
    match named.len() {
        0 => Err(TokenError::NotFound(id_or_name.to_owned())),
        1 => Ok(named[0].clone()),
        _ => {
            named.sort_by(|a, b| a.1.created_at.total_cmp(&b.1.created_at));
            Err(TokenError::Ambiguous {
                name: id_or_name.to_owned(),
                ids: named.iter().map(|(_, info)| info.id.clone()).collect(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    fn store() -> TokenStore {
        TokenStore::new(Arc::new(SledStore::temporary().expect("store")))
    }

    const T0: f64 = 1_800_000_000.0;

    #[test]
    fn secret_format() {
        let secret = new_secret().expect("rng");
        assert_eq!(secret.len(), 5 + 43);
        assert!(secret.starts_with("coda_"));
        assert!(is_well_formed(&secret));
        assert_ne!(secret, new_secret().expect("rng"));
        assert_eq!(
            encode_secret(&[0xff; 32]),
            format!("coda_{}8", "_".repeat(42))
        );
        assert!(!is_well_formed("coda_short"));
        assert!(!is_well_formed(&secret.replace("coda_", "cod4_")));
        assert!(!is_well_formed(&format!(
            "{}=",
            &secret[..secret.len() - 1]
        )));
    }

    #[test]
    fn create_verify_list() {
        let tokens = store();
        let (info, secret) = tokens.create_at("laptop", None, T0).expect("create");
        assert_eq!(info.name, "laptop");
        assert!(is_id(&info.id));
        assert_eq!(info.created_at, T0);
        assert_eq!(tokens.verify_at(&secret, T0 + 1.0), Ok(info.clone()));
        // Surrounding whitespace (e.g. from a file) is tolerated.
        assert_eq!(tokens.verify(&format!(" {secret}\n")), Ok(info.clone()));

        let (second, _) = tokens.create_at("phone", None, T0 - 10.0).expect("create");
        let listed = tokens.list().expect("list");
        assert_eq!(listed, vec![second, info]);
    }

    #[test]
    fn unknown_missing_malformed() {
        let tokens = store();
        let other = new_secret().expect("rng");
        assert_eq!(tokens.verify(&other), Err(AuthFailure::Unknown));
        assert_eq!(tokens.verify(""), Err(AuthFailure::Missing));
        assert_eq!(tokens.verify("   "), Err(AuthFailure::Missing));
        assert_eq!(tokens.verify("hunter2"), Err(AuthFailure::Malformed));
        assert_eq!(tokens.verify("coda_!!"), Err(AuthFailure::Malformed));
        let with_bad_char = format!("{}+", &other[..other.len() - 1]);
        assert_eq!(tokens.verify(&with_bad_char), Err(AuthFailure::Malformed));
    }

    #[test]
    fn failure_text_never_contains_the_secret() {
        let tokens = store();
        let (_, secret) = tokens
            .create_at("x", Some(Duration::from_secs(1)), T0)
            .expect("create");
        let failures = [
            tokens.verify_at(&secret, T0 + 5.0),
            tokens.verify(&new_secret().expect("rng")),
            tokens.verify(&secret[..20]),
        ];
        for failure in failures {
            let failure = failure.expect_err("refused");
            let text = format!("{failure} {failure:?}");
            assert!(!text.contains(&secret[5..20]), "{text}");
        }
    }

    #[test]
    fn expiry_with_injected_time() {
        let tokens = store();
        let (info, secret) = tokens
            .create_at("ci", Some(Duration::from_secs(3600)), T0)
            .expect("create");
        assert_eq!(info.expires_at, Some(T0 + 3600.0));
        assert!(tokens.verify_at(&secret, T0 + 3599.0).is_ok());
        assert_eq!(
            tokens.verify_at(&secret, T0 + 3600.0),
            Err(AuthFailure::Expired)
        );
        assert_eq!(info.status_at(T0 + 4000.0), TokenStatus::Expired);
        assert!(matches!(
            tokens.create_at("ci", Some(Duration::ZERO), T0),
            Err(TokenError::InvalidTtl)
        ));
    }

    #[test]
    fn revoke_by_id_and_name() {
        let tokens = store();
        let (a, secret_a) = tokens.create_at("a-token", None, T0).expect("create");
        let (b, secret_b) = tokens.create_at("b-token", None, T0 + 1.0).expect("create");

        let revoked = tokens.revoke_at(&a.id, T0 + 5.0).expect("revoke by id");
        assert_eq!(revoked.revoked_at, Some(T0 + 5.0));
        assert_eq!(tokens.verify(&secret_a), Err(AuthFailure::Revoked));
        // Idempotent by id.
        let again = tokens.revoke_at(&a.id, T0 + 9.0).expect("again");
        assert_eq!(again.revoked_at, Some(T0 + 5.0));
        // By name, the revoked one no longer counts.
        assert!(matches!(
            tokens.revoke("a-token"),
            Err(TokenError::NotFound(_))
        ));

        tokens.revoke("b-token").expect("revoke by name");
        assert_eq!(tokens.verify(&secret_b), Err(AuthFailure::Revoked));
        assert_eq!(tokens.list().expect("list")[1].id, b.id);

        assert!(matches!(
            tokens.revoke("nope"),
            Err(TokenError::NotFound(_))
        ));
    }

    #[test]
    fn ambiguous_name_is_refused_with_ids() {
        let tokens = store();
        let (a, _) = tokens.create_at("dup", None, T0).expect("create");
        let (b, _) = tokens.create_at("dup", None, T0 + 1.0).expect("create");
        match tokens.revoke("dup") {
            Err(TokenError::Ambiguous { name, ids }) => {
                assert_eq!(name, "dup");
                assert_eq!(ids, vec![a.id.clone(), b.id.clone()]);
                let text = TokenError::Ambiguous { name, ids }.to_string();
                assert!(text.contains(&a.id) && text.contains("use an id"), "{text}");
            }
            other => panic!("expected Ambiguous, got {other:?}"),
        }
        tokens.revoke(&a.id).expect("by id");
        tokens.revoke("dup").expect("now unambiguous");
    }

    #[test]
    fn rotate_replaces_and_revokes_at_once() {
        let tokens = store();
        let (old, old_secret) = tokens.create_at("bot", None, T0).expect("create");
        let (new, new_secret) = tokens
            .rotate_at("bot", Some(Duration::from_secs(60)), T0 + 10.0)
            .expect("rotate");
        assert_eq!(new.name, "bot");
        assert_ne!(new.id, old.id);
        assert_ne!(new_secret, old_secret);
        assert_eq!(new.rotated_from.as_deref(), Some(old.id.as_str()));
        assert_eq!(new.expires_at, Some(T0 + 70.0));
        assert_eq!(
            tokens.verify_at(&old_secret, T0 + 11.0),
            Err(AuthFailure::Revoked)
        );
        assert_eq!(tokens.verify_at(&new_secret, T0 + 11.0), Ok(new.clone()));
        // The name now means the new token only; the old one cannot be rotated back.
        assert!(matches!(
            tokens.rotate(&old.id, None),
            Err(TokenError::AlreadyRevoked { .. })
        ));
        let (newer, _) = tokens.rotate("bot", None).expect("rotate by name again");
        assert_eq!(newer.rotated_from, Some(new.id));
        assert_eq!(tokens.list().expect("list").len(), 3);
    }

    #[test]
    fn names_are_validated() {
        let tokens = store();
        for bad in ["", "  ", " x", "a\nb", "deadbeef", &"n".repeat(65)] {
            assert!(
                matches!(tokens.create(bad, None), Err(TokenError::InvalidName(_))),
                "{bad:?}"
            );
        }
        tokens.create("deadbeef-laptop", None).expect("fine");
    }

    #[test]
    fn info_serializes_without_secret_or_hash() {
        let tokens = store();
        let (info, secret) = tokens.create("json", None).expect("create");
        let json = serde_json::to_string(&info).expect("json");
        assert!(!json.contains(&secret));
        assert!(!json.contains(&hash_key(&secret)));
        for field in [
            "id",
            "name",
            "created_at",
            "expires_at",
            "revoked_at",
            "rotated_from",
        ] {
            assert!(json.contains(&format!("\"{field}\"")), "{json}");
        }
    }

    #[test]
    fn only_hashes_reach_the_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let mut secrets = Vec::new();
        {
            let tokens = TokenStore::new(Arc::new(SledStore::open(&path).expect("store")));
            for name in ["one", "two", "three"] {
                secrets.push(tokens.create(name, None).expect("create").1);
            }
            let (_, rotated) = tokens.rotate("two", None).expect("rotate");
            secrets.push(rotated);
            // The hash is stored (so the scan below looks in the right place).
            let key = hash_key(&secrets[0]);
            assert!(tokens
                .storage
                .get(TOKEN_TREE, key.as_bytes())
                .expect("get")
                .is_some());
        }
        let mut files = vec![path.clone()];
        let mut contents = Vec::new();
        while let Some(p) = files.pop() {
            if p.is_dir() {
                files.extend(
                    std::fs::read_dir(&p)
                        .expect("dir")
                        .map(|e| e.expect("entry").path()),
                );
            } else {
                contents.push(std::fs::read(&p).expect("read"));
            }
        }
        assert!(!contents.is_empty());
        for secret in &secrets {
            let body = &secret.as_bytes()[SECRET_PREFIX.len()..];
            for data in &contents {
                assert!(
                    !data.windows(body.len()).any(|w| w == body),
                    "secret on disk"
                );
            }
        }
        // And the records came back after the reopen.
        let tokens = TokenStore::new(Arc::new(SledStore::open(&path).expect("reopen")));
        assert!(tokens.verify(&secrets[0]).is_ok());
        assert_eq!(tokens.verify(&secrets[1]), Err(AuthFailure::Revoked));
        assert!(tokens.verify(&secrets[3]).is_ok());
    }
}

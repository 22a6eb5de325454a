//! Authentication: who may connect.
//!
//! Two kinds of secret, both `coda_` + 43 base64url characters:
//! - the per-boot token ([`BootToken`]), regenerated at every start and written to a 0600
//!   file for the CLI's own clients;
//! - long-lived tokens ([`TokenStore`]), created, rotated and revoked by the CLI, stored
//!   hashed, optionally expiring.
//!
//! A client presents one as `Authorization: Bearer <secret>` ([`extract_bearer`]), in
//! `Sec-WebSocket-Protocol` ([`extract_from_subprotocols`], the one header a browser can
//! set), or in a first `auth` command — never in the URL, which proxies and histories keep.
//! Secrets are never logged: only token ids and names are.

mod boot;
mod tokens;

pub use boot::BootToken;
pub use tokens::{
    is_well_formed, AuthFailure, TokenError, TokenInfo, TokenStatus, TokenStore, SECRET_PREFIX,
    TOKEN_TREE,
};

/// The WebSocket subprotocol a client offers next to its token entry, and the one the
/// server echoes back (see [`extract_from_subprotocols`]).
pub const SUBPROTOCOL: &str = "coda.v1";

/// Prefix of the subprotocol entry that carries a token: `coda.token.<secret>`.
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "coda.token.";

/// Who a connection authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The per-boot token (the local CLI, or whoever can read the user's runtime dir).
    Boot,
    /// A stored token.
    Token {
        /// The token's public id.
        id: String,
        /// The token's name.
        name: String,
    },
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Boot => f.write_str("boot token"),
            Principal::Token { id, name } => write!(f, "token {id} ({name})"),
        }
    }
}

/// Checks presented secrets: the boot token first, then the token store (if any).
#[derive(Debug, Clone)]
pub struct Authenticator {
    boot: BootToken,
    store: Option<TokenStore>,
}

impl Authenticator {
    /// An authenticator accepting `boot` and, when given, the tokens in `store`.
    pub fn new(boot: BootToken, store: Option<TokenStore>) -> Authenticator {
        Authenticator { boot, store }
    }

    /// The boot token (to write its file at start and remove it at shutdown).
    pub fn boot(&self) -> &BootToken {
        &self.boot
    }

    /// The token store, for the admin commands of the per-boot principal.
    pub fn tokens(&self) -> Option<&TokenStore> {
        self.store.as_ref()
    }

    /// Checks a presented secret (`None` when the client sent none).
    ///
    /// The boot token is compared in constant time; a stored token is looked up by its
    /// hash. May read the token store (disk): cheap, but blocking.
    pub fn check(&self, presented: Option<&str>) -> Result<Principal, AuthFailure> {
        let secret = match presented.map(str::trim) {
            None | Some("") => return Err(AuthFailure::Missing),
            Some(secret) => secret,
        };
        if self.boot.matches(secret) {
            return Ok(Principal::Boot);
        }
        match &self.store {
            Some(store) => store.verify(secret).map(|info| Principal::Token {
                id: info.id,
                name: info.name,
            }),
            None if is_well_formed(secret) => Err(AuthFailure::Unknown),
            None => Err(AuthFailure::Malformed),
        }
    }
}

/// The token in an `Authorization` header value using the `Bearer` scheme (scheme name
/// case-insensitive, RFC 7235), or `None` for another scheme, no token, or a value with
/// more than one word after the scheme.
pub fn extract_bearer(header_value: &str) -> Option<&str> {
    let value = header_value.trim();
    let (scheme, rest) = value.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    if token.is_empty() || token.contains(|c: char| c.is_whitespace() || c == ',') {
        return None;
    }
    Some(token)
}

/// The token offered in a `Sec-WebSocket-Protocol` header value, and the protocol the
/// server should echo back: `Some((echo, token))`.
///
/// The convention (browsers can set no other header on a WebSocket): the client offers
/// `Sec-WebSocket-Protocol: coda.v1, coda.token.<secret>`. The entry starting with
/// [`TOKEN_SUBPROTOCOL_PREFIX`] carries the token; the first one wins, an empty one is
/// ignored. A browser fails the handshake unless the server answers with one of the
/// offered protocols, and echoing the token entry would put the secret in a response
/// header, so clients also offer [`SUBPROTOCOL`] (`coda.v1`), and `echo` is that entry.
/// Only when a client did not offer `coda.v1` is `echo` the full token entry (the client
/// offered it, so the handshake still completes). Protocol names are case-sensitive
/// (RFC 6455 §4.1). When the header appears several times, call this on each value.
pub fn extract_from_subprotocols(header_value: &str) -> Option<(&str, &str)> {
    let mut v1 = None;
    let mut carrier = None;
    for offer in header_value.split(',').map(str::trim) {
        if offer == SUBPROTOCOL {
            v1 = v1.or(Some(offer));
        } else if let Some(token) = offer.strip_prefix(TOKEN_SUBPROTOCOL_PREFIX) {
            if carrier.is_none() && !token.is_empty() {
                carrier = Some((offer, token));
            }
        }
    }
    let (entry, token) = carrier?;
    Some((v1.unwrap_or(entry), token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;
    use std::sync::Arc;

    fn with_store() -> (Authenticator, TokenStore) {
        let store = TokenStore::new(Arc::new(SledStore::temporary().expect("store")));
        (
            Authenticator::new(BootToken::generate(), Some(store.clone())),
            store,
        )
    }

    #[test]
    fn check_boot_then_store() {
        let (auth, store) = with_store();
        let boot = auth.boot().expose_secret().to_owned();
        assert_eq!(auth.check(Some(&boot)), Ok(Principal::Boot));

        let (info, secret) = store.create("laptop", None).expect("create");
        let principal = auth.check(Some(&secret)).expect("token");
        assert_eq!(
            principal,
            Principal::Token {
                id: info.id.clone(),
                name: "laptop".into()
            }
        );
        assert_eq!(principal.to_string(), format!("token {} (laptop)", info.id));

        store.revoke(&info.id).expect("revoke");
        assert_eq!(auth.check(Some(&secret)), Err(AuthFailure::Revoked));
        assert_eq!(auth.check(None), Err(AuthFailure::Missing));
        assert_eq!(auth.check(Some("  ")), Err(AuthFailure::Missing));
        assert_eq!(auth.check(Some("nope")), Err(AuthFailure::Malformed));
        let stranger = BootToken::generate();
        assert_eq!(
            auth.check(Some(stranger.expose_secret())),
            Err(AuthFailure::Unknown)
        );
    }

    #[test]
    fn check_without_store() {
        let auth = Authenticator::new(BootToken::generate(), None);
        let boot = auth.boot().expose_secret().to_owned();
        assert_eq!(auth.check(Some(&boot)), Ok(Principal::Boot));
        let stranger = BootToken::generate();
        assert_eq!(
            auth.check(Some(stranger.expose_secret())),
            Err(AuthFailure::Unknown)
        );
        assert_eq!(auth.check(Some("x")), Err(AuthFailure::Malformed));
        assert!(!format!("{auth:?}").contains(&boot));
    }

    #[test]
    fn bearer_extraction() {
        assert_eq!(extract_bearer("Bearer abc"), Some("abc"));
        assert_eq!(extract_bearer("bearer abc"), Some("abc"));
        assert_eq!(extract_bearer("BEARER\tabc"), Some("abc"));
        assert_eq!(extract_bearer("  Bearer   abc  "), Some("abc"));
        assert_eq!(extract_bearer("Bearer"), None);
        assert_eq!(extract_bearer("Bearer "), None);
        assert_eq!(extract_bearer("Bearer a b"), None);
        assert_eq!(extract_bearer("Bearer a,b"), None);
        assert_eq!(extract_bearer("Basic dXNlcjpwYXNz"), None);
        assert_eq!(extract_bearer("Bearerabc"), None);
        assert_eq!(extract_bearer(""), None);
    }

    #[test]
    fn subprotocol_extraction() {
        assert_eq!(
            extract_from_subprotocols("coda.v1, coda.token.abc"),
            Some(("coda.v1", "abc"))
        );
        assert_eq!(
            extract_from_subprotocols("coda.token.abc,coda.v1"),
            Some(("coda.v1", "abc"))
        );
        // Without coda.v1 the token entry itself is the only thing that can be echoed.
        assert_eq!(
            extract_from_subprotocols(" coda.token.abc "),
            Some(("coda.token.abc", "abc"))
        );
        assert_eq!(
            extract_from_subprotocols("coda.v1, coda.token., coda.token.x, coda.token.y"),
            Some(("coda.v1", "x"))
        );
        assert_eq!(extract_from_subprotocols("coda.v1"), None);
        assert_eq!(extract_from_subprotocols("coda.token."), None);
        assert_eq!(extract_from_subprotocols(""), None);
        assert_eq!(extract_from_subprotocols("Coda.Token.abc, coda.v1"), None);
        assert_eq!(
            extract_from_subprotocols("coda.v1, ,coda.token.abc"),
            Some(("coda.v1", "abc"))
        );
    }

    #[test]
    fn real_secret_round_trips_through_both_headers() {
        let (auth, _) = with_store();
        let secret = auth.boot().expose_secret().to_owned();
        let bearer = format!("Bearer {secret}");
        assert_eq!(auth.check(extract_bearer(&bearer)), Ok(Principal::Boot));
        let offer = format!("{SUBPROTOCOL}, {TOKEN_SUBPROTOCOL_PREFIX}{secret}");
        let (echo, token) = extract_from_subprotocols(&offer).expect("offer");
        assert_eq!(echo, SUBPROTOCOL);
        assert_eq!(auth.check(Some(token)), Ok(Principal::Boot));
    }
}

//! The protocol version and the compatibility rule between a client and this server.
//!
//! Versions are `"MAJOR.MINOR"`. Within one MAJOR, a MINOR release only *adds*: new event
//! types, new optional payload fields, new commands. So a client and a server with the same
//! MAJOR always understand each other, provided the client ignores event types and fields
//! it does not know. Anything else (removing or renaming a type or field, changing a type,
//! adding a value to a closed enum such as `mode`) is a new MAJOR.

/// The protocol version this crate implements, as sent in every envelope's `version`.
pub const PROTOCOL_VERSION: &str = "1.0";
/// The MAJOR part of [`PROTOCOL_VERSION`]: a client with another MAJOR is refused.
pub const PROTOCOL_MAJOR: u32 = 1;
/// The MINOR part of [`PROTOCOL_VERSION`]: only additions between MINORs.
pub const PROTOCOL_MINOR: u32 = 0;

/// Longest version text echoed back in an error (a hostile client may send megabytes).
const MAX_ECHOED_CHARS: usize = 32;

/// Why a client's protocol version was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The text is not `MAJOR.MINOR` (digits only). The text is truncated to 32 characters.
    #[error("malformed protocol version `{0}`: expected \"MAJOR.MINOR\", for example \"1.0\"")]
    Malformed(String),
    /// The MAJOR versions differ: the two sides cannot be assumed to understand each other.
    #[error(
        "protocol version {client} is not compatible with this server's {server}: \
         the MAJOR versions differ; use a client built for protocol {server}"
    )]
    MajorMismatch {
        /// The version the client asked for.
        client: String,
        /// The version this server speaks ([`PROTOCOL_VERSION`]).
        server: String,
    },
}

/// Parses `"MAJOR.MINOR"` into its two numbers.
///
/// A bare `"MAJOR"` is read as `MAJOR.0`, and a trailing `.PATCH` (as in `"1.0.3"`) is
/// tolerated and ignored, because only MAJOR decides compatibility. Every part must be
/// ASCII digits; anything else is [`VersionError::Malformed`].
pub fn parse_version(version: &str) -> Result<(u32, u32), VersionError> {
    let malformed = || VersionError::Malformed(truncate(version));
    let mut parts = version.split('.');
    let mut number = |required: bool| -> Result<Option<u32>, VersionError> {
        match parts.next() {
            None if !required => Ok(None),
            None => Err(malformed()),
            Some(part) => {
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(malformed());
                }
                part.parse::<u32>().map(Some).map_err(|_| malformed())
            }
        }
    };
    let major = number(true)?.unwrap_or_default();
    let minor = number(false)?.unwrap_or_default();
    let _patch = number(false)?;
    if parts.next().is_some() {
        return Err(malformed());
    }
    Ok((major, minor))
}

/// Checks whether a client speaking `client_version` can talk to this server.
///
/// **The rule:** the same MAJOR is compatible, whatever the MINORs. A MINOR only adds new
/// event types, new optional fields and new commands, so:
///
/// * clients must ignore event types they do not know (use
///   [`RawEnvelope`](crate::RawEnvelope), whose [`decode`](crate::RawEnvelope::decode)
///   returns `None` for them) and fields they do not know (every payload struct here
///   ignores unknown fields);
/// * a client newer than the server (client `1.3`, server `1.0`) is accepted too; a command
///   the server does not have yet is answered with `unknown_command`.
///
/// A different MAJOR is [`VersionError::MajorMismatch`]: the server answers `hello` with a
/// `system_error` of code `version_mismatch` and closes with WebSocket code 1002.
///
/// ```
/// use coda_protocol::{check_compatible, VersionError};
/// assert!(check_compatible("1.0").is_ok());
/// assert!(check_compatible("1.7").is_ok());
/// assert!(matches!(check_compatible("2.0"), Err(VersionError::MajorMismatch { .. })));
/// assert!(matches!(check_compatible("one"), Err(VersionError::Malformed(_))));
/// ```
pub fn check_compatible(client_version: &str) -> Result<(), VersionError> {
    let (major, _minor) = parse_version(client_version)?;
    if major == PROTOCOL_MAJOR {
        Ok(())
    } else {
        Err(VersionError::MajorMismatch {
            client: truncate(client_version),
            server: PROTOCOL_VERSION.to_owned(),
        })
    }
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_ECHOED_CHARS {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(MAX_ECHOED_CHARS).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_agree() {
        assert_eq!(
            PROTOCOL_VERSION,
            format!("{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}")
        );
        assert_eq!(
            parse_version(PROTOCOL_VERSION),
            Ok((PROTOCOL_MAJOR, PROTOCOL_MINOR))
        );
    }

    #[test]
    fn same_major_is_compatible() {
        for v in ["1.0", "1.1", "1.99", "1", "1.0.5", "01.0"] {
            assert_eq!(check_compatible(v), Ok(()), "{v}");
        }
    }

    #[test]
    fn other_major_is_refused() {
        for v in ["0.9", "2.0", "3", "2.0.1"] {
            match check_compatible(v) {
                Err(VersionError::MajorMismatch { client, server }) => {
                    assert_eq!(client, v);
                    assert_eq!(server, PROTOCOL_VERSION);
                }
                other => panic!("{v}: {other:?}"),
            }
        }
        let message = check_compatible("2.0").unwrap_err().to_string();
        assert!(
            message.contains("2.0") && message.contains("1.0"),
            "{message}"
        );
    }

    #[test]
    fn malformed_versions() {
        for v in [
            "",
            ".",
            "1.",
            ".1",
            "a.b",
            "1.x",
            "v1.0",
            " 1.0",
            "1.0 ",
            "1.0.0.0",
            "1..0",
            "-1.0",
            "+1.0",
            "1,0",
            "99999999999.0",
        ] {
            assert!(
                matches!(check_compatible(v), Err(VersionError::Malformed(_))),
                "{v:?}"
            );
        }
    }

    #[test]
    fn malformed_text_is_truncated() {
        let long = "x".repeat(10_000);
        match check_compatible(&long) {
            Err(VersionError::Malformed(echo)) => assert!(echo.chars().count() <= 33),
            other => panic!("{other:?}"),
        }
    }
}

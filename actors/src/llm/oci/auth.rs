//! OCI credentials and request signing: `~/.oci/config` profiles (with `DEFAULT`
//! inheritance, as the OCI SDKs read them), the API-key and session-token (security
//! token) schemes, and OCI's HTTP signature: RSA-SHA256 (PKCS#1 v1.5) over
//! `date (request-target) host`, plus `content-length content-type x-content-sha256` for
//! requests with a body.
//!
//! Signing uses ring (constant-time RSA, already in the build through rustls). Instance and
//! resource principals need the metadata service / a resource-principal token exchange;
//! they are recognised and refused with a message saying so.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use sha2::{Digest, Sha256};

use crate::llm::LlmError;

/// Which credentials to sign with (`llm.oci.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum OciAuth {
    /// Session token if the profile has `security_token_file`, else API key; a resource
    /// principal environment is recognised (and refused).
    #[default]
    Auto,
    /// `user` / `fingerprint` / `key_file` of the profile.
    ApiKey,
    /// `security_token_file` + `key_file` (`oci session authenticate`).
    SecurityToken,
    /// Instance principal (not implemented).
    InstancePrincipal,
    /// Resource principal (not implemented).
    ResourcePrincipal,
}

impl TryFrom<String> for OciAuth {
    type Error = String;
    fn try_from(s: String) -> Result<OciAuth, String> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => OciAuth::Auto,
            "api_key" => OciAuth::ApiKey,
            "security_token" | "session_token" => OciAuth::SecurityToken,
            "instance_principal" => OciAuth::InstancePrincipal,
            "resource_principal" => OciAuth::ResourcePrincipal,
            other => {
                return Err(format!(
                    "`{other}` is not one of auto, api_key, security_token, instance_principal, resource_principal"
                ))
            }
        })
    }
}

/// One profile of an OCI config file, `DEFAULT` values filled in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OciProfile {
    /// Profile name.
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Every key of the profile (lower-cased), after inheritance.
    pub values: HashMap<String, String>,
}

impl OciProfile {
    /// A value of the profile.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn require(&self, key: &str) -> Result<&str, LlmError> {
        self.get(key).ok_or_else(|| {
            LlmError::Auth(format!(
                "oci: profile [{}] in {} has no `{key}`",
                self.name,
                self.file.display()
            ))
        })
    }

    /// A path value with `~` expanded.
    pub fn path(&self, key: &str) -> Option<PathBuf> {
        self.get(key).map(expand_tilde)
    }
}

/// `~/x` → `$HOME/x`.
pub fn expand_tilde(p: &str) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/") {
        if let Some(home) = dirs::home_dir() {
            return home.join(rest);
        }
    }
    PathBuf::from(p)
}

/// The default config file: `$OCI_CLI_CONFIG_FILE`, else `~/.oci/config`.
pub fn default_config_file() -> PathBuf {
    match std::env::var("OCI_CLI_CONFIG_FILE") {
        Ok(p) if !p.trim().is_empty() => expand_tilde(p.trim()),
        _ => expand_tilde("~/.oci/config"),
    }
}

/// Parses an OCI config file's text into sections (keys lower-cased).
pub fn parse_config(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut sections: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut current: Option<String> = None;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().to_string();
            sections.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        if let (Some(sec), Some((k, v))) = (&current, line.split_once('=')) {
            sections
                .entry(sec.clone())
                .or_default()
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    sections
}

/// Reads `profile` from `file`; values missing from it are taken from `[DEFAULT]`.
pub fn load_profile(file: &Path, profile: &str) -> Result<OciProfile, LlmError> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        LlmError::Unavailable(format!(
            "oci: cannot read the OCI config file {} ({e}); create one with `oci setup config` or set llm.oci.config_file",
            file.display()
        ))
    })?;
    let sections = parse_config(&text);
    let Some(own) = sections.get(profile) else {
        let mut names: Vec<_> = sections.keys().cloned().collect();
        names.sort();
        return Err(LlmError::Unavailable(format!(
            "oci: no profile [{profile}] in {} (it has: {}); set llm.oci.profile",
            file.display(),
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        )));
    };
    let mut values = sections.get("DEFAULT").cloned().unwrap_or_default();
    values.extend(own.clone());
    Ok(OciProfile {
        name: profile.to_string(),
        file: file.to_path_buf(),
        values,
    })
}

/// Where the `keyId` comes from.
#[derive(Debug, Clone)]
enum KeyId {
    /// `tenancy/user/fingerprint`.
    Fixed(String),
    /// `ST$<token>`, the token re-read for every request (`oci session refresh`
    /// rewrites the file).
    SessionToken(PathBuf),
}

/// Signs requests as OCI's HTTP signature scheme says.
pub struct OciSigner {
    key: RsaKeyPair,
    rng: SystemRandom,
    key_id: KeyId,
}

impl std::fmt::Debug for OciSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The headers a signed request must carry (all of them were signed, except none).
#[derive(Debug, Clone, PartialEq)]
pub struct SignedHeaders {
    pub date: String,
    pub authorization: String,
    /// `x-content-sha256` (requests with a body).
    pub x_content_sha256: Option<String>,
    /// `content-type` (requests with a body).
    pub content_type: Option<String>,
}

impl SignedHeaders {
    /// Adds the headers to a request.
    pub fn apply(&self, mut rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        rb = rb
            .header("date", &self.date)
            .header("authorization", &self.authorization);
        if let Some(h) = &self.x_content_sha256 {
            rb = rb.header("x-content-sha256", h);
        }
        if let Some(ct) = &self.content_type {
            rb = rb.header("content-type", ct);
        }
        rb
    }
}

/// Loads an unencrypted RSA private key (PKCS#1 `RSA PRIVATE KEY` or PKCS#8
/// `PRIVATE KEY`) from PEM text.
pub fn load_private_key(pem: &[u8], origin: &str) -> Result<RsaKeyPair, LlmError> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("ENCRYPTED") {
        return Err(LlmError::Auth(format!(
            "oci: the private key {origin} is encrypted with a pass phrase, which Coda cannot read yet; \
             write an unencrypted copy with `openssl rsa -in KEY -out KEY.plain.pem` (mode 0600) and point key_file at it"
        )));
    }
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        LlmError::Auth(format!(
            "oci: cannot read a PEM private key from {origin}: {e}"
        ))
    })?;
    let key = match &der {
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
        _ => {
            return Err(LlmError::Auth(format!(
                "oci: the key {origin} is not an RSA key (OCI API keys are RSA)"
            )))
        }
    };
    key.map_err(|e| LlmError::Auth(format!("oci: the RSA key {origin} was rejected: {e}")))
}

impl OciSigner {
    /// A signer with an explicit key and `keyId`.
    pub fn new(key: RsaKeyPair, key_id: impl Into<String>) -> Self {
        OciSigner {
            key,
            rng: SystemRandom::new(),
            key_id: KeyId::Fixed(key_id.into()),
        }
    }

    /// The signer for `profile` with `auth`.
    pub fn for_profile(profile: &OciProfile, auth: OciAuth) -> Result<Self, LlmError> {
        let auth = match auth {
            OciAuth::Auto => {
                if std::env::var_os("OCI_RESOURCE_PRINCIPAL_VERSION").is_some() {
                    OciAuth::ResourcePrincipal
                } else if profile.get("security_token_file").is_some() {
                    OciAuth::SecurityToken
                } else {
                    OciAuth::ApiKey
                }
            }
            other => other,
        };
        let not_yet = |what: &str| {
            LlmError::Unavailable(format!(
                "oci: {what} authentication is not implemented in Coda yet; use an API key \
                 (`oci setup config`, llm.oci.auth = \"api_key\") or a session token \
                 (`oci session authenticate`, llm.oci.auth = \"security_token\")"
            ))
        };
        match auth {
            OciAuth::InstancePrincipal => return Err(not_yet("instance principal")),
            OciAuth::ResourcePrincipal => {
                return Err(not_yet(
                    "resource principal (detected: OCI_RESOURCE_PRINCIPAL_VERSION is set)",
                ))
            }
            _ => {}
        }
        if profile.get("key_content").is_some() {
            return Err(LlmError::Unavailable(
                "oci: `key_content` in the config file is not supported; use key_file".into(),
            ));
        }
        let key_file = profile.path("key_file").ok_or_else(|| {
            LlmError::Auth(format!(
                "oci: profile [{}] in {} has no `key_file`",
                profile.name,
                profile.file.display()
            ))
        })?;
        let pem = std::fs::read(&key_file).map_err(|e| {
            LlmError::Auth(format!(
                "oci: cannot read key_file {} ({e})",
                key_file.display()
            ))
        })?;
        let key = load_private_key(&pem, &key_file.display().to_string())?;
        let key_id = if auth == OciAuth::SecurityToken {
            let token = profile.path("security_token_file").ok_or_else(|| {
                LlmError::Auth(format!(
                    "oci: security_token authentication needs `security_token_file` in profile [{}] of {}",
                    profile.name,
                    profile.file.display()
                ))
            })?;
            KeyId::SessionToken(token)
        } else {
            KeyId::Fixed(format!(
                "{}/{}/{}",
                profile.require("tenancy")?,
                profile.require("user")?,
                profile.require("fingerprint")?
            ))
        };
        Ok(OciSigner {
            key,
            rng: SystemRandom::new(),
            key_id,
        })
    }

    fn key_id(&self) -> Result<String, LlmError> {
        match &self.key_id {
            KeyId::Fixed(k) => Ok(k.clone()),
            KeyId::SessionToken(path) => {
                let token = std::fs::read_to_string(path).map_err(|e| {
                    LlmError::Auth(format!(
                        "oci: cannot read security_token_file {} ({e}); run `oci session authenticate`",
                        path.display()
                    ))
                })?;
                Ok(format!("ST${}", token.trim()))
            }
        }
    }

    /// Signs a request to `url` with `method` and optional JSON `body`, dated now.
    pub fn sign(
        &self,
        method: &str,
        url: &reqwest::Url,
        body: Option<&[u8]>,
    ) -> Result<SignedHeaders, LlmError> {
        self.sign_at(method, url, body, SystemTime::now())
    }

    /// [`sign`](Self::sign) with an explicit date.
    pub fn sign_at(
        &self,
        method: &str,
        url: &reqwest::Url,
        body: Option<&[u8]>,
        when: SystemTime,
    ) -> Result<SignedHeaders, LlmError> {
        let date = httpdate::fmt_http_date(when);
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(LlmError::Invalid(format!("oci: no host in {url}"))),
        };
        let target = match url.query() {
            Some(q) => format!("{} {}?{q}", method.to_ascii_lowercase(), url.path()),
            None => format!("{} {}", method.to_ascii_lowercase(), url.path()),
        };
        let mut names = vec!["date", "(request-target)", "host"];
        let mut lines = vec![
            format!("date: {date}"),
            format!("(request-target): {target}"),
            format!("host: {host}"),
        ];
        let (mut sha, mut ctype) = (None, None);
        if let Some(body) = body {
            let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body));
            let ct = "application/json".to_string();
            names.extend(["content-length", "content-type", "x-content-sha256"]);
            lines.push(format!("content-length: {}", body.len()));
            lines.push(format!("content-type: {ct}"));
            lines.push(format!("x-content-sha256: {digest}"));
            sha = Some(digest);
            ctype = Some(ct);
        }
        let signing_string = lines.join("\n");
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &self.rng,
                signing_string.as_bytes(),
                &mut sig,
            )
            .map_err(|_| LlmError::Auth("oci: RSA signing failed".into()))?;
        let authorization = format!(
            "Signature version=\"1\",keyId=\"{}\",algorithm=\"rsa-sha256\",headers=\"{}\",signature=\"{}\"",
            self.key_id()?,
            names.join(" "),
            base64::engine::general_purpose::STANDARD.encode(&sig)
        );
        Ok(SignedHeaders {
            date,
            authorization,
            x_content_sha256: sha,
            content_type: ctype,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_inherit_default() {
        let text = "# comment\n[DEFAULT]\nuser = ocid1.user.oc1..u\nfingerprint=aa:bb\nregion=us-chicago-1\n\n[WORK]\nregion = eu-frankfurt-1\nKey_File=~/k.pem\n; other\n";
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config");
        std::fs::write(&f, text).unwrap();
        let p = load_profile(&f, "WORK").unwrap();
        assert_eq!(p.get("region"), Some("eu-frankfurt-1"));
        assert_eq!(p.get("user"), Some("ocid1.user.oc1..u"));
        assert_eq!(p.get("key_file"), Some("~/k.pem"));
        let e = load_profile(&f, "NOPE").unwrap_err().to_string();
        assert!(e.contains("DEFAULT, WORK"), "{e}");
        let e = load_profile(&dir.path().join("missing"), "DEFAULT")
            .unwrap_err()
            .to_string();
        assert!(e.contains("oci setup config"), "{e}");
    }

    #[test]
    fn principals_are_refused_clearly() {
        let p = OciProfile::default();
        let e = OciSigner::for_profile(&p, OciAuth::InstancePrincipal).unwrap_err();
        assert_eq!(e.code(), "unavailable");
        assert!(e.to_string().contains("instance principal"), "{e}");
        assert!(e.to_string().contains("not implemented"), "{e}");
        let e = OciSigner::for_profile(&p, OciAuth::ResourcePrincipal).unwrap_err();
        assert!(e.to_string().contains("resource principal"), "{e}");
        let parse = |v: &str| serde_json::from_value::<OciAuth>(serde_json::json!(v)).ok();
        assert_eq!(parse("api_key"), Some(OciAuth::ApiKey));
        assert_eq!(parse("session_token"), Some(OciAuth::SecurityToken));
        assert_eq!(parse(""), Some(OciAuth::Auto));
        assert_eq!(parse("x"), None);
    }

    #[test]
    fn encrypted_keys_are_refused_clearly() {
        let pem =
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let e = load_private_key(pem, "k.pem").err().unwrap().to_string();
        assert!(e.contains("pass phrase"), "{e}");
        let e = load_private_key(b"not a key", "k.pem")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cannot read a PEM private key"), "{e}");
    }
}

//! Request guards: the Host allow-list (against DNS rebinding) for every HTTP request and
//! the Origin allow-list (against cross-site WebSocket hijacking) for every upgrade.

use std::collections::HashSet;
use std::net::IpAddr;

/// Which Hosts and Origins the server answers.
#[derive(Debug, Clone)]
pub struct GuardPolicy {
    hosts: HashSet<String>,
    origins: HashSet<String>,
}

impl GuardPolicy {
    /// Builds the policy for a server bound to `bind_host:port`. The loopback names, the
    /// bind address and the dashboard's own origins are always allowed; `extra_hosts` and
    /// `extra_origins` come from config.
    pub fn new(
        bind_host: &str,
        port: u16,
        extra_hosts: &[String],
        extra_origins: &[String],
    ) -> Self {
        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()];
        let bind = bind_host.trim();
        if !bind.is_empty() && bind != "0.0.0.0" && bind != "::" && bind != "[::]" {
            names.push(bracket_v6(bind));
        }
        names.extend(extra_hosts.iter().map(|h| h.trim().to_ascii_lowercase()));
        let mut hosts = HashSet::new();
        let mut origins = HashSet::new();
        for n in &names {
            let n = n.to_ascii_lowercase();
            if let Some(stripped) = strip_port(&n) {
                // An entry given with its port allows exactly that.
                hosts.insert(n.clone());
                hosts.insert(stripped.to_string());
            } else {
                hosts.insert(n.clone());
                hosts.insert(format!("{n}:{port}"));
            }
            for scheme in ["http", "https"] {
                origins.insert(format!("{scheme}://{n}:{port}"));
            }
        }
        for o in extra_origins {
            origins.insert(o.trim().trim_end_matches('/').to_ascii_lowercase());
        }
        GuardPolicy { hosts, origins }
    }

    /// Is this `Host` header acceptable? A missing Host (HTTP/1.0 tools) is allowed.
    pub fn host_allowed(&self, host: Option<&str>) -> bool {
        match host {
            None => true,
            Some(h) => self.hosts.contains(&h.trim().to_ascii_lowercase()),
        }
    }

    /// Is this `Origin` acceptable for a WebSocket upgrade from `peer`? No Origin (CLI
    /// tools, scripts) is allowed from loopback peers and, with auth on, from anywhere.
    pub fn origin_allowed(
        &self,
        origin: Option<&str>,
        peer: Option<IpAddr>,
        auth_on: bool,
    ) -> bool {
        match origin {
            None => auth_on || peer.is_none_or(|p| p.is_loopback()),
            Some(o) => self
                .origins
                .contains(&o.trim().trim_end_matches('/').to_ascii_lowercase()),
        }
    }
}

/// The most of a client-supplied header that is echoed into a reason, an event or a log.
pub const ECHO_MAX_BYTES: usize = 128;

/// `value` as it may be echoed: control characters escaped, cut at [`ECHO_MAX_BYTES`]
/// (on a character boundary) with the original length said.
pub fn echo(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        if out.len() >= ECHO_MAX_BYTES {
            out.push_str(&format!("… ({} bytes)", value.len()));
            return out;
        }
        out.extend(c.escape_debug());
    }
    out
}

fn bracket_v6(h: &str) -> String {
    match h.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => h.to_ascii_lowercase(),
    }
}

/// `host:port` → `host` (IPv6 literals keep their brackets).
fn strip_port(h: &str) -> Option<&str> {
    if let Some(rest) = h.strip_prefix('[') {
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        return after.strip_prefix(':').map(|_| &h[..end + 2]);
    }
    let (host, port) = h.rsplit_once(':')?;
    port.parse::<u16>().ok().map(|_| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> GuardPolicy {
        GuardPolicy::new(
            "127.0.0.1",
            8765,
            &["coda.lan".into()],
            &["https://dash.example".into()],
        )
    }

    #[test]
    fn hosts() {
        let p = policy();
        for ok in [
            "localhost",
            "localhost:8765",
            "127.0.0.1:8765",
            "[::1]:8765",
            "LOCALHOST:8765",
            "coda.lan:8765",
        ] {
            assert!(p.host_allowed(Some(ok)), "{ok}");
        }
        for bad in [
            "evil.com",
            "evil.com:8765",
            "127.0.0.1.evil.com:8765",
            "localhost:9999",
            "attacker.localhost",
        ] {
            assert!(!p.host_allowed(Some(bad)), "{bad}");
        }
        assert!(p.host_allowed(None));
    }

    #[test]
    fn origins() {
        let p = policy();
        let lo: Option<IpAddr> = Some("127.0.0.1".parse().unwrap());
        let remote: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());
        assert!(p.origin_allowed(Some("http://localhost:8765"), lo, false));
        assert!(p.origin_allowed(Some("http://127.0.0.1:8765/"), lo, false));
        assert!(p.origin_allowed(Some("https://dash.example"), lo, false));
        assert!(!p.origin_allowed(Some("https://evil.example"), lo, false));
        assert!(!p.origin_allowed(Some("null"), lo, false));
        assert!(!p.origin_allowed(Some("http://localhost:9999"), lo, false));
        assert!(p.origin_allowed(None, lo, false));
        assert!(!p.origin_allowed(None, remote, false));
        assert!(p.origin_allowed(None, remote, true));
    }

    #[test]
    fn echoed_values_are_escaped_and_bounded() {
        assert_eq!(echo("localhost:8765"), "localhost:8765");
        assert_eq!(echo("a\r\nb"), "a\\r\\nb");
        let long = "é".repeat(100_000);
        let e = echo(&long);
        assert!(e.len() < ECHO_MAX_BYTES + 32, "{}", e.len());
        assert!(e.ends_with("… (200000 bytes)"), "{e}");
    }

    #[test]
    fn wildcard_bind_allows_loopback_names_only() {
        let p = GuardPolicy::new("0.0.0.0", 8765, &[], &[]);
        assert!(p.host_allowed(Some("localhost:8765")));
        assert!(!p.host_allowed(Some("0.0.0.0:8765")));
        let v6 = GuardPolicy::new("::1", 8765, &[], &[]);
        assert!(v6.host_allowed(Some("[::1]:8765")));
    }
}

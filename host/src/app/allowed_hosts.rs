//! `allowed_outbound_hosts`: which network destinations a component may reach.
//!
//! Spin denies every outbound connection that the component did not declare,
//! so a compromised or buggy guest cannot reach arbitrary hosts. Entries have
//! the form `scheme://host[:port]`, where the scheme, the host (or its leftmost
//! labels, `*.example.com`) and the port may be `*`, and a missing port means
//! the scheme's well-known port. As in Spin, the host may also be an IP
//! network in CIDR notation (`http://10.0.0.0/8`, `http://[fd00::/8]:8080`),
//! which covers requests to IP addresses inside it, and an IPv6 address is
//! written in brackets (`http://[::1]:3000`). `http://self` (or
//! `https://self`, `*://*:*`) lets the component call its own application
//! at `http://self.alt/...`.

use anyhow::{Result, bail};

/// The domain of service chaining: `<component>.spin.internal`.
pub const CHAINING_SUFFIX: &str = ".spin.internal";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    scheme: Pattern,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// `*.example.com`: any name ending in `.example.com`.
    Subdomains(String),
    /// `self` (or `self.alt`): requests back into this application, which
    /// [`AllowedHost::allows_self`] answers for; no named host matches it.
    ToSelf,
    /// An IP network: requests to an address inside it.
    Network(ipnet::IpNet),
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortPattern {
    Any,
    /// No port given: the scheme's default port.
    Default,
    Exact(u16),
    Range(u16, u16),
}

impl AllowedHost {
    pub fn parse(text: &str) -> Result<Self> {
        let Some((scheme, rest)) = text.split_once("://") else {
            bail!(
                "expected `scheme://host[:port]` (for example \"https://example.com\"); the scheme is required"
            );
        };
        if scheme.is_empty() {
            bail!("the scheme is empty");
        }
        // Spin's rules: a scheme is letters, or `*`.
        if scheme != "*" && !scheme.chars().all(char::is_alphabetic) {
            bail!("the scheme {scheme:?} may only be letters, or `*`");
        }
        let (host, port) = split_host_and_port(rest)?;
        if host.is_empty() {
            bail!("the host is empty");
        }
        let host = match host {
            h if h.contains('/') => match h.trim_matches(['[', ']']).parse::<ipnet::IpNet>() {
                Ok(network) => HostPattern::Network(network.trunc()),
                Err(_) => bail!(
                    "a path is not allowed, only `scheme://host[:port]` (or an IP network such as `10.0.0.0/8`)"
                ),
            },
            h if h.starts_with('[') => match h[1..h.len() - 1].parse::<std::net::Ipv6Addr>() {
                Ok(ip) => HostPattern::Exact(format!("[{ip}]")),
                Err(_) => bail!("{h} is not an IPv6 address"),
            },
            "*" => HostPattern::Any,
            "self" | "self.alt" => HostPattern::ToSelf,
            h if h.starts_with("*.") => HostPattern::Subdomains(h[1..].to_ascii_lowercase()),
            h if h.contains('*') => bail!(
                "`*` may only stand for the whole host or its leftmost labels (`*.example.com`)"
            ),
            h => HostPattern::Exact(h.to_ascii_lowercase()),
        };
        let port = match port {
            // As in Spin, `*` and schemes without a well-known port (e.g.
            // `rediss`, whose clients differ) need the port spelled out.
            None if default_port(scheme).is_none() => {
                bail!("no port was given and the scheme {scheme:?} has no default port")
            }
            None => PortPattern::Default,
            Some("*") => PortPattern::Any,
            Some(p) => match p.split_once("..") {
                Some((lo, hi)) => PortPattern::Range(parse_port(lo)?, parse_port(hi)?),
                None => PortPattern::Exact(parse_port(p)?),
            },
        };
        let scheme = match scheme {
            "*" => Pattern::Any,
            s => Pattern::Exact(s.to_ascii_lowercase()),
        };
        Ok(AllowedHost { scheme, host, port })
    }

    /// Whether a request to `scheme://host[:port]` is covered by this entry.
    pub fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let scheme_ok = match &self.scheme {
            Pattern::Any => true,
            Pattern::Exact(s) => s.eq_ignore_ascii_case(scheme),
        };
        let mut host = host.to_ascii_lowercase();
        // An IPv6 address has many spellings; entries hold the shortest.
        if let Some(ip) = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .and_then(|h| h.parse::<std::net::Ipv6Addr>().ok())
        {
            host = format!("[{ip}]");
        }
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Subdomains(suffix) => host.ends_with(suffix.as_str()),
            HostPattern::Exact(h) => *h == host,
            HostPattern::Network(network) => host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| network.contains(&ip)),
            HostPattern::ToSelf => false,
        };
        let port = port.or_else(|| default_port(scheme));
        let port_ok = match (&self.port, port) {
            (PortPattern::Any, _) => true,
            (PortPattern::Default, Some(p)) => Some(p) == default_port(scheme),
            (PortPattern::Exact(want), Some(p)) => *want == p,
            (PortPattern::Range(lo, hi), Some(p)) => (*lo..*hi).contains(&p),
            (_, None) => false,
        };
        scheme_ok && host_ok && port_ok
    }

    /// Whether a request to this application itself (a "self request") is
    /// covered: as in Spin, an entry for `self` or any host, over `http` or
    /// `https`, whatever its port.
    pub fn allows_self(&self) -> bool {
        let scheme_ok = match &self.scheme {
            Pattern::Any => true,
            Pattern::Exact(s) => s == "http" || s == "https",
        };
        scheme_ok && matches!(self.host, HostPattern::Any | HostPattern::ToSelf)
    }
}

/// `host[:port]`, where the host may be `[IPv6]` or an IP network
/// (`10.0.0.0/8`, `[fd00::/8]`); a trailing `/` is ignored.
fn split_host_and_port(rest: &str) -> Result<(&str, Option<&str>)> {
    if rest.starts_with('[') {
        let Some(end) = rest.find(']') else {
            bail!("an IPv6 address must end with `]`");
        };
        let (host, after) = rest.split_at(end + 1);
        let after = after.strip_suffix('/').unwrap_or(after);
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => bail!("expected `:port` after {host}, found {after:?}"),
            },
        };
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    Ok(match rest.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (rest, None),
    })
}

fn parse_port(text: &str) -> Result<u16> {
    text.parse().map_err(|_| {
        anyhow::anyhow!("expected a port number, `*` or a range `lo..hi`, found {text:?}")
    })
}

pub fn default_port(scheme: &str) -> Option<u16> {
    match scheme.to_ascii_lowercase().as_str() {
        "http" => Some(80),
        "https" => Some(443),
        "redis" => Some(6379),
        "mysql" => Some(3306),
        "postgres" => Some(5432),
        "mqtt" => Some(1883),
        _ => None,
    }
}

/// A component's whole allow-list.
#[derive(Debug, Clone, Default)]
pub struct AllowList(Vec<AllowedHost>);

impl AllowList {
    pub fn new(hosts: Vec<AllowedHost>) -> Self {
        AllowList(hosts)
    }

    pub fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        self.0.iter().any(|h| h.allows(scheme, host, port))
    }

    pub fn allows_self(&self) -> bool {
        self.0.iter().any(AllowedHost::allows_self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(entry: &str, scheme: &str, host: &str, port: Option<u16>) -> bool {
        AllowedHost::parse(entry)
            .unwrap()
            .allows(scheme, host, port)
    }

    #[test]
    fn default_port_is_the_schemes() {
        assert!(allows(
            "https://api.example.com",
            "https",
            "api.example.com",
            None
        ));
        assert!(allows(
            "https://api.example.com",
            "https",
            "api.example.com",
            Some(443)
        ));
        assert!(!allows(
            "https://api.example.com",
            "https",
            "api.example.com",
            Some(8443)
        ));
        assert!(!allows(
            "https://api.example.com",
            "http",
            "api.example.com",
            None
        ));
    }

    #[test]
    fn wildcards() {
        assert!(allows(
            "http://*.spin.internal",
            "http",
            "users.spin.internal",
            None
        ));
        assert!(!allows(
            "http://*.spin.internal",
            "http",
            "spin.internal",
            None
        ));
        assert!(allows("*://localhost:*", "redis", "localhost", Some(7000)));
        assert!(allows(
            "http://127.0.0.1:3000..3010",
            "http",
            "127.0.0.1",
            Some(3005)
        ));
        assert!(!allows(
            "http://127.0.0.1:3000..3010",
            "http",
            "127.0.0.1",
            Some(3010)
        ));
    }

    #[test]
    fn ip_addresses_and_networks() {
        assert!(allows("http://[::1]:3000", "http", "[::1]", Some(3000)));
        assert!(allows("http://[::1]", "http", "[::1]", None));
        assert!(allows("http://[0:0::1]", "http", "[::1]", Some(80)));
        assert!(allows("http://[::1]", "http", "[0:0:0:0:0:0:0:1]", None));
        assert!(!allows("http://[::1]:3000", "http", "[::2]", Some(3000)));
        assert!(allows("http://10.0.0.0/8", "http", "10.1.2.3", None));
        assert!(allows(
            "http://10.0.0.0/8:8080",
            "http",
            "10.1.2.3",
            Some(8080)
        ));
        assert!(!allows("http://10.0.0.0/8", "http", "11.1.2.3", None));
        assert!(!allows(
            "http://10.0.0.0/8",
            "http",
            "ten.example.com",
            None
        ));
        assert!(allows(
            "redis://[fd00::/8]:*",
            "redis",
            "[fd12::5]",
            Some(7000)
        ));
        assert!(!allows(
            "redis://[fd00::/8]:*",
            "redis",
            "[fe80::1]",
            Some(7000)
        ));
        assert!(allows(
            "*://192.168.1.7/24:*",
            "https",
            "192.168.1.200",
            Some(9)
        ));
    }

    #[test]
    fn self_requests() {
        let allows_self = |entry: &str| AllowedHost::parse(entry).unwrap().allows_self();
        for entry in ["http://self", "https://self", "http://self.alt", "*://*:*"] {
            assert!(allows_self(entry), "{entry}");
        }
        for entry in [
            "redis://self:6379",
            "http://localhost",
            "http://*.spin.internal",
        ] {
            assert!(!allows_self(entry), "{entry}");
        }
        // `self` names no host a request can name.
        assert!(!allows("http://self", "http", "self", None));
        assert!(!allows("http://self", "http", "self.alt", None));
    }

    #[test]
    fn malformed_entries_are_rejected() {
        for bad in [
            "example.com",
            "http://",
            "http://a/b",
            "http://a:x",
            "http://a*b.com",
            "http://[::1",
            "http://[::1]x",
            "http://[not-ip]",
            "http://10.0.0.0/33",
            "*://example.com",
            "rediss://cache.example.com",
            "h2+c://example.com:80",
        ] {
            assert!(AllowedHost::parse(bad).is_err(), "{bad}");
        }
    }
}

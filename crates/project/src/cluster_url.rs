//! The scheduler's address as users write it: `df://host:port` (Ballista's scheme; port 50050
//! when left out).

use crate::Error;
use std::fmt;

/// Ballista's default scheduler port.
pub const DEFAULT_PORT: u16 = 50050;

/// A Ballista scheduler's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    /// Host name or address.
    pub host: String,
    /// gRPC port.
    pub port: u16,
}

impl ClusterUrl {
    /// The gRPC endpoint (`http://host:port`).
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }
}

impl fmt::Display for ClusterUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "df://{}:{}", self.host, self.port)
    }
}

impl std::str::FromStr for ClusterUrl {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::ClusterUrl { url: s.to_string(), why: why.to_string() };
        let rest = s.trim().strip_prefix("df://").ok_or_else(|| bad("it must start with df://"))?;
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(bad("a scheduler URL has no path"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad("the port must be a number below 65536"))?),
            None => (rest, DEFAULT_PORT),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(ClusterUrl { host: host.to_string(), port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_df_urls() {
        let u: ClusterUrl = "df://localhost:50051".parse().unwrap();
        assert_eq!(u, ClusterUrl { host: "localhost".into(), port: 50051 });
        assert_eq!(u.endpoint(), "http://localhost:50051");
        assert_eq!("df://h".parse::<ClusterUrl>().unwrap().port, DEFAULT_PORT);
        assert!("http://h:1".parse::<ClusterUrl>().unwrap_err().to_string().contains("df://"));
        assert!("df://h:x".parse::<ClusterUrl>().is_err());
        assert!("df://:1".parse::<ClusterUrl>().is_err());
    }
}

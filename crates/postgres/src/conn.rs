//! Connecting: the URL comes from the project (`url`) or from an environment variable
//! (`url_env`, so passwords stay out of `spillway.toml`), is shown only without its password, and
//! failures become messages a user can act on.

use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

/// How long connecting may take before it is reported as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a connection URL comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnSpec {
    /// A URL (`postgresql://user@host:5432/db`) or libpq key=value string.
    pub url: Option<String>,
    /// An environment variable holding one (wins when both are given and it is set).
    pub url_env: Option<String>,
}

impl ConnSpec {
    /// The connection settings; `Err` says what is missing or malformed (never the password).
    pub fn resolve(&self) -> Result<Config, String> {
        let text = match (&self.url_env, &self.url) {
            (Some(var), url) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => v,
                _ => match url {
                    Some(u) => u.clone(),
                    None => {
                        return Err(format!(
                            "environment variable {var} is not set (it should hold a postgresql:// URL)"
                        ))
                    }
                },
            },
            (None, Some(u)) => u.clone(),
            (None, None) => return Err("no connection: set `url` or `url_env`".into()),
        };
        let mut config = Config::from_str(&text).map_err(|e| format!("not a valid PostgreSQL URL: {e}"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("spillway");
        Ok(config)
    }

    /// Where the connection comes from, for display: `$VAR` or the URL without its password.
    pub fn shown(&self) -> String {
        match (&self.url_env, &self.url) {
            (Some(var), _) => format!("${var}"),
            (None, Some(_)) => self.resolve().map(|c| redacted(&c)).unwrap_or_else(|e| e),
            (None, None) => "(no connection)".into(),
        }
    }

    /// Whether the URL comes from an environment variable that is not set (an optional sink is
    /// then skipped).
    pub fn env_unset(&self) -> bool {
        match &self.url_env {
            Some(var) => self.url.is_none() && std::env::var(var).map_or(true, |v| v.trim().is_empty()),
            None => false,
        }
    }
}

/// `user@host:port/db`, without the password.
pub fn redacted(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("(default user)");
    let db = config.get_dbname().unwrap_or(user);
    format!("{user}@{host}:{port}/{db}")
}

/// Connects, running the connection on the current runtime until the client is dropped.
pub async fn connect(config: &Config) -> Result<Client, String> {
    let (client, connection) = config.connect(NoTls).await.map_err(|e| {
        let text = describe(&e);
        if e.as_db_error().is_some() {
            format!("connecting to {} failed: {text}", redacted(config))
        } else {
            format!("cannot reach PostgreSQL at {}: {text}", redacted(config))
        }
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// PostgreSQL's message with its detail, hint and context, or the client's error and its causes.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(d) = db.detail() {
            text.push_str(&format!("; {d}"));
        }
        if let Some(h) = db.hint() {
            text.push_str(&format!("; hint: {h}"));
        }
        if let Some(w) = db.where_() {
            text.push_str(&format!("; at {w}"));
        }
        return text;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(&format!(": {s_text}"));
        }
        source = s.source();
    }
    if e.is_closed() || text.contains("connection closed") {
        text.push_str(" (the connection was lost)");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password_and_reads_env() {
        let spec = ConnSpec { url: Some("postgresql://bob:secret@db.example:6543/sales".into()), url_env: None };
        let shown = redacted(&spec.resolve().unwrap());
        assert_eq!(shown, "bob@db.example:6543/sales");
        assert!(!shown.contains("secret"));
        let missing = ConnSpec { url: None, url_env: Some("SPILLWAY_TEST_SURELY_UNSET".into()) };
        assert!(missing.env_unset());
        assert!(missing.resolve().unwrap_err().contains("SPILLWAY_TEST_SURELY_UNSET is not set"));
        assert!(ConnSpec::default().resolve().unwrap_err().contains("url_env"));
        let bad = ConnSpec { url: Some("postgresql://x:notaport/db".into()), url_env: None };
        assert!(bad.resolve().unwrap_err().contains("not a valid PostgreSQL URL"));
    }
}

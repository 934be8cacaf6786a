//! Where a store lives: an SQLite file or a PostgreSQL database, named the same way by the
//! server's config and the operator commands.

use std::fmt;
use std::path::PathBuf;

use crate::StoreError;

const PASSWORD_IN_URL: &str = "the URL holds a password: give it through an environment variable instead (`[store] password_env`, `--password-env`)";

/// A PostgreSQL connection URL (`postgres://user@host:port/database`) and the password kept
/// apart from it. The URL itself never holds a password, so showing it ([`fmt::Display`],
/// error messages, logs) never shows one; [`fmt::Debug`] hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    url: String,
    password: Option<String>,
}

impl PostgresUrl {
    /// Checks `url` (a `postgres://` or `postgresql://` URL without a password) and keeps
    /// `password` (e.g. read from an environment variable) beside it.
    ///
    /// ```
    /// use router_store::PostgresUrl;
    ///
    /// let url = PostgresUrl::new("postgres://router@127.0.0.1:5432/completions", Some("s3cret".into()))?;
    /// assert_eq!(url.to_string(), "postgres://router@127.0.0.1:5432/completions");
    /// assert!(!format!("{url:?}").contains("s3cret"));
    /// assert!(PostgresUrl::new("postgres://router:s3cret@127.0.0.1/db", None).is_err());
    /// # Ok::<(), router_store::StoreError>(())
    /// ```
    pub fn new(url: &str, password: Option<String>) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::InvalidOption {
            option: "url",
            reason: reason.to_string(),
        };
        let Some(rest) = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
        else {
            return Err(bad("a PostgreSQL URL starts with `postgres://`"));
        };
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if userinfo.contains(':') {
                return Err(bad(PASSWORD_IN_URL));
            }
        }
        let query = rest.split_once('?').map_or("", |(_, q)| q);
        if query
            .split('&')
            .any(|pair| pair.split('=').next() == Some("password"))
        {
            return Err(bad(PASSWORD_IN_URL));
        }
        Ok(PostgresUrl {
            url: url.to_string(),
            password,
        })
    }

    /// The URL (without a password).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The password, when one was given.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresUrl")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// Where a store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An SQLite file (the embedded default).
    Sqlite(PathBuf),
    /// A PostgreSQL database, which several server processes can share (crate feature
    /// `postgres`).
    Postgres(PostgresUrl),
}

impl Location {
    /// A `postgres://` or `postgresql://` URL is a PostgreSQL database (with `password`, if
    /// any); anything else is the path of an SQLite file (and `password` is ignored).
    ///
    /// ```
    /// use router_store::Location;
    ///
    /// assert!(matches!(Location::parse("data/completions.db", None)?, Location::Sqlite(_)));
    /// assert!(matches!(Location::parse("postgres://router@db:5432/router", None)?, Location::Postgres(_)));
    /// # Ok::<(), router_store::StoreError>(())
    /// ```
    pub fn parse(text: &str, password: Option<String>) -> Result<Location, StoreError> {
        if Location::is_url(text) {
            Ok(Location::Postgres(PostgresUrl::new(text, password)?))
        } else {
            Ok(Location::Sqlite(PathBuf::from(text)))
        }
    }

    /// Whether `text` names a PostgreSQL database rather than a file.
    pub fn is_url(text: &str) -> bool {
        text.starts_with("postgres://") || text.starts_with("postgresql://")
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => url.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_urls_and_debug_output() {
        for url in [
            "postgres://u:p@h/db",
            "postgresql://u:p@h:5432/db?sslmode=disable",
            "postgres://u@h/db?password=p",
            "postgres://u@h/db?application_name=x&password=p",
        ] {
            let e = PostgresUrl::new(url, None).unwrap_err().to_string();
            assert!(
                e.contains("password_env") && !e.contains("p@"),
                "{url}: {e}"
            );
        }
        let ok = PostgresUrl::new(
            "postgres://u@h:1/db?sslmode=disable",
            Some("hunter2".into()),
        )
        .unwrap();
        assert_eq!(ok.password(), Some("hunter2"));
        let shown = format!("{ok} {ok:?} {:?}", Location::Postgres(ok.clone()));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(PostgresUrl::new("mysql://u@h/db", None).is_err());
        // An `@` in the path is not a user.
        assert!(PostgresUrl::new("postgres://h/db@x:y", None).is_ok());
    }

    #[test]
    fn paths_and_urls() {
        assert_eq!(
            Location::parse("/var/lib/s.db", Some("ignored".into())).unwrap(),
            Location::Sqlite("/var/lib/s.db".into())
        );
        assert!(Location::is_url("postgresql://h/db"));
        assert!(!Location::is_url("postgres.db"));
    }
}

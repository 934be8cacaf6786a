//! Where a store test runs: an SQLite file in a temporary directory, or a database of its own
//! on the PostgreSQL server of `MODEL_ROUTER_TEST_PG_URL`, created for the test and dropped
//! after it.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use router_store::{Location, OnFull, Store, StoreOptions, Synchronous};
use tempfile::TempDir;

/// The environment variable naming the test server: a `postgres://` URL of a user that may
/// create databases (`.ci/run` exports it).
#[cfg(feature = "postgres")]
pub const PG_URL_VAR: &str = "MODEL_ROUTER_TEST_PG_URL";

/// A test's own store location, removed when dropped.
pub enum Place {
    Sqlite(TempDir),
    #[cfg(feature = "postgres")]
    Postgres(TestDatabase),
}

impl Place {
    pub fn sqlite() -> Place {
        Place::Sqlite(TempDir::new().expect("a temporary directory"))
    }

    /// A fresh database, or `None` (with a message) when no test server is configured outside
    /// CI; under `CI=true` a missing server fails the test.
    #[cfg(feature = "postgres")]
    pub fn postgres() -> Option<Place> {
        match std::env::var(PG_URL_VAR) {
            Ok(url) if !url.is_empty() => Some(Place::Postgres(TestDatabase::create(&url))),
            _ if std::env::var("CI").as_deref() == Ok("true") => panic!(
                "{PG_URL_VAR} is unset under CI=true: the PostgreSQL store tests need a server (.ci/run starts one)"
            ),
            _ => {
                eprintln!("skipped: {PG_URL_VAR} is unset (set it to a postgres:// URL to run the PostgreSQL store tests)");
                None
            }
        }
    }

    pub fn location(&self) -> Location {
        match self {
            Place::Sqlite(dir) => Location::Sqlite(dir.path().join("s.db")),
            #[cfg(feature = "postgres")]
            Place::Postgres(db) => Location::parse(&db.url, None).expect("the test database's URL"),
        }
    }

    pub fn open(&self, max_bytes: u64, on_full: OnFull) -> Store {
        let options = StoreOptions {
            max_bytes,
            on_full,
            synchronous: Synchronous::Normal,
        };
        Store::open_location(&self.location(), options).expect("store opens")
    }

    /// Every metadata value in the database, whoever's record it is (checks that evicted
    /// records took their metadata rows with them).
    pub fn metadata_values(&self) -> Vec<String> {
        let sql = "SELECT value FROM metadata ORDER BY value";
        match self {
            Place::Sqlite(dir) => {
                let db = rusqlite::Connection::open(dir.path().join("s.db")).unwrap();
                let mut stmt = db.prepare(sql).unwrap();
                let rows = stmt.query_map([], |r| r.get(0)).unwrap();
                rows.collect::<Result<_, _>>().unwrap()
            }
            #[cfg(feature = "postgres")]
            Place::Postgres(db) => db
                .client()
                .query(&sql.replace("metadata", "model_router.metadata"), &[])
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect(),
        }
    }

    /// Marks the store's schema as `version`, as a newer build would have left it.
    pub fn set_schema_version(&self, version: i64) {
        match self {
            Place::Sqlite(dir) => {
                let db = rusqlite::Connection::open(dir.path().join("s.db")).unwrap();
                db.pragma_update(None, "user_version", version).unwrap();
            }
            #[cfg(feature = "postgres")]
            Place::Postgres(db) => {
                db.client()
                    .execute(
                        "UPDATE model_router.schema_version SET version = $1",
                        &[&version],
                    )
                    .unwrap();
            }
        }
    }
}

/// A database of its own on the test server, dropped (with its connections) when dropped.
#[cfg(feature = "postgres")]
pub struct TestDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

#[cfg(feature = "postgres")]
impl TestDatabase {
    fn create(admin_url: &str) -> TestDatabase {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "store_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = postgres::Client::connect(admin_url, postgres::NoTls)
            .unwrap_or_else(|e| panic!("{PG_URL_VAR}={admin_url}: cannot connect: {e:?}"));
        // Two statements: a multi-statement batch is one transaction, which these refuse.
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            admin
                .batch_execute(&sql)
                .unwrap_or_else(|e| panic!("creating the test database {name}: {e:?}"));
        }
        TestDatabase {
            url: with_database(admin_url, &name),
            admin_url: admin_url.to_string(),
            name,
        }
    }

    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).expect("connect to the test database")
    }
}

#[cfg(feature = "postgres")]
impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = postgres::Client::connect(&self.admin_url, postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// `url` with its database (the path) replaced by `name`, its query kept.
#[cfg(feature = "postgres")]
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

//! A fresh PostgreSQL schema per test, dropped afterwards.
//!
//! The server comes from `SPES_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); `scripts/postgres.sh`
//! starts a throwaway cluster and prints the variable to export when no
//! server answers there. Each [`TestSchema`] is a schema with a random
//! name; its URL sets `search_path` to it, so parallel tests (and nextest's
//! parallel processes) never see each other's tables.

use std::sync::Arc;

use sqlx::Connection;

use crate::RunStore;
use crate::postgres::{PostgresOptions, PostgresStore};

/// The server tests use.
#[must_use]
pub fn server_url() -> String {
    std::env::var("SPES_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema that exists until this is dropped.
#[derive(Debug)]
pub struct TestSchema {
    server: String,
    name: String,
    url: String,
}

impl TestSchema {
    /// Creates `spes_test_<random>` on [`server_url`]. Panics with what
    /// to do when no server answers.
    pub async fn new() -> Self {
        let server = server_url();
        let name = format!("spes_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(&server).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {} ({e}); these tests need one: run `scripts/postgres.sh` \
                 (it starts a throwaway cluster with the installed initdb/pg_ctl and prints the \
                 SPES_TEST_POSTGRES_URL to export), or set SPES_TEST_POSTGRES_URL",
                crate::postgres::redact(&server)
            )
        });
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE SCHEMA {name}: {e}"));
        conn.close().await.ok();
        let sep = if server.contains('?') { '&' } else { '?' };
        let url = format!("{server}{sep}options[search_path]={name}");
        Self { server, name, url }
    }

    /// A URL whose connections use this schema.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A store on this schema.
    pub async fn store(&self) -> PostgresStore {
        PostgresStore::connect(&self.url, PostgresOptions::default())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url))
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let server = self.server.clone();
        // A test that failed may leave a process holding locks: give up
        // rather than wait forever (the schema then stays behind).
        let sql = format!(
            "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {} CASCADE",
            self.name
        );
        // Drop may run inside a runtime: do the blocking work on a thread of its own.
        let done = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&server).await {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await
                        .ok();
                    conn.close().await.ok();
                }
            });
        });
        done.join().ok();
    }
}

/// A conformance fixture: a store on a fresh schema, and the schema.
pub async fn fixture() -> (Arc<dyn RunStore>, TestSchema) {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    (Arc::new(store) as Arc<dyn RunStore>, schema)
}

//! Spin's `type = "spin"` key-value provider: rows of the `spin_key_value`
//! table in a SQLite file, reads on pooled readers (lookups by key on the
//! async worker, listings on the blocking pool), writes queued on the
//! file's one writer.

use anyhow::Context as _;
use rusqlite::OptionalExtension;
use std::sync::Arc;

use crate::app::runtime_config::Location;
use crate::backends::sqlite_pool::{self, SqliteFile, on_blocking_thread};
use crate::bindings::key_value::Error;

/// Spin's schema, so a store written by `bazaar` can be read by `spin up`
/// and back.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS spin_key_value (
    store TEXT NOT NULL,
    key   TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (store, key)
);";

/// One SQLite file; several labels may share it (rows are keyed by label).
pub struct SqliteKv {
    file: Arc<SqliteFile>,
}

impl SqliteKv {
    pub fn open(location: &Location) -> anyhow::Result<Self> {
        let file =
            SqliteFile::open(location, SCHEMA, None).context("cannot open the key-value table")?;
        Ok(SqliteKv { file })
    }

    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, Error> {
        match self.file.reader().await {
            Ok(Some(reader)) => on_blocking_thread(move || f(&reader)).await.map_err(other),
            Ok(None) => self.write(f).await,
            Err(e) => Err(Error::Other(e)),
        }
    }

    /// A read by primary key, run on the calling (async) thread when it
    /// needs no lock ([`sqlite_pool::read`]): it visits a few B-tree pages, less
    /// work than the two thread hand-offs of the blocking pool.
    async fn lookup<R: Send + 'static>(
        &self,
        f: impl Fn(&rusqlite::Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, Error> {
        match self.file.reader().await {
            Ok(Some(reader)) => sqlite_pool::read(reader, (), None, move |conn, ()| f(conn))
                .await
                .0
                .map_err(other),
            Ok(None) => self.write(f).await,
            Err(e) => Err(Error::Other(e)),
        }
    }

    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, Error> {
        let writer = self.file.writer().await.map_err(Error::Other)?;
        on_blocking_thread(move || f(&writer)).await.map_err(other)
    }

    pub async fn get(&self, label: Arc<str>, key: String) -> Result<Option<Vec<u8>>, Error> {
        self.lookup(move |c| {
            c.prepare_cached("SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2")?
                .query_row((&*label, &key), |row| row.get(0))
                .optional()
        })
        .await
    }

    pub async fn set(&self, label: Arc<str>, key: String, value: Vec<u8>) -> Result<(), Error> {
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
            )?
            .execute((&*label, &key, &value))
            .map(drop)
        })
        .await
    }

    pub async fn delete(&self, label: Arc<str>, key: String) -> Result<(), Error> {
        self.write(move |c| {
            c.prepare_cached("DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2")?
                .execute((&*label, &key))
                .map(drop)
        })
        .await
    }

    pub async fn exists(&self, label: Arc<str>, key: String) -> Result<bool, Error> {
        self.lookup(move |c| {
            c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM spin_key_value WHERE store = ?1 AND key = ?2)",
            )?
            .query_row((&*label, &key), |row| row.get(0))
        })
        .await
    }

    pub async fn keys(&self, label: Arc<str>) -> Result<Vec<String>, Error> {
        self.read(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT key FROM spin_key_value WHERE store = ?1 ORDER BY key")?;
            stmt.query_map([&*label], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })
        .await
    }
}

fn other(e: rusqlite::Error) -> Error {
    Error::Other(e.to_string())
}

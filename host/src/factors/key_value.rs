//! `spin:key-value/key-value@3.0.0`, backed by SQLite files as Spin's
//! `type = "spin"` stores are.
//!
//! A component may open only the labels in its `key_value_stores`. Each label
//! maps to a [`KvBackend`] (one SQLite file, shared by every instance of every
//! component granted it), opened once at start-up so a bad path fails then,
//! not on the first request.

use anyhow::Context as _;
use rusqlite::OptionalExtension;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use wasmtime::component::{Accessor, FutureReader, HasData, Resource, ResourceTable, StreamReader};

use crate::app::runtime_config::Location;
use crate::bindings::key_value::{self, Error};
use crate::sqlite_pool::{SqliteFile, on_blocking_thread};

/// Spin's schema, so a store written by `bazaar` can be read by `spin up`
/// and back.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS spin_key_value (
    store TEXT NOT NULL,
    key   TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (store, key)
);";

/// One SQLite file holding the `spin_key_value` table: reads on pooled
/// readers, writes queued on the file's writer.
pub struct KvBackend {
    file: Arc<SqliteFile>,
}

impl KvBackend {
    pub fn open(location: &Location) -> anyhow::Result<Self> {
        let file =
            SqliteFile::open(location, SCHEMA, None).context("cannot open the key-value table")?;
        Ok(KvBackend { file })
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

    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, Error> {
        let writer = self.file.writer().await.map_err(Error::Other)?;
        on_blocking_thread(move || f(&writer)).await.map_err(other)
    }
}

fn other(e: rusqlite::Error) -> Error {
    Error::Other(e.to_string())
}

/// Where each key-value label lives, for the whole application.
pub struct KvStores {
    /// Backends for the labels some component uses.
    backends: BTreeMap<String, Arc<KvBackend>>,
}

impl KvStores {
    /// Opens a backend for every label; several labels may share one file
    /// (rows are keyed by label).
    pub fn open(locations: BTreeMap<String, Location>) -> anyhow::Result<Self> {
        let mut by_location: BTreeMap<Location, Arc<KvBackend>> = BTreeMap::new();
        let mut backends = BTreeMap::new();
        for (label, location) in locations {
            let backend = match by_location.get(&location) {
                Some(b) => Arc::clone(b),
                None => {
                    let b =
                        Arc::new(KvBackend::open(&location).with_context(|| {
                            format!("key-value store `{label}` ({location:?})")
                        })?);
                    by_location.insert(location, Arc::clone(&b));
                    b
                }
            };
            backends.insert(label, backend);
        }
        Ok(KvStores { backends })
    }
}

/// What one component may open.
pub struct KvGrants {
    pub stores: Arc<KvStores>,
    pub granted: BTreeSet<String>,
}

/// The guest's handle: a label and its backend.
pub struct StoreHandle {
    label: String,
    backend: Arc<KvBackend>,
}

/// `HasData` marker tying the generated traits to [`KvView`].
pub struct KeyValue;

impl HasData for KeyValue {
    type Data<'a> = KvView<'a>;
}

pub struct KvView<'a> {
    pub grants: &'a KvGrants,
    pub table: &'a mut ResourceTable,
}

fn handle_of<T>(
    accessor: &Accessor<T, KeyValue>,
    store: &Resource<StoreHandle>,
) -> wasmtime::Result<(String, Arc<KvBackend>)> {
    accessor.with(|mut access| {
        let handle = access.get().table.get(store)?;
        Ok((handle.label.clone(), Arc::clone(&handle.backend)))
    })
}

impl key_value::Host for KvView<'_> {}

impl key_value::HostStore for KvView<'_> {
    fn drop(&mut self, store: Resource<StoreHandle>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

impl<T> key_value::HostStoreWithStore<T> for KeyValue {
    async fn open(
        accessor: &Accessor<T, Self>,
        label: String,
    ) -> wasmtime::Result<Result<Resource<StoreHandle>, Error>> {
        accessor.with(|mut access| {
            let view = access.get();
            // Spin's order: a label the component does not declare is
            // denied, whether or not the application defines it.
            if !view.grants.granted.contains(&label) {
                return Ok(Err(Error::AccessDenied));
            }
            let Some(backend) = view.grants.stores.backends.get(&label).map(Arc::clone) else {
                return Ok(Err(Error::NoSuchStore));
            };
            let handle = view.table.push(StoreHandle { label, backend })?;
            Ok(Ok(handle))
        })
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        store: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let (label, backend) = handle_of(accessor, &store)?;
        Ok(backend
            .read(move |c| {
                c.prepare_cached("SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2")?
                    .query_row((&label, &key), |row| row.get(0))
                    .optional()
            })
            .await)
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        store: Resource<StoreHandle>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (label, backend) = handle_of(accessor, &store)?;
        Ok(backend
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
                )?
                .execute((&label, &key, &value))
                .map(drop)
            })
            .await)
    }

    async fn delete(
        accessor: &Accessor<T, Self>,
        store: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (label, backend) = handle_of(accessor, &store)?;
        Ok(backend
            .write(move |c| {
                c.prepare_cached("DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2")?
                    .execute((&label, &key))
                    .map(drop)
            })
            .await)
    }

    async fn exists(
        accessor: &Accessor<T, Self>,
        store: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<bool, Error>> {
        let (label, backend) = handle_of(accessor, &store)?;
        Ok(backend
            .read(move |c| {
                c.prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM spin_key_value WHERE store = ?1 AND key = ?2)",
                )?
                .query_row((&label, &key), |row| row.get(0))
            })
            .await)
    }

    async fn get_keys(
        accessor: &Accessor<T, Self>,
        store: Resource<StoreHandle>,
    ) -> wasmtime::Result<(StreamReader<String>, FutureReader<Result<(), Error>>)> {
        let (label, backend) = handle_of(accessor, &store)?;
        let keys = backend
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT key FROM spin_key_value WHERE store = ?1 ORDER BY key",
                )?;
                stmt.query_map([&label], |row| row.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .await;
        let (keys, outcome) = match keys {
            Ok(keys) => (keys, Ok(())),
            Err(e) => (Vec::new(), Err(e)),
        };
        accessor.with(|mut access| {
            let stream = StreamReader::new(&mut access, keys)?;
            let done = FutureReader::new(
                &mut access,
                async move { Ok::<_, wasmtime::Error>(outcome) },
            )?;
            Ok((stream, done))
        })
    }
}

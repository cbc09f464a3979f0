//! `spin:key-value/key-value@3.0.0`, with two of Spin's providers: SQLite
//! files (`type = "spin"`) and Redis (`type = "redis"`).
//!
//! A component may open only the labels in its `key_value_stores`. Each label
//! maps to a [`KvBackend`] shared by every instance of every component granted
//! it, opened (or connected) once at start-up so a bad path or an unreachable
//! server fails then, not on the first request.

mod redis;
mod sqlite;

use anyhow::Context as _;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::{Accessor, FutureReader, HasData, Resource, ResourceTable, StreamReader};

use crate::app::runtime_config::KvLocation;
use crate::bindings::key_value::{self, Error};
use crate::factors::outbound_redis::redact;
use crate::telemetry::metrics;
use redis::RedisKv;
use sqlite::SqliteKv;

/// One provider, in Spin's terms: where a label's keys live.
pub enum KvBackend {
    Sqlite(SqliteKv),
    Redis(RedisKv),
}

impl KvBackend {
    async fn open(location: &KvLocation) -> anyhow::Result<Self> {
        Ok(match location {
            KvLocation::Sqlite(location) => KvBackend::Sqlite(SqliteKv::open(location)?),
            KvLocation::Redis(url) => KvBackend::Redis(RedisKv::connect(url).await?),
        })
    }

    async fn get(&self, label: String, key: String) -> Result<Option<Vec<u8>>, Error> {
        match self {
            KvBackend::Sqlite(s) => s.get(label, key).await,
            KvBackend::Redis(r) => r.get(key).await,
        }
    }

    async fn set(&self, label: String, key: String, value: Vec<u8>) -> Result<(), Error> {
        match self {
            KvBackend::Sqlite(s) => s.set(label, key, value).await,
            KvBackend::Redis(r) => r.set(key, value).await,
        }
    }

    async fn delete(&self, label: String, key: String) -> Result<(), Error> {
        match self {
            KvBackend::Sqlite(s) => s.delete(label, key).await,
            KvBackend::Redis(r) => r.delete(key).await,
        }
    }

    async fn exists(&self, label: String, key: String) -> Result<bool, Error> {
        match self {
            KvBackend::Sqlite(s) => s.exists(label, key).await,
            KvBackend::Redis(r) => r.exists(key).await,
        }
    }

    async fn keys(&self, label: String) -> Result<Vec<String>, Error> {
        match self {
            KvBackend::Sqlite(s) => s.keys(label).await,
            KvBackend::Redis(r) => r.keys().await,
        }
    }
}

/// Where each key-value label lives, for the whole application.
pub struct KvStores {
    /// Backends for the labels some component uses.
    backends: BTreeMap<String, Arc<KvBackend>>,
}

impl KvStores {
    /// Opens (or connects) a backend for every label; labels with the same
    /// location share one.
    pub async fn open(locations: BTreeMap<String, KvLocation>) -> anyhow::Result<Self> {
        let mut by_location: BTreeMap<KvLocation, Arc<KvBackend>> = BTreeMap::new();
        let mut backends = BTreeMap::new();
        for (label, location) in locations {
            let backend = match by_location.get(&location) {
                Some(b) => Arc::clone(b),
                None => {
                    let shown = match &location {
                        KvLocation::Sqlite(l) => format!("{l:?}"),
                        KvLocation::Redis(url) => redact(url),
                    };
                    let b = Arc::new(
                        KvBackend::open(&location)
                            .await
                            .with_context(|| format!("key-value store `{label}` ({shown})"))?,
                    );
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
        let started = Instant::now();
        let result = backend.get(label.clone(), key).await;
        metrics::store_operation(
            "key_value",
            &label,
            "get",
            result.is_ok(),
            started.elapsed(),
        );
        Ok(result)
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        store: Resource<StoreHandle>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (label, backend) = handle_of(accessor, &store)?;
        let started = Instant::now();
        let result = backend.set(label.clone(), key, value).await;
        metrics::store_operation(
            "key_value",
            &label,
            "set",
            result.is_ok(),
            started.elapsed(),
        );
        Ok(result)
    }

    async fn delete(
        accessor: &Accessor<T, Self>,
        store: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (label, backend) = handle_of(accessor, &store)?;
        let started = Instant::now();
        let result = backend.delete(label.clone(), key).await;
        metrics::store_operation(
            "key_value",
            &label,
            "delete",
            result.is_ok(),
            started.elapsed(),
        );
        Ok(result)
    }

    async fn exists(
        accessor: &Accessor<T, Self>,
        store: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<bool, Error>> {
        let (label, backend) = handle_of(accessor, &store)?;
        let started = Instant::now();
        let result = backend.exists(label.clone(), key).await;
        metrics::store_operation(
            "key_value",
            &label,
            "exists",
            result.is_ok(),
            started.elapsed(),
        );
        Ok(result)
    }

    async fn get_keys(
        accessor: &Accessor<T, Self>,
        store: Resource<StoreHandle>,
    ) -> wasmtime::Result<(StreamReader<String>, FutureReader<Result<(), Error>>)> {
        let (label, backend) = handle_of(accessor, &store)?;
        let started = Instant::now();
        let keys = backend.keys(label.clone()).await;
        metrics::store_operation(
            "key_value",
            &label,
            "get_keys",
            keys.is_ok(),
            started.elapsed(),
        );
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

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
use crate::redis_url::redact;
use crate::telemetry::metrics;
use crate::telemetry::traces::{self, Span};
use opentelemetry::trace::SpanKind;
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

    async fn get(&self, label: Arc<str>, key: String) -> Result<Option<Vec<u8>>, Error> {
        match self {
            KvBackend::Sqlite(s) => s.get(label, key).await,
            KvBackend::Redis(r) => r.get(key).await,
        }
    }

    async fn set(&self, label: Arc<str>, key: String, value: Vec<u8>) -> Result<(), Error> {
        match self {
            KvBackend::Sqlite(s) => s.set(label, key, value).await,
            KvBackend::Redis(r) => r.set(key, value).await,
        }
    }

    async fn delete(&self, label: Arc<str>, key: String) -> Result<(), Error> {
        match self {
            KvBackend::Sqlite(s) => s.delete(label, key).await,
            KvBackend::Redis(r) => r.delete(key).await,
        }
    }

    async fn exists(&self, label: Arc<str>, key: String) -> Result<bool, Error> {
        match self {
            KvBackend::Sqlite(s) => s.exists(label, key).await,
            KvBackend::Redis(r) => r.exists(key).await,
        }
    }

    async fn keys(&self, label: Arc<str>) -> Result<Vec<String>, Error> {
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
    label: Arc<str>,
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
    pub trace: Option<&'a opentelemetry::Context>,
    /// Stores the instance holds open ([`crate::factors::OpenHandles`]).
    pub open: &'a mut usize,
}

/// Runs one operation on the backend of `store`, counted (and timed) as
/// `operation` on its label, in a span named as Spin names it
/// (`spin_key_value.<operation>`) when traced.
async fn operate<T, R, F>(
    accessor: &Accessor<T, KeyValue>,
    store: &Resource<StoreHandle>,
    operation: &'static str,
    work: impl FnOnce(Arc<str>, Arc<KvBackend>) -> F,
) -> wasmtime::Result<Result<R, Error>>
where
    F: Future<Output = Result<R, Error>>,
{
    let (label, backend, trace) = accessor.with(|mut access| {
        let view = access.get();
        let handle = view.table.get(store)?;
        Ok::<_, wasmtime::Error>((
            Arc::clone(&handle.label),
            Arc::clone(&handle.backend),
            view.trace.cloned(),
        ))
    })?;
    let span = Span::child(trace.as_ref(), SpanKind::Client, || {
        (
            format!("spin_key_value.{operation}"),
            vec![opentelemetry::KeyValue::new(
                "spin.key_value.store",
                Arc::clone(&label),
            )],
        )
    });
    let started = Instant::now();
    let result = work(Arc::clone(&label), backend).await;
    traces::finish(span, &result);
    metrics::store_operation(
        "key_value",
        &label,
        operation,
        result.is_ok(),
        started.elapsed(),
    );
    Ok(result)
}

impl key_value::Host for KvView<'_> {}

impl key_value::HostStore for KvView<'_> {
    fn drop(&mut self, store: Resource<StoreHandle>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        *self.open = self.open.saturating_sub(1);
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
            if *view.open >= crate::factors::MAX_OPEN_HANDLES {
                return Ok(Err(Error::StoreTableFull));
            }
            let handle = view.table.push(StoreHandle {
                label: label.into(),
                backend,
            })?;
            *view.open += 1;
            Ok(Ok(handle))
        })
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        store: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        operate(accessor, &store, "get", |label, backend| async move {
            backend.get(label, key).await
        })
        .await
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        store: Resource<StoreHandle>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        operate(accessor, &store, "set", |label, backend| async move {
            backend.set(label, key, value).await
        })
        .await
    }

    async fn delete(
        accessor: &Accessor<T, Self>,
        store: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        operate(accessor, &store, "delete", |label, backend| async move {
            backend.delete(label, key).await
        })
        .await
    }

    async fn exists(
        accessor: &Accessor<T, Self>,
        store: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<bool, Error>> {
        operate(accessor, &store, "exists", |label, backend| async move {
            backend.exists(label, key).await
        })
        .await
    }

    async fn get_keys(
        accessor: &Accessor<T, Self>,
        store: Resource<StoreHandle>,
    ) -> wasmtime::Result<(StreamReader<String>, FutureReader<Result<(), Error>>)> {
        let keys = operate(accessor, &store, "get_keys", |label, backend| async move {
            backend.keys(label).await
        })
        .await?;
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

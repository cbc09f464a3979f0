//! Spin's Redis trigger: for every message on a subscribed channel, each
//! component subscribed to it runs `spin:redis/inbound-redis#handle-message`.
//!
//! Instances are reused as HTTP instances are, within the same limits: an
//! instance handles one message at a time, serves at most
//! `--max-instance-reuse-count` messages, and is dropped after
//! `--idle-instance-timeout` unused or as soon as it traps or overruns its
//! deadline. A message's cost is then the call, not an instantiation.
//!
//! There is one subscription per (server, channel), however many components
//! share it. A subscription outlives its server: when the connection drops it
//! is re-established with capped exponential backoff and the channel
//! resubscribed, and every state change is logged. Redis pub/sub keeps no
//! messages for absent subscribers, so what is published while the
//! connection is down is lost; that is pub/sub's contract, and the saga's
//! outbox and redrive exist because of it.

use anyhow::{Context as _, Result};
use futures::StreamExt;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use wasmtime::Store;

use crate::bindings::redis_trigger::{self as bindings, RedisTriggerPre};
use crate::component::ComponentRuntime;
use crate::factors::InstanceState;
use crate::factors::outbound_redis::RedisClients;
use crate::redis_broker::is_embedded;
use crate::redis_url::{is_redis_url, redact};
use crate::telemetry::metrics::{self, InstanceEnd, MessageOutcome};
use crate::telemetry::traces::{self, Span};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A component run by the Redis trigger, with its idle instances.
pub struct RedisHandler {
    pub runtime: Arc<ComponentRuntime>,
    pub pre: RedisTriggerPre<InstanceState>,
    idle: Mutex<Vec<Warm>>,
    /// Envelope ids recently handed to the component, to count
    /// redeliveries (only while metrics are on).
    recent: Mutex<RecentIds>,
}

/// The last [`RECENT_IDS`] message ids a component was given.
#[derive(Default)]
struct RecentIds {
    order: VecDeque<String>,
    known: HashSet<String>,
}

const RECENT_IDS: usize = 4096;

impl RecentIds {
    /// Remembers `id`; false if it was already known.
    fn first_time(&mut self, id: &str) -> bool {
        if self.known.contains(id) {
            return false;
        }
        if self.order.len() == RECENT_IDS
            && let Some(oldest) = self.order.pop_front()
        {
            self.known.remove(&oldest);
        }
        self.order.push_back(id.to_string());
        self.known.insert(id.to_string());
        true
    }
}

/// An instance between messages.
struct Warm {
    store: Store<InstanceState>,
    guest: Arc<bindings::RedisTrigger>,
    served: usize,
    idle_since: Instant,
}

impl RedisHandler {
    pub fn new(runtime: Arc<ComponentRuntime>, pre: RedisTriggerPre<InstanceState>) -> Self {
        RedisHandler {
            runtime,
            pre,
            idle: Mutex::new(Vec::new()),
            recent: Mutex::default(),
        }
    }

    /// Runs the guest on one message, in a warm instance if one is idle,
    /// within the request deadline. `Ok(Err(_))` is the guest's own error.
    async fn handle(
        &self,
        payload: Vec<u8>,
        trace: Option<opentelemetry::Context>,
    ) -> Result<Result<(), String>> {
        let runtime = &self.runtime;
        let limits = &runtime.limits;
        let mut warm = match self.take_idle() {
            Some(warm) => {
                metrics::instance_reused(&runtime.id, "redis");
                warm
            }
            None => {
                let mut store = runtime.new_store(self.pre.engine(), false);
                let guest = Arc::new(self.pre.instantiate_async(&mut store).await?);
                metrics::instance_created(&runtime.id, "redis");
                Warm {
                    store,
                    guest,
                    served: 0,
                    idle_since: Instant::now(),
                }
            }
        };
        warm.store.data_mut().enter(trace);
        let serving = warm.store.data().deadlines.start(0, limits.request_timeout);
        let guest = Arc::clone(&warm.guest);
        let call = warm.store.run_concurrent(async move |accessor| {
            guest
                .spin_redis_inbound_redis()
                .call_handle_message(accessor, payload)
                .await
        });
        let outcome = match tokio::time::timeout(limits.request_timeout, call).await {
            Err(_) => {
                metrics::instance_ended(&runtime.id, "redis", InstanceEnd::Deadline);
                anyhow::bail!("deadline of {:?} exceeded", limits.request_timeout)
            }
            Ok(Err(trap)) | Ok(Ok(Err(trap))) => {
                metrics::instance_ended(&runtime.id, "redis", InstanceEnd::Trap);
                return Err(anyhow::Error::from(trap));
            }
            Ok(Ok(Ok(outcome))) => outcome.map_err(|e| format!("{e:?}")),
        };
        drop(serving);
        warm.served += 1;
        if warm.served < limits.max_requests_per_instance {
            warm.idle_since = Instant::now();
            self.lock_idle().push(warm);
        } else {
            metrics::instance_ended(&runtime.id, "redis", InstanceEnd::Retired);
        }
        Ok(outcome)
    }

    /// The most recently used idle instance still within its idle timeout;
    /// older ones are dropped.
    fn take_idle(&self) -> Option<Warm> {
        let mut idle = self.lock_idle();
        self.retire_expired(&mut idle);
        idle.pop()
    }

    /// Drops the idle instances past the idle timeout, so their memory goes
    /// back when the messages stop, not when the next one arrives.
    fn retire_idle(&self) {
        self.retire_expired(&mut self.lock_idle());
    }

    fn retire_expired(&self, idle: &mut Vec<Warm>) {
        let timeout = self.runtime.limits.idle_instance_timeout;
        idle.retain(|warm| {
            let keep = warm.idle_since.elapsed() < timeout;
            if !keep {
                metrics::instance_ended(&self.runtime.id, "redis", InstanceEnd::Retired);
            }
            keep
        });
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Warm>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One (server, channel) subscription and the components it feeds.
pub struct Subscription {
    pub address: String,
    pub channel: Arc<str>,
    pub handlers: Vec<Arc<RedisHandler>>,
}

/// Groups triggers into subscriptions: one per distinct (address, channel).
pub fn subscriptions(triggers: Vec<(String, String, Arc<RedisHandler>)>) -> Vec<Subscription> {
    let mut grouped: BTreeMap<(String, String), Vec<Arc<RedisHandler>>> = BTreeMap::new();
    for (address, channel, handler) in triggers {
        grouped.entry((address, channel)).or_default().push(handler);
    }
    grouped
        .into_iter()
        .map(|((address, channel), handlers)| Subscription {
            address,
            channel: channel.into(),
            handlers,
        })
        .collect()
}

/// The running trigger: subscriber tasks, and a limit on concurrent handlers.
pub struct RedisTrigger {
    subscribers: JoinSet<()>,
    handlers_in_flight: Arc<Semaphore>,
    max_concurrent: u32,
}

impl RedisTrigger {
    pub fn start(
        subscriptions: Vec<Subscription>,
        clients: Arc<RedisClients>,
        max_concurrent: usize,
    ) -> Self {
        let max_concurrent = u32::try_from(max_concurrent.max(1)).unwrap_or(u32::MAX);
        let limit = Arc::new(Semaphore::new(max_concurrent as usize));
        let mut subscribers = JoinSet::new();
        let handlers: Vec<Arc<RedisHandler>> = subscriptions
            .iter()
            .flat_map(|s| s.handlers.iter().cloned())
            .collect();
        subscribers.spawn(retire_idle_instances(handlers));
        for subscription in subscriptions {
            subscribers.spawn(subscribe_forever(
                subscription,
                Arc::clone(&clients),
                Arc::clone(&limit),
            ));
        }
        RedisTrigger {
            subscribers,
            handlers_in_flight: limit,
            max_concurrent,
        }
    }

    /// Stops receiving and waits for the handlers already running.
    pub async fn shutdown(mut self) {
        self.subscribers.shutdown().await;
        let _ = self
            .handlers_in_flight
            .acquire_many(self.max_concurrent)
            .await;
    }
}

/// Retires idle instances past their timeout every so often (at most a
/// second late), whether messages come or not.
async fn retire_idle_instances(handlers: Vec<Arc<RedisHandler>>) {
    let Some(first) = handlers.first() else {
        return;
    };
    let period = first
        .runtime
        .limits
        .idle_instance_timeout
        .clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for handler in &handlers {
            handler.retire_idle();
        }
    }
}

/// Where messages come from: a server connection or the embedded broker.
enum Feed {
    Server(redis::aio::PubSubStream),
    Embedded(tokio::sync::broadcast::Receiver<Vec<u8>>),
}

impl Feed {
    async fn open(clients: &RedisClients, address: &str, channel: &str) -> Result<Feed> {
        if is_embedded(address) {
            return Ok(Feed::Embedded(clients.embedded().subscribe(channel)));
        }
        let client = redis::Client::open(address)?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(Feed::Server(pubsub.into_on_message()))
    }

    /// The next message, or `None` once the connection is gone.
    async fn next(&mut self, channel: &str) -> Option<Vec<u8>> {
        match self {
            Feed::Server(stream) => stream
                .next()
                .await
                .map(|msg| msg.get_payload_bytes().to_vec()),
            Feed::Embedded(receiver) => loop {
                match receiver.recv().await {
                    Ok(payload) => return Some(payload),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(
                            channel,
                            missed,
                            "subscriber fell behind the embedded broker; messages dropped"
                        );
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            },
        }
    }
}

/// How many messages a subscription holds, received and not yet handed to
/// its components (as many as the embedded broker keeps per subscriber).
/// Past it the oldest are dropped, and the count is logged: Redis itself
/// would cut a subscriber that far behind (`client-output-buffer-limit
/// pubsub`), losing everything after; this keeps the newest instead.
const BACKLOG_LIMIT: usize = crate::redis_broker::SUBSCRIBER_BUFFER;

/// Messages received on a subscription and not yet handed to its
/// components, with how many were dropped since the last one was taken.
struct Backlog {
    channel: Arc<str>,
    queue: Mutex<(VecDeque<Vec<u8>>, u64)>,
    ready: tokio::sync::Notify,
}

impl Backlog {
    fn new(channel: Arc<str>) -> Self {
        Backlog {
            channel,
            queue: Mutex::default(),
            ready: tokio::sync::Notify::new(),
        }
    }

    fn push(&self, payload: Vec<u8>) {
        let mut guard = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let (queue, dropped) = &mut *guard;
        if queue.len() == BACKLOG_LIMIT {
            queue.pop_front();
            *dropped += 1;
            metrics::redis_dropped(&self.channel);
        }
        queue.push_back(payload);
        metrics::redis_backlog(&self.channel, queue.len());
        drop(guard);
        self.ready.notify_one();
    }

    /// The oldest message, and how many older ones were dropped.
    async fn pop(&self) -> (Vec<u8>, u64) {
        loop {
            {
                let mut guard = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                let (queue, dropped) = &mut *guard;
                if let Some(payload) = queue.pop_front() {
                    metrics::redis_backlog(&self.channel, queue.len());
                    return (payload, std::mem::take(dropped));
                }
            }
            self.ready.notified().await;
        }
    }
}

/// Reads the subscription's feed into its backlog and hands the backlog to
/// the components, at once: the reader sees a dropped connection as soon as
/// it drops and resubscribes while the handlers still work through what
/// came before. (Reading only as fast as the handlers go, a subscriber with
/// a backlog noticed a Redis restart only after working through it, and
/// everything published to the new server until then was lost.)
async fn subscribe_forever(sub: Subscription, clients: Arc<RedisClients>, limit: Arc<Semaphore>) {
    let backlog = Backlog::new(Arc::clone(&sub.channel));
    let handle = async {
        loop {
            let (payload, dropped) = backlog.pop().await;
            if dropped > 0 {
                tracing::warn!(
                    server = %redact(&sub.address),
                    channel = &*sub.channel,
                    missed = dropped,
                    "subscriber fell behind; its oldest messages were dropped"
                );
            }
            dispatch(&sub, payload, &limit).await;
        }
    };
    futures::join!(read_forever(&sub, &clients, &backlog), handle);
}

/// Keeps the subscription's feed open, its messages going to `backlog`.
async fn read_forever(sub: &Subscription, clients: &RedisClients, backlog: &Backlog) {
    let server = redact(&sub.address);
    let channel = &*sub.channel;
    let mut backoff = BACKOFF_START;
    let mut connected_before = false;
    loop {
        match Feed::open(clients, &sub.address, channel).await {
            Ok(mut feed) => {
                let verb = if connected_before {
                    "resubscribed"
                } else {
                    "subscribed"
                };
                tracing::info!(%server, channel, "{verb}");
                connected_before = true;
                backoff = BACKOFF_START;
                while let Some(payload) = feed.next(channel).await {
                    backlog.push(payload);
                }
                tracing::warn!(%server, channel, "disconnected from Redis; reconnecting");
            }
            Err(error) => {
                tracing::warn!(%server, channel, retry_in = ?backoff, "cannot subscribe: {error:#}");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Hands one message to every subscribed component, each in its own task,
/// waiting only for a free handler slot.
async fn dispatch(sub: &Subscription, payload: Vec<u8>, limit: &Arc<Semaphore>) {
    let envelope = Envelope::of(&payload);
    let message_id = envelope.id();
    for handler in &sub.handlers {
        let Ok(permit) = Arc::clone(limit).acquire_owned().await else {
            return;
        };
        let handler = Arc::clone(handler);
        let payload = payload.clone();
        let channel = sub.channel.clone();
        let message_id = message_id.clone();
        let span = receive_span(&channel, &handler.runtime.id, &envelope);
        tokio::spawn(async move {
            let component = handler.runtime.id.clone();
            if metrics::enabled()
                && let Some(id) = &message_id
                && !handler
                    .recent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .first_time(id)
            {
                metrics::redis_redelivery(&component, &channel);
            }
            let started = Instant::now();
            let trace = span.as_ref().map(Span::reference);
            let trace_id = trace.as_ref().map(traces::trace_id);
            let trace_id = trace_id.as_deref();
            let result = handler.handle(payload, trace).await;
            if let Some(span) = span {
                match &result {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => span.fail(error),
                    Err(error) => span.fail(format!("{error:#}")),
                }
                span.end();
            }
            let outcome = match result {
                Ok(Ok(())) => {
                    tracing::debug!(%component, %channel, ?message_id, trace_id, "message handled");
                    MessageOutcome::Handled
                }
                Ok(Err(error)) => {
                    tracing::error!(%component, %channel, ?message_id, trace_id, "handler returned an error: {error}");
                    MessageOutcome::Failed
                }
                Err(error) => {
                    tracing::error!(%component, %channel, ?message_id, trace_id, "handler failed: {error:#}");
                    MessageOutcome::Failed
                }
            };
            metrics::redis_message(&component, &channel, outcome, started.elapsed());
            drop(permit);
        });
    }
}

/// What the host reads of a JSON message envelope (docs/messages.md): its
/// `id`, for logs and redelivery counts, and its `traceparent`, the parent
/// of the handler's span. Anything else, or no JSON at all, is the guest's
/// business.
#[derive(Default, serde::Deserialize)]
struct Envelope {
    id: Option<serde_json::Value>,
    /// Any JSON value, so that an odd one costs the trace, not the id.
    traceparent: Option<serde_json::Value>,
}

impl Envelope {
    fn of(payload: &[u8]) -> Envelope {
        serde_json::from_slice(payload).unwrap_or_default()
    }

    fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_ref()?.as_str()
    }

    fn id(&self) -> Option<String> {
        match self.id.as_ref()? {
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }
}

/// Spin's consumer span for a message a component handles.
fn receive_span(channel: &str, component: &Arc<str>, envelope: &Envelope) -> Option<Span> {
    if !traces::enabled() {
        return None;
    }
    let parent = traces::parent_from(envelope.traceparent());
    let mut attributes = vec![
        KeyValue::new("messaging.system", "redis"),
        KeyValue::new("messaging.operation", "receive"),
        KeyValue::new("messaging.destination.name", channel.to_string()),
        KeyValue::new("spin.component_id", Arc::clone(component)),
    ];
    if let Some(id) = envelope.id() {
        attributes.push(KeyValue::new("messaging.message.id", id));
    }
    Span::start(
        format!("{channel} receive"),
        SpanKind::Consumer,
        Some(&parent),
        attributes,
    )
}

/// Resolves the manifest's `[[trigger.redis]]` entries to addresses and
/// channels.
pub fn resolve_targets(
    manifest: &crate::app::manifest::Manifest,
    variables: &crate::app::variables::AppVariables,
) -> Result<Vec<(String, String, String)>> {
    let default = manifest
        .application
        .trigger
        .redis
        .as_ref()
        .map(|r| &r.address);
    manifest
        .redis_triggers
        .iter()
        .enumerate()
        .map(|(index, trigger)| {
            let context = || format!("{}: trigger.redis[{index}]", manifest.path.display());
            let address = trigger.address.as_ref().or(default).context("no address")?;
            let render = |text: &str| -> Result<String> {
                variables.render(&crate::app::template::Template::parse(text)?)
            };
            let address = render(address).with_context(context)?;
            if !is_redis_url(&address) {
                return Err(anyhow::anyhow!(
                    "address {} is not a redis:// or rediss:// URL with a host",
                    redact(&address)
                ))
                .with_context(context);
            }
            let channel = render(&trigger.channel).with_context(context)?;
            Ok((address, channel, trigger.component.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redeliveries_are_told_from_first_deliveries_within_a_bounded_memory() {
        let mut recent = RecentIds::default();
        assert!(recent.first_time("a"));
        assert!(!recent.first_time("a"));
        for i in 0..RECENT_IDS {
            assert!(recent.first_time(&i.to_string()));
        }
        assert_eq!(recent.known.len(), RECENT_IDS);
        assert!(recent.first_time("a"), "forgotten once out of the window");
    }

    #[test]
    fn ids_and_trace_context_come_from_a_json_envelope() {
        let envelope = Envelope::of(br#"{"id":"m-1","x":{"y":[1]},"traceparent":"00-ab-cd-01"}"#);
        assert_eq!(envelope.id().as_deref(), Some("m-1"));
        assert_eq!(envelope.traceparent(), Some("00-ab-cd-01"));
        assert_eq!(Envelope::of(br#"{"id":7}"#).id().as_deref(), Some("7"));
        let binary = Envelope::of(b"\x00binary");
        assert_eq!((binary.id(), binary.traceparent()), (None, None));
        // A traceparent of the wrong type is no traceparent, not a lost id.
        let odd = Envelope::of(br#"{"id":"m-2","traceparent":5}"#);
        assert_eq!(
            (odd.id().as_deref(), odd.traceparent()),
            (Some("m-2"), None)
        );
    }
}

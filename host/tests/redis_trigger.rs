//! The Redis trigger and outbound Redis, against a real `redis-server`
//! started for each test and against the embedded broker: fan-out, chains,
//! failure isolation, reconnection, and the outbound allow-list.

mod common;

use common::{AppDir, Host, RedisServer, send};
use std::time::{Duration, Instant};

/// `probe` (and `other-probe`, at `/other`) serve HTTP and talk to Redis;
/// `left` and `right` share a
/// channel; `hop-a` → `hop-b` → `hop-c` forward along a chain; `flaky`
/// fails on payloads containing `fail`.
const APP: &str = r#"
spin_manifest_version = 2
[application]
name = "redis-app"
[application.trigger.redis]
address = "{{ redis_url }}"

[variables]
redis_url = { required = true }

[[trigger.http]]
route = "/..."
component = "probe"
[[trigger.redis]]
channel = "fanout"
component = "left"
[[trigger.redis]]
channel = "fanout"
component = "right"
[[trigger.redis]]
channel = "hop-a"
component = "hop-a"
[[trigger.redis]]
channel = "hop-b"
component = "hop-b"
[[trigger.redis]]
channel = "hop-c"
component = "hop-c"
[[trigger.redis]]
channel = "flaky"
component = "flaky"

[component.probe]
source = "{probe}"
allowed_outbound_hosts = ["{{ redis_url }}"]
variables = { redis_url = "{{ redis_url }}" }

[[trigger.http]]
route = "/other/..."
component = "other-probe"
[component.other-probe]
source = "{probe}"
allowed_outbound_hosts = ["{{ redis_url }}"]
variables = { redis_url = "{{ redis_url }}" }
"#;

fn relay(name: &str, next: &str) -> String {
    format!(
        r#"
[component.{name}]
source = "{{relay}}"
allowed_outbound_hosts = ["{{{{ redis_url }}}}"]
variables = {{ name = "{name}", next_channel = "{next}", redis_url = "{{{{ redis_url }}}}" }}
"#
    )
}

fn app() -> AppDir {
    let mut manifest = APP.to_string();
    for (name, next) in [
        ("left", ""),
        ("right", ""),
        ("hop-a", "hop-b"),
        ("hop-b", "hop-c"),
        ("hop-c", ""),
        ("flaky", ""),
    ] {
        manifest.push_str(&relay(name, next));
    }
    AppDir::new(&manifest)
}

/// Starts the app on `redis` (a URL or `embedded`) once every channel is
/// subscribed.
fn start(app: &AppDir, redis: &str) -> Host {
    let host = app.start(&["--redis", redis]);
    host.wait_for_stderr("subscribed", 5, Duration::from_secs(30));
    host
}

async fn publish(host: &Host, channel: &str, payload: Vec<u8>) {
    let request = reqwest::Client::new()
        .post(host.url(&format!("/redis/publish/{channel}")))
        .body(payload);
    let (status, body) = send(request).await;
    assert_eq!(status, 200, "{body}");
}

/// Starts the app as [`start`] does, handling one message at a time (Spin's
/// trigger), so that a burst leaves a backlog.
fn start_one_at_a_time(app: &AppDir, redis: &str) -> Host {
    let host = app.start(&["--redis", redis, "--redis-max-concurrent-handlers", "1"]);
    host.wait_for_stderr("subscribed", 5, Duration::from_secs(30));
    host
}

/// Has the probe publish `m1` … `m<n>` to `channel`, as fast as it can.
async fn publish_many(host: &Host, channel: &str, n: u64) {
    let request =
        reqwest::Client::new().post(host.url(&format!("/redis/publish-many/{channel}/{n}")));
    let (status, body) = send(request).await;
    assert_eq!(status, 200, "{body}");
}

async fn value(host: &Host, key: &str) -> Option<Vec<u8>> {
    let (status, body) = host.get(&format!("/redis/get/{key}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body["value"].clone()).unwrap()
}

async fn count(host: &Host, name: &str) -> u64 {
    value(host, &format!("count:{name}"))
        .await
        .map(|v| String::from_utf8(v).unwrap().parse().unwrap())
        .unwrap_or(0)
}

/// Polls until `key` holds `expected`.
async fn eventually(host: &Host, key: &str, expected: &[u8]) {
    eventually_within(host, key, expected, Duration::from_secs(20)).await;
}

async fn eventually_within(host: &Host, key: &str, expected: &[u8], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let found = value(host, key).await;
        if found.as_deref() == Some(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key} is {found:?}, expected {expected:?}\n{}",
            host.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `rediss://`: the trigger subscribes and guests publish over TLS,
/// verifying the server against the trusted roots (here the test's CA, given
/// as `SSL_CERT_FILE`).
#[tokio::test]
async fn rediss_addresses_speak_tls() {
    let server = RedisServer::start_tls();
    let app = app();
    let mut cmd = app.command(&["--redis", &server.url()]);
    cmd.env("SSL_CERT_FILE", server.ca_file());
    let host = app.start_with(cmd);
    host.wait_for_stderr("subscribed", 5, Duration::from_secs(30));
    publish(&host, "fanout", b"over tls".to_vec()).await;
    eventually(&host, "last:left", b"over tls").await;
    eventually(&host, "last:right", b"over tls").await;

    // Without the CA among the trusted roots, the certificate is refused.
    let untrusting = app.start_with(app.command(&["--redis", &server.url()]));
    untrusting.wait_for_stderr("cannot subscribe", 1, Duration::from_secs(30));
    // The host logs JSON lines when its stderr is not a terminal.
    assert!(
        !untrusting.stderr().contains("\"subscribed\""),
        "{}",
        untrusting.stderr()
    );
}

async fn every_subscriber_gets_each_message_once(redis: &str) {
    let app = app();
    // One message at a time, in the order published: once the last one is
    // handled, every earlier handler has finished, so a duplicate would
    // already be counted.
    let host = app.start(&["--redis", redis, "--redis-max-concurrent-handlers", "1"]);
    host.wait_for_stderr("subscribed", 5, Duration::from_secs(30));
    for i in 0..5 {
        publish(&host, "fanout", format!("m{i}").into_bytes()).await;
    }
    publish(&host, "fanout", b"last".to_vec()).await;
    eventually(&host, "last:left", b"last").await;
    eventually(&host, "last:right", b"last").await;
    assert_eq!(
        (count(&host, "left").await, count(&host, "right").await),
        (6, 6),
        "each component saw each message exactly once"
    );
}

async fn a_chain_carries_binary_payloads(redis: &str) {
    let app = app();
    let host = start(&app, redis);
    let payload: Vec<u8> = (0..=255u8).rev().chain([0, 0, b'\n', b'\r']).collect();
    publish(&host, "hop-a", payload.clone()).await;
    eventually(&host, "last:hop-c", &payload).await;
    for hop in ["hop-a", "hop-b", "hop-c"] {
        assert_eq!(count(&host, hop).await, 1, "{hop}");
    }
}

async fn a_failing_handler_does_not_stop_later_messages(redis: &str) {
    let app = app();
    let host = start(&app, redis);
    publish(&host, "flaky", br#"{"id":"m-7","fail":true}"#.to_vec()).await;
    // The failure is over before the next message is sent, so that one is
    // handled after it, not beside it.
    let err = host.wait_for_stderr("handler returned an error", 1, Duration::from_secs(5));
    let line = err
        .lines()
        .find(|l| l.contains("handler returned an error"))
        .unwrap();
    assert!(
        line.contains("flaky") && line.contains("m-7") && line.contains("relay asked to fail"),
        "{line}"
    );
    publish(&host, "flaky", b"after".to_vec()).await;
    eventually(&host, "last:flaky", b"after").await;
}

async fn outbound_redis_needs_an_allowed_address(redis: &str) {
    let app = app();
    let host = start(&app, redis);
    let (status, body) = host.get("/redis/open?address=redis://127.0.0.1:1").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "Error::InvalidAddress");
    let (status, body) = host.get("/redis/open").await;
    assert_eq!(status, 200, "the configured address is allowed: {body}");
}

/// Runs `commands` on one outbound connection of the probe at `prefix`.
async fn execute(
    host: &Host,
    prefix: &str,
    commands: serde_json::Value,
) -> (u16, serde_json::Value) {
    send(
        reqwest::Client::new()
            .post(host.url(&format!("{prefix}/redis/execute")))
            .json(&commands),
    )
    .await
}

/// #9 item 4: a guest's connection is its own, as in Spin. What it does to
/// its connection (`SELECT` another database) reaches neither another
/// component nor the next `open` of its own component, and commands that
/// would take the connection over (`SUBSCRIBE`, `MONITOR`, ...) are refused.
#[tokio::test]
async fn outbound_connections_are_not_shared_between_guests() {
    let server = RedisServer::start();
    let app = app();
    let host = start(&app, &server.url());
    let (status, body) = execute(
        &host,
        "",
        serde_json::json!([
            ["SELECT", "1"],
            ["SET", "isolated", "db1"],
            ["GET", "isolated"]
        ]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["results"][2], "[RedisResult::Binary([100, 98, 49])]",
        "{body}"
    );
    for prefix in ["/other", ""] {
        let (status, body) = execute(&host, prefix, serde_json::json!([["GET", "isolated"]])).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["results"][0], "[RedisResult::Nil]",
            "{prefix}: database 0 again: {body}"
        );
    }
    let (status, body) = execute(&host, "", serde_json::json!([["SUBSCRIBE", "x"]])).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("SUBSCRIBE is not available"),
        "{body}"
    );
    // A blocking command waits as long as it asks (no client-side reply
    // timeout), and its connection is not handed to the next guest while
    // the server may still be busy with it.
    let (status, body) = execute(&host, "", serde_json::json!([["BLPOP", "nothing", "1"]])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0], "[RedisResult::Nil]", "{body}");
    let (status, body) = execute(&host, "", serde_json::json!([["PING"]])).await;
    assert_eq!(
        (status, &body["results"][0]),
        (200, &serde_json::json!("[RedisResult::Status(\"PONG\")]")),
        "{body}"
    );
}

/// As in Spin, a command the server refuses (a set operation on a string)
/// is `other`, with the server's words.
async fn refused_commands_are_other_errors(redis: &str) {
    let app = app();
    let host = start(&app, redis);
    let (status, body) = execute(
        &host,
        "",
        serde_json::json!([["SET", "plain", "v"], ["SADD", "plain", "m"]]),
    )
    .await;
    assert_eq!(status, 500, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("Error::Other(\"") && error.contains("WRONGTYPE"),
        "{body}"
    );
}

#[tokio::test]
async fn server_refused_commands() {
    let server = RedisServer::start();
    refused_commands_are_other_errors(&server.url()).await;
}

#[tokio::test]
async fn embedded_refused_commands() {
    refused_commands_are_other_errors("embedded").await;
}

#[tokio::test]
async fn server_fan_out() {
    let server = RedisServer::start();
    every_subscriber_gets_each_message_once(&server.url()).await;
}

#[tokio::test]
async fn embedded_fan_out() {
    every_subscriber_gets_each_message_once("embedded").await;
}

#[tokio::test]
async fn server_chain() {
    let server = RedisServer::start();
    a_chain_carries_binary_payloads(&server.url()).await;
}

#[tokio::test]
async fn embedded_chain() {
    a_chain_carries_binary_payloads("embedded").await;
}

#[tokio::test]
async fn server_failure_isolation() {
    let server = RedisServer::start();
    a_failing_handler_does_not_stop_later_messages(&server.url()).await;
}

#[tokio::test]
async fn embedded_failure_isolation() {
    a_failing_handler_does_not_stop_later_messages("embedded").await;
}

#[tokio::test]
async fn server_outbound_allow_list() {
    let server = RedisServer::start();
    outbound_redis_needs_an_allowed_address(&server.url()).await;
}

#[tokio::test]
async fn embedded_outbound_allow_list() {
    outbound_redis_needs_an_allowed_address("embedded").await;
}

#[tokio::test]
async fn the_trigger_resubscribes_after_a_server_restart() {
    let mut server = RedisServer::start();
    let app = app();
    let mut host = start(&app, &server.url());
    publish(&host, "fanout", b"before".to_vec()).await;
    eventually(&host, "last:left", b"before").await;

    server.restart();
    // The restarted server has no data; the host noticed and resubscribed.
    host.wait_for_stderr("disconnected from Redis", 5, Duration::from_secs(20));
    host.wait_for_stderr("resubscribed", 5, Duration::from_secs(30));
    publish(&host, "fanout", b"after".to_vec()).await;
    eventually(&host, "last:left", b"after").await;
    eventually(&host, "last:right", b"after").await;
    assert!(host.is_running(), "the host kept running");
}

/// A subscriber still working through a backlog when its server restarts
/// resubscribes at once, and its handlers go on with what came before: what
/// is published to the new server meanwhile is not lost. (Noticing the
/// restart only after the backlog, it would miss everything published to
/// the new server until then; the saga recovers such losses only by
/// redrive, slowly.)
#[tokio::test]
async fn a_subscriber_with_a_backlog_resubscribes_before_working_through_it() {
    const MESSAGES: u64 = 3_000;
    let mut server = RedisServer::start();
    let app = app();
    let host = start_one_at_a_time(&app, &server.url());
    publish_many(&host, "fanout", MESSAGES).await;
    // One at a time, two subscribers: thousands of handler runs still ahead.
    server.restart();
    host.wait_for_stderr("resubscribed", 5, Duration::from_secs(60));
    publish(&host, "fanout", b"after".to_vec()).await;
    let within = Duration::from_secs(120);
    eventually_within(&host, "last:left", b"after", within).await;
    eventually_within(&host, "last:right", b"after", within).await;

    let log = host.stderr();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &serde_json::Value| l["channel"] == "fanout")
        .collect();
    let resubscribed = lines
        .iter()
        .position(|l| l["message"] == "resubscribed")
        .expect("the fanout subscription resubscribed");
    let handled_after = lines[resubscribed..]
        .iter()
        .filter(|l| {
            l["message"].as_str().is_some_and(|m| {
                m.starts_with("message handled") || m.starts_with("handler returned an error")
            })
        })
        .count();
    // `after` itself accounts for two.
    assert!(
        handled_after > 2,
        "the subscriber resubscribed only once its backlog was worked through:\n{log}"
    );
}

/// Sends `messages` to `flaky` one after another, each handled before the
/// next is sent, and returns what the last handler's instance had served.
async fn served_after(host: &Host, messages: u64) -> Vec<u8> {
    for i in 1..=messages {
        publish(host, "flaky", format!("m{i}").into_bytes()).await;
        eventually(host, "count:flaky", i.to_string().as_bytes()).await;
    }
    value(host, "served:flaky").await.unwrap()
}

/// As in Spin, chaining and self requests belong to the HTTP trigger: a
/// Redis-triggered instance allowed both still cannot make them, and the
/// log says why.
#[tokio::test]
async fn a_redis_triggered_instance_cannot_chain_or_call_the_application() {
    let mut manifest = APP.to_string();
    manifest.push_str(
        r#"
[[trigger.redis]]
channel = "asker"
component = "asker"
[component.asker]
source = "{relay}"
allowed_outbound_hosts = ["{{ redis_url }}", "http://probe.spin.internal", "http://self"]
variables = { name = "asker", next_channel = "", redis_url = "{{ redis_url }}" }
"#,
    );
    for (name, next) in [
        ("left", ""),
        ("right", ""),
        ("hop-a", "hop-b"),
        ("hop-b", "hop-c"),
        ("hop-c", ""),
        ("flaky", ""),
    ] {
        manifest.push_str(&relay(name, next));
    }
    let app = AppDir::new(&manifest);
    let host = app.start(&["--redis", "embedded"]);
    host.wait_for_stderr("subscribed", 6, Duration::from_secs(30));
    for url in [
        "http://probe.spin.internal/headers",
        "http://self.alt/headers",
    ] {
        publish(&host, "asker", format!("fetch {url}").into_bytes()).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let fetched = loop {
            let fetched = value(&host, "fetched:asker").await.unwrap_or_default();
            let fetched = String::from_utf8(fetched).unwrap();
            if fetched.starts_with(url) || Instant::now() > deadline {
                break fetched;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            fetched,
            format!("{url} error ErrorCode::HttpRequestUriInvalid"),
            "{url}"
        );
    }
    host.wait_for_stderr(
        "only a component serving HTTP requests can reach the application itself",
        2,
        Duration::from_secs(10),
    );
    // The HTTP-triggered probe, allowed nothing of the kind, is denied
    // rather than refused: the allow-list is checked first.
    host.assert_fetch_denied("", "http://self.alt/headers")
        .await;
}

#[tokio::test]
async fn redis_instances_are_reused_within_the_limits() {
    let app = app();
    // A long idle timeout, so that a slow machine cannot retire the
    // instance between two messages.
    let host = app.start(&["--redis", "embedded", "--idle-instance-timeout", "60s"]);
    host.wait_for_stderr("subscribed", 5, Duration::from_secs(30));
    assert_eq!(
        served_after(&host, 4).await,
        b"4",
        "one instance served all four"
    );
    drop(host);

    let host = app.start(&[
        "--redis",
        "embedded",
        "--idle-instance-timeout",
        "60s",
        "--max-instance-reuse-count",
        "3",
    ]);
    host.wait_for_stderr("subscribed", 5, Duration::from_secs(30));
    assert_eq!(
        served_after(&host, 4).await,
        b"1",
        "the fourth message needed a new instance"
    );
}

/// A subscriber holds at most 4,096 messages it has not handled yet (and
/// the embedded broker keeps as many for it): one that falls further behind
/// loses the oldest, the host says how many, and the subscription goes on.
/// Every message is then either handled once or counted as lost.
#[tokio::test]
async fn a_subscriber_that_falls_behind_the_embedded_broker_loses_only_what_it_is_told() {
    const MESSAGES: u64 = 20_000;
    let app = app();
    let mut host = start_one_at_a_time(&app, "embedded");
    publish_many(&host, "fanout", MESSAGES).await;
    // Published after the burst: reaching it means the subscriber is past
    // every message before it (up to 4,096 kept ones, for two subscribers,
    // one at a time, in a debug build of the host: hence the long bound).
    publish(&host, "fanout", b"after".to_vec()).await;
    let within = Duration::from_secs(120);
    eventually_within(&host, "last:left", b"after", within).await;
    eventually_within(&host, "last:right", b"after", within).await;
    // `left` and `right` share the subscription to `fanout`, and so what it
    // missed.
    let log = host.stderr();
    let missed: u64 = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("subscriber fell behind"))
                && l["channel"] == "fanout"
        })
        .map(|l| l["missed"].as_u64().expect("the count of missed messages"))
        .sum();
    assert!(missed > 0, "the subscriber never fell behind:\n{log}");
    for subscriber in ["left", "right"] {
        assert_eq!(
            count(&host, subscriber).await + missed,
            MESSAGES + 1,
            "{subscriber}: handled and missed messages do not add up"
        );
    }
    assert!(host.is_running());
}

/// An idle instance is retired once its idle timeout passes, whether or
/// not another message comes (its memory goes back then).
#[tokio::test]
async fn idle_redis_instances_are_retired_without_a_next_message() {
    let app = app();
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let host = app.start(&[
        "--redis",
        "embedded",
        "--idle-instance-timeout",
        "300ms",
        "--metrics-listen",
        &metrics,
    ]);
    host.wait_for_stderr("subscribed", 5, Duration::from_secs(30));
    publish(&host, "flaky", b"one".to_vec()).await;
    eventually(&host, "count:flaky", b"1").await;
    let retired = |text: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("bazaar_instances_ended_total{")
                    && l.contains("component=\"flaky\"")
                    && l.contains("trigger=\"redis\"")
                    && l.contains("reason=\"retired\"")
            })
            .filter_map(|l| l.rsplit(" ").next()?.parse::<f64>().ok())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = reqwest::get(format!("http://{metrics}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if retired(&text) >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle instance was never retired:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn without_redis_configuration_the_embedded_broker_is_used() {
    let app = app();
    let host = app.start(&[]);
    host.wait_for_stderr("subscribed", 5, Duration::from_secs(30));
    assert!(
        host.stderr().contains("Using the embedded Redis broker"),
        "{}",
        host.stderr()
    );
    let banner = host.wait_for_stdout("Redis subscriptions:");
    assert!(
        banner.contains("redis://embedded.bazaar.invalid fanout: left, right"),
        "{banner}"
    );
}

#[test]
fn a_redis_component_must_export_the_handler() {
    let app = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "wrong-export"
[[trigger.redis]]
address = "redis://embedded.bazaar.invalid"
channel = "orders"
component = "web"
[component.web]
source = "{probe}"
"#,
    );
    let stderr = app.fail(&[]);
    assert!(
        stderr.contains("does not export `spin:redis/inbound-redis@3.0.0`"),
        "{stderr}"
    );
}

//! `bazaar up --metrics-listen`: a real Prometheus server scrapes the
//! host while an order goes through the saga, and its query API returns
//! the series docs/operations.md promises.

use crate::common::free_port;
use crate::harness::{App, order_body};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A Prometheus server (Debian's `prometheus`, which tests/run installs)
/// scraping every second: the host's `--metrics-listen` address (job
/// `bazaar`) and the gateway's `GET /metrics` (job `app`).
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(host_target: &str, app_target: &str, app_token: &str) -> Prometheus {
        let binary = std::env::var_os("BAZAAR_TEST_PROMETHEUS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"));
        assert!(
            binary.exists(),
            "{} is missing: run tests/run once (it installs Debian's prometheus), or set BAZAAR_TEST_PROMETHEUS",
            binary.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: bazaar\n    static_configs:\n      - targets: ['{host_target}']\n  - job_name: app\n    authorization:\n      credentials: '{app_token}'\n    static_configs:\n      - targets: ['{app_target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// Runs an instant PromQL query; the result vector (empty until a
    /// scrape has stored the series).
    async fn query(&self, promql: &str) -> Vec<Value> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let Ok(response) = reqwest::Client::new()
            .get(url)
            .query(&[("query", promql)])
            .send()
            .await
        else {
            return Vec::new();
        };
        let body: Value = response.json().await.unwrap_or_default();
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `promql` returns a sample whose value satisfies `ok`.
    async fn wait_for(&self, promql: &str, ok: impl Fn(f64) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let result = self.query(promql).await;
            if result.iter().any(|sample| ok(value_of(sample))) {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never returned a matching sample for {promql}: {result:?}\n{}",
                std::fs::read_to_string(self._dir.path().join("prometheus.log"))
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn value_of(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test]
async fn prometheus_scrapes_requests_instances_messages_and_store_operations() {
    let listen = format!("127.0.0.1:{}", free_port());
    let app = App::start_with_args(
        &[("SPIN_VARIABLE_METRICS_TOKEN", "scrape-secret")],
        &["--metrics-listen", &listen],
    );
    let admin = app.admin().await;
    let lamp = app.product(&admin, "LAMP", 1500, 5).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let alice = app.user("alice@metrics.test").await;
    let body = order_body(&lamp, 1, "tok_ok");
    let order = app.post("/api/v1/orders", Some(&alice), body).await;
    assert_eq!(order.status, 202, "{}", order.body);
    let id = order.body["id"].as_str().unwrap();
    crate::saga::wait_for(&app, &alice, id, "confirmed").await;
    app.get("/api/v1/nothing-here", None)
        .await
        .assert_problem(404);

    let app_target = app.host.base.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(&listen, &app_target, "scrape-secret");
    prometheus
        .wait_for("up{job=\"bazaar\"}", |v| v == 1.0)
        .await;
    prometheus.wait_for("up{job=\"app\"}", |v| v == 1.0).await;
    // Requests by component, route and status class, with durations.
    prometheus
        .wait_for(
            "bazaar_http_requests_total{component=\"gateway\",route=\"/...\",status_class=\"2xx\"}",
            |v| v >= 5.0,
        )
        .await;
    prometheus
        .wait_for(
            "bazaar_http_requests_total{component=\"gateway\",status_class=\"4xx\"}",
            |v| v >= 1.0,
        )
        .await;
    prometheus
        .wait_for(
            "bazaar_http_requests_total{component=\"orders\",route=\"private\",status_class=\"2xx\"}",
            |v| v >= 1.0,
        )
        .await;
    prometheus
        .wait_for(
            "histogram_quantile(0.99, sum by (le) (bazaar_http_request_duration_seconds_bucket{component=\"gateway\"}))",
            |v| v > 0.0 && v.is_finite(),
        )
        .await;
    // Instances, Redis messages per channel and component, stores, outbound.
    prometheus
        .wait_for(
            "bazaar_instances_created_total{component=\"gateway\",trigger=\"http\"}",
            |v| v >= 1.0,
        )
        .await;
    prometheus
        .wait_for(
            "bazaar_instances_reused_total{component=\"gateway\"}",
            |v| v >= 1.0,
        )
        .await;
    for component in ["order-saga", "inventory-step", "payments-step"] {
        prometheus
            .wait_for(
                &format!(
                    "bazaar_redis_messages_total{{component=\"{component}\",outcome=\"handled\"}}"
                ),
                |v| v >= 1.0,
            )
            .await;
    }
    // Every reply was handed on: the saga's backlog is back to none.
    prometheus
        .wait_for(
            "bazaar_redis_backlog_messages{channel=\"bazaar.saga.replies\"}",
            |v| v == 0.0,
        )
        .await;
    prometheus
        .wait_for(
            "bazaar_store_operations_total{kind=\"sqlite\",label=\"orders\",op=\"execute\",outcome=\"ok\"}",
            |v| v >= 1.0,
        )
        .await;
    prometheus
        .wait_for(
            "bazaar_store_operations_total{kind=\"key_value\",label=\"default\",op=\"get\"}",
            |v| v >= 1.0,
        )
        .await;
    prometheus
        .wait_for(
            "bazaar_outbound_http_requests_total{component=\"gateway\",destination=\"http://orders.spin.internal\",status_class=\"2xx\"}",
            |v| v >= 1.0,
        )
        .await;
    // The application's own series, from the gateway.
    for service in ["orders", "products", "payments"] {
        prometheus
            .wait_for(
                &format!("bazaar_app_metrics_up{{service=\"{service}\"}}"),
                |v| v == 1.0,
            )
            .await;
        prometheus
            .wait_for(
                &format!("bazaar_outbox_unpublished{{service=\"{service}\"}}"),
                |v| v == 0.0,
            )
            .await;
    }
    for service in ["users", "products", "orders", "payments"] {
        prometheus
            .wait_for(
                &format!("bazaar_circuit_state{{service=\"{service}\"}}"),
                |v| v == 0.0,
            )
            .await;
    }
    for settled in [
        "bazaar_sagas_open",
        "bazaar_sagas_overdue",
        "bazaar_sagas_parked",
    ] {
        prometheus.wait_for(settled, |v| v == 0.0).await;
    }
}

#[tokio::test]
async fn the_application_metrics_route_is_off_without_a_token_and_guarded_with_one() {
    let app = App::start();
    app.get("/metrics", None).await.assert_problem(404);

    let app = App::start_with(&[("SPIN_VARIABLE_METRICS_TOKEN", "scrape-secret")]);
    app.get("/metrics", None).await.assert_problem(401);
    app.get("/metrics", Some("wrong")).await.assert_problem(401);
    let reply = app.get("/metrics", Some("scrape-secret")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = reply.body.as_str().unwrap();
    assert!(
        text.contains("bazaar_circuit_state{service=\"payments\"} 0"),
        "{text}"
    );
    assert!(text.contains("bazaar_sagas_parked 0"), "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
}

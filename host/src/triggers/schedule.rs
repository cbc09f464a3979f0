//! Periodic calls into components, for work Spin has no trigger for:
//! Bazaar's saga redrive. Each schedule POSTs to a component's route
//! in-process, exactly as a service-chained request would, so the same
//! route also serves a Kubernetes CronJob or an operator on real Spin.

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Empty};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

use crate::triggers::http::HttpApp;

/// `http://<component>.spin.internal/<path>@<interval>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub component: String,
    pub path: String,
    pub every: Duration,
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule> {
        let (url, every) = text.rsplit_once('@').with_context(|| {
            format!(
                "schedule {text:?}: expected `http://<component>.spin.internal/<path>@<interval>`"
            )
        })?;
        let every = humantime::parse_duration(every)
            .with_context(|| format!("schedule {text:?}: interval"))?;
        let url = url::Url::parse(url).with_context(|| format!("schedule {text:?}: URL"))?;
        let Some(component) = url
            .host_str()
            .and_then(|h| h.strip_suffix(".spin.internal"))
        else {
            bail!(
                "schedule {text:?}: the URL must name a component as `http://<component>.spin.internal/...`"
            );
        };
        if every.is_zero() {
            bail!("schedule {text:?}: the interval must be more than zero");
        }
        Ok(Schedule {
            component: component.to_string(),
            path: url.path().to_string(),
            every,
        })
    }
}

/// Runs every schedule until the returned set is dropped.
pub fn start(app: &Arc<HttpApp>, schedules: Vec<Schedule>) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for schedule in schedules {
        let app = Arc::downgrade(app);
        tasks.spawn(async move {
            let mut ticks = tokio::time::interval(schedule.every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(app) = app.upgrade() else { return };
                call(&app, &schedule).await;
            }
        });
    }
    tasks
}

async fn call(app: &HttpApp, schedule: &Schedule) {
    let uri = format!(
        "http://{}.spin.internal{}",
        schedule.component, schedule.path
    );
    let request =
        http::Request::post(&uri).body(Empty::new().map_err(|e| match e {}).boxed_unsync());
    let Ok(request) = request else {
        tracing::error!(%uri, "scheduled request could not be built");
        return;
    };
    match app.chain(&schedule.component, request).await {
        Ok(response) if response.status().is_success() => {
            tracing::debug!(%uri, "scheduled call done")
        }
        Ok(response) => {
            tracing::warn!(%uri, status = response.status().as_u16(), "scheduled call failed")
        }
        Err(error) => tracing::warn!(%uri, "scheduled call failed: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_component_path_and_interval() {
        let s = Schedule::parse("http://orders.spin.internal/internal/saga/redrive@2s").unwrap();
        assert_eq!(
            s,
            Schedule {
                component: "orders".into(),
                path: "/internal/saga/redrive".into(),
                every: Duration::from_secs(2)
            }
        );
        for bad in [
            "http://orders/x@2s",
            "http://orders.spin.internal/x",
            "http://orders.spin.internal/x@0s",
            "nonsense@1s",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }
}

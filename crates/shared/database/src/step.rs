//! Running a saga step (inventory, payments): one command in, its effect
//! and its reply committed together, the reply published.

use bazaar_api::Problem;
use bazaar_envelope::Envelope;

use crate::Database;
use crate::messaging::OutboxMessage;
use bazaar_service::{now_rfc3339, random_fraction, seconds_ago_rfc3339, setting};

/// How long published messages and consumed message ids are kept.
pub const MESSAGE_RETENTION_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

/// One message in this many also prunes a batch of old rows: steps have no
/// schedule of their own, and pruning every time would cost every message.
const PRUNE_ONE_IN: f64 = 256.0;

/// A saga step: how it applies one command to its service's store.
#[allow(async_fn_in_trait)] // guests are single-threaded: no Send bound wanted
pub trait Step {
    fn db(&self) -> &Database;

    /// Applies `command` inside the open transaction; the reply's type and
    /// data.
    async fn apply(
        &self,
        command: &Envelope,
        now: &str,
    ) -> Result<(&'static str, serde_json::Value), String>;
}

/// Runs one command through a step: the effect, its reply and the consumed
/// message id commit in one transaction (a duplicate changes nothing), then
/// the reply is published, and anything an earlier handler left unpublished
/// is swept.
pub async fn run_step(step: &impl Step, message: &[u8]) -> Result<(), String> {
    let detail = |p: Problem| p.detail;
    let command = Envelope::from_bytes(message)?;
    crate::inject_fault(crate::Fault::BeforeWork)
        .await
        .map_err(detail)?;
    let now = now_rfc3339();
    let db = step.db();
    let reply = db
        .transaction(async || {
            if !db.consume(&command.id, &now).await? {
                return Ok(None);
            }
            let (kind, data) = step
                .apply(&command, &now)
                .await
                .map_err(Problem::internal)?;
            let reply = OutboxMessage {
                channel: bazaar_envelope::saga::SAGA_REPLIES.to_string(),
                envelope: command.follow_up(
                    uuid::Uuid::now_v7().to_string(),
                    kind,
                    now.clone(),
                    data,
                ),
            };
            db.enqueue_all(std::slice::from_ref(&reply)).await?;
            Ok::<_, Problem>(Some(reply))
        })
        .await
        .map_err(detail)?;
    log_handled(&command, reply.as_ref().map(|r| r.envelope.kind.as_str()));
    let address = setting("redis_url").await.map_err(detail)?;
    if let Some(reply) = reply {
        db.publish(&address, &[reply], &now).await.map_err(detail)?;
    }
    db.relay_due(&address, &now).await.map_err(detail)?;
    if random_fraction() * PRUNE_ONE_IN < 1.0 {
        db.prune(&seconds_ago_rfc3339(MESSAGE_RETENTION_SECONDS))
            .await
            .map_err(detail)?;
    }
    Ok(())
}

/// One JSON log line for a handled saga command (`reply` is `None` for a
/// duplicate that was dropped).
fn log_handled(command: &Envelope, reply: Option<&str>) {
    let line = serde_json::json!({
        "level": "info",
        "msg": if reply.is_some() { "command handled" } else { "duplicate dropped" },
        "message_id": command.id,
        "type": command.kind,
        "order_id": command.order_id,
        "reply": reply,
        "traceparent": command.traceparent,
    });
    println!("{line}");
}

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
///
/// The sweep runs on every way out, a failure included: a reply committed
/// by an earlier message whose publish failed must not wait for the next
/// message that succeeds (or for redrive's backoff, minutes at worst). Only
/// rows whose writer's lease has run out are swept, so a reply another
/// handler is publishing now is not sent twice for nothing.
pub async fn run_step(step: &impl Step, message: &[u8]) -> Result<(), String> {
    let handled = handle(step, message).await;
    let swept = sweep(step.db()).await;
    handled.and(swept).map_err(|p| p.detail)
}

async fn handle(step: &impl Step, message: &[u8]) -> Result<(), Problem> {
    let command = Envelope::from_bytes(message).map_err(Problem::bad_request)?;
    crate::inject_fault(crate::Fault::BeforeWork).await?;
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
        .await?;
    log_handled(&command, reply.as_ref().map(|r| r.envelope.kind.as_str()));
    if let Some(reply) = reply {
        db.publish(&setting("redis_url").await?, &[reply], &now)
            .await?;
    }
    Ok(())
}

/// Publishes what writers of `db` left unpublished past their lease, and
/// now and then prunes old rows.
async fn sweep(db: &Database) -> Result<(), Problem> {
    let now = now_rfc3339();
    db.relay_due(&setting("redis_url").await?, &now).await?;
    if random_fraction() * PRUNE_ONE_IN < 1.0 {
        db.prune(&seconds_ago_rfc3339(MESSAGE_RETENTION_SECONDS))
            .await?;
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

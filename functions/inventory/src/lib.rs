//! The order saga's inventory step, in the products service's store: on
//! `inventory.reserve`, reserve every line of an order or none; on
//! `inventory.release`, give a reservation's stock back. The change, the
//! reply and the consumed message id commit together; the reply is then
//! published (transactional outbox).

use bazaar_envelope::{Envelope, saga};
use bazaar_product_store::Store;
use bazaar_service::{now_rfc3339, setting};
use spin_sdk::redis_subscriber;

#[redis_subscriber]
async fn on_command(message: Vec<u8>) -> Result<(), String> {
    let command = Envelope::from_bytes(&message)?;
    bazaar_service::injected_fault()
        .await
        .map_err(|p| p.detail)?;
    let store = Store::open().await.map_err(|p| p.detail)?;
    let now = now_rfc3339();
    store.db().begin().await.map_err(|p| p.detail)?;
    let outcome = handle(&store, &command, &now).await;
    store
        .db()
        .end(outcome.is_ok())
        .await
        .map_err(|p| p.detail)?;
    let reply = outcome?;
    bazaar_service::log_handled(&command, reply);
    let address = setting("redis_url").await.map_err(|p| p.detail)?;
    store
        .db()
        .relay_outbox(&address, &now)
        .await
        .map_err(|p| p.detail)?;
    Ok(())
}

/// Applies the command and queues the reply; `None` for a duplicate.
async fn handle(
    store: &Store,
    command: &Envelope,
    now: &str,
) -> Result<Option<&'static str>, String> {
    if !store
        .db()
        .consume(&command.id, now)
        .await
        .map_err(|p| p.detail)?
    {
        return Ok(None);
    }
    let reply = match command.kind.as_str() {
        saga::RESERVE_STOCK => {
            let reserve: saga::ReserveStock = serde_json::from_value(command.data.clone())
                .map_err(|e| format!("{}: {e}", command.kind))?;
            store.reserve(&command.order_id, &reserve.items, now).await
        }
        saga::RELEASE_STOCK => store.release(&command.order_id, now).await,
        other => return Err(format!("the inventory step does not handle {other}")),
    }
    .map_err(|p| p.detail)?;
    let message = command.follow_up(
        uuid::Uuid::now_v7().to_string(),
        reply,
        now.to_string(),
        serde_json::json!({}),
    );
    store.reply(&message).await.map_err(|p| p.detail)?;
    Ok(Some(reply))
}

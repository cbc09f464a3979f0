//! The orders projection: on every order event published on
//! `bazaar.orders.events`, rebuild that order's view from the event store
//! (the source of truth, in the orders service's SQLite database) and store
//! it in the read model if it is newer than what is there.
//!
//! Rebuilding from the stream instead of applying the one event makes the
//! projection indifferent to duplicates, to order of arrival and to gaps: a
//! replayed or late event finds the view already at or past its version and
//! changes nothing, and a lost one is covered by the next. When the last
//! one is lost, redrive notices the view lagging (the projection records
//! the version it showed) and sends `order.view_refresh`.

use bazaar_envelope::Envelope;
use bazaar_order_model::Order;
use bazaar_order_store::OrderStore;
use bazaar_order_views::OrderViews;
use spin_sdk::redis_subscriber;

#[redis_subscriber]
async fn on_order_event(message: Vec<u8>) -> Result<(), String> {
    let envelope = Envelope::from_bytes(&message)?;
    if !envelope.kind.starts_with("order.") {
        return Ok(());
    }
    let store = OrderStore::open().await.map_err(|p| p.detail)?;
    let events = store.load(&envelope.order_id).await.map_err(|p| p.detail)?;
    let Some(order) = Order::fold(&envelope.order_id, &events)? else {
        // The event's transaction is not visible yet or the message is
        // bogus; the next event of this order will bring the view up.
        return Err(format!("order {} has no events yet", envelope.order_id));
    };
    let written = OrderViews::open()
        .await
        .map_err(|p| p.detail)?
        .put(&order)
        .await
        .map_err(|p| p.detail)?;
    // Either way the view now shows at least this version.
    store
        .projected(&order.id, order.version)
        .await
        .map_err(|p| p.detail)?;
    let line = serde_json::json!({
        "level": "info",
        "msg": if written { "view updated" } else { "view already current" },
        "message_id": envelope.id,
        "order_id": envelope.order_id,
        "version": order.version,
        "traceparent": envelope.traceparent,
    });
    println!("{line}");
    Ok(())
}

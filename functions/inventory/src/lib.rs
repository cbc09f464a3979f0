//! The order saga's inventory step, in the products service's store: on
//! `inventory.reserve`, reserve every line of an order or none; on
//! `inventory.release`, give a reservation's stock back. The change, the
//! reply and the consumed message id commit together; the reply is then
//! published (transactional outbox, `bazaar_database::run_step`).

use bazaar_database::{Database, Step};
use bazaar_envelope::{Envelope, saga};
use bazaar_product_store::Store;
use spin_sdk::redis_subscriber;

struct Inventory(Store);

impl Step for Inventory {
    fn db(&self) -> &Database {
        self.0.db()
    }

    async fn apply(
        &self,
        command: &Envelope,
        now: &str,
    ) -> Result<(&'static str, serde_json::Value), String> {
        let reply = match command.kind.as_str() {
            saga::RESERVE_STOCK => {
                let reserve: saga::ReserveStock = serde_json::from_value(command.data.clone())
                    .map_err(|e| format!("{}: {e}", command.kind))?;
                self.0.reserve(&command.order_id, &reserve.items, now).await
            }
            saga::RELEASE_STOCK => self.0.release(&command.order_id, now).await,
            other => return Err(format!("the inventory step does not handle {other}")),
        };
        reply
            .map(|kind| (kind, serde_json::json!({})))
            .map_err(|p| p.detail)
    }
}

#[redis_subscriber]
async fn on_command(message: Vec<u8>) -> Result<(), String> {
    let store = Store::open().await.map_err(|p| p.detail)?;
    bazaar_database::run_step(&Inventory(store), &message).await
}

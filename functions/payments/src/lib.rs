//! The order saga's payment step, in the payments service's store: on
//! `payment.charge`, charge the order once (test card tokens: `tok_ok`
//! approves, `tok_decline` declines, `tok_error` fails transiently); on
//! `payment.refund`, refund its charge. The change, the reply and the
//! consumed message id commit together; the reply is then published
//! (`bazaar_database::run_step`).

use bazaar_database::{Database, Step};
use bazaar_envelope::{Envelope, saga};
use bazaar_payment_store::Store;
use spin_sdk::redis_subscriber;

struct Payments(Store);

impl Step for Payments {
    fn db(&self) -> &Database {
        self.0.db()
    }

    async fn apply(
        &self,
        command: &Envelope,
        now: &str,
    ) -> Result<(&'static str, serde_json::Value), String> {
        let reply = match command.kind.as_str() {
            saga::CHARGE => {
                let charge: saga::Charge = serde_json::from_value(command.data.clone())
                    .map_err(|e| format!("{}: {e}", command.kind))?;
                self.0.charge(&command.order_id, &charge, now).await
            }
            saga::REFUND => self.0.refund(&command.order_id, now).await,
            other => return Err(format!("the payment step does not handle {other}")),
        };
        reply.map_err(|p| p.detail)
    }
}

#[redis_subscriber]
async fn on_command(message: Vec<u8>) -> Result<(), String> {
    let store = Store::open().await.map_err(|p| p.detail)?;
    bazaar_database::run_step(&Payments(store), &message).await
}

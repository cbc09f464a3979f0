//! The orders read model, in the key-value store `order_views`: one view per
//! order, written by the `order-projection` function, read by the orders
//! component for `GET /api/v1/orders`.
//!
//! Keys:
//! - `order:<order id>`: the order as the API shows it, with the `version`
//!   (last event sequence number) it reflects;
//! - `user-orders:<user id>:<order id>`: an index entry. Order ids are
//!   UUIDv7s, time-ordered, so sorting the index keys sorts by age.
//!
//! A view is only ever replaced by one of a higher version, which makes
//! applying the same event twice, or an old one late, change nothing.

use bazaar_api::Problem;
use bazaar_order_model::Order;
use spin_sdk::key_value::Store;

pub const STORE: &str = "order_views";

pub struct OrderViews(Store);

fn unavailable(e: spin_sdk::key_value::Error) -> Problem {
    eprintln!("order_views store error: {e:?}");
    Problem::new(
        bazaar_api::StatusCode::SERVICE_UNAVAILABLE,
        "the orders read model is unavailable",
    )
}

fn order_key(order_id: &str) -> String {
    format!("order:{order_id}")
}

fn index_prefix(user_id: &str) -> String {
    format!("user-orders:{user_id}:")
}

impl OrderViews {
    pub async fn open() -> Result<OrderViews, Problem> {
        Store::open(STORE)
            .await
            .map(OrderViews)
            .map_err(unavailable)
    }

    pub async fn get(&self, order_id: &str) -> Result<Option<Order>, Problem> {
        let Some(bytes) = self.0.get(order_key(order_id)).await.map_err(unavailable)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Problem::internal(format!("order view {order_id} is unreadable: {e}")))
    }

    /// Stores `order` unless the stored view is as new or newer; says
    /// whether it wrote.
    pub async fn put(&self, order: &Order) -> Result<bool, Problem> {
        if self
            .get(&order.id)
            .await?
            .is_some_and(|stored| stored.version >= order.version)
        {
            return Ok(false);
        }
        let bytes = serde_json::to_vec(order).map_err(|e| Problem::internal(e.to_string()))?;
        self.0
            .set(order_key(&order.id), &bytes)
            .await
            .map_err(unavailable)?;
        let index = format!("{}{}", index_prefix(&order.user_id), order.id);
        self.0.set(index, b"").await.map_err(unavailable)?;
        Ok(true)
    }

    /// The user's orders, newest first.
    pub async fn for_user(&self, user_id: &str) -> Result<Vec<Order>, Problem> {
        let prefix = index_prefix(user_id);
        let mut ids: Vec<String> = self
            .0
            .get_keys()
            .await
            .collect()
            .await
            .map_err(unavailable)?
            .into_iter()
            .filter_map(|key| key.strip_prefix(&prefix).map(str::to_string))
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let mut orders = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(order) = self.get(&id).await? {
                orders.push(order);
            }
        }
        Ok(orders)
    }
}

//! Products and their rules, free of I/O.

use bazaar_api::Problem;
pub use bazaar_product_store::Product;
use serde::Deserialize;

const MAX_SKU_CHARS: usize = 64;
const MAX_NAME_CHARS: usize = 200;
const MAX_DESCRIPTION_CHARS: usize = 4000;

/// `POST /api/v1/products` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    pub sku: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(deserialize_with = "bazaar_api::integer")]
    pub price_cents: i64,
    pub currency: String,
    #[serde(deserialize_with = "bazaar_api::integer")]
    pub stock: i64,
}

/// `PATCH /api/v1/products/{id}` body: only what is present changes. Only
/// the description may be cleared (`null`); a `null` name, price or
/// currency is refused, not read as "unchanged".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductPatch {
    #[serde(default, deserialize_with = "not_null")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "explicit_null")]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "bazaar_api::some_integer")]
    pub price_cents: Option<i64>,
    #[serde(default, deserialize_with = "not_null")]
    pub currency: Option<String>,
}

/// `PUT /api/v1/products/{id}/stock` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockLevel {
    #[serde(deserialize_with = "bazaar_api::integer")]
    pub available: i64,
}

/// A field that, when present, must hold a value (absent is `None`).
fn not_null<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Distinguishes `"description": null` (clear it) from an absent field.
fn explicit_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Collects every invalid field, so one 422 tells the client all of them.
#[derive(Default)]
struct Invalid(Vec<(&'static str, String)>);

impl Invalid {
    fn check(&mut self, ok: bool, field: &'static str, why: impl Into<String>) {
        if !ok {
            self.0.push((field, why.into()));
        }
    }

    fn finish(self) -> Result<(), Problem> {
        let Some((field, why)) = self.0.first() else {
            return Ok(());
        };
        let fields: serde_json::Map<String, serde_json::Value> = self
            .0
            .iter()
            .map(|(f, w)| (f.to_string(), w.clone().into()))
            .collect();
        Err(Problem::unprocessable(format!("`{field}` {why}")).with("fields", fields))
    }
}

fn name_ok(name: &str) -> bool {
    let n = name.trim().chars().count();
    (1..=MAX_NAME_CHARS).contains(&n)
}

fn description_ok(description: Option<&str>) -> bool {
    description.is_none_or(|d| d.chars().count() <= MAX_DESCRIPTION_CHARS)
}

/// ISO 4217 shape: three upper-case letters.
fn currency_ok(currency: &str) -> bool {
    currency.len() == 3 && currency.chars().all(|c| c.is_ascii_uppercase())
}

fn sku_ok(sku: &str) -> bool {
    !sku.is_empty()
        && sku.len() <= MAX_SKU_CHARS
        && sku
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

const NAME_RULE: &str = "must be 1 to 200 characters";
const CURRENCY_RULE: &str = "must be an ISO 4217 code such as \"EUR\"";
const PRICE_RULE: &str = "must be a whole number of cents, 0 or more";
const STOCK_RULE: &str = "must be a whole number, 0 or more";
const DESCRIPTION_RULE: &str = "must be at most 4000 characters";

impl NewProduct {
    pub fn validate(mut self) -> Result<Product, Problem> {
        let mut invalid = Invalid::default();
        invalid.check(
            sku_ok(&self.sku),
            "sku",
            "must be 1 to 64 letters, digits, `-` or `_`",
        );
        invalid.check(name_ok(&self.name), "name", NAME_RULE);
        invalid.check(
            description_ok(self.description.as_deref()),
            "description",
            DESCRIPTION_RULE,
        );
        invalid.check(self.price_cents >= 0, "price_cents", PRICE_RULE);
        invalid.check(currency_ok(&self.currency), "currency", CURRENCY_RULE);
        invalid.check(self.stock >= 0, "stock", STOCK_RULE);
        invalid.finish()?;
        self.name = self.name.trim().to_string();
        Ok(Product {
            id: uuid::Uuid::now_v7().to_string(),
            sku: self.sku,
            name: self.name,
            description: self.description,
            price_cents: self.price_cents,
            currency: self.currency,
            stock_available: self.stock,
            version: 1,
        })
    }
}

impl ProductPatch {
    /// Applies the patch to `product`, validating what it changes.
    pub fn apply(self, mut product: Product) -> Result<Product, Problem> {
        let mut invalid = Invalid::default();
        if let Some(name) = &self.name {
            invalid.check(name_ok(name), "name", NAME_RULE);
        }
        if let Some(description) = &self.description {
            invalid.check(
                description_ok(description.as_deref()),
                "description",
                DESCRIPTION_RULE,
            );
        }
        if let Some(price) = self.price_cents {
            invalid.check(price >= 0, "price_cents", PRICE_RULE);
        }
        if let Some(currency) = &self.currency {
            invalid.check(currency_ok(currency), "currency", CURRENCY_RULE);
        }
        invalid.finish()?;
        if let Some(name) = self.name {
            product.name = name.trim().to_string();
        }
        if let Some(description) = self.description {
            product.description = description;
        }
        if let Some(price) = self.price_cents {
            product.price_cents = price;
        }
        if let Some(currency) = self.currency {
            product.currency = currency;
        }
        Ok(product)
    }
}

/// The product `version` an `If-Match` value names: one strong entity
/// tag, as `GET /products/{id}` gives it in `ETag` (`"7"`).
pub fn if_match_version(value: &str) -> Result<i64, Problem> {
    value
        .trim()
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or_else(|| {
            Problem::bad_request(format!(
                "If-Match must be the product's ETag, e.g. \"7\" (got {value:?})"
            ))
        })
}

/// The `ETag` of a product at `version`.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

impl StockLevel {
    pub fn validate(&self) -> Result<i64, Problem> {
        let mut invalid = Invalid::default();
        invalid.check(self.available >= 0, "available", STOCK_RULE);
        invalid.finish().map(|()| self.available)
    }
}

/// Products one lookup may ask for: as many as an order may list.
pub const MAX_LOOKUP: usize = 100;

#[cfg(test)]
mod tests {

    #[test]
    fn if_match_names_one_version() {
        assert_eq!(if_match_version("\"7\"").unwrap(), 7);
        assert_eq!(if_match_version(&etag(12)).unwrap(), 12);
        for bad in ["7", "*", "W/\"7\"", "\"seven\"", "\"7\", \"8\""] {
            assert_eq!(if_match_version(bad).unwrap_err().status, 400, "{bad}");
        }
    }
    use super::*;

    fn new(sku: &str, price: i64, currency: &str, stock: i64) -> NewProduct {
        NewProduct {
            sku: sku.into(),
            name: " Mug ".into(),
            description: None,
            price_cents: price,
            currency: currency.into(),
            stock,
        }
    }

    #[test]
    fn a_valid_product_is_normalised() {
        let p = new("MUG-1", 1250, "EUR", 3).validate().unwrap();
        assert_eq!((p.name.as_str(), p.stock_available), ("Mug", 3));
    }

    #[test]
    fn every_invalid_field_is_reported() {
        let e = new("bad sku!", -1, "eur", -2).validate().unwrap_err();
        assert_eq!(e.status, 422);
        let fields = e.extensions["fields"].as_object().unwrap();
        for f in ["sku", "price_cents", "currency", "stock"] {
            assert!(fields.contains_key(f), "{f}");
        }
    }

    #[test]
    fn patch_changes_only_given_fields() {
        let mut p = new("MUG-1", 1250, "EUR", 3).validate().unwrap();
        p.description = Some("Blue".into());
        let untouched: ProductPatch = serde_json::from_str(r#"{"price_cents": 999}"#).unwrap();
        let q = untouched.apply(p.clone()).unwrap();
        assert_eq!(
            (q.price_cents, q.name.as_str(), q.description.as_deref()),
            (999, "Mug", Some("Blue"))
        );
        let cleared: ProductPatch = serde_json::from_str(r#"{"description": null}"#).unwrap();
        let q = cleared.apply(p.clone()).unwrap();
        assert_eq!((q.price_cents, q.description), (1250, None));
        let bad: ProductPatch = serde_json::from_str(r#"{"currency": "euro"}"#).unwrap();
        assert_eq!(bad.apply(p).unwrap_err().status, 422);
        assert!(serde_json::from_str::<ProductPatch>(r#"{"sku": "X"}"#).is_err());
        // Only the description can be cleared.
        for cleared in ["name", "price_cents", "currency"] {
            let body = format!(r#"{{"{cleared}": null}}"#);
            assert!(
                serde_json::from_str::<ProductPatch>(&body).is_err(),
                "{body}"
            );
        }
        // A whole number written as a float is a whole number.
        let float: ProductPatch = serde_json::from_str(r#"{"price_cents": 999.0}"#).unwrap();
        assert_eq!(float.price_cents, Some(999));
        assert!(serde_json::from_str::<ProductPatch>(r#"{"price_cents": 9.5}"#).is_err());
        let unchanged: ProductPatch = serde_json::from_str("{}").unwrap();
        assert!(unchanged.name.is_none() && unchanged.description.is_none());
    }
}

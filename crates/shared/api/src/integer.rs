//! JSON integers as JSON Schema counts them: `3` and also `3.0`, which
//! some clients write for every number (a language with one number type
//! does). A fraction, or a float beyond 2^53 (where floats stop being
//! exact, so the value may not be the one the client meant), is refused.

use serde::de::{Deserializer, Error, Unexpected, Visitor};
use std::fmt;

/// The largest magnitude a float holds exactly as an integer.
const EXACT: f64 = 9_007_199_254_740_992.0;

/// `#[serde(deserialize_with = "bazaar_api::integer")]` for an `i64` field.
pub fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(Integer)
}

/// The same for an optional field that, when present, must hold a number.
pub fn some_integer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    integer(d).map(Some)
}

struct Integer;

impl Visitor<'_> for Integer {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<i64, E> {
        if v.fract() == 0.0 && v.abs() <= EXACT {
            // Exact: an integral float of at most 2^53 converts without loss.
            Ok(v as i64)
        } else {
            Err(E::invalid_value(Unexpected::Float(v), &self))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Line {
        #[serde(deserialize_with = "integer")]
        quantity: i64,
    }

    fn quantity(json: &str) -> Result<i64, String> {
        serde_json::from_str::<Line>(&format!(r#"{{"quantity": {json}}}"#))
            .map(|l| l.quantity)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn integers_with_or_without_a_zero_fraction() {
        assert_eq!(quantity("3"), Ok(3));
        assert_eq!(quantity("-2"), Ok(-2));
        assert_eq!(quantity("3.0"), Ok(3));
        assert_eq!(quantity("9007199254740992.0"), Ok(9_007_199_254_740_992));
        assert_eq!(quantity("9223372036854775807"), Ok(i64::MAX));
        for refused in [
            "3.5",
            "1e300",
            "9007199254740994.0",
            "18446744073709551615",
            r#""3""#,
            "null",
        ] {
            let error = quantity(refused).unwrap_err();
            assert!(error.contains("integer"), "{refused}: {error}");
        }
    }
}

//! How values look on the wire where serde's defaults and the OpenAPI document disagree.

/// The database stores times as UTC without an offset; the API sends them as RFC 3339 with the
/// offset (`2026-12-07T09:38:09.304865Z`), as the OpenAPI `date-time` format requires. Use as
/// `#[serde(with = "crate::wire::utc")]` on a `NaiveDateTime` field (and [`utc::option`] on an
/// `Option`). Reading accepts both forms, so JSON stored before the change still reads.
pub mod utc {
    use chrono::{DateTime, NaiveDateTime, SecondsFormat};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &NaiveDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&at.and_utc().to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveDateTime, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    /// RFC 3339 (any offset, turned into UTC), or the offset-less form taken as UTC.
    pub fn parse(text: &str) -> Result<NaiveDateTime, chrono::ParseError> {
        DateTime::parse_from_rfc3339(text)
            .map(|at| at.naive_utc())
            .or_else(|_| text.parse::<NaiveDateTime>())
    }

    pub mod option {
        use chrono::NaiveDateTime;
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(
            at: &Option<NaiveDateTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => super::serialize(at, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<NaiveDateTime>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| super::parse(&text).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

/// An `i64` in a request body, also when sent as an integral number with a fraction part
/// (`121.0`): JSON Schema counts that as an integer, so a client may send it. Anything with a
/// real fraction, or out of range, is still refused. Use as
/// `#[serde(deserialize_with = "crate::wire::integer")]`.
pub fn integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    use serde::Deserialize;
    let number = serde_json::Number::deserialize(d)?;
    if let Some(n) = number.as_i64() {
        return Ok(n);
    }
    // serde_json reads `2029596262611515.0` as 2029596262611515.2 (it parses floats fast, not
    // exactly): integral is within the float's own precision.
    number
        .as_f64()
        .filter(|f| {
            let whole = f.round();
            (f - whole).abs() <= whole.abs() * 1e-15
                && whole >= i64::MIN as f64
                && whole < i64::MAX as f64
        })
        .map(|f| f.round() as i64)
        .ok_or_else(|| serde::de::Error::custom(format!("invalid value: {number}, expected i64")))
}

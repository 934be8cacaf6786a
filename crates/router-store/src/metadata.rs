//! Metadata: the string → string map a client attaches to a stored completion, with OpenAI's
//! limits.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// Most keys a metadata map may have (OpenAI's limit).
pub const MAX_METADATA_KEYS: usize = 16;
/// Longest key, in characters (Unicode scalar values), OpenAI's limit.
pub const MAX_METADATA_KEY_CHARS: usize = 64;
/// Longest value, in characters (Unicode scalar values), OpenAI's limit.
pub const MAX_METADATA_VALUE_CHARS: usize = 512;
/// The metadata key whose value, a number in [0, 1], is a record's grade (see [`Metadata::grade`]).
pub const GRADE_KEY: &str = "grade";

/// Why a metadata map is invalid. Each message names the key at fault and the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// Not a JSON object (or null).
    #[error("`metadata` must be an object of string values")]
    NotAnObject,
    /// A value is not a string.
    #[error("`metadata.{key}` must be a string")]
    NotAString {
        /// The key.
        key: String,
    },
    /// More than [`MAX_METADATA_KEYS`] keys.
    #[error("`metadata` has {count} keys; at most {MAX_METADATA_KEYS} are allowed")]
    TooManyKeys {
        /// How many keys it has.
        count: usize,
    },
    /// A key longer than [`MAX_METADATA_KEY_CHARS`] characters.
    #[error("a `metadata` key is {chars} characters long (`{prefix}...`); at most {MAX_METADATA_KEY_CHARS} are allowed")]
    KeyTooLong {
        /// The key's first characters.
        prefix: String,
        /// Its length in characters.
        chars: usize,
    },
    /// A value longer than [`MAX_METADATA_VALUE_CHARS`] characters.
    #[error("`metadata.{key}` is {chars} characters long; at most {MAX_METADATA_VALUE_CHARS} are allowed")]
    ValueTooLong {
        /// The key.
        key: String,
        /// The value's length in characters.
        chars: usize,
    },
}

/// A validated metadata map: at most 16 keys, keys of at most 64 characters, values of at most
/// 512 characters (OpenAI's limits; characters are Unicode scalar values, not bytes).
///
/// ```
/// use router_store::{Metadata, MetadataError};
/// use serde_json::json;
///
/// let m = Metadata::from_json(&json!({"user": "42", "grade": "0.8"}))?;
/// assert_eq!(m.get("user"), Some("42"));
/// assert_eq!(m.grade(), Some(0.8));
/// assert!(matches!(
///     Metadata::from_json(&json!({"k": "x".repeat(513)})),
///     Err(MetadataError::ValueTooLong { chars: 513, .. })
/// ));
/// # Ok::<(), MetadataError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Metadata(BTreeMap<String, String>);

impl Metadata {
    /// Validates `map`.
    pub fn new(map: BTreeMap<String, String>) -> Result<Self, MetadataError> {
        if map.len() > MAX_METADATA_KEYS {
            return Err(MetadataError::TooManyKeys { count: map.len() });
        }
        for (key, value) in &map {
            let chars = key.chars().count();
            if chars > MAX_METADATA_KEY_CHARS {
                return Err(MetadataError::KeyTooLong {
                    prefix: key.chars().take(16).collect(),
                    chars,
                });
            }
            let chars = value.chars().count();
            if chars > MAX_METADATA_VALUE_CHARS {
                return Err(MetadataError::ValueTooLong {
                    key: key.clone(),
                    chars,
                });
            }
        }
        Ok(Metadata(map))
    }

    /// Reads and validates a JSON object of strings; `null` is the empty map.
    pub fn from_json(value: &Value) -> Result<Self, MetadataError> {
        match value {
            Value::Null => Ok(Metadata::default()),
            Value::Object(object) => {
                let mut map = BTreeMap::new();
                for (key, value) in object {
                    let Value::String(value) = value else {
                        return Err(MetadataError::NotAString { key: key.clone() });
                    };
                    map.insert(key.clone(), value.clone());
                }
                Metadata::new(map)
            }
            _ => Err(MetadataError::NotAnObject),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The pairs, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The JSON object.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    }

    /// The map.
    pub fn into_inner(self) -> BTreeMap<String, String> {
        self.0
    }

    /// The grade: the value of `grade` parsed as a number in [0, 1]; `None` when absent, not a
    /// number, or out of range.
    pub fn grade(&self) -> Option<f64> {
        let g: f64 = self.get(GRADE_KEY)?.trim().parse().ok()?;
        (g.is_finite() && (0.0..=1.0).contains(&g)).then_some(g)
    }

    /// The bytes this map counts for in a store's accounting: its keys and values.
    pub(crate) fn byte_len(&self) -> u64 {
        self.0.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
    }
}

impl TryFrom<BTreeMap<String, String>> for Metadata {
    type Error = MetadataError;

    fn try_from(map: BTreeMap<String, String>) -> Result<Self, MetadataError> {
        Metadata::new(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(n: usize) -> BTreeMap<String, String> {
        (0..n).map(|i| (format!("k{i}"), "v".to_string())).collect()
    }

    #[test]
    fn key_count_limit_is_exact() {
        assert_eq!(Metadata::new(map(16)).map(|m| m.len()), Ok(16));
        assert_eq!(
            Metadata::new(map(17)),
            Err(MetadataError::TooManyKeys { count: 17 })
        );
        assert_eq!(Metadata::new(map(0)).map(|m| m.is_empty()), Ok(true));
    }

    #[test]
    fn key_length_limit_is_exact_in_characters() {
        let ok = BTreeMap::from([("k".repeat(64), "v".to_string())]);
        assert!(Metadata::new(ok).is_ok());
        let bad = BTreeMap::from([("k".repeat(65), "v".to_string())]);
        assert!(matches!(
            Metadata::new(bad),
            Err(MetadataError::KeyTooLong { chars: 65, .. })
        ));
        // 64 two-byte characters are 128 bytes but 64 characters: allowed.
        let wide = BTreeMap::from([("é".repeat(64), "v".to_string())]);
        assert!(Metadata::new(wide).is_ok());
        let wide = BTreeMap::from([("é".repeat(65), "v".to_string())]);
        assert!(Metadata::new(wide).is_err());
    }

    #[test]
    fn value_length_limit_is_exact_in_characters() {
        let ok = BTreeMap::from([("k".to_string(), "v".repeat(512))]);
        assert!(Metadata::new(ok).is_ok());
        let bad = BTreeMap::from([("k".to_string(), "v".repeat(513))]);
        let e = Metadata::new(bad).unwrap_err();
        assert_eq!(
            e,
            MetadataError::ValueTooLong {
                key: "k".into(),
                chars: 513
            }
        );
        assert!(e.to_string().contains("metadata.k") && e.to_string().contains("512"));
        let wide = BTreeMap::from([("k".to_string(), "日".repeat(512))]);
        assert!(Metadata::new(wide).is_ok());
        let wide = BTreeMap::from([("k".to_string(), "日".repeat(513))]);
        assert!(Metadata::new(wide).is_err());
    }

    #[test]
    fn json_shapes() {
        assert_eq!(Metadata::from_json(&Value::Null), Ok(Metadata::default()));
        assert_eq!(
            Metadata::from_json(&json!(["a"])),
            Err(MetadataError::NotAnObject)
        );
        assert_eq!(
            Metadata::from_json(&json!({"a": 1})),
            Err(MetadataError::NotAString { key: "a".into() })
        );
        let m = Metadata::from_json(&json!({"b": "2", "a": "1"})).unwrap();
        assert_eq!(m.to_json(), json!({"a": "1", "b": "2"}));
    }

    #[test]
    fn grades() {
        let g = |v: &str| Metadata::from_json(&json!({ "grade": v })).unwrap().grade();
        assert_eq!(g("0.75"), Some(0.75));
        assert_eq!(g(" 1 "), Some(1.0));
        assert_eq!(g("0"), Some(0.0));
        assert_eq!(g("1.5"), None);
        assert_eq!(g("-0.1"), None);
        assert_eq!(g("NaN"), None);
        assert_eq!(g("good"), None);
        assert_eq!(Metadata::default().grade(), None);
    }
}

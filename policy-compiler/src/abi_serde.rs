//! Serialization of ABI values for the compiler's JSON outputs. The ABI mirror
//! (`palisade-abi`) has no dependencies, so the serde shape of its values lives here.

use serde::Serialize;
use serde::ser::{SerializeSeq, Serializer};

use crate::abi::PolicyValue;

/// The serialized form of a [`PolicyValue`] (the same fields and names as the mirror).
#[derive(Serialize)]
struct Value {
    rule_id: u32,
    proxy_port_be: u16,
    precedence: u16,
    verdict: u8,
    flags: u8,
    pad: u16,
}

impl From<&PolicyValue> for Value {
    fn from(v: &PolicyValue) -> Value {
        Value {
            rule_id: v.rule_id,
            proxy_port_be: v.proxy_port_be,
            precedence: v.precedence,
            verdict: v.verdict,
            flags: v.flags,
            pad: v.pad,
        }
    }
}

/// `#[serde(serialize_with)]` for `Vec<(K, PolicyValue)>`.
pub(crate) fn entries<S: Serializer, K: Serialize>(
    entries: &[(K, PolicyValue)],
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(entries.len()))?;
    for (k, v) in entries {
        seq.serialize_element(&(k, Value::from(v)))?;
    }
    seq.end()
}

/// `#[serde(serialize_with)]` for `Vec<(A, B, PolicyValue)>`.
pub(crate) fn keyed_entries<S: Serializer, A: Serialize, B: Serialize>(
    entries: &[(A, B, PolicyValue)],
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(entries.len()))?;
    for (a, b, v) in entries {
        seq.serialize_element(&(a, b, Value::from(v)))?;
    }
    seq.end()
}

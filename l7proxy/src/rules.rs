//! HTTP rules as policies write them (plain serde, shared by the CRDs and the rule table).

use serde::{Deserialize, Serialize};

/// One HTTP rule: every field given must match (regular expressions are full-match).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRule {
    /// Method regex, e.g. `GET` or `GET|HEAD`. Methods are case-sensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Path regex matched on the normalized path (without the query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Host regex matched on the lower-cased host, and on `host:port` when the request names a
    /// port: `api\.example\.com` matches any port, `api\.example\.com:8080` only 8080.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Header conditions; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// A header condition: present (neither `value` nor `regex`), an exact value, or a regex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name, case-insensitive.
    pub name: String,
    /// Exact value (compared byte for byte after trimming surrounding whitespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Value regex (full match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum L7Action {
    Allow,
    Deny,
}

/// A rule in a rule set: the rule, its action and the id the verdict names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleEntry {
    pub id: u32,
    pub action: L7Action,
    pub rule: HttpRule,
}

impl HttpRule {
    /// A rule without conditions: matches every request.
    pub fn any() -> HttpRule {
        HttpRule::default()
    }

    /// One-line summary, e.g. `GET /api/v1/data`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        parts.push(self.method.clone().unwrap_or_else(|| "*".to_string()));
        parts.push(self.path.clone().unwrap_or_else(|| "*".to_string()));
        if let Some(h) = &self.host {
            parts.push(format!("host={h}"));
        }
        for h in &self.headers {
            parts.push(match (&h.value, &h.regex) {
                (Some(v), _) => format!("{}={v}", h.name),
                (None, Some(r)) => format!("{}~{r}", h.name),
                (None, None) => format!("{}?", h.name),
            });
        }
        parts.join(" ")
    }
}

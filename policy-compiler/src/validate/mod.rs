//! NetworkPolicy validation with Kubernetes API-server parity.
//!
//! The rules and message texts follow kubernetes `pkg/apis/networking/validation`
//! (`ValidateNetworkPolicy` on create), apimachinery `pkg/util/validation` (DNS-1123, qualified
//! names, label values, port names), `pkg/apis/meta/v1/validation` (label selectors),
//! `pkg/api/validation` (object metadata) and the legacy-field CIDR checks and warnings of
//! KEP-4858 (`StrictIPCIDRValidation`). Texts are those of the releases whose
//! `util/validation` still says "characters" and "a qualified name" (the reliability
//! reference, section 2, lists the rules and vectors).
//!
//! `policy-test` compares its verdicts with a real apiserver, so every detail that reaches the
//! user is reproduced: field paths, the error-type wording, how the bad value is printed
//! (Go `%q` for strings, bare numbers, `%#v` for the policyTypes list), the order in which
//! errors are found, and the de-duplication the apiserver applies to the final message.
//!
//! The checks are hand-written equivalents of the upstream regular expressions; the CIDR
//! parser reimplements Go's pre-1.17 ("sloppy") `net.ParseCIDR` so that exactly the same
//! strings are accepted, and compares it with what `net/netip` would accept to find the
//! values that strict validation rejects.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::k8s::{
    IntOrString, IpBlock, LabelSelector, LabelSelectorRequirement, Labels, NetworkPolicyObject,
    NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec, StrictObjectMeta,
};

mod errors;
mod go_cidr;
mod meta;
mod names;
mod network_policy;

use errors::*;
use go_cidr::*;
use meta::*;
use names::*;
use network_policy::*;

// ---- public types --------------------------------------------------------------------

/// The kinds of field error the apiserver reports for NetworkPolicy (`field.ErrorType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    Required,
    Forbidden,
    Invalid,
    Unsupported,
    TooLong,
    TooMany,
    Duplicate,
}

impl fmt::Display for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The canonical texts of `field.ErrorType.String()`.
        f.write_str(match self {
            ErrorType::Required => "Required value",
            ErrorType::Forbidden => "Forbidden",
            ErrorType::Invalid => "Invalid value",
            ErrorType::Unsupported => "Unsupported value",
            ErrorType::TooLong => "Too long",
            ErrorType::TooMany => "Too many",
            ErrorType::Duplicate => "Duplicate value",
        })
    }
}

/// One field-level error, as `field.Error`.
///
/// `bad_value` holds the value already rendered the way the apiserver prints it: strings
/// double-quoted with Go escapes (`"Foo_Bar"`), numbers bare (`0`), the over-long
/// policyTypes list as Go `%#v`. It is `None` for Required, Forbidden and Too long, whose
/// messages never show the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub error_type: ErrorType,
    pub bad_value: Option<String>,
    pub detail: String,
}

impl fmt::Display for FieldError {
    /// `<field>: <Type>[: <value>][: <detail>]`, as `field.Error.Error()`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.error_type)?;
        match self.error_type {
            ErrorType::Required | ErrorType::Forbidden | ErrorType::TooLong => {}
            ErrorType::Invalid
            | ErrorType::Unsupported
            | ErrorType::Duplicate
            | ErrorType::TooMany => {
                // A nil bad value is printed by Go as the quoted string "null".
                write!(f, ": {}", self.bad_value.as_deref().unwrap_or("\"null\""))?;
            }
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldError {}

/// Knobs that differ between clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidationOptions {
    /// The `StrictIPCIDRValidation` feature gate: when set, CIDRs with leading zeros, an
    /// IPv4-mapped IPv6 address or host bits set are errors; when clear they are accepted with
    /// a warning.
    pub strict_cidr: bool,
}

impl Default for ValidationOptions {
    /// Strict CIDR validation is on by default, as on current clusters.
    fn default() -> Self {
        ValidationOptions { strict_cidr: true }
    }
}

/// The outcome of validating one object: the errors that make the apiserver reject it, and
/// the warnings it would return (`Warning:` lines in kubectl) when it accepts it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validation {
    pub errors: Vec<FieldError>,
    pub warnings: Vec<String>,
}

// ---- message texts (apimachinery) ----------------------------------------------------

pub(super) const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
pub(super) const DNS1123_LABEL_ERR: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
pub(super) const DNS1123_LABEL_MAX: usize = 63;
pub(super) const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
pub(super) const DNS1123_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
pub(super) const DNS1123_SUBDOMAIN_MAX: usize = 253;

pub(super) const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
pub(super) const QUALIFIED_NAME_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
pub(super) const QUALIFIED_NAME_MAX: usize = 63;
pub(super) const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
pub(super) const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
pub(super) const LABEL_VALUE_MAX: usize = 63;

pub(super) const PORT_NAME_MAX: usize = 15;
pub(super) const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

pub(super) const CIDR_INVALID: &str =
    "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";

pub(super) const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];
pub(super) const POLICY_TYPES: [&str; 2] = ["Ingress", "Egress"];

// ---- public entry points -------------------------------------------------------------

/// Validates a NetworkPolicy as the apiserver does on create (after defaulting, which never
/// changes the outcome: a nil protocol becomes TCP and empty policyTypes become valid values).
///
/// Two deliberate deviations make it usable on manifests rather than on stored objects:
/// `metadata.namespace` is checked only when present (the apiserver takes it from the request
/// URL), and a `generateName` without `name` is validated as a prefix instead of reporting
/// the name as missing (the apiserver generates the name first).
///
/// As in the apiserver, identical messages are reported once, and warnings are returned only
/// when there is no error (a rejected request carries no warnings).
pub fn validate_network_policy(np: &NetworkPolicyObject, opts: &ValidationOptions) -> Validation {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    validate_object_meta(&np.metadata, &mut errors);
    validate_spec(&np.spec, opts, &mut errors, &mut warnings);

    // `field.ErrorList.ToAggregate` drops repeated messages, e.g. two labels sharing one bad
    // value.
    let mut seen = HashSet::new();
    errors.retain(|e| seen.insert(e.to_string()));
    if !errors.is_empty() {
        warnings.clear();
    }
    Validation { errors, warnings }
}

/// Validates a label selector (`metav1validation.ValidateLabelSelector` with invalid label
/// values in `matchExpressions[].values` not tolerated, as on create). `path` is the selector's
/// own field path, e.g. `spec.podSelector`.
pub fn validate_label_selector(sel: &LabelSelector, path: &str, out: &mut Vec<FieldError>) {
    if let Some(labels) = &sel.match_labels {
        validate_labels(labels, &format!("{path}.matchLabels"), out);
    }
    for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
        validate_selector_requirement(req, &format!("{path}.matchExpressions[{i}]"), out);
    }
}

/// Validates label keys and values (`metav1validation.ValidateLabels`). Every error carries
/// the map's own path; the bad value is the offending key or value. Keys are visited in sorted
/// order (Go visits them in random order).
pub fn validate_labels(labels: &Labels, path: &str, out: &mut Vec<FieldError>) {
    for (key, value) in labels {
        for msg in is_qualified_name(key) {
            out.push(invalid(path, quote(key), msg));
        }
        for msg in is_valid_label_value(value) {
            out.push(invalid(path, quote(value), msg));
        }
    }
}

/// `validation.IsDNS1123Subdomain`: at most 253 bytes of dot-separated DNS-1123 labels.
/// Returns the error details; empty means valid.
pub fn is_dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX));
    }
    if !matches_dns1123_subdomain(s) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_ERR,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// `validation.IsDNS1123Label`: at most 63 bytes of `[a-z0-9-]`, alphanumeric at both ends.
/// A valid subdomain that is not a label gets the shorter "must not contain dots".
pub fn is_dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_LABEL_MAX {
        errs.push(max_len_error(DNS1123_LABEL_MAX));
    }
    if !matches_dns1123_label(s) {
        if matches_dns1123_subdomain(s) {
            // Length was already reported, so what is left must be the dots.
            errs.push("must not contain dots".to_owned());
        } else {
            errs.push(regex_error(
                DNS1123_LABEL_ERR,
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errs
}

/// `validation.IsValidPortName` (IANA_SVC_NAME, lower case only): every rule that fails is
/// reported, in the apiserver's order.
pub fn is_valid_port_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let b = s.as_bytes();
    if b.len() > PORT_NAME_MAX {
        errs.push(max_len_error(PORT_NAME_MAX));
    }
    if b.is_empty()
        || !b
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    {
        errs.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_owned(),
        );
    }
    if !b.iter().any(u8::is_ascii_lowercase) {
        errs.push("must contain at least one letter (a-z)".to_owned());
    }
    if s.contains("--") {
        errs.push("must not contain consecutive hyphens".to_owned());
    }
    if b.first() == Some(&b'-') || b.last() == Some(&b'-') {
        errs.push("must not begin or end with a hyphen".to_owned());
    }
    errs
}

/// Parses a CIDR exactly as the apiserver's legacy-field validation does.
///
/// `Err` carries the error detail: the "must be a valid CIDR value" text when Go's lenient
/// parser refuses it, or (with `strict`) the first strict-validation failure. `Ok` carries the
/// network address (host bits cleared; IPv4-mapped IPv6 stays IPv6, as written), the prefix
/// length as written, and the apiserver's warnings for the value without their leading
/// `<field path>: ` (leading zeros, IPv4-mapped, bits beyond the prefix when not `strict`,
/// and non-canonical IPv6 in both modes).
pub fn parse_cidr_checked(s: &str, strict: bool) -> Result<(IpAddr, u8, Vec<String>), String> {
    let cidr = GoCidr::parse(s).ok_or_else(|| CIDR_INVALID.to_owned())?;
    if strict && let Some(detail) = cidr.strict_problem() {
        return Err(detail.to_owned());
    }
    let net = cidr.network16();
    let addr = if cidr.v4_literal {
        IpAddr::V4(Ipv4Addr::new(net[12], net[13], net[14], net[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(net))
    };
    Ok((addr, cidr.bits, cidr.warnings(s)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;

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

// ---- public types --------------------------------------------------------------------

/// The kinds of field error the apiserver reports for NetworkPolicy (`field.ErrorType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    Required,
    Forbidden,
    Invalid,
    Unsupported,
    TooLong,
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
            ErrorType::Invalid | ErrorType::Unsupported | ErrorType::Duplicate => {
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

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_ERR: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_MAX: usize = 253;

const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_MAX: usize = 63;

const PORT_NAME_MAX: usize = 15;
const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

const CIDR_INVALID: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";

const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];
const POLICY_TYPES: [&str; 2] = ["Ingress", "Egress"];

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

// ---- metadata ------------------------------------------------------------------------

/// `ValidateObjectMeta` for a namespaced object whose names are DNS subdomains, limited to
/// the fields a manifest carries (owner references, finalizers and managed fields are left to
/// the apiserver).
fn validate_object_meta(meta: &StrictObjectMeta, out: &mut Vec<FieldError>) {
    let generate_name = meta.generate_name.as_deref().unwrap_or_default();
    if !generate_name.is_empty() {
        for msg in name_is_dns_subdomain(generate_name, true) {
            out.push(invalid("metadata.generateName", quote(generate_name), msg));
        }
    }
    let name = meta.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        // The apiserver would have generated a name from generateName by now.
        if generate_name.is_empty() {
            out.push(required(
                "metadata.name",
                "name or generateName is required",
            ));
        }
    } else {
        for msg in name_is_dns_subdomain(name, false) {
            out.push(invalid("metadata.name", quote(name), msg));
        }
    }

    // Namespaces are DNS labels (`ValidateNamespaceName`); an absent one comes from the URL.
    let namespace = meta.namespace.as_deref().unwrap_or_default();
    if !namespace.is_empty() {
        for msg in is_dns1123_label(namespace) {
            out.push(invalid("metadata.namespace", quote(namespace), msg));
        }
    }

    if let Some(generation) = meta.generation
        && generation < 0
    {
        out.push(invalid(
            "metadata.generation",
            generation.to_string(),
            "must be greater than or equal to 0".to_owned(),
        ));
    }
    if let Some(labels) = &meta.labels {
        validate_labels(labels, "metadata.labels", out);
    }
    if let Some(annotations) = &meta.annotations {
        validate_annotations(annotations, out);
    }
}

/// `NameIsDNSSubdomain`: a generateName prefix may end in '-'. Upstream masks that by
/// replacing the last *two* characters with "a" (`name[:len-2] + "a"`); the quirk is kept.
fn name_is_dns_subdomain(name: &str, prefix: bool) -> Vec<String> {
    if prefix
        && name.len() > 1
        && let Some(stripped) = name.strip_suffix('-')
    {
        // Drop one more character (a whole one if it is multi-byte, where Go would cut a
        // byte and fail the check all the same).
        let mut chars = stripped.chars();
        chars.next_back();
        let mut masked = chars.as_str().to_owned();
        masked.push('a');
        return is_dns1123_subdomain(&masked);
    }
    is_dns1123_subdomain(name)
}

/// `ValidateAnnotations`: keys are qualified names compared in lower case, and the keys plus
/// values may total at most 256 KiB.
fn validate_annotations(annotations: &BTreeMap<String, String>, out: &mut Vec<FieldError>) {
    const PATH: &str = "metadata.annotations";
    let mut total = 0usize;
    for (key, value) in annotations {
        for msg in is_qualified_name(&key.to_lowercase()) {
            out.push(invalid(PATH, quote(key), msg));
        }
        total = total.saturating_add(key.len()).saturating_add(value.len());
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        out.push(FieldError {
            field: PATH.to_owned(),
            error_type: ErrorType::TooLong,
            bad_value: None,
            detail: format!("may not be more than {TOTAL_ANNOTATION_SIZE_LIMIT} bytes"),
        });
    }
}

// ---- spec ----------------------------------------------------------------------------

/// `ValidateNetworkPolicySpec`: pod selector, then each ingress rule (ports, then peers),
/// each egress rule, and finally policyTypes.
fn validate_spec(
    spec: &NetworkPolicySpec,
    opts: &ValidationOptions,
    out: &mut Vec<FieldError>,
    warnings: &mut Vec<String>,
) {
    validate_label_selector(&spec.pod_selector, "spec.podSelector", out);

    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        let rule_path = format!("spec.ingress[{i}]");
        for (j, port) in rule.ports.iter().flatten().enumerate() {
            validate_port(port, &format!("{rule_path}.ports[{j}]"), out);
        }
        for (j, peer) in rule.from.iter().flatten().enumerate() {
            validate_peer(peer, &format!("{rule_path}.from[{j}]"), opts, out, warnings);
        }
    }
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        let rule_path = format!("spec.egress[{i}]");
        for (j, port) in rule.ports.iter().flatten().enumerate() {
            validate_port(port, &format!("{rule_path}.ports[{j}]"), out);
        }
        for (j, peer) in rule.to.iter().flatten().enumerate() {
            validate_peer(peer, &format!("{rule_path}.to[{j}]"), opts, out, warnings);
        }
    }

    if let Some(types) = &spec.policy_types {
        if types.len() > POLICY_TYPES.len() {
            // Upstream returns here: no per-item errors once the list is too long.
            out.push(invalid(
                "spec.policyTypes",
                go_policy_types_literal(types),
                "may not specify more than two policyTypes".to_owned(),
            ));
            return;
        }
        // Duplicates ("Ingress", "Ingress") are accepted upstream.
        for (i, t) in types.iter().enumerate() {
            if !POLICY_TYPES.contains(&t.as_str()) {
                out.push(not_supported(
                    &format!("spec.policyTypes[{i}]"),
                    quote(t),
                    &POLICY_TYPES,
                ));
            }
        }
    }
}

/// `ValidateNetworkPolicyPort`.
fn validate_port(port: &NetworkPolicyPort, path: &str, out: &mut Vec<FieldError>) {
    // Case-sensitive: "tcp" is rejected. A missing protocol defaults to TCP.
    if let Some(protocol) = &port.protocol
        && !PROTOCOLS.contains(&protocol.as_str())
    {
        out.push(not_supported(
            &format!("{path}.protocol"),
            quote(protocol),
            &PROTOCOLS,
        ));
    }
    let end_path = format!("{path}.endPort");
    match &port.port {
        Some(IntOrString::Int(number)) => {
            if let Some(msg) = port_number_error(*number) {
                out.push(invalid(&format!("{path}.port"), number.to_string(), msg));
            }
            if let Some(end) = port.end_port {
                if end < *number {
                    out.push(invalid(
                        &end_path,
                        end.to_string(),
                        "must be greater than or equal to `port`".to_owned(),
                    ));
                }
                if let Some(msg) = port_number_error(end) {
                    out.push(invalid(&end_path, end.to_string(), msg));
                }
            }
        }
        Some(IntOrString::String(name)) => {
            if let Some(end) = port.end_port {
                out.push(invalid(
                    &end_path,
                    end.to_string(),
                    "may not be specified when `port` is non-numeric".to_owned(),
                ));
            }
            for msg in is_valid_port_name(name) {
                out.push(invalid(&format!("{path}.port"), quote(name), msg));
            }
        }
        None => {
            if let Some(end) = port.end_port {
                out.push(invalid(
                    &end_path,
                    end.to_string(),
                    "may not be specified when `port` is not specified".to_owned(),
                ));
            }
        }
    }
}

/// `validation.IsValidPortNum`.
fn port_number_error(port: i64) -> Option<String> {
    if (1..=65535).contains(&port) {
        None
    } else {
        Some("must be between 1 and 65535, inclusive".to_owned())
    }
}

/// `ValidateNetworkPolicyPeer`: the selectors and ipBlock are validated first, then the peer
/// as a whole. A pod selector together with a namespace selector is an intersection and valid.
fn validate_peer(
    peer: &NetworkPolicyPeer,
    path: &str,
    opts: &ValidationOptions,
    out: &mut Vec<FieldError>,
    warnings: &mut Vec<String>,
) {
    let mut peers = 0;
    if let Some(sel) = &peer.pod_selector {
        peers += 1;
        validate_label_selector(sel, &format!("{path}.podSelector"), out);
    }
    if let Some(sel) = &peer.namespace_selector {
        peers += 1;
        validate_label_selector(sel, &format!("{path}.namespaceSelector"), out);
    }
    if let Some(block) = &peer.ip_block {
        peers += 1;
        validate_ip_block(
            block,
            &format!("{path}.ipBlock"),
            opts.strict_cidr,
            out,
            warnings,
        );
    }
    if peers == 0 {
        out.push(required(path, "must specify a peer"));
    } else if peers > 1 && peer.ip_block.is_some() {
        out.push(forbidden(
            path,
            "may not specify both ipBlock and another peer",
        ));
    }
}

/// `ValidateIPBlock`, plus the CIDR warnings of the registry strategy.
fn validate_ip_block(
    block: &IpBlock,
    path: &str,
    strict: bool,
    out: &mut Vec<FieldError>,
    warnings: &mut Vec<String>,
) {
    let cidr_path = format!("{path}.cidr");
    if block.cidr.is_empty() {
        out.push(required(&cidr_path, ""));
        return;
    }
    // An unparsable cidr has been reported; excepts cannot be compared with it.
    let Some(cidr) = check_cidr_field(&cidr_path, &block.cidr, strict, out, warnings) else {
        return;
    };
    for (i, except) in block.except.iter().flatten().enumerate() {
        let except_path = format!("{path}.except[{i}]");
        let Some(ex) = check_cidr_field(&except_path, except, strict, out, warnings) else {
            continue;
        };
        // Equal prefixes, other families and disjoint ranges are all "not a strict subset".
        if !cidr.contains(&ex.network16()) || cidr.bits >= ex.bits {
            out.push(invalid(
                &except_path,
                quote(except),
                "must be a strict subset of `cidr`".to_owned(),
            ));
        }
    }
}

/// `IsValidCIDRForLegacyField` for one value, collecting its warnings (`GetWarningsForCIDR`)
/// with the field path in front. Returns the parse when Go's lenient parser accepts it, even if
/// strict validation failed, because upstream goes on to check the excepts.
fn check_cidr_field(
    path: &str,
    value: &str,
    strict: bool,
    out: &mut Vec<FieldError>,
    warnings: &mut Vec<String>,
) -> Option<GoCidr> {
    let Some(cidr) = GoCidr::parse(value) else {
        out.push(invalid(path, quote(value), CIDR_INVALID.to_owned()));
        return None;
    };
    if strict && let Some(detail) = cidr.strict_problem() {
        out.push(invalid(path, quote(value), detail.to_owned()));
    }
    warnings.extend(
        cidr.warnings(value)
            .into_iter()
            .map(|w| format!("{path}: {w}")),
    );
    Some(cidr)
}

// ---- label selectors -----------------------------------------------------------------

/// `ValidateLabelSelectorRequirement`: operator (with its values rule), key, then each value.
fn validate_selector_requirement(
    req: &LabelSelectorRequirement,
    path: &str,
    out: &mut Vec<FieldError>,
) {
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" | "NotIn" => {
            if values.is_empty() {
                out.push(required(
                    &format!("{path}.values"),
                    "must be specified when `operator` is 'In' or 'NotIn'",
                ));
            }
        }
        "Exists" | "DoesNotExist" => {
            if !values.is_empty() {
                out.push(forbidden(
                    &format!("{path}.values"),
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                ));
            }
        }
        other => out.push(invalid(
            &format!("{path}.operator"),
            quote(other),
            "not a valid selector operator".to_owned(),
        )),
    }
    for msg in is_qualified_name(&req.key) {
        out.push(invalid(&format!("{path}.key"), quote(&req.key), msg));
    }
    for (i, value) in values.iter().enumerate() {
        for msg in is_valid_label_value(value) {
            out.push(invalid(&format!("{path}.values[{i}]"), quote(value), msg));
        }
    }
}

/// `validation.IsQualifiedName` (label keys): optional DNS-subdomain prefix and '/', then a
/// name of 1–63 bytes.
fn is_qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_owned());
            } else {
                errs.extend(
                    is_dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(
                    QUALIFIED_NAME_ERR,
                    QUALIFIED_NAME_FMT,
                    &["MyName", "my.name", "123-abc"]
                )
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > QUALIFIED_NAME_MAX {
        errs.push(format!("name part {}", max_len_error(QUALIFIED_NAME_MAX)));
    }
    if !matches_qualified_name(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_ERR,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// `validation.IsValidLabelValue`: empty, or a qualified-name-shaped string of ≤63 bytes.
fn is_valid_label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > LABEL_VALUE_MAX {
        errs.push(max_len_error(LABEL_VALUE_MAX));
    }
    if !value.is_empty() && !matches_qualified_name(value) {
        errs.push(regex_error(
            LABEL_VALUE_ERR,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

// ---- character-class matchers (hand-written regexes) ---------------------------------

/// `^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
fn matches_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let lower_alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    b.first().is_some_and(lower_alnum)
        && b.last().is_some_and(lower_alnum)
        && b.iter().all(|c| lower_alnum(c) || *c == b'-')
}

/// `^label(\.label)*$`: no empty component, so no leading, trailing or doubled dots.
fn matches_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(matches_dns1123_label)
}

/// `^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$`
fn matches_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// `validation.MaxLenError`.
fn max_len_error(max: usize) -> String {
    format!("must be no more than {max} characters")
}

/// `validation.RegexError`, including its odd `'x',  or 'y', ` spacing.
fn regex_error(msg: &str, re: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{re}')");
    }
    let mut s = format!("{msg} (e.g. ");
    for (i, example) in examples.iter().enumerate() {
        if i > 0 {
            s.push_str(" or ");
        }
        s.push('\'');
        s.push_str(example);
        s.push_str("', ");
    }
    s.push_str("regex used for validation is '");
    s.push_str(re);
    s.push_str("')");
    s
}

// ---- CIDR parsing with Go semantics --------------------------------------------------

/// A CIDR as Go's lenient `net.ParseCIDR` (k8s.io/utils `ParseCIDRSloppy`) sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GoCidr {
    /// The address as written, in 16-byte form (IPv4 literals stored IPv4-mapped, as Go does).
    addr: [u8; 16],
    /// Written as an IPv4 literal: Go then uses a 4-byte mask (prefix ≤ 32); otherwise 16.
    v4_literal: bool,
    bits: u8,
    /// Some octet, hex field or the prefix length has leading zeros: the lenient parser takes
    /// it, `netip.ParsePrefix` does not. That is the only difference between the two parsers.
    leading_zeros: bool,
}

impl GoCidr {
    fn parse(s: &str) -> Option<GoCidr> {
        let b = s.as_bytes();
        let slash = b.iter().position(|c| *c == b'/')?;
        let (addr_part, mask_part) = (&b[..slash], &b[slash + 1..]);

        let mut leading_zeros = false;
        let (addr, v4_literal) = match parse_ipv4_sloppy(addr_part, &mut leading_zeros) {
            Some(v4) => (ipv4_mapped(v4), true),
            None => {
                // A failed IPv4 attempt may have flagged something; start over.
                leading_zeros = false;
                (parse_ipv6_sloppy(addr_part, &mut leading_zeros)?, false)
            }
        };
        let (bits, used, ok) = dtoi(mask_part);
        let max_bits = if v4_literal { 32 } else { 128 };
        if !ok || used != mask_part.len() || bits > max_bits {
            return None;
        }
        if used > 1 && mask_part.first() == Some(&b'0') {
            leading_zeros = true;
        }
        Some(GoCidr {
            addr,
            v4_literal,
            bits: u8::try_from(bits).ok()?,
            leading_zeros,
        })
    }

    /// The mask over the 16-byte form; for IPv4 literals the first 96 bits are kept so the
    /// mapped prefix survives masking.
    fn mask16(&self) -> [u8; 16] {
        let ones = if self.v4_literal {
            96 + u32::from(self.bits)
        } else {
            u32::from(self.bits)
        };
        prefix_mask(ones)
    }

    fn network16(&self) -> [u8; 16] {
        let mask = self.mask16();
        let mut net = self.addr;
        for (byte, m) in net.iter_mut().zip(mask) {
            *byte &= m;
        }
        net
    }

    fn has_host_bits(&self) -> bool {
        self.network16() != self.addr
    }

    /// `netip.Addr.Is4In6` on an address written as IPv6.
    fn is_4in6(&self) -> bool {
        !self.v4_literal && is_ipv4_mapped(&self.addr)
    }

    /// The strict-validation failure, checked in upstream's order.
    fn strict_problem(&self) -> Option<&'static str> {
        if self.leading_zeros {
            Some("must not have leading 0s in IP or prefix length")
        } else if self.is_4in6() {
            Some("must not have an IPv4-mapped IPv6 address")
        } else if self.has_host_bits() {
            Some("must not have bits set beyond the prefix length")
        } else {
            None
        }
    }

    /// `net.IPNet.Contains(ip)` for `ip` in 16-byte form. Go compares in 4 bytes when both
    /// sides are IPv4 or IPv4-mapped and refuses mixed widths, which is why an IPv6 except is
    /// never inside an IPv4 cidr while an IPv4-mapped one can be.
    fn contains(&self, ip: &[u8; 16]) -> bool {
        let net = self.network16();
        let net_is_4 = is_ipv4_mapped(&net);
        if net_is_4 != is_ipv4_mapped(ip) {
            return false;
        }
        // A 16-byte mask over a 4-byte network keeps only its last 4 bytes (`m[12:]`).
        let mask = self.mask16();
        let start = if net_is_4 { 12 } else { 0 };
        (start..16).all(|i| net[i] & mask[i] == ip[i] & mask[i])
    }

    /// `net.IPNet.String()`: IPv4 (or IPv4-mapped) networks print dotted with the prefix
    /// re-based to 32 bits.
    fn go_network_string(&self) -> String {
        let net = self.network16();
        if is_ipv4_mapped(&net) {
            let bits = if self.v4_literal {
                self.bits
            } else {
                self.bits.saturating_sub(96)
            };
            format!("{}/{bits}", format_ipv4(&net))
        } else {
            format!("{}/{}", format_ipv6(&net), self.bits)
        }
    }

    /// `GetWarningsForCIDR`, without the leading `<path>: `.
    fn warnings(&self, value: &str) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.has_host_bits() {
            let total = if self.v4_literal { 32 } else { 128 };
            let single = format!("{}/{total}", go_ip_string(&self.addr));
            warnings.push(format!(
                "CIDR value {} is ambiguous in this context (should be {} or {}?)",
                quote(value),
                quote(&self.go_network_string()),
                quote(&single)
            ));
        }
        if self.leading_zeros || self.is_4in6() {
            warnings.push(format!(
                "non-standard CIDR value {} will be considered invalid in a future Kubernetes release: use {}",
                quote(value),
                quote(&self.go_network_string())
            ));
        }
        if warnings.is_empty() && !self.v4_literal {
            // `netip.Prefix.String()` keeps host bits and prints RFC 5952 text.
            let canonical = format!("{}/{}", format_ipv6(&self.addr), self.bits);
            if canonical != value {
                warnings.push(format!(
                    "IPv6 CIDR value {} should be in RFC 5952 canonical format ({})",
                    quote(value),
                    quote(&canonical)
                ));
            }
        }
        warnings
    }
}

/// Go's `big` sentinel in `dtoi`/`xtoi`: numbers stop being accumulated there.
const GO_BIG: u32 = 0x00FF_FFFF;

/// Go's `dtoi`: leading decimal digits of `s` (leading zeros allowed) → (value, digits, ok).
fn dtoi(s: &[u8]) -> (u32, usize, bool) {
    let mut n: u32 = 0;
    let mut i = 0;
    while let Some(c) = s.get(i).filter(|c| c.is_ascii_digit()) {
        n = n * 10 + u32::from(c - b'0');
        if n >= GO_BIG {
            return (GO_BIG, i, false);
        }
        i += 1;
    }
    (n, i, i > 0)
}

/// Go's `xtoi`: leading hex digits of `s` → (value, digits, ok).
fn xtoi(s: &[u8]) -> (u32, usize, bool) {
    let mut n: u32 = 0;
    let mut i = 0;
    while let Some(d) = s.get(i).and_then(|c| char::from(*c).to_digit(16)) {
        n = n * 16 + d;
        if n >= GO_BIG {
            return (0, i, false);
        }
        i += 1;
    }
    (n, i, i > 0)
}

/// Go 1.16 `parseIPv4`: exactly four decimal octets ≤ 255, leading zeros allowed (and
/// flagged), nothing after.
fn parse_ipv4_sloppy(mut s: &[u8], leading_zeros: &mut bool) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    for (i, octet) in out.iter_mut().enumerate() {
        if i > 0 {
            s = s.strip_prefix(b".")?;
        }
        let (n, used, ok) = dtoi(s);
        if !ok || n > 0xFF {
            return None;
        }
        if used > 1 && s.first() == Some(&b'0') {
            *leading_zeros = true;
        }
        *octet = u8::try_from(n).ok()?;
        s = &s[used..];
    }
    s.is_empty().then_some(out)
}

/// Go 1.16 `parseIPv6` (no zone): hex fields of any length whose value fits 16 bits (more
/// than four digits is flagged as leading zeros), one "::", an optional trailing IPv4.
fn parse_ipv6_sloppy(mut s: &[u8], leading_zeros: &mut bool) -> Option<[u8; 16]> {
    let mut ip = [0u8; 16];
    let mut ellipsis: Option<usize> = None;

    if s.starts_with(b"::") {
        ellipsis = Some(0);
        s = &s[2..];
        if s.is_empty() {
            return Some(ip);
        }
    }

    let mut i = 0;
    while i < 16 {
        let (n, used, ok) = xtoi(s);
        if !ok || n > 0xFFFF {
            return None;
        }

        // A dot after the field means the rest is an embedded IPv4 address.
        if s.get(used) == Some(&b'.') {
            if ellipsis.is_none() && i != 12 {
                return None;
            }
            if i + 4 > 16 {
                return None;
            }
            let v4 = parse_ipv4_sloppy(s, leading_zeros)?;
            ip[i..i + 4].copy_from_slice(&v4);
            s = &[];
            i += 4;
            break;
        }

        if used > 4 {
            *leading_zeros = true;
        }
        let [hi, lo] = u16::try_from(n).ok()?.to_be_bytes();
        ip[i] = hi;
        ip[i + 1] = lo;
        i += 2;

        s = &s[used..];
        if s.is_empty() {
            break;
        }
        if s[0] != b':' || s.len() == 1 {
            return None;
        }
        s = &s[1..];
        if s[0] == b':' {
            if ellipsis.is_some() {
                return None;
            }
            ellipsis = Some(i);
            s = &s[1..];
            if s.is_empty() {
                break;
            }
        }
    }

    if !s.is_empty() {
        return None;
    }
    if i < 16 {
        // Expand the "::" to the missing zero fields.
        let at = ellipsis?;
        let gap = 16 - i;
        ip.copy_within(at..i, at + gap);
        ip[at..at + gap].fill(0);
    } else if ellipsis.is_some() {
        // "::" must stand for at least one zero field.
        return None;
    }
    Some(ip)
}

fn ipv4_mapped(v4: [u8; 4]) -> [u8; 16] {
    let mut ip = [0u8; 16];
    ip[10] = 0xff;
    ip[11] = 0xff;
    ip[12..].copy_from_slice(&v4);
    ip
}

/// `::ffff:a.b.c.d`, which Go's `To4` treats as IPv4.
fn is_ipv4_mapped(ip: &[u8; 16]) -> bool {
    ip[..10].iter().all(|b| *b == 0) && ip[10] == 0xff && ip[11] == 0xff
}

/// A 128-bit prefix mask with `ones` leading one bits.
fn prefix_mask(ones: u32) -> [u8; 16] {
    let value = u128::MAX
        .checked_shl(128u32.saturating_sub(ones))
        .unwrap_or(0);
    value.to_be_bytes()
}

fn format_ipv4(ip: &[u8; 16]) -> String {
    format!("{}.{}.{}.{}", ip[12], ip[13], ip[14], ip[15])
}

/// Go's `net.IP.String()` on a 16-byte address: IPv4-mapped prints dotted.
fn go_ip_string(ip: &[u8; 16]) -> String {
    if is_ipv4_mapped(ip) {
        format_ipv4(ip)
    } else {
        format_ipv6(ip)
    }
}

/// RFC 5952 text as Go prints it: lower-case hex, the first longest run of two or more zero
/// fields as "::". Written by hand because std prints IPv4-mapped addresses differently.
fn format_ipv6(ip: &[u8; 16]) -> String {
    let groups: Vec<u16> = ip
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .collect();
    // The first longest run of zero fields, if it spans at least two.
    let mut best: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < groups.len() {
        let run = groups[i..].iter().take_while(|g| **g == 0).count();
        if run >= 2 && best.is_none_or(|(_, len)| run > len) {
            best = Some((i, run));
        }
        i += run.max(1);
    }

    let mut out = String::new();
    let mut i = 0;
    while i < groups.len() {
        if let Some((start, len)) = best.filter(|(start, _)| *start == i) {
            out.push_str("::");
            i = start + len;
            continue;
        }
        let after_gap = best.is_some_and(|(start, len)| start + len == i);
        if i > 0 && !after_gap {
            out.push(':');
        }
        out.push_str(&format!("{:x}", groups[i]));
        i += 1;
    }
    out
}

// ---- error construction and value rendering ------------------------------------------

fn required(field: &str, detail: &str) -> FieldError {
    FieldError {
        field: field.to_owned(),
        error_type: ErrorType::Required,
        bad_value: None,
        detail: detail.to_owned(),
    }
}

fn forbidden(field: &str, detail: &str) -> FieldError {
    FieldError {
        field: field.to_owned(),
        error_type: ErrorType::Forbidden,
        bad_value: None,
        detail: detail.to_owned(),
    }
}

fn invalid(field: &str, bad_value: String, detail: String) -> FieldError {
    FieldError {
        field: field.to_owned(),
        error_type: ErrorType::Invalid,
        bad_value: Some(bad_value),
        detail,
    }
}

/// `field.NotSupported`: the detail lists the supported values, each Go-quoted.
fn not_supported(field: &str, bad_value: String, supported: &[&str]) -> FieldError {
    let list: Vec<String> = supported.iter().map(|v| quote(v)).collect();
    FieldError {
        field: field.to_owned(),
        error_type: ErrorType::Unsupported,
        bad_value: Some(bad_value),
        detail: format!("supported values: {}", list.join(", ")),
    }
}

/// How `%#v` prints `*[]networking.PolicyType`, the bad value of the "more than two" error.
fn go_policy_types_literal(types: &[String]) -> String {
    let items: Vec<String> = types.iter().map(|t| quote(t)).collect();
    format!("[]networking.PolicyType{{{}}}", items.join(", "))
}

/// Go's `strconv.Quote` (`%q`): double quotes, `\"` and `\\`, short escapes for the usual
/// control characters, `\xNN`/`\uNNNN`/`\UNNNNNNNN` for other non-printable characters.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if go_is_print(c) => out.push(c),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", u32::from(c)));
            }
            c if u32::from(c) < 0x1_0000 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push_str(&format!("\\U{:08x}", u32::from(c))),
        }
    }
    out.push('"');
    out
}

/// An approximation of Go's `strconv.IsPrint` without Unicode tables: ASCII is exact;
/// beyond it, controls, spaces other than U+0020, the common format characters, private use
/// and noncharacters are escaped. Unassigned code points are printed where Go would escape.
fn go_is_print(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    !matches!(
        u32::from(c),
        0xAD | 0x600..=0x605
            | 0x61C
            | 0x6DD
            | 0x70F
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0xE000..=0xF8FF
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0xFFFE..=0xFFFF
            | 0xF_0000..=0x10_FFFF
    )
}

// ---- tests ---------------------------------------------------------------------------

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    // Upstream texts, written out independently of the constants above.
    const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
    const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
    const NAME_PART_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
    const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
    const CIDR_MSG: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";
    const CHARSET_MSG: &str =
        "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)";
    const LETTER_MSG: &str = "must contain at least one letter (a-z)";
    const RANGE_MSG: &str = "must be between 1 and 65535, inclusive";

    fn object(metadata: Value, spec: Value) -> NetworkPolicyObject {
        serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": metadata,
            "spec": spec,
        }))
        .expect("test manifest decodes")
    }

    fn policy(spec: Value) -> NetworkPolicyObject {
        object(json!({"name": "np", "namespace": "default"}), spec)
    }

    fn check_with(np: &NetworkPolicyObject, strict_cidr: bool) -> Validation {
        validate_network_policy(np, &ValidationOptions { strict_cidr })
    }

    /// Rendered errors with default (strict) options.
    fn errors(np: &NetworkPolicyObject) -> Vec<String> {
        rendered(&validate_network_policy(np, &ValidationOptions::default()))
    }

    fn rendered(v: &Validation) -> Vec<String> {
        v.errors.iter().map(ToString::to_string).collect()
    }

    fn spec_errors(spec: Value) -> Vec<String> {
        errors(&policy(spec))
    }

    fn ingress_port(port: Value) -> Value {
        json!({"podSelector": {}, "ingress": [{"ports": [port]}]})
    }

    fn ingress_peer(peer: Value) -> Value {
        json!({"podSelector": {}, "ingress": [{"from": [peer]}]})
    }

    fn ip_block(block: Value) -> Value {
        ingress_peer(json!({"ipBlock": block}))
    }

    fn pod_selector(selector: Value) -> Value {
        json!({"podSelector": selector})
    }

    fn assert_valid(spec: Value) {
        let v = validate_network_policy(&policy(spec.clone()), &ValidationOptions::default());
        assert_eq!(v, Validation::default(), "expected valid: {spec}");
    }

    // ---- valid policies ----

    #[test]
    fn full_valid_policy_has_no_errors_or_warnings() {
        let np = object(
            json!({
                "name": "allow-web.v2",
                "namespace": "prod-1",
                "labels": {"app.kubernetes.io/name": "web", "tier": ""},
                "annotations": {"Example.com/Owner": "team"},
            }),
            json!({
                "podSelector": {
                    "matchLabels": {"app": "web"},
                    "matchExpressions": [
                        {"key": "example.com/env", "operator": "In", "values": ["prod", "Stage_1"]},
                        {"key": "canary", "operator": "DoesNotExist"},
                    ],
                },
                "ingress": [{
                    "from": [
                        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "front"}},
                         "podSelector": {"matchLabels": {"role": "client"}}},
                        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.2.3.4/32"]}},
                        {"ipBlock": {"cidr": "2001:db8::/32", "except": ["2001:db8:1::/48"]}},
                    ],
                    "ports": [
                        {"protocol": "TCP", "port": 80},
                        {"protocol": "UDP", "port": 5000, "endPort": 5100},
                        {"protocol": "SCTP", "port": "metrics-9"},
                        {"port": "http"},
                        {"protocol": "TCP"},
                    ],
                }],
                "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": 53, "protocol": "UDP"}]}],
                "policyTypes": ["Ingress", "Egress"],
            }),
        );
        assert_eq!(
            validate_network_policy(&np, &ValidationOptions::default()),
            Validation::default()
        );
    }

    #[test]
    fn minimal_policies_are_valid() {
        assert_valid(json!({}));
        assert_valid(json!({"podSelector": {}}));
        assert_valid(json!({"podSelector": {}, "ingress": [], "egress": []}));
    }

    #[test]
    fn default_options_are_strict() {
        assert!(ValidationOptions::default().strict_cidr);
    }

    // ---- metadata ----

    #[test]
    fn m_name_1_invalid_characters() {
        let np = object(json!({"name": "Foo_Bar"}), json!({}));
        assert_eq!(
            errors(&np),
            vec![format!(
                "metadata.name: Invalid value: \"Foo_Bar\": {SUBDOMAIN_MSG}"
            )]
        );
    }

    #[test]
    fn m_name_2_too_long() {
        let long = "a".repeat(254);
        let np = object(json!({"name": long}), json!({}));
        assert_eq!(
            errors(&np),
            vec![format!(
                "metadata.name: Invalid value: \"{long}\": must be no more than 253 characters"
            )]
        );
        // 253 is still fine.
        let np = object(json!({"name": "a".repeat(253)}), json!({}));
        assert!(errors(&np).is_empty());
    }

    #[test]
    fn m_name_missing_and_generate_name() {
        let np = object(json!({}), json!({}));
        assert_eq!(
            errors(&np),
            vec!["metadata.name: Required value: name or generateName is required"]
        );
        let np = object(json!({"generateName": "web-"}), json!({}));
        assert!(errors(&np).is_empty());
        let np = object(json!({"generateName": "Web-"}), json!({}));
        assert_eq!(
            errors(&np),
            vec![format!(
                "metadata.generateName: Invalid value: \"Web-\": {SUBDOMAIN_MSG}"
            )]
        );
    }

    #[test]
    fn m_name_namespace_is_a_dns_label() {
        let np = object(json!({"name": "np", "namespace": "a.b"}), json!({}));
        assert_eq!(
            errors(&np),
            vec!["metadata.namespace: Invalid value: \"a.b\": must not contain dots"]
        );
        let np = object(json!({"name": "np", "namespace": "Prod"}), json!({}));
        assert_eq!(
            errors(&np),
            vec![format!(
                "metadata.namespace: Invalid value: \"Prod\": {LABEL_MSG}"
            )]
        );
    }

    #[test]
    fn metadata_labels_annotations_generation() {
        let np = object(
            json!({
                "name": "np",
                "generation": -1,
                "labels": {"a/b/c": "ok", "good": "-bad-"},
                "annotations": {"Example.com/Owner": "x", "bad key": "y"},
            }),
            json!({}),
        );
        assert_eq!(
            errors(&np),
            vec![
                "metadata.generation: Invalid value: -1: must be greater than or equal to 0".to_owned(),
                "metadata.labels: Invalid value: \"a/b/c\": a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')".to_owned(),
                format!("metadata.labels: Invalid value: \"-bad-\": {LABEL_VALUE_MSG}"),
                format!("metadata.annotations: Invalid value: \"bad key\": {NAME_PART_MSG}"),
            ]
        );
        let np = object(
            json!({"name": "np", "annotations": {"big": "x".repeat(256 * 1024)}}),
            json!({}),
        );
        assert_eq!(
            errors(&np),
            vec!["metadata.annotations: Too long: may not be more than 262144 bytes"]
        );
    }

    // ---- ports ----

    #[test]
    fn m_proto_unsupported() {
        assert_eq!(
            spec_errors(ingress_port(json!({"protocol": "ICMP", "port": 80}))),
            vec![
                "spec.ingress[0].ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"TCP\", \"UDP\", \"SCTP\""
            ]
        );
    }

    #[test]
    fn m_proto_case_sensitive() {
        assert_eq!(
            spec_errors(ingress_port(json!({"protocol": "tcp"}))),
            vec![
                "spec.ingress[0].ports[0].protocol: Unsupported value: \"tcp\": supported values: \"TCP\", \"UDP\", \"SCTP\""
            ]
        );
        assert_eq!(
            spec_errors(ingress_port(json!({"protocol": ""}))),
            vec![
                "spec.ingress[0].ports[0].protocol: Unsupported value: \"\": supported values: \"TCP\", \"UDP\", \"SCTP\""
            ]
        );
    }

    #[test]
    fn m_port_0_out_of_range() {
        for port in [0i64, 65536, -1] {
            assert_eq!(
                spec_errors(ingress_port(json!({"port": port}))),
                vec![format!(
                    "spec.ingress[0].ports[0].port: Invalid value: {port}: {RANGE_MSG}"
                )]
            );
        }
        assert_valid(ingress_port(json!({"port": 1})));
        assert_valid(ingress_port(json!({"port": 65535})));
    }

    #[test]
    fn m_end_lt() {
        assert_eq!(
            spec_errors(ingress_port(json!({"port": 80, "endPort": 79}))),
            vec![
                "spec.ingress[0].ports[0].endPort: Invalid value: 79: must be greater than or equal to `port`"
            ]
        );
    }

    #[test]
    fn m_end_eq() {
        assert_valid(ingress_port(json!({"port": 80, "endPort": 80})));
    }

    #[test]
    fn m_end_range() {
        assert_eq!(
            spec_errors(ingress_port(json!({"port": 80, "endPort": 70000}))),
            vec![format!(
                "spec.ingress[0].ports[0].endPort: Invalid value: 70000: {RANGE_MSG}"
            )]
        );
        // Both checks fire for an endPort that is below port and out of range.
        assert_eq!(
            spec_errors(ingress_port(json!({"port": 80, "endPort": 0}))),
            vec![
                "spec.ingress[0].ports[0].endPort: Invalid value: 0: must be greater than or equal to `port`".to_owned(),
                format!("spec.ingress[0].ports[0].endPort: Invalid value: 0: {RANGE_MSG}"),
            ]
        );
    }

    #[test]
    fn m_end_named() {
        assert_eq!(
            spec_errors(ingress_port(json!({"port": "http", "endPort": 90}))),
            vec![
                "spec.ingress[0].ports[0].endPort: Invalid value: 90: may not be specified when `port` is non-numeric"
            ]
        );
    }

    #[test]
    fn m_end_noport() {
        assert_eq!(
            spec_errors(ingress_port(json!({"endPort": 90}))),
            vec![
                "spec.ingress[0].ports[0].endPort: Invalid value: 90: may not be specified when `port` is not specified"
            ]
        );
    }

    #[test]
    fn m_pname_1_special_characters() {
        assert_eq!(
            spec_errors(ingress_port(json!({"port": "!@#$"}))),
            vec![
                format!("spec.ingress[0].ports[0].port: Invalid value: \"!@#$\": {CHARSET_MSG}"),
                format!("spec.ingress[0].ports[0].port: Invalid value: \"!@#$\": {LETTER_MSG}"),
            ]
        );
    }

    #[test]
    fn m_pname_2_shape_rules() {
        let p = "spec.ingress[0].ports[0].port";
        let cases: [(&str, Vec<String>); 5] = [
            (
                "web--svc",
                vec![format!(
                    "{p}: Invalid value: \"web--svc\": must not contain consecutive hyphens"
                )],
            ),
            (
                "-web",
                vec![format!(
                    "{p}: Invalid value: \"-web\": must not begin or end with a hyphen"
                )],
            ),
            (
                "web-",
                vec![format!(
                    "{p}: Invalid value: \"web-\": must not begin or end with a hyphen"
                )],
            ),
            (
                "1234",
                vec![format!("{p}: Invalid value: \"1234\": {LETTER_MSG}")],
            ),
            (
                "abcdefghijklmnop",
                vec![format!(
                    "{p}: Invalid value: \"abcdefghijklmnop\": must be no more than 15 characters"
                )],
            ),
        ];
        for (name, expected) in cases {
            assert_eq!(
                spec_errors(ingress_port(json!({"port": name}))),
                expected,
                "{name}"
            );
        }
        // A numeric string is a name, not a number.
        assert_eq!(
            spec_errors(ingress_port(json!({"port": "80"}))),
            vec![format!("{p}: Invalid value: \"80\": {LETTER_MSG}")]
        );
        assert_valid(ingress_port(json!({"port": "abcdefghijklmno"})));
    }

    #[test]
    fn m_pname_3_uppercase() {
        assert_eq!(
            spec_errors(ingress_port(json!({"port": "HTTP"}))),
            vec![
                format!("spec.ingress[0].ports[0].port: Invalid value: \"HTTP\": {CHARSET_MSG}"),
                format!("spec.ingress[0].ports[0].port: Invalid value: \"HTTP\": {LETTER_MSG}"),
            ]
        );
    }

    // ---- peers ----

    #[test]
    fn m_peer_empty() {
        assert_eq!(
            spec_errors(ingress_peer(json!({}))),
            vec!["spec.ingress[0].from[0]: Required value: must specify a peer"]
        );
        assert_eq!(
            spec_errors(json!({"egress": [{"to": [{"podSelector": {}}, {}]}]})),
            vec!["spec.egress[0].to[1]: Required value: must specify a peer"]
        );
    }

    #[test]
    fn m_peer_emptylist() {
        assert_valid(json!({"podSelector": {}, "ingress": [{"from": []}]}));
        assert_valid(json!({"podSelector": {}, "ingress": [{}]}));
        assert_valid(json!({"podSelector": {}, "egress": [{"to": []}]}));
    }

    #[test]
    fn m_peer_ipblock_and_selector() {
        assert_eq!(
            spec_errors(ingress_peer(
                json!({"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}})
            )),
            vec![
                "spec.ingress[0].from[0]: Forbidden: may not specify both ipBlock and another peer"
            ]
        );
        assert_eq!(
            spec_errors(ingress_peer(
                json!({"ipBlock": {"cidr": "10.0.0.0/8"}, "namespaceSelector": {}})
            )),
            vec![
                "spec.ingress[0].from[0]: Forbidden: may not specify both ipBlock and another peer"
            ]
        );
    }

    #[test]
    fn m_peer_namespace_and_pod_selector() {
        assert_valid(ingress_peer(
            json!({"namespaceSelector": {"matchLabels": {"team": "a"}}, "podSelector": {"matchLabels": {"app": "b"}}}),
        ));
    }

    // ---- ipBlock ----

    #[test]
    fn m_ip_empty() {
        assert_eq!(
            spec_errors(ip_block(json!({"cidr": "", "except": ["junk"]}))),
            vec!["spec.ingress[0].from[0].ipBlock.cidr: Required value"]
        );
        assert_eq!(
            spec_errors(ip_block(json!({}))),
            vec!["spec.ingress[0].from[0].ipBlock.cidr: Required value"]
        );
    }

    #[test]
    fn m_ip_bad() {
        for cidr in [
            "10.0.0.0/33",
            "10.0.0/8",
            "foo",
            "10.0.0.0",
            "::/129",
            "10.0.0.0/-1",
            "10.0.0.0/ 8",
            "fe80::1%eth0/64",
        ] {
            assert_eq!(
                spec_errors(ip_block(json!({"cidr": cidr, "except": ["10.1.0.0/16"]}))),
                vec![format!(
                    "spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"{cidr}\": {CIDR_MSG}"
                )],
                "{cidr}"
            );
        }
    }

    #[test]
    fn m_ip_strict_1_bits_beyond_prefix() {
        let np = policy(ip_block(json!({"cidr": "10.0.0.5/8"})));
        assert_eq!(
            rendered(&check_with(&np, true)),
            vec![
                "spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"10.0.0.5/8\": must not have bits set beyond the prefix length"
            ]
        );
        assert_eq!(
            check_with(&np, false),
            Validation {
                errors: vec![],
                warnings: vec!["spec.ingress[0].from[0].ipBlock.cidr: CIDR value \"10.0.0.5/8\" is ambiguous in this context (should be \"10.0.0.0/8\" or \"10.0.0.5/32\"?)".to_owned()],
            }
        );
        let np = policy(ip_block(json!({"cidr": "2001:db8::1/64"})));
        assert_eq!(
            check_with(&np, false).warnings,
            vec![
                "spec.ingress[0].from[0].ipBlock.cidr: CIDR value \"2001:db8::1/64\" is ambiguous in this context (should be \"2001:db8::/64\" or \"2001:db8::1/128\"?)"
            ]
        );
    }

    #[test]
    fn m_ip_strict_2_leading_zeros() {
        for cidr in ["010.000.000.000/8", "10.0.0.0/08"] {
            let np = policy(ip_block(json!({"cidr": cidr})));
            assert_eq!(
                rendered(&check_with(&np, true)),
                vec![format!(
                    "spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"{cidr}\": must not have leading 0s in IP or prefix length"
                )]
            );
            assert_eq!(
                check_with(&np, false),
                Validation {
                    errors: vec![],
                    warnings: vec![format!(
                        "spec.ingress[0].from[0].ipBlock.cidr: non-standard CIDR value \"{cidr}\" will be considered invalid in a future Kubernetes release: use \"10.0.0.0/8\""
                    )],
                }
            );
        }
    }

    #[test]
    fn m_ip_strict_3_ipv4_mapped() {
        let np = policy(ip_block(json!({"cidr": "::ffff:10.0.0.0/104"})));
        assert_eq!(
            rendered(&check_with(&np, true)),
            vec![
                "spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"::ffff:10.0.0.0/104\": must not have an IPv4-mapped IPv6 address"
            ]
        );
        assert_eq!(
            check_with(&np, false),
            Validation {
                errors: vec![],
                warnings: vec!["spec.ingress[0].from[0].ipBlock.cidr: non-standard CIDR value \"::ffff:10.0.0.0/104\" will be considered invalid in a future Kubernetes release: use \"10.0.0.0/8\"".to_owned()],
            }
        );
    }

    #[test]
    fn strict_errors_suppress_warnings_and_excepts_still_checked() {
        let np = policy(ip_block(
            json!({"cidr": "10.0.0.5/8", "except": ["192.168.0.0/16"]}),
        ));
        let v = check_with(&np, true);
        assert_eq!(
            rendered(&v),
            vec![
                "spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"10.0.0.5/8\": must not have bits set beyond the prefix length".to_owned(),
                "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"192.168.0.0/16\": must be a strict subset of `cidr`".to_owned(),
            ]
        );
        assert!(v.warnings.is_empty());
    }

    #[test]
    fn non_canonical_ipv6_warns_in_both_modes() {
        let np = policy(ip_block(json!({"cidr": "2001:DB8:0::/48"})));
        for strict in [true, false] {
            assert_eq!(
                check_with(&np, strict),
                Validation {
                    errors: vec![],
                    warnings: vec!["spec.ingress[0].from[0].ipBlock.cidr: IPv6 CIDR value \"2001:DB8:0::/48\" should be in RFC 5952 canonical format (\"2001:db8::/48\")".to_owned()],
                }
            );
        }
    }

    #[test]
    fn m_exc_out() {
        assert_eq!(
            spec_errors(ip_block(
                json!({"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]})
            )),
            vec![
                "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"192.168.0.0/16\": must be a strict subset of `cidr`"
            ]
        );
    }

    #[test]
    fn m_exc_eq_and_family() {
        assert_eq!(
            spec_errors(ip_block(
                json!({"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8", "fd00::/64"]})
            )),
            vec![
                "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"10.0.0.0/8\": must be a strict subset of `cidr`",
                "spec.ingress[0].from[0].ipBlock.except[1]: Invalid value: \"fd00::/64\": must be a strict subset of `cidr`",
            ]
        );
        assert_eq!(
            spec_errors(ip_block(
                json!({"cidr": "fd00::/8", "except": ["10.0.0.0/16"]})
            )),
            vec![
                "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"10.0.0.0/16\": must be a strict subset of `cidr`"
            ]
        );
    }

    #[test]
    fn m_exc_bad_except_is_reported_and_skipped() {
        assert_eq!(
            spec_errors(ip_block(
                json!({"cidr": "10.0.0.0/8", "except": ["", "10.1.0.0/16", "10.300.0.0/16"]})
            )),
            vec![
                format!(
                    "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"\": {CIDR_MSG}"
                ),
                format!(
                    "spec.ingress[0].from[0].ipBlock.except[2]: Invalid value: \"10.300.0.0/16\": {CIDR_MSG}"
                ),
            ]
        );
    }

    #[test]
    fn m_exc_ok() {
        assert_valid(ip_block(
            json!({"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}),
        ));
        assert_valid(ip_block(
            json!({"cidr": "::/0", "except": ["fd00::/8", "2001:db8::1/128"]}),
        ));
        assert_valid(ip_block(
            json!({"cidr": "10.0.0.0/8", "except": ["10.0.0.0/9"]}),
        ));
    }

    #[test]
    fn egress_ip_block_paths() {
        assert_eq!(
            spec_errors(
                json!({"egress": [{}, {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]})
            ),
            vec![
                "spec.egress[1].to[0].ipBlock.except[0]: Invalid value: \"11.0.0.0/16\": must be a strict subset of `cidr`"
            ]
        );
    }

    // ---- selectors ----

    #[test]
    fn m_sel_key() {
        assert_eq!(
            spec_errors(pod_selector(
                json!({"matchLabels": {"NoUppercaseOrSpecialCharsLike=Equals": "b"}})
            )),
            vec![format!(
                "spec.podSelector.matchLabels: Invalid value: \"NoUppercaseOrSpecialCharsLike=Equals\": {NAME_PART_MSG}"
            )]
        );
    }

    #[test]
    fn m_sel_key_2() {
        assert_eq!(
            spec_errors(pod_selector(json!({"matchLabels": {"a/b/c": "x"}}))),
            vec![
                "spec.podSelector.matchLabels: Invalid value: \"a/b/c\": a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ]
        );
        assert_eq!(
            spec_errors(pod_selector(json!({"matchLabels": {"/a": "x"}}))),
            vec![
                "spec.podSelector.matchLabels: Invalid value: \"/a\": prefix part must be non-empty"
            ]
        );
        assert_eq!(
            spec_errors(pod_selector(json!({"matchLabels": {"Example.com/a": "x"}}))),
            vec![format!(
                "spec.podSelector.matchLabels: Invalid value: \"Example.com/a\": prefix part {SUBDOMAIN_MSG}"
            )]
        );
        let long = "a".repeat(64);
        assert_eq!(
            spec_errors(pod_selector(json!({"matchLabels": {long.clone(): "x"}}))),
            vec![format!(
                "spec.podSelector.matchLabels: Invalid value: \"{long}\": name part must be no more than 63 characters"
            )]
        );
        assert_eq!(
            spec_errors(pod_selector(json!({"matchLabels": {"example.com/": "x"}}))),
            vec![
                "spec.podSelector.matchLabels: Invalid value: \"example.com/\": name part must be non-empty".to_owned(),
                format!("spec.podSelector.matchLabels: Invalid value: \"example.com/\": {NAME_PART_MSG}"),
            ]
        );
    }

    #[test]
    fn m_sel_val() {
        assert_eq!(
            spec_errors(pod_selector(json!({"matchLabels": {"a": "-bad-"}}))),
            vec![format!(
                "spec.podSelector.matchLabels: Invalid value: \"-bad-\": {LABEL_VALUE_MSG}"
            )]
        );
        let long = "v".repeat(64);
        assert_eq!(
            spec_errors(pod_selector(json!({"matchLabels": {"a": long.clone()}}))),
            vec![format!(
                "spec.podSelector.matchLabels: Invalid value: \"{long}\": must be no more than 63 characters"
            )]
        );
    }

    #[test]
    fn m_sel_op() {
        assert_eq!(
            spec_errors(pod_selector(
                json!({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]})
            )),
            vec![
                "spec.podSelector.matchExpressions[0].operator: Invalid value: \"Equals\": not a valid selector operator"
            ]
        );
    }

    #[test]
    fn m_sel_in_empty() {
        for op in ["In", "NotIn"] {
            assert_eq!(
                spec_errors(pod_selector(
                    json!({"matchExpressions": [{"key": "a", "operator": op, "values": []}]})
                )),
                vec![
                    "spec.podSelector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
                ]
            );
        }
        assert_eq!(
            spec_errors(pod_selector(
                json!({"matchExpressions": [{"key": "a", "operator": "In"}]})
            )),
            vec![
                "spec.podSelector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
            ]
        );
    }

    #[test]
    fn m_sel_exists_val() {
        for op in ["Exists", "DoesNotExist"] {
            assert_eq!(
                spec_errors(pod_selector(
                    json!({"matchExpressions": [{"key": "a", "operator": op, "values": ["x"]}]})
                )),
                vec![
                    "spec.podSelector.matchExpressions[0].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                ]
            );
        }
    }

    #[test]
    fn m_sel_vals_bad() {
        assert_eq!(
            spec_errors(pod_selector(
                json!({"matchExpressions": [{"key": "a", "operator": "In", "values": ["ok", "bad value"]}]})
            )),
            vec![format!(
                "spec.podSelector.matchExpressions[0].values[1]: Invalid value: \"bad value\": {LABEL_VALUE_MSG}"
            )]
        );
    }

    #[test]
    fn selector_key_errors_and_peer_paths() {
        assert_eq!(
            spec_errors(
                json!({"egress": [{"to": [{"namespaceSelector": {"matchExpressions": [{"key": "ok", "operator": "Exists"}, {"key": "/x", "operator": "NotIn", "values": []}]}}]}]})
            ),
            vec![
                "spec.egress[0].to[0].namespaceSelector.matchExpressions[1].values: Required value: must be specified when `operator` is 'In' or 'NotIn'",
                "spec.egress[0].to[0].namespaceSelector.matchExpressions[1].key: Invalid value: \"/x\": prefix part must be non-empty",
            ]
        );
        assert_eq!(
            spec_errors(ingress_peer(
                json!({"podSelector": {"matchLabels": {"a": "b c"}}})
            )),
            vec![format!(
                "spec.ingress[0].from[0].podSelector.matchLabels: Invalid value: \"b c\": {LABEL_VALUE_MSG}"
            )]
        );
    }

    #[test]
    fn identical_messages_are_reported_once() {
        assert_eq!(
            spec_errors(pod_selector(
                json!({"matchLabels": {"a": "-x-", "b": "-x-"}})
            )),
            vec![format!(
                "spec.podSelector.matchLabels: Invalid value: \"-x-\": {LABEL_VALUE_MSG}"
            )]
        );
    }

    // ---- policyTypes ----

    #[test]
    fn m_pt_3_too_many_returns_early() {
        assert_eq!(
            spec_errors(json!({"policyTypes": ["Ingress", "Egress", "bogus"]})),
            vec![
                "spec.policyTypes: Invalid value: []networking.PolicyType{\"Ingress\", \"Egress\", \"bogus\"}: may not specify more than two policyTypes"
            ]
        );
        assert_eq!(
            spec_errors(json!({"policyTypes": ["Ingress", "Egress", "Ingress"]})),
            vec![
                "spec.policyTypes: Invalid value: []networking.PolicyType{\"Ingress\", \"Egress\", \"Ingress\"}: may not specify more than two policyTypes"
            ]
        );
    }

    #[test]
    fn m_pt_bad() {
        assert_eq!(
            spec_errors(json!({"policyTypes": ["ingress"]})),
            vec![
                "spec.policyTypes[0]: Unsupported value: \"ingress\": supported values: \"Ingress\", \"Egress\""
            ]
        );
    }

    #[test]
    fn m_pt_dup_and_empty() {
        assert_valid(json!({"policyTypes": ["Ingress", "Ingress"]}));
        assert_valid(json!({"policyTypes": []}));
        assert_valid(json!({"policyTypes": ["Egress"]}));
    }

    // ---- ordering across the object ----

    #[test]
    fn errors_follow_apiserver_order() {
        let np = object(
            json!({"name": "Bad"}),
            json!({
                "podSelector": {"matchLabels": {"a": "-"}},
                "ingress": [{"from": [{}], "ports": [{"port": 0}]}],
                "egress": [{"ports": [{"protocol": "ICMP"}]}],
                "policyTypes": ["x"],
            }),
        );
        let fields: Vec<String> = validate_network_policy(&np, &ValidationOptions::default())
            .errors
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "metadata.name",
                "spec.podSelector.matchLabels",
                "spec.ingress[0].ports[0].port",
                "spec.ingress[0].from[0]",
                "spec.egress[0].ports[0].protocol",
                "spec.policyTypes[0]",
            ]
        );
    }

    // ---- helpers ----

    #[test]
    fn field_error_display_and_structure() {
        let v = validate_network_policy(
            &policy(ingress_port(json!({"port": 0}))),
            &ValidationOptions::default(),
        );
        assert_eq!(
            v.errors,
            vec![FieldError {
                field: "spec.ingress[0].ports[0].port".to_owned(),
                error_type: ErrorType::Invalid,
                bad_value: Some("0".to_owned()),
                detail: RANGE_MSG.to_owned(),
            }]
        );
        let e = FieldError {
            field: "f".to_owned(),
            error_type: ErrorType::Duplicate,
            bad_value: Some("\"x\"".to_owned()),
            detail: String::new(),
        };
        assert_eq!(e.to_string(), "f: Duplicate value: \"x\"");
        let e = FieldError {
            field: "f".to_owned(),
            error_type: ErrorType::TooLong,
            bad_value: None,
            detail: "may not be more than 3 bytes".to_owned(),
        };
        assert_eq!(e.to_string(), "f: Too long: may not be more than 3 bytes");
    }

    #[test]
    fn go_quoting() {
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quote("\t\n\u{0}\u{7f}"), "\"\\t\\n\\x00\\x7f\"");
        assert_eq!(quote("rā\u{200b}"), "\"rā\\u200b\"");
        assert_eq!(
            spec_errors(pod_selector(json!({"matchLabels": {"a": "x\ny"}}))),
            vec![format!(
                "spec.podSelector.matchLabels: Invalid value: \"x\\ny\": {LABEL_VALUE_MSG}"
            )]
        );
    }

    #[test]
    fn dns_and_port_name_helpers() {
        assert!(is_dns1123_subdomain("a.b-c.d1").is_empty());
        assert_eq!(is_dns1123_subdomain(""), vec![SUBDOMAIN_MSG]);
        assert_eq!(is_dns1123_subdomain("a..b"), vec![SUBDOMAIN_MSG]);
        assert_eq!(
            is_dns1123_subdomain(&format!("-{}", "a".repeat(253))),
            vec![
                "must be no more than 253 characters".to_owned(),
                SUBDOMAIN_MSG.to_owned()
            ]
        );
        assert!(is_dns1123_label("abc-1").is_empty());
        assert_eq!(is_dns1123_label("a.b"), vec!["must not contain dots"]);
        assert_eq!(is_dns1123_label("a_b"), vec![LABEL_MSG]);
        assert_eq!(
            is_dns1123_label(&"a".repeat(64)),
            vec!["must be no more than 63 characters"]
        );
        assert!(is_valid_port_name("http-alt2").is_empty());
        assert_eq!(is_valid_port_name(""), vec![CHARSET_MSG, LETTER_MSG]);
        assert_eq!(
            is_valid_port_name("-Ab--"),
            vec![
                CHARSET_MSG,
                "must not contain consecutive hyphens",
                "must not begin or end with a hyphen",
            ]
        );
    }

    #[test]
    fn generate_name_masking_quirk() {
        // Upstream masks "x-" as "a", so "x-" passes; "-" alone is not masked.
        assert!(name_is_dns_subdomain("x-", true).is_empty());
        assert_eq!(name_is_dns_subdomain("-", true), vec![SUBDOMAIN_MSG]);
        // "a.-" becomes "aa": valid, although "a.-xxxxx" would not be.
        assert!(name_is_dns_subdomain("a.-", true).is_empty());
        assert_eq!(name_is_dns_subdomain("web-", false), vec![SUBDOMAIN_MSG]);
    }

    #[test]
    fn parse_cidr_checked_results() {
        assert_eq!(
            parse_cidr_checked("10.1.2.0/24", true),
            Ok((IpAddr::V4(Ipv4Addr::new(10, 1, 2, 0)), 24, vec![]))
        );
        assert_eq!(
            parse_cidr_checked("10.1.2.3/24", false),
            Ok((
                IpAddr::V4(Ipv4Addr::new(10, 1, 2, 0)),
                24,
                vec!["CIDR value \"10.1.2.3/24\" is ambiguous in this context (should be \"10.1.2.0/24\" or \"10.1.2.3/32\"?)".to_owned()]
            ))
        );
        assert_eq!(
            parse_cidr_checked("10.1.2.3/24", true),
            Err("must not have bits set beyond the prefix length".to_owned())
        );
        assert_eq!(
            parse_cidr_checked("10.1.2.3", true),
            Err(CIDR_MSG.to_owned())
        );
        assert_eq!(
            parse_cidr_checked("2001:db8::/32", true),
            Ok((IpAddr::V6("2001:db8::".parse().unwrap()), 32, vec![]))
        );
        // Leading zeros and a mapped address with host bits: both warnings, Go's order.
        assert_eq!(
            parse_cidr_checked("::ffff:010.0.0.1/104", false),
            Ok((
                IpAddr::V6("::ffff:10.0.0.0".parse().unwrap()),
                104,
                vec![
                    "CIDR value \"::ffff:010.0.0.1/104\" is ambiguous in this context (should be \"10.0.0.0/8\" or \"10.0.0.1/128\"?)".to_owned(),
                    "non-standard CIDR value \"::ffff:010.0.0.1/104\" will be considered invalid in a future Kubernetes release: use \"10.0.0.0/8\"".to_owned(),
                ]
            ))
        );
        assert_eq!(
            parse_cidr_checked("::ffff:010.0.0.1/104", true),
            Err("must not have leading 0s in IP or prefix length".to_owned())
        );
        // Over-long hex fields are leading zeros to netip.
        assert_eq!(
            parse_cidr_checked("2001:0db8:00000::/48", true),
            Err("must not have leading 0s in IP or prefix length".to_owned())
        );
    }

    #[test]
    fn go_cidr_parser_edges() {
        let ok = |s: &str| GoCidr::parse(s).is_some();
        for s in [
            "0.0.0.0/0",
            "::/0",
            "::/128",
            "1::/16",
            "1:2:3:4:5:6:7:8/128",
            "::1.2.3.4/128",
            "1:2:3:4:5:6:1.2.3.4/128",
            "FE80::/10",
            "10.0.0.0/000032",
        ] {
            assert!(ok(s), "{s}");
        }
        for s in [
            "",
            "/8",
            "10.0.0.0/",
            "10.0.0.0/8/8",
            "1:2:3:4:5:6:7:8::/64",
            "1::2::3/64",
            ":1::/64",
            "1:2:3:4:5:6:7:1.2.3.4/128",
            "10000::/16",
            "256.0.0.0/8",
            "1.2.3.4.5/32",
            "::ffff:1.2.3/104",
            "10.0.0.0/+8",
        ] {
            assert!(!ok(s), "{s}");
        }
        // Go's IPNet.String for the "use ..." hints.
        let s = |c: &str| GoCidr::parse(c).unwrap().go_network_string();
        assert_eq!(s("::ffff:10.0.0.0/96"), "0.0.0.0/0");
        assert_eq!(s("::ffff:10.0.0.0/80"), "::/80");
        assert_eq!(s("1:0:0:1:0:0:0:1/128"), "1:0:0:1::1/128");
        assert_eq!(s("1:0:1:0:1:0:1:0/128"), "1:0:1:0:1:0:1:0/128");
        assert_eq!(s("0:0:1:0:0:1:0:0/128"), "::1:0:0:1:0:0/128");
        assert_eq!(s("::1.2.3.4/128"), "::102:304/128");
        // An IPv4-mapped except inside an IPv4 cidr passes the subset test, as in Go.
        let cidr = GoCidr::parse("10.0.0.0/8").unwrap();
        assert!(cidr.contains(&GoCidr::parse("::ffff:10.1.0.0/112").unwrap().network16()));
        assert!(!cidr.contains(&GoCidr::parse("::a01:0/112").unwrap().network16()));
    }
}

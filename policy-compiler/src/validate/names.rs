//! Label selectors and the apimachinery name checks: qualified names, label values,
//! DNS-1123, as hand-written equivalents of the upstream regular expressions.

use super::*;

/// `ValidateLabelSelectorRequirement`: operator (with its values rule), key, then each value.
pub(super) fn validate_selector_requirement(
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
pub(super) fn is_qualified_name(value: &str) -> Vec<String> {
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
pub(super) fn is_valid_label_value(value: &str) -> Vec<String> {
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
pub(super) fn matches_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let lower_alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    b.first().is_some_and(lower_alnum)
        && b.last().is_some_and(lower_alnum)
        && b.iter().all(|c| lower_alnum(c) || *c == b'-')
}

/// `^label(\.label)*$`: no empty component, so no leading, trailing or doubled dots.
pub(super) fn matches_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(matches_dns1123_label)
}

/// `^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$`
pub(super) fn matches_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// `validation.MaxLenError`.
pub(super) fn max_len_error(max: usize) -> String {
    format!("must be no more than {max} characters")
}

/// `validation.RegexError`, including its odd `'x',  or 'y', ` spacing.
pub(super) fn regex_error(msg: &str, re: &str, examples: &[&str]) -> String {
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

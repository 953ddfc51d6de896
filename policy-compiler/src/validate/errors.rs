//! Building `FieldError`s and rendering bad values the way the apiserver prints them
//! (Go `%q`, `%#v`).

use super::*;

pub(super) fn required(field: &str, detail: &str) -> FieldError {
    FieldError {
        field: field.to_owned(),
        error_type: ErrorType::Required,
        bad_value: None,
        detail: detail.to_owned(),
    }
}

pub(super) fn forbidden(field: &str, detail: &str) -> FieldError {
    FieldError {
        field: field.to_owned(),
        error_type: ErrorType::Forbidden,
        bad_value: None,
        detail: detail.to_owned(),
    }
}

pub(super) fn invalid(field: &str, bad_value: String, detail: String) -> FieldError {
    FieldError {
        field: field.to_owned(),
        error_type: ErrorType::Invalid,
        bad_value: Some(bad_value),
        detail,
    }
}

/// `field.NotSupported`: the detail lists the supported values, each Go-quoted.
pub(super) fn not_supported(field: &str, bad_value: String, supported: &[&str]) -> FieldError {
    let list: Vec<String> = supported.iter().map(|v| quote(v)).collect();
    FieldError {
        field: field.to_owned(),
        error_type: ErrorType::Unsupported,
        bad_value: Some(bad_value),
        detail: format!("supported values: {}", list.join(", ")),
    }
}

/// How `%#v` prints `*[]networking.PolicyType`, the bad value of the "more than two" error.
pub(super) fn go_policy_types_literal(types: &[String]) -> String {
    let items: Vec<String> = types.iter().map(|t| quote(t)).collect();
    format!("[]networking.PolicyType{{{}}}", items.join(", "))
}

/// Go's `strconv.Quote` (`%q`): double quotes, `\"` and `\\`, short escapes for the usual
/// control characters, `\xNN`/`\uNNNN`/`\UNNNNNNNN` for other non-printable characters.
pub(super) fn quote(s: &str) -> String {
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
pub(super) fn go_is_print(c: char) -> bool {
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

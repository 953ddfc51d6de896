//! Hubble's output formats for flows: `compact` (one line), `dict` (a block per flow),
//! `table`, and `json`/`jsonpb` (the line as logged).

use std::fmt::Write as _;

use crate::schema::{EVENT_TYPE_DROP, Flow, Line, LostEvents, match_type_name};
use crate::time;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Compact,
    Dict,
    Table,
    Json,
    JsonPb,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "compact" => Format::Compact,
            "dict" => Format::Dict,
            "table" => Format::Table,
            "json" => Format::Json,
            "jsonpb" => Format::JsonPb,
            _ => return None,
        })
    }
}

fn endpoint(f: &Flow, src: bool) -> String {
    let (ep, ip, port) = {
        let (_, sp, dp) = f.l4_ports();
        let ip = f.ip.as_ref();
        if src {
            (&f.source, ip.map(|i| i.source.as_ref()), sp)
        } else {
            (&f.destination, ip.map(|i| i.destination.as_ref()), dp)
        }
    };
    let mut s = if !ep.pod_name.is_empty() {
        format!("{}/{}", ep.namespace, ep.pod_name)
    } else {
        let ip = ip.unwrap_or("?");
        if ip.contains(':') && port != 0 {
            format!("[{ip}]")
        } else {
            ip.to_string()
        }
    };
    if port != 0 {
        let _ = write!(s, ":{port}");
    }
    s
}

fn id_suffix(ep: &crate::schema::Endpoint) -> String {
    if !ep.pod_name.is_empty() {
        format!("(ID:{})", ep.identity)
    } else {
        match ep.labels.first() {
            Some(l) => format!("({l})"),
            None => format!("(ID:{})", ep.identity),
        }
    }
}

/// `policy-verdict:L3-L4 INGRESS` or `POLICY_DENIED` (a drop event).
pub fn type_text(f: &Flow) -> String {
    if f.event_type.r#type == EVENT_TYPE_DROP {
        f.drop_reason_desc.to_string()
    } else {
        format!(
            "policy-verdict:{} {}",
            match_type_name(f.policy_match_type),
            f.traffic_direction
        )
    }
}

fn verdict_word<'a>(f: &'a Flow<'_>) -> &'a str {
    if f.event_type.r#type == EVENT_TYPE_DROP {
        return "DROPPED";
    }
    match f.verdict.as_ref() {
        "FORWARDED" => "ALLOWED",
        "DROPPED" => "DENIED",
        "AUDIT" => "AUDITED",
        v => v,
    }
}

fn policy_names(f: &Flow) -> String {
    let by: Vec<String> = if f.verdict == "FORWARDED" || f.verdict == "REDIRECTED" {
        f.ingress_allowed_by
            .iter()
            .chain(&f.egress_allowed_by)
            .map(|p| format!("{} ({})", p.name, p.kind))
            .collect()
    } else {
        f.denied_by()
            .map(|p| format!("{} ({})", p.name, p.kind))
            .collect()
    };
    if by.is_empty() {
        String::new()
    } else {
        format!(" BY {}", by.join(", "))
    }
}

/// One flow as `hubble observe` prints it by default.
pub fn compact(f: &Flow, node: Option<&str>, policy_names_too: bool) -> String {
    let node = node.map(|n| format!(" [{n}]")).unwrap_or_default();
    format!(
        "{}{node}: {} {} -> {} {} {} {}{} ({})",
        time::compact(&f.time),
        endpoint(f, true),
        id_suffix(&f.source),
        endpoint(f, false),
        id_suffix(&f.destination),
        if f.event_type.r#type == EVENT_TYPE_DROP {
            f.drop_reason_desc.to_string()
        } else {
            format!(
                "policy-verdict:{} {}",
                match_type_name(f.policy_match_type),
                f.traffic_direction
            )
        },
        verdict_word(f),
        if policy_names_too {
            policy_names(f)
        } else {
            String::new()
        },
        f.summary
    )
}

/// A loss line, compact.
pub fn compact_lost(l: &Line, lost: &LostEvents) -> String {
    format!(
        "{}: EVENTS LOST: {} {}",
        time::compact(&l.time),
        lost.source,
        lost.num_events_lost
    )
}

fn policies_text(f: &Flow) -> String {
    f.policies()
        .map(|p| p.display())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One flow as a `dict` block (without the separator).
pub fn dict(f: &Flow) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "  TIMESTAMP: {}", time::compact(&f.time));
    let _ = writeln!(
        s,
        "     SOURCE: {} {}",
        endpoint(f, true),
        id_suffix(&f.source)
    );
    let _ = writeln!(
        s,
        "DESTINATION: {} {}",
        endpoint(f, false),
        id_suffix(&f.destination)
    );
    let _ = writeln!(s, "       TYPE: {}", type_text(f));
    let _ = writeln!(s, "    VERDICT: {}", f.verdict);
    let pol = policies_text(f);
    if !pol.is_empty() {
        let _ = writeln!(s, "   POLICIES: {pol}");
    }
    if let Some(r) = f
        .details()
        .map(|d| d.rule.as_ref())
        .filter(|r| !r.is_empty())
    {
        let _ = writeln!(s, "       RULE: {r}");
    }
    let _ = write!(s, "    SUMMARY: {}", f.summary);
    s
}

/// Rows of `table` output; [`table`] aligns them.
pub fn table_row(f: &Flow) -> [String; 6] {
    [
        time::compact(&f.time),
        format!("{} {}", endpoint(f, true), id_suffix(&f.source)),
        format!("{} {}", endpoint(f, false), id_suffix(&f.destination)),
        type_text(f),
        f.verdict.to_string(),
        f.summary.to_string(),
    ]
}

/// Aligns rows under hubble's table header.
pub fn table(rows: &[[String; 6]]) -> String {
    let header = [
        "TIMESTAMP",
        "SOURCE",
        "DESTINATION",
        "TYPE",
        "VERDICT",
        "SUMMARY",
    ];
    let mut width = header.map(str::len);
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}   ", w = width[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for r in rows {
        line(&r.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

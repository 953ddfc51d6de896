//! HTTP requests through the L7 rules: what the proxy will answer, with the rule that decided
//! and, for `explain`, each rule's match step by step on the normalized request.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use palisade_l7proxy::{
    Decision as L7Decision, NormalizeOptions, NormalizedRequest, RequestError, RequestHead,
    normalize,
};
use policy_compiler::engine::l7::L7Origin;
use policy_compiler::eval::maps;
use policy_compiler::{Direction, Flow};
use serde::Serialize;

use crate::analysis::Analysis;

/// An HTTP request as a scenario or the command line writes it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct HttpQuery {
    pub method: String,
    /// The request target (`/path?query`).
    pub path: String,
    pub host: Option<String>,
    pub headers: BTreeMap<String, String>,
}

impl HttpQuery {
    /// The request the matcher sees, or why the proxy refuses it (400/414).
    pub fn normalize(&self) -> Result<NormalizedRequest, RequestError> {
        let mut headers: Vec<(&str, &[u8])> = Vec::new();
        if let Some(h) = &self.host {
            headers.push(("Host", h.as_bytes()));
        }
        headers.extend(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
        normalize(
            &RequestHead {
                method: &self.method,
                target: self.path.as_bytes(),
                headers: &headers,
            },
            NormalizeOptions::default(),
        )
    }

    /// `GET /api/v1/data`.
    pub fn summary(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// One side's L7 answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SideL7 {
    pub direction: Direction,
    /// `allow`, `deny`, `no-match` (403), `ambiguous` (400) or `refused` (the matcher failed).
    pub decision: String,
    /// The HTTP status the proxy answers with instead of forwarding, if it does not forward.
    pub status: Option<u16>,
    /// `PalisadeNetworkPolicy prod/x ingress[1] http[0] (DELETE /admin/.*)`, or the L3/L4 rule
    /// whose allow-all admitted the request.
    pub rule: Option<String>,
    /// Each rule in order: `matches`, or the first field that did not match.
    pub steps: Vec<String>,
    /// What this side's audit-mode HTTP rules would do to a request its enforced rules
    /// forward (reported as AUDIT, still forwarded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<String>,
}

/// The proxy's answer for one request on a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpOutcome {
    /// The normalized path the rules saw.
    pub normalized_path: Option<String>,
    /// Each side that sends the connection to the proxy (egress first).
    pub sides: Vec<SideL7>,
    /// The status answered instead of forwarding (the first side that refuses), if any.
    pub status: Option<u16>,
    /// Why the request was refused before any rule was read (400/414).
    pub refused: Option<String>,
}

/// Decides a request on a flow whose L3/L4 verdict is already known to let it through.
/// Sides that do not redirect do not look at requests.
pub fn evaluate(a: &Analysis, flow: &Flow, query: &HttpQuery) -> HttpOutcome {
    let (egress, ingress) = maps::l7_sets(&a.engine, flow);
    let redirecting: Vec<(Direction, _)> =
        [(Direction::Egress, egress), (Direction::Ingress, ingress)]
            .into_iter()
            .filter_map(|(d, s)| s.map(|s| (d, s)))
            .collect();
    let req = match query.normalize() {
        Ok(r) => r,
        Err(e) => {
            let refused = !redirecting.is_empty();
            return HttpOutcome {
                normalized_path: None,
                sides: Vec::new(),
                status: refused.then(|| e.status()),
                refused: refused.then(|| e.to_string()),
            };
        }
    };
    let mut sides = Vec::new();
    let mut status = None;
    for (dir, set) in redirecting {
        let compiled = a.engine.compile_l7(&set);
        let (d, origin) = compiled.decide(&req);
        let steps = compiled
            .rules
            .explain(&req)
            .iter()
            .map(|t| {
                let who = compiled
                    .origins
                    .get(t.id as usize)
                    .map(|o| origin_name(a, o))
                    .unwrap_or_else(|| format!("rule {}", t.id));
                match &t.mismatch {
                    None => format!("{who}: matches"),
                    Some(m) => format!("{who}: {} wanted {}, saw {}", m.field, m.wanted, m.saw),
                }
            })
            .collect();
        let decision = match d {
            L7Decision::Allow { .. } => "allow",
            L7Decision::Deny { .. } => "deny",
            L7Decision::NoMatch => "no-match",
            L7Decision::Ambiguous => "ambiguous",
            L7Decision::MatchFailed => "refused",
        };
        if status.is_none() {
            status = d.status();
        }
        let audit = if d.allowed() {
            compiled.audit_refusal(&req).map(|(ad, ao)| match (ad, ao) {
                (L7Decision::NoMatch, Some(o)) => format!(
                    "would deny (403): no HTTP rule of {} allows it",
                    crate::scenario::rule_name(a, o.rule_id)
                ),
                (L7Decision::NoMatch, None) => {
                    "would deny (403): no audit-mode HTTP rule allows it".to_string()
                }
                (ad, Some(o)) => format!(
                    "would deny ({}) by {}",
                    ad.status().unwrap_or(403),
                    origin_name(a, &o)
                ),
                (ad, None) => format!("would refuse ({})", ad.status().unwrap_or(400)),
            })
        } else {
            None
        };
        // A request no rule allows is denied by the policy rules whose HTTP rules were read.
        let rule = origin.map(|o| origin_name(a, &o)).or_else(|| {
            let mut names: Vec<String> = compiled
                .origins
                .iter()
                .map(|o| crate::scenario::rule_name(a, o.rule_id))
                .collect();
            names.dedup();
            (!names.is_empty()).then(|| names.join(", "))
        });
        sides.push(SideL7 {
            direction: dir,
            decision: decision.to_string(),
            status: d.status(),
            rule,
            steps,
            audit,
        });
    }
    HttpOutcome {
        normalized_path: Some(req.target.path.clone()),
        sides,
        status,
        refused: None,
    }
}

/// The policy rule (and HTTP rule) behind a matcher entry.
pub fn origin_name(a: &Analysis, o: &L7Origin) -> String {
    let rule = crate::scenario::rule_name(a, o.rule_id);
    match o.http_index {
        None => format!("{rule} (allows every request of this peer)"),
        Some(i) => {
            let text = a
                .engine
                .rules()
                .resolve(o.rule_id)
                .and_then(|r| {
                    a.cluster()
                        .policies
                        .get(&r.policy)
                        .and_then(|p| p.rules(r.direction)?.get(r.index))
                })
                .and_then(|rule| {
                    rule.ports
                        .iter()
                        .filter_map(|p| p.http.as_ref())
                        .flatten()
                        .nth(i)
                        .map(|h| h.summary())
                })
                .unwrap_or_default();
            format!("{rule} http[{i}] ({text})")
        }
    }
}

/// The lines `explain` prints for a request.
pub fn to_text(query: &HttpQuery, o: &HttpOutcome) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\nHTTP request: {}", query.summary());
    if let Some(r) = &o.refused {
        let _ = writeln!(
            s,
            "  refused before any rule: {r} ({})",
            o.status.unwrap_or(400)
        );
        return s;
    }
    if o.sides.is_empty() {
        let _ = writeln!(
            s,
            "  no side sends this connection to the L7 proxy: requests are not inspected"
        );
        return s;
    }
    if let Some(p) = &o.normalized_path {
        let _ = writeln!(s, "  normalized path: {p}");
    }
    for side in &o.sides {
        let _ = writeln!(s, "  {} HTTP rules:", side.direction);
        for step in &side.steps {
            let _ = writeln!(s, "    {step}");
        }
        let verdict = match (side.decision.as_str(), &side.rule) {
            ("allow", Some(r)) => format!("allowed by {r}"),
            ("deny", Some(r)) => format!("denied (403) by {r}"),
            ("no-match", Some(r)) => format!("denied (403): no HTTP rule of {r} allows it"),
            ("no-match", None) => "denied (403): no HTTP rule allows it".to_string(),
            ("ambiguous", _) => "refused (400): a header a rule reads is repeated".to_string(),
            (d, _) => format!("{d} ({})", side.status.unwrap_or(403)),
        };
        let _ = writeln!(s, "    decision: {verdict}");
        if let Some(a) = &side.audit {
            let _ = writeln!(s, "    audit: {a} (forwarded and logged as AUDIT)");
        }
    }
    s
}

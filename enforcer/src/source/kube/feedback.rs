//! Telling policy authors, where they look (`kubectl get`, `kubectl describe`), what the
//! agent made of their objects:
//!
//! - kinds whose status Palisade owns (its CRDs) get an `Accepted` condition in
//!   `status.conditions`: `True` (reason `Valid`) or `False` (reason `Invalid`, the loader's
//!   message with the field path, and whether an earlier valid version stays enforced),
//!   with `observedGeneration`;
//! - every other kind gets a Kubernetes Event (type `Warning`, reason `InvalidPolicy`) for a
//!   refused version.
//!
//! Writes are idempotent and deduplicated, so every node's agent (they all judge the same
//! objects alike) can run this: a condition is written only when the object does not carry
//! it already (the watch shows what is there); an Event's name is derived from the object's
//! uid, generation and message, so a repeat (another node, a restart) is `409 AlreadyExists`
//! and counts as done. Writes are rate-limited (token bucket, [`WRITES_PER_SECOND`]), a
//! failed write is retried on the next round, and nothing here touches enforcement.

use std::collections::HashMap;
use std::time::Duration;

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::kinds::{Feedback, KINDS};
use super::store::{ACCEPTED, Condition, Report};

/// Sustained writes per second to the API server.
pub const WRITES_PER_SECOND: u32 = 20;
/// Writes allowed at once after a quiet period.
pub const BURST: u32 = 50;
/// How soon failed writes are tried again.
const RETRY: Duration = Duration::from_secs(5);
/// The API server's limit on a condition message is 32 KiB; an Event's is 1 KiB in
/// practice for readability.
const MAX_CONDITION_MESSAGE: usize = 32 * 1024;
const MAX_EVENT_MESSAGE: usize = 1024;
/// Who writes (the Event source, the field manager).
pub const COMPONENT: &str = "palisade-agent";

/// The condition the agent wants `r`'s object to carry.
pub fn desired(r: &Report) -> Condition {
    let (status, reason, message) = match &r.problem {
        None => (
            "True",
            "Valid",
            format!(
                "generation {} is valid; the agent compiles it into the policy it enforces",
                r.meta.generation
            ),
        ),
        Some(p) => (
            "False",
            "Invalid",
            format!(
                "generation {} is refused: {p}; {}",
                r.meta.generation,
                if r.previous_enforced {
                    "the last valid version stays enforced"
                } else {
                    "nothing of it is enforced"
                }
            ),
        ),
    };
    Condition {
        type_: ACCEPTED.into(),
        status: status.into(),
        reason: reason.into(),
        message: truncate(&message, MAX_CONDITION_MESSAGE),
        observed_generation: r.meta.generation,
        last_transition_time: None,
    }
}

/// Whether `current` already says what `want` says (the transition time aside).
fn same(current: Option<&Condition>, want: &Condition) -> bool {
    current.is_some_and(|c| {
        c.status == want.status
            && c.reason == want.reason
            && c.message == want.message
            && c.observed_generation == want.observed_generation
    })
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: tokio::time::Instant,
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            tokens: f64::from(BURST),
            last: tokio::time::Instant::now(),
        }
    }

    async fn take(&mut self) {
        loop {
            let now = tokio::time::Instant::now();
            let refill = now.duration_since(self.last).as_secs_f64() * f64::from(WRITES_PER_SECOND);
            self.tokens = (self.tokens + refill).min(f64::from(BURST));
            self.last = now;
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                return;
            }
            tokio::time::sleep(Duration::from_secs_f64(
                (1.0 - self.tokens) / f64::from(WRITES_PER_SECOND),
            ))
            .await;
        }
    }
}

/// What was last written for an object, so a write the watch has not shown yet is not
/// repeated.
type Written = HashMap<(usize, Option<String>, String), String>;

/// Writes feedback for the reports the aggregator publishes, until the channel closes.
pub async fn run(client: Client, node: String, mut rx: watch::Receiver<Vec<Report>>) {
    let mut bucket = Bucket::new();
    let mut written: Written = HashMap::new();
    let mut failing = false;
    loop {
        let changed = if failing {
            tokio::time::timeout(RETRY, rx.changed()).await.ok()
        } else {
            Some(rx.changed().await)
        };
        if matches!(changed, Some(Err(_))) {
            return;
        }
        let reports = rx.borrow_and_update().clone();
        // Forget what is gone, so a recreated object is reported afresh.
        written.retain(|k, _| {
            reports
                .iter()
                .any(|r| (r.kind, r.namespace.clone(), r.name.clone()) == *k)
        });
        failing = false;
        for r in &reports {
            let key = (r.kind, r.namespace.clone(), r.name.clone());
            let (token, result) = match KINDS[r.kind].feedback {
                Feedback::Status => {
                    let want = desired(r);
                    if same(r.meta.accepted.as_deref(), &want) {
                        written.remove(&key);
                        continue;
                    }
                    let token = format!("{want:?}");
                    if written.get(&key) == Some(&token) {
                        continue;
                    }
                    bucket.take().await;
                    (token, write_status(&client, r, want).await)
                }
                Feedback::Events => {
                    let Some(problem) = &r.problem else { continue };
                    let token = event_name(r, problem);
                    if written.get(&key) == Some(&token) {
                        continue;
                    }
                    bucket.take().await;
                    (
                        token.clone(),
                        write_event(&client, &node, r, problem, &token).await,
                    )
                }
            };
            match result {
                Ok(()) => {
                    debug!(kind = KINDS[r.kind].kind, name = r.name, "feedback written");
                    written.insert(key, token);
                }
                Err(e) => {
                    failing = true;
                    warn!(
                        kind = KINDS[r.kind].kind,
                        namespace = r.namespace.as_deref().unwrap_or(""),
                        name = r.name,
                        error = e.to_string(),
                        "cannot write policy feedback to the API server; retrying"
                    );
                }
            }
        }
    }
}

fn api_for(client: &Client, r: &Report) -> Api<DynamicObject> {
    let k = &KINDS[r.kind];
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(k.group, k.version, k.kind),
        k.plural,
    );
    match &r.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

/// Merge-patches the status subresource: only `status.conditions`, never the spec.
async fn write_status(client: &Client, r: &Report, mut want: Condition) -> Result<(), kube::Error> {
    // The transition time moves only when the status value does.
    want.last_transition_time = match &r.meta.accepted {
        Some(c) if c.status == want.status => c.last_transition_time.clone(),
        _ => Some(now_rfc3339()),
    };
    let patch = json!({"status": {"conditions": [want]}});
    api_for(client, r)
        .patch_status(&r.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// A name the same for every agent and restart that reports the same problem with the same
/// version of the same object.
fn event_name(r: &Report, problem: &str) -> String {
    // FNV-1a: stable across builds and platforms (the name must be).
    let h = format!("{}/{}/{problem}", r.meta.uid, r.meta.generation)
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let mut base: String = r.name.chars().take(200).collect();
    base.push_str(&format!(".palisade.{h:016x}"));
    base
}

async fn write_event(
    client: &Client,
    node: &str,
    r: &Report,
    problem: &str,
    name: &str,
) -> Result<(), kube::Error> {
    let k = &KINDS[r.kind];
    // Events of cluster-scoped objects live in `default`, as the API server's own do.
    let ns = r.namespace.clone().unwrap_or_else(|| "default".into());
    let now = now_rfc3339();
    let message = truncate(
        &format!(
            "refused by Palisade: {problem}; {}",
            if r.previous_enforced {
                "the last valid version stays enforced"
            } else {
                "nothing of it is enforced"
            }
        ),
        MAX_EVENT_MESSAGE,
    );
    let event: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {
            "apiVersion": k.api_version(), "kind": k.kind, "name": r.name,
            "namespace": r.namespace, "uid": r.meta.uid,
        },
        "type": "Warning",
        "reason": "InvalidPolicy",
        "message": message,
        "source": {"component": COMPONENT, "host": node},
        "reportingComponent": "palisade.dev/agent",
        "reportingInstance": node,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }))
    .map_err(kube::Error::SerdeError)?;
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
    match events.create(&PostParams::default(), &event).await {
        Ok(_) => Ok(()),
        // Another agent (or this one before a restart) reported it already.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Now, as RFC 3339 UTC with whole seconds (what `metav1.Time` carries).
fn now_rfc3339() -> String {
    let t = crate::events::WallTime::now().rfc3339();
    match t.split_once('.') {
        Some((secs, _)) => format!("{secs}Z"),
        None => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::kube::store::ObjMeta;

    fn report(problem: Option<&str>, accepted: Option<Condition>) -> Report {
        Report {
            kind: 9,
            namespace: Some("shop".into()),
            name: "l7".into(),
            meta: ObjMeta {
                uid: "u-1".into(),
                generation: 3,
                accepted: accepted.map(Box::new),
            },
            problem: problem.map(str::to_string),
            previous_enforced: problem.is_some(),
        }
    }

    #[test]
    fn the_condition_names_the_generation_and_what_stays_enforced() {
        let ok = desired(&report(None, None));
        assert_eq!((ok.status.as_str(), ok.reason.as_str()), ("True", "Valid"));
        assert_eq!(ok.observed_generation, 3);
        let bad = desired(&report(Some("spec.http[0].path: bad"), None));
        assert_eq!(
            (bad.status.as_str(), bad.reason.as_str()),
            ("False", "Invalid")
        );
        assert!(
            bad.message.contains("spec.http[0].path: bad"),
            "{}",
            bad.message
        );
        assert!(
            bad.message.contains("last valid version stays"),
            "{}",
            bad.message
        );
    }

    #[test]
    fn a_condition_already_carried_is_not_written_again() {
        let want = desired(&report(None, None));
        let mut carried = want.clone();
        carried.last_transition_time = Some("2026-01-01T00:00:00Z".into());
        assert!(same(Some(&carried), &want));
        carried.observed_generation = 2;
        assert!(
            !same(Some(&carried), &want),
            "an older generation is rewritten"
        );
        assert!(!same(None, &want));
    }

    #[test]
    fn event_names_are_stable_and_distinct_per_problem_and_generation() {
        let a = report(Some("x"), None);
        assert_eq!(event_name(&a, "x"), event_name(&a, "x"));
        assert_ne!(event_name(&a, "x"), event_name(&a, "y"));
        let mut b = a.clone();
        b.meta.generation = 4;
        assert_ne!(event_name(&a, "x"), event_name(&b, "x"));
        assert!(event_name(&a, "x").starts_with("l7.palisade."));
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let s = "é".repeat(1000);
        let t = truncate(&s, 101);
        assert!(t.len() <= 101 && t.ends_with("..."), "{}", t.len());
    }
}

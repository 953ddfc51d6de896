//! CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy (`cilium.io/v2`) as input: the subset
//! that maps onto Palisade's model, translated into [`PolicySpec`]s.
//!
//! Anything outside the subset is an error naming the field. Ignoring a rule changes what is
//! allowed, so nothing is skipped silently. The subset and every difference with Cilium are in
//! docs/l7.md ("CiliumNetworkPolicy input").
//!
//! Namespace semantics follow Cilium: in a namespaced policy, `endpointSelector` and every
//! `fromEndpoints`/`toEndpoints` selector are confined to the policy's namespace unless the
//! selector names `io.kubernetes.pod.namespace` (optionally with the `k8s:` or `any:` source
//! prefix); `io.cilium.k8s.namespace.labels.<key>` selects namespaces by label. In a
//! clusterwide policy a selector without those keys selects pods of every namespace.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use crate::{
    DefaultDeny, Entity, HeaderMatch, HttpRule, IpBlock, LabelSelector, LabelSelectorRequirement,
    Peer, PolicyRule, PolicySpec, PortRule, PortValue, RuleAction,
};

/// The namespace label Cilium derives from the pod's namespace.
pub const NAMESPACE_KEY: &str = "io.kubernetes.pod.namespace";
/// The prefix of namespace-label keys in Cilium selectors.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// The namespace label Kubernetes sets on every namespace.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// One problem in a Cilium policy, with the path of the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiliumError {
    /// e.g. `spec.ingress[0].toPorts[1].rules.kafka`
    pub path: String,
    pub message: String,
}

impl fmt::Display for CiliumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Which Cilium kind is being translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CiliumKind {
    /// `CiliumNetworkPolicy`: namespaced.
    Namespaced,
    /// `CiliumClusterwideNetworkPolicy`.
    Clusterwide,
}

/// Translate the `spec` and/or `specs` of a Cilium policy object. Every problem is returned,
/// each with its field path; on any problem nothing is returned.
pub fn translate(kind: CiliumKind, object: &Value) -> Result<Vec<PolicySpec>, Vec<CiliumError>> {
    let mut t = Translator {
        kind,
        errors: Vec::new(),
    };
    let mut out = Vec::new();
    let Some(obj) = object.as_object() else {
        return Err(vec![err("", "the object is not a mapping")]);
    };
    let spec = obj.get("spec").filter(|v| !v.is_null());
    let specs = obj.get("specs").filter(|v| !v.is_null());
    if spec.is_none() && specs.is_none() {
        t.error("spec", "a Cilium policy needs `spec` or `specs`");
    }
    if let Some(s) = spec
        && let Some(p) = t.rule(s, "spec")
    {
        out.push(p);
    }
    if let Some(list) = specs {
        match list.as_array() {
            Some(items) => {
                for (i, s) in items.iter().enumerate() {
                    if let Some(p) = t.rule(s, &format!("specs[{i}]")) {
                        out.push(p);
                    }
                }
            }
            None => t.error("specs", "must be a list"),
        }
    }
    if t.errors.is_empty() {
        Ok(out)
    } else {
        Err(t.errors)
    }
}

fn err(path: &str, message: &str) -> CiliumError {
    CiliumError {
        path: path.to_string(),
        message: message.to_string(),
    }
}

struct Translator {
    kind: CiliumKind,
    errors: Vec<CiliumError>,
}

/// Fields Cilium defines that Palisade does not model: an error, never ignored.
fn unsupported(key: &str) -> Option<&'static str> {
    Some(match key {
        "nodeSelector" => "host (node) policies are not supported",
        "fromRequires" | "toRequires" => "requirements are not supported (deprecated in Cilium)",
        "fromNodes" | "toNodes" => {
            "node selectors are not supported; use the `host` or `cluster` entity"
        }
        "fromGroups" | "toGroups" => "cloud provider groups are not supported",
        "toServices" => "service selectors are not supported; select the backends with toEndpoints",
        "toFQDNs" => "DNS-name rules are not supported",
        "icmps" => "ICMP type rules are not supported",
        "authentication" => "mutual authentication is not supported",
        "terminatingTLS" | "originatingTLS" | "serverNames" | "listener" => {
            "TLS interception and listeners are not supported"
        }
        "kafka" | "dns" | "l7proto" | "l7" => "only HTTP rules are supported",
        "cidrGroupRef" | "cidrGroupSelector" => "CIDR groups are not supported",
        "mismatch" => "header mismatch actions are not supported (a mismatch must deny)",
        "secret" => "header values from secrets are not supported",
        _ => return None,
    })
}

impl Translator {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(CiliumError {
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// Check that `v` is a mapping with only `allowed` keys; report unsupported and unknown ones.
    fn fields<'v>(
        &mut self,
        v: &'v Value,
        path: &str,
        allowed: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Some(m) = v.as_object() else {
            self.error(path, "must be a mapping");
            return None;
        };
        for k in m.keys() {
            if allowed.contains(&k.as_str()) {
                continue;
            }
            let at = join(path, k);
            match unsupported(k) {
                Some(why) => self.error(&at, format!("not supported by Palisade: {why}")),
                None => self.error(
                    &at,
                    format!("unknown field (expected one of: {})", allowed.join(", ")),
                ),
            }
        }
        Some(m)
    }

    fn list<'v>(&mut self, v: &'v Value, path: &str) -> &'v [Value] {
        match v {
            Value::Array(a) => a,
            Value::Null => &[],
            _ => {
                self.error(path, "must be a list");
                &[]
            }
        }
    }

    fn rule(&mut self, v: &Value, path: &str) -> Option<PolicySpec> {
        let m = self.fields(
            v,
            path,
            &[
                "endpointSelector",
                "ingress",
                "ingressDeny",
                "egress",
                "egressDeny",
                "labels",
                "description",
                "enableDefaultDeny",
                "log",
            ],
        )?;
        let before = self.errors.len();
        let mut spec = PolicySpec::default();
        match m.get("endpointSelector") {
            Some(sel) => {
                let (pods, namespaces) = self.selector(sel, &join(path, "endpointSelector"));
                spec.pod_selector = pods;
                if self.kind == CiliumKind::Clusterwide {
                    spec.namespace_selector = namespaces;
                } else if namespaces.is_some() {
                    self.error(
                        &join(path, "endpointSelector"),
                        "a namespaced policy selects pods of its own namespace only; \
                         namespace keys are allowed in peer selectors, not here",
                    );
                }
            }
            None => self.error(path, "`endpointSelector` is required"),
        }
        let log = m.get("log").and_then(|l| {
            let lm = self.fields(l, &join(path, "log"), &["value"])?;
            lm.get("value").and_then(Value::as_str).map(str::to_string)
        });
        for (dir, deny_key, peer_keys) in [
            (
                "ingress",
                "ingressDeny",
                ["fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities"],
            ),
            (
                "egress",
                "egressDeny",
                ["toEndpoints", "toCIDR", "toCIDRSet", "toEntities"],
            ),
        ] {
            let allow = m
                .get(dir)
                .map(|v| self.list(v, &join(path, dir)))
                .unwrap_or(&[]);
            let deny = m
                .get(deny_key)
                .map(|v| self.list(v, &join(path, deny_key)))
                .unwrap_or(&[]);
            if allow.is_empty() && deny.is_empty() {
                continue;
            }
            let mut rules = Vec::new();
            for (i, r) in allow.iter().enumerate() {
                rules.extend(self.direction_rule(
                    r,
                    &format!("{}[{i}]", join(path, dir)),
                    &peer_keys,
                    RuleAction::Allow,
                    &log,
                ));
            }
            for (i, r) in deny.iter().enumerate() {
                rules.extend(self.direction_rule(
                    r,
                    &format!("{}[{i}]", join(path, deny_key)),
                    &peer_keys,
                    RuleAction::Deny,
                    &log,
                ));
            }
            if dir == "ingress" {
                spec.ingress = Some(rules);
            } else {
                spec.egress = Some(rules);
            }
        }
        if let Some(dd) = m.get("enableDefaultDeny") {
            let at = join(path, "enableDefaultDeny");
            if let Some(dm) = self.fields(dd, &at, &["ingress", "egress"]) {
                let mut flag = |k: &str| match dm.get(k) {
                    None | Some(Value::Null) => None,
                    Some(Value::Bool(b)) => Some(*b),
                    Some(_) => {
                        self.error(&join(&at, k), "must be true or false");
                        None
                    }
                };
                let d = DefaultDeny {
                    ingress: flag("ingress"),
                    egress: flag("egress"),
                };
                if d != DefaultDeny::default() {
                    spec.default_deny = Some(d);
                }
            }
        }
        (self.errors.len() == before).then_some(spec)
    }

    /// One ingress/egress (deny) rule. `None` for a rule that selects nothing (`{}`), which
    /// only switches the direction to default deny, as in Cilium.
    fn direction_rule(
        &mut self,
        v: &Value,
        path: &str,
        peer_keys: &[&str; 4],
        action: RuleAction,
        log: &Option<String>,
    ) -> Option<PolicyRule> {
        let mut allowed: Vec<&str> = peer_keys.to_vec();
        allowed.push("toPorts");
        let m = self.fields(v, path, &allowed)?;
        let [endpoints_key, cidr_key, cidr_set_key, entities_key] = *peer_keys;
        let mut peers: Vec<Peer> = Vec::new();
        let mut any_peer = false;
        let mut has_l3 = false;
        if let Some(list) = m.get(endpoints_key) {
            has_l3 = true;
            for (i, sel) in self
                .list(list, &join(path, endpoints_key))
                .iter()
                .enumerate()
            {
                let (pods, namespaces) =
                    self.selector(sel, &format!("{}[{i}]", join(path, endpoints_key)));
                peers.push(Peer {
                    pod_selector: Some(pods),
                    namespace_selector: namespaces,
                    ..Peer::default()
                });
            }
        }
        if let Some(list) = m.get(cidr_key) {
            has_l3 = true;
            for (i, c) in self.list(list, &join(path, cidr_key)).iter().enumerate() {
                match c.as_str() {
                    Some(cidr) => peers.push(Peer {
                        ip_block: Some(IpBlock {
                            cidr: cidr.to_string(),
                            except: Vec::new(),
                        }),
                        ..Peer::default()
                    }),
                    None => self.error(
                        &format!("{}[{i}]", join(path, cidr_key)),
                        "must be a CIDR string",
                    ),
                }
            }
        }
        if let Some(list) = m.get(cidr_set_key) {
            has_l3 = true;
            for (i, c) in self
                .list(list, &join(path, cidr_set_key))
                .iter()
                .enumerate()
            {
                let at = format!("{}[{i}]", join(path, cidr_set_key));
                let Some(cm) = self.fields(c, &at, &["cidr", "except"]) else {
                    continue;
                };
                let Some(cidr) = cm.get("cidr").and_then(Value::as_str) else {
                    self.error(&join(&at, "cidr"), "is required (a CIDR string)");
                    continue;
                };
                let mut except = Vec::new();
                if let Some(ex) = cm.get("except") {
                    for (j, e) in self.list(ex, &join(&at, "except")).iter().enumerate() {
                        match e.as_str() {
                            Some(s) => except.push(s.to_string()),
                            None => self.error(
                                &format!("{}[{j}]", join(&at, "except")),
                                "must be a CIDR string",
                            ),
                        }
                    }
                }
                peers.push(Peer {
                    ip_block: Some(IpBlock {
                        cidr: cidr.to_string(),
                        except,
                    }),
                    ..Peer::default()
                });
            }
        }
        if let Some(list) = m.get(entities_key) {
            has_l3 = true;
            for (i, e) in self
                .list(list, &join(path, entities_key))
                .iter()
                .enumerate()
            {
                let at = format!("{}[{i}]", join(path, entities_key));
                let entity = match e.as_str() {
                    Some("all") => {
                        any_peer = true;
                        continue;
                    }
                    Some("world") => Entity::World,
                    Some("host") => Entity::Host,
                    Some("cluster") => Entity::Cluster,
                    Some("kube-apiserver") => Entity::KubeApiserver,
                    Some(other) => {
                        self.error(
                            &at,
                            format!(
                                "entity {other:?} is not supported (supported: all, world, host, cluster, kube-apiserver)"
                            ),
                        );
                        continue;
                    }
                    None => {
                        self.error(&at, "must be an entity name");
                        continue;
                    }
                };
                peers.push(Peer {
                    entity: Some(entity),
                    ..Peer::default()
                });
            }
        }
        let mut ports = Vec::new();
        let mut has_ports = false;
        if let Some(list) = m.get("toPorts") {
            for (i, tp) in self.list(list, &join(path, "toPorts")).iter().enumerate() {
                has_ports = true;
                ports.extend(self.port_rules(
                    tp,
                    &format!("{}[{i}]", join(path, "toPorts")),
                    action,
                ));
            }
        }
        if !has_l3 && !has_ports {
            return None;
        }
        if has_l3 && peers.is_empty() && !any_peer {
            // e.g. `fromEndpoints: []`: selects nothing.
            return None;
        }
        if any_peer {
            peers.clear();
        }
        let (from, to) = if peer_keys[0] == "fromEndpoints" {
            (peers, Vec::new())
        } else {
            (Vec::new(), peers)
        };
        Some(PolicyRule {
            name: None,
            action,
            from,
            to,
            ports,
            log: log.clone(),
        })
    }

    fn port_rules(&mut self, v: &Value, path: &str, action: RuleAction) -> Vec<PortRule> {
        let Some(m) = self.fields(v, path, &["ports", "rules"]) else {
            return Vec::new();
        };
        let mut http: Option<Vec<HttpRule>> = None;
        if let Some(rules) = m.get("rules").filter(|r| !r.is_null()) {
            let at = join(path, "rules");
            if action == RuleAction::Deny {
                self.error(&at, "Cilium deny rules cannot carry L7 rules");
            } else if let Some(rm) = self.fields(rules, &at, &["http"]) {
                let mut list = Vec::new();
                if let Some(h) = rm.get("http") {
                    for (i, r) in self.list(h, &join(&at, "http")).iter().enumerate() {
                        if let Some(rule) =
                            self.http_rule(r, &format!("{}[{i}]", join(&at, "http")))
                        {
                            list.push(rule);
                        }
                    }
                }
                http = Some(list);
            }
        }
        let mut out = Vec::new();
        let port_list = match m.get("ports") {
            Some(p) => self.list(p, &join(path, "ports")).to_vec(),
            None => Vec::new(),
        };
        if port_list.is_empty() {
            // Cilium: L7 rules without ports are not valid; plain `toPorts: [{}]` is every port.
            if http.is_some() {
                self.error(&join(path, "ports"), "HTTP rules need a port");
                return Vec::new();
            }
            for proto in ["TCP", "UDP", "SCTP"] {
                out.push(PortRule {
                    protocol: Some(proto.to_string()),
                    ..PortRule::default()
                });
            }
            return out;
        }
        for (i, p) in port_list.iter().enumerate() {
            let at = format!("{}[{i}]", join(path, "ports"));
            let Some(pm) = self.fields(p, &at, &["port", "endPort", "protocol"]) else {
                continue;
            };
            let port = match pm.get("port") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.is_empty() || s == "0" => None,
                Some(Value::String(s)) => match s.parse::<i64>() {
                    Ok(n) => Some(PortValue::Number(n)),
                    Err(_) => Some(PortValue::Name(s.clone())),
                },
                Some(Value::Number(n)) => match n.as_i64() {
                    Some(0) => None,
                    Some(n) => Some(PortValue::Number(n)),
                    None => {
                        self.error(&join(&at, "port"), "must be a port number or name");
                        continue;
                    }
                },
                Some(_) => {
                    self.error(&join(&at, "port"), "must be a port number or name");
                    continue;
                }
            };
            let end_port = match pm.get("endPort") {
                None | Some(Value::Null) => None,
                Some(v) => match v.as_i64() {
                    Some(0) => None,
                    Some(n) => Some(n),
                    None => {
                        self.error(&join(&at, "endPort"), "must be a port number");
                        continue;
                    }
                },
            };
            let protocols: Vec<&str> = match pm.get("protocol").and_then(Value::as_str) {
                None | Some("ANY") => {
                    // HTTP rules only make sense on TCP: ANY with HTTP rules is TCP only.
                    if http.is_some() {
                        vec!["TCP"]
                    } else {
                        vec!["TCP", "UDP", "SCTP"]
                    }
                }
                Some(p @ ("TCP" | "UDP" | "SCTP")) => vec![p],
                Some(other) => {
                    self.error(
                        &join(&at, "protocol"),
                        format!("protocol {other:?} is not supported (TCP, UDP, SCTP, ANY)"),
                    );
                    continue;
                }
            };
            for proto in protocols {
                if http.is_some() && proto != "TCP" {
                    self.error(
                        &join(&at, "protocol"),
                        "HTTP rules need protocol TCP (or ANY)",
                    );
                    continue;
                }
                out.push(PortRule {
                    protocol: Some(proto.to_string()),
                    port: port.clone(),
                    end_port,
                    http: http.clone(),
                });
            }
        }
        out
    }

    fn http_rule(&mut self, v: &Value, path: &str) -> Option<HttpRule> {
        let m = self.fields(
            v,
            path,
            &["method", "path", "host", "headers", "headerMatches"],
        )?;
        let mut rule = HttpRule::default();
        let text = |k: &str, this: &mut Self| -> Option<String> {
            match m.get(k) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => {
                    this.error(&join(path, k), "must be a string");
                    None
                }
            }
        };
        rule.method = text("method", self);
        rule.path = text("path", self);
        rule.host = text("host", self);
        if let Some(h) = m.get("headers") {
            for (i, line) in self.list(h, &join(path, "headers")).iter().enumerate() {
                let at = format!("{}[{i}]", join(path, "headers"));
                match line.as_str() {
                    Some(s) => {
                        let (name, value) = match s.split_once(':') {
                            Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
                            None => (s.trim(), None),
                        };
                        rule.headers.push(HeaderMatch {
                            name: name.to_string(),
                            value,
                            regex: None,
                        });
                    }
                    None => self.error(&at, "must be a string `Name` or `Name: value`"),
                }
            }
        }
        if let Some(h) = m.get("headerMatches") {
            for (i, hm) in self
                .list(h, &join(path, "headerMatches"))
                .iter()
                .enumerate()
            {
                let at = format!("{}[{i}]", join(path, "headerMatches"));
                let Some(hmm) = self.fields(hm, &at, &["name", "value"]) else {
                    continue;
                };
                match hmm.get("name").and_then(Value::as_str) {
                    Some(name) => rule.headers.push(HeaderMatch {
                        name: name.to_string(),
                        value: hmm.get("value").and_then(Value::as_str).map(str::to_string),
                        regex: None,
                    }),
                    None => self.error(&join(&at, "name"), "is required"),
                }
            }
        }
        Some(rule)
    }

    /// A Cilium endpoint selector → (pod selector, namespace selector if it names namespaces).
    fn selector(&mut self, v: &Value, path: &str) -> (LabelSelector, Option<LabelSelector>) {
        let mut pods = LabelSelector::default();
        let mut namespaces = LabelSelector::default();
        let mut names_namespace = false;
        let Some(m) = self.fields(v, path, &["matchLabels", "matchExpressions"]) else {
            return (pods, None);
        };
        if let Some(ml) = m.get("matchLabels").filter(|v| !v.is_null()) {
            let at = join(path, "matchLabels");
            match ml.as_object() {
                Some(labels) => {
                    for (k, val) in labels {
                        let Some(val) = val.as_str() else {
                            self.error(&join(&at, k), "must be a string");
                            continue;
                        };
                        match self.key(k, &join(&at, k)) {
                            Some(Key::Namespace) => {
                                names_namespace = true;
                                insert(&mut namespaces, NAMESPACE_NAME_LABEL, val);
                            }
                            Some(Key::NamespaceLabel(l)) => {
                                names_namespace = true;
                                insert(&mut namespaces, &l, val);
                            }
                            Some(Key::Pod(l)) => insert(&mut pods, &l, val),
                            None => {}
                        }
                    }
                }
                None => self.error(&at, "must be a mapping"),
            }
        }
        if let Some(me) = m.get("matchExpressions").filter(|v| !v.is_null()) {
            let at = join(path, "matchExpressions");
            for (i, e) in self.list(me, &at).iter().enumerate() {
                let eat = format!("{at}[{i}]");
                let Some(em) = self.fields(e, &eat, &["key", "operator", "values"]) else {
                    continue;
                };
                let (Some(key), Some(op)) = (
                    em.get("key").and_then(Value::as_str),
                    em.get("operator").and_then(Value::as_str),
                ) else {
                    self.error(&eat, "`key` and `operator` are required");
                    continue;
                };
                let values = em.get("values").and_then(Value::as_array).map(|vs| {
                    vs.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                });
                let (target, label) = match self.key(key, &join(&eat, "key")) {
                    Some(Key::Namespace) => {
                        names_namespace = true;
                        (&mut namespaces, NAMESPACE_NAME_LABEL.to_string())
                    }
                    Some(Key::NamespaceLabel(l)) => {
                        names_namespace = true;
                        (&mut namespaces, l)
                    }
                    Some(Key::Pod(l)) => (&mut pods, l),
                    None => continue,
                };
                target.match_expressions.get_or_insert_with(Vec::new).push(
                    LabelSelectorRequirement {
                        key: label,
                        operator: op.to_string(),
                        values,
                    },
                );
            }
        }
        (pods, names_namespace.then_some(namespaces))
    }

    /// Classify a selector key, stripping the `k8s:`/`any:` source prefix.
    fn key(&mut self, raw: &str, path: &str) -> Option<Key> {
        let key = match raw.split_once(':') {
            Some(("k8s" | "any", rest)) => rest,
            Some((
                source @ ("reserved" | "cidr" | "container" | "unspec" | "fqdn" | "cilium"),
                _,
            )) => {
                self.error(
                    path,
                    format!("labels of source {source:?} are not supported in selectors"),
                );
                return None;
            }
            _ => raw,
        };
        if key == NAMESPACE_KEY {
            return Some(Key::Namespace);
        }
        if let Some(l) = key.strip_prefix(NAMESPACE_LABELS_PREFIX) {
            return Some(Key::NamespaceLabel(l.to_string()));
        }
        if key.starts_with("io.cilium.k8s.policy.") || key.starts_with("io.kubernetes.pod.") {
            self.error(
                path,
                format!("the label {key:?} is derived by Cilium (service account, cluster) and is not modelled"),
            );
            return None;
        }
        Some(Key::Pod(key.to_string()))
    }
}

enum Key {
    Namespace,
    NamespaceLabel(String),
    Pod(String),
}

fn insert(sel: &mut LabelSelector, k: &str, v: &str) {
    sel.match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(k.to_string(), v.to_string());
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

//! Palisade's policy CRDs, `policy.palisade.dev/v1alpha1`:
//!
//! - `PalisadeNetworkPolicy` (namespaced, short name `pnp`): selects pods of its namespace;
//! - `PalisadeClusterNetworkPolicy` (cluster-scoped, short name `pcnp`): selects pods by
//!   namespace and pod selectors anywhere.
//!
//! Both share [`PolicySpec`]. It is designed for a platform team that knows NetworkPolicy:
//! the same selectors, ipBlocks and ports, plus reserved entities, explicit deny rules at L3/L4
//! and HTTP (L7) rules on TCP ports, an audit mode per policy and a log marker per rule. These
//! kinds live in the NetworkPolicy tier: a deny rule beats an allow rule of any policy of that
//! tier; the cluster-admin tiers (AdminNetworkPolicy) still come first.
//!
//! The types here are plain serde so the policy core decodes manifests without Kubernetes
//! crates; the field reference is docs/l7.md ("Palisade policy CRDs").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod cilium;

pub use palisade_l7proxy::rules::{HeaderMatch, HttpRule};

/// The API group of Palisade's CRDs.
pub const GROUP: &str = "policy.palisade.dev";
/// The version served and stored.
pub const VERSION: &str = "v1alpha1";
/// `group/version`, as manifests write `apiVersion`.
pub const API_VERSION: &str = "policy.palisade.dev/v1alpha1";
/// The namespaced kind.
pub const KIND_NAMESPACED: &str = "PalisadeNetworkPolicy";
/// The cluster-scoped kind.
pub const KIND_CLUSTER: &str = "PalisadeClusterNetworkPolicy";

/// The spec of both kinds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(kube::CustomResource, schemars::JsonSchema))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "policy.palisade.dev",
        version = "v1alpha1",
        kind = "PalisadeNetworkPolicy",
        namespaced,
        shortname = "pnp",
        category = "palisade",
        status = "PolicyStatus",
        printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
        printcolumn = r#"{"name":"Pods","type":"string","jsonPath":".spec.podSelector.matchLabels","priority":1}"#,
        printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// Pods the policy applies to. Namespaced kind: pods of the policy's namespace. Cluster
    /// kind: pods of the namespaces `namespaceSelector` selects. `{}` selects every pod.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// Cluster kind only: the namespaces whose pods `podSelector` chooses from (`{}`: all).
    /// Absent on the cluster kind means every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// `Enforce` (default) or `Audit`: evaluate, log what would be denied as AUDIT, forward.
    #[serde(default)]
    pub mode: PolicyMode,
    /// Ingress rules. Giving the field (even empty) isolates the selected pods for ingress,
    /// as NetworkPolicy's `policyTypes: [Ingress]` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<PolicyRule>>,
    /// Egress rules; giving the field isolates egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<PolicyRule>>,
    /// Whether giving a direction isolates it (default deny for what no rule allows). Default:
    /// `true` for each direction given. `false` makes the policy's rules add to what is
    /// allowed (and deny rules deny) without closing the rest, as Cilium's
    /// `enableDefaultDeny` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_deny: Option<DefaultDeny>,
}

/// Per-direction default-deny switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultDeny {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
}

impl PolicySpec {
    /// Whether the policy isolates ingress (the field is given and default deny is not off).
    pub fn isolates_ingress(&self) -> bool {
        self.ingress.is_some() && self.default_deny.and_then(|d| d.ingress).unwrap_or(true)
    }

    /// Whether the policy isolates egress.
    pub fn isolates_egress(&self) -> bool {
        self.egress.is_some() && self.default_deny.and_then(|d| d.egress).unwrap_or(true)
    }
}

/// Enforce or only audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
pub enum PolicyMode {
    #[default]
    Enforce,
    Audit,
}

/// One rule: peers × ports with an action.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRule {
    /// A name for the rule, shown in verdicts (`policy-test`, the verdict log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(length(min = 1, max = 253)))]
    pub name: Option<String>,
    /// `Allow` (default) or `Deny`. With `http` on a port, a deny rule answers matching
    /// requests with 403 and lets other requests be decided by the allow rules.
    #[serde(default)]
    pub action: RuleAction,
    /// Ingress: the sources. Absent or empty: every source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Peer>,
    /// Egress: the destinations. Absent or empty: every destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Peer>,
    /// Ports (of the destination). Absent or empty: every port and protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRule>,
    /// A marker carried into every verdict-log record this rule decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(length(min = 1, max = 253)))]
    pub log: Option<String>,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
pub enum RuleAction {
    #[default]
    Allow,
    Deny,
}

/// A peer: exactly one of pods (with an optional namespace selector), an ipBlock or an entity.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "kube",
    schemars(extend("x-kubernetes-validations" = [{
        "rule": "(has(self.podSelector) || has(self.namespaceSelector) ? 1 : 0) + (has(self.ipBlock) ? 1 : 0) + (has(self.entity) ? 1 : 0) == 1",
        "message": "must give exactly one of podSelector/namespaceSelector, ipBlock or entity"
    }]))
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    /// Pods. Namespaced kind: in the policy's namespace unless `namespaceSelector` is given.
    /// Cluster kind: in every namespace unless `namespaceSelector` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces (with `podSelector`: pods of those namespaces; alone: all their pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Addresses, as NetworkPolicy's ipBlock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
    /// A reserved entity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<Entity>,
}

/// Reserved entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    /// Every address that is not a pod or a node of the cluster.
    World,
    /// The node the pod runs on.
    Host,
    /// Every pod and node of the cluster.
    Cluster,
    /// The API server's endpoints (the `default/kubernetes` Service's endpoints).
    KubeApiserver,
}

impl Entity {
    /// The name manifests use.
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::World => "world",
            Entity::Host => "host",
            Entity::Cluster => "cluster",
            Entity::KubeApiserver => "kube-apiserver",
        }
    }
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Addresses: a CIDR minus exceptions inside it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpBlock {
    /// An IPv4 or IPv6 CIDR, e.g. `10.0.0.0/8` (checked by the policy core: a CEL `isCIDR`
    /// rule in lists without a size bound exceeds the API server's cost budget).
    pub cidr: String,
    /// CIDRs inside `cidr` that the block leaves out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

/// A port, a port range or a named port, with optional HTTP rules.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRule {
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(extend("enum" = ["TCP", "UDP", "SCTP"])))]
    pub protocol: Option<String>,
    /// A number or a container port name; absent: every port of the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(schema_with = "int_or_string"))]
    pub port: Option<PortValue>,
    /// With a numeric `port`: the last port of the range (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", schemars(range(min = 1, max = 65535)))]
    pub end_port: Option<i64>,
    /// HTTP rules (TCP only, single port or named port). Present: the connection is sent to
    /// Palisade's L7 proxy and each request is decided by these rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<HttpRule>>,
}

/// A port number or name (Kubernetes int-or-string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum PortValue {
    Number(i64),
    Name(String),
}

/// A Kubernetes label selector.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    #[cfg_attr(
        feature = "kube",
        schemars(extend("enum" = ["In", "NotIn", "Exists", "DoesNotExist"]))
    )]
    pub operator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// What Palisade reports on a policy object (`status`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A status condition (`Accepted`, `Invalid`), as Kubernetes writes them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The CRD manifests `crdgen` writes to `deploy/crds/`: (file name, YAML).
#[cfg(feature = "kube")]
pub fn crd_manifests() -> Result<Vec<(String, String)>, String> {
    use kube::CustomResourceExt;
    let header = "# Generated from crds/src/lib.rs by crdgen; do not edit.\n\
                  # Regenerate: cargo run -p palisade-crds --features kube --bin crdgen\n";
    [
        PalisadeNetworkPolicy::crd(),
        PalisadeClusterNetworkPolicy::crd(),
    ]
    .into_iter()
    .map(|crd| {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let yaml = serde_saphyr::to_string(&crd).map_err(|e| format!("{name}: {e}"))?;
        Ok((format!("{name}.yaml"), format!("{header}{yaml}")))
    })
    .collect()
}

/// `x-kubernetes-int-or-string`: what the API server needs for a number-or-name field.
#[cfg(feature = "kube")]
fn int_or_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-int-or-string": true })
}

/// The cluster-scoped kind: the same spec (flattened, so both kinds share one schema
/// definition) in a cluster-scoped resource.
#[cfg(feature = "kube")]
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    kube::CustomResource,
    schemars::JsonSchema,
)]
#[kube(
    group = "policy.palisade.dev",
    version = "v1alpha1",
    kind = "PalisadeClusterNetworkPolicy",
    shortname = "pcnp",
    category = "palisade",
    status = "PolicyStatus",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct ClusterPolicySpec {
    #[serde(flatten)]
    pub spec: PolicySpec,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_policy_decodes_with_every_field() {
        let yaml = r#"
podSelector: {matchLabels: {app: backend}}
mode: Audit
ingress:
- name: frontend-reads
  from:
  - podSelector: {matchLabels: {app: frontend}}
  - entity: kube-apiserver
  ports:
  - port: 8080
    http:
    - method: GET
      path: /api/v1/.*
      headers: [{name: x-tenant}]
- action: Deny
  log: admin-writes
  ports:
  - port: http
    http: [{method: DELETE, path: /admin/.*}]
egress:
- to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
  ports: [{protocol: UDP, port: 53, endPort: 54}]
"#;
        let spec: PolicySpec = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(spec.mode, PolicyMode::Audit);
        let ingress = spec.ingress.as_ref().unwrap();
        assert_eq!(ingress[0].from[1].entity, Some(Entity::KubeApiserver));
        assert_eq!(ingress[1].action, RuleAction::Deny);
        assert_eq!(
            ingress[1].ports[0].port,
            Some(PortValue::Name("http".into()))
        );
        let http = ingress[0].ports[0].http.as_ref().unwrap();
        assert_eq!(http[0].path.as_deref(), Some("/api/v1/.*"));
        let back: PolicySpec =
            serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn unknown_fields_are_errors() {
        let err = serde_saphyr::from_str::<PolicySpec>("ingress: [{fromm: []}]").unwrap_err();
        assert!(err.to_string().contains("fromm"), "{err}");
    }
}

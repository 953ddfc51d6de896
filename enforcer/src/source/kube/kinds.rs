//! The kinds the Kubernetes source watches, in one table: what the cluster model is made of.
//!
//! `optional` kinds are custom resources: watched only while their CustomResourceDefinition
//! exists and is established (found at start and whenever it appears later). The RBAC rules
//! in `deploy/base/clusterrole.yaml` grant exactly `get, list, watch` on these resources.

/// One watched kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub kind: &'static str,
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
    /// A custom resource: watched only while its CRD is established.
    pub optional: bool,
    /// How a refused object of this kind is reported to its author.
    pub feedback: Feedback,
}

/// Where the agent tells a policy's author what it made of it (`feedback.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feedback {
    /// A Kubernetes Event (type Warning) on a refused object.
    Events,
    /// The object's `status.conditions` (Accepted, with the reason): a kind Palisade owns.
    Status,
}

impl Kind {
    /// `apps/v1`-style apiVersion.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether an object of this kind adds to the model independently of every other object
    /// (what the loader makes of it alone is its whole contribution), so a change can be
    /// applied to the model in place. Not so for Nodes and the cluster-admin kinds: the
    /// loader resolves the admin kinds' `nodes` peers against the Node objects.
    pub fn independent(&self) -> bool {
        !matches!(
            self.kind,
            "Node" | "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy" | "ClusterNetworkPolicy"
        )
    }

    /// The name of the CRD that defines this kind (`<plural>.<group>`).
    pub fn crd_name(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }
}

const fn core(kind: &'static str, plural: &'static str, namespaced: bool) -> Kind {
    Kind {
        kind,
        group: "",
        version: "v1",
        plural,
        namespaced,
        optional: false,
        feedback: Feedback::Events,
    }
}

const fn crd(
    kind: &'static str,
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    namespaced: bool,
) -> Kind {
    Kind {
        kind,
        group,
        version,
        plural,
        namespaced,
        optional: true,
        feedback: Feedback::Events,
    }
}

/// A custom resource whose status Palisade owns.
const fn owned(kind: Kind) -> Kind {
    Kind {
        feedback: Feedback::Status,
        ..kind
    }
}

/// Every kind the source reads. Indexes into this table identify a kind everywhere else.
pub const KINDS: &[Kind] = &[
    core("Namespace", "namespaces", false),
    core("Pod", "pods", true),
    core("Node", "nodes", false),
    core("Service", "services", true),
    Kind {
        kind: "EndpointSlice",
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        namespaced: true,
        optional: false,
        feedback: Feedback::Events,
    },
    Kind {
        kind: "NetworkPolicy",
        group: "networking.k8s.io",
        version: "v1",
        plural: "networkpolicies",
        namespaced: true,
        optional: false,
        feedback: Feedback::Events,
    },
    crd(
        "AdminNetworkPolicy",
        "policy.networking.k8s.io",
        "v1alpha1",
        "adminnetworkpolicies",
        false,
    ),
    crd(
        "BaselineAdminNetworkPolicy",
        "policy.networking.k8s.io",
        "v1alpha1",
        "baselineadminnetworkpolicies",
        false,
    ),
    crd(
        "ClusterNetworkPolicy",
        "policy.networking.k8s.io",
        "v1alpha2",
        "clusternetworkpolicies",
        false,
    ),
    owned(crd(
        "PalisadeNetworkPolicy",
        palisade_crds_group(),
        "v1alpha1",
        "palisadenetworkpolicies",
        true,
    )),
    owned(crd(
        "PalisadeClusterNetworkPolicy",
        palisade_crds_group(),
        "v1alpha1",
        "palisadeclusternetworkpolicies",
        false,
    )),
    crd(
        "CiliumNetworkPolicy",
        "cilium.io",
        "v2",
        "ciliumnetworkpolicies",
        true,
    ),
    crd(
        "CiliumClusterwideNetworkPolicy",
        "cilium.io",
        "v2",
        "ciliumclusterwidenetworkpolicies",
        false,
    ),
];

const fn palisade_crds_group() -> &'static str {
    "policy.palisade.dev"
}

/// Index of the Pod kind in [`KINDS`].
pub const POD: usize = 1;
/// Index of Namespace in [`KINDS`].
pub const NAMESPACE: usize = 0;
/// Index of Node in [`KINDS`].
pub const NODE: usize = 2;

/// The kind whose CRD is `name`, if it is one of ours.
pub fn by_crd_name(name: &str) -> Option<usize> {
    KINDS
        .iter()
        .position(|k| k.optional && k.crd_name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_compiler::manifest;
    use policy_compiler::rules::PolicyKind;

    #[test]
    fn every_kind_is_one_the_loader_models_at_the_version_it_reads() {
        for k in KINDS {
            if let Some(pk) = PolicyKind::from_kind(k.kind).filter(|p| !p.is_network_policy()) {
                assert_eq!(
                    manifest::api_version_of(pk),
                    k.api_version(),
                    "{} is read as another version",
                    k.kind
                );
            } else {
                assert!(manifest::is_modelled_kind(k.kind), "{}", k.kind);
            }
        }
        assert_eq!(KINDS[POD].kind, "Pod");
        assert_eq!(KINDS[NAMESPACE].kind, "Namespace");
        assert_eq!(KINDS[NODE].kind, "Node");
        assert_eq!(palisade_crds_group(), palisade_crds_group_of_the_crate());
    }

    fn palisade_crds_group_of_the_crate() -> &'static str {
        // The loader reads Palisade kinds at `<group>/v1alpha1`.
        manifest::api_version_of(PolicyKind::PalisadeNetworkPolicy)
            .split('/')
            .next()
            .unwrap_or_default()
    }

    #[test]
    fn the_cluster_role_grants_list_and_watch_on_every_kind() {
        let role = include_str!("../../../../deploy/base/clusterrole.yaml");
        for k in KINDS {
            assert!(
                role.contains(k.plural),
                "deploy/base/clusterrole.yaml does not name {}",
                k.plural
            );
        }
    }
}

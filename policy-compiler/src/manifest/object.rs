//! Decoding one object into the model: namespaces, pods, workloads, services and
//! NetworkPolicies, with the API server's field errors. Shared with a future Kubernetes
//! source, which decodes objects one at a time.

use super::*;
use crate::k8s::EndpointSliceObject;
use crate::model::{EndpointSlice, ServiceType, SliceEndpoint};

pub(super) fn object_label(head: &Head, kind: &str) -> String {
    let name = head.name.as_deref().unwrap_or("<unnamed>");
    match head.namespace.as_deref() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// A workload object before its endpoints are decided.
pub(super) struct WorkloadDef {
    pub(super) origin: Origin,
    pub(super) kind: String,
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) labels: Labels,
    pub(super) spec: Option<PodSpec>,
}

pub(super) struct Builder<'o> {
    pub(super) opts: &'o LoadOptions,
    pub(super) report: LoadReport,
    pub(super) cluster: Cluster,
    pub(super) invalid: Vec<InvalidObject>,
    pub(super) workloads: Vec<WorkloadDef>,
    pub(super) pods: Vec<(Origin, PodObject)>,
    pub(super) seen: BTreeMap<String, Origin>,
    /// Node objects, for the `nodes` peers of the cluster-admin kinds.
    pub(super) nodes: Vec<admin::NodeDef>,
    pub(super) node_peers: Vec<admin::NodePeer>,
}

/// The kinds the loader models, for "did you mean" hints.
pub(super) const KNOWN_KINDS: &[&str] = &[
    "Namespace",
    "Pod",
    "Service",
    "EndpointSlice",
    "NetworkPolicy",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
    "ReplicationController",
    "List",
    "Node",
    "AdminNetworkPolicy",
    "BaselineAdminNetworkPolicy",
    "ClusterNetworkPolicy",
];

impl<'o> Builder<'o> {
    pub(super) fn new(opts: &'o LoadOptions) -> Self {
        Builder {
            opts,
            report: LoadReport::default(),
            cluster: Cluster::default(),
            invalid: Vec::new(),
            workloads: Vec::new(),
            pods: Vec::new(),
            seen: BTreeMap::new(),
            nodes: Vec::new(),
            node_peers: Vec::new(),
        }
    }

    pub(super) fn decode<T: DeserializeOwned>(&mut self, doc: &Doc<'_>, object: &str) -> Option<T> {
        match doc.decode::<T>() {
            Ok(v) => Some(v),
            Err(msg) => {
                self.invalid.push(InvalidObject {
                    origin: doc.origin.clone(),
                    object: object.to_string(),
                    errors: Vec::new(),
                    messages: vec![msg],
                });
                None
            }
        }
    }

    /// A document the loader does not model: counted (and warned about by the caller), or
    /// an error in strict mode.
    pub(super) fn unmodelled(
        &mut self,
        origin: &Origin,
        key: String,
        reason: String,
    ) -> Result<(), LoadError> {
        if self.opts.strict_kinds {
            return Err(LoadError::Unmodelled {
                origin: origin.clone(),
                reason,
            });
        }
        self.report
            .unsupported_at
            .entry(key.clone())
            .or_insert_with(|| origin.to_string());
        *self.report.unsupported_kinds.entry(key).or_default() += 1;
        Ok(())
    }

    /// Takes one document: a `List` is flattened into its items, anything else is decoded
    /// into its typed object at once (the document's text or tree is dropped after).
    pub(super) fn add(&mut self, doc: Doc<'_>) -> Result<(), LoadError> {
        let head = doc.head();
        let kind = head.kind.clone().unwrap_or_default();
        let doc = if kind.ends_with("List") {
            let item_kind = kind.trim_end_matches("List").to_string();
            let default_kind = (!item_kind.is_empty()).then(|| item_kind.clone());
            let default_api = head.api.as_ref().map(|v| {
                if item_kind == "NetworkPolicy" {
                    "networking.k8s.io/v1".to_string()
                } else {
                    v.clone()
                }
            });
            let Doc { origin, body, .. } = doc;
            match body {
                Body::Raw(r) => match serde_json::from_str::<RawItems<'_>>(r.get()) {
                    Ok(items) => {
                        for item in items.items {
                            self.add(Doc {
                                origin: origin.clone(),
                                body: Body::Raw(item),
                                default_kind: default_kind.clone(),
                                default_api: default_api.clone(),
                            })?;
                        }
                        return Ok(());
                    }
                    Err(_) => Doc {
                        origin,
                        body: Body::Raw(r),
                        default_kind: None,
                        default_api: None,
                    },
                },
                Body::Tree(mut v) => {
                    let items = v.as_object_mut().and_then(|m| match m.remove("items") {
                        Some(Value::Array(items)) => Some(items),
                        Some(other) => {
                            m.insert("items".into(), other);
                            None
                        }
                        None => None,
                    });
                    match items {
                        Some(items) => {
                            for item in items {
                                self.add(Doc {
                                    origin: origin.clone(),
                                    body: Body::Tree(item),
                                    default_kind: default_kind.clone(),
                                    default_api: default_api.clone(),
                                })?;
                            }
                            return Ok(());
                        }
                        None => Doc {
                            origin,
                            body: Body::Tree(v),
                            default_kind: None,
                            default_api: None,
                        },
                    }
                }
            }
        } else {
            doc
        };
        if !head.is_object || head.kind.is_none() {
            if self.opts.strict_kinds {
                return Err(LoadError::Unmodelled {
                    origin: doc.origin.clone(),
                    reason: "not a Kubernetes object (no `kind`)".into(),
                });
            }
            self.report.warnings.push(format!(
                "{}: not a Kubernetes object (no `kind`); skipped",
                doc.origin
            ));
            return Ok(());
        }
        let api = head.api.clone().unwrap_or_default();
        let label = object_label(&head, &kind);
        if let Some(k) = palisade::policy_kind(&kind, &api) {
            return match k {
                Ok(k) => {
                    self.add_policy_kind(&doc, k, label);
                    Ok(())
                }
                Err(why) => self.unmodelled(
                    &doc.origin,
                    format!("{kind} ({api})"),
                    format!("{label}: {why}"),
                ),
            };
        }
        let supported =
            is_modelled_kind(&kind) && (kind != "NetworkPolicy" || api == "networking.k8s.io/v1");
        if !supported {
            if kind == "NetworkPolicy" {
                return self.unmodelled(
                    &doc.origin,
                    format!("{kind} ({api})"),
                    format!(
                        "{label}: apiVersion {api:?} is not modelled (NetworkPolicy is read as networking.k8s.io/v1 only)"
                    ),
                );
            }
            let hint = KNOWN_KINDS
                .iter()
                .find(|k| k.eq_ignore_ascii_case(&kind))
                .map(|k| format!("; did you mean {k}?"))
                .unwrap_or_default();
            return self.unmodelled(
                &doc.origin,
                kind.clone(),
                format!(
                    "{label}: kind {kind:?} is not modelled (Namespace, Node, Pod, Service, the policy kinds, workloads and Lists are){hint}"
                ),
            );
        }
        self.add_object(&doc, &head, &kind, label);
        Ok(())
    }

    /// One object of a Palisade, Cilium or cluster-admin policy kind.
    pub(super) fn add_policy_kind(&mut self, doc: &Doc<'_>, kind: PolicyKind, label: String) {
        *self.report.objects.entry(kind.to_string()).or_default() += 1;
        if kind.is_cluster_admin() {
            match admin::convert_object(kind, doc) {
                Ok(c) => {
                    let r = c.policy.pref();
                    let full_key = format!("{r}");
                    if let Some(prev) = self.seen.get(&full_key) {
                        self.invalid.push(InvalidObject {
                            origin: doc.origin.clone(),
                            object: label,
                            errors: Vec::new(),
                            messages: vec![format!("duplicate object: already defined in {prev}")],
                        });
                        return;
                    }
                    self.seen.insert(full_key, doc.origin.clone());
                    self.node_peers.extend(c.node_peers);
                    self.cluster.policies.insert(r, Arc::new(c.policy));
                }
                Err((errors, messages)) => self.invalid.push(InvalidObject {
                    origin: doc.origin.clone(),
                    object: label,
                    errors,
                    messages,
                }),
            }
            return;
        }
        let Some(object) = self.decode::<Value>(doc, &label) else {
            return;
        };
        match palisade::convert_object(kind, &object, &doc.origin) {
            Ok(policies) => {
                for p in policies {
                    let r = p.pref();
                    let full_key = format!("{r}");
                    if let Some(prev) = self.seen.get(&full_key) {
                        self.invalid.push(InvalidObject {
                            origin: doc.origin.clone(),
                            object: label.clone(),
                            errors: Vec::new(),
                            messages: vec![format!("duplicate object: already defined in {prev}")],
                        });
                        continue;
                    }
                    self.seen.insert(full_key, doc.origin.clone());
                    self.cluster.policies.insert(r, Arc::new(p));
                }
            }
            Err((errors, messages)) => self.invalid.push(InvalidObject {
                origin: doc.origin.clone(),
                object: label,
                errors,
                messages,
            }),
        }
    }

    pub(super) fn add_object(&mut self, doc: &Doc<'_>, head: &Head, kind: &str, label: String) {
        let opts = self.opts;
        let kind = kind.to_string();
        *self.report.objects.entry(kind.clone()).or_default() += 1;
        let full_key = {
            let name = head.name.as_deref().unwrap_or("");
            let ns = if kind == "Namespace" {
                ""
            } else {
                head.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
            };
            format!("{kind} {ns}/{name}")
        };
        if let Some(prev) = self.seen.get(&full_key) {
            self.invalid.push(InvalidObject {
                origin: doc.origin.clone(),
                object: label.clone(),
                errors: Vec::new(),
                messages: vec![format!("duplicate object: already defined in {prev}")],
            });
            return;
        }
        self.seen.insert(full_key, doc.origin.clone());
        match kind.as_str() {
            "Node" => match admin::convert_node(doc) {
                Ok(n) => self.nodes.push(n),
                Err((errors, messages)) => self.invalid.push(InvalidObject {
                    origin: doc.origin.clone(),
                    object: label,
                    errors,
                    messages,
                }),
            },
            "NetworkPolicy" => {
                let Some(np) = self.decode::<NetworkPolicyObject>(doc, &label) else {
                    return;
                };
                let v = validate::validate_network_policy(&np, &opts.validation);
                for w in v.warnings {
                    self.report
                        .warnings
                        .push(format!("{}: {label}: {w}", doc.origin));
                }
                if !v.errors.is_empty() {
                    self.invalid.push(InvalidObject {
                        origin: doc.origin.clone(),
                        object: label,
                        errors: v.errors,
                        messages: Vec::new(),
                    });
                    return;
                }
                match convert_policy(&np, &doc.origin) {
                    Ok(p) => {
                        self.cluster.policies.insert(p.pref(), Arc::new(p));
                    }
                    Err(errors) => self.invalid.push(InvalidObject {
                        origin: doc.origin.clone(),
                        object: label,
                        errors,
                        messages: Vec::new(),
                    }),
                }
            }
            "Namespace" => {
                let Some(ns) = self.decode::<NamespaceObject>(doc, &label) else {
                    return;
                };
                let mut errors = Vec::new();
                let name = required_name(&ns.metadata, &mut errors);
                validate::validate_labels(
                    ns.metadata.labels.as_ref().unwrap_or(&Labels::new()),
                    "metadata.labels",
                    &mut errors,
                );
                if !errors.is_empty() {
                    self.invalid.push(InvalidObject {
                        origin: doc.origin.clone(),
                        object: label,
                        errors,
                        messages: Vec::new(),
                    });
                    return;
                }
                let n = Namespace::new(&name, ns.metadata.labels.unwrap_or_default(), true);
                self.cluster.namespaces.insert(name, n);
            }
            "Pod" => {
                if let Some(p) = self.decode::<PodObject>(doc, &label) {
                    self.pods.push((doc.origin.clone(), p));
                }
            }
            "EndpointSlice" => {
                let Some(s) = self.decode::<EndpointSliceObject>(doc, &label) else {
                    return;
                };
                match convert_endpoint_slice(&s) {
                    Ok(Some(slice)) => {
                        self.cluster
                            .endpoint_slices
                            .insert((slice.namespace.clone(), slice.name.clone()), slice);
                    }
                    Ok(None) => {}
                    Err(errors) => self.invalid.push(InvalidObject {
                        origin: doc.origin.clone(),
                        object: label,
                        errors,
                        messages: Vec::new(),
                    }),
                }
            }
            "Service" => {
                let Some(s) = self.decode::<ServiceObject>(doc, &label) else {
                    return;
                };
                match convert_service(&s) {
                    Ok(svc) => {
                        self.cluster
                            .services
                            .insert((svc.namespace.clone(), svc.name.clone()), svc);
                    }
                    Err(errors) => self.invalid.push(InvalidObject {
                        origin: doc.origin.clone(),
                        object: label,
                        errors,
                        messages: Vec::new(),
                    }),
                }
            }
            _ => {
                let Some(w) = self.decode::<WorkloadObject>(doc, &label) else {
                    return;
                };
                let mut errors = Vec::new();
                let name = required_name(&w.metadata, &mut errors);
                let template = w.spec.as_ref().and_then(|s| {
                    if kind == "CronJob" {
                        s.job_template
                            .as_ref()
                            .and_then(|j| j.spec.as_ref())
                            .and_then(|s| s.template.clone())
                    } else {
                        s.template.clone()
                    }
                });
                let labels = template
                    .as_ref()
                    .and_then(|t| t.metadata.labels.clone())
                    .unwrap_or_default();
                let tpath = if kind == "CronJob" {
                    "spec.jobTemplate.spec.template.metadata.labels"
                } else {
                    "spec.template.metadata.labels"
                };
                validate::validate_labels(&labels, tpath, &mut errors);
                if !errors.is_empty() {
                    self.invalid.push(InvalidObject {
                        origin: doc.origin.clone(),
                        object: label,
                        errors,
                        messages: Vec::new(),
                    });
                    return;
                }
                self.workloads.push(WorkloadDef {
                    origin: doc.origin.clone(),
                    kind: kind.clone(),
                    namespace: namespace_of(&w.metadata),
                    name,
                    labels,
                    spec: template.and_then(|t| t.spec),
                });
            }
        }
    }

    pub(super) fn finish(self) -> Result<Loaded, LoadError> {
        let Builder {
            report,
            mut cluster,
            mut invalid,
            workloads,
            pods,
            nodes,
            node_peers,
            ..
        } = self;

        // Workload ownership: a pod belongs to its controller owner (the direct one, as
        // `kubectl get pods -o wide` shows it: a Deployment's pods belong to their ReplicaSet).
        let mut covered: BTreeSet<(String, String, String)> = BTreeSet::new();
        for (origin, pod) in pods {
            let label = format!(
                "Pod {}/{}",
                namespace_of(&pod.metadata),
                pod.metadata.name.as_deref().unwrap_or("<unnamed>")
            );
            let mut errors = Vec::new();
            let name = required_name(&pod.metadata, &mut errors);
            let ns = namespace_of(&pod.metadata);
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            validate::validate_labels(&labels, "metadata.labels", &mut errors);
            let ips = pod_ips(&pod, &mut errors);
            let ports = named_ports(pod.spec.as_ref(), "spec", &mut errors);
            if !errors.is_empty() {
                invalid.push(InvalidObject {
                    origin,
                    object: label,
                    errors,
                    messages: Vec::new(),
                });
                continue;
            }
            let workload = match controller_owner(&pod.metadata) {
                Some((kind, owner)) => {
                    covered.insert((ns.clone(), kind.clone(), owner.clone()));
                    WorkloadRef { kind, name: owner }
                }
                None => WorkloadRef {
                    kind: "Pod".into(),
                    name: name.clone(),
                },
            };
            let key = Endpoint::pod_key(&ns, &name);
            cluster.endpoints.insert(
                key.clone(),
                Endpoint {
                    key,
                    namespace: ns,
                    name,
                    workload,
                    labels,
                    ips,
                    ports,
                    host_network: pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.host_network)
                        .unwrap_or(false),
                },
            );
        }
        // Workloads without pods in the input: one representative endpoint each.
        for w in &workloads {
            if covered.contains(&(w.namespace.clone(), w.kind.clone(), w.name.clone())) {
                continue;
            }
            let mut errors = Vec::new();
            let ports = named_ports(w.spec.as_ref(), "spec.template.spec", &mut errors);
            if !errors.is_empty() {
                invalid.push(InvalidObject {
                    origin: w.origin.clone(),
                    object: format!("{} {}/{}", w.kind, w.namespace, w.name),
                    errors,
                    messages: Vec::new(),
                });
                continue;
            }
            let (kind, name) = (w.kind.clone(), w.name.clone());
            let key = Endpoint::workload_key(&w.namespace, &kind, &name);
            cluster.endpoints.entry(key.clone()).or_insert(Endpoint {
                key,
                namespace: w.namespace.clone(),
                name: name.clone(),
                workload: WorkloadRef { kind, name },
                labels: w.labels.clone(),
                ips: Vec::new(),
                ports,
                host_network: w
                    .spec
                    .as_ref()
                    .and_then(|s| s.host_network)
                    .unwrap_or(false),
            });
        }

        if !invalid.is_empty() {
            return Err(LoadError::Invalid(invalid));
        }
        let mut report = report;
        report
            .warnings
            .extend(admin::resolve_node_peers(&mut cluster, &nodes, &node_peers));
        report.warnings.extend(admin::priority_warnings(&cluster));
        cluster.imply_namespaces();
        Ok(Loaded { cluster, report })
    }
}

pub const DEFAULT_NAMESPACE: &str = "default";

pub(super) fn namespace_of(meta: &k8s::ObjectMeta) -> String {
    meta.namespace
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.into())
}

pub(super) fn required_name(meta: &k8s::ObjectMeta, errors: &mut Vec<FieldError>) -> String {
    match meta.name.as_deref() {
        Some(n) if !n.is_empty() => {
            for d in validate::is_dns1123_subdomain(n) {
                errors.push(field_invalid("metadata.name", format!("{n:?}"), d));
            }
            n.to_string()
        }
        _ => {
            errors.push(field_required(
                "metadata.name",
                "name or generateName is required",
            ));
            String::new()
        }
    }
}

/// The controller owner of an object. Nodes own static pods without managing them, so a
/// Node owner is no workload; an owner without a kind is taken as a bare pod group.
pub(super) fn controller_owner(meta: &k8s::ObjectMeta) -> Option<(String, String)> {
    let refs = meta.owner_references.as_ref()?;
    let r = refs.iter().find(|r| r.controller == Some(true))?;
    match r.kind.as_str() {
        "Node" => None,
        "" => Some(("Pod".into(), r.name.clone())),
        k => Some((k.to_string(), r.name.clone())),
    }
}

pub(super) fn pod_ips(pod: &PodObject, errors: &mut Vec<FieldError>) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let Some(st) = &pod.status else { return out };
    let mut push = |s: &str, path: String| match s.parse::<IpAddr>() {
        Ok(ip) => {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        Err(_) => errors.push(field_invalid(
            &path,
            format!("{s:?}"),
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)".into(),
        )),
    };
    if let Some(ips) = &st.pod_ips {
        for (i, p) in ips.iter().enumerate() {
            if let Some(ip) = p.ip.as_deref().filter(|s| !s.is_empty()) {
                push(ip, format!("status.podIPs[{i}].ip"));
            }
        }
    }
    if let Some(ip) = st.pod_ip.as_deref().filter(|s| !s.is_empty()) {
        push(ip, "status.podIP".into());
    }
    out
}

pub(super) fn named_ports(
    spec: Option<&PodSpec>,
    base: &str,
    errors: &mut Vec<FieldError>,
) -> Vec<NamedPort> {
    let mut out = Vec::new();
    let Some(spec) = spec else { return out };
    let groups = [
        ("containers", &spec.containers),
        ("initContainers", &spec.init_containers),
    ];
    for (field, containers) in groups {
        for (ci, c) in containers.iter().flatten().enumerate() {
            for (pi, p) in c.ports.iter().flatten().enumerate() {
                let path = format!("{base}.{field}[{ci}].ports[{pi}]");
                let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) else {
                    continue;
                };
                let Some(protocol) = port_protocol(p.protocol.as_deref(), &path, errors) else {
                    continue;
                };
                match p.container_port {
                    Some(n) if (1..=65535).contains(&n) => out.push(NamedPort {
                        name: name.to_string(),
                        port: n as u16,
                        protocol,
                    }),
                    Some(n) => errors.push(field_invalid(
                        &format!("{path}.containerPort"),
                        n.to_string(),
                        "must be between 1 and 65535, inclusive".into(),
                    )),
                    None => errors.push(field_required(&format!("{path}.containerPort"), "")),
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours) and its maximum
/// (one day), as the API server defaults and validates them.
const AFFINITY_DEFAULT_S: i64 = 10_800;
const AFFINITY_MAX_S: i64 = 86_400;

fn parse_ips(list: &[String], path: &str, errors: &mut Vec<FieldError>) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for (i, ip) in list.iter().enumerate() {
        match ip.parse::<IpAddr>() {
            Ok(a) if !out.contains(&a) => out.push(a),
            Ok(_) => {}
            Err(_) => errors.push(field_invalid(
                &format!("{path}[{i}]"),
                format!("{ip:?}"),
                "must be a valid IP address".into(),
            )),
        }
    }
    out
}

pub(super) fn convert_service(s: &ServiceObject) -> Result<Service, Vec<FieldError>> {
    let mut errors = Vec::new();
    let name = required_name(&s.metadata, &mut errors);
    let spec = s.spec.clone().unwrap_or_default();
    let service_type = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => ServiceType::ClusterIP,
        "NodePort" => ServiceType::NodePort,
        "LoadBalancer" => ServiceType::LoadBalancer,
        "ExternalName" => ServiceType::ExternalName,
        other => {
            errors.push(field_unsupported(
                "spec.type",
                format!("{other:?}"),
                &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
            ));
            ServiceType::ClusterIP
        }
    };
    let node_ports_allowed = matches!(
        service_type,
        ServiceType::NodePort | ServiceType::LoadBalancer
    );
    let mut cluster_ips = Vec::new();
    let ips = spec.cluster_ips.clone().unwrap_or_default();
    for ip in spec.cluster_ip.iter().chain(ips.iter()) {
        if ip.is_empty() || ip == "None" {
            continue;
        }
        match ip.parse::<IpAddr>() {
            Ok(a) if !cluster_ips.contains(&a) => cluster_ips.push(a),
            Ok(_) => {}
            Err(_) => errors.push(field_invalid(
                "spec.clusterIP",
                format!("{ip:?}"),
                "must be a valid IP address".into(),
            )),
        }
    }
    if service_type == ServiceType::ExternalName {
        cluster_ips.clear();
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let path = format!("spec.ports[{i}]");
        let Some(protocol) = port_protocol(p.protocol.as_deref(), &path, &mut errors) else {
            continue;
        };
        let Some(port) = p.port.filter(|n| (1..=65535).contains(n)) else {
            errors.push(field_invalid(
                &format!("{path}.port"),
                format!("{:?}", p.port),
                "must be between 1 and 65535, inclusive".into(),
            ));
            continue;
        };
        let target = match &p.target_port {
            None => ServiceTarget::Number(port as u16),
            Some(IntOrString::Int(n)) if (1..=65535).contains(n) => {
                ServiceTarget::Number(*n as u16)
            }
            Some(IntOrString::Int(n)) => {
                errors.push(field_invalid(
                    &format!("{path}.targetPort"),
                    n.to_string(),
                    "must be between 1 and 65535, inclusive".into(),
                ));
                continue;
            }
            Some(IntOrString::String(s)) => match s.parse::<u16>() {
                Ok(n) if n > 0 => ServiceTarget::Number(n),
                _ => ServiceTarget::Named(s.clone()),
            },
        };
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(_) if !node_ports_allowed => {
                errors.push(field_forbidden(
                    &format!("{path}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
                continue;
            }
            Some(n) if (1..=65535).contains(&n) => Some(n as u16),
            Some(n) => {
                errors.push(field_invalid(
                    &format!("{path}.nodePort"),
                    n.to_string(),
                    "must be between 1 and 65535, inclusive".into(),
                ));
                continue;
            }
        };
        ports.push(ServicePortSpec {
            name: p.name.clone(),
            port: port as u16,
            protocol,
            target,
            node_port,
        });
    }
    let external_ips = parse_ips(
        spec.external_ips.as_deref().unwrap_or_default(),
        "spec.externalIPs",
        &mut errors,
    );
    let lb: Vec<String> = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| ing.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default();
    let load_balancer_ips = parse_ips(&lb, "status.loadBalancer.ingress", &mut errors);
    let session_affinity_s = match spec.session_affinity.as_deref().unwrap_or("None") {
        "None" => None,
        "ClientIP" => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(AFFINITY_DEFAULT_S);
            if (1..=AFFINITY_MAX_S).contains(&t) {
                Some(t as u32)
            } else {
                errors.push(field_invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    t.to_string(),
                    format!("must be greater than 0 and less than {AFFINITY_MAX_S}"),
                ));
                None
            }
        }
        other => {
            errors.push(field_unsupported(
                "spec.sessionAffinity",
                format!("{other:?}"),
                &["ClientIP", "None"],
            ));
            None
        }
    };
    let mut local = |field: &str, v: Option<&str>| -> bool {
        match v.unwrap_or("Cluster") {
            "Cluster" => false,
            "Local" => true,
            other => {
                errors.push(field_unsupported(
                    field,
                    format!("{other:?}"),
                    &["Cluster", "Local"],
                ));
                false
            }
        }
    };
    let internal_traffic_local = local(
        "spec.internalTrafficPolicy",
        spec.internal_traffic_policy.as_deref(),
    );
    let external_traffic_local = local(
        "spec.externalTrafficPolicy",
        spec.external_traffic_policy.as_deref(),
    );
    if spec.external_traffic_policy.is_some() && !node_ports_allowed {
        errors.push(field_invalid(
            "spec.externalTrafficPolicy",
            format!(
                "{:?}",
                spec.external_traffic_policy.as_deref().unwrap_or_default()
            ),
            "may only be set when `type` is 'NodePort' or 'LoadBalancer'".into(),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Service {
        namespace: namespace_of(&s.metadata),
        name,
        selector: spec.selector.clone(),
        cluster_ips,
        ports,
        service_type,
        external_ips,
        load_balancer_ips,
        session_affinity_s,
        internal_traffic_local,
        external_traffic_local,
    })
}

/// The label that names an EndpointSlice's service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Converts a `discovery.k8s.io/v1` EndpointSlice; `FQDN` slices have nothing to translate
/// (`Ok(None)`).
pub(super) fn convert_endpoint_slice(
    s: &EndpointSliceObject,
) -> Result<Option<EndpointSlice>, Vec<FieldError>> {
    let mut errors = Vec::new();
    let name = required_name(&s.metadata, &mut errors);
    let namespace = namespace_of(&s.metadata);
    let family = match s.address_type.as_deref() {
        Some("IPv4") => 4,
        Some("IPv6") => 6,
        Some("FQDN") => return Ok(None),
        Some(other) => {
            errors.push(field_unsupported(
                "addressType",
                format!("{other:?}"),
                &["FQDN", "IPv4", "IPv6"],
            ));
            return Err(errors);
        }
        None => {
            errors.push(field_required("addressType", ""));
            return Err(errors);
        }
    };
    let service = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .cloned();
    let Some(service) = service else {
        errors.push(field_required(
            &format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
            "an EndpointSlice names its service with this label",
        ));
        return Err(errors);
    };
    let mut ports = Vec::new();
    for (i, p) in s.ports.iter().flatten().enumerate() {
        let path = format!("ports[{i}]");
        let Some(protocol) = port_protocol(p.protocol.as_deref(), &path, &mut errors) else {
            continue;
        };
        match p.port {
            Some(n) if (1..=65535).contains(&n) => ports.push((p.name.clone(), n as u16, protocol)),
            other => errors.push(field_invalid(
                &format!("{path}.port"),
                format!("{other:?}"),
                "must be between 1 and 65535, inclusive".into(),
            )),
        }
    }
    let mut endpoints = Vec::new();
    for (i, e) in s.endpoints.iter().flatten().enumerate() {
        let path = format!("endpoints[{i}].addresses");
        let addresses = parse_ips(
            e.addresses.as_deref().unwrap_or_default(),
            &path,
            &mut errors,
        );
        if addresses.is_empty() {
            errors.push(field_required(&path, "must contain at least one address"));
            continue;
        }
        if let Some(bad) = addresses.iter().find(|a| (a.is_ipv4()) != (family == 4)) {
            errors.push(field_invalid(
                &path,
                bad.to_string(),
                format!("must be an IPv{family} address (addressType)"),
            ));
            continue;
        }
        let c = e.conditions.clone().unwrap_or_default();
        let ready = c.ready.unwrap_or(true);
        let pod = e.target_ref.as_ref().and_then(|r| {
            (r.kind.as_deref() == Some("Pod"))
                .then(|| {
                    r.name
                        .as_ref()
                        .map(|n| Endpoint::pod_key(r.namespace.as_deref().unwrap_or(&namespace), n))
                })
                .flatten()
        });
        endpoints.push(SliceEndpoint {
            addresses,
            ready,
            serving: c.serving.unwrap_or(ready),
            terminating: c.terminating.unwrap_or(false),
            pod,
            node_name: e.node_name.clone(),
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Some(EndpointSlice {
        namespace,
        name,
        service,
        ports,
        endpoints,
    }))
}

/// Converts a validated NetworkPolicy into its defaulted internal form.
pub fn convert_policy(
    np: &NetworkPolicyObject,
    origin: &Origin,
) -> Result<Policy, Vec<FieldError>> {
    let namespace = np
        .metadata
        .namespace
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    let name = np.metadata.name.clone().unwrap_or_default();
    let spec = &np.spec;
    // Defaulting as the API server does: no policyTypes -> Ingress, plus Egress when
    // egress rules are present.
    let (isolate_ingress, isolate_egress) = match &spec.policy_types {
        Some(t) if !t.is_empty() => (
            t.iter().any(|x| x == "Ingress"),
            t.iter().any(|x| x == "Egress"),
        ),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    };
    let mut errors = Vec::new();
    let ingress = isolate_ingress.then(|| {
        spec.ingress
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| {
                convert_rule(
                    &namespace,
                    &r.from,
                    &r.ports,
                    &format!("spec.ingress[{i}]"),
                    "from",
                    &mut errors,
                )
            })
            .collect()
    });
    let egress = isolate_egress.then(|| {
        spec.egress
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| {
                convert_rule(
                    &namespace,
                    &r.to,
                    &r.ports,
                    &format!("spec.egress[{i}]"),
                    "to",
                    &mut errors,
                )
            })
            .collect()
    });
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Policy {
        kind: PolicyKind::NetworkPolicy,
        pod_selector: Selector::from_api(&spec.pod_selector),
        namespace_selector: None,
        namespace,
        name,
        ingress,
        egress,
        isolates: [true, true],
        audit: false,
        tier: crate::model::PolicyTier::NetworkPolicy,
        origin: origin.to_string(),
    })
}

pub(super) fn convert_rule(
    namespace: &str,
    peers: &Option<Vec<k8s::NetworkPolicyPeer>>,
    ports: &Option<Vec<k8s::NetworkPolicyPort>>,
    path: &str,
    peer_field: &str,
    errors: &mut Vec<FieldError>,
) -> Rule {
    let peers = match peers {
        None => Peers::Any,
        Some(l) if l.is_empty() => Peers::Any,
        Some(l) => Peers::List(
            l.iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    convert_peer(namespace, p, &format!("{path}.{peer_field}[{i}]"), errors)
                })
                .collect(),
        ),
    };
    let ports = ports
        .iter()
        .flatten()
        .map(|p| {
            let protocol = p
                .protocol
                .as_deref()
                .and_then(Protocol::from_name)
                .unwrap_or(Protocol::TCP);
            let port = match &p.port {
                None => PortMatch::All,
                Some(IntOrString::Int(n)) => {
                    let lo = *n as u16;
                    let hi = p.end_port.map(|e| e as u16).unwrap_or(lo);
                    PortMatch::Range(lo, hi)
                }
                Some(IntOrString::String(s)) => PortMatch::Named(s.clone()),
            };
            PortSpec::new(protocol, port)
        })
        .collect();
    Rule {
        peers,
        ports,
        ..Rule::default()
    }
}

pub(super) fn convert_peer(
    namespace: &str,
    p: &k8s::NetworkPolicyPeer,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Peer> {
    if let Some(b) = &p.ip_block {
        let parse = |s: &str, field: String, errors: &mut Vec<FieldError>| match s.parse::<Cidr>() {
            Ok(c) => Some(c),
            Err(e) => {
                errors.push(field_invalid(&field, format!("{s:?}"), e.to_string()));
                None
            }
        };
        let cidr = parse(&b.cidr, format!("{path}.ipBlock.cidr"), errors)?;
        let except = b
            .except
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, e)| parse(e, format!("{path}.ipBlock.except[{i}]"), errors))
            .collect();
        return Some(Peer::IpBlock { cidr, except });
    }
    let pods = p
        .pod_selector
        .as_ref()
        .map(Selector::from_api)
        .unwrap_or_default();
    let namespaces = match &p.namespace_selector {
        Some(ns) => NamespaceScope::Selected(Selector::from_api(ns)),
        None => NamespaceScope::Own(namespace.to_string()),
    };
    Some(Peer::Endpoints { namespaces, pods })
}

/// A port's protocol (default TCP, case-sensitive as in the API), or an error at `path`.
pub(super) fn port_protocol(
    proto: Option<&str>,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Protocol> {
    match proto.unwrap_or("TCP") {
        "TCP" => Some(Protocol::TCP),
        "UDP" => Some(Protocol::UDP),
        "SCTP" => Some(Protocol::SCTP),
        other => {
            errors.push(field_unsupported(
                &format!("{path}.protocol"),
                format!("{other:?}"),
                &["TCP", "UDP", "SCTP"],
            ));
            None
        }
    }
}

pub(super) fn field_invalid(field: &str, bad_value: String, detail: String) -> FieldError {
    FieldError {
        field: field.to_string(),
        error_type: validate::ErrorType::Invalid,
        bad_value: Some(bad_value),
        detail,
    }
}

pub(super) fn field_required(field: &str, detail: &str) -> FieldError {
    FieldError {
        field: field.to_string(),
        error_type: validate::ErrorType::Required,
        bad_value: None,
        detail: detail.to_string(),
    }
}

pub(super) fn field_forbidden(field: &str, detail: &str) -> FieldError {
    FieldError {
        field: field.to_string(),
        error_type: validate::ErrorType::Forbidden,
        bad_value: None,
        detail: detail.to_string(),
    }
}

/// `field.TooMany`: a list longer than the schema's `maxItems`.
pub(super) fn field_too_many(field: &str, n: usize, max: usize) -> FieldError {
    FieldError {
        field: field.to_string(),
        error_type: validate::ErrorType::TooMany,
        bad_value: Some(n.to_string()),
        detail: format!("must have at most {max} items"),
    }
}

pub(super) fn field_unsupported(field: &str, bad_value: String, supported: &[&str]) -> FieldError {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    FieldError {
        field: field.to_string(),
        error_type: validate::ErrorType::Unsupported,
        bad_value: Some(bad_value),
        detail: format!("supported values: {}", list.join(", ")),
    }
}

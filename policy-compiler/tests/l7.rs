//! Palisade's and Cilium's policy kinds in the NetworkPolicy tier: deny rules, entities,
//! cluster-scoped kinds, audit mode, and HTTP rules compiled into redirect entries plus the L7
//! rule table. Every flow goes through both evaluators (and both L7 rule-set lookups), which
//! must agree. The bug-class vectors M-CLASS-2/3/4 of the reliability plan are here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use palisade_l7proxy::{Decision as L7, NormalizeOptions, RequestHead, normalize};
use policy_compiler::engine::l7::L7Set;
use policy_compiler::eval::{maps, spec};
use policy_compiler::manifest::{LoadOptions, load_str};
use policy_compiler::{Decision, Engine, Flow, Protocol};

const PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: production, labels: {env: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {env: dev}}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: production, labels: {app: backend}}
spec: {containers: [{ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: production, labels: {app: frontend}}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: batch, namespace: production, labels: {app: batch}}
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: other, labels: {app: frontend}}
status: {podIP: 10.0.1.2}
"#;

fn with(policies: &str) -> Engine {
    engine(&format!("{PODS}\n---\n{policies}"))
}

fn flow(from: &str, to: &str, port: u16) -> Flow {
    Flow {
        src: peer(from),
        dst: peer(to),
        protocol: Protocol::TCP,
        port,
    }
}

/// The ingress-side HTTP rules of a flow, from both evaluators (which must agree).
fn ingress_l7(e: &Engine, from: &str, to: &str, port: u16) -> Option<L7Set> {
    let f = flow(from, to, port);
    let m = maps::l7_sets(e, &f);
    let s = spec::l7_sets(e.cluster(), e.rules(), e.config(), &f);
    assert_eq!(m, s, "L7 sets disagree for {f:?}");
    m.1
}

fn request(method: &str, path: &str) -> palisade_l7proxy::NormalizedRequest {
    let headers: [(&str, &[u8]); 1] = [("Host", b"backend:8080")];
    normalize(
        &RequestHead {
            method,
            target: path.as_bytes(),
            headers: &headers,
        },
        NormalizeOptions::default(),
    )
    .unwrap()
}

/// The proxy's answer for a request on the ingress side, and the policy rule named.
fn http(
    e: &Engine,
    from: &str,
    to: &str,
    port: u16,
    method: &str,
    path: &str,
) -> (L7, Option<String>) {
    let set = ingress_l7(e, from, to, port)
        .unwrap_or_else(|| panic!("{from} -> {to}:{port} is not redirected"));
    let compiled = e.compile_l7(&set);
    let (d, origin) = compiled.decide(&request(method, path));
    (
        d,
        origin.and_then(|o| e.rules().resolve(o.rule_id).map(|r| r.to_string())),
    )
}

const GUIDE_CNP: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: l7-frontend-policy
  namespace: production
spec:
  endpointSelector:
    matchLabels:
      app: backend
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: frontend
    toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
      rules:
        http:
        - method: "GET"
          path: "/api/v1/data"
"#;

#[test]
fn the_guide_manifest_redirects_and_decides_per_request() {
    let e = with(GUIDE_CNP);
    let v = check(
        &e,
        "production/frontend",
        "production/backend",
        Protocol::TCP,
        8080,
    );
    assert!(
        matches!(
            v.ingress,
            Some(Decision::Redirected {
                proxy_port: 15080,
                ..
            })
        ),
        "{v:?}"
    );
    let (d, rule) = http(
        &e,
        "production/frontend",
        "production/backend",
        8080,
        "GET",
        "/api/v1/data",
    );
    assert!(matches!(d, L7::Allow { .. }));
    assert_eq!(
        rule.as_deref(),
        Some("CiliumNetworkPolicy production/l7-frontend-policy ingress[0]")
    );
    assert_eq!(
        http(
            &e,
            "production/frontend",
            "production/backend",
            8080,
            "POST",
            "/api/v1/data"
        )
        .0,
        L7::NoMatch
    );
    // Other peers never reach the proxy: denied at L4.
    assert!(matches!(
        check(
            &e,
            "production/batch",
            "production/backend",
            Protocol::TCP,
            8080
        )
        .ingress,
        Some(Decision::DefaultDeny { .. })
    ));
    // Cilium's namespace semantics: `frontend` of another namespace is not selected.
    assert!(!tcp(&e, "other/frontend", "production/backend", 8080));
    assert!(!tcp(&e, "production/frontend", "production/backend", 9090));
}

const PNP_HTTP: &str = r#"
apiVersion: policy.palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: backend-http, namespace: production}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - name: reads
    from: [{podSelector: {matchLabels: {app: frontend}}}]
    ports: [{port: http, http: [{method: GET, path: "/api/.*"}, {method: DELETE, path: "/admin/.*"}]}]
  - name: no-admin-deletes
    action: Deny
    log: admin-delete
    ports: [{port: 8080, http: [{method: DELETE, path: "/admin/.*"}]}]
"#;

#[test]
fn an_http_deny_rule_beats_an_allow_that_matches() {
    let e = with(PNP_HTTP);
    let (d, rule) = http(
        &e,
        "production/frontend",
        "production/backend",
        8080,
        "DELETE",
        "/admin/users",
    );
    assert!(matches!(d, L7::Deny { .. }), "{d:?}");
    assert_eq!(
        rule.as_deref(),
        Some("PalisadeNetworkPolicy production/backend-http ingress[1]")
    );
    assert!(matches!(
        http(
            &e,
            "production/frontend",
            "production/backend",
            8080,
            "GET",
            "/api/x"
        )
        .0,
        L7::Allow { .. }
    ));
    // The deny rule names no peers, but HTTP deny rules never admit a connection: a peer no
    // allow rule names gets no connection at all.
    assert!(matches!(
        check(
            &e,
            "production/batch",
            "production/backend",
            Protocol::TCP,
            8080
        )
        .ingress,
        Some(Decision::DefaultDeny { .. })
    ));
}

#[test]
fn an_http_deny_rule_inspects_what_other_rules_admit() {
    // Not isolated (default deny off): the deny rule sends the connection to the proxy, which
    // forwards everything but what the deny rule names.
    let e = with(
        r#"
apiVersion: policy.palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: guard, namespace: production}
spec:
  podSelector: {matchLabels: {app: backend}}
  defaultDeny: {ingress: false}
  ingress:
  - action: Deny
    ports: [{port: 8080, http: [{method: DELETE}]}]
"#,
    );
    assert!(matches!(
        http(
            &e,
            "production/batch",
            "production/backend",
            8080,
            "DELETE",
            "/x"
        )
        .0,
        L7::Deny { .. }
    ));
    let (d, rule) = http(
        &e,
        "production/batch",
        "production/backend",
        8080,
        "GET",
        "/x",
    );
    assert!(matches!(d, L7::Allow { .. }));
    assert_eq!(rule, None, "admitted because nothing isolates the pod");
    assert!(matches!(
        check(
            &e,
            "production/batch",
            "production/backend",
            Protocol::TCP,
            9090
        )
        .ingress,
        Some(Decision::NotIsolated)
    ));
}

#[test]
fn m_class_3_an_allow_all_for_one_peer_keeps_http_rules_for_the_other() {
    // HTTP rules for frontend and batch, plus an L3/L4 allow for frontend on the port.
    let e = with(
        r#"
apiVersion: policy.palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: l7, namespace: production}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}, {podSelector: {matchLabels: {app: batch}}}]
    ports: [{port: 8080, http: [{method: GET}]}]
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
    ports: [{port: 8080}]
"#,
    );
    // frontend: union with the L3/L4 allow -> every request allowed (for that peer only).
    assert!(matches!(
        http(
            &e,
            "production/frontend",
            "production/backend",
            8080,
            "POST",
            "/"
        )
        .0,
        L7::Allow { .. }
    ));
    // batch: only the HTTP rule.
    assert_eq!(
        http(
            &e,
            "production/batch",
            "production/backend",
            8080,
            "POST",
            "/"
        )
        .0,
        L7::NoMatch
    );
    assert!(matches!(
        http(
            &e,
            "production/batch",
            "production/backend",
            8080,
            "GET",
            "/"
        )
        .0,
        L7::Allow { .. }
    ));
}

#[test]
fn m_class_2_a_port_range_allow_does_not_hide_http_rules_on_a_port_inside_it() {
    let e = with(
        r#"
apiVersion: policy.palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: range, namespace: production}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
    ports: [{port: 8000, endPort: 8100}]
  - from: [{podSelector: {matchLabels: {app: batch}}}]
    ports: [{port: 8080, http: [{method: GET}]}]
"#,
    );
    assert_eq!(
        http(
            &e,
            "production/batch",
            "production/backend",
            8080,
            "POST",
            "/"
        )
        .0,
        L7::NoMatch
    );
    assert!(matches!(
        http(
            &e,
            "production/batch",
            "production/backend",
            8080,
            "GET",
            "/"
        )
        .0,
        L7::Allow { .. }
    ));
    // The range still allows frontend on every port of it, 8080 included, at L4.
    assert!(matches!(
        check(
            &e,
            "production/frontend",
            "production/backend",
            Protocol::TCP,
            8080
        )
        .ingress,
        Some(Decision::Allowed { .. })
    ));
    assert!(tcp(&e, "production/frontend", "production/backend", 8099));
    assert!(!tcp(&e, "production/batch", "production/backend", 8081));
}

#[test]
fn m_class_4_a_wide_deny_beats_a_narrow_allow() {
    let e = with(
        r#"
apiVersion: policy.palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: egress, namespace: production}
spec:
  podSelector: {matchLabels: {app: frontend}}
  egress:
  - to: [{ipBlock: {cidr: 10.1.2.3/32}}]
  - action: Deny
    to: [{ipBlock: {cidr: 10.0.0.0/8}}]
  - to: [{ipBlock: {cidr: 192.0.2.0/24}}]
"#,
    );
    let v = check(&e, "production/frontend", "ip:10.1.2.3", Protocol::TCP, 443);
    assert!(
        matches!(v.egress, Some(Decision::Denied { audit: false, .. })),
        "{v:?}"
    );
    assert!(tcp(&e, "production/frontend", "ip:192.0.2.7", 443));
    assert!(!tcp(&e, "production/frontend", "ip:198.51.100.1", 443));
}

#[test]
fn entities_world_host_cluster() {
    let e = engine_with(
        &format!(
            "{PODS}\n---\n{}",
            r#"
apiVersion: policy.palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: entities, namespace: production}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from: [{entity: cluster}]
    ports: [{port: 9000}]
  - from: [{entity: world}]
    ports: [{port: 443}]
  - from: [{entity: host}]
    ports: [{port: 9100}]
"#
        ),
        policy_compiler::EngineConfig {
            host_addresses: vec!["192.168.1.1".parse().unwrap()],
            ..Default::default()
        },
    );
    assert!(tcp(&e, "other/frontend", "production/backend", 9000));
    assert!(
        tcp(&e, "ip:192.168.1.1", "production/backend", 9000),
        "the node is in the cluster"
    );
    assert!(!tcp(&e, "ip:203.0.113.9", "production/backend", 9000));
    assert!(tcp(&e, "ip:203.0.113.9", "production/backend", 443));
    assert!(!tcp(&e, "other/frontend", "production/backend", 443));
    assert!(tcp(&e, "ip:192.168.1.1", "production/backend", 9100));
}

#[test]
fn cluster_scoped_kinds_select_across_namespaces() {
    let e = with(
        r#"
apiVersion: policy.palisade.dev/v1alpha1
kind: PalisadeClusterNetworkPolicy
metadata: {name: frontends}
spec:
  namespaceSelector: {matchLabels: {env: prod}}
  podSelector: {matchLabels: {app: frontend}}
  egress:
  - to: [{podSelector: {matchLabels: {app: backend}}}]
    ports: [{port: 8080}]
"#,
    );
    // Peers without a namespaceSelector are in every namespace for a cluster kind.
    assert!(tcp(&e, "production/frontend", "production/backend", 8080));
    assert!(!tcp(&e, "production/frontend", "production/batch", 8080));
    // other/frontend is not in an env=prod namespace: not isolated.
    assert!(tcp(&e, "other/frontend", "production/batch", 8080));
    let v = check(
        &e,
        "production/frontend",
        "production/batch",
        Protocol::TCP,
        8080,
    );
    match v.egress {
        Some(Decision::DefaultDeny { isolated_by }) => {
            assert_eq!(
                isolated_by[0].to_string(),
                "PalisadeClusterNetworkPolicy frontends"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn audit_mode_reports_denies_and_isolates_nothing() {
    let e = with(
        r#"
apiVersion: policy.palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: audit, namespace: production}
spec:
  podSelector: {matchLabels: {app: backend}}
  mode: Audit
  ingress:
  - action: Deny
    from: [{podSelector: {matchLabels: {app: batch}}}]
"#,
    );
    let v = check(
        &e,
        "production/batch",
        "production/backend",
        Protocol::TCP,
        80,
    );
    assert!(
        matches!(v.ingress, Some(Decision::Denied { audit: true, .. })),
        "{v:?}"
    );
    assert!(v.allowed(), "audit forwards");
    assert!(matches!(
        check(
            &e,
            "production/frontend",
            "production/backend",
            Protocol::TCP,
            80
        )
        .ingress,
        Some(Decision::NotIsolated)
    ));
}

#[test]
fn default_deny_off_adds_rules_without_closing_the_rest() {
    let e = with(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-batch, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  enableDefaultDeny: {ingress: false}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: batch}}]
"#,
    );
    assert!(!tcp(&e, "production/batch", "production/backend", 80));
    assert!(tcp(&e, "production/frontend", "production/backend", 80));
}

#[test]
fn a_kind_names_its_policies_apart_from_networkpolicies_of_the_same_name() {
    let e = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: same, namespace: production}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress: [{from: [{podSelector: {matchLabels: {app: frontend}}}]}]
---
apiVersion: policy.palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: same, namespace: production}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - action: Deny
    from: [{podSelector: {matchLabels: {app: frontend}}}]
    ports: [{port: 22}]
"#,
    );
    assert_eq!(e.cluster().policies.len(), 2);
    assert!(tcp(&e, "production/frontend", "production/backend", 80));
    let v = check(
        &e,
        "production/frontend",
        "production/backend",
        Protocol::TCP,
        22,
    );
    assert!(matches!(v.ingress, Some(Decision::Denied { .. })));
}

fn load_errors(doc: &str) -> String {
    match load_str("bad.yaml", doc, &LoadOptions::default()) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_policies_are_refused_with_the_field() {
    let pnp = |spec: &str| {
        format!(
            "apiVersion: policy.palisade.dev/v1alpha1\nkind: PalisadeNetworkPolicy\nmetadata: {{name: x, namespace: production}}\nspec: {spec}\n"
        )
    };
    let cases: &[(&str, &str)] = &[
        (
            "{ingress: [{ports: [{port: 8080, http: [{path: 'a{1000}{1000}'}]}]}]}",
            "spec.ingress[0].ports[0].http[0].path",
        ),
        (
            "{ingress: [{ports: [{port: 8080, http: [{path: '(?<=x)'}]}]}]}",
            "spec.ingress[0].ports[0].http[0].path",
        ),
        (
            "{ingress: [{ports: [{port: 8080, http: [{path: '['}]}]}]}",
            "spec.ingress[0].ports[0].http[0].path",
        ),
        (
            "{ingress: [{ports: [{port: 8080, protocol: UDP, http: [{method: GET}]}]}]}",
            "spec.ingress[0].ports[0].http",
        ),
        (
            "{ingress: [{ports: [{port: 8080, endPort: 8090, http: [{method: GET}]}]}]}",
            "spec.ingress[0].ports[0].http",
        ),
        (
            "{ingress: [{ports: [{port: 8080, http: []}]}]}",
            "spec.ingress[0].ports[0].http",
        ),
        ("{ingress: [{to: [{entity: world}]}]}", "spec.ingress[0].to"),
        (
            "{ingress: [{from: [{entity: world, ipBlock: {cidr: 10.0.0.0/8}}]}]}",
            "spec.ingress[0].from[0]",
        ),
        (
            "{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]}]}",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "{namespaceSelector: {}, ingress: []}",
            "spec.namespaceSelector",
        ),
        (
            "{ingress: [{ports: [{port: 70000}]}]}",
            "spec.ingress[0].ports[0].port",
        ),
        ("{ingress: [{log: \"a\\nb\"}]}", "spec.ingress[0].log"),
        ("{ingress: [{fromm: []}]}", "fromm"),
        ("{mode: Sometimes}", "mode"),
    ];
    for (spec, field) in cases {
        let errs = load_errors(&pnp(spec));
        assert!(
            errs.contains(field),
            "{spec}: expected an error naming {field}, got:\n{errs}"
        );
    }
    let cnp = load_errors(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x, namespace: production}\nspec: {endpointSelector: {}, egress: [{toFQDNs: [{matchName: a.com}]}]}\n",
    );
    assert!(
        cnp.contains("spec.egress[0].toFQDNs") && cnp.contains("not supported"),
        "{cnp}"
    );
    let wrong_api = load_str(
        "v.yaml",
        "apiVersion: policy.palisade.dev/v2\nkind: PalisadeNetworkPolicy\nmetadata: {name: x}\nspec: {}\n",
        &LoadOptions::default(),
    )
    .unwrap();
    assert!(wrong_api.cluster.policies.is_empty());
    assert!(
        wrong_api
            .report
            .unsupported_kinds
            .contains_key("PalisadeNetworkPolicy (policy.palisade.dev/v2)")
    );
}

mod agreement {
    use super::common::generate::{flow_seeds, seed_to_flow};
    use super::common::generate_l7::{cluster, request};
    use palisade_l7proxy::Decision as L7;
    use policy_compiler::eval::{maps, spec};
    use policy_compiler::{Engine, EngineConfig};
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    /// Random mixes of every policy kind (NetworkPolicy; Palisade's kinds with deny rules,
    /// entities, cluster scope, audit, default deny off, HTTP rules; the cluster-admin kinds with
    /// Allow, Deny and Pass at colliding priorities) and random requests: both evaluators agree on the
    /// L3/L4 decision and rule, on the HTTP rules of every redirected side, and therefore on
    /// every request's decision and rule. The mix must exercise redirects, denies and both L7
    /// outcomes, or the property proves little.
    #[test]
    fn evaluators_agree_on_the_whole_networkpolicy_tier() {
        let mut runner = TestRunner::new(Config {
            cases: 1536,
            failure_persistence: None,
            ..Config::default()
        });
        let counts = std::cell::RefCell::new([0usize; 6]);
        let result = runner.run(
            &(
                cluster(),
                flow_seeds(150),
                prop::collection::vec(request(), 16),
                any::<bool>(),
            ),
            |(c, seeds, requests, host)| {
                let config = EngineConfig {
                    host_addresses: if host {
                        vec!["10.0.0.9".parse().unwrap()]
                    } else {
                        Vec::new()
                    },
                    ..EngineConfig::default()
                };
                let (engine, _) = Engine::compile(&c, config.clone())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                for s in &seeds {
                    let flow = seed_to_flow(&c, s);
                    let m = maps::evaluate(&engine, &flow);
                    let sp = spec::evaluate(engine.cluster(), engine.rules(), &config, &flow);
                    prop_assert_eq!(&m, &sp, "flow {:?}", flow);
                    let ml7 = maps::l7_sets(&engine, &flow);
                    let sl7 = spec::l7_sets(engine.cluster(), engine.rules(), &config, &flow);
                    prop_assert_eq!(&ml7, &sl7, "L7 sets of {:?}", flow);
                    let mut k = counts.borrow_mut();
                    if matches!(m.ingress, Some(policy_compiler::Decision::Denied { .. }))
                        || matches!(m.egress, Some(policy_compiler::Decision::Denied { .. }))
                    {
                        k[0] += 1;
                    }
                    // Sides decided by a rule of the admin or baseline tier.
                    k[5] += [&m.ingress, &m.egress]
                        .into_iter()
                        .flatten()
                        .filter_map(|d| d.rule())
                        .filter_map(|id| engine.rules().resolve(id))
                        .filter(|r| r.policy.kind.is_cluster_admin())
                        .count();
                    for set in [ml7.0, ml7.1].into_iter().flatten() {
                        k[1] += 1;
                        let compiled = engine.compile_l7(&set);
                        for r in &requests {
                            match compiled.decide(r).0 {
                                L7::Allow { .. } => k[2] += 1,
                                L7::Deny { .. } => k[3] += 1,
                                _ => k[4] += 1,
                            }
                        }
                    }
                }
                Ok(())
            },
        );
        if let Err(e) = result {
            panic!("{e}");
        }
        let k = counts.into_inner();
        println!(
            "denied sides {}, redirected sides {}, requests allowed {}, denied by rule {}, no rule {}, decided by the admin or baseline tier {}",
            k[0], k[1], k[2], k[3], k[4], k[5]
        );
        assert!(k.iter().all(|n| *n > 20), "degenerate mix: {k:?}");
    }
}

mod incremental {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::common::generate::{
        ChangeSeed, change_seed, flow_seeds, resolve_change, seed_to_flow,
    };
    use super::common::generate_l7::{cluster, policy};
    use policy_compiler::eval::{maps, spec};
    use policy_compiler::{Change, Engine, EngineConfig};
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    #[derive(Debug, Clone)]
    enum Step {
        Seed(ChangeSeed),
        Upsert(policy_compiler::model::Policy),
    }

    /// Every compiled policy map and L7 rule table, by identity.
    fn tables(
        e: &Engine,
    ) -> BTreeMap<
        u32,
        (
            Vec<(policy_compiler::EntryKey, policy_compiler::abi::PolicyValue)>,
            String,
        ),
    > {
        e.compiled()
            .iter()
            .map(|(id, p)| (*id, (p.entries.clone(), format!("{:?}", p.l7))))
            .collect()
    }

    /// Random change sequences over the whole NetworkPolicy tier: after each change both
    /// evaluators agree (decisions and HTTP rule sets), and the end state, policy maps and
    /// L7 rule tables, equals a compile from scratch.
    #[test]
    fn incremental_updates_of_every_kind_equal_a_scratch_compile() {
        let mut runner = TestRunner::new(Config {
            cases: 600,
            failure_persistence: None,
            ..Config::default()
        });
        let step = (0usize..1000).prop_flat_map(|i| {
            prop_oneof![
                2 => change_seed(i).prop_map(Step::Seed),
                1 => (0..6usize).prop_flat_map(|n| policy(format!("pol-{n}"))).prop_map(Step::Upsert),
            ]
        });
        let result = runner.run(
            &(cluster(), prop::collection::vec(step, 1..8), flow_seeds(40)),
            |(initial, steps, seeds)| {
                let config = EngineConfig::default();
                let (mut engine, _) = Engine::compile(&initial, config.clone())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                for s in &steps {
                    let change = match s {
                        Step::Seed(seed) => resolve_change(engine.cluster(), seed),
                        Step::Upsert(p) => Some(Change::UpsertPolicy(Arc::new(p.clone()))),
                    };
                    let Some(change) = change else { continue };
                    engine
                        .apply(vec![change])
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    for f in &seeds {
                        let flow = seed_to_flow(engine.cluster(), f);
                        let m = maps::evaluate(&engine, &flow);
                        let sp = spec::evaluate(engine.cluster(), engine.rules(), &config, &flow);
                        prop_assert_eq!(&m, &sp, "flow {:?} after {:?}", flow, s);
                        let ml7 = maps::l7_sets(&engine, &flow);
                        let sl7 = spec::l7_sets(engine.cluster(), engine.rules(), &config, &flow);
                        prop_assert_eq!(&ml7, &sl7, "L7 sets of {:?} after {:?}", flow, s);
                    }
                }
                let scratch = engine
                    .recompiled()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(tables(&scratch), tables(&engine), "incremental != scratch");
                Ok(())
            },
        );
        if let Err(e) = result {
            panic!("{e}");
        }
    }
}

#[test]
fn a_namespace_in_audit_mode_reports_what_every_policy_would_deny() {
    let e = engine(&format!(
        "{}\n---\n{}",
        PODS.replace(
            "metadata: {name: production, labels: {env: prod}}",
            "metadata: {name: production, labels: {env: prod, policy.palisade.dev/enforcement: audit}}"
        ),
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: production}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: production}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress: [{from: [{podSelector: {matchLabels: {app: frontend}}}], ports: [{port: 8080}]}]
---
apiVersion: policy.palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: no-batch, namespace: production}
spec:
  podSelector: {}
  defaultDeny: {ingress: false}
  ingress: [{action: Deny, from: [{podSelector: {matchLabels: {app: batch}}}]}]
"#
    ));
    // Allowed stays allowed.
    assert!(matches!(
        check(
            &e,
            "production/frontend",
            "production/backend",
            Protocol::TCP,
            8080
        )
        .ingress,
        Some(Decision::Allowed { .. })
    ));
    // Default deny is reported and forwarded.
    let v = check(
        &e,
        "other/frontend",
        "production/backend",
        Protocol::TCP,
        8080,
    );
    assert_eq!(
        v.ingress,
        Some(Decision::Denied {
            rule: 0,
            audit: true
        })
    );
    assert!(v.allowed());
    // An explicit deny too.
    let v = check(
        &e,
        "production/batch",
        "production/frontend",
        Protocol::TCP,
        80,
    );
    assert!(
        matches!(v.ingress, Some(Decision::Denied { audit: true, .. })),
        "{v:?}"
    );
    // Another namespace is enforced as usual.
    let e2 = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: default-deny, namespace: other}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
    );
    assert!(matches!(
        check(
            &e2,
            "production/frontend",
            "other/frontend",
            Protocol::TCP,
            80
        )
        .ingress,
        Some(Decision::DefaultDeny { .. })
    ));
}

/// Audit mode with HTTP rules: the connection goes to the proxy flagged audit (forwarded by a
/// datapath without a proxy), every request is forwarded by the enforced rules, and the
/// audit policy's HTTP rules say what they would refuse: a deny rule its matches, an allow
/// list everything outside it.
#[test]
fn audit_mode_http_rules_are_judged_and_only_reported() {
    let e = with(
        r#"
apiVersion: policy.palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: audit-http, namespace: production}
spec:
  podSelector: {matchLabels: {app: backend}}
  mode: Audit
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
    ports:
    - port: 8080
      http:
      - {method: GET, path: "/api/.*"}
  - action: Deny
    from: [{podSelector: {matchLabels: {app: batch}}}]
    ports:
    - port: 8080
      http:
      - {method: DELETE}
"#,
    );
    for from in ["production/frontend", "production/batch"] {
        let v = check(&e, from, "production/backend", Protocol::TCP, 8080);
        assert!(
            matches!(v.ingress, Some(Decision::Redirected { audit: true, .. })),
            "{from}: {v:?}"
        );
        assert!(v.allowed(), "audit enforces nothing");
    }
    let judge = |from: &str, method: &str, path: &str| {
        let set = ingress_l7(&e, from, "production/backend", 8080).unwrap();
        let c = e.compile_l7(&set);
        let req = request(method, path);
        assert!(
            c.decide(&req).0.allowed(),
            "{from} {method} {path} forwarded"
        );
        c.audit_refusal(&req).map(|(d, o)| {
            (
                d,
                o.and_then(|o| e.rules().resolve(o.rule_id).map(|r| r.to_string())),
            )
        })
    };
    assert_eq!(judge("production/frontend", "GET", "/api/v1"), None);
    let (d, rule) = judge("production/frontend", "POST", "/api/v1").unwrap();
    assert_eq!(d, L7::NoMatch, "outside the audit allow list");
    assert!(rule.unwrap().contains("audit-http"), "names the policy");
    let (d, rule) = judge("production/batch", "DELETE", "/x").unwrap();
    assert!(matches!(d, L7::Deny { .. }), "{d:?}");
    assert!(rule.unwrap().contains("audit-http"));
    assert_eq!(
        judge("production/batch", "GET", "/x"),
        None,
        "a deny-only audit rule refuses only what it matches"
    );
    // An unrelated port is not redirected.
    assert!(matches!(
        check(
            &e,
            "production/frontend",
            "production/backend",
            Protocol::TCP,
            9090
        )
        .ingress,
        Some(Decision::NotIsolated)
    ));
}

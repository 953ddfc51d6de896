//! Privileged harness for every verb (reliability.md §3.2), against network namespaces the
//! test creates. The plugin runs inside a test-owned "node" namespace, so its host-side
//! veths, routes and sysctls never touch the machine's own namespace. The enforcer here is
//! the TEST DOUBLE in common/mod.rs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::collections::BTreeSet;

use common::{FakeEnforcer, Mode, Netns, TestNet, privileged};
use palisade_api::Request;
use palisade_cni::link::host_ifname;
use palisade_cni::plugin::FaultPoint;

macro_rules! require_privileges {
    () => {
        if !privileged(module_path!()) {
            return;
        }
    };
}

fn pod_addr(pod: &Netns) -> String {
    let out = pod.ip(&["-j", "-4", "addr", "show", "dev", "eth0"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["addr_info"][0]["local"].as_str().unwrap().to_owned()
}

#[test]
fn add_check_del_and_traffic_between_two_pods() {
    require_privileges!();
    let net = TestNet::new("10.201.0.0/24");
    let enforcer = FakeEnforcer::start(&net.socket(), Mode::Accept);
    let (a, b) = (Netns::new("plp"), Netns::new("plp"));

    let r = net.run("ADD", "pod-a", Some(&a));
    r.ok();
    // C-RESULT
    assert_eq!(r.json["cniVersion"], "1.1.0");
    let ip = r.json["ips"][0]["address"].as_str().unwrap();
    assert!(ip.starts_with("10.201.0.") && ip.ends_with("/32"), "{ip}");
    let idx = r.json["ips"][0]["interface"].as_u64().unwrap() as usize;
    assert_eq!(r.json["interfaces"][idx]["name"], "eth0");
    assert_eq!(
        r.json["interfaces"][idx]["sandbox"],
        a.path().display().to_string()
    );
    assert_eq!(r.json["interfaces"][0]["name"], host_ifname("pod-a"));
    assert_eq!(r.json["routes"][0]["gw"], "169.254.1.1");
    assert_eq!(pod_addr(&a), ip.trim_end_matches("/32"));

    net.run("ADD", "pod-b", Some(&b)).ok();
    // The enforcer was told before ADD returned, with namespace/name from CNI_ARGS.
    let reqs = enforcer.requests.lock().unwrap().clone();
    let Request::Register(reg) = &reqs[0] else {
        panic!("{reqs:?}")
    };
    assert_eq!(
        (reg.namespace.as_str(), reg.pod.as_str()),
        ("ns1", "pod-pod-a")
    );
    assert_eq!(reg.host_ifname, host_ifname("pod-a"));

    // Routing layout: pod -> 169.254.1.1 (proxy ARP) -> node -> /32 route -> other pod.
    let b_ip = pod_addr(&b);
    let ping = a.exec(&["busybox", "ping", "-c", "1", "-W", "2", &b_ip]);
    assert!(
        ping.status.success(),
        "ping a->b: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // C-CHECK-1
    net.run("CHECK", "pod-a", Some(&a)).ok();

    // C-DEL-1: three DELs, all succeed; the address and the link are gone after the first.
    for _ in 0..3 {
        net.run("DEL", "pod-a", Some(&a)).ok();
    }
    assert!(!net.node.has_link(&host_ifname("pod-a")));
    assert!(!a.has_link("eth0"));
    assert_eq!(net.allocations().len(), 1);
    net.run("DEL", "pod-b", Some(&b)).ok();
    assert!(net.allocations().is_empty());
    assert!(net.host_links().is_empty());
}

#[test]
fn old_result_versions() {
    require_privileges!();
    let net = TestNet::new("10.202.0.0/24");
    let _enforcer = FakeEnforcer::start(&net.socket(), Mode::Accept);
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
        let pod = Netns::new("plp");
        let cid = format!("v{}", version.replace('.', ""));
        let r = common::run_plugin(
            Some(&net.node),
            &net.vars("ADD", &cid, Some(&pod)),
            &net.conf(version).to_string(),
        );
        r.ok();
        assert_eq!(r.json["cniVersion"], version);
        let has_version = r.json["ips"][0].get("version").is_some();
        assert_eq!(has_version, version != "1.0.0", "{version}: {}", r.stdout);
        common::run_plugin(
            Some(&net.node),
            &net.vars("DEL", &cid, Some(&pod)),
            &net.conf(version).to_string(),
        )
        .ok();
    }
}

#[test]
fn c_add_dup_and_c_add_exists() {
    require_privileges!();
    let net = TestNet::new("10.203.0.0/24");
    let _enforcer = FakeEnforcer::start(&net.socket(), Mode::Accept);
    let pod = Netns::new("plp");
    net.run("ADD", "dup", Some(&pod)).ok();
    net.run("ADD", "dup", Some(&pod)).err(101);
    assert_eq!(net.allocations().len(), 1, "no second address");
    net.run("CHECK", "dup", Some(&pod)).ok();

    // The interface already exists in the pod: error, nothing reserved or created.
    let other = Netns::new("plp");
    other.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
    ]);
    net.run("ADD", "exists", Some(&other)).err(101);
    assert_eq!(net.allocations().len(), 1);
    assert!(!net.node.has_link(&host_ifname("exists")));
    net.run("DEL", "exists", Some(&other)).ok();
    assert!(
        other.has_link("eth0"),
        "DEL of a failed ADD leaves foreign interfaces alone"
    );
}

#[test]
fn c_add_fail_enforcer_unreachable_refusing_or_hanging_leaves_nothing() {
    require_privileges!();
    let net = TestNet::new("10.204.0.0/24");
    let pod = Netns::new("plp");
    // No enforcer at all: code 11, nothing left.
    let msg = net.run("ADD", "c1", Some(&pod)).err(11);
    assert!(msg.contains("unreachable"), "{msg}");
    assert!(net.allocations().is_empty());
    assert!(net.host_links().is_empty());
    assert!(!pod.has_link("eth0"));

    let enforcer = FakeEnforcer::start(&net.socket(), Mode::Refuse);
    net.run("ADD", "c1", Some(&pod)).err(103);
    enforcer.set_mode(Mode::NotReady);
    net.run("ADD", "c1", Some(&pod)).err(11);
    enforcer.set_mode(Mode::Hang);
    net.run("ADD", "c1", Some(&pod)).err(11);
    assert!(net.allocations().is_empty());
    assert!(net.host_links().is_empty());
    assert!(!pod.has_link("eth0"));
    // Rolled back registrations are withdrawn.
    let deregs = enforcer
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| matches!(r, Request::Deregister { .. }))
        .count();
    assert!(deregs >= 2, "{deregs}");

    // Netns gone before ADD: error, nothing reserved.
    enforcer.set_mode(Mode::Accept);
    let gone = Netns::new("plp");
    let path = gone.path();
    drop(gone);
    let mut vars = net.vars("ADD", "c2", None);
    vars.push(("CNI_NETNS", path.display().to_string()));
    common::run_plugin(Some(&net.node), &vars, &net.conf("1.1.0").to_string()).err(102);
    assert!(net.allocations().is_empty());
}

#[test]
fn c_del_without_netns_unknown_container_and_enforcer_down() {
    require_privileges!();
    let net = TestNet::new("10.205.0.0/24");
    let enforcer = FakeEnforcer::start(&net.socket(), Mode::Accept);
    let pod = Netns::new("plp");
    net.run("ADD", "d1", Some(&pod)).ok();
    drop(pod); // the runtime removed the netns first
    drop(enforcer); // and the enforcer is down
    net.run("DEL", "d1", None).ok();
    assert!(net.allocations().is_empty());
    assert!(net.host_links().is_empty());
    // C-DEL-3: unknown container, no prevResult.
    net.run("DEL", "never-added", None).ok();
}

#[test]
fn c_check_2_names_what_is_missing() {
    require_privileges!();
    let net = TestNet::new("10.206.0.0/24");
    let _enforcer = FakeEnforcer::start(&net.socket(), Mode::Accept);
    let pod = Netns::new("plp");
    let r = net.run("ADD", "k1", Some(&pod));
    r.ok();
    let ip = r.json["ips"][0]["address"].as_str().unwrap().to_owned();
    let host = host_ifname("k1");

    // prevResult naming another address.
    let mut conf = net.conf("1.1.0");
    conf["prevResult"] =
        serde_json::json!({"cniVersion": "1.1.0", "ips": [{"address": "10.9.9.9/32"}]});
    let msg = common::run_plugin(
        Some(&net.node),
        &net.vars("CHECK", "k1", Some(&pod)),
        &conf.to_string(),
    )
    .err(104);
    assert!(msg.contains("prevResult"), "{msg}");
    conf["prevResult"] = r.json.clone();
    common::run_plugin(
        Some(&net.node),
        &net.vars("CHECK", "k1", Some(&pod)),
        &conf.to_string(),
    )
    .ok();

    net.node.ip(&["route", "del", &ip, "dev", &host]);
    assert!(
        net.run("CHECK", "k1", Some(&pod))
            .err(104)
            .contains("host route")
    );
    net.node
        .ip(&["route", "add", &ip, "dev", &host, "scope", "link"]);
    net.run("CHECK", "k1", Some(&pod)).ok();

    pod.ip(&["route", "del", "default"]);
    assert!(
        net.run("CHECK", "k1", Some(&pod))
            .err(104)
            .contains("default route")
    );
    pod.ip(&["addr", "del", &ip, "dev", "eth0"]);
    assert!(
        net.run("CHECK", "k1", Some(&pod))
            .err(104)
            .contains("address")
    );
    net.node.ip(&["link", "del", &host]);
    assert!(
        net.run("CHECK", "k1", Some(&pod))
            .err(104)
            .contains("missing")
    );
    net.run("CHECK", "unknown", Some(&pod)).err(104);
    net.run("DEL", "k1", Some(&pod)).ok();
    assert!(net.allocations().is_empty());
}

#[test]
fn c_gc_valid_sets() {
    require_privileges!();
    let net = TestNet::new("10.207.0.0/24");
    let _enforcer = FakeEnforcer::start(&net.socket(), Mode::Accept);
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("plp")).collect();
    for (i, p) in pods.iter().enumerate() {
        net.run("ADD", &format!("g{i}"), Some(p)).ok();
    }
    // C-GC-1: all valid -> nothing released.
    net.gc(&[("g0", "eth0"), ("g1", "eth0"), ("g2", "eth0")])
        .ok();
    assert_eq!(net.allocations().len(), 3);
    assert_eq!(net.host_links().len(), 3);
    // Partly valid.
    net.gc(&[("g1", "eth0")]).ok();
    assert_eq!(
        net.allocations()
            .iter()
            .map(|a| a.1.as_str())
            .collect::<Vec<_>>(),
        ["g1"]
    );
    assert_eq!(net.host_links(), [host_ifname("g1")]);
    // C-GC-2: empty -> all released; the lock file stays.
    net.gc(&[]).ok();
    assert!(net.allocations().is_empty());
    assert!(net.host_links().is_empty());
    assert!(net.state_dir().join("lock").exists());
    // GC needs the valid set.
    common::run_plugin(
        Some(&net.node),
        &[("CNI_COMMAND", "GC".into()), ("CNI_PATH", "/x".into())],
        &net.conf("1.1.0").to_string(),
    )
    .err(7);
}

#[test]
fn c_status_exhaustion_and_enforcer() {
    require_privileges!();
    let mut net = TestNet::new("10.208.0.0/24");
    net.extra = serde_json::json!({"ipam": {"type": "palisade", "subnet": "10.208.0.0/24",
        "rangeStart": "10.208.0.10", "rangeEnd": "10.208.0.10", "dataDir": net.ipam_dir()}});
    let status = |net: &TestNet| {
        common::run_plugin(
            Some(&net.node),
            &[("CNI_COMMAND", "STATUS".into()), ("CNI_PATH", "/x".into())],
            &net.conf("1.1.0").to_string(),
        )
    };
    // Enforcer down -> 50.
    assert!(status(&net).err(50).contains("not available"));
    let enforcer = FakeEnforcer::start(&net.socket(), Mode::Accept);
    status(&net).ok();
    enforcer.set_mode(Mode::NotReady);
    status(&net).err(50);
    enforcer.set_mode(Mode::Accept);
    let pod = Netns::new("plp");
    net.run("ADD", "s1", Some(&pod)).ok();
    // Pool of one: exhausted -> STATUS 50, ADD 100.
    let r = status(&net);
    r.err(50);
    assert!(
        r.json["details"]
            .as_str()
            .unwrap()
            .contains("no free address"),
        "{}",
        r.stdout
    );
    let pod2 = Netns::new("plp");
    net.run("ADD", "s2", Some(&pod2)).err(100);
    assert!(net.host_links().len() == 1);
    net.run("DEL", "s1", Some(&pod)).ok();
    status(&net).ok();
}

#[test]
fn c_conc_100_parallel_adds_then_dels() {
    require_privileges!();
    let net = TestNet::new("10.209.0.0/24");
    let _enforcer = FakeEnforcer::start(&net.socket(), Mode::Accept);
    let pods: Vec<Netns> = (0..100).map(|_| Netns::new("plc")).collect();
    let ips: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let net = &net;
                s.spawn(move || {
                    let r = net.run("ADD", &format!("conc{i}"), Some(p));
                    r.ok();
                    r.json["ips"][0]["address"].as_str().unwrap().to_owned()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: BTreeSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), 100, "duplicate addresses");
    assert_eq!(net.allocations().len(), 100);
    assert_eq!(net.host_links().len(), 100);
    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let net = &net;
            s.spawn(move || net.run("DEL", &format!("conc{i}"), Some(p)).ok().code);
        }
    });
    assert!(net.allocations().is_empty());
    assert!(net.host_links().is_empty());
}

#[test]
fn c_crash_at_each_add_step_then_gc_or_del() {
    require_privileges!();
    let net = TestNet::new("10.210.0.0/24");
    let enforcer = FakeEnforcer::start(&net.socket(), Mode::Accept);
    let keep = Netns::new("plp");
    net.run("ADD", "survivor", Some(&keep)).ok();
    for round in 0..3 {
        for point in FaultPoint::ALL {
            let pod = Netns::new("plp");
            let cid = format!("crash{round}{}", point.name().replace('_', ""));
            let mut vars = net.vars("ADD", &cid, Some(&pod));
            vars.push(("PALISADE_CNI_FAULT", point.name().to_owned()));
            let r = common::run_plugin(Some(&net.node), &vars, &net.conf("1.1.0").to_string());
            assert_eq!(r.signal, Some(9), "{}: {}", point.name(), r.stdout);
            assert!(
                net.allocations().iter().any(|a| a.1 == cid),
                "{}: reservation made",
                point.name()
            );
            if round % 2 == 0 {
                net.gc(&[("survivor", "eth0")]).ok();
            } else {
                net.run("DEL", &cid, Some(&pod)).ok();
            }
            let allocs = net.allocations();
            assert_eq!(allocs.len(), 1, "{}: leaked {allocs:?}", point.name());
            assert_eq!(
                net.host_links(),
                [host_ifname("survivor")],
                "{}",
                point.name()
            );
            assert!(!pod.has_link("eth0"), "{}", point.name());
            let files: Vec<_> = std::fs::read_dir(net.state_dir())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            let mut files: Vec<String> = files
                .into_iter()
                .map(|f| f.to_string_lossy().into_owned())
                .collect();
            // No temporary file survives; state.json links one of the two data slots.
            files.retain(|f| f != "state.a.json" && f != "state.b.json");
            files.sort();
            assert_eq!(files, ["lock", "state.json"], "{}", point.name());
        }
    }
    // Registrations made before a crash were withdrawn by GC or DEL.
    let deregistered: BTreeSet<String> = enforcer
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter_map(|r| match r {
            Request::Deregister { container_id } => Some(container_id.clone()),
            _ => None,
        })
        .collect();
    for cid in enforcer.registered() {
        assert!(
            cid == "survivor" || deregistered.contains(&cid),
            "{cid} still registered"
        );
    }
    net.run("DEL", "survivor", Some(&keep)).ok();
}

#[test]
fn orphan_link_without_reservation_is_collected() {
    require_privileges!();
    let net = TestNet::new("10.211.0.0/24");
    let _enforcer = FakeEnforcer::start(&net.socket(), Mode::Accept);
    let pod = Netns::new("plp");
    net.run("ADD", "o1", Some(&pod)).ok();
    // Simulate a lost state file (e.g. an operator deleted it): the link is now an orphan.
    std::fs::remove_file(net.state_dir().join("state.json")).unwrap();
    // A link of another network with our prefix is not ours to touch.
    net.node.ip(&[
        "link",
        "add",
        "lxcforeign",
        "type",
        "veth",
        "peer",
        "name",
        "lxcforeignp",
    ]);
    net.node.ip(&[
        "link",
        "set",
        "dev",
        "lxcforeign",
        "alias",
        "palisade:othernet/x",
    ]);
    net.gc(&[]).ok();
    assert!(!net.node.has_link(&host_ifname("o1")));
    assert!(net.node.has_link("lxcforeign"));
}

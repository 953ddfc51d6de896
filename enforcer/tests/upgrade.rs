//! Upgrade from an older ABI's pins (docs/upgrade.md): a `v1/` directory with pinned TCX
//! links and a pinned map, planted with a stand-in program (`legacy_pass` of
//! `ebpf/tests/test_progs.c`), must stay attached until this datapath is attached to the
//! same interface ahead of it, and only then be released and removed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code states expectations by panicking"
)]

mod common;

use std::fs::File;
use std::path::Path;
use std::process::Command;

use aya::EbpfLoader;
use aya::programs::links::FdLink;
use aya::programs::tc::TcAttachOptions;
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use palisade_enforcer::datapath::{Datapath, Hook, ifindex_of};

static TEST_PROGS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/test_progs.o"));

/// A network namespace with a veth pair (`up0`, `up1`), deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("pal-up-{tag}-{}", std::process::id());
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&[
            "-n", &ns.name, "link", "add", "up0", "type", "veth", "peer", "name", "up1",
        ]);
        ip(&["-n", &ns.name, "link", "set", "up0", "up"]);
        ip(&["-n", &ns.name, "link", "set", "up1", "up"]);
        ns
    }

    /// Runs `f` on a thread inside the namespace (the mount namespace, and so the pins,
    /// stay the test's).
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = File::open(&path).unwrap();
                nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// TCX program names on up0, per hook, in chain order.
fn chain() -> Vec<(Hook, Vec<String>)> {
    Datapath::query("up0")
        .unwrap()
        .into_iter()
        .map(|(h, progs)| {
            let names = progs
                .into_iter()
                .map(|p| p.split(' ').next().unwrap().to_string())
                .collect();
            (h, names)
        })
        .collect()
}

/// What an ABI v1 agent leaves: `v1/links/if<ifindex>-{from,to}-pod` pinned TCX links of
/// its programs and a pinned map. The loader object must outlive nothing: pins hold
/// everything.
fn plant_v1(root: &Path) {
    let v1 = root.join("v1");
    std::fs::create_dir_all(v1.join("links")).unwrap();
    let mut bpf = EbpfLoader::new().load(TEST_PROGS).unwrap();
    bpf.map("legacy_state")
        .unwrap()
        .pin(v1.join("pal_endpoints"))
        .unwrap();
    let ifindex = ifindex_of("up0").unwrap();
    let prog: &mut SchedClassifier = bpf.program_mut("legacy_pass").unwrap().try_into().unwrap();
    prog.load().unwrap();
    for (attach, suffix) in [
        (TcAttachType::Ingress, "from-pod"),
        (TcAttachType::Egress, "to-pod"),
    ] {
        let id = prog
            .attach_with_options(
                "up0",
                attach,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .unwrap();
        let link: FdLink = prog.take_link(id).unwrap().try_into().unwrap();
        link.pin(v1.join("links").join(format!("if{ifindex}-{suffix}")))
            .unwrap();
    }
}

#[test]
fn older_links_are_released_only_after_the_new_ones_are_attached() {
    if !common::privileged("upgrade") {
        return;
    }
    let fs = common::PrivateBpffs::new("upgrade");
    let ns = Netns::new("a");
    let root = fs.path().to_path_buf();
    ns.run(|| {
        plant_v1(&root);
        let legacy = vec!["legacy_pass".to_string()];
        assert_eq!(
            chain(),
            vec![
                (Hook::FromPod, legacy.clone()),
                (Hook::ToPod, legacy.clone())
            ]
        );

        let mut dp = fs.load();
        assert_eq!(dp.older_abis(), [root.join("v1")]);
        // Not attached here yet: the older links are all that enforces up0, so they stay.
        let r = dp.retire_older_abis().unwrap();
        assert_eq!((r.links_removed, r.links_kept), (0, 2));
        assert!(r.dirs_removed.is_empty());
        assert!(root.join("v1/pal_endpoints").exists());
        assert_eq!(
            chain(),
            vec![
                (Hook::FromPod, legacy.clone()),
                (Hook::ToPod, legacy.clone())
            ]
        );

        // Attached: ours first, the older program still behind it.
        dp.attach("up0").unwrap();
        assert_eq!(
            chain(),
            vec![
                (Hook::FromPod, vec!["from_pod".into(), "legacy_pass".into()]),
                (Hook::ToPod, vec!["to_pod".into(), "legacy_pass".into()]),
            ]
        );

        // Now the older links and the whole v1 directory go.
        let r = dp.retire_older_abis().unwrap();
        assert_eq!((r.links_removed, r.links_kept), (2, 0));
        assert_eq!(r.dirs_removed, [root.join("v1")]);
        assert!(!root.join("v1").exists());
        assert!(dp.older_abis().is_empty());
        // The kernel releases a link when its last reference (the pin) goes, which can
        // lag the unlink by a moment.
        let want = vec![
            (Hook::FromPod, vec!["from_pod".to_string()]),
            (Hook::ToPod, vec!["to_pod".to_string()]),
        ];
        let mut seen = chain();
        for _ in 0..100 {
            if seen == want {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            seen = chain();
        }
        assert_eq!(seen, want);
        dp.detach(ifindex_of("up0").unwrap());
    });
}

#[test]
fn an_older_link_of_a_vanished_interface_is_removed() {
    if !common::privileged("upgrade-gone") {
        return;
    }
    let fs = common::PrivateBpffs::new("upgrade-gone");
    let ns = Netns::new("b");
    let root = fs.path().to_path_buf();
    ns.run(|| {
        plant_v1(&root);
        let st = Command::new("ip")
            .args(["-n", &ns.name, "link", "del", "up0"])
            .status()
            .unwrap();
        assert!(st.success());
        let mut dp = fs.load();
        let r = dp.retire_older_abis().unwrap();
        assert_eq!((r.links_removed, r.links_kept), (2, 0));
        assert!(!root.join("v1").exists());
    });
}

/// An ABI v1 conntrack entry (48-byte layout) for `src:sport -> dst:dport` TCP, made by the
/// `to_pod` hook (direction ingress) of ifindex 1.
fn v1_ct(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> ([u8; 44], [u8; 48]) {
    let mut k = [0u8; 44];
    k[0..4].copy_from_slice(&src);
    k[16..20].copy_from_slice(&dst);
    k[32..34].copy_from_slice(&sport.to_be_bytes());
    k[34..36].copy_from_slice(&dport.to_be_bytes());
    k[36] = 6;
    k[37] = 4;
    k[38] = palisade_abi::DIRECTION_INGRESS;
    k[40..44].copy_from_slice(&1u32.to_ne_bytes());
    let mut v = [0u8; 48];
    let expires = palisade_enforcer::datapath::monotonic_ns() + 60_000_000_000;
    v[0..8].copy_from_slice(&expires.to_ne_bytes());
    v[8..12].copy_from_slice(&16u32.to_ne_bytes()); // rule
    v[12..16].copy_from_slice(&7u32.to_ne_bytes()); // v1 revision
    v[26] = palisade_abi::CT_F_REPLY_SEEN;
    v[32..40].copy_from_slice(&3u64.to_ne_bytes()); // packets
    (k, v)
}

/// Connections tracked by the v1 agent keep their replies under v2, and each is re-decided
/// against v2's policy on its next packet: one still allowed passes, one no longer allowed
/// is revoked. Without the import the allowed one's reply would be a new flow against the
/// pod's (empty, default-deny) egress policy and be dropped.
#[test]
fn v1_conntrack_is_imported_and_rechecked() {
    use palisade_abi::{CtEntry, EndpointInfo, PolicyValue};
    use palisade_testkit::packet::{self, L4, TCP_ACK};
    use policy_compiler::EntryKey;

    if !common::privileged("upgrade-ct") {
        return;
    }
    let fs = common::PrivateBpffs::new("upgrade-ct");
    let v1 = fs.path().join("v1");
    std::fs::create_dir_all(&v1).unwrap();
    {
        let mut bpf = EbpfLoader::new().load(TEST_PROGS).unwrap();
        let map = bpf.map_mut("legacy_ct").unwrap();
        map.pin(v1.join("pal_ct")).unwrap();
        let mut ct: aya::maps::HashMap<_, [u8; 44], [u8; 48]> =
            aya::maps::HashMap::try_from(map).unwrap();
        for (k, v) in [
            v1_ct([10, 0, 0, 2], [10, 0, 0, 1], 40000, 80),
            v1_ct([10, 0, 0, 2], [10, 0, 0, 1], 40001, 81),
        ] {
            ct.insert(k, v, 0).unwrap();
        }
    }
    let mut dp = fs.load();
    assert_eq!(dp.import_older_conntrack().unwrap(), 2);
    let entries: Vec<CtEntry> = dp
        .ct_entries()
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert_eq!(entries.len(), 2);
    for e in &entries {
        assert_eq!(e.revision, 0, "forces a re-check");
        assert_eq!(
            (e.rule_id, e.packets, e.flags),
            (
                16,
                3,
                palisade_abi::CT_F_REPLY_SEEN | palisade_abi::CT_F_OPENED_INGRESS
            ),
            "opened at to_pod (the v1 key's direction)"
        );
        assert_eq!((e.rev_nat_index, e.service_id, e.proxy_state), (0, 0, 0));
    }
    // Importing again copies nothing new (existing entries are kept).
    assert_eq!(dp.import_older_conntrack().unwrap(), 0);

    // v2 policy of the pod (identity 300, ifindex 1): ingress TCP 80 from 400 only.
    for (c, id) in [("10.0.0.1/32", 300), ("10.0.0.2/32", 400)] {
        dp.upsert_ipcache(&c.parse().unwrap(), id).unwrap();
    }
    let key = EntryKey {
        identity: 400,
        direction: palisade_abi::DIRECTION_INGRESS,
        protocol: 6,
        port: 80,
        prefixlen: palisade_abi::POLICY_PREFIX_FULL as u8,
    };
    let allow = PolicyValue {
        rule_id: 16,
        verdict: palisade_abi::POLICY_VERDICT_ALLOW,
        precedence: palisade_abi::PRECEDENCE_NETWORK_POLICY,
        ..Default::default()
    };
    dp.upsert_policy(300, &key, &allow).unwrap();
    dp.set_endpoint(
        1,
        &EndpointInfo {
            identity: 300,
            policy_slot: 300,
            flags: palisade_abi::ENDPOINT_F_READY,
            revision: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let reply = |sport: u16, dport: u16| {
        packet::build(
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            L4::Tcp {
                sport,
                dport,
                flags: TCP_ACK,
            },
        )
    };
    let tcx = palisade_abi::tcx::NEXT;
    assert_eq!(dp.test_run(Hook::FromPod, &reply(80, 40000)).unwrap(), tcx);
    assert_eq!(
        dp.test_run(Hook::FromPod, &reply(81, 40001)).unwrap(),
        palisade_abi::tcx::DROP
    );
    let c = dp.counters().unwrap();
    let eg = palisade_abi::DIRECTION_EGRESS;
    assert_eq!(
        c.get(&(eg, palisade_abi::COUNTER_CT_REPLY))
            .map(|c| c.packets),
        Some(1)
    );
    assert_eq!(
        c.get(&(eg, palisade_abi::COUNTER_REVOKED))
            .map(|c| c.packets),
        Some(1)
    );
    let left: Vec<(u16, u32)> = dp
        .ct_entries()
        .unwrap()
        .into_iter()
        .map(|(k, e)| (u16::from_be(k.sport_be), e.revision))
        .collect();
    // Re-keyed canonically: 10.0.0.1:80 is the lower side, so it is the key's source.
    assert_eq!(
        left,
        vec![(80, 1)],
        "the allowed one re-checked, the other removed"
    );
}

/// An ABI v2 conntrack entry (the v3 layout) for `src:sport -> dst:dport` TCP as the hook
/// `direction` of ifindex 1 saw it (v2 keyed the tuple as seen, not canonically).
fn v2_ct(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    direction: u8,
) -> ([u8; 44], [u8; 56]) {
    let (k1, v1) = v1_ct(src, dst, sport, dport);
    let mut k = k1;
    k[38] = direction;
    let mut v = [0u8; 56];
    v[..27].copy_from_slice(&v1[..27]);
    v[40..48].copy_from_slice(&v1[32..40]);
    (k, v)
}

/// Connections tracked by an ABI v2 agent (conntrack keyed by the tuple as the opening hook
/// saw it) are re-keyed canonically on import, with the opening hook recorded, so the
/// replies of flows opened at either hook find them with v3's one lookup.
#[test]
fn v2_conntrack_is_rekeyed_canonically() {
    use palisade_abi::{CtKey, EndpointInfo, PolicyValue};
    use palisade_testkit::packet::{self, L4, TCP_ACK};
    use policy_compiler::EntryKey;

    if !common::privileged("upgrade-ct-v2") {
        return;
    }
    let fs = common::PrivateBpffs::new("upgrade-ct-v2");
    let v2 = fs.path().join("v2");
    std::fs::create_dir_all(&v2).unwrap();
    let (ing, eg) = (
        palisade_abi::DIRECTION_INGRESS,
        palisade_abi::DIRECTION_EGRESS,
    );
    {
        let mut bpf = EbpfLoader::new().load(TEST_PROGS).unwrap();
        let map = bpf.map_mut("legacy_ct_v2").unwrap();
        map.pin(v2.join("pal_ct")).unwrap();
        let mut ct: aya::maps::HashMap<_, [u8; 44], [u8; 56]> =
            aya::maps::HashMap::try_from(map).unwrap();
        for (k, v) in [
            // The peer opened 10.0.0.2:40000 -> pod:80 (to_pod): swapped when re-keyed.
            v2_ct([10, 0, 0, 2], [10, 0, 0, 1], 40000, 80, ing),
            // The pod opened 10.0.0.1:41000 -> peer:443 (from_pod): already canonical.
            v2_ct([10, 0, 0, 1], [10, 0, 0, 2], 41000, 443, eg),
        ] {
            ct.insert(k, v, 0).unwrap();
        }
    }
    let mut dp = fs.load();
    assert_eq!(dp.older_abis(), std::slice::from_ref(&v2));
    assert_eq!(dp.import_older_conntrack().unwrap(), 2);
    let a = |x: [u8; 4]| {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&x);
        b
    };
    let (pod, peer) = (a([10, 0, 0, 1]), a([10, 0, 0, 2]));
    let mut got: Vec<(CtKey, u8, u32)> = dp
        .ct_entries()
        .unwrap()
        .into_iter()
        .map(|(k, e)| (k, e.flags & palisade_abi::CT_F_OPENED_INGRESS, e.revision))
        .collect();
    got.sort_by_key(|(k, _, _)| u16::from_be(k.sport_be));
    let key =
        |s, d, sp: u16, dp: u16, dir| CtKey::canonical(s, d, sp.to_be(), dp.to_be(), 6, 4, dir, 1);
    assert_eq!(
        got,
        vec![
            (
                key(peer, pod, 40000, 80, ing),
                palisade_abi::CT_F_OPENED_INGRESS,
                0
            ),
            (key(pod, peer, 41000, 443, eg), 0, 0),
        ],
        "canonical keys, opening hook recorded, revision 0 (re-checked)"
    );
    // The first was swapped: the pod's side (lower address) is the key's source.
    assert_eq!(u16::from_be(got[0].0.sport_be), 80);

    // The pod's policy: ingress TCP 80 from 400, egress TCP 443 to 400.
    for (c, id) in [("10.0.0.1/32", 300), ("10.0.0.2/32", 400)] {
        dp.upsert_ipcache(&c.parse().unwrap(), id).unwrap();
    }
    for (dir, port, rule) in [(ing, 80, 16), (eg, 443, 17)] {
        let key = EntryKey {
            identity: 400,
            direction: dir,
            protocol: 6,
            port,
            prefixlen: palisade_abi::POLICY_PREFIX_FULL as u8,
        };
        let allow = PolicyValue {
            rule_id: rule,
            verdict: palisade_abi::POLICY_VERDICT_ALLOW,
            precedence: palisade_abi::PRECEDENCE_NETWORK_POLICY,
            ..Default::default()
        };
        dp.upsert_policy(300, &key, &allow).unwrap();
    }
    dp.set_endpoint(
        1,
        &EndpointInfo {
            identity: 300,
            policy_slot: 300,
            flags: palisade_abi::ENDPOINT_F_READY,
            revision: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let ack = |src: &str, dst: &str, sport: u16, dport: u16| {
        packet::build(
            src.parse().unwrap(),
            dst.parse().unwrap(),
            L4::Tcp {
                sport,
                dport,
                flags: TCP_ACK,
            },
        )
    };
    let next = palisade_abi::tcx::NEXT;
    // Replies at the hook opposite the opener: from_pod for the first, to_pod for the
    // second; continued packets at the opener's hook.
    assert_eq!(
        dp.test_run(Hook::FromPod, &ack("10.0.0.1", "10.0.0.2", 80, 40000))
            .unwrap(),
        next
    );
    assert_eq!(
        dp.test_run(Hook::ToPod, &ack("10.0.0.2", "10.0.0.1", 443, 41000))
            .unwrap(),
        next
    );
    assert_eq!(
        dp.test_run(Hook::ToPod, &ack("10.0.0.2", "10.0.0.1", 40000, 80))
            .unwrap(),
        next
    );
    assert_eq!(
        dp.test_run(Hook::FromPod, &ack("10.0.0.1", "10.0.0.2", 41000, 443))
            .unwrap(),
        next
    );
    let c = dp.counters().unwrap();
    let n = |dir, code| c.get(&(dir, code)).map_or(0, |c| c.packets);
    assert_eq!(n(eg, palisade_abi::COUNTER_CT_REPLY), 1);
    assert_eq!(n(ing, palisade_abi::COUNTER_CT_REPLY), 1);
    assert_eq!(n(ing, palisade_abi::COUNTER_CT_ESTABLISHED), 1);
    assert_eq!(n(eg, palisade_abi::COUNTER_CT_ESTABLISHED), 1);
    assert_eq!(dp.ct_entries().unwrap().len(), 2, "no new entries");
}

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
        assert_eq!(
            chain(),
            vec![
                (Hook::FromPod, vec!["from_pod".to_string()]),
                (Hook::ToPod, vec!["to_pod".to_string()]),
            ]
        );
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

//! kube-proxy-shaped rule sets, for the benchmarks that compare Palisade's service maps with
//! them: kube-proxy's iptables mode (`iptables-restore` text) and its nftables mode (`nft -f`
//! commands), written for ClusterIP services the way kube-proxy writes them.
//!
//! iptables mode, per service: a KUBE-SERVICES match on address, protocol and port jumping
//! to the service's KUBE-SVC chain; that chain marks for masquerade traffic from outside the
//! cluster range, then one `statistic --mode random` jump per endpoint (the last without) to
//! the endpoint's KUBE-SEP chain, which marks hairpin traffic and DNATs.
//!
//! nftables mode: a verdict map from address . protocol . port to the service chain, which
//! picks an endpoint chain with `numgen random mod N vmap`.

use std::fmt::Write as _;
use std::net::IpAddr;

/// One ClusterIP service port (TCP) and its endpoints.
#[derive(Debug, Clone)]
pub struct Svc {
    /// `namespace/name`, for the comments.
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub endpoints: Vec<(IpAddr, u16)>,
}

fn chain(prefix: &str, s: usize, i: usize) -> String {
    // kube-proxy names chains by a hash; a fixed-width counter is as long.
    format!("KUBE-{prefix}-{s:08X}{i:08X}")
}

fn kube_services(svcs: &[Svc], rules: &mut String) {
    for (s, svc) in svcs.iter().enumerate() {
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{}:http cluster IP\" -m tcp --dport {} -j {}",
            svc.vip,
            svc.name,
            svc.port,
            chain("SVC", s, 0)
        );
    }
}

/// Service `s`'s KUBE-SVC chain and one KUBE-SEP chain per endpoint: declarations, rules.
fn service(s: usize, svc: &Svc, decl: &mut String, rules: &mut String) {
    let c = chain("SVC", s, 0);
    let _ = writeln!(decl, ":{c} - [0:0]");
    let _ = writeln!(
        rules,
        "-A {c} ! -s 10.0.0.0/8 -d {}/32 -p tcp -m comment --comment \"{}:http cluster IP\" -m tcp --dport {} -j KUBE-MARK-MASQ",
        svc.vip, svc.name, svc.port
    );
    let n = svc.endpoints.len();
    for (i, (a, p)) in svc.endpoints.iter().enumerate() {
        let sep = chain("SEP", s, i + 1);
        let _ = writeln!(decl, ":{sep} - [0:0]");
        if i + 1 < n {
            let _ = writeln!(
                rules,
                "-A {c} -m comment --comment \"{} -> {a}:{p}\" -m statistic --mode random --probability {:.10} -j {sep}",
                svc.name,
                1.0 / (n - i) as f64
            );
        } else {
            let _ = writeln!(
                rules,
                "-A {c} -m comment --comment \"{} -> {a}:{p}\" -j {sep}",
                svc.name
            );
        }
        let _ = writeln!(
            rules,
            "-A {sep} -s {a}/32 -m comment --comment \"{}\" -j KUBE-MARK-MASQ",
            svc.name
        );
        let _ = writeln!(
            rules,
            "-A {sep} -p tcp -m comment --comment \"{}\" -m tcp -j DNAT --to-destination {a}:{p}",
            svc.name
        );
    }
}

/// The whole `nat` table, for `iptables-restore` into an empty table.
pub fn iptables_full(svcs: &[Svc]) -> String {
    let mut decl = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n",
    );
    let mut rules = String::from(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -j MASQUERADE --random-fully\n",
    );
    kube_services(svcs, &mut rules);
    for (s, svc) in svcs.iter().enumerate() {
        service(s, svc, &mut decl, &mut rules);
    }
    decl + &rules + "COMMIT\n"
}

/// kube-proxy ≥ 1.26's partial restore (`--noflush`) after service `s` changed:
/// KUBE-SERVICES rewritten whole, the service's chains declared (which flushes them) and
/// written.
pub fn iptables_partial(svcs: &[Svc], s: usize) -> String {
    let mut decl = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    let mut rules = String::new();
    kube_services(svcs, &mut rules);
    service(s, &svcs[s], &mut decl, &mut rules);
    decl + &rules + "COMMIT\n"
}

/// Service `s`'s chains in nftables mode, as `add` commands (a transaction of its own
/// when written alone: what kube-proxy sends for a changed service).
pub fn nft_service(s: usize, svc: &Svc, out: &mut String) {
    let c = format!("service-{s:08X}-http");
    let _ = writeln!(out, "add chain ip kube-proxy {c}");
    let _ = writeln!(out, "flush chain ip kube-proxy {c}");
    let _ = writeln!(
        out,
        "add rule ip kube-proxy {c} ip daddr {} tcp dport {} ip saddr != 10.0.0.0/8 jump mark-for-masquerade",
        svc.vip, svc.port
    );
    let mut arms = Vec::new();
    for (i, (a, p)) in svc.endpoints.iter().enumerate() {
        let ep = format!("endpoint-{s:08X}-{i:04X}");
        let _ = writeln!(out, "add chain ip kube-proxy {ep}");
        let _ = writeln!(out, "flush chain ip kube-proxy {ep}");
        let _ = writeln!(
            out,
            "add rule ip kube-proxy {ep} ip saddr {a} jump mark-for-masquerade"
        );
        let _ = writeln!(
            out,
            "add rule ip kube-proxy {ep} meta l4proto tcp dnat to {a}:{p}"
        );
        arms.push(format!("{i} : goto {ep}"));
    }
    let _ = writeln!(
        out,
        "add rule ip kube-proxy {c} numgen random mod {} vmap {{ {} }}",
        svc.endpoints.len(),
        arms.join(", ")
    );
}

/// The whole `kube-proxy` table in nftables mode.
pub fn nft_full(svcs: &[Svc]) -> String {
    let mut out = String::from(
        "add table ip kube-proxy\n\
         add chain ip kube-proxy mark-for-masquerade\n\
         add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000\n\
         add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }\n\
         add chain ip kube-proxy services\n\
         add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority dstnat ; }\n\
         add rule ip kube-proxy nat-prerouting jump services\n\
         add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }\n\
         add rule ip kube-proxy nat-output jump services\n",
    );
    for (s, svc) in svcs.iter().enumerate() {
        nft_service(s, svc, &mut out);
    }
    for (s, svc) in svcs.iter().enumerate() {
        let _ = writeln!(
            out,
            "add element ip kube-proxy service-ips {{ {} . tcp . {} : goto service-{s:08X}-http }}",
            svc.vip, svc.port
        );
    }
    out
}

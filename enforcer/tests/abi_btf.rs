//! The datapath ABI checked against the built object: every struct of the Rust mirror
//! (`palisade_abi::layouts`) must have the size, field names, field order, offsets and sizes
//! clang gave the C struct (read from the object's BTF), every map the object defines must
//! have the type and key/value layout the Rust map code uses (`palisade_abi::MAPS`), and the
//! loader's map and program specs must be what the object says. No root needed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code states expectations by panicking"
)]

use palisade_abi::btf::Btf;
use palisade_abi::{CtEntry, MAPS, layout, layouts};
use palisade_enforcer::datapath::{Attach, DATAPATH_OBJECT, Hook, map_specs, program_specs};

fn btf() -> Btf {
    Btf::from_object(DATAPATH_OBJECT).unwrap()
}

#[test]
fn every_mirror_struct_matches_the_object_btf() {
    let diffs = palisade_abi::layout::compare(&layouts(), &btf());
    assert!(diffs.is_empty(), "ABI drift:\n{}", diffs.join("\n"));
}

/// `ct_entry` with `rule_id` and `revision` swapped: same size, same offsets by position,
/// different meaning. The comparison must name both fields.
#[repr(C)]
#[allow(dead_code, reason = "only the layout is used")]
#[derive(Clone, Copy)]
struct CtEntrySwapped {
    expires_ns: u64,
    revision: u32,
    rule_id: u32,
    src_identity: u32,
    dst_identity: u32,
    proxy_port_be: u16,
    flags: u8,
    proxy_state: u8,
    rev_nat_index: u16,
    pad: u16,
    service_id: u32,
    ep_gen: u32,
    packets: u64,
    bytes: u64,
}

#[test]
fn a_swapped_field_is_reported() {
    let real = layouts()
        .into_iter()
        .find(|l| l.name == "ct_entry")
        .unwrap();
    let swapped = layout!(CtEntrySwapped, "ct_entry", [
        expires_ns, revision, rule_id, src_identity, dst_identity,
        proxy_port_be as "proxy_port", flags, proxy_state, rev_nat_index, pad, service_id,
        ep_gen, packets, bytes
    ]);
    assert_eq!(
        swapped.size,
        size_of::<CtEntry>(),
        "same size: only the order differs"
    );
    assert!(palisade_abi::layout::compare(&[real], &btf()).is_empty());
    let diffs = palisade_abi::layout::compare(&[swapped], &btf());
    let text = diffs.join("\n");
    assert!(text.contains("ct_entry.rule_id: offset 8"), "{text}");
    assert!(text.contains("ct_entry.revision: offset 12"), "{text}");
    assert!(text.contains("fields"), "field order differs: {text}");
}

#[test]
fn a_resized_or_missing_field_or_struct_is_reported() {
    let mut l = layouts();
    let ep = l.iter_mut().find(|l| l.name == "endpoint_info").unwrap();
    ep.fields[3].size = 8;
    ep.size = 40;
    let mut extra = ep.clone();
    extra.name = "no_such_struct".into();
    l.push(extra);
    let ct = l.iter_mut().find(|l| l.name == "ct_key").unwrap();
    ct.fields.retain(|f| f.name != "pad");
    let text = palisade_abi::layout::compare(&l, &btf()).join("\n");
    assert!(
        text.contains("endpoint_info: size 36 in C, 40 in Rust"),
        "{text}"
    );
    assert!(
        text.contains("endpoint_info.revision: offset 12 size 4 in C, offset 12 size 8"),
        "{text}"
    );
    assert!(
        text.contains("struct no_such_struct: not in the object's BTF"),
        "{text}"
    );
    assert!(text.contains("struct ct_key: fields"), "{text}");
}

#[test]
fn every_map_has_the_type_and_layout_the_rust_side_uses() {
    let maps = btf().maps().unwrap();
    let mut names: Vec<&str> = maps.iter().map(|m| m.name.as_str()).collect();
    let mut want: Vec<&str> = MAPS.iter().map(|m| m.name).collect();
    names.sort_unstable();
    want.sort_unstable();
    assert_eq!(names, want, "maps in the object vs palisade_abi::MAPS");
    for m in MAPS {
        let def = maps.iter().find(|d| d.name == m.name).unwrap();
        assert_eq!(def.map_type, m.map_type, "{}: map type", m.name);
        let key = def.key_type.clone().map(|t| (t, def.key_size as usize));
        let value = def.value_type.clone().map(|t| (t, def.value_size as usize));
        assert_eq!(
            key,
            m.key.map(|(t, s)| (t.to_string(), s)),
            "{}: key",
            m.name
        );
        assert_eq!(
            value,
            m.value.map(|(t, s)| (t.to_string(), s)),
            "{}: value",
            m.name
        );
        assert_eq!(
            def.pinning,
            u32::from(m.pinned),
            "{}: pinned by name (or not)",
            m.name
        );
        assert!(def.max_entries > 0, "{}: max entries", m.name);
    }
}

#[test]
fn loader_specs_are_the_objects() {
    let specs = map_specs().unwrap();
    let maps = btf().maps().unwrap();
    assert_eq!(specs.len(), maps.len());
    for (s, d) in specs.iter().zip(&maps) {
        assert_eq!(
            (
                &s.name,
                s.map_type,
                s.key_size,
                s.value_size,
                s.max_entries,
                s.flags
            ),
            (
                &d.name,
                d.map_type,
                d.key_size,
                d.value_size,
                d.max_entries,
                d.flags
            )
        );
    }
    // Spot values that a wrong BTF reading would get wrong.
    let by = |n: &str| specs.iter().find(|s| s.name == n).unwrap().clone();
    assert_eq!(by("pal_policy").flags, 1, "BPF_F_NO_PREALLOC");
    assert_eq!(by("pal_events").max_entries, 4 * 1024 * 1024);
    assert_eq!(by("pal_policy").max_entries, palisade_abi::capacity::POLICY);
    assert_eq!(
        by("pal_ipcache").max_entries,
        palisade_abi::capacity::IPCACHE
    );
    assert_eq!(
        by("pal_endpoints").max_entries,
        palisade_abi::capacity::ENDPOINTS
    );
    assert_eq!(
        (by("pal_events").key_size, by("pal_events").value_size),
        (0, 0)
    );
    assert_eq!(by("pal_counters").max_entries, palisade_abi::COUNTER_MAX);

    let progs = program_specs().unwrap();
    let hooks: Vec<(String, Attach)> = progs.into_iter().map(|p| (p.name, p.attach)).collect();
    assert_eq!(
        hooks,
        vec![
            ("from_pod".to_string(), Attach::Tc(Hook::FromPod)),
            ("to_pod".to_string(), Attach::Tc(Hook::ToPod)),
            (
                "from_pod_decide".to_string(),
                Attach::Decision(Hook::FromPod)
            ),
            ("to_pod_decide".to_string(), Attach::Decision(Hook::ToPod)),
            ("from_uplink".to_string(), Attach::Tc(Hook::FromUplink)),
            ("to_uplink".to_string(), Attach::Tc(Hook::ToUplink)),
            ("proxy_lookup".to_string(), Attach::ProxyLookup),
        ]
    );
}

#[test]
fn a_program_in_an_unknown_section_is_refused() {
    // Rename the section of from_pod in a copy of the object: the loader must refuse it
    // rather than silently not attach it.
    let mut obj = DATAPATH_OBJECT.to_vec();
    let name = b"classifier/ingress\0";
    let mut renamed = 0;
    for at in 0..obj.len() - name.len() {
        if &obj[at..at + name.len()] == name {
            obj[at + name.len() - 2] = b'_';
            renamed += 1;
        }
    }
    assert!(renamed > 0);
    let err = palisade_enforcer::datapath::program_specs_of(&obj)
        .unwrap_err()
        .to_string();
    assert!(err.contains("names no hook"), "{err}");
}

/// The reader is also what the loader uses at every start: damaged input is an error,
/// never a panic (truncations at every length step, and single-byte corruptions).
#[test]
fn damaged_objects_are_errors_not_panics() {
    let obj = DATAPATH_OBJECT;
    for n in (0..obj.len()).step_by(61) {
        let _ = Btf::from_object(&obj[..n]).and_then(|b| b.maps());
        let _ = palisade_abi::elf::global_functions(&obj[..n]);
    }
    let btf = palisade_abi::elf::section(obj, ".BTF").unwrap();
    let start = btf.as_ptr() as usize - obj.as_ptr() as usize;
    let mut seed = 0x9e37_79b9_u32;
    for _ in 0..2000 {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let mut copy = obj.to_vec();
        // Half the corruptions inside the BTF, half anywhere (ELF headers included).
        let at = if seed & 1 == 0 {
            start + (seed as usize >> 1) % btf.len()
        } else {
            (seed as usize >> 1) % copy.len()
        };
        copy[at] ^= (seed >> 8) as u8 | 1;
        if let Ok(b) = Btf::from_object(&copy) {
            let _ = b.maps();
            for l in layouts() {
                let _ = b.struct_layout(&l.name);
            }
        }
        let _ = palisade_abi::elf::global_functions(&copy);
    }
}

//! What the loader takes from the built object instead of hand-copied tables: the map
//! definitions (from the object's BTF) and the programs with their hooks (from the symbol
//! table and section names). `enforcer/tests/abi_btf.rs` checks both against the Rust
//! mirror (`palisade_abi::MAPS`, `palisade_abi::layouts`).
//!
//! aya 0.14 reuses whatever object sits at a pin path without comparing it with the
//! declaration, so a stale layout (an older ABI, a resized map) would load and silently
//! never match. Every pin is checked against the object's definitions before loading.

use std::path::Path;

use aya::maps::MapInfo;
use palisade_abi::btf::Btf;
use palisade_abi::elf;

use super::{DATAPATH_OBJECT, DatapathError, Hook};

/// One map as the object defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapSpec {
    pub name: String,
    /// `BPF_MAP_TYPE_*`.
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
    /// `LIBBPF_PIN_BY_NAME` (1) when the map is pinned under the pin directory.
    pub pinning: u32,
}

/// Where a program of the object is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// A tc hook: of every pod's host veth, or of the node's uplink.
    Tc(Hook),
    /// The `sk_lookup` hook of the node's network namespace (the L7 proxy's listener).
    ProxyLookup,
    /// Not attached: the whole decision of a pod hook, tail-called by that hook's program
    /// through `pal_tail` (slot = the hook's policy direction) for every packet its fast
    /// path does not finish.
    Decision(Hook),
}

/// One program of the object and the hook its section names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramSpec {
    pub name: String,
    pub attach: Attach,
}

/// The section of a program attached at each hook: `SEC("classifier/ingress")` is the tc
/// ingress of the host veth (packets from the pod), `classifier/egress` its tc egress,
/// `classifier/uplink_ingress` and `classifier/uplink_egress` the tc ingress and egress of the
/// node's uplink, `sk_lookup` the node namespace's socket lookup; `classifier/ingress_decide`
/// and `classifier/egress_decide` are the decision programs the two pod hooks tail-call.
const SECTIONS: [(&str, Attach); 7] = [
    ("classifier/ingress", Attach::Tc(Hook::FromPod)),
    ("classifier/egress", Attach::Tc(Hook::ToPod)),
    ("classifier/ingress_decide", Attach::Decision(Hook::FromPod)),
    ("classifier/egress_decide", Attach::Decision(Hook::ToPod)),
    ("classifier/uplink_ingress", Attach::Tc(Hook::FromUplink)),
    ("classifier/uplink_egress", Attach::Tc(Hook::ToUplink)),
    ("sk_lookup", Attach::ProxyLookup),
];

fn object_err(detail: String) -> DatapathError {
    DatapathError::Object { detail }
}

/// The maps the embedded datapath object defines, in declaration order.
pub fn map_specs() -> Result<Vec<MapSpec>, DatapathError> {
    map_specs_of(DATAPATH_OBJECT)
}

/// The maps an object defines.
pub fn map_specs_of(obj: &[u8]) -> Result<Vec<MapSpec>, DatapathError> {
    let btf = Btf::from_object(obj).map_err(|e| object_err(e.to_string()))?;
    let maps = btf.maps().map_err(|e| object_err(e.to_string()))?;
    Ok(maps
        .into_iter()
        .map(|m| MapSpec {
            name: m.name,
            map_type: m.map_type,
            key_size: m.key_size,
            value_size: m.value_size,
            max_entries: m.max_entries,
            flags: m.flags,
            pinning: m.pinning,
        })
        .collect())
}

/// The programs of the embedded object: exactly one per hook, or an error naming what is
/// missing or unknown (a program the loader would not attach is a build mistake).
pub fn program_specs() -> Result<Vec<ProgramSpec>, DatapathError> {
    program_specs_of(DATAPATH_OBJECT)
}

/// The programs of an object, one per hook.
pub fn program_specs_of(obj: &[u8]) -> Result<Vec<ProgramSpec>, DatapathError> {
    let funcs = elf::global_functions(obj).map_err(|e| object_err(e.to_string()))?;
    let mut out = Vec::new();
    for f in funcs {
        // A global function in .text is a subprogram the programs call (verified once on
        // its own), not an entry point.
        if f.section == ".text" {
            continue;
        }
        let Some((_, attach)) = SECTIONS.iter().find(|(s, _)| *s == f.section) else {
            return Err(object_err(format!(
                "program {} is in section {}, which names no hook",
                f.name, f.section
            )));
        };
        if out.iter().any(|p: &ProgramSpec| p.attach == *attach) {
            return Err(object_err(format!(
                "two programs for hook {attach:?} ({})",
                f.name
            )));
        }
        out.push(ProgramSpec {
            name: f.name,
            attach: *attach,
        });
    }
    for (section, attach) in SECTIONS {
        if !out.iter().any(|p| p.attach == attach) {
            return Err(object_err(format!("no program in section {section}")));
        }
    }
    Ok(out)
}

/// Checks every existing pin under `dir` against the object's map definitions.
pub fn verify_pins(dir: &Path, specs: &[MapSpec]) -> Result<(), DatapathError> {
    for spec in specs {
        let path = dir.join(&spec.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| DatapathError::PinnedMap {
            path: path.clone(),
            source: Box::new(source),
        })?;
        let mut diffs = Vec::new();
        match info.map_type() {
            Ok(t) if t as u32 == spec.map_type => {}
            Ok(t) => diffs.push(format!("type {t:?}, want {}", spec.map_type)),
            Err(e) => diffs.push(format!("type unreadable: {e}")),
        }
        for (what, have, want) in [
            ("key size", info.key_size(), spec.key_size),
            ("value size", info.value_size(), spec.value_size),
            ("max entries", info.max_entries(), spec.max_entries),
            ("flags", info.map_flags(), spec.flags),
        ] {
            if have != want {
                diffs.push(format!("{what} {have}, want {want}"));
            }
        }
        if !diffs.is_empty() {
            return Err(DatapathError::StaleMap {
                name: spec.name.clone(),
                path,
                detail: diffs.join(", "),
            });
        }
    }
    Ok(())
}

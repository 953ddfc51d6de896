//! What each pinned map must look like. aya 0.14 reuses whatever object sits at a pin path
//! without comparing it with the declaration, so a stale layout (an older ABI, a resized
//! map) would load and silently never match. Every pin is checked before loading.

use std::path::Path;

use aya::maps::{MapInfo, MapType};

use super::DatapathError;

#[derive(Debug, Clone, Copy)]
pub struct MapSpec {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

const NO_PREALLOC: u32 = 1; // BPF_F_NO_PREALLOC

/// The maps of ebpf/lib/maps.h.
pub const MAP_SPECS: [MapSpec; 7] = [
    MapSpec {
        name: "pal_endpoints",
        map_type: MapType::Hash,
        key_size: 4,
        value_size: 16,
        max_entries: 65536,
        flags: 0,
    },
    MapSpec {
        name: "pal_ipcache",
        map_type: MapType::LpmTrie,
        key_size: 24,
        value_size: 8,
        max_entries: 524_288,
        flags: NO_PREALLOC,
    },
    MapSpec {
        name: "pal_policy",
        map_type: MapType::LpmTrie,
        key_size: 16,
        value_size: 12,
        max_entries: 1_048_576,
        flags: NO_PREALLOC,
    },
    MapSpec {
        name: "pal_ct",
        map_type: MapType::LruHash,
        key_size: 44,
        value_size: 48,
        max_entries: 262_144,
        flags: 0,
    },
    MapSpec {
        name: "pal_drop_seen",
        map_type: MapType::LruHash,
        key_size: 44,
        value_size: 8,
        max_entries: 65536,
        flags: 0,
    },
    MapSpec {
        name: "pal_events",
        map_type: MapType::RingBuf,
        key_size: 0,
        value_size: 0,
        max_entries: 4 * 1024 * 1024,
        flags: 0,
    },
    MapSpec {
        name: "pal_counters",
        map_type: MapType::PerCpuArray,
        key_size: 4,
        value_size: 16,
        max_entries: 512,
        flags: 0,
    },
];

/// Checks every existing pin under `dir` against [`MAP_SPECS`].
pub fn verify_pins(dir: &Path) -> Result<(), DatapathError> {
    for spec in &MAP_SPECS {
        let path = dir.join(spec.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| DatapathError::PinnedMap {
            path: path.clone(),
            source: Box::new(source),
        })?;
        let mut diffs = Vec::new();
        match info.map_type() {
            Ok(t) if t == spec.map_type => {}
            Ok(t) => diffs.push(format!("type {t:?}, want {:?}", spec.map_type)),
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
                name: spec.name,
                path,
                detail: diffs.join(", "),
            });
        }
    }
    Ok(())
}

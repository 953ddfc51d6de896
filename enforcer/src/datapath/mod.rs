//! The kernel datapath: loading the C object, adopting what a previous enforcer pinned,
//! attaching to pod interfaces, and every map read and write.
//!
//! Everything lives under one bpffs directory versioned by the ABI
//! (`<pin root>/v<ABI_VERSION>`): maps by name, links under `links/`. A restarted enforcer
//! opens the same maps (policy, conntrack, unread events) and swaps its freshly loaded
//! programs into the pinned TCX links with `bpf_link_update`, so enforcement never pauses.

mod spec;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{HashMap as BpfHashMap, MapData, MapError, MapInfo, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, SkLookup, TcAttachType};
use aya::{Ebpf, EbpfLoader, VerifierLogLevel};
use policy_compiler::abi::{self, CtEntry, CtKey, EndpointInfo, PolicyValue, map_name};
use policy_compiler::cidr::Cidr;
use policy_compiler::engine::EntryKey;

pub use spec::{
    Attach, MapSpec, ProgramSpec, map_specs, map_specs_of, program_specs, program_specs_of,
};

// Map keys and values as the kernel sees them, sized by the Rust mirror (whose layout
// enforcer/tests/abi_btf.rs checks against the object): no size is written twice.
type EndpointBytes = [u8; size_of::<EndpointInfo>()];
/// LPM data after the 4-byte prefix length.
type PolicyKeyData = [u8; size_of::<abi::PolicyKey>() - 4];
type PolicyValueBytes = [u8; size_of::<PolicyValue>()];
type IpcacheKeyData = [u8; size_of::<abi::IpcacheKey>() - 4];
type IpcacheValueBytes = [u8; size_of::<abi::IpcacheValue>()];
type CtKeyBytes = [u8; size_of::<CtKey>()];
type CtEntryBytes = [u8; size_of::<CtEntry>()];
type LbKeyBytes = [u8; size_of::<abi::LbKey>()];
type LbServiceBytes = [u8; size_of::<abi::LbService>()];
type LbBackendKeyBytes = [u8; size_of::<abi::LbBackendKey>()];
type LbBackendBytes = [u8; size_of::<abi::LbBackend>()];
type LbMaglevBytes = [u8; 2 * abi::LB_MAGLEV_MAX];

/// The compiled C datapath (ebpf/tc_endpoint.c), built by build.rs.
pub static DATAPATH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc_endpoint.o"));

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// tc ingress of the host veth: packets the pod sends (its egress policy).
    FromPod,
    /// tc egress of the host veth: packets to the pod (its ingress policy).
    ToPod,
    /// tc ingress of the node's uplink: traffic from outside to a service frontend is
    /// translated (docs/datapath.md §13).
    FromUplink,
    /// tc egress of the node's uplink: replies of the flows `FromUplink` translated.
    ToUplink,
}

impl Hook {
    /// The hooks of a pod's host veth, in the order links are made and listed.
    pub const ENDPOINT: [Hook; 2] = [Hook::FromPod, Hook::ToPod];
    /// The hooks of an uplink.
    pub const UPLINK: [Hook; 2] = [Hook::FromUplink, Hook::ToUplink];
    /// Every tc hook of the object.
    pub const ALL: [Hook; 4] = [Hook::FromPod, Hook::ToPod, Hook::FromUplink, Hook::ToUplink];

    fn attach_type(self) -> TcAttachType {
        match self {
            Hook::FromPod | Hook::FromUplink => TcAttachType::Ingress,
            Hook::ToPod | Hook::ToUplink => TcAttachType::Egress,
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            Hook::FromPod => "from-pod",
            Hook::ToPod => "to-pod",
            Hook::FromUplink => "from-uplink",
            Hook::ToUplink => "to-uplink",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{path} is not a bpffs and mounting one there failed: {source}")]
    Bpffs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "pinned map {name} at {path} does not match this datapath ({detail}); \
         refusing to reuse it. Remove the pin directory after draining the node, or run \
         the enforcer that created it"
    )]
    StaleMap {
        name: String,
        path: PathBuf,
        detail: String,
    },
    #[error("cannot read pinned map {path}: {source}")]
    PinnedMap {
        path: PathBuf,
        #[source]
        source: Box<MapError>,
    },
    #[error("loading the datapath object failed: {source}{log}")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
        /// The tail of the verifier log, when a retry with logging produced one.
        log: String,
    },
    #[error("the datapath object: {detail}")]
    Object { detail: String },
    #[error("program {name}: {source}")]
    Program {
        name: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("map {name} missing from the datapath object")]
    MissingMap { name: &'static str },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("link pin {path}: {detail}")]
    Link { path: PathBuf, detail: String },
    #[error("interface {ifname}: {source}")]
    Interface {
        ifname: String,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

/// The object's switch for local delivery (`ebpf/lib/local.h`), a constant the verifier
/// sees: off, `local_deliver` is dead code.
const LOCAL_DELIVERY_GLOBAL: &str = "local_delivery_on";

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The bpffs directory under which `v<ABI>` is created.
    pub pin_root: PathBuf,
    /// Mount a bpffs on `pin_root` when it is not one already (off in tests that give a
    /// directory inside an existing bpffs).
    pub mount_if_missing: bool,
    /// Local delivery between pods of the node (docs/datapath.md §3.2); off, every packet
    /// goes through the node's stack. Set in the object before it is loaded.
    pub local_delivery: bool,
}

/// A loaded datapath.
#[derive(Debug)]
pub struct Datapath {
    bpf: Ebpf,
    pin_dir: PathBuf,
    /// The object's programs, one per hook.
    programs: Vec<ProgramSpec>,
    /// Links adopted from a previous run: (ifindex, hook) -> kept pinned.
    adopted: Vec<(u32, Hook)>,
    /// Pin directories of older ABIs (`<pin root>/v<N>`, N < ABI_VERSION) found at load,
    /// oldest first; retired by [`Datapath::retire_older_abis`].
    older: Vec<PathBuf>,
    /// The proxy's `sk_lookup` program is attached to this process's network namespace
    /// (the link lives as long as the program, i.e. this process).
    proxy_lookup_attached: bool,
    /// What `pal_proxy` holds (this process is its only writer).
    proxy_state: abi::ProxyState,
    /// What `pal_ep_gen` holds (this process is its only writer; never 0 once loaded).
    ep_gen: u32,
}

/// What [`Datapath::retire_older_abis`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retired {
    /// Older links released because this datapath is attached to their interface (or the
    /// interface is gone).
    pub links_removed: usize,
    /// Older links kept: their interface has no link of this datapath yet, and removing
    /// them would leave it unenforced.
    pub links_kept: usize,
    /// Older pin directories removed entirely (maps and links).
    pub dirs_removed: Vec<PathBuf>,
}

/// Sums of the per-CPU counters, keyed by (direction, code).
pub type Counters = BTreeMap<(u8, u32), abi::CounterValue>;

impl Datapath {
    /// Loads the datapath, reusing pinned maps and adopting pinned links.
    pub fn load(opts: &LoadOptions) -> Result<Datapath> {
        ensure_bpffs(&opts.pin_root, opts.mount_if_missing)?;
        let pin_dir = opts.pin_root.join(format!("v{}", abi::ABI_VERSION));
        for dir in [pin_dir.clone(), pin_dir.join("links")] {
            std::fs::create_dir_all(&dir).map_err(|source| DatapathError::Dir {
                path: dir.clone(),
                source,
            })?;
        }
        spec::verify_pins(&pin_dir, &map_specs()?)?;
        let programs = program_specs()?;
        let bpf = load_object(&pin_dir, opts.local_delivery)?;
        let mut dp = Datapath {
            bpf,
            pin_dir,
            programs,
            adopted: Vec::new(),
            older: older_abi_dirs(&opts.pin_root),
            proxy_lookup_attached: false,
            proxy_state: abi::ProxyState::default(),
            ep_gen: 0,
        };
        for hook in Hook::ALL {
            let name = dp.program_name(hook)?;
            dp.classifier(&name)?.load().map_err(prog_err(&name))?;
        }
        dp.load_decisions()?;
        // Continues the pinned generation (entries of an earlier run keep their standing
        // until the next endpoint write) and moves it once: never 0 from here on.
        dp.ep_gen = dp.read_ep_gen()?;
        dp.bump_ep_gen()?;
        let name = dp.proxy_lookup_name()?;
        dp.sk_lookup(&name)?.load().map_err(prog_err(&name))?;
        // A proxy of an earlier run is gone with its process: until this run's proxy has
        // its listener in place, redirected flows drop (DROP_PROXY_UNAVAILABLE).
        dp.set_proxy(&abi::ProxyState::default())?;
        dp.adopt_links()?;
        Ok(dp)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Interfaces (by ifindex) whose pinned links this run took over.
    pub fn adopted(&self) -> &[(u32, Hook)] {
        &self.adopted
    }

    /// Copies the conntrack entries older agents left (`v1/pal_ct`, `v2/pal_ct`) into this
    /// datapath's before anything of this ABI is attached, so connections open across the
    /// upgrade keep their replies (docs/upgrade.md). Their keys (the tuple as the opening
    /// hook saw it) are re-keyed canonically (ABI v3) and the opening hook is recorded in
    /// the entry. Each copy gets revision 0, which no endpoint revision equals: its first
    /// packet re-decides it against this agent's policy, exactly as after a policy change,
    /// so nothing the current policy denies survives. Existing entries are not
    /// overwritten. Returns how many were copied; a map of another layout is ignored.
    pub fn import_older_conntrack(&mut self) -> Result<usize> {
        let mut n = 0;
        for dir in self.older.clone() {
            n += self.import_conntrack_from(&dir)?;
        }
        Ok(n)
    }

    fn import_conntrack_from(&mut self, dir: &Path) -> Result<usize> {
        let path = dir.join(map_name::CT);
        if !path.exists() {
            return Ok(0);
        }
        let info = MapInfo::from_pin(&path).map_err(|source| DatapathError::PinnedMap {
            path: path.clone(),
            source: Box::new(source),
        })?;
        let value_size = info.value_size();
        if info.key_size() != 44 || !(value_size == 48 || value_size == 56) {
            return Ok(0);
        }
        let old = pinned_at(&path, map_name::CT)?;
        let entries: Vec<([u8; 44], [u8; 56])> = if value_size == 48 {
            let old: BpfHashMap<_, [u8; 44], [u8; 48]> =
                BpfHashMap::try_from(&old).map_err(map_err(map_name::CT))?;
            old.iter()
                .filter_map(|r| r.ok())
                .map(|(k, v1)| {
                    // expires_ns .. flags are at the same offsets; v2 adds fields after
                    // flags and moves the counters from 32 to 40.
                    let mut v = [0u8; 56];
                    v[..27].copy_from_slice(&v1[..27]);
                    v[40..56].copy_from_slice(&v1[32..48]);
                    (k, v)
                })
                .collect()
        } else {
            let old: BpfHashMap<_, [u8; 44], [u8; 56]> =
                BpfHashMap::try_from(&old).map_err(map_err(map_name::CT))?;
            old.iter().filter_map(|r| r.ok()).collect()
        };
        let mut ct = self.ct_map()?;
        let mut n = 0;
        for (k, v) in entries {
            let old_key = CtKey::from_bytes(&k);
            let key = CtKey::canonical(
                old_key.saddr,
                old_key.daddr,
                old_key.sport_be,
                old_key.dport_be,
                old_key.protocol,
                old_key.family,
                old_key.direction,
                old_key.ifindex,
            );
            let mut e = CtEntry::from_bytes(&v);
            e.revision = 0;
            if old_key.direction == abi::DIRECTION_INGRESS {
                e.flags |= abi::CT_F_OPENED_INGRESS;
            } else {
                e.flags &= !abi::CT_F_OPENED_INGRESS;
            }
            if ct.insert(key.to_bytes(), e.to_bytes(), BPF_NOEXIST).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Pin directories an older agent (another ABI) left, still in place.
    pub fn older_abis(&self) -> &[PathBuf] {
        &self.older
    }

    /// Retires what an older agent (an older ABI) pinned, without a moment unenforced
    /// (docs/upgrade.md): an older link is released only once this datapath's links are
    /// pinned on the same interface (attached first in the chain, so both ran until now
    /// and the stricter verdict won), or when its interface is gone. An older directory is
    /// removed, maps included, only when none of its links is left. Call it after every
    /// registered interface is attached and the maps are written; links kept are retried
    /// at the next call (the daemon calls it at every start).
    pub fn retire_older_abis(&mut self) -> Result<Retired> {
        let mut out = Retired::default();
        let mut still = Vec::new();
        for dir in std::mem::take(&mut self.older) {
            let links = dir.join("links");
            let mut kept = 0;
            if let Ok(entries) = std::fs::read_dir(&links) {
                for entry in entries.flatten() {
                    let path = entry.path();
                    let Some((ifindex, _)) = parse_link_pin(&path) else {
                        kept += 1;
                        continue;
                    };
                    if interface_exists(ifindex) && !self.is_attached(ifindex) {
                        kept += 1;
                        continue;
                    }
                    std::fs::remove_file(&path).map_err(|source| DatapathError::Dir {
                        path: path.clone(),
                        source,
                    })?;
                    out.links_removed += 1;
                }
            }
            out.links_kept += kept;
            if kept > 0 {
                still.push(dir);
                continue;
            }
            // No link of that ABI is left: its maps (pins) go too. A map still referenced
            // by a running program would live on; none is.
            std::fs::remove_dir_all(&dir).map_err(|source| DatapathError::Dir {
                path: dir.clone(),
                source,
            })?;
            out.dirs_removed.push(dir);
        }
        self.older = still;
        Ok(out)
    }

    /// The object's program for a hook.
    fn program_name(&self, hook: Hook) -> Result<String> {
        self.programs
            .iter()
            .find(|p| p.attach == Attach::Tc(hook))
            .map(|p| p.name.clone())
            .ok_or_else(|| DatapathError::Object {
                detail: format!("no program for hook {hook:?}"),
            })
    }

    /// Loads the decision programs and puts them in `pal_tail`, where the pod hooks'
    /// programs tail-call them (slot = the hook's policy direction). Done before any link
    /// is made or adopted: an empty slot drops every packet the fast path does not finish
    /// (`DROP_MISSED_TAIL_CALL`). The map is pinned, so programs of an earlier run of this
    /// ABI that are still attached call this run's decisions from here on (same maps, same
    /// layouts).
    fn load_decisions(&mut self) -> Result<()> {
        let mut fds = Vec::new();
        for hook in Hook::ENDPOINT {
            let name = self
                .programs
                .iter()
                .find(|p| p.attach == Attach::Decision(hook))
                .map(|p| p.name.clone())
                .ok_or_else(|| DatapathError::Object {
                    detail: format!("no decision program for hook {hook:?}"),
                })?;
            let prog = self.classifier(&name)?;
            prog.load().map_err(prog_err(&name))?;
            let fd = prog
                .fd()
                .map_err(prog_err(&name))?
                .try_clone()
                .map_err(|e| DatapathError::Object {
                    detail: format!("program {name}: {e}"),
                })?;
            fds.push((u32::from(hook_direction(hook)), fd));
        }
        let name = map_name::TAIL;
        let mut tail: aya::maps::ProgramArray<_> =
            aya::maps::ProgramArray::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        for (slot, fd) in &fds {
            tail.set(*slot, fd, 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    /// The object's `sk_lookup` program.
    fn proxy_lookup_name(&self) -> Result<String> {
        self.programs
            .iter()
            .find(|p| p.attach == Attach::ProxyLookup)
            .map(|p| p.name.clone())
            .ok_or_else(|| DatapathError::Object {
                detail: "no sk_lookup program".into(),
            })
    }

    fn sk_lookup(&mut self, name: &str) -> Result<&mut SkLookup> {
        self.program(name)
    }

    /// A program of the object as its kind.
    fn program<'a, T>(&'a mut self, name: &str) -> Result<&'a mut T>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    {
        let p = self
            .bpf
            .program_mut(name)
            .ok_or_else(|| DatapathError::Program {
                name: name.to_string(),
                source: Box::new(ProgramError::NotLoaded),
            })?;
        p.try_into().map_err(prog_err(name))
    }

    fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        self.program(name)
    }

    /// Takes over every pinned link: the new program replaces the old one inside the link
    /// (atomic `bpf_link_update`), so packets never meet an empty hook. Pins whose
    /// interface is gone are removed.
    fn adopt_links(&mut self) -> Result<()> {
        let dir = self.pin_dir.join("links");
        let entries = std::fs::read_dir(&dir).map_err(|source| DatapathError::Dir {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some((ifindex, hook)) = parse_link_pin(&path) else {
                continue;
            };
            if !interface_exists(ifindex) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            self.swap_into_pinned(&path, hook)?;
            self.adopted.push((ifindex, hook));
        }
        Ok(())
    }

    fn link_pin(&self, ifindex: u32, hook: Hook) -> PathBuf {
        self.pin_dir
            .join("links")
            .join(format!("if{ifindex}-{}", hook.suffix()))
    }

    fn swap_into_pinned(&mut self, path: &Path, hook: Hook) -> Result<()> {
        let link_err = |detail: String| DatapathError::Link {
            path: path.to_path_buf(),
            detail,
        };
        let pinned = PinnedLink::from_pin(path).map_err(|e| link_err(e.to_string()))?;
        let link: SchedClassifierLink = FdLink::from(pinned)
            .try_into()
            .map_err(|e: LinkError| link_err(e.to_string()))?;
        let name = self.program_name(hook)?;
        let prog = self.classifier(&name)?;
        let id = prog.attach_to_link(link).map_err(prog_err(&name))?;
        // Re-pin: the old pin file still names the same link; replace it with ours.
        let link = prog.take_link(id).map_err(prog_err(&name))?;
        let fd: FdLink = link
            .try_into()
            .map_err(|e: LinkError| link_err(e.to_string()))?;
        let _ = std::fs::remove_file(path);
        fd.pin(path).map_err(|e| link_err(e.to_string()))?;
        Ok(())
    }

    /// Attaches both programs to a host-side interface (TCX, first in the chain so no
    /// foreign program can pass a packet before policy sees it) and pins the links.
    /// Attaching an interface that already has Palisade's links replaces the program in
    /// place.
    pub fn attach(&mut self, ifname: &str) -> Result<u32> {
        self.attach_hooks(ifname, Hook::ENDPOINT)
    }

    /// Attaches the uplink programs to the node's uplink `ifname` (docs/datapath.md §13):
    /// first in its TCX chains, links pinned and adopted across restarts like an
    /// endpoint's.
    pub fn attach_uplink(&mut self, ifname: &str) -> Result<u32> {
        self.attach_hooks(ifname, Hook::UPLINK)
    }

    fn attach_hooks(&mut self, ifname: &str, hooks: [Hook; 2]) -> Result<u32> {
        let ifindex = ifindex_of(ifname)?;
        for hook in hooks {
            let path = self.link_pin(ifindex, hook);
            if path.exists() {
                self.swap_into_pinned(&path, hook)?;
                continue;
            }
            let name = self.program_name(hook)?;
            let prog = self.classifier(&name)?;
            let id = prog
                .attach_with_options(
                    ifname,
                    hook.attach_type(),
                    TcAttachOptions::TcxOrder(LinkOrder::first()),
                )
                .map_err(prog_err(&name))?;
            let link = prog.take_link(id).map_err(prog_err(&name))?;
            let fd: FdLink = link
                .try_into()
                .map_err(|e: LinkError| DatapathError::Link {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            fd.pin(&path).map_err(|e| DatapathError::Link {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        }
        Ok(ifindex)
    }

    /// Detaches from an interface: removing the pins releases the links.
    pub fn detach(&mut self, ifindex: u32) {
        for hook in Hook::ENDPOINT {
            let _ = std::fs::remove_file(self.link_pin(ifindex, hook));
        }
    }

    /// Detaches the uplink programs from an interface.
    pub fn detach_uplink(&mut self, ifindex: u32) {
        for hook in Hook::UPLINK {
            let _ = std::fs::remove_file(self.link_pin(ifindex, hook));
        }
    }

    /// Whether Palisade's links are pinned for this interface (an endpoint's, or an
    /// uplink's).
    pub fn is_attached(&self, ifindex: u32) -> bool {
        [Hook::ENDPOINT, Hook::UPLINK]
            .iter()
            .any(|hooks| hooks.iter().all(|h| self.link_pin(ifindex, *h).exists()))
    }

    /// TCX programs on an interface, per hook, in chain order (for the debug command).
    pub fn query(ifname: &str) -> Result<Vec<(Hook, Vec<String>)>> {
        let mut out = Vec::new();
        for hook in Hook::ENDPOINT {
            let (_, progs) = SchedClassifier::query_tcx(ifname, hook.attach_type())
                .map_err(prog_err(&format!("{hook:?}")))?;
            out.push((
                hook,
                progs
                    .iter()
                    .map(|p| format!("{} (id {})", p.name_as_str().unwrap_or("?"), p.id()))
                    .collect(),
            ));
        }
        Ok(out)
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map> {
        self.bpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap { name })
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map> {
        self.bpf.map(name).ok_or(DatapathError::MissingMap { name })
    }

    // ---- endpoints -----------------------------------------------------------------

    /// Writes an endpoint, then moves the endpoint generation, so no flow of the node keeps
    /// the fast path without a decision program seeing the endpoints as they are now
    /// (docs/datapath.md §3.1). Also after a failed write: whatever the map holds then is
    /// what the next packets are decided on.
    pub fn set_endpoint(&mut self, ifindex: u32, info: &EndpointInfo) -> Result<()> {
        let name = map_name::ENDPOINTS;
        let mut m: BpfHashMap<_, u32, EndpointBytes> =
            BpfHashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        let written = m.insert(ifindex, info.to_bytes(), 0).map_err(map_err(name));
        self.bump_ep_gen()?;
        written
    }

    /// The endpoint generation (`pal_ep_gen`).
    pub fn ep_gen(&self) -> u32 {
        self.ep_gen
    }

    fn read_ep_gen(&self) -> Result<u32> {
        let name = map_name::EP_GEN;
        let m: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(self.map(name)?).map_err(map_err(name))?;
        m.get(&0, 0).map_err(map_err(name))
    }

    /// Moves the endpoint generation on (skipping 0, which no fast path accepts).
    fn bump_ep_gen(&mut self) -> Result<()> {
        let next = match self.ep_gen.wrapping_add(1) {
            0 => 1,
            n => n,
        };
        let name = map_name::EP_GEN;
        let mut m: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        m.set(0, next, 0).map_err(map_err(name))?;
        self.ep_gen = next;
        Ok(())
    }

    pub fn endpoint(&self, ifindex: u32) -> Result<Option<EndpointInfo>> {
        let name = map_name::ENDPOINTS;
        let m: BpfHashMap<_, u32, EndpointBytes> =
            BpfHashMap::try_from(self.map(name)?).map_err(map_err(name))?;
        match m.get(&ifindex, 0) {
            Ok(b) => Ok(Some(EndpointInfo::from_bytes(&b))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(map_err(name)(source)),
        }
    }

    pub fn endpoints(&self) -> Result<Vec<(u32, EndpointInfo)>> {
        let name = map_name::ENDPOINTS;
        let m: BpfHashMap<_, u32, EndpointBytes> =
            BpfHashMap::try_from(self.map(name)?).map_err(map_err(name))?;
        m.iter()
            .map(|r| {
                r.map(|(k, v)| (k, EndpointInfo::from_bytes(&v)))
                    .map_err(map_err(name))
            })
            .collect()
    }

    /// Deletes an endpoint, then moves the endpoint generation (as [`Datapath::set_endpoint`]).
    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<()> {
        let name = map_name::ENDPOINTS;
        let mut m: BpfHashMap<_, u32, EndpointBytes> =
            BpfHashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        let removed = deleted(m.remove(&ifindex)).map_err(map_err(name));
        self.bump_ep_gen()?;
        removed
    }

    // ---- services (docs/services.md) ---------------------------------------------------

    fn hash_insert<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
        k: K,
        v: V,
    ) -> Result<()> {
        let mut m: BpfHashMap<_, K, V> =
            BpfHashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        m.insert(k, v, 0).map_err(map_err(name))
    }

    fn hash_remove_sized<K: aya::Pod>(&mut self, name: &'static str, k: &K) -> Result<()> {
        let r = match name {
            map_name::LB_SVC => BpfHashMap::<_, K, LbServiceBytes>::try_from(self.map_mut(name)?)
                .map_err(map_err(name))?
                .remove(k),
            map_name::LB_MAGLEV => BpfHashMap::<_, K, LbMaglevBytes>::try_from(self.map_mut(name)?)
                .map_err(map_err(name))?
                .remove(k),
            map_name::LB_BACKENDS => {
                BpfHashMap::<_, K, LbBackendBytes>::try_from(self.map_mut(name)?)
                    .map_err(map_err(name))?
                    .remove(k)
            }
            _ => BpfHashMap::<_, K, LbKeyBytes>::try_from(self.map_mut(name)?)
                .map_err(map_err(name))?
                .remove(k),
        };
        deleted(r).map_err(map_err(name))
    }

    fn hash_entries<K: aya::Pod, V: aya::Pod>(&self, name: &'static str) -> Result<Vec<(K, V)>> {
        let m: BpfHashMap<_, K, V> =
            BpfHashMap::try_from(self.map(name)?).map_err(map_err(name))?;
        m.iter().map(|r| r.map_err(map_err(name))).collect()
    }

    pub fn upsert_lb_service(&mut self, key: &abi::LbKey, svc: &abi::LbService) -> Result<()> {
        self.hash_insert(map_name::LB_SVC, key.to_bytes(), svc.to_bytes())
    }

    pub fn delete_lb_service(&mut self, key: &abi::LbKey) -> Result<()> {
        self.hash_remove_sized(map_name::LB_SVC, &key.to_bytes())
    }

    /// Writes a frontend's table in one update (readers see the old or the new table).
    pub fn set_lb_table(&mut self, id: u32, slots: &[u16]) -> Result<()> {
        let mut v = Box::new([0u8; 2 * abi::LB_MAGLEV_MAX]);
        for (i, b) in slots.iter().take(abi::LB_MAGLEV_MAX).enumerate() {
            v[2 * i..2 * i + 2].copy_from_slice(&b.to_ne_bytes());
        }
        self.hash_insert(map_name::LB_MAGLEV, id, *v)
    }

    pub fn delete_lb_table(&mut self, id: u32) -> Result<()> {
        self.hash_remove_sized(map_name::LB_MAGLEV, &id)
    }

    pub fn upsert_lb_backend(&mut self, key: &abi::LbBackendKey, b: &abi::LbBackend) -> Result<()> {
        self.hash_insert(
            map_name::LB_BACKENDS,
            lb_backend_key_bytes(key),
            b.to_bytes(),
        )
    }

    pub fn delete_lb_backend(&mut self, key: &abi::LbBackendKey) -> Result<()> {
        self.hash_remove_sized(map_name::LB_BACKENDS, &lb_backend_key_bytes(key))
    }

    pub fn set_lb_revnat(&mut self, id: u32, frontend: &abi::LbKey) -> Result<()> {
        self.hash_insert(map_name::LB_REVNAT, id, frontend.to_bytes())
    }

    pub fn delete_lb_revnat(&mut self, id: u32) -> Result<()> {
        self.hash_remove_sized(map_name::LB_REVNAT, &id)
    }

    /// What the service maps hold (tables sized by their frontend's `table_size`).
    pub fn lb_state(&self) -> Result<policy_compiler::plan::lb::LbState> {
        let mut st = policy_compiler::plan::lb::LbState::default();
        for (k, v) in self.hash_entries::<LbKeyBytes, LbServiceBytes>(map_name::LB_SVC)? {
            st.services
                .insert(abi::LbKey::from_bytes(&k), abi::LbService::from_bytes(&v));
        }
        let sizes: BTreeMap<u32, u32> =
            st.services.values().map(|s| (s.id, s.table_size)).collect();
        let m: BpfHashMap<_, u32, LbMaglevBytes> =
            BpfHashMap::try_from(self.map(map_name::LB_MAGLEV)?)
                .map_err(map_err(map_name::LB_MAGLEV))?;
        for r in m.iter() {
            let (id, v) = r.map_err(map_err(map_name::LB_MAGLEV))?;
            let n = sizes.get(&id).copied().unwrap_or(0) as usize;
            let slots: std::sync::Arc<[u16]> = (0..n.min(abi::LB_MAGLEV_MAX))
                .map(|i| u16::from_ne_bytes([v[2 * i], v[2 * i + 1]]))
                .collect();
            st.tables.insert(id, slots);
        }
        for (k, v) in
            self.hash_entries::<LbBackendKeyBytes, LbBackendBytes>(map_name::LB_BACKENDS)?
        {
            let key = abi::LbBackendKey {
                id: u32::from_ne_bytes([k[0], k[1], k[2], k[3]]),
                index: u32::from_ne_bytes([k[4], k[5], k[6], k[7]]),
            };
            st.backends.insert(key, abi::LbBackend::from_bytes(&v));
        }
        for (id, v) in self.hash_entries::<u32, LbKeyBytes>(map_name::LB_REVNAT)? {
            st.revnat.insert(id, abi::LbKey::from_bytes(&v));
        }
        Ok(st)
    }

    // ---- policy ----------------------------------------------------------------------

    fn policy_map(&mut self) -> Result<LpmTrie<&mut MapData, PolicyKeyData, PolicyValueBytes>> {
        let name = map_name::POLICY;
        LpmTrie::try_from(self.map_mut(name)?).map_err(map_err(name))
    }

    fn policy_lpm_key(slot: u32, key: &EntryKey) -> LpmKey<PolicyKeyData> {
        let b = key.to_abi(slot).to_bytes();
        let mut data = [0u8; 12];
        data.copy_from_slice(&b[4..16]);
        LpmKey::new(key.prefixlen as u32, data)
    }

    pub fn upsert_policy(&mut self, slot: u32, key: &EntryKey, value: &PolicyValue) -> Result<()> {
        let k = Self::policy_lpm_key(slot, key);
        self.policy_map()?
            .insert(&k, value.to_bytes(), 0)
            .map_err(map_err(map_name::POLICY))
    }

    pub fn delete_policy(&mut self, slot: u32, key: &EntryKey) -> Result<()> {
        let k = Self::policy_lpm_key(slot, key);
        deleted(self.policy_map()?.remove(&k)).map_err(map_err(map_name::POLICY))
    }

    /// Every policy entry in the map, as (slot, key bytes after prefixlen, prefixlen, value).
    pub fn policy_entries(&mut self) -> Result<Vec<(u32, EntryKey, PolicyValue)>> {
        let name = map_name::POLICY;
        let m = self.policy_map()?;
        let mut out = Vec::new();
        for r in m.iter() {
            let (k, v) = r.map_err(map_err(name))?;
            let d = k.data();
            let slot = u32::from_ne_bytes([d[0], d[1], d[2], d[3]]);
            let identity = u32::from_ne_bytes([d[4], d[5], d[6], d[7]]);
            out.push((
                slot,
                EntryKey {
                    identity,
                    direction: d[8],
                    protocol: d[9],
                    port: u16::from_be_bytes([d[10], d[11]]),
                    prefixlen: k.prefix_len() as u8,
                },
                PolicyValue::from_bytes(&v),
            ));
        }
        Ok(out)
    }

    // ---- ipcache -----------------------------------------------------------------------

    fn ipcache_map(&mut self) -> Result<LpmTrie<&mut MapData, IpcacheKeyData, IpcacheValueBytes>> {
        let name = map_name::IPCACHE;
        LpmTrie::try_from(self.map_mut(name)?).map_err(map_err(name))
    }

    pub fn upsert_ipcache(&mut self, cidr: &Cidr, identity: u32) -> Result<()> {
        let (len, data) = cidr.ipcache_key();
        let mut v = [0u8; 8];
        v[0..4].copy_from_slice(&identity.to_ne_bytes());
        self.ipcache_map()?
            .insert(&LpmKey::new(len, data), v, 0)
            .map_err(map_err(map_name::IPCACHE))
    }

    pub fn delete_ipcache(&mut self, cidr: &Cidr) -> Result<()> {
        let (len, data) = cidr.ipcache_key();
        deleted(self.ipcache_map()?.remove(&LpmKey::new(len, data)))
            .map_err(map_err(map_name::IPCACHE))
    }

    /// Every ipcache entry, as (cidr, identity).
    pub fn ipcache_entries(&mut self) -> Result<Vec<(Cidr, u32)>> {
        let m = self.ipcache_map()?;
        let mut out = Vec::new();
        for r in m.iter() {
            let (k, v) = r.map_err(map_err(map_name::IPCACHE))?;
            let d = k.data();
            let len = k.prefix_len().saturating_sub(abi::IPCACHE_PREFIX_FIXED) as u8;
            let addr: std::net::IpAddr = if d[0] == 4 {
                std::net::Ipv4Addr::new(d[4], d[5], d[6], d[7]).into()
            } else {
                let mut a = [0u8; 16];
                a.copy_from_slice(&d[4..20]);
                std::net::Ipv6Addr::from(a).into()
            };
            if let Some(c) = Cidr::new(addr, len) {
                out.push((c, u32::from_ne_bytes([v[0], v[1], v[2], v[3]])));
            }
        }
        Ok(out)
    }

    // ---- conntrack -------------------------------------------------------------------

    fn ct_map(&mut self) -> Result<BpfHashMap<&mut MapData, CtKeyBytes, CtEntryBytes>> {
        let name = map_name::CT;
        BpfHashMap::try_from(self.map_mut(name)?).map_err(map_err(name))
    }

    /// Every conntrack entry.
    pub fn ct_entries(&mut self) -> Result<Vec<(CtKey, CtEntry)>> {
        let m = self.ct_map()?;
        let mut out = Vec::new();
        for r in m.iter() {
            let (k, v) = r.map_err(map_err(map_name::CT))?;
            out.push((CtKey::from_bytes(&k), CtEntry::from_bytes(&v)));
        }
        Ok(out)
    }

    fn local_map(&mut self) -> Result<BpfHashMap<&mut MapData, [u8; 20], [u8; 20]>> {
        let name = map_name::LOCAL;
        BpfHashMap::try_from(self.map_mut(name)?).map_err(map_err(name))
    }

    /// What the decision programs learned of local delivery (`pal_local`, docs/datapath.md
    /// §3.2): each pod address with its host-side interface, MACs and generation.
    pub fn local_routes(&mut self) -> Result<Vec<(abi::LocalKey, abi::LocalRoute)>> {
        let m = self.local_map()?;
        let mut out = Vec::new();
        for r in m.iter() {
            let (k, v) = r.map_err(map_err(map_name::LOCAL))?;
            out.push((
                abi::LocalKey::from_bytes(&k),
                abi::LocalRoute::from_bytes(&v),
            ));
        }
        Ok(out)
    }

    /// Writes a local delivery as a decision program learns it. Only the datapath writes
    /// this map in a running agent; tests use this to point an address at an interface
    /// other than the one BPF_PROG_TEST_RUN runs on.
    #[doc(hidden)]
    pub fn write_local_route(
        &mut self,
        key: &abi::LocalKey,
        route: &abi::LocalRoute,
    ) -> Result<()> {
        let mut m = self.local_map()?;
        m.insert(key.to_bytes(), route.to_bytes(), 0)
            .map_err(map_err(map_name::LOCAL))
    }

    /// Writes a conntrack entry as a program would make it. Only the programs (and the
    /// upgrade import) write conntrack in a running agent; tests use this to give a flow an
    /// entry at an interface BPF_PROG_TEST_RUN does not run on.
    #[doc(hidden)]
    pub fn write_ct_entry(&mut self, key: &CtKey, entry: &CtEntry) -> Result<()> {
        let mut m = self.ct_map()?;
        m.insert(key.to_bytes(), entry.to_bytes(), 0)
            .map_err(map_err(map_name::CT))
    }

    /// Deletes expired conntrack entries (the LRU would otherwise evict live flows
    /// first under churn). Returns how many were removed.
    pub fn ct_gc(&mut self) -> Result<usize> {
        let now = monotonic_ns();
        let mut m = self.ct_map()?;
        let expired: Vec<CtKeyBytes> = m
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, v)| CtEntry::from_bytes(v).expires_ns <= now)
            .map(|(k, _)| k)
            .collect();
        let mut n = 0;
        for k in &expired {
            if m.remove(k).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Deletes the conntrack entries of one endpoint interface (on deregistration): a
    /// later endpoint on a recycled ifindex must not inherit flows admitted for the previous
    /// one, and the shared LRU should not keep dead flows. Returns how many were removed.
    pub fn ct_flush_ifindex(&mut self, ifindex: u32) -> Result<usize> {
        let mut m = self.ct_map()?;
        let keys: Vec<CtKeyBytes> = m
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| CtKey::from_bytes(k).ifindex == ifindex)
            .collect();
        let mut n = 0;
        for k in &keys {
            if m.remove(k).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Empties conntrack (tests, and `--flush-ct`).
    pub fn ct_flush(&mut self) -> Result<()> {
        let mut m = self.ct_map()?;
        let keys: Vec<CtKeyBytes> = m.keys().filter_map(|k| k.ok()).collect();
        for k in &keys {
            let _ = m.remove(k);
        }
        Ok(())
    }

    // ---- counters and events -----------------------------------------------------------

    /// Per-CPU counters summed, non-zero slots only.
    pub fn counters(&self) -> Result<Counters> {
        let name = map_name::COUNTERS;
        let m: PerCpuArray<_, [u64; 2]> =
            PerCpuArray::try_from(self.map(name)?).map_err(map_err(name))?;
        sum_counters(&m)
    }

    /// One counter slot summed over CPUs (cheaper than [`Datapath::counters`] when the
    /// caller polls a single slot).
    pub fn counter(&self, direction: u8, code: u32) -> Result<abi::CounterValue> {
        let name = map_name::COUNTERS;
        let m: PerCpuArray<_, [u64; 2]> =
            PerCpuArray::try_from(self.map(name)?).map_err(map_err(name))?;
        let idx = u32::from(direction) * abi::COUNTER_DIR_STRIDE + code;
        let vals = m.get(&idx, 0).map_err(map_err(name))?;
        let (packets, bytes) = vals
            .iter()
            .fold((0u64, 0u64), |(p, b), v| (p + v[0], b + v[1]));
        Ok(abi::CounterValue { packets, bytes })
    }

    /// The event ring buffer, moved out of the loader (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let name = map_name::EVENTS;
        let m = self
            .bpf
            .take_map(name)
            .ok_or(DatapathError::MissingMap { name })?;
        RingBuf::try_from(m).map_err(map_err(name))
    }

    /// Runs one program on a packet with BPF_PROG_TEST_RUN (tests and `palisade-enforcer
    /// probe`). The run has the side effects of a real packet: conntrack, counters, events.
    pub fn test_run(&mut self, hook: Hook, packet: &[u8]) -> Result<u32> {
        self.test_run_repeat(hook, packet, 1).map(|(ret, _)| ret)
    }

    /// [`Datapath::test_run`] `repeat` times on the same packet: the last return value and
    /// the mean run time the kernel measured (the path benchmark, `benches/paths.rs`).
    pub fn test_run_repeat(
        &mut self,
        hook: Hook,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(u32, std::time::Duration)> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let name = self.program_name(hook)?;
        let prog = self.classifier(&name)?;
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(packet),
                repeat: repeat.max(1),
                ..Default::default()
            })
            .map_err(prog_err(&name))?;
        Ok((r.return_value, r.duration))
    }

    /// [`Datapath::test_run`] that also returns the packet as the program left it (service
    /// translation rewrites it).
    pub fn test_run_output(&mut self, hook: Hook, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let name = self.program_name(hook)?;
        let prog = self.classifier(&name)?;
        let mut out = vec![0u8; packet.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .map_err(prog_err(&name))?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    /// [`Datapath::test_run`] with the packet's `skb->mark` set to `mark`: the return value
    /// and the mark the program left (the L7 redirect's marks).
    pub fn test_run_marked(&mut self, hook: Hook, packet: &[u8], mark: u32) -> Result<(u32, u32)> {
        use aya::programs::{TestRun as _, TestRunOptions};
        // struct __sk_buff, zero but `mark` (offset 8); the kernel copies its own size back.
        const SKB_CTX: usize = 256;
        const MARK: usize = 8;
        let mut ctx_in = [0u8; SKB_CTX];
        ctx_in[MARK..MARK + 4].copy_from_slice(&mark.to_ne_bytes());
        let mut ctx_out = [0u8; SKB_CTX];
        let name = self.program_name(hook)?;
        let prog = self.classifier(&name)?;
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(packet),
                ctx_in: Some(&ctx_in),
                ctx_out: Some(&mut ctx_out),
                ..Default::default()
            })
            .map_err(prog_err(&name))?;
        let out = u32::from_ne_bytes([
            ctx_out[MARK],
            ctx_out[MARK + 1],
            ctx_out[MARK + 2],
            ctx_out[MARK + 3],
        ]);
        Ok((r.return_value, out))
    }

    // ---- the L7 proxy ----------------------------------------------------------------

    /// Writes `pal_proxy`: with [`abi::PROXY_F_READY`] the datapath hands REDIRECT flows to
    /// the proxy; without it they drop with `DROP_PROXY_UNAVAILABLE`.
    pub fn set_proxy(&mut self, state: &abi::ProxyState) -> Result<()> {
        let name = map_name::PROXY;
        let mut m: aya::maps::Array<_, [u8; 8]> =
            aya::maps::Array::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        m.set(0, state.to_bytes(), 0).map_err(map_err(name))?;
        self.proxy_state = *state;
        Ok(())
    }

    /// Sets or clears [`abi::PROXY_F_INGRESS_L7`] (some endpoint of this node has ingress
    /// HTTP rules: `from_pod` then looks a new TCP flow's destination up), keeping the rest
    /// of `pal_proxy`; writes only on a change.
    pub fn set_proxy_ingress_l7(&mut self, on: bool) -> Result<()> {
        let mut s = self.proxy_state;
        if on {
            s.flags |= abi::PROXY_F_INGRESS_L7;
        } else {
            s.flags &= !abi::PROXY_F_INGRESS_L7;
        }
        if s == self.proxy_state {
            return Ok(());
        }
        self.set_proxy(&s)
    }

    /// What `pal_proxy` holds.
    pub fn proxy_state(&self) -> abi::ProxyState {
        self.proxy_state
    }

    /// Puts the proxy's listening socket in `pal_proxy_socks` and attaches the `sk_lookup`
    /// program to this process's network namespace (once), so flows from_pod redirects are
    /// handed to `listener`. The datapath redirects only after [`Datapath::set_proxy`]
    /// says ready. A listener that closes leaves the map by itself.
    pub fn attach_proxy_listener(&mut self, listener: &impl std::os::fd::AsRawFd) -> Result<()> {
        let name = map_name::PROXY_SOCKS;
        let mut socks: aya::maps::SockMap<_> =
            aya::maps::SockMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        socks.set(0, listener, 0).map_err(map_err(name))?;
        if !self.proxy_lookup_attached {
            let prog = self.proxy_lookup_name()?;
            let netns = std::fs::File::open("/proc/thread-self/ns/net").map_err(|source| {
                DatapathError::Interface {
                    ifname: "/proc/thread-self/ns/net".into(),
                    source,
                }
            })?;
            self.sk_lookup(&prog)?
                .attach(netns)
                .map_err(prog_err(&prog))?;
            self.proxy_lookup_attached = true;
        }
        Ok(())
    }

    /// Instructions the verifier processed per program (tracked by tests).
    pub fn program_stats(&mut self) -> Vec<(String, u32, u32)> {
        let mut out = Vec::new();
        let programs: Vec<ProgramSpec> = self.programs.clone();
        for spec in programs {
            let name = spec.name;
            let info = match spec.attach {
                Attach::Tc(_) | Attach::Decision(_) => {
                    self.classifier(&name).ok().map(|p| p.info())
                }
                Attach::ProxyLookup => self.sk_lookup(&name).ok().map(|p| p.info()),
            };
            if let Some(Ok(info)) = info {
                out.push((
                    name,
                    info.verified_instruction_count().unwrap_or(0),
                    info.size_translated().unwrap_or(0),
                ));
            }
        }
        out
    }
}

/// The error of a failed operation on program `name`.
fn lb_backend_key_bytes(k: &abi::LbBackendKey) -> LbBackendKeyBytes {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&k.id.to_ne_bytes());
    b[4..].copy_from_slice(&k.index.to_ne_bytes());
    b
}

/// A delete of a key that is not there is done (every delete of the update plan is
/// idempotent): aya 0.14 reports `bpf_map_delete_elem`'s ENOENT as a syscall error, not as
/// `MapError::KeyNotFound`, so both are accepted here.
fn deleted(r: std::result::Result<(), MapError>) -> std::result::Result<(), MapError> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The policy direction a pod hook decides (`DIRECTION_*`), which is also its slot in
/// `pal_tail`.
fn hook_direction(hook: Hook) -> u8 {
    match hook {
        Hook::FromPod | Hook::FromUplink => abi::DIRECTION_EGRESS,
        Hook::ToPod | Hook::ToUplink => abi::DIRECTION_INGRESS,
    }
}

fn prog_err(name: &str) -> impl FnOnce(ProgramError) -> DatapathError + use<> {
    let name = name.to_string();
    move |source| DatapathError::Program {
        name,
        source: Box::new(source),
    }
}

/// The error of a failed operation on map `name`.
fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map {
        name,
        source: Box::new(source),
    }
}

/// Per-CPU counters summed over CPUs; only slots that counted something.
fn sum_counters<T: std::borrow::Borrow<MapData>>(m: &PerCpuArray<T, [u64; 2]>) -> Result<Counters> {
    let mut out = Counters::new();
    for idx in 0..abi::COUNTER_MAX {
        let vals = m.get(&idx, 0).map_err(map_err(map_name::COUNTERS))?;
        let (packets, bytes) = vals
            .iter()
            .fold((0u64, 0u64), |(p, b), v| (p + v[0], b + v[1]));
        if packets != 0 || bytes != 0 {
            out.insert(
                (
                    (idx / abi::COUNTER_DIR_STRIDE) as u8,
                    idx % abi::COUNTER_DIR_STRIDE,
                ),
                abi::CounterValue { packets, bytes },
            );
        }
    }
    Ok(out)
}

fn load_object(pin_dir: &Path, local_delivery: bool) -> Result<Ebpf> {
    let on = u32::from(local_delivery);
    let load = |level| {
        EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .override_global(LOCAL_DELIVERY_GLOBAL, &on, true)
            .verifier_log_level(level)
            .load(DATAPATH_OBJECT)
    };
    match load(VerifierLogLevel::STATS) {
        Ok(bpf) => Ok(bpf),
        Err(source) => {
            // Reload once with a full log: its tail names the reason.
            let log = match load(VerifierLogLevel::DEBUG | VerifierLogLevel::STATS) {
                Err(e) => {
                    let s = format!("{e:?}");
                    let tail: Vec<&str> = s.lines().rev().take(20).collect();
                    format!(
                        "\nverifier log (tail):\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                }
                Ok(_) => String::new(),
            };
            Err(DatapathError::Load {
                source: Box::new(source),
                log,
            })
        }
    }
}

/// `<pin root>/v<N>` directories with N below this ABI, oldest first. Newer ones (a
/// downgrade) are left alone: this agent cannot know their layout.
fn older_abi_dirs(pin_root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(pin_root) else {
        return Vec::new();
    };
    let mut out: Vec<(u32, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let v: u32 = name.to_str()?.strip_prefix('v')?.parse().ok()?;
            (v < abi::ABI_VERSION && e.path().is_dir()).then(|| (v, e.path()))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, p)| p).collect()
}

fn parse_link_pin(path: &Path) -> Option<(u32, Hook)> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("if")?;
    let (idx, hook) = rest.split_once('-')?;
    let hook = match hook {
        "from-pod" => Hook::FromPod,
        "to-pod" => Hook::ToPod,
        "from-uplink" => Hook::FromUplink,
        "to-uplink" => Hook::ToUplink,
        _ => return None,
    };
    Some((idx.parse().ok()?, hook))
}

/// The interface index of a name in the current network namespace.
pub fn ifindex_of(ifname: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(ifname).map_err(|e| DatapathError::Interface {
        ifname: ifname.to_string(),
        source: io::Error::from(e),
    })
}

fn interface_exists(ifindex: u32) -> bool {
    nix::net::if_::if_nameindex()
        .map(|l| l.iter().any(|i| i.index() == ifindex))
        .unwrap_or(false)
}

/// CLOCK_MONOTONIC in ns: the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn ensure_bpffs(root: &Path, mount_if_missing: bool) -> Result<()> {
    std::fs::create_dir_all(root).map_err(|source| DatapathError::Dir {
        path: root.to_path_buf(),
        source,
    })?;
    if is_bpffs(root) {
        return Ok(());
    }
    if !mount_if_missing {
        return Err(DatapathError::Bpffs {
            path: root.to_path_buf(),
            source: io::Error::other("not a bpffs"),
        });
    }
    nix::mount::mount(
        Some("bpffs"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| DatapathError::Bpffs {
        path: root.to_path_buf(),
        source: io::Error::from(e),
    })?;
    eprintln!("palisade-enforcer: mounted a bpffs on {}", root.display());
    Ok(())
}

/// Whether a path is on a bpffs (or under one).
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// What the pinned datapath holds, read without loading or attaching anything (the
/// `inspect` command; safe next to a running enforcer).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub endpoints: Vec<(u32, EndpointInfo)>,
    pub counters: Counters,
    pub policy_entries: usize,
    pub ipcache_entries: usize,
    pub ct_entries: usize,
    pub links: Vec<(u32, Hook)>,
}

const BPF_NOEXIST: u64 = 1;

fn pinned_at(path: &Path, name: &'static str) -> Result<aya::maps::Map> {
    let data = MapData::from_pin(path).map_err(|source| DatapathError::PinnedMap {
        path: path.to_path_buf(),
        source: Box::new(source),
    })?;
    aya::maps::Map::from_map_data(data).map_err(map_err(name))
}

fn pinned(pin_dir: &Path, name: &'static str) -> Result<aya::maps::Map> {
    let data =
        MapData::from_pin(pin_dir.join(name)).map_err(|source| DatapathError::PinnedMap {
            path: pin_dir.join(name),
            source: Box::new(source),
        })?;
    aya::maps::Map::from_map_data(data).map_err(map_err(name))
}

/// Reads the pinned maps and link pins under `pin_dir` (`<pin root>/v<ABI>`).
pub fn inspect(pin_dir: &Path) -> Result<Snapshot> {
    let mut snap = Snapshot::default();
    let m = pinned(pin_dir, map_name::ENDPOINTS)?;
    let eps: BpfHashMap<_, u32, EndpointBytes> =
        BpfHashMap::try_from(&m).map_err(map_err(map_name::ENDPOINTS))?;
    snap.endpoints = eps
        .iter()
        .filter_map(|r| r.ok())
        .map(|(k, v)| (k, EndpointInfo::from_bytes(&v)))
        .collect();
    let m = pinned(pin_dir, map_name::POLICY)?;
    let pol: LpmTrie<_, PolicyKeyData, PolicyValueBytes> =
        LpmTrie::try_from(&m).map_err(map_err(map_name::POLICY))?;
    snap.policy_entries = pol.keys().count();
    let m = pinned(pin_dir, map_name::IPCACHE)?;
    let ipc: LpmTrie<_, IpcacheKeyData, IpcacheValueBytes> =
        LpmTrie::try_from(&m).map_err(map_err(map_name::IPCACHE))?;
    snap.ipcache_entries = ipc.keys().count();
    let m = pinned(pin_dir, map_name::CT)?;
    let ct: BpfHashMap<_, CtKeyBytes, CtEntryBytes> =
        BpfHashMap::try_from(&m).map_err(map_err(map_name::CT))?;
    snap.ct_entries = ct.keys().count();
    let m = pinned(pin_dir, map_name::COUNTERS)?;
    let c: PerCpuArray<_, [u64; 2]> =
        PerCpuArray::try_from(&m).map_err(map_err(map_name::COUNTERS))?;
    snap.counters = sum_counters(&c)?;
    if let Ok(entries) = std::fs::read_dir(pin_dir.join("links")) {
        snap.links = entries
            .flatten()
            .filter_map(|e| parse_link_pin(&e.path()))
            .collect();
        snap.links.sort_by_key(|(i, h)| (*i, *h == Hook::ToPod));
    }
    Ok(snap)
}

/// A counter slot's name: a drop reason's Hubble name, or the pass/forward slot.
pub fn counter_name(code: u32) -> &'static str {
    match code {
        abi::COUNTER_FORWARDED => "FORWARDED (new flow)",
        abi::COUNTER_REDIRECTED => "REDIRECTED",
        abi::COUNTER_AUDIT => "AUDIT",
        abi::COUNTER_CT_ESTABLISHED => "conntrack established",
        abi::COUNTER_CT_REPLY => "conntrack reply",
        abi::COUNTER_EVENTS_LOST => "events lost (ring buffer full)",
        abi::COUNTER_PASS_NON_IP => "passed: not IP",
        abi::COUNTER_PASS_NEIGHBOR => "passed: IPv6 ND/MLD",
        abi::COUNTER_REVOKED => "conntrack revoked by policy change",
        abi::COUNTER_ICMP_RELATED => "passed: ICMP error of a tracked flow",
        c => abi::drop_reason_name(c),
    }
}

//! The three maps the policy core fills (policy, ipcache, endpoints), behind one trait so
//! the sync layer runs the same code on the kernel ([`AyaMaps`], through
//! [`crate::datapath::Datapath`]) and in tests ([`FakeMaps`], in memory, with failure
//! injection and a hook that sees the state after every operation).

use std::collections::BTreeMap;

use policy_compiler::abi::EndpointInfo;
use policy_compiler::cidr::Cidr;
use policy_compiler::plan::{MapState, Op};

use crate::datapath::{Datapath, DatapathError};

/// A failed map operation.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("injected failure: {detail}")]
    Injected { detail: String },
}

/// Writing and dumping the maps. Each method is one kernel operation (one syscall on the
/// real maps): it either happened or it did not.
pub trait Maps {
    fn apply(&mut self, op: &Op) -> Result<(), MapsError>;
    /// The current contents of the three maps.
    fn dump(&mut self) -> Result<MapState, MapsError>;
}

/// The kernel maps of a loaded datapath.
#[derive(Debug)]
pub struct AyaMaps<'a>(pub &'a mut Datapath);

impl Maps for AyaMaps<'_> {
    fn apply(&mut self, op: &Op) -> Result<(), MapsError> {
        let dp = &mut *self.0;
        match op {
            Op::UpsertPolicy { slot, key, value } => dp.upsert_policy(*slot, key, value)?,
            Op::DeletePolicy { slot, key } => dp.delete_policy(*slot, key)?,
            Op::UpsertIpcache { cidr, identity } => dp.upsert_ipcache(cidr, *identity)?,
            Op::DeleteIpcache { cidr } => dp.delete_ipcache(cidr)?,
            Op::SetEndpoint { ifindex, info } => dp.set_endpoint(*ifindex, info)?,
            Op::DeleteEndpoint { ifindex } => dp.remove_endpoint(*ifindex)?,
            Op::UpsertLbService { key, service } => dp.upsert_lb_service(key, service)?,
            Op::DeleteLbService { key } => dp.delete_lb_service(key)?,
            Op::SetLbTable { id, slots } => dp.set_lb_table(*id, slots)?,
            Op::DeleteLbTable { id } => dp.delete_lb_table(*id)?,
            Op::UpsertLbBackend { key, backend } => dp.upsert_lb_backend(key, backend)?,
            Op::DeleteLbBackend { key } => dp.delete_lb_backend(key)?,
            Op::SetLbRevNat { id, frontend } => dp.set_lb_revnat(*id, frontend)?,
            Op::DeleteLbRevNat { id } => dp.delete_lb_revnat(*id)?,
        }
        Ok(())
    }

    fn dump(&mut self) -> Result<MapState, MapsError> {
        let dp = &mut *self.0;
        let mut s = MapState::default();
        for (slot, k, v) in dp.policy_entries()? {
            s.policy.entry(slot).or_default().insert(k, v);
        }
        s.ipcache = dp.ipcache_entries()?.into_iter().collect();
        s.endpoints = dp.endpoints()?.into_iter().collect();
        s.lb = dp.lb_state()?;
        Ok(s)
    }
}

/// A check run on the state after every successful operation.
pub type Observer = Box<dyn FnMut(&MapState, &Op) + Send>;

/// In-memory maps. Failures can be injected at chosen operation numbers (counted from 0
/// over the life of the fake) or for dumps; a failed operation changes nothing, as a
/// failed syscall does not.
#[derive(Default)]
pub struct FakeMaps {
    pub state: MapState,
    /// Operations attempted so far (successful or not).
    pub attempts: usize,
    /// Operation numbers that fail.
    pub fail_at: std::collections::BTreeSet<usize>,
    /// Whether the next dump fails.
    pub fail_dump: bool,
    pub observer: Option<Observer>,
}

impl std::fmt::Debug for FakeMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeMaps")
            .field("attempts", &self.attempts)
            .field("fail_at", &self.fail_at)
            .finish_non_exhaustive()
    }
}

impl FakeMaps {
    pub fn new(state: MapState) -> FakeMaps {
        FakeMaps {
            state,
            ..FakeMaps::default()
        }
    }

    /// Endpoint entries, for tests that inspect them.
    pub fn endpoints(&self) -> &BTreeMap<u32, EndpointInfo> {
        &self.state.endpoints
    }

    pub fn ipcache(&self) -> &BTreeMap<Cidr, u32> {
        &self.state.ipcache
    }
}

impl Maps for FakeMaps {
    fn apply(&mut self, op: &Op) -> Result<(), MapsError> {
        let n = self.attempts;
        self.attempts += 1;
        if self.fail_at.contains(&n) {
            return Err(MapsError::Injected {
                detail: format!("operation {n}: {op}"),
            });
        }
        self.state.apply(op);
        if let Some(o) = self.observer.as_mut() {
            o(&self.state, op);
        }
        Ok(())
    }

    fn dump(&mut self) -> Result<MapState, MapsError> {
        if std::mem::take(&mut self.fail_dump) {
            return Err(MapsError::Injected {
                detail: "dump".into(),
            });
        }
        Ok(self.state.clone())
    }
}

//! What a batch changed in the engine's compiled state. The kernel maps are not written
//! from this: the update plan (`crate::plan`) computes their ordered operations from the
//! old map state and the target.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::abi::PolicyValue;
use crate::cidr::Cidr;

use super::EntryKey;

/// What a batch changed, per identity (policy entries), address (ipcache) and endpoint.
/// A summary for reporting and tests; it carries no safe write order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MapDiff {
    /// Identities whose policy map is new (create before any endpoint points at it).
    pub policies_created: Vec<u32>,
    #[serde(serialize_with = "crate::abi_serde::keyed_entries")]
    pub policy_upserts: Vec<(u32, EntryKey, PolicyValue)>,
    pub ipcache_upserts: Vec<(Cidr, u32)>,
    /// Endpoint key -> identity (and so its policy map).
    pub endpoint_upserts: Vec<(String, u32)>,
    pub endpoint_deletes: Vec<String>,
    pub policy_deletes: Vec<(u32, EntryKey)>,
    pub ipcache_deletes: Vec<Cidr>,
    pub policies_removed: Vec<u32>,
    pub identities_added: Vec<u32>,
    pub identities_removed: Vec<u32>,
    /// Namespaces whose services may translate differently now (a Service, EndpointSlice
    /// or pod of theirs changed): what the service target recomputes
    /// (`plan::lb::LbTarget::update`).
    #[serde(skip)]
    pub services_touched: BTreeSet<String>,
}

/// One change of a [`MapDiff`], as [`MapDiff::ops`] lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapOp<'a> {
    CreatePolicy(u32),
    UpsertPolicyEntry(u32, &'a EntryKey, &'a PolicyValue),
    UpsertIpcache(&'a Cidr, u32),
    UpsertEndpoint(&'a str, u32),
    DeleteEndpoint(&'a str),
    DeletePolicyEntry(u32, &'a EntryKey),
    DeleteIpcache(&'a Cidr),
    RemovePolicy(u32),
}

impl MapDiff {
    pub fn is_empty(&self) -> bool {
        self.policies_created.is_empty()
            && self.policy_upserts.is_empty()
            && self.ipcache_upserts.is_empty()
            && self.endpoint_upserts.is_empty()
            && self.endpoint_deletes.is_empty()
            && self.policy_deletes.is_empty()
            && self.ipcache_deletes.is_empty()
            && self.policies_removed.is_empty()
    }

    pub fn ops(&self) -> impl Iterator<Item = MapOp<'_>> {
        self.policies_created
            .iter()
            .map(|i| MapOp::CreatePolicy(*i))
            .chain(
                self.policy_upserts
                    .iter()
                    .map(|(i, k, v)| MapOp::UpsertPolicyEntry(*i, k, v)),
            )
            .chain(
                self.ipcache_upserts
                    .iter()
                    .map(|(c, i)| MapOp::UpsertIpcache(c, *i)),
            )
            .chain(
                self.endpoint_upserts
                    .iter()
                    .map(|(e, i)| MapOp::UpsertEndpoint(e, *i)),
            )
            .chain(
                self.endpoint_deletes
                    .iter()
                    .map(|e| MapOp::DeleteEndpoint(e)),
            )
            .chain(
                self.policy_deletes
                    .iter()
                    .map(|(i, k)| MapOp::DeletePolicyEntry(*i, k)),
            )
            .chain(self.ipcache_deletes.iter().map(MapOp::DeleteIpcache))
            .chain(
                self.policies_removed
                    .iter()
                    .map(|i| MapOp::RemovePolicy(*i)),
            )
    }

    pub fn op_count(&self) -> usize {
        self.ops().count()
    }
}

pub(super) fn diff_entries(
    id: u32,
    old: &[(EntryKey, PolicyValue)],
    new: &[(EntryKey, PolicyValue)],
    diff: &mut MapDiff,
) {
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) if o.0 == n.0 => {
                if o.1 != n.1 {
                    diff.policy_upserts.push((id, n.0, n.1));
                }
                i += 1;
                j += 1;
            }
            (Some(o), Some(n)) if o.0 < n.0 => {
                diff.policy_deletes.push((id, o.0));
                i += 1;
            }
            (Some(_), Some(n)) => {
                diff.policy_upserts.push((id, n.0, n.1));
                j += 1;
            }
            (Some(o), None) => {
                diff.policy_deletes.push((id, o.0));
                i += 1;
            }
            (None, Some(n)) => {
                diff.policy_upserts.push((id, n.0, n.1));
                j += 1;
            }
            (None, None) => break,
        }
    }
}

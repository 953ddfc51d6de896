//! The compiled policy set against the datapath's map capacities
//! (`policy_compiler::plan::capacity`, the same numbers the enforcer checks every update
//! against): what `policy-test` refuses (exit 2) and what it warns about.
//!
//! - **Error**: one identity's policy alone has more entries than the policy map holds (no
//!   node could enforce it), or the cluster's ipcache (every node holds all of it) is larger
//!   than the ipcache map.
//! - **Warning**: twice an identity's entries exceed the policy map (a change of its policy
//!   holds the old and the new slot at once, and would be refused); every identity's policy
//!   plus the largest once more (all pods on one node, during a change) exceed it; more
//!   pods than the endpoint map holds (all pods on one node).

use policy_compiler::Engine;
use policy_compiler::abi::map_name;
use policy_compiler::plan::capacity::Capacity;

use crate::error::InputError;

/// Checks `engine` against `cap`; the warnings if it fits.
pub fn check(engine: &Engine, cap: &Capacity) -> Result<Vec<String>, InputError> {
    let mut warnings = Vec::new();
    let mut sizes: Vec<(u32, usize)> = engine
        .compiled()
        .iter()
        .map(|(id, p)| (*id, p.entries.len()))
        .collect();
    sizes.sort_by_key(|(id, n)| (std::cmp::Reverse(*n), *id));
    let describe = |id: u32| {
        let pod = engine
            .cluster()
            .endpoints
            .keys()
            .find(|k| engine.endpoint_identity(k) == Some(id))
            .map(|k| format!("endpoint {k}"));
        let mut policies: Vec<String> = engine
            .policy_for_identity(id)
            .map(|p| {
                p.ingress_isolated_by
                    .iter()
                    .chain(&p.egress_isolated_by)
                    .map(|r| r.to_string())
                    .collect()
            })
            .unwrap_or_default();
        policies.sort();
        policies.dedup();
        let by = (!policies.is_empty()).then(|| format!("selected by {}", policies.join(", ")));
        let about: Vec<String> = pod.into_iter().chain(by).collect();
        if about.is_empty() {
            format!("identity {id}")
        } else {
            format!("identity {id} ({})", about.join("; "))
        }
    };
    if let Some((id, n)) = sizes.first().copied() {
        if n > cap.policy {
            return Err(InputError::Capacity(format!(
                "the policy of {} compiles to {n} entries, more than the {} map holds \
                 ({}); no node could enforce it",
                describe(id),
                map_name::POLICY,
                cap.policy
            )));
        }
        if 2 * n > cap.policy {
            warnings.push(format!(
                "the policy of {} compiles to {n} entries; changing it needs {} entries at \
                 once (old and new slot), more than the {} map holds ({})",
                describe(id),
                2 * n,
                map_name::POLICY,
                cap.policy
            ));
        }
        let total: usize = sizes.iter().map(|(_, n)| n).sum::<usize>() + n;
        if total > cap.policy {
            warnings.push(format!(
                "all pods on one node would need {total} {} entries during a change of the \
                 largest policy ({}); the map holds {}",
                map_name::POLICY,
                describe(id),
                cap.policy
            ));
        }
    }
    let ipcache = engine.ipcache().len();
    if ipcache > cap.ipcache {
        return Err(InputError::Capacity(format!(
            "the cluster's addresses and ipBlocks compile to {ipcache} {} entries (every \
             node holds all of them), more than the map holds ({})",
            map_name::IPCACHE,
            cap.ipcache
        )));
    }
    let pods = engine.cluster().endpoints.len();
    if pods > cap.endpoints {
        warnings.push(format!(
            "{pods} pods: more than one node's {} map holds ({}) if they all ran on one node",
            map_name::ENDPOINTS,
            cap.endpoints
        ));
    }
    Ok(warnings)
}

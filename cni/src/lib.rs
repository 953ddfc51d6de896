//! Palisade CNI plugin library: the enforcer API types, IPAM and the plugin verbs.

pub mod api;

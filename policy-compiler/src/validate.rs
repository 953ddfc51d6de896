//! Placeholder replaced by the real validation module.
use crate::k8s::*;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType { Required, Forbidden, Invalid, Unsupported, TooLong, Duplicate }
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError { pub field: String, pub error_type: ErrorType, pub bad_value: Option<String>, pub detail: String }
impl std::fmt::Display for FieldError { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "{}: {}", self.field, self.detail) } }
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ValidationOptions { pub strict_cidr: bool }
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validation { pub errors: Vec<FieldError>, pub warnings: Vec<String> }
pub fn validate_network_policy(_np: &NetworkPolicyObject, _opts: &ValidationOptions) -> Validation { Validation::default() }
pub fn validate_labels(_labels: &Labels, _path: &str, _out: &mut Vec<FieldError>) {}
pub fn is_dns1123_subdomain(_s: &str) -> Vec<String> { Vec::new() }

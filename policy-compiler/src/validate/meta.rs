//! Object metadata: name, generateName, namespace, labels, annotations (apimachinery
//! `ValidateObjectMeta`).

use super::*;

/// `ValidateObjectMeta` for a namespaced object whose names are DNS subdomains, limited to
/// the fields a manifest carries (owner references, finalizers and managed fields are left to
/// the apiserver).
pub(super) fn validate_object_meta(meta: &StrictObjectMeta, out: &mut Vec<FieldError>) {
    let generate_name = meta.generate_name.as_deref().unwrap_or_default();
    if !generate_name.is_empty() {
        for msg in name_is_dns_subdomain(generate_name, true) {
            out.push(invalid("metadata.generateName", quote(generate_name), msg));
        }
    }
    let name = meta.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        // The apiserver would have generated a name from generateName by now.
        if generate_name.is_empty() {
            out.push(required(
                "metadata.name",
                "name or generateName is required",
            ));
        }
    } else {
        for msg in name_is_dns_subdomain(name, false) {
            out.push(invalid("metadata.name", quote(name), msg));
        }
    }

    // Namespaces are DNS labels (`ValidateNamespaceName`); an absent one comes from the URL.
    let namespace = meta.namespace.as_deref().unwrap_or_default();
    if !namespace.is_empty() {
        for msg in is_dns1123_label(namespace) {
            out.push(invalid("metadata.namespace", quote(namespace), msg));
        }
    }

    if let Some(generation) = meta.generation
        && generation < 0
    {
        out.push(invalid(
            "metadata.generation",
            generation.to_string(),
            "must be greater than or equal to 0".to_owned(),
        ));
    }
    if let Some(labels) = &meta.labels {
        validate_labels(labels, "metadata.labels", out);
    }
    if let Some(annotations) = &meta.annotations {
        validate_annotations(annotations, out);
    }
}

/// `NameIsDNSSubdomain`: a generateName prefix may end in '-'. Upstream masks that by
/// replacing the last *two* characters with "a" (`name[:len-2] + "a"`); the quirk is kept.
pub(super) fn name_is_dns_subdomain(name: &str, prefix: bool) -> Vec<String> {
    if prefix
        && name.len() > 1
        && let Some(stripped) = name.strip_suffix('-')
    {
        // Drop one more character (a whole one if it is multi-byte, where Go would cut a
        // byte and fail the check all the same).
        let mut chars = stripped.chars();
        chars.next_back();
        let mut masked = chars.as_str().to_owned();
        masked.push('a');
        return is_dns1123_subdomain(&masked);
    }
    is_dns1123_subdomain(name)
}

/// `ValidateAnnotations`: keys are qualified names compared in lower case, and the keys plus
/// values may total at most 256 KiB.
pub(super) fn validate_annotations(
    annotations: &BTreeMap<String, String>,
    out: &mut Vec<FieldError>,
) {
    const PATH: &str = "metadata.annotations";
    let mut total = 0usize;
    for (key, value) in annotations {
        for msg in is_qualified_name(&key.to_lowercase()) {
            out.push(invalid(PATH, quote(key), msg));
        }
        total = total.saturating_add(key.len()).saturating_add(value.len());
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        out.push(FieldError {
            field: PATH.to_owned(),
            error_type: ErrorType::TooLong,
            bad_value: None,
            detail: format!("may not be more than {TOTAL_ANNOTATION_SIZE_LIMIT} bytes"),
        });
    }
}

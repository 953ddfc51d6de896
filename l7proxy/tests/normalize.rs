//! The path-normalization vectors (reliability plan §4.5, P1–P20) and the invariants of the
//! normalized form, property-tested.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use palisade_l7proxy::path::MAX_TARGET_BYTES;
use palisade_l7proxy::{NormalizeOptions, PathError, SemicolonMode, normalize_target};
use proptest::prelude::*;

fn norm_with(raw: &[u8], semicolons: SemicolonMode) -> Result<String, PathError> {
    normalize_target(raw, NormalizeOptions { semicolons }).map(|t| t.path)
}

fn norm(raw: &str) -> Result<String, PathError> {
    norm_with(raw.as_bytes(), SemicolonMode::Reject)
}

#[track_caller]
fn to(raw: &str, want: &str) {
    assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
}

#[track_caller]
fn rejected(raw: &[u8]) -> PathError {
    match norm_with(raw, SemicolonMode::Reject) {
        Ok(p) => panic!("{:?} was accepted as {p:?}", String::from_utf8_lossy(raw)),
        Err(e) => e,
    }
}

#[test]
fn p1_p2_dot_segments_plain_and_encoded() {
    to("/public/../admin", "/admin");
    to("/public/%2e%2e/admin", "/admin");
    to("/public/%2E%2E/admin", "/admin");
    to("/public/.%2e/admin", "/admin");
}

#[test]
fn p3_double_encoding_is_rejected() {
    let e = rejected(b"/public/%252e%252e/admin");
    assert!(
        matches!(
            e,
            PathError::EncodedForbidden {
                hex: 0x25,
                offset: 8,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn p4_slashes_merge_before_dot_segments_and_never_become_an_authority() {
    to("//admin", "/admin");
    to("/public//../admin", "/admin");
    let t = normalize_target(b"//evil.example/admin", NormalizeOptions::default()).unwrap();
    assert_eq!(t.authority, None);
    assert_eq!(t.path, "/evil.example/admin");
}

#[test]
fn p5_encoded_slashes_are_rejected() {
    for raw in ["/admin%2fsecret", "/admin%2Fsecret", "/public%2f..%2fadmin"] {
        let e = rejected(raw.as_bytes());
        assert!(
            matches!(e, PathError::EncodedForbidden { hex: b'/', .. }),
            "{raw}: {e}"
        );
        assert_eq!(e.status(), 400);
    }
}

#[test]
fn p6_backslash_folded_raw_rejected_encoded() {
    to("/public\\..\\admin", "/admin");
    for raw in ["/admin%5csecret", "/admin%5Csecret"] {
        assert!(matches!(
            rejected(raw.as_bytes()),
            PathError::EncodedForbidden { hex: b'\\', .. }
        ));
    }
}

#[test]
fn p7_nul_is_rejected_raw_and_encoded() {
    assert!(matches!(
        rejected(b"/admin%00"),
        PathError::EncodedForbidden { hex: 0, .. }
    ));
    assert!(matches!(
        rejected(b"/admin\x00"),
        PathError::ForbiddenByte { byte: 0, offset: 6 }
    ));
    rejected(b"/xyz/.%00../abc");
    rejected(b"/xyz/AAAAA%%0000/abc");
}

#[test]
fn p8_unreserved_decoded_case_kept() {
    to("/%61dmin", "/admin");
    to("/ADMIN", "/ADMIN");
    to("/%41DMIN", "/ADMIN");
}

#[test]
fn p9_semicolons_rejected_by_default_stripped_on_request() {
    for raw in ["/admin;jsessionid=1", "/public/..;/admin", "/admin;/x"] {
        assert!(
            matches!(rejected(raw.as_bytes()), PathError::Semicolon { .. }),
            "{raw}"
        );
        assert!(norm_with(raw.as_bytes(), SemicolonMode::Reject).is_err());
    }
    let strip = |raw: &str| norm_with(raw.as_bytes(), SemicolonMode::StripParams).unwrap();
    assert_eq!(strip("/admin;jsessionid=1"), "/admin");
    assert_eq!(strip("/public/..;/admin"), "/admin");
    assert_eq!(strip("/admin;/x"), "/admin/x");
    assert_eq!(strip("/public/..;x/admin"), "/admin");
}

#[test]
fn p10_fragments_are_rejected() {
    assert!(matches!(
        rejected(b"/admin#frag"),
        PathError::Fragment { offset: 6 }
    ));
    rejected(b"/public#/../admin");
    rejected(b"/public?x=1#/../admin");
}

#[test]
fn p11_query_is_never_the_path() {
    let t = normalize_target(b"/public/x?p=/../admin", NormalizeOptions::default()).unwrap();
    assert_eq!(
        (t.path.as_str(), t.query.as_deref()),
        ("/public/x", Some("p=/../admin"))
    );
    let t = normalize_target(b"/public/x?/admin", NormalizeOptions::default()).unwrap();
    assert_eq!(
        (t.path.as_str(), t.query.as_deref()),
        ("/public/x", Some("/admin"))
    );
    assert_eq!(t.origin_form(), "/public/x?/admin");
}

#[test]
fn p12_dot_segments_resolve_and_never_climb_above_root() {
    to("/admin/.", "/admin");
    to("/admin/./x", "/admin/x");
    to("/./admin", "/admin");
    to("/../admin", "/admin");
    to("/a/b/../../../../admin", "/admin");
}

#[test]
fn p13_not_origin_form() {
    assert_eq!(rejected(b"admin"), PathError::NotOriginForm);
    assert_eq!(rejected(b"*"), PathError::NotOriginForm);
    assert_eq!(rejected(b""), PathError::Empty);
}

#[test]
fn p14_encoded_non_ascii_must_be_utf8_and_stays_encoded() {
    assert!(matches!(rejected(b"/%c0%af"), PathError::BadUtf8 { .. }));
    assert!(matches!(rejected(b"/%e0%80%af"), PathError::BadUtf8 { .. }));
    to("/caf%c3%a9", "/caf%C3%A9");
}

#[test]
fn p15_raw_non_ascii_del_and_space_rejected() {
    assert!(matches!(
        rejected(b"/\xc3\xa9"),
        PathError::ForbiddenByte { byte: 0xc3, .. }
    ));
    assert!(matches!(
        rejected(b"/admin\x7f"),
        PathError::ForbiddenByte { byte: 0x7f, .. }
    ));
    assert!(matches!(
        rejected(b"/a b"),
        PathError::ForbiddenByte { byte: b' ', .. }
    ));
}

#[test]
fn p16_malformed_percent_encoding() {
    for raw in ["/%2x", "/%", "/%e"] {
        assert!(
            matches!(
                rejected(raw.as_bytes()),
                PathError::BadPercent { offset: 1 }
            ),
            "{raw}"
        );
    }
}

#[test]
fn p17_trailing_slash_is_significant() {
    to("/admin/", "/admin/");
    to("/admin", "/admin");
}

#[test]
fn p19_absolute_form_yields_path_and_authority() {
    let t = normalize_target(b"http://Good/admin", NormalizeOptions::default()).unwrap();
    assert_eq!(
        (t.path.as_str(), t.authority.as_deref()),
        ("/admin", Some("good"))
    );
    let t = normalize_target(b"http://good", NormalizeOptions::default()).unwrap();
    assert_eq!(t.path, "/");
    let t = normalize_target(b"http://good?x=1", NormalizeOptions::default()).unwrap();
    assert_eq!((t.path.as_str(), t.query.as_deref()), ("/", Some("x=1")));
    assert_eq!(rejected(b"http://user@good/admin"), PathError::BadAbsolute);
    assert_eq!(rejected(b"http:///admin"), PathError::BadAbsolute);
}

#[test]
fn p20_long_targets_are_linear_and_bounded() {
    let slashes = "/".repeat(4000) + "admin";
    to(&slashes, "/admin");
    let long = "/".to_string() + &"a".repeat(MAX_TARGET_BYTES);
    let e = rejected(long.as_bytes());
    assert_eq!(e.status(), 414);
}

#[test]
fn reserved_characters_stay_encoded_so_the_backend_sees_what_was_matched() {
    to("/a%3fb", "/a%3Fb");
    to("/a%23b", "/a%23b");
    to("/a%20b", "/a%20b");
    to("/a%3Bb", "/a%3Bb");
}

#[test]
fn characters_outside_pchar_are_rejected() {
    for b in [b'"', b'<', b'>', b'[', b']', b'^', b'`', b'{', b'|', b'}'] {
        let raw = [b'/', b'a', b];
        assert!(
            matches!(rejected(&raw), PathError::ForbiddenByte { offset: 2, .. }),
            "{}",
            b as char
        );
    }
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%2e".to_string()),
        Just("%2E%2e".to_string()),
        Just("a".to_string()),
        Just("%61b".to_string()),
        Just("%C3%A9".to_string()),
        Just("x%3Fy".to_string()),
        Just("%20".to_string()),
        "[a-zA-Z0-9_~!$&'()*+,=:@-]{1,6}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            (segment(), prop_oneof![Just("/"), Just("\\"), Just("//")]),
            0..8,
        ),
        prop::bool::ANY,
    )
        .prop_map(|(segs, trailing)| {
            let mut p = String::from("/");
            for (s, sep) in segs {
                p.push_str(&s);
                p.push_str(sep);
            }
            if !trailing && p.len() > 1 {
                p.pop();
            }
            p
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Normalized paths begin with `/`, hold no `\`, `//` or dot segments, and normalize to
    /// themselves.
    #[test]
    fn normalized_form_invariants(raw in path()) {
        let out = norm(&raw).unwrap();
        prop_assert!(out.starts_with('/'));
        prop_assert!(!out.contains('\\'));
        prop_assert!(!out.contains("//"));
        for seg in out.split('/') {
            prop_assert!(seg != "." && seg != "..", "{raw} -> {out}");
        }
        prop_assert_eq!(norm(&out).unwrap(), out.clone());
    }

    /// Arbitrary bytes never panic, and anything accepted satisfies the invariants.
    #[test]
    fn arbitrary_bytes_are_accepted_only_in_normal_form(raw in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut target = vec![b'/'];
        target.extend(raw);
        for mode in [SemicolonMode::Reject, SemicolonMode::StripParams] {
            if let Ok(out) = norm_with(&target, mode) {
                prop_assert!(out.starts_with('/'));
                prop_assert!(!out.contains("//") && !out.contains('\\'));
                prop_assert!(out.bytes().all(|b| b.is_ascii_graphic()));
                prop_assert_eq!(norm_with(out.as_bytes(), mode).unwrap(), out.clone());
            }
        }
    }
}

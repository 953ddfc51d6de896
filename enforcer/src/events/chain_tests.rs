//! The verdict log's hash chain end to end: the logger writes (rotating, losing, restarting),
//! `palisade_observe::verify` checks, and each kind of tampering is found at the first bad
//! record.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use palisade_observe::schema::Line;
use palisade_observe::verify::{self, Options, Problem, Report};
use policy_compiler::abi;

use super::tests::{TempDir, engine, event};
use super::*;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

/// A logger on `path` with `n` events (every third a policy denial: two lines), a loss
/// report after the fifth, and a final checkpoint.
fn write_log(path: &Path, max_bytes: u64, keep: u32, n: usize) -> String {
    let e = engine();
    let r = EngineResolver::new(&e);
    let w = RotatingWriter::open(path, max_bytes, keep, false).unwrap();
    let mut log = FlowLogger::new(w, "node-a", BootClock::with_offset(0))
        .unwrap()
        .with_key(key());
    log.checkpoint().unwrap();
    for i in 0..n {
        let mut ev = event(&e);
        ev.sport_be = (40000 + i as u16).to_be();
        if i % 3 == 0 {
            ev.verdict = abi::EVENT_VERDICT_DROPPED;
            ev.drop_reason = abi::DROP_POLICY_DENIED as u16;
        }
        log.log(&ev, &r).unwrap();
        if i == 5 {
            log.observe_ring_lost(3).unwrap();
        }
    }
    log.checkpoint().unwrap();
    log.flush().unwrap();
    log.last_checkpoint().unwrap()
}

fn check(path: &Path, opts: &Options) -> Report {
    verify::verify_log(path, opts).unwrap()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn put(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Line numbers (1-based) of flow records.
fn records(lines: &[String]) -> Vec<usize> {
    (0..lines.len())
        .filter(|i| lines[*i].starts_with("{\"flow\""))
        .map(|i| i + 1)
        .collect()
}

fn at(p: &Problem) -> u64 {
    match p {
        Problem::NoStart { at }
        | Problem::Modified { at, .. }
        | Problem::Missing { at, .. }
        | Problem::OutOfOrder { at, .. }
        | Problem::BadCheckpoint { at, .. }
        | Problem::TruncatedLine { at } => at.line,
        Problem::AnchorMissed { .. } => 0,
    }
}

fn intact(tag: &str) -> (TempDir, PathBuf, Vec<String>, String) {
    let d = TempDir::new(tag);
    let path = d.0.join("v.jsonl");
    let anchor = write_log(&path, 1 << 20, 3, 12);
    let l = lines(&path);
    (d, path, l, anchor)
}

#[test]
fn an_intact_log_verifies_and_every_line_is_a_record_hubble_reads() {
    let (_d, path, l, anchor) = intact("chain-ok");
    let opts = Options {
        key: Some(*key().verifying_key().as_bytes()),
        anchor: verify::parse_anchor(&anchor),
    };
    let rep = check(&path, &opts);
    assert!(rep.ok(), "{:?}", rep.problem);
    // 12 events, 4 of them denials (two lines), 2 checkpoints.
    assert_eq!(rep.records, 12 + 4 + 2);
    assert_eq!(rep.checkpoints, 2);
    assert_eq!(rep.unsigned_tail, 0);
    assert_eq!(rep.first_seq, 1);
    for line in &l {
        let parsed = Line::parse(line).unwrap();
        if let Some(f) = parsed.flow {
            let c = f.details().and_then(|d| d.chain.clone()).unwrap();
            assert!(c.seq > 0 && c.hash.len() == 64, "{line}");
            assert_eq!(f.extensions.unwrap().r#type, EXTENSIONS_TYPE);
        } else {
            assert!(parsed.lost_events.is_some() || parsed.node_status.is_some());
        }
    }
}

#[test]
fn a_modified_record_is_named() {
    let (_d, path, mut l, _) = intact("chain-mod");
    let k = records(&l)[4];
    l[k - 1] = l[k - 1].replacen("\"uuid\":\"", "\"uuid\":\"0", 1);
    put(&path, &l);
    let p = check(&path, &Options::default()).problem.unwrap();
    assert!(matches!(p, Problem::Modified { .. }), "{p}");
    assert_eq!(at(&p), k as u64, "{p}");
}

#[test]
fn a_deleted_record_is_named() {
    let (_d, path, mut l, _) = intact("chain-del");
    let k = records(&l)[4];
    l.remove(k - 1);
    put(&path, &l);
    let p = check(&path, &Options::default()).problem.unwrap();
    assert!(matches!(p, Problem::Missing { .. }), "{p}");
    assert_eq!(
        at(&p),
        k as u64,
        "the record after the gap, now on line {k}: {p}"
    );
}

#[test]
fn an_inserted_record_is_named() {
    let (_d, path, mut l, _) = intact("chain-ins");
    let r = records(&l);
    let copy = l[r[2] - 1].clone();
    l.insert(r[5], copy);
    put(&path, &l);
    let p = check(&path, &Options::default()).problem.unwrap();
    assert!(matches!(p, Problem::OutOfOrder { .. }), "{p}");
    assert_eq!(at(&p), r[5] as u64 + 1, "{p}");

    // A forged line that is not a record (a fake loss report) breaks the next record.
    let (_d, path, mut l, _) = intact("chain-ins2");
    let r = records(&l);
    l.insert(r[3], r#"{"lost_events":{"source":"PERF_EVENT_RING_BUFFER","num_events_lost":"1"},"node_name":"node-a","time":"2026-01-01T00:00:00Z"}"#.to_string());
    put(&path, &l);
    let p = check(&path, &Options::default()).problem.unwrap();
    assert!(matches!(p, Problem::Modified { .. }), "{p}");
    assert_eq!(at(&p), r[4] as u64 + 1, "{p}");
}

#[test]
fn reordered_records_are_named() {
    let (_d, path, mut l, _) = intact("chain-swap");
    let r = records(&l);
    l.swap(r[6] - 1, r[7] - 1);
    put(&path, &l);
    let p = check(&path, &Options::default()).problem.unwrap();
    assert!(matches!(p, Problem::Missing { .. }), "{p}");
    assert_eq!(at(&p), r[6] as u64, "{p}");
}

#[test]
fn a_truncated_tail_is_found() {
    // Cut inside the last line.
    let (_d, path, _, anchor) = intact("chain-cut");
    let data = std::fs::read(&path).unwrap();
    std::fs::write(&path, &data[..data.len() - 40]).unwrap();
    let p = check(&path, &Options::default()).problem.unwrap();
    assert!(matches!(p, Problem::TruncatedLine { .. }), "{p}");

    // Cut at a line boundary: the chain still holds, the anchor from status does not.
    let (_d, path, l, _) = intact("chain-cut2");
    put(&path, &l[..l.len() - 3]);
    let rep = check(&path, &Options::default());
    assert!(
        rep.ok(),
        "without an anchor a boundary cut is a valid shorter log"
    );
    assert!(rep.unsigned_tail > 0, "but its tail is unsigned");
    let p = check(
        &path,
        &Options {
            key: None,
            anchor: verify::parse_anchor(&anchor),
        },
    )
    .problem
    .unwrap();
    assert!(matches!(p, Problem::AnchorMissed { .. }), "{p}");

    // The beginning removed.
    let (_d, path, l, _) = intact("chain-head");
    put(&path, &l[3..]);
    let p = check(&path, &Options::default()).problem.unwrap();
    assert!(matches!(p, Problem::NoStart { .. }), "{p}");
    assert_eq!(at(&p), 1);
}

#[test]
fn forged_or_foreign_checkpoints_fail() {
    let (_d, path, mut l, _) = intact("chain-cp");
    let last = l.len() - 1;
    assert!(l[last].starts_with("{\"node_status\""));
    let other = SigningKey::from_bytes(&[9; 32]);
    // Re-signed with another key over the same chain: the signature holds, the key is not
    // the node's.
    let opts = Options {
        key: Some(*key().verifying_key().as_bytes()),
        anchor: None,
    };
    let cp = chain::parse_checkpoint(l[last].as_bytes())
        .unwrap()
        .unwrap();
    assert!(cp.signed);
    let original = l[last].clone();
    let forged = l[last].replace(
        &chain::hex(key().verifying_key().as_bytes()),
        &chain::hex(other.verifying_key().as_bytes()),
    );
    l[last] = forged;
    put(&path, &l);
    let p = check(&path, &opts).problem.unwrap();
    assert!(matches!(p, Problem::BadCheckpoint { .. }), "{p}");
    assert_eq!(at(&p), l.len() as u64);

    // A checkpoint whose time was changed: its signature no longer verifies.
    l[last] = original.replace("\"time\":\"", "\"time\":\"1");
    put(&path, &l);
    let p = check(&path, &Options::default()).problem.unwrap();
    assert!(
        matches!(&p, Problem::BadCheckpoint { why, .. } if why.contains("signature")),
        "{p}"
    );
}

#[test]
fn rotation_and_restarts_continue_the_chain() {
    let d = TempDir::new("chain-rot");
    let path = d.0.join("v.jsonl");
    // Small files: many rotations, the oldest dropped; three runs, the second "crashing"
    // in the middle of a line.
    write_log(&path, 8 * 1024, 3, 30);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"flow\":{\"cut by a cra").unwrap();
    }
    let anchor = write_log(&path, 8 * 1024, 3, 30);
    let opts = Options {
        key: Some(*key().verifying_key().as_bytes()),
        anchor: verify::parse_anchor(&anchor),
    };
    let rep = check(&path, &opts);
    assert!(rep.ok(), "{:?}", rep.problem);
    assert_eq!(rep.files, 4, "v.jsonl and 3 rotations");
    assert!(
        rep.first_seq > 1,
        "older files were dropped: starts at a checkpoint"
    );
    assert_eq!(rep.keys.len(), 1);
    // The record numbers run on across the restart.
    let (_, last) = verify::parse_anchor(&anchor).unwrap();
    assert_eq!(last, rep.last_hash);
    assert!(rep.last_seq > 60 + 20, "{}", rep.last_seq);
}

#[test]
fn a_line_cut_by_a_crash_is_removed_and_counted_as_lost() {
    let d = TempDir::new("chain-crash");
    let path = d.0.join("v.jsonl");
    write_log(&path, 1 << 20, 3, 5);
    let before = lines(&path).len();
    {
        use std::io::Write;
        let l = lines(&path);
        // A record cut after its chain member: resumed from, it would break the chain.
        let rec = l[records(&l)[2] - 1].clone();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&rec.as_bytes()[..rec.len() / 2]).unwrap();
    }
    write_log(&path, 1 << 20, 3, 5);
    let l = lines(&path);
    assert!(l.iter().all(|x| x.ends_with('}')), "a cut line is left");
    let lost: Vec<&String> = l
        .iter()
        .filter(|x| x.contains("OBSERVER_EVENTS_QUEUE"))
        .collect();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert!(lost[0].contains(r#""num_events_lost":"1""#), "{}", lost[0]);
    assert!(l.len() > before);
    let rep = check(&path, &Options::default());
    assert!(rep.ok(), "{:?}", rep.problem);
}

#[test]
fn the_key_is_generated_private_and_kept() {
    let d = TempDir::new("chain-key");
    let p = d.0.join("sub/node.key");
    let k1 = load_or_generate(&p).unwrap();
    let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let k2 = load_or_generate(&p).unwrap();
    assert_eq!(k1.to_bytes(), k2.to_bytes());
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        load_or_generate(&p),
        Err(KeyError::Permissions { .. })
    ));
    std::fs::write(d.0.join("bad.key"), "xyz\n").unwrap();
    std::fs::set_permissions(d.0.join("bad.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        load_or_generate(&d.0.join("bad.key")),
        Err(KeyError::Format { .. })
    ));
}

//! The verdict log's hash chain and signed checkpoints (docs/verdict-log.md, "Tamper
//! evidence").
//!
//! * A **record** is a flow line. It carries `"chain":{"hash":"<hex>","seq":N}` as the first
//!   key of `flow.extensions.value` (where hubble reads and ignores it), with
//!   `hash_N = SHA-256(hash_{N-1} ‖ every byte written since record N-1 ‖ the record's line
//!   without its chain member ‖ "\n" ‖ N as decimal)`; `hash_0` is 32 zero bytes. Lines that
//!   are not records (loss reports, checkpoints, a line cut by a crash) are covered by the
//!   next record's hash. Rotation does not reset the chain: it runs on across files.
//! * A **checkpoint** is a record too: a `node_status` line whose message is
//!   `palisade-checkpoint v1 seq=N hash=<hex> key=<hex> sig=<hex>`, hashed like a record over
//!   the line without those fields, plus an Ed25519 signature by the node's key over
//!   [`checkpoint_message`] (node, time, N, hash_N), i.e. over the whole chain up to it. A
//!   verifier may start at any checkpoint (older files rotated away): its hash is signed.
//!   Hubble reads `node_status` lines and prints nothing for them.
//!
//! [`Chain`] is the writer's and the verifier's common state; [`split_record`] finds the
//! chain member of a line, [`parse_checkpoint`] a checkpoint.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// A chain hash.
pub type Hash = [u8; 32];
/// The hash before record 1.
pub const GENESIS: Hash = [0; 32];

/// Where the chain member goes: right after this (the start of the extensions' value).
pub const EXT_VALUE_MARKER: &str =
    r#""extensions":{"@type":"type.googleapis.com/google.protobuf.Struct","value":{"#;
const CHAIN_HEAD: &str = r#""chain":{"hash":""#;
const CHAIN_SEQ: &str = r#"","seq":"#;
/// How a checkpoint line starts.
pub const CHECKPOINT_HEAD: &str = r#"{"node_status":{"message":"palisade-checkpoint v1 "#;
const CHECKPOINT_DOMAIN: &str = "palisade-verdict-log-checkpoint v1";

/// The marker's searcher, built once.
fn marker_finder() -> &'static memchr::memmem::Finder<'static> {
    static FINDER: std::sync::OnceLock<memchr::memmem::Finder<'static>> =
        std::sync::OnceLock::new();
    FINDER.get_or_init(|| memchr::memmem::Finder::new(EXT_VALUE_MARKER.as_bytes()))
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// Appends `bytes` in lowercase hex.
fn push_hex(s: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
}

/// `n` in decimal, without allocating: the digits are the tail of the returned buffer.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(b[2 * i])? << 4 | digit(b[2 * i + 1])?;
    }
    Some(out)
}

/// The chain as of the last record: its number and hash, and what was written since.
#[derive(Debug, Clone)]
pub struct Chain {
    seq: u64,
    last: Hash,
    pending: Sha256,
}

impl Chain {
    /// A new chain: no record yet.
    pub fn genesis() -> Chain {
        Chain::resume(0, GENESIS)
    }

    /// Continues after record `seq` whose hash was `last`.
    pub fn resume(seq: u64, last: Hash) -> Chain {
        let mut pending = Sha256::new();
        pending.update(last);
        Chain { seq, last, pending }
    }

    /// The number of the last record (0: none).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The hash of the last record.
    pub fn last(&self) -> Hash {
        self.last
    }

    /// A line that is not a record (without its newline): covered by the next record.
    pub fn absorb(&mut self, line: &[u8]) {
        self.pending.update(line);
        self.pending.update(b"\n");
    }

    /// The hash record `seq` with `content` (its line without the chain member) would have.
    fn hash_of(&self, content: &[u8], seq: u64) -> Hash {
        let mut h = self.pending.clone();
        h.update(content);
        h.update(b"\n");
        h.update(decimal(seq, &mut [0; 20]));
        h.finalize().into()
    }

    fn advance(&mut self, seq: u64, hash: Hash) {
        *self = Chain::resume(seq, hash);
    }

    /// Seals a flow line as the next record: returns the line with its chain member. A line
    /// without `flow.extensions.value` cannot carry one: it is absorbed and returned as is.
    pub fn seal(&mut self, line: &str) -> String {
        let mut out = String::with_capacity(line.len() + 100);
        out.push_str(line);
        self.seal_in_place(&mut out);
        out
    }

    /// [`Chain::seal`] on an owned line: the chain member is inserted into it.
    pub fn seal_in_place(&mut self, line: &mut String) {
        let Some(at) = marker_finder()
            .find(line.as_bytes())
            .map(|i| i + EXT_VALUE_MARKER.len())
        else {
            self.absorb(line.as_bytes());
            return;
        };
        let seq = self.seq + 1;
        let hash = self.hash_of(line.as_bytes(), seq);
        self.advance(seq, hash);
        let mut member = String::with_capacity(128);
        member.push_str(CHAIN_HEAD);
        push_hex(&mut member, &hash);
        member.push_str(CHAIN_SEQ);
        for &d in decimal(seq, &mut [0; 20]) {
            member.push(d as char);
        }
        member.push('}');
        if !line[at..].starts_with('}') {
            member.push(',');
        }
        line.insert_str(at, &member);
    }

    /// Checks record `seq` claiming `hash` over `content` and, if it holds, advances.
    pub fn check(&mut self, content: &[u8], seq: u64, hash: &Hash) -> bool {
        let want = self.hash_of(content, seq);
        if &want == hash {
            self.advance(seq, want);
            true
        } else {
            false
        }
    }
}

/// A record's chain member, split out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub hash: Hash,
    /// The line without its chain member, as it was hashed.
    pub content: Vec<u8>,
}

/// The chain member of a record line; `None` for a line that is not a record (no
/// extensions, or no chain member in them).
pub fn split_record(line: &[u8]) -> Option<Record> {
    let at = marker_finder().find(line)? + EXT_VALUE_MARKER.len();
    let rest = line.get(at..)?.strip_prefix(CHAIN_HEAD.as_bytes())?;
    let hash = unhex::<32>(std::str::from_utf8(rest.get(..64)?).ok()?)?;
    let rest = rest.get(64..)?.strip_prefix(CHAIN_SEQ.as_bytes())?;
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    let seq: u64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let mut end = line.len() - rest.len() + digits;
    if line.get(end) != Some(&b'}') {
        return None;
    }
    end += 1;
    if line.get(end) == Some(&b',') {
        end += 1;
    }
    let mut content = Vec::with_capacity(line.len());
    content.extend_from_slice(&line[..at]);
    content.extend_from_slice(&line[end..]);
    Some(Record { seq, hash, content })
}

/// What a checkpoint signs: the node, the time and the chain as of the checkpoint itself
/// (its own number and hash, which covers everything before it).
pub fn checkpoint_message(node: &str, time: &str, seq: u64, hash: &Hash) -> Vec<u8> {
    format!("{CHECKPOINT_DOMAIN}\n{node}\n{time}\n{seq}\n{}", hex(hash)).into_bytes()
}

/// A checkpoint line with `message` (hand-written: `node_status` first, so a reader finds
/// checkpoints by how the line starts).
fn checkpoint_json(message: &str, node: &str, time: &str) -> String {
    let js = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        r#"{{"node_status":{{"message":{}}},"node_name":{},"time":{}}}"#,
        js(message),
        js(node),
        js(time)
    )
}

/// What a checkpoint record's hash covers of its own line: everything but its chain fields.
fn checkpoint_content(node: &str, time: &str) -> String {
    checkpoint_json("palisade-checkpoint v1", node, time)
}

impl Chain {
    /// Appends a checkpoint as the next record and returns its line (no newline): a record
    /// like any other, whose number and hash are signed with `key`.
    pub fn checkpoint(&mut self, key: &SigningKey, node: &str, time: &str) -> String {
        let seq = self.seq + 1;
        let hash = self.hash_of(checkpoint_content(node, time).as_bytes(), seq);
        self.advance(seq, hash);
        let sig = key.sign(&checkpoint_message(node, time, seq, &hash));
        let message = format!(
            "palisade-checkpoint v1 seq={seq} hash={} key={} sig={}",
            hex(&hash),
            hex(key.verifying_key().as_bytes()),
            hex(&sig.to_bytes())
        );
        checkpoint_json(&message, node, time)
    }
}

/// A checkpoint as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: Hash,
    pub key: [u8; 32],
    /// Whether the signature verifies with `key`.
    pub signed: bool,
    pub node: String,
    pub time: String,
    /// What its hash covers of its line.
    pub content: Vec<u8>,
}

/// The checkpoint on `line`; `None` when it is not one. `Some(Err)` when it looks like one
/// but cannot be read (a damaged checkpoint).
pub fn parse_checkpoint(line: &[u8]) -> Option<Result<Checkpoint, String>> {
    if !line.starts_with(CHECKPOINT_HEAD.as_bytes()) {
        return None;
    }
    Some(parse_checkpoint_inner(line))
}

fn parse_checkpoint_inner(line: &[u8]) -> Result<Checkpoint, String> {
    let v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let msg = v["node_status"]["message"].as_str().unwrap_or_default();
    let node = v["node_name"].as_str().unwrap_or_default().to_string();
    let time = v["time"].as_str().unwrap_or_default().to_string();
    let field = |name: &str| {
        msg.split(' ')
            .find_map(|w| w.strip_prefix(name).and_then(|w| w.strip_prefix('=')))
            .ok_or_else(|| format!("no {name}= in {msg:?}"))
    };
    let seq: u64 = field("seq")?.parse().map_err(|e| format!("seq: {e}"))?;
    let hash = unhex::<32>(field("hash")?).ok_or("hash: not 64 hex digits")?;
    let key = unhex::<32>(field("key")?).ok_or("key: not 64 hex digits")?;
    let sig = unhex::<64>(field("sig")?).ok_or("sig: not 128 hex digits")?;
    let signed = VerifyingKey::from_bytes(&key)
        .map(|vk| {
            vk.verify_strict(
                &checkpoint_message(&node, &time, seq, &hash),
                &Signature::from_bytes(&sig),
            )
            .is_ok()
        })
        .unwrap_or(false);
    let content = checkpoint_content(&node, &time).into_bytes();
    Ok(Checkpoint {
        seq,
        hash,
        key,
        signed,
        node,
        time,
        content,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    const LINE: &str = r#"{"flow":{"extensions":{"@type":"type.googleapis.com/google.protobuf.Struct","value":{"kind":"new_flow","rule_id":1}},"verdict":"FORWARDED"},"node_name":"n","time":"t"}"#;

    #[test]
    fn decimal_is_to_string() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            12_345,
            1 << 40,
            u64::MAX - 1,
            u64::MAX,
        ] {
            assert_eq!(decimal(n, &mut [0; 20]), n.to_string().as_bytes(), "{n}");
        }
    }

    #[test]
    fn sealed_lines_split_back_and_check() {
        let mut w = Chain::genesis();
        let a = w.seal(LINE);
        w.absorb(b"{\"lost_events\":{}}");
        let b = w.seal(LINE);
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        assert_eq!(v["flow"]["extensions"]["value"]["chain"]["seq"], 1);
        assert_eq!(v["flow"]["extensions"]["value"]["kind"], "new_flow");

        let mut r = Chain::genesis();
        let ra = split_record(a.as_bytes()).unwrap();
        assert_eq!(ra.content, LINE.as_bytes());
        assert!(r.check(&ra.content, ra.seq, &ra.hash));
        let rb = split_record(b.as_bytes()).unwrap();
        let mut skipped = r.clone();
        assert!(
            !skipped.check(&rb.content, rb.seq, &rb.hash),
            "the lost line is covered"
        );
        r.absorb(b"{\"lost_events\":{}}");
        assert!(r.check(&rb.content, rb.seq, &rb.hash));
        assert_eq!((r.seq(), r.last()), (w.seq(), w.last()));
        assert!(split_record(LINE.as_bytes()).is_none());
    }

    #[test]
    fn checkpoints_verify_and_forgeries_do_not() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut c = Chain::genesis();
        c.seal(LINE);
        let mut r = c.clone();
        let line = c.checkpoint(&key, "node-a", "2026-01-01T00:00:00Z");
        let cp = parse_checkpoint(line.as_bytes()).unwrap().unwrap();
        assert!(cp.signed);
        assert_eq!((cp.seq, cp.hash), (2, c.last()));
        assert!(
            r.check(&cp.content, cp.seq, &cp.hash),
            "a checkpoint is a record"
        );
        let forged = line.replace("seq=2", "seq=3");
        assert!(!parse_checkpoint(forged.as_bytes()).unwrap().unwrap().signed);
        assert!(parse_checkpoint(LINE.as_bytes()).is_none());
    }
}

//! `palisade observe --verify`: walks a log's files oldest first and checks the hash chain
//! and the checkpoints ([`crate::chain`]), naming the first record that does not hold.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::chain::{self, Chain, Hash};

/// Where a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: PathBuf,
    /// 1-based line number in `file`.
    pub line: u64,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The log does not begin with a checkpoint (nor at record 1): its beginning is gone.
    NoStart { at: Place },
    /// Record `seq`'s hash does not match its content and what came before it.
    Modified { at: Place, seq: u64 },
    /// Records `expected..found` are missing.
    Missing {
        at: Place,
        expected: u64,
        found: u64,
    },
    /// A record numbered at or below one already seen: inserted or moved.
    OutOfOrder { at: Place, seq: u64, after: u64 },
    /// A checkpoint that does not read, is not signed by its key, is signed by another key
    /// than the one expected, or states another chain than the records.
    BadCheckpoint { at: Place, why: String },
    /// The last line has no newline: the tail was cut.
    TruncatedLine { at: Place },
    /// The log ends before the record an anchor names, or holds another hash there.
    AnchorMissed { seq: u64, last: u64, why: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NoStart { at } => write!(
                f,
                "{at}: the log does not start with a checkpoint or record 1: its beginning was removed"
            ),
            Problem::Modified { at, seq } => write!(
                f,
                "{at}: record {seq}: hash mismatch: this record, or a line between it and record {}, was modified, inserted or removed",
                seq.saturating_sub(1)
            ),
            Problem::Missing {
                at,
                expected,
                found,
            } => write!(
                f,
                "{at}: record {found} follows record {}: record {expected}{} removed (or moved)",
                expected - 1,
                if found - expected > 1 {
                    format!("..{} were", found - 1)
                } else {
                    " was".to_string()
                }
            ),
            Problem::OutOfOrder { at, seq, after } => write!(
                f,
                "{at}: record {seq} after record {after}: a record was inserted or records were reordered"
            ),
            Problem::BadCheckpoint { at, why } => write!(f, "{at}: checkpoint: {why}"),
            Problem::TruncatedLine { at } => {
                write!(
                    f,
                    "{at}: the last line is incomplete: the log was truncated"
                )
            }
            Problem::AnchorMissed { seq, last, why } => {
                write!(
                    f,
                    "anchor record {seq}: {why} (the log ends at record {last})"
                )
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The node's public key: every checkpoint must be signed by it.
    pub key: Option<[u8; 32]>,
    /// A record number and hash known from elsewhere (`palisade-enforcer status`): the log
    /// must reach it with that hash (detects a tail cut at a record boundary).
    pub anchor: Option<(u64, Hash)>,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub files: usize,
    pub lines: u64,
    pub records: u64,
    pub checkpoints: u64,
    /// The first record checked (1 when the log starts at the chain's beginning).
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_hash: Hash,
    /// Records after the last checkpoint (not yet signed).
    pub unsigned_tail: u64,
    /// Distinct checkpoint keys, in order of appearance (hex).
    pub keys: Vec<String>,
    /// The first problem; `None`: the log verifies.
    pub problem: Option<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// Verifies the files (oldest first) of one log.
pub fn verify(files: &[PathBuf], opts: &Options) -> std::io::Result<Report> {
    let mut v = Verifier {
        chain: None,
        opts,
        report: Report::default(),
        since_checkpoint: 0,
        anchor_seen: false,
    };
    v.report.files = files.len();
    'files: for (i, file) in files.iter().enumerate() {
        let data = std::fs::read(file)?;
        let mut line_no = 0u64;
        let mut rest: &[u8] = &data;
        while !rest.is_empty() {
            line_no += 1;
            let (line, complete) = match memchr::memchr(b'\n', rest) {
                Some(n) => (&rest[..n], true),
                None => (rest, false),
            };
            rest = &rest[(line.len() + usize::from(complete)).min(rest.len())..];
            let at = || Place {
                file: file.clone(),
                line: line_no,
            };
            if !complete && i + 1 == files.len() {
                v.report.problem = Some(Problem::TruncatedLine { at: at() });
                break 'files;
            }
            v.report.lines += 1;
            if let Err(p) = v.line(line, at) {
                v.report.problem = Some(p);
                break 'files;
            }
        }
    }
    if v.report.problem.is_none()
        && let Some((seq, hash)) = opts.anchor
        && !v.anchor_seen
    {
        let last = v.report.last_seq;
        v.report.problem = Some(Problem::AnchorMissed {
            seq,
            last,
            why: if last < seq {
                "not in the log: its tail was removed".into()
            } else {
                format!("hash {} not found", chain::hex(&hash))
            },
        });
    }
    v.report.unsigned_tail = v.since_checkpoint;
    Ok(v.report)
}

struct Verifier<'a> {
    /// `None` until the start is known (genesis, or the first checkpoint).
    chain: Option<Chain>,
    opts: &'a Options,
    report: Report,
    since_checkpoint: u64,
    anchor_seen: bool,
}

impl Verifier<'_> {
    fn line(&mut self, line: &[u8], at: impl Fn() -> Place) -> Result<(), Problem> {
        if let Some(cp) = chain::parse_checkpoint(line) {
            let cp = cp.map_err(|why| Problem::BadCheckpoint { at: at(), why })?;
            if !cp.signed {
                return Err(Problem::BadCheckpoint {
                    at: at(),
                    why: format!(
                        "the signature does not verify with its key {}",
                        chain::hex(&cp.key)
                    ),
                });
            }
            if let Some(k) = self.opts.key
                && k != cp.key
            {
                return Err(Problem::BadCheckpoint {
                    at: at(),
                    why: format!(
                        "signed by {}, not by the node's key {}",
                        chain::hex(&cp.key),
                        chain::hex(&k)
                    ),
                });
            }
            let key = chain::hex(&cp.key);
            if !self.report.keys.contains(&key) {
                self.report.keys.push(key);
            }
            self.report.checkpoints += 1;
            if self.chain.is_none() && cp.seq > 1 {
                // The start of what is left of the log (older files rotated away): the
                // checkpoint's hash is signed, so the chain is known from here.
                self.chain = Some(Chain::resume(cp.seq, cp.hash));
                self.report.first_seq = cp.seq;
                self.report.last_seq = cp.seq;
                self.report.last_hash = cp.hash;
                self.since_checkpoint = 0;
                return Ok(());
            }
            self.record(cp.seq, &cp.hash, &cp.content, at)?;
            self.since_checkpoint = 0;
            return Ok(());
        }
        let Some(rec) = chain::split_record(line) else {
            match &mut self.chain {
                Some(c) => c.absorb(line),
                None => return Err(Problem::NoStart { at: at() }),
            }
            return Ok(());
        };
        self.record(rec.seq, &rec.hash, &rec.content, at)?;
        self.since_checkpoint += 1;
        Ok(())
    }

    fn record(
        &mut self,
        seq: u64,
        hash: &Hash,
        content: &[u8],
        at: impl Fn() -> Place,
    ) -> Result<(), Problem> {
        let rec = chain::Record {
            seq,
            hash: *hash,
            content: Vec::new(),
        };
        let c = match &mut self.chain {
            Some(c) => c,
            None if rec.seq == 1 => {
                self.report.first_seq = 1;
                self.chain.insert(Chain::genesis())
            }
            None => return Err(Problem::NoStart { at: at() }),
        };
        let expected = c.seq() + 1;
        if rec.seq < expected {
            return Err(Problem::OutOfOrder {
                at: at(),
                seq: rec.seq,
                after: c.seq(),
            });
        }
        if rec.seq > expected {
            return Err(Problem::Missing {
                at: at(),
                expected,
                found: rec.seq,
            });
        }
        if !c.check(content, rec.seq, &rec.hash) {
            return Err(Problem::Modified {
                at: at(),
                seq: rec.seq,
            });
        }
        self.report.records += 1;
        self.report.last_seq = rec.seq;
        self.report.last_hash = rec.hash;
        if let Some((seq, hash)) = self.opts.anchor
            && seq == rec.seq
        {
            if hash != rec.hash {
                return Err(Problem::AnchorMissed {
                    seq,
                    last: rec.seq,
                    why: format!(
                        "the log's record {seq} has hash {}, the anchor {}",
                        chain::hex(&rec.hash),
                        chain::hex(&hash)
                    ),
                });
            }
            self.anchor_seen = true;
        }
        Ok(())
    }
}

/// Reads `seq:hash` (as `palisade-enforcer status` prints the last checkpoint).
pub fn parse_anchor(s: &str) -> Option<(u64, Hash)> {
    let (seq, hash) = s.split_once(':')?;
    Some((seq.parse().ok()?, chain::unhex::<32>(hash)?))
}

/// The log's files for `path` (with rotations) verified with `opts`.
pub fn verify_log(path: &Path, opts: &Options) -> std::io::Result<Report> {
    verify(&crate::files::log_files(path), opts)
}

//! The verdict log: one JSON line per datapath verdict event, each a Hubble jsonpb
//! `GetFlowsResponse` (`{"flow":{…},"node_name":…,"time":…}`), so tools that read
//! `hubble observe -o jsonpb` output read this file.
//!
//! Rendering is pure ([`render_flow`]: event + [`FlowResolver`] + node name + time + id ->
//! JSON) so it is tested without root or a kernel. The resolver supplies what the kernel
//! does not know: which pod and labels an identity stands for, which policy rule a rule id
//! is, and — for a default-deny drop, which carries no rule — the policies that isolated the
//! endpoint. Engine-specific details go under `flow.extensions`.
//!
//! Notes on the mapping:
//! * 64-bit counters (`revision`, `num_events_lost`) are written as JSON strings, as
//!   protojson (and so `hubble observe -o jsonpb`) writes them.
//! * `flow.extensions` is a `google.protobuf.Struct` in an `Any` (`{"@type": …, "value":
//!   {…}}`): hubble resolves only types it knows, and rejects the whole line otherwise.
//! * A policy denial is two lines, as in Cilium: a policy-verdict event and a drop event.
//! * For ICMP the datapath stores the ICMP type in the event's `tcp_flags` byte
//!   (`ebpf/lib/events.h`); the code is not carried, so `code` is left out (protojson
//!   omits zero values, so an echo request reads exactly as Hubble prints it).
//!
//! [`RotatingWriter`] appends the lines to a size-rotated file and [`FlowLogger`] ties
//! rendering, the boot-time clock, flow ids and loss accounting together: every event the
//! datapath or the writer lost is reported as a Hubble `lost_events` line.
//!
//! HTTP requests the proxy judged are L7 records ([`l7`]): one line per request.
//!
//! Rooms: [`resolve`] (identities and rules to names), [`render`] (pure JSON), [`l7`] (the
//! L7 records), [`clock`] (times and flow ids), [`rotate`] (the file); this module ties them
//! into [`FlowLogger`].

use std::path::PathBuf;

use ed25519_dalek::SigningKey;
use palisade_observe::chain::{self, Chain, Hash};
use policy_compiler::abi::VerdictEvent;

mod clock;
mod key;
mod l7;
mod render;
mod resolve;
mod rotate;

pub use key::{KeyError, load_or_generate};

pub use clock::{BootClock, FlowIds, WallTime};
pub use l7::{L7AuditRefusal, L7Event, L7Memo, L7Side, render_l7_flow, render_l7_line};
pub use render::{
    EVENT_TYPE_DROP, EVENT_TYPE_L7, EVENT_TYPE_POLICY_VERDICT, EXTENSIONS_TYPE, LostSource,
    MATCH_ALL, MATCH_L3_L4, MATCH_L3_ONLY, MATCH_L4_ONLY, MATCH_NONE, POLICY_KIND,
    is_policy_denial, kind_name, render_flow, render_flows, render_line, render_lines,
    render_lost_line, rule_text, verdict_name,
};
pub use resolve::{EngineResolver, FlowEndpoint, FlowResolver, ServiceFrontend};
pub use rotate::RotatingWriter;

#[derive(Debug, thiserror::Error)]
pub enum FlowLogError {
    #[error("{}: cannot create the log directory: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot open: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot rotate to {}: {source}", from.display(), to.display())]
    Rotate {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot read to continue the hash chain: {source}", path.display())]
    Resume {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot read the {clock} clock: {source}")]
    Clock {
        clock: &'static str,
        #[source]
        source: nix::Error,
    },
}

/// The verdict log as the enforcer uses it: renders events, assigns ids and times,
/// accounts for every lost event, and chains every line ([`palisade_observe::chain`]):
/// flow lines are records, loss lines are covered by the next record, and checkpoints
/// signed with the node's key are written at start, at the head of every rotated-in file,
/// when [`FlowLogger::checkpoint`] is called (periodically and at shutdown).
pub struct FlowLogger {
    writer: RotatingWriter,
    node_name: String,
    clock: BootClock,
    ids: FlowIds,
    /// The datapath's lost-events counter as last reported.
    ring_lost_seen: u64,
    /// Events this process failed to write, not yet reported.
    writer_lost_pending: u64,
    /// The chain as of the last line written.
    chain: Chain,
    key: Option<SigningKey>,
    /// Records since the last checkpoint.
    unsigned: u64,
    /// The last checkpoint written: its record number and hash.
    last_checkpoint: Option<(u64, Hash)>,
}

impl std::fmt::Debug for FlowLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowLogger")
            .field("writer", &self.writer)
            .field("node_name", &self.node_name)
            .field("seq", &self.chain.seq())
            .field("last_checkpoint", &self.last_checkpoint)
            .finish_non_exhaustive()
    }
}

impl FlowLogger {
    /// A logger appending to `writer`'s log. The chain continues from the last record in
    /// the existing files (lines after it are covered by the next record); a log without
    /// records starts a new chain. A last line a crash cut short (no newline) is removed
    /// and counted as one lost event (reported as an `OBSERVER_EVENTS_QUEUE` loss line with
    /// the next write), so the file stays whole lines of one chain. Without a key
    /// ([`FlowLogger::with_key`]) no checkpoints are written.
    pub fn new(
        mut writer: RotatingWriter,
        node_name: &str,
        clock: BootClock,
    ) -> Result<FlowLogger, FlowLogError> {
        let (chain, cut) = resume_chain(&writer.files())?;
        if let Some(len) = cut {
            writer.truncate_to(len)?;
        }
        Ok(FlowLogger {
            writer,
            node_name: node_name.to_string(),
            clock,
            ids: FlowIds::new(),
            ring_lost_seen: 0,
            writer_lost_pending: u64::from(cut.is_some()),
            chain,
            key: None,
            unsigned: 0,
            last_checkpoint: None,
        })
    }

    /// Signs checkpoints with `key`.
    pub fn with_key(mut self, key: SigningKey) -> FlowLogger {
        self.key = Some(key);
        self
    }

    /// The public key checkpoints are signed with (hex).
    pub fn public_key(&self) -> Option<String> {
        self.key
            .as_ref()
            .map(|k| chain::hex(k.verifying_key().as_bytes()))
    }

    /// The last checkpoint as `seq:hash` (what `palisade observe --verify --anchor` takes).
    pub fn last_checkpoint(&self) -> Option<String> {
        self.last_checkpoint
            .map(|(seq, h)| format!("{seq}:{}", chain::hex(&h)))
    }

    /// The chain's last record number.
    pub fn seq(&self) -> u64 {
        self.chain.seq()
    }

    /// Records written since the last checkpoint.
    pub fn unsigned(&self) -> u64 {
        self.unsigned
    }

    /// Writes a signed checkpoint (nothing without a key).
    pub fn checkpoint(&mut self) -> Result<(), FlowLogError> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        let mut next = self.chain.clone();
        let line = next.checkpoint(key, &self.node_name, &WallTime::now().rfc3339());
        self.writer.write_line(&line)?;
        self.chain = next;
        self.unsigned = 0;
        self.last_checkpoint = Some((self.chain.seq(), self.chain.last()));
        Ok(())
    }

    /// Writes one line: a flow line is sealed as a record, any other line is covered by
    /// the next record. Before a line that would rotate the file, rotates and starts the
    /// new file with a checkpoint (so a verifier can start there when older files are
    /// gone). The chain advances only for a line the writer accepted.
    fn put(&mut self, mut line: String, record: bool) -> Result<(), FlowLogError> {
        // The chain member adds under 100 bytes.
        if self.writer.would_rotate(line.len() as u64 + 101) {
            self.writer.rotate()?;
            self.checkpoint()?;
        }
        let mut next = self.chain.clone();
        if record {
            next.seal_in_place(&mut line);
        } else {
            next.absorb(line.as_bytes());
        }
        self.writer.write_line(&line)?;
        self.chain = next;
        if record {
            self.unsigned += 1;
        }
        Ok(())
    }

    pub fn with_ids(mut self, ids: FlowIds) -> FlowLogger {
        self.ids = ids;
        self
    }

    pub fn writer(&self) -> &RotatingWriter {
        &self.writer
    }

    pub fn clock_mut(&mut self) -> &mut BootClock {
        &mut self.clock
    }

    /// Writes one event. A failed write is counted and reported as a `lost_events` line
    /// once writing works again.
    pub fn log(
        &mut self,
        ev: &VerdictEvent,
        resolver: &dyn FlowResolver,
    ) -> Result<(), FlowLogError> {
        for line in self.render(ev, resolver) {
            self.write(line)?;
        }
        Ok(())
    }

    /// The lines of one event (two for a policy denial: policy verdict and drop), with
    /// flow ids and time; [`FlowLogger::write`] writes them. Apart so the caller can render
    /// under a lock the resolver needs and write after releasing it.
    pub fn render(&mut self, ev: &VerdictEvent, resolver: &dyn FlowResolver) -> Vec<String> {
        let ids = &mut self.ids;
        render_lines(
            ev,
            resolver,
            &self.node_name,
            self.clock.to_wall(ev.time_ns),
            &mut || ids.next_id(),
        )
    }

    /// Writes the L7 record of one HTTP request the proxy judged (time: now).
    pub fn log_l7(
        &mut self,
        ev: &L7Event,
        resolver: &dyn FlowResolver,
    ) -> Result<(), FlowLogError> {
        let uuid = self.ids.next_id();
        let line = render_l7_line(ev, resolver, &self.node_name, WallTime::now(), &uuid);
        self.write(line)
    }

    /// Renders an L7 record (with its uuid) without writing it.
    pub fn render_l7(&mut self, ev: &L7Event, resolver: &dyn FlowResolver) -> String {
        let uuid = self.ids.next_id();
        render_l7_line(ev, resolver, &self.node_name, WallTime::now(), &uuid)
    }

    /// [`FlowLogger::render_l7`] for one of a batch rendered with the same resolver, whose
    /// endpoints and rules `memo` keeps between records.
    pub fn render_l7_memo(
        &mut self,
        ev: &L7Event,
        resolver: &dyn FlowResolver,
        memo: &mut L7Memo,
    ) -> String {
        let uuid = self.ids.next_id();
        l7::render_l7_line_memo(ev, resolver, memo, &self.node_name, WallTime::now(), &uuid)
    }

    /// Writes one rendered line; a failed write is counted as [`FlowLogger::log`] does.
    pub fn write(&mut self, line: String) -> Result<(), FlowLogError> {
        self.report_writer_losses()?;
        self.put(line, true).inspect_err(|_| {
            self.writer_lost_pending += 1;
        })
    }

    /// Takes the datapath's cumulative lost-events count (summed over CPUs) and writes a
    /// `lost_events` line with the growth since the last call. Returns the growth.
    pub fn observe_ring_lost(&mut self, total: u64) -> Result<u64, FlowLogError> {
        // A counter that went backwards was reset (datapath reloaded): count from there.
        let delta = if total >= self.ring_lost_seen {
            total - self.ring_lost_seen
        } else {
            total
        };
        if delta == 0 {
            return Ok(0);
        }
        let line = render_lost_line(
            LostSource::RingBuffer,
            delta,
            &self.node_name,
            WallTime::now(),
        );
        self.put(line, false)?;
        self.ring_lost_seen = total;
        Ok(delta)
    }

    pub fn flush(&mut self) -> Result<(), FlowLogError> {
        self.writer.flush()
    }

    /// Records that never reached the writer (the L7 proxy's queue to it was full): written
    /// at once as a `lost_events` line of source `OBSERVER_EVENTS_QUEUE`, so the log says
    /// how many records it does not hold.
    pub fn note_lost(&mut self, n: u64) -> Result<(), FlowLogError> {
        self.writer_lost_pending += n;
        self.report_writer_losses()
    }

    fn report_writer_losses(&mut self) -> Result<(), FlowLogError> {
        if self.writer_lost_pending == 0 {
            return Ok(());
        }
        let line = render_lost_line(
            LostSource::Writer,
            self.writer_lost_pending,
            &self.node_name,
            WallTime::now(),
        );
        self.put(line, false)?;
        self.writer_lost_pending = 0;
        Ok(())
    }
}

/// The chain as of the end of `files` (oldest first): from the last record, with every
/// complete line after it absorbed. Files are read newest first, only as far back as the
/// last record. Also returns the length of the last file without a last line that a crash
/// cut short (no newline), when there is one.
fn resume_chain(files: &[PathBuf]) -> Result<(Chain, Option<u64>), FlowLogError> {
    let lines_of = |d: &[u8]| -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut start = 0;
        while start < d.len() {
            let end = memchr_nl(&d[start..]).map_or(d.len(), |n| start + n);
            out.push((start, end));
            start = end + 1;
        }
        out
    };
    let mut cut = None;
    // Files newer than the one being scanned, newest first.
    let mut later: Vec<Vec<u8>> = Vec::new();
    for (i, f) in files.iter().enumerate().rev() {
        let mut d = std::fs::read(f).map_err(|source| FlowLogError::Resume {
            path: f.clone(),
            source,
        })?;
        if i + 1 == files.len() && !d.is_empty() && !d.ends_with(b"\n") {
            let keep = d.iter().rposition(|&b| b == b'\n').map_or(0, |n| n + 1);
            d.truncate(keep);
            cut = Some(keep as u64);
        }
        let lines = lines_of(&d);
        for (li, &(s, e)) in lines.iter().enumerate().rev() {
            let line = &d[s..e];
            let found = chain::split_record(line)
                .map(|r| (r.seq, r.hash))
                .or_else(|| {
                    chain::parse_checkpoint(line)
                        .and_then(Result::ok)
                        .map(|c| (c.seq, c.hash))
                });
            if let Some((seq, hash)) = found {
                let mut c = Chain::resume(seq, hash);
                for &(s, e) in &lines[li + 1..] {
                    c.absorb(&d[s..e]);
                }
                for newer in later.iter().rev() {
                    for (s, e) in lines_of(newer) {
                        c.absorb(&newer[s..e]);
                    }
                }
                return Ok((c, cut));
            }
        }
        later.push(d);
    }
    Ok((Chain::genesis(), cut))
}

fn memchr_nl(d: &[u8]) -> Option<usize> {
    d.iter().position(|&b| b == b'\n')
}

#[cfg(test)]
mod chain_tests;
#[cfg(test)]
mod tests;

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
//! Rooms: [`resolve`] (identities and rules to names), [`render`] (pure JSON), [`clock`]
//! (times and flow ids), [`rotate`] (the file); this module ties them into [`FlowLogger`].

use std::path::PathBuf;

use policy_compiler::abi::VerdictEvent;

mod clock;
mod render;
mod resolve;
mod rotate;

pub use clock::{BootClock, FlowIds, WallTime};
pub use render::{
    EVENT_TYPE_DROP, EVENT_TYPE_POLICY_VERDICT, EXTENSIONS_TYPE, LostSource, MATCH_ALL,
    MATCH_L3_L4, MATCH_L3_ONLY, MATCH_L4_ONLY, MATCH_NONE, POLICY_KIND, is_policy_denial,
    kind_name, render_flow, render_flows, render_line, render_lines, render_lost_line, rule_text,
    verdict_name,
};
pub use resolve::{EngineResolver, FlowEndpoint, FlowResolver};
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
    #[error("cannot read the {clock} clock: {source}")]
    Clock {
        clock: &'static str,
        #[source]
        source: nix::Error,
    },
}

/// The verdict log as the enforcer uses it: renders events, assigns ids and times, and
/// accounts for every lost event.
#[derive(Debug)]
pub struct FlowLogger {
    writer: RotatingWriter,
    node_name: String,
    clock: BootClock,
    ids: FlowIds,
    /// The datapath's lost-events counter as last reported.
    ring_lost_seen: u64,
    /// Events this process failed to write, not yet reported.
    writer_lost_pending: u64,
}

impl FlowLogger {
    pub fn new(writer: RotatingWriter, node_name: &str, clock: BootClock) -> FlowLogger {
        FlowLogger {
            writer,
            node_name: node_name.to_string(),
            clock,
            ids: FlowIds::new(),
            ring_lost_seen: 0,
            writer_lost_pending: 0,
        }
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
            self.write(&line)?;
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

    /// Writes one rendered line; a failed write is counted as [`FlowLogger::log`] does.
    pub fn write(&mut self, line: &str) -> Result<(), FlowLogError> {
        self.report_writer_losses()?;
        self.writer.write_line(line).inspect_err(|_| {
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
        self.writer.write_line(&line)?;
        self.ring_lost_seen = total;
        Ok(delta)
    }

    pub fn flush(&mut self) -> Result<(), FlowLogError> {
        self.writer.flush()
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
        self.writer.write_line(&line)?;
        self.writer_lost_pending = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests;

//! `palisade observe`: hubble's `observe` over Palisade's verdict log files, plus what
//! auditors need (policy and rule queries, time windows over rotated files, summaries and
//! flow graphs, chain verification). See docs/observe.md.

use std::collections::VecDeque;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use palisade_observe::chain::{self, CHECKPOINT_HEAD};
use palisade_observe::files;
use palisade_observe::output::{self, Format};
use palisade_observe::query::{self, Filter, PodSpec, PolicySpec, Query, Side};
use palisade_observe::schema::Line;
use palisade_observe::summary::Summary;
use palisade_observe::time;
use palisade_observe::verify;

const DEFAULT_LOG: &str = "/var/log/palisade/verdicts.jsonl";

const EXAMPLES: &str = "\
Reading the log:
  Every line of the verdict log is a Hubble GetFlowsResponse. A policy denial is two lines
  (a policy-verdict event, then the drop event), as in Cilium; connection closes are
  logged too (SUMMARY ends in \"(connection closed)\"). Rotated files (verdicts.jsonl.1,
  .2, ...) are read too, oldest first, unless --no-rotated.

Filters (hubble's): values of one flag are alternatives, different flags must all hold.

Examples:
  palisade observe                                   # the whole node log, compact
  palisade observe --verdict DROPPED --to-namespace shop
  palisade observe --policy shop/default-deny --type drop
                                                     # everything shop/default-deny denied
  palisade observe --rule 'shop/backend:ingress:0'   # every flow that rule allowed
  palisade observe --since 1h --protocol udp -o table
  palisade observe --from-pod default/client --print-policy-names
  palisade observe --follow --verdict DROPPED        # a live agent's denials as they happen
  palisade observe --summary                         # top talkers, top denied, policy hits
  palisade observe --summary -o svg > flows.svg      # the flow graph (needs Graphviz `dot`)
  palisade observe --verify --key <hex from `palisade-enforcer status`>
  palisade observe --input-file /tmp/copy.jsonl --no-rotated -o jsonpb | hubble observe --input-file /dev/stdin --all

Exit status: 0 done (also when nothing matched), 1 a file could not be read or --verify
found a problem, 2 a usage error.";

#[derive(Debug, Parser)]
#[command(
    name = "palisade observe",
    about = "Query, summarize and verify Palisade verdict logs (hubble observe's flags and formats)",
    after_long_help = EXAMPLES,
    after_help = "Run with --help for examples."
)]
struct Args {
    /// Verdict log files (each with its rotations). Default /var/log/palisade/verdicts.jsonl.
    #[arg(value_name = "FILE")]
    files: Vec<PathBuf>,
    /// A log file, as hubble names it (repeatable; same as a FILE argument).
    #[arg(long = "input-file", value_name = "FILE")]
    input_file: Vec<PathBuf>,
    /// Read only the files named, not their rotations.
    #[arg(long)]
    no_rotated: bool,

    /// Output: compact, dict, table, json, jsonpb (the line as logged); with --summary:
    /// text (default), json, dot, svg.
    #[arg(short = 'o', long = "output", value_name = "FORMAT")]
    output: Option<String>,
    /// Every matching flow (the default; accepted for hubble compatibility).
    #[arg(long)]
    all: bool,
    /// Only the first N matching flows.
    #[arg(long, value_name = "N", conflicts_with = "last")]
    first: Option<usize>,
    /// Only the last N matching flows.
    #[arg(long, value_name = "N")]
    last: Option<usize>,
    /// After the existing lines, keep printing new ones as the agent writes them
    /// (follows rotation). Ends on Ctrl-C.
    #[arg(short = 'f', long)]
    follow: bool,
    /// In compact output, name the policies that allowed or denied each flow.
    #[arg(long)]
    print_policy_names: bool,
    /// In compact output, show the node name.
    #[arg(long)]
    print_node_name: bool,

    /// FORWARDED, DROPPED, AUDIT, REDIRECTED.
    #[arg(long, value_name = "VERDICT")]
    verdict: Vec<String>,
    /// Event type: drop, policy-verdict (l7 is accepted: no L7 events are logged yet).
    #[arg(short = 't', long = "type", value_name = "TYPE")]
    r#type: Vec<String>,
    /// Flows from or to this pod ([namespace/]name; a name prefix, as hubble).
    #[arg(long, value_name = "POD")]
    pod: Vec<String>,
    #[arg(long, value_name = "POD")]
    from_pod: Vec<String>,
    #[arg(long, value_name = "POD")]
    to_pod: Vec<String>,
    /// Flows from or to this namespace.
    #[arg(short = 'n', long, value_name = "NS")]
    namespace: Vec<String>,
    #[arg(long, value_name = "NS")]
    from_namespace: Vec<String>,
    #[arg(long, value_name = "NS")]
    to_namespace: Vec<String>,
    /// Flows from or to this address.
    #[arg(long, value_name = "IP")]
    ip: Vec<String>,
    #[arg(long, value_name = "IP")]
    from_ip: Vec<String>,
    #[arg(long, value_name = "IP")]
    to_ip: Vec<String>,
    /// Flows from or to this port.
    #[arg(long, value_name = "PORT")]
    port: Vec<u16>,
    #[arg(long, value_name = "PORT")]
    from_port: Vec<u16>,
    #[arg(long, value_name = "PORT")]
    to_port: Vec<u16>,
    /// tcp, udp, sctp, icmp, icmpv4, icmpv6.
    #[arg(long, value_name = "PROTO")]
    protocol: Vec<String>,
    /// A label of the source or destination: `app=web`, `k8s:app=web`, or a key.
    #[arg(short = 'l', long = "label", value_name = "LABEL")]
    label: Vec<String>,
    #[arg(long, value_name = "LABEL")]
    from_label: Vec<String>,
    #[arg(long, value_name = "LABEL")]
    to_label: Vec<String>,
    /// Drop reason name, e.g. POLICY_DENIED, POLICY_DENY.
    #[arg(long, value_name = "REASON")]
    drop_reason_desc: Vec<String>,
    /// ingress or egress (the hook that decided).
    #[arg(long, value_name = "DIR")]
    traffic_direction: Vec<String>,
    #[arg(long, value_name = "NODE")]
    node_name: Vec<String>,
    #[arg(long, value_name = "UUID")]
    uuid: Vec<String>,

    /// Flows a policy decided (allowed, denied, isolated by it): `ns/name`, `Kind ns/name`
    /// or `Kind name` (cluster scope).
    #[arg(long, value_name = "POLICY")]
    policy: Vec<String>,
    /// Flows one rule decided: `ns/policy:ingress:0` or `ns/policy ingress rule #0`.
    #[arg(long, value_name = "RULE")]
    rule: Vec<String>,
    /// Flows a rule of this tier decided: `admin` (AdminNetworkPolicy, ClusterNetworkPolicy
    /// tier Admin), `networkpolicy`, `baseline` (BaselineAdminNetworkPolicy,
    /// ClusterNetworkPolicy tier Baseline).
    #[arg(long, value_name = "TIER", value_parser = ["admin", "networkpolicy", "baseline"])]
    tier: Vec<String>,
    /// From this time: RFC 3339 (`2026-12-04T10:00:00Z`) or a duration ago (`30s`, `5m`,
    /// `2h`, `1d`).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Up to this time (same forms).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,

    /// Instead of flows: decisions by verdict, top talkers, top denied pairs and policy hit
    /// counts over the matching flows (-o json, dot, svg for other forms).
    #[arg(long, conflicts_with_all = ["follow", "verify"])]
    summary: bool,
    /// Rows in each --summary top list.
    #[arg(long, value_name = "N", default_value_t = 10)]
    top: usize,
    /// Check the log's hash chain and signed checkpoints; names the first bad record.
    #[arg(long, conflicts_with = "follow")]
    verify: bool,
    /// With --verify: the node's public key (hex, from `palisade-enforcer status`); every
    /// checkpoint must be signed by it.
    #[arg(long, value_name = "HEX", requires = "verify")]
    key: Option<String>,
    /// With --verify: `seq:hash` of a checkpoint known from elsewhere (status); the log
    /// must reach it (finds a tail cut at a line boundary).
    #[arg(long, value_name = "SEQ:HASH", requires = "verify")]
    anchor: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

fn usage(s: impl Into<String>) -> anyhow::Error {
    Usage(s.into()).into()
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<Usage>().is_some() => {
            eprintln!("error: {e:#}\n\nRun `palisade observe --help` for the flags and examples.");
            ExitCode::from(2)
        }
        Err(e) => {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::BrokenPipe
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn map<T>(r: Result<T, query::QueryError>) -> anyhow::Result<T> {
    r.map_err(|e| usage(e.to_string()))
}

fn build_query(a: &Args) -> anyhow::Result<Query> {
    let mut q = Query::default();
    if !a.verdict.is_empty() {
        q.filters.push(Filter::Verdict(
            a.verdict
                .iter()
                .map(|v| map(query::verdict(v)))
                .collect::<Result<_, _>>()?,
        ));
    }
    if !a.r#type.is_empty() {
        q.filters.push(Filter::Type(
            a.r#type
                .iter()
                .map(|t| map(query::event_type(t)))
                .collect::<Result<_, _>>()?,
        ));
    }
    for (flag, side, vals) in [
        ("pod", Side::Either, &a.pod),
        ("from-pod", Side::From, &a.from_pod),
        ("to-pod", Side::To, &a.to_pod),
    ] {
        if !vals.is_empty() {
            let pods: Vec<PodSpec> = vals
                .iter()
                .map(|p| map(query::pod_spec(flag, p)))
                .collect::<Result<_, _>>()?;
            q.filters.push(Filter::Pod(side, pods));
        }
    }
    for (side, vals) in [
        (Side::Either, &a.namespace),
        (Side::From, &a.from_namespace),
        (Side::To, &a.to_namespace),
    ] {
        if !vals.is_empty() {
            q.filters.push(Filter::Namespace(side, vals.clone()));
        }
    }
    for (side, vals) in [
        (Side::Either, &a.ip),
        (Side::From, &a.from_ip),
        (Side::To, &a.to_ip),
    ] {
        if !vals.is_empty() {
            for ip in vals {
                ip.parse::<std::net::IpAddr>()
                    .map_err(|_| usage(format!("--ip {ip:?}: not an IP address")))?;
            }
            q.filters.push(Filter::Ip(side, vals.clone()));
        }
    }
    for (side, vals) in [
        (Side::Either, &a.port),
        (Side::From, &a.from_port),
        (Side::To, &a.to_port),
    ] {
        if !vals.is_empty() {
            q.filters.push(Filter::Port(side, vals.clone()));
        }
    }
    if !a.protocol.is_empty() {
        q.filters.push(Filter::Protocol(
            a.protocol
                .iter()
                .map(|p| map(query::protocol(p)))
                .collect::<Result<_, _>>()?,
        ));
    }
    for (side, vals) in [
        (Side::Either, &a.label),
        (Side::From, &a.from_label),
        (Side::To, &a.to_label),
    ] {
        if !vals.is_empty() {
            q.filters.push(Filter::Label(side, vals.clone()));
        }
    }
    if !a.drop_reason_desc.is_empty() {
        q.filters
            .push(Filter::DropReason(a.drop_reason_desc.clone()));
    }
    if !a.traffic_direction.is_empty() {
        q.filters.push(Filter::Direction(
            a.traffic_direction
                .iter()
                .map(|d| map(query::direction(d)))
                .collect::<Result<_, _>>()?,
        ));
    }
    if !a.node_name.is_empty() {
        q.filters.push(Filter::Node(a.node_name.clone()));
    }
    if !a.uuid.is_empty() {
        q.filters.push(Filter::Uuid(a.uuid.clone()));
    }
    if !a.policy.is_empty() {
        q.filters.push(Filter::Policy(
            a.policy
                .iter()
                .map(|p| map(PolicySpec::parse(p)))
                .collect::<Result<_, _>>()?,
        ));
    }
    if !a.rule.is_empty() {
        q.filters.push(Filter::Rule(
            a.rule
                .iter()
                .map(|r| map(query::rule(r)))
                .collect::<Result<_, _>>()?,
        ));
    }
    if !a.tier.is_empty() {
        q.filters.push(Filter::Tier(a.tier.clone()));
    }
    let now = time::now_nanos();
    for (flag, v) in [("since", &a.since), ("until", &a.until)] {
        if let Some(v) = v {
            let t = time::parse(v, now).ok_or_else(|| {
                usage(format!(
                    "--{flag} {v:?}: expected RFC 3339 (2026-12-04T10:00:00Z) or a duration ago (30s, 5m, 2h, 1d)"
                ))
            })?;
            let t = time::rfc3339(t);
            q.filters.push(if flag == "since" {
                Filter::Since(t)
            } else {
                Filter::Until(t)
            });
        }
    }
    Ok(q)
}

/// Where the matching flows go.
enum Sink<'a> {
    Print {
        out: &'a mut dyn Write,
        format: Format,
        policy_names: bool,
        node: bool,
        first: Option<usize>,
        last: Option<VecDeque<String>>,
        last_n: usize,
        rows: Vec<[String; 6]>,
        printed: usize,
    },
    Summary(Summary),
}

impl Sink<'_> {
    /// Takes one raw line; returns false when no more are wanted (`--first` reached).
    fn line(&mut self, raw: &[u8], q: &Query, pre: &query::Prefilter) -> anyhow::Result<bool> {
        if raw.starts_with(CHECKPOINT_HEAD.as_bytes()) || raw.is_empty() {
            return Ok(true);
        }
        let lost = raw.starts_with(b"{\"lost_events\"");
        if lost && !q.is_empty() {
            return Ok(true);
        }
        if !lost && !pre.may_match(raw) {
            return Ok(true);
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            return Ok(true);
        };
        // Printed as logged and decided by the prefilter alone: no parse.
        if let Sink::Print {
            format: Format::Json | Format::JsonPb,
            first: None,
            ..
        } = self
            && q.prefilter_exact()
            && raw.starts_with(b"{\"flow\"")
        {
            if let Sink::Print {
                out, last: None, ..
            } = self
            {
                out.write_all(raw)?;
                out.write_all(b"\n")?;
            } else {
                self.emit(text.to_string())?;
            }
            return Ok(true);
        }
        let Ok(line) = Line::parse(text) else {
            return Ok(true);
        };
        if let Some(l) = &line.lost_events {
            match self {
                Sink::Summary(s) => s.lost(l.num_events_lost.parse().unwrap_or(0)),
                Sink::Print { format, .. } => {
                    let out = match format {
                        Format::Json | Format::JsonPb => text.to_string(),
                        _ => output::compact_lost(&line, l),
                    };
                    self.emit(out)?;
                }
            }
            return Ok(true);
        }
        let Some(f) = &line.flow else {
            return Ok(true);
        };
        if !q.matches(f) {
            return Ok(true);
        }
        match self {
            Sink::Summary(s) => {
                s.add(f);
                Ok(true)
            }
            Sink::Print {
                format,
                policy_names,
                node,
                rows,
                first,
                printed,
                ..
            } => {
                if let Some(n) = first
                    && *printed >= *n
                {
                    return Ok(false);
                }
                *printed += 1;
                let s = match format {
                    Format::Compact => {
                        output::compact(f, node.then_some(line.node_name.as_ref()), *policy_names)
                    }
                    Format::Dict => format!("{}\n------------", output::dict(f)),
                    Format::Json | Format::JsonPb => text.to_string(),
                    Format::Table => {
                        rows.push(output::table_row(f));
                        return Ok(true);
                    }
                };
                self.emit(s)?;
                Ok(true)
            }
        }
    }

    fn emit(&mut self, s: String) -> anyhow::Result<()> {
        if let Sink::Print {
            out, last, last_n, ..
        } = self
        {
            match last {
                Some(buf) => {
                    if buf.len() == *last_n {
                        buf.pop_front();
                    }
                    buf.push_back(s);
                }
                None => {
                    out.write_all(s.as_bytes())?;
                    out.write_all(b"\n")?;
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        if let Sink::Print {
            out, last, rows, ..
        } = self
        {
            if let Some(buf) = last.take() {
                for s in buf {
                    out.write_all(s.as_bytes())?;
                    out.write_all(b"\n")?;
                }
            }
            if !rows.is_empty() {
                let n = rows.len();
                let skip = n.saturating_sub(usize::MAX);
                out.write_all(output::table(&rows[skip..]).as_bytes())?;
                rows.clear();
            }
            out.flush()?;
        }
        Ok(())
    }
}

fn for_lines(
    data: &[u8],
    mut f: impl FnMut(&[u8]) -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', data) {
        if !f(&data[start..end])? {
            return Ok(false);
        }
        start = end + 1;
    }
    if start < data.len() && !f(&data[start..])? {
        return Ok(false);
    }
    Ok(true)
}

/// `data` cut at line ends into about `n` pieces.
fn chunks(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    for i in (1..n.max(1)).rev() {
        let want = rest.len() / (i + 1);
        let cut = match memchr::memchr(b'\n', &rest[want..]) {
            Some(k) => want + k + 1,
            None => rest.len(),
        };
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out.push(rest);
    out
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The lines of `data` matching `q`, formatted, filtered on every core; in file order.
fn print_parallel(
    data: &[u8],
    q: &Query,
    pre: &query::Prefilter,
    format: Format,
    policy_names: bool,
    node: bool,
) -> anyhow::Result<Vec<Vec<u8>>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks(data, threads())
            .into_iter()
            .map(|c| {
                s.spawn(move || -> anyhow::Result<Vec<u8>> {
                    let mut buf = Vec::with_capacity(c.len() / 4);
                    {
                        let mut sink = Sink::Print {
                            out: &mut buf,
                            format,
                            policy_names,
                            node,
                            first: None,
                            last: None,
                            last_n: 0,
                            rows: Vec::new(),
                            printed: 0,
                        };
                        for_lines(c, |l| sink.line(l, q, pre))?;
                        sink.finish()?;
                    }
                    Ok(buf)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a filter thread panicked"))?
            })
            .collect()
    })
}

/// The summary of `data`, counted on every core.
fn summary_parallel(data: &[u8], q: &Query, pre: &query::Prefilter) -> anyhow::Result<Summary> {
    let parts: Vec<Summary> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks(data, threads())
            .into_iter()
            .map(|c| {
                s.spawn(move || -> anyhow::Result<Summary> {
                    let mut sink = Sink::Summary(Summary::default());
                    for_lines(c, |l| sink.line(l, q, pre))?;
                    match sink {
                        Sink::Summary(s) => Ok(s),
                        Sink::Print { .. } => Ok(Summary::default()),
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a summary thread panicked"))?
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let mut total = Summary::default();
    for p in parts {
        total.merge(p);
    }
    Ok(total)
}

fn run(a: Args) -> anyhow::Result<ExitCode> {
    let mut paths: Vec<PathBuf> = a.files.clone();
    paths.extend(a.input_file.iter().cloned());
    if paths.is_empty() {
        paths.push(PathBuf::from(DEFAULT_LOG));
    }
    if a.follow && paths.len() != 1 {
        return Err(usage("--follow takes one log file"));
    }
    let files = files::expand(&paths, !a.no_rotated);
    if files.is_empty() {
        anyhow::bail!(
            "no such log: {} (the agent's verdict_log, default {DEFAULT_LOG})",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    if a.verify {
        return verify_cmd(&a, &paths, &files);
    }
    let q = build_query(&a)?;
    let pre = q.prefilter();
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());

    if a.summary {
        let fmt = a.output.as_deref().unwrap_or("text");
        if !matches!(fmt, "text" | "json" | "dot" | "svg") {
            return Err(usage(format!(
                "-o {fmt:?} with --summary: text, json, dot or svg"
            )));
        }
        let mut s = Summary::default();
        for f in &files {
            let data = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            s.merge(summary_parallel(&data, &q, &pre)?);
        }
        s.finish();
        match fmt {
            "json" => writeln!(out, "{}", serde_json::to_string_pretty(&s.json(a.top))?)?,
            "dot" => out.write_all(s.dot().as_bytes())?,
            "svg" => out.write_all(&render_svg(&s.dot())?)?,
            _ => out.write_all(s.text(a.top).as_bytes())?,
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }

    let format = match a.output.as_deref() {
        None => Format::Compact,
        Some(s) => Format::parse(s).ok_or_else(|| {
            usage(format!(
                "-o {s:?}: compact, dict, table, json or jsonpb (text, json, dot, svg with --summary)"
            ))
        })?,
    };
    if a.follow && (a.last.is_some() || format == Format::Table) {
        return Err(usage(
            "--follow prints as it reads: not with --last or -o table",
        ));
    }
    let mut sink = Sink::Print {
        out: &mut out,
        format,
        policy_names: a.print_policy_names,
        node: a.print_node_name,
        first: a.first,
        last: a.last.map(|n| VecDeque::with_capacity(n.min(1 << 16))),
        last_n: a.last.unwrap_or(0),
        rows: Vec::new(),
        printed: 0,
    };
    let _ = a.all;
    if a.first.is_none() && a.last.is_none() && format != Format::Table {
        // Every core filters a piece of each file; pieces are printed in order.
        drop(sink);
        for f in &files {
            let data = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            for buf in print_parallel(
                &data,
                &q,
                &pre,
                format,
                a.print_policy_names,
                a.print_node_name,
            )? {
                out.write_all(&buf)?;
            }
        }
        out.flush()?;
        if a.follow {
            let mut sink = Sink::Print {
                out: &mut out,
                format,
                policy_names: a.print_policy_names,
                node: a.print_node_name,
                first: None,
                last: None,
                last_n: 0,
                rows: Vec::new(),
                printed: 0,
            };
            follow(&paths[0], &mut sink, &q, &pre)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    for f in &files {
        let data = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        if !for_lines(&data, |l| sink.line(l, &q, &pre))? {
            break;
        }
    }
    sink.finish()?;
    if a.follow {
        follow(&paths[0], &mut sink, &q, &pre)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints lines appended to `path` from its current end, following rotation (the agent
/// renames the file and opens a new one).
fn follow(
    path: &Path,
    sink: &mut Sink<'_>,
    q: &Query,
    pre: &query::Prefilter,
) -> anyhow::Result<()> {
    let open = |p: &Path| -> anyhow::Result<std::fs::File> {
        std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))
    };
    let mut f = open(path)?;
    f.seek(SeekFrom::End(0))?;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n > 0 {
            pending.extend_from_slice(&buf[..n]);
            while let Some(i) = memchr::memchr(b'\n', &pending) {
                let line: Vec<u8> = pending.drain(..=i).collect();
                sink.line(&line[..line.len() - 1], q, pre)?;
            }
            sink.finish()?;
            continue;
        }
        // At the end: rotated away? Then the rest of the old file was read; go on with
        // the new one from its start.
        let rotated = match (std::fs::metadata(path), f.metadata()) {
            (Ok(now), Ok(open)) => now.ino() != open.ino() || now.dev() != open.dev(),
            _ => false,
        };
        if rotated && let Ok(nf) = open(path) {
            f = nf;
            continue;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn render_svg(dot: &str) -> anyhow::Result<Vec<u8>> {
    let mut child = std::process::Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context(
            "running Graphviz `dot` (Debian package graphviz) for -o svg; -o dot prints its input",
        )?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(dot.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!("dot -Tsvg failed: {}", out.status);
    }
    Ok(out.stdout)
}

fn verify_cmd(a: &Args, paths: &[PathBuf], files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    if paths.len() != 1 {
        return Err(usage("--verify checks one log (a file and its rotations)"));
    }
    let key = match &a.key {
        Some(k) => Some(
            chain::unhex::<32>(k.trim())
                .ok_or_else(|| usage(format!("--key {k:?}: expected 64 hex digits")))?,
        ),
        None => None,
    };
    let anchor = match &a.anchor {
        Some(s) => Some(
            verify::parse_anchor(s.trim())
                .ok_or_else(|| usage(format!("--anchor {s:?}: expected <seq>:<64 hex digits>")))?,
        ),
        None => None,
    };
    let rep = verify::verify(files, &verify::Options { key, anchor })?;
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    println!("files: {}", names.join(" "));
    println!(
        "records: {} ({} checkpoints), lines: {}, chain from record {} to {}",
        rep.records, rep.checkpoints, rep.lines, rep.first_seq, rep.last_seq
    );
    println!("last hash: {}:{}", rep.last_seq, chain::hex(&rep.last_hash));
    println!(
        "signed by: {}",
        if rep.keys.is_empty() {
            "no checkpoint".to_string()
        } else {
            rep.keys.join(", ")
        }
    );
    if key.is_none() && !rep.keys.is_empty() {
        println!("  (pass --key from `palisade-enforcer status` to require the node's key)");
    }
    if rep.unsigned_tail > 0 {
        println!(
            "unsigned tail: {} records after the last checkpoint (the agent signs every verdict_log_checkpoint_secs; a running agent's tail is normal)",
            rep.unsigned_tail
        );
    }
    match &rep.problem {
        None => {
            println!("OK: the chain holds");
            Ok(ExitCode::SUCCESS)
        }
        Some(p) => {
            println!("FAILED: {p}");
            Ok(ExitCode::from(1))
        }
    }
}

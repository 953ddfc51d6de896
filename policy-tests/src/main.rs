//! `policy-test`: the command line. Parsing, output and exit codes only; the work is in
//! the `policy_tests` library.
//!
//! Exit codes: 0 success (`check`: every scenario passed), 1 `check` had failures,
//! 2 bad input (unreadable or invalid manifests or scenarios, unknown endpoints, usage).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use policy_compiler::plan::capacity::Capacity;
use policy_compiler::{Flow, Protocol};
use policy_tests::matrix::Probe;
use policy_tests::output::{Progress, stdout_is_tty};
use policy_tests::scenario::{self, PortRef};
use policy_tests::{Analysis, InputError, Options, connections, diff, explain, matrix};

const ABOUT: &str = "Evaluate traffic against Kubernetes NetworkPolicies offline, exactly as Palisade's datapath would";

const LONG_ABOUT: &str = "\
Evaluate traffic against Kubernetes network policies offline, exactly as Palisade's datapath would.

policy-test compiles the given manifests (Namespaces, Nodes, Pods, workloads, Services and
every policy kind: NetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy,
ClusterNetworkPolicy, Palisade's and Cilium's kinds; files or directories, multi-document
YAML or JSON, List wrappers) with Palisade's policy core and answers every question with the
map-level evaluator: the same lookups the datapath performs on the same compiled policy maps.
Tiers are evaluated in order: admin (by priority), NetworkPolicy, baseline; `explain` shows
which rule decided and what a Pass skipped (docs/policy-kinds.md).

Workloads are named `ns/name[Kind]`. Endpoints are given as `ns/name` (a pod, or the only
workload of that name), `ns/Kind/name`, `ns/name[Kind]`, or an IP address.

Exit status: 0 success, 1 `check` found failing scenarios, 2 bad input (the reason is
printed to stderr after `error: `; nothing is printed to stdout then).";

const EXAMPLES: &str = "\
Examples:
  policy-test check -f manifests/ --scenarios scenarios.yaml
  policy-test matrix -f manifests/ --port 80/TCP --port 53/UDP
  policy-test connections -f manifests/ > connections.txt
  policy-test explain -f manifests/ --from prod/frontend --to prod/backend --port 8080
  policy-test diff -f old/ --against new/";

#[derive(Debug, Parser)]
#[command(name = "policy-test", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = EXAMPLES)]
struct Cli {
    /// Manifest file or directory (directories are walked recursively for .yaml, .yml and
    /// .json). Repeat for more.
    #[arg(short = 'f', long = "file", value_name = "PATH", global = true)]
    files: Vec<PathBuf>,

    /// Whether pod addresses take part in policy. `true` (Palisade, and the Kubernetes e2e
    /// suite): an ipBlock selects pods whose IPs it contains, and traffic is identified by
    /// its source address. `false` (netpol-analyzer's reading): ipBlocks select only
    /// addresses outside the cluster and pods are known by identity alone.
    #[arg(
        long,
        value_name = "true|false",
        default_value_t = true,
        action = ArgAction::Set,
        global = true
    )]
    ipblocks_select_pods: bool,

    /// Make a document Palisade cannot model an error (exit 2) instead of a warning: an
    /// unknown or misspelt kind (`Networkpolicy`), a NetworkPolicy of another apiVersion
    /// (`extensions/v1beta1`), a document without `kind`. The error names the file and
    /// document. This is how the enforcer reads its manifest directory.
    #[arg(long, global = true)]
    strict: bool,

    /// Largest manifest file read, in bytes; a larger one is an error.
    #[arg(long, value_name = "BYTES", default_value_t = policy_compiler::manifest::DEFAULT_MAX_FILE_BYTES, global = true)]
    max_file_bytes: u64,

    /// Most top-level documents in one file (YAML `---` documents or concatenated JSON).
    #[arg(long, value_name = "N", default_value_t = policy_compiler::manifest::DEFAULT_MAX_DOCUMENTS, global = true)]
    max_documents: usize,

    /// Most nodes (mappings, sequences, scalars; YAML aliases expanded) in one file.
    #[arg(long, value_name = "N", default_value_t = policy_compiler::manifest::DEFAULT_MAX_NODES, global = true)]
    max_nodes: usize,
    /// Entries of the datapath's policy map (`pal_policy`) the compiled policies are checked
    /// against; the default is the datapath's. See docs/policy-test.md "Map capacities".
    #[arg(long, value_name = "N", default_value_t = policy_compiler::abi::capacity::POLICY as usize, global = true)]
    policy_map_capacity: usize,
    /// One of the node's own addresses (repeatable), as the enforcer maps them: identity
    /// host, whose traffic into a pod is always allowed (NetworkPolicy); an ipBlock
    /// containing one selects the node. Default: none (every address is external).
    #[arg(long = "node-address", value_name = "IP", global = true)]
    node_address: Vec<std::net::IpAddr>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check scenarios (flows with an expected verdict) against the policies
    #[command(long_about = CHECK_LONG)]
    Check(CheckArgs),
    /// Reachability truth table between all workloads
    #[command(long_about = MATRIX_LONG)]
    Matrix(MatrixArgs),
    /// List every allowed connection (netpol-analyzer `list` format)
    #[command(long_about = CONNECTIONS_LONG)]
    Connections(ConnectionsArgs),
    /// Explain why one flow is allowed or denied
    #[command(long_about = EXPLAIN_LONG)]
    Explain(ExplainArgs),
    /// Connections added, removed or changed between two policy sets
    #[command(long_about = DIFF_LONG)]
    Diff(DiffArgs),
}

const CHECK_LONG: &str = "\
Check scenarios (flows with an expected verdict) against the policies.

A scenario file is YAML:

  scenarios:
    - name: frontend may call the API
      from: production/frontend    # pod ns/name; workload ns/Kind/name; or {ip: 203.0.113.7}
      to: production/backend
      port: 8080                   # number, or a container-port name of the destination
      protocol: TCP                # TCP (default), UDP or SCTP
      expect: allow                # allow or deny

For each scenario the verdict, the expectation and what decided it are shown: the rule
that allowed the flow (`prod/allow-web ingress[0]`), `allowed: not isolated`, or the
policies whose isolation denied it (`default deny: isolated by prod/deny-all (ingress)`).

Output: a table on a terminal, plain text otherwise; `--output json` or `--output junit`
for machines. Exit status 0 when every scenario passes, 1 when any fails, 2 on bad input
(syntax errors as file:line:column, unknown endpoints with the closest existing names).

Examples:
  policy-test check -f k8s/ --scenarios scenarios.yaml
  policy-test check -f k8s/ --scenarios a.yaml --scenarios b.yaml --output junit > report.xml
  policy-test check -f policies.yaml -f pods.yaml --scenarios s.yaml --output json | jq .summary";

const MATRIX_LONG: &str = "\
Reachability truth table between all workloads, Kubernetes e2e style.

Rows are sources, columns destinations (one per workload `ns/name[Kind]`, including each
workload to itself); `.` means allowed and `X` denied. One table per `--port`; without
`--port`, a single table answers whether any port of any protocol is allowed.

Examples:
  policy-test matrix -f k8s/ --port 80/TCP
  policy-test matrix -f k8s/ --port 80 --port 53/UDP --port 9000/SCTP
  policy-test matrix -f k8s/ --output json";

const CONNECTIONS_LONG: &str = "\
List every allowed connection between workloads, and between workloads and external
address ranges, in netpol-analyzer's `list` text format (byte-compatible):

  0.0.0.0-255.255.255.255[External] => default/frontend[Deployment] : TCP 8080
  default/frontend[Deployment] => default/backend[Deployment] : TCP 9090

External ranges are the elementary ranges cut by the policies' ipBlocks (ingress ipBlocks
for sources, egress ipBlocks for destinations). Each range is answered at one address of
it that belongs to no endpoint. Use --ipblocks-select-pods=false to read ipBlocks as
netpol-analyzer does.

Examples:
  policy-test connections -f k8s/
  policy-test connections -f k8s/ --ipblocks-select-pods=false
  policy-test connections -f k8s/ --output json";

const EXPLAIN_LONG: &str = "\
Explain why one flow is allowed or denied: the policies that select the source (egress)
and the destination (ingress), every rule of theirs with why it matches or not (peer
mismatch, port mismatch, named port unresolved), each side's decision from the compiled
maps, and the final verdict.

Examples:
  policy-test explain -f k8s/ --from prod/frontend --to prod/backend --port 8080
  policy-test explain -f k8s/ --from 203.0.113.7 --to prod/Deployment/web --port http
  policy-test explain -f k8s/ --from prod/a --to kube-system/coredns --port 53 --protocol UDP
  policy-test explain -f k8s/ --from prod/frontend --service prod/api --port http
  policy-test explain -f k8s/ --from prod/frontend --service prod/api --port 80 --source-port 40000

With --service instead of --to, the flow goes to a Service: the translation is shown first
(frontend, then the backend), and each backend the service port has is explained in turn;
with --source-port, only the backend Maglev picks for that 5-tuple.";

const DIFF_LONG: &str = "\
Connections added, removed or changed between two policy sets (or topologies): `-f` gives
the old manifests, `--against` the new ones. Both are listed as by `connections`, over a
common partition of external addresses, and compared pair by pair. The text format follows
netpol-analyzer's `diff`.

Examples:
  policy-test diff -f main/k8s/ --against branch/k8s/
  policy-test diff -f cluster/ -f old-policies/ --against cluster/ --against new-policies/ --output json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CheckOutput {
    /// A table on a terminal, plain text otherwise.
    Auto,
    Table,
    Text,
    Json,
    Junit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// Scenario file (YAML). Repeat for more.
    #[arg(long = "scenarios", short = 's', value_name = "FILE", required = true)]
    scenarios: Vec<PathBuf>,
    #[arg(long, short = 'o', value_enum, default_value_t = CheckOutput::Auto)]
    output: CheckOutput,
}

#[derive(Debug, clap::Args)]
struct MatrixArgs {
    /// Port to probe: PORT[/PROTOCOL] (protocol TCP by default), or `any`. Repeat for more.
    #[arg(long, value_name = "PORT[/PROTO]")]
    port: Vec<Probe>,
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Debug, clap::Args)]
struct ConnectionsArgs {
    /// text (netpol-analyzer's list), json, dot (Graphviz), svg or html (rendered with
    /// Graphviz `dot`, Debian package graphviz).
    #[arg(long, short = 'o', value_enum, default_value_t = GraphOutput::Text)]
    output: GraphOutput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GraphOutput {
    Text,
    Json,
    Dot,
    Svg,
    Html,
}

#[derive(Debug, clap::Args)]
struct ExplainArgs {
    /// Source: ns/name, ns/Kind/name, ns/name[Kind], or an IP address.
    #[arg(long, value_name = "ENDPOINT")]
    from: String,
    /// Destination: ns/name, ns/Kind/name, ns/name[Kind], or an IP address.
    #[arg(
        long,
        value_name = "ENDPOINT",
        required_unless_present = "service",
        conflicts_with = "service"
    )]
    to: Option<String>,
    /// Destination service (ns/name): the flow is translated to its backends first.
    #[arg(long, value_name = "NS/NAME")]
    service: Option<String>,
    /// With --service: the client's source port, so only the backend Maglev picks is
    /// explained.
    #[arg(long, value_name = "PORT")]
    source_port: Option<u16>,
    /// Destination port: a number or a container-port name of the destination (with
    /// --service: a service port number or name).
    #[arg(long, value_name = "PORT")]
    port: PortRef,
    /// TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP", value_parser = parse_protocol)]
    protocol: Protocol,
    /// Also decide one HTTP request on the connection (where a side sends it to the L7 proxy):
    /// its method.
    #[arg(long, value_name = "METHOD", help_heading = "HTTP request")]
    method: Option<String>,
    /// The request target, e.g. /api/v1/data?x=1 (default /).
    #[arg(long, value_name = "TARGET", help_heading = "HTTP request")]
    path: Option<String>,
    /// The Host header, e.g. backend:8080.
    #[arg(long, value_name = "HOST", help_heading = "HTTP request")]
    host: Option<String>,
    /// A request header `Name: value` (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE", help_heading = "HTTP request", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    output: Output,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((n, v)) if !n.trim().is_empty() => Ok((n.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("{s:?}: expected `Name: value`")),
    }
}

#[derive(Debug, clap::Args)]
struct DiffArgs {
    /// The new manifests (files or directories), compared with those of -f/--file.
    #[arg(long, value_name = "PATH", required = true)]
    against: Vec<PathBuf>,
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    output: Output,
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    Protocol::from_name(s)
        .filter(|p| p.has_ports())
        .ok_or_else(|| format!("unknown protocol {s:?}: expected TCP, UDP or SCTP"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn load(files: &[PathBuf], opts: &Options, cap: &Capacity) -> Result<Analysis, InputError> {
    let a = Analysis::load(files, opts)?;
    for w in a.warnings() {
        eprintln!("warning: {w}");
    }
    for w in policy_tests::capacity::check(&a.engine, cap)? {
        eprintln!("warning: {w}");
    }
    Ok(a)
}

/// Writes a result to stdout; a closed pipe (`| head`) is not an error.
fn emit(text: &str) -> Result<(), InputError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(InputError::Usage(format!("writing output: {e}"))),
    }
}

fn json(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into());
    s.push('\n');
    s
}

fn run(cli: Cli) -> Result<ExitCode, InputError> {
    let opts = Options {
        ipblocks_select_pods: cli.ipblocks_select_pods,
        load: policy_compiler::manifest::LoadOptions {
            strict_kinds: cli.strict,
            limits: policy_compiler::manifest::Limits {
                max_file_bytes: cli.max_file_bytes,
                max_documents: cli.max_documents,
                max_nodes: cli.max_nodes,
            },
            ..Default::default()
        },
        host_addresses: cli.node_address,
    };
    let cap = Capacity {
        policy: cli.policy_map_capacity,
        ..Capacity::default()
    };
    match cli.command {
        Command::Check(args) => {
            let files = args
                .scenarios
                .iter()
                .map(|p| scenario::load(p))
                .collect::<Result<Vec<_>, _>>()?;
            let a = load(&cli.files, &opts, &cap)?;
            let resolved = files
                .iter()
                .map(|f| scenario::resolve_all(&a, f).map(|r| (f.path.clone(), r)))
                .collect::<Result<Vec<_>, _>>()?;
            let progress = Progress::for_terminal("scenarios");
            let results: Vec<_> = resolved
                .iter()
                .map(|(p, r)| (p.clone(), scenario::run(&a, r, &progress)))
                .collect();
            progress.finish();
            let failed = results.iter().flat_map(|(_, o)| o).any(|o| !o.pass);
            let text = match args.output {
                CheckOutput::Auto if stdout_is_tty() => scenario::to_table(&results),
                CheckOutput::Auto | CheckOutput::Text => scenario::to_plain(&results),
                CheckOutput::Table => scenario::to_table(&results),
                CheckOutput::Json => json(&scenario::to_json(&a, &results)),
                CheckOutput::Junit => {
                    let mut x = scenario::to_junit(&results)
                        .map_err(|e| InputError::Usage(format!("rendering JUnit XML: {e}")))?;
                    x.push('\n');
                    x
                }
            };
            emit(&text)?;
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Matrix(args) => {
            let a = load(&cli.files, &opts, &cap)?;
            let probes = if args.port.is_empty() {
                vec![Probe::Any]
            } else {
                args.port
            };
            let m = matrix::compute(&a, &probes, &Progress::for_terminal("matrix"));
            emit(&match args.output {
                Output::Text => matrix::to_text(&m),
                Output::Json => json(&matrix::to_json(&m)),
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Connections(args) => {
            let a = load(&cli.files, &opts, &cap)?;
            let c = connections::compute(&a, &Progress::for_terminal("connections"));
            let render = |format: &str| {
                connections::render_dot(&connections::to_dot(&c), format)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            };
            let out = match args.output {
                GraphOutput::Text => connections::to_text(&c),
                GraphOutput::Json => json(&connections::to_json(&c)),
                GraphOutput::Dot => connections::to_dot(&c),
                GraphOutput::Svg | GraphOutput::Html => match render("svg") {
                    Ok(svg) if args.output == GraphOutput::Svg => svg,
                    Ok(svg) => connections::to_html(&c, &svg),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return Ok(ExitCode::from(2));
                    }
                },
            };
            emit(&out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain(args) => {
            let a = load(&cli.files, &opts, &cap)?;
            if args.source_port.is_some() && args.service.is_none() {
                return Err(InputError::Usage(
                    "--source-port picks a service backend: give --service ns/name instead of --to"
                        .into(),
                ));
            }
            let src = a.resolve(&args.from)?;
            if let Some(service) = &args.service {
                if args.source_port == Some(0) {
                    return Err(InputError::Usage(
                        "--source-port 0 is out of range 1-65535".into(),
                    ));
                }
                let flows = scenario::resolve_service(
                    &a,
                    &src,
                    service,
                    &args.port,
                    args.protocol,
                    args.source_port,
                )?;
                let mut text = String::new();
                let mut json = Vec::new();
                for (i, (flow, via)) in flows.iter().enumerate() {
                    let e = explain::explain(&a, flow);
                    let how = match args.source_port {
                        Some(p) => format!("the backend Maglev picks for source port {p}"),
                        None => format!("backend {} of {}", i + 1, flows.len()),
                    };
                    if i > 0 {
                        text.push('\n');
                    }
                    text.push_str(&format!(
                        "service {} {} ({}) -> {} {} ({how})\n",
                        via.service, via.frontend, args.protocol, via.endpoint, via.backend
                    ));
                    text.push_str(&explain::to_text(&e));
                    let mut v = explain::to_json(&e);
                    if let Some(m) = v.as_object_mut() {
                        m.insert(
                            "service".into(),
                            serde_json::to_value(via).unwrap_or_default(),
                        );
                    }
                    json.push(v);
                }
                emit(&match args.output {
                    Output::Text => text,
                    Output::Json => serde_json::to_string_pretty(&json).unwrap_or_default() + "\n",
                })?;
                return Ok(ExitCode::SUCCESS);
            }
            let to = args.to.as_deref().unwrap_or_default();
            let dst = a.resolve(to)?;
            let port = scenario::resolve_port(&a, &dst, &args.port, args.protocol)?;
            let flow = Flow {
                src,
                dst,
                protocol: args.protocol,
                port,
            };
            let e = explain::explain(&a, &flow);
            let http = (args.method.is_some()
                || args.path.is_some()
                || args.host.is_some()
                || !args.headers.is_empty())
            .then(|| policy_tests::l7::HttpQuery {
                method: args.method.clone().unwrap_or_else(|| "GET".into()),
                path: args.path.clone().unwrap_or_else(|| "/".into()),
                host: args.host.clone(),
                headers: args.headers.iter().cloned().collect(),
            });
            let outcome = http
                .as_ref()
                .filter(|_| e.allowed)
                .map(|q| policy_tests::l7::evaluate(&a, &flow, q));
            emit(&match args.output {
                Output::Text => {
                    let mut t = explain::to_text(&e);
                    match (&http, &outcome) {
                        (Some(q), Some(o)) => t.push_str(&policy_tests::l7::to_text(q, o)),
                        (Some(q), None) => t.push_str(&format!(
                            "\nHTTP request: {}\n  never sent: the connection is denied at L3/L4\n",
                            q.summary()
                        )),
                        _ => {}
                    }
                    t
                }
                Output::Json => {
                    let mut v = explain::to_json(&e);
                    if let (Some(o), Some(m)) = (&outcome, v.as_object_mut()) {
                        m.insert("http".into(), serde_json::to_value(o).unwrap_or_default());
                    }
                    json(&v)
                }
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Diff(args) => {
            let old = load(&cli.files, &opts, &cap)?;
            let new = load(&args.against, &opts, &cap)?;
            let d = diff::compute(&old, &new, &Progress::for_terminal("diff"));
            emit(&match args.output {
                Output::Text => diff::to_text(&d),
                Output::Json => json(&diff::to_json(&d)),
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

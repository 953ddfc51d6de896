//! `palisade-demo`: the local-node demo that `./palisade demo` runs. Needs root; drives the
//! `palisade-enforcer` and `palisade-cni` binaries of the same build as processes.

mod demo;

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "palisade-demo",
    version,
    about = "The local-node demo: pods in network namespaces, default deny and allow rules \
             from examples/manifests, real traffic, the verdict log that explains it",
    long_about = "Builds a throwaway node of network namespaces, starts the real agent \
        (`palisade-enforcer run`) on the manifests, creates one pod per workload with the \
        bundled CNI plugin, sends allowed and denied traffic and prints the kernel's verdicts \
        next to the policy core's. Removes everything at the end, also on failure. Needs root."
)]
struct Cli {
    #[command(flatten)]
    args: demo::DemoArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match demo::run(&cli.args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("palisade-demo: {e:#}");
            ExitCode::from(1)
        }
    }
}

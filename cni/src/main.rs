//! `palisade-cni`: the CNI plugin binary. Everything is in the library; see `plugin::run`.
//!
//! `palisade-cni install --from SRC --to DIR` is the one non-CNI use (the DaemonSet's init
//! container); runtimes call the plugin without arguments.

use std::io::Write;

fn main() {
    let mut args = std::env::args_os().skip(1);
    if let Some(first) = args.next() {
        if first == "install" {
            std::process::exit(palisade_cni::install::main(args));
        }
        eprintln!(
            "palisade-cni: unknown argument {first:?}\n{}",
            palisade_cni::install::USAGE
        );
        std::process::exit(palisade_cni::install::EXIT_USAGE);
    }
    let outcome = palisade_cni::plugin::run(std::env::vars_os(), &mut std::io::stdin().lock());
    let mut out = std::io::stdout().lock();
    // Nothing useful is left to do if stdout is gone; the exit status still tells.
    let _ = out.write_all(&outcome.stdout);
    let _ = out.flush();
    std::process::exit(outcome.exit_code);
}

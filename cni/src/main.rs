//! `palisade-cni`: the CNI plugin binary. Everything is in the library; see `plugin::run`.

use std::io::Write;

fn main() {
    let outcome = palisade_cni::plugin::run(std::env::vars_os(), &mut std::io::stdin().lock());
    let mut out = std::io::stdout().lock();
    // Nothing useful is left to do if stdout is gone; the exit status still tells.
    let _ = out.write_all(&outcome.stdout);
    let _ = out.flush();
    std::process::exit(outcome.exit_code);
}

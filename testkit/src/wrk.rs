//! `wrk` runs and their report: requests per second, latency percentiles, errors.

use std::time::Duration;

/// One wrk measurement.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WrkRun {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Non-2xx/3xx responses plus socket errors.
    pub errors: u64,
}

/// `12.3us`, `1.5ms`, `2s` in microseconds.
pub fn duration_us(v: &str) -> Option<f64> {
    let (num, mult) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|x| x * mult)
}

/// The arguments of one run: one thread, `connections`, `duration`, latency report, and
/// `Connection: close` when `close`.
pub fn args(url: &str, connections: u32, duration: Duration, close: bool) -> Vec<String> {
    let mut a = vec![
        "wrk".to_string(),
        "-t1".into(),
        format!("-c{connections}"),
        format!("-d{}s", duration.as_secs().max(1)),
        "--latency".into(),
    ];
    if close {
        a.push("-H".into());
        a.push("Connection: close".into());
    }
    a.push(url.to_string());
    a
}

/// Reads wrk's report.
pub fn parse(text: &str) -> WrkRun {
    let mut run = WrkRun::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => run.rps = v.parse().unwrap_or(0.0),
            ["50%", v] => run.p50_us = duration_us(v).unwrap_or(0.0),
            ["99%", v] => run.p99_us = duration_us(v).unwrap_or(0.0),
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                run.errors += n.parse::<u64>().unwrap_or(0);
            }
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                run.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    run
}

/// The header of a results table: `path req/s p50 p99 errors`.
pub fn print_header() {
    println!(
        "{:<26} {:>10} {:>10} {:>10} {:>8}",
        "path", "req/s", "p50 µs", "p99 µs", "errors"
    );
}

/// One row of the table: `<name> c=<connections> <keep-alive|new-conn>` and the run.
pub fn print_row(name: &str, connections: u32, close: bool, r: &WrkRun) {
    println!(
        "{:<26} {:>10.0} {:>10.0} {:>10.0} {:>8}",
        format!("{name} c={connections} {}", mode(close)),
        r.rps,
        r.p50_us,
        r.p99_us,
        r.errors
    );
}

fn mode(close: bool) -> &'static str {
    if close { "new-conn" } else { "keep-alive" }
}

/// The L7 proxy benchmarks' comparison, per (new connections?, connections): the runs of
/// `direct`, `palisade` and `haproxy`, in that order, as ratios of the same run.
pub fn print_proxy_ratios(table: &[(bool, u32, Vec<WrkRun>)]) {
    println!("ratios (same run):");
    for (close, connections, row) in table {
        let (direct, pal, ha) = (row[0], row[1], row[2]);
        println!(
            "  c={connections} {:<10} palisade/haproxy req/s {:.2}  palisade/direct {:.2}  added p50 palisade {:+.0} µs, haproxy {:+.0} µs",
            mode(*close),
            pal.rps / ha.rps.max(1.0),
            pal.rps / direct.rps.max(1.0),
            pal.p50_us - direct.p50_us,
            ha.p50_us - direct.p50_us,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_read() {
        let r = parse(
            "Running 1s test @ http://x\n  Latency Distribution\n     50%   45.00us\n     99%    1.20ms\n\
             Non-2xx or 3xx responses: 3\n  Socket errors: connect 1, read 2, write 0, timeout 0\n\
             Requests/sec:  21000.50\n",
        );
        assert_eq!(
            r,
            WrkRun {
                rps: 21000.5,
                p50_us: 45.0,
                p99_us: 1200.0,
                errors: 6
            }
        );
    }
}

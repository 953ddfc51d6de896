//! Output plumbing: formats, terminal detection, progress bars, tables.

use std::io::IsTerminal;
use std::time::Duration;

use comfy_table::{ContentArrangement, Table, presets};
use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar that exists only when a person watches: stderr is a terminal and the
/// `CI` environment variable is unset. Cheap to pass around and to share across threads.
#[derive(Debug, Clone, Default)]
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// Never shows anything (library callers, tests, pipes).
    pub fn hidden() -> Progress {
        Progress(None)
    }

    /// A bar labelled `what`, if stderr is interactive and not in CI.
    pub fn for_terminal(what: &str) -> Progress {
        if !std::io::stderr().is_terminal() || std::env::var_os("CI").is_some() {
            return Progress(None);
        }
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({eta})")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(what.to_string());
        // Short runs finish before the first draw and never show.
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress(Some(bar))
    }

    pub fn set_length(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.set_length(n);
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

/// Whether stdout is a terminal (tables there, plain text otherwise).
pub fn stdout_is_tty() -> bool {
    std::io::stdout().is_terminal()
}

/// A bordered table with the given header, wrapping to the terminal width.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    t
}

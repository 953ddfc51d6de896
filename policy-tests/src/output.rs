//! Output plumbing: terminal detection, progress bars, tables.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use comfy_table::{ContentArrangement, Table, presets};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Runs shorter than this never show a bar.
const SHOW_AFTER: Duration = Duration::from_millis(400);

/// A progress bar that exists only when a person watches: stderr is a terminal and the
/// `CI` environment variable is unset. It appears once a run has lasted a moment, is
/// cleared when done, and can be shared across threads.
#[derive(Debug, Clone, Default)]
pub struct Progress(Option<(ProgressBar, Instant)>);

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
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
        let style = ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({eta})")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(what.to_string());
        Progress(Some((bar, Instant::now())))
    }

    /// Adds `n` steps to the work ahead (several computations may share one bar).
    pub fn add_length(&self, n: u64) {
        if let Some((b, _)) = &self.0 {
            b.inc_length(n);
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some((b, start)) = &self.0 {
            b.inc(n);
            if b.is_hidden() && start.elapsed() >= SHOW_AFTER && !b.is_finished() {
                b.set_draw_target(ProgressDrawTarget::stderr());
                b.enable_steady_tick(Duration::from_millis(200));
            }
        }
    }

    pub fn finish(&self) {
        if let Some((b, _)) = &self.0 {
            b.finish_and_clear();
        }
    }
}

/// Whether stdout is a terminal (tables there, plain text otherwise).
pub fn stdout_is_tty() -> bool {
    std::io::stdout().is_terminal()
}

/// A bordered table with the given header, fitted to the terminal width when that is known.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    let known_width = t.width().is_some_and(|w| w >= 60);
    t.set_content_arrangement(if known_width {
        ContentArrangement::Dynamic
    } else {
        ContentArrangement::Disabled
    });
    t
}

/// An untrusted string (a scenario name, a label) made safe for one line of human-readable
/// output: control characters (CR, LF, ESC, NUL, DEL, C1, ...) are written as escapes
/// (`\n`, `\u{1b}`), and a backslash as `\\` so an escape cannot be forged. Strings
/// without either are returned as they are.
pub fn escape_text(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || c == '\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() || c == '\\' {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::escape_text;

    #[test]
    fn control_characters_and_backslashes_are_escaped() {
        assert_eq!(
            escape_text("frontend may call api"),
            "frontend may call api"
        );
        assert_eq!(escape_text("a\nPASS  b"), "a\\nPASS  b");
        // A literal backslash-n cannot pass for an escaped newline.
        assert_ne!(escape_text("a\\nPASS"), escape_text("a\nPASS"));
        assert_eq!(escape_text("a\\nPASS"), "a\\\\nPASS");
        assert_eq!(
            escape_text("x\r\n\u{1b}[31m\0\u{7f}"),
            "x\\r\\n\\u{1b}[31m\\0\\u{7f}"
        );
    }
}

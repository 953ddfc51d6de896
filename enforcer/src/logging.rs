//! The agent's own log: `tracing` events on stderr, as text or JSON lines.
//!
//! Events carry what they are about as fields with stable dotted names (`endpoint.pod`,
//! `endpoint.namespace`, `policy.revision`, `maps.policy_writes`, `error`, ...); messages
//! are constant strings. Untrusted strings (pod names, labels, file contents in error
//! messages) are therefore always field values, which the text format prints quoted with
//! escapes and the JSON format as JSON strings, so a crafted name cannot forge a log line.
//! The verdict log is a different stream ([`crate::events`]).

use tracing_subscriber::fmt::MakeWriter;

/// Format of the agent's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event: time, level, message, then `field=value` pairs.
    #[default]
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
}

/// The subscriber for `format`, writing to `writer`; `quiet` keeps warnings and errors only.
pub fn subscriber<W>(
    format: LogFormat,
    quiet: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let level = if quiet {
        tracing::Level::WARN
    } else {
        tracing::Level::INFO
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_max_level(level)
        .with_target(false);
    match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
    }
}

/// Installs the stderr subscriber for the process. A subscriber set earlier stays.
pub fn init(format: LogFormat, quiet: bool) {
    let _ = tracing::subscriber::set_global_default(subscriber(format, quiet, std::io::stderr));
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    fn capture(format: LogFormat, quiet: bool, f: impl FnOnce()) -> String {
        let buf = Buffer::default();
        tracing::subscriber::with_default(subscriber(format, quiet, buf.clone()), f);
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    const EVIL: &str = "web-1\n2026-01-01T00:00:00Z  INFO registered endpoint.pod=\"admin\"";

    fn registered() {
        tracing::info!(
            endpoint.namespace = "shop",
            endpoint.pod = EVIL,
            endpoint.ifindex = 7u32,
            "registered"
        );
    }

    #[test]
    fn text_escapes_untrusted_fields_on_one_line() {
        let out = capture(LogFormat::Text, false, registered);
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains(" INFO registered "), "{out}");
        assert!(
            out.contains(r#"endpoint.pod="web-1\n2026-01-01T00:00:00Z  INFO registered endpoint.pod=\"admin\"""#),
            "{out}"
        );
        assert!(out.contains("endpoint.ifindex=7"), "{out}");
    }

    #[test]
    fn json_has_dotted_fields_and_one_object_per_line() {
        let out = capture(LogFormat::Json, false, registered);
        assert_eq!(out.lines().count(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(v["message"], "registered");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["endpoint.pod"], EVIL);
        assert_eq!(v["endpoint.namespace"], "shop");
        assert_eq!(v["endpoint.ifindex"], 7);
    }

    #[test]
    fn quiet_keeps_warnings_only() {
        let out = capture(LogFormat::Text, true, || {
            registered();
            tracing::warn!(error = "disk full", "verdict log write failed");
        });
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains("WARN verdict log write failed"), "{out}");
    }
}

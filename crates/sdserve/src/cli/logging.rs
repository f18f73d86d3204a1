//! Log output: `--log-format text|json` (`SDSERVE_LOG_FORMAT`). Containers and
//! Kubernetes collect stderr line by line, so JSON gives collectors fields
//! instead of text to parse, and ANSI colour codes (which read as garbage in
//! `docker logs` and log stores) are written only to a terminal.

use std::io::IsTerminal;

/// How log lines are written to stderr.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// tracing's human-readable lines.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`).
    Json,
}

/// Installs the global subscriber: filter from `RUST_LOG` (default `info`), output to stderr.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_ansi(false).init(),
        LogFormat::Text => builder.with_ansi(use_colour()).init(),
    }
}

/// Colours only on a terminal, and never with `NO_COLOR` set (https://no-color.org).
fn use_colour() -> bool {
    colour_allowed(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

fn colour_allowed(terminal: bool, no_colour: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_colour.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::colour_allowed;
    use std::ffi::OsStr;

    #[test]
    fn colour_needs_a_terminal_and_no_no_color() {
        assert!(colour_allowed(true, None));
        assert!(colour_allowed(true, Some(OsStr::new(""))));
        assert!(!colour_allowed(true, Some(OsStr::new("1"))));
        assert!(!colour_allowed(false, None));
    }
}

//! Logging: JSON lines in Lambda (CloudWatch, with run / shard / request ids as fields),
//! human-readable text on a terminal.

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Compact text.
    Text,
}

impl LogFormat {
    /// `LOG_FORMAT` (json|text), else JSON inside Lambda and text elsewhere.
    pub fn from_env() -> Self {
        match std::env::var("LOG_FORMAT").ok().as_deref() {
            Some("json") => Self::Json,
            Some("text") => Self::Text,
            _ if std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some() => Self::Json,
            _ => Self::Text,
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` filters, else `default_level` (`info` in
/// Lambda; the CLI uses `warn` so that its progress bar and report stay readable). Colours
/// only on a terminal. Safe to call twice.
pub fn init_tracing(format: LogFormat, default_level: &str) {
    use std::io::IsTerminal;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}

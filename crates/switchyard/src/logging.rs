//! Log output: JSON lines for machines or a readable format for people, on stderr.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, fields at the top level.
    Json,
    /// Human-readable lines.
    Pretty,
}

/// Installs the global subscriber. `filter` uses `RUST_LOG` syntax. The
/// filter can be replaced at run time through the admin API
/// (`PUT /api/log-level`).
pub fn init(format: LogFormat, filter: &str) {
    let (filter, text) = match EnvFilter::try_new(filter) {
        Ok(parsed) => (parsed, filter.to_owned()),
        Err(e) => {
            eprintln!("warning: invalid --log-level {filter:?} ({e}); using \"info\"");
            (EnvFilter::new("info"), "info".to_owned())
        }
    };
    fn control<F>(
        reload: impl Fn(EnvFilter) -> Result<(), F> + Send + Sync + 'static,
    ) -> switchyard_admin::LogLevelControl
    where
        F: std::fmt::Display,
    {
        std::sync::Arc::new(move |level: &str| {
            let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
            reload(filter).map_err(|e| e.to_string())
        })
    }
    let ansi = std::io::stderr().is_terminal();
    let control = match format {
        LogFormat::Json => {
            let builder = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .with_env_filter(filter)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            control(move |filter| handle.reload(filter))
        }
        LogFormat::Pretty => {
            let builder = tracing_subscriber::fmt()
                .compact()
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .with_env_filter(filter)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            control(move |filter| handle.reload(filter))
        }
    };
    switchyard_admin::set_log_level_control(control, text);
}

//! Operator-facing log lines on standard error: a UTC timestamp, a level, the component
//! that speaks (`master`, `datanode-1`, ..) and one sentence; or the same as one JSON
//! object per line for log shippers. Deliberately tiny: a line per event is all the
//! servers need, and journald or `docker logs` collects standard error.
//!
//! Routine traffic (heartbeats, reports, successful internal requests) is logged at
//! `debug`, which is off by default; failures and state changes at `info` and above.
//! The level and format are the process's one setting of this kind: the binary sets them
//! once at start-up (`init`), before any server starts; until then `info` and text apply.

use std::sync::OnceLock;
use std::time::SystemTime;

/// How much to log, from the least to the most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    pub fn parse(text: &str) -> Result<Level, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "error" => Ok(Level::Error),
            "warn" | "warning" => Ok(Level::Warn),
            "info" => Ok(Level::Info),
            "debug" => Ok(Level::Debug),
            _ => Err(format!("log level {text:?} is not one of error, warn, info, debug")),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

/// How a line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `2026-01-01T00:00:00.000Z INFO master: sentence`
    Text,
    /// `{"time":"..","level":"info","component":"master","message":"sentence"}`
    Json,
}

impl Format {
    pub fn parse(text: &str) -> Result<Format, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            _ => Err(format!("log format {text:?} is not one of text, json")),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    level: Level,
    format: Format,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

fn settings() -> Settings {
    *SETTINGS.get_or_init(|| Settings { level: Level::Info, format: Format::Text })
}

/// Sets the level and format for the rest of the process; only the first call counts.
pub fn init(level: Level, format: Format) {
    let _ = SETTINGS.set(Settings { level, format });
}

/// The settings in force, as the `--log-level` and `--log-format` values that give them:
/// what `aether dev` passes on to the datanodes it starts.
pub fn as_args() -> [String; 4] {
    let settings = settings();
    let format = match settings.format {
        Format::Text => "text",
        Format::Json => "json",
    };
    let level = settings.level.label().to_ascii_lowercase();
    ["--log-level".into(), level, "--log-format".into(), format.into()]
}

/// Whether a line at `level` would be written.
pub fn enabled(level: Level) -> bool {
    level <= settings().level
}

pub fn log(level: Level, component: &str, message: &str) {
    let settings = settings();
    if level > settings.level {
        return;
    }
    let line = format_line(settings.format, SystemTime::now(), level, component, message);
    write_line(&line);
}

fn format_line(format: Format, time: SystemTime, level: Level, component: &str, message: &str) -> String {
    let now = humantime::format_rfc3339_millis(time);
    match format {
        Format::Text => format!("{now} {} {component}: {message}\n", level.label()),
        Format::Json => {
            let object = serde_json::json!({
                "time": now.to_string(),
                "level": level.label().to_ascii_lowercase(),
                "component": component,
                "message": message,
            });
            format!("{object}\n")
        }
    }
}

// Formatted first and written with one call: standard error is unbuffered, so `writeln!`
// on it would cost a system call per piece, and one write keeps lines from different
// threads whole.
#[cfg(not(test))]
fn write_line(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

// In unit tests through `eprint!`, which the test harness captures: a test that provokes
// an error on purpose shows its log only when it fails.
#[cfg(test)]
fn write_line(line: &str) {
    eprint!("{line}");
}

pub fn debug(component: &str, message: &str) {
    log(Level::Debug, component, message);
}

pub fn info(component: &str, message: &str) {
    log(Level::Info, component, message);
}

pub fn warn(component: &str, message: &str) {
    log(Level::Warn, component, message);
}

pub fn error(component: &str, message: &str) {
    log(Level::Error, component, message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(Level::parse("DEBUG"), Ok(Level::Debug));
        assert_eq!(Level::parse("warning"), Ok(Level::Warn));
        assert!(Level::parse("verbose").is_err());
        assert!(Level::Error < Level::Warn && Level::Warn < Level::Info && Level::Info < Level::Debug);
        assert_eq!(Format::parse("json"), Ok(Format::Json));
        assert!(Format::parse("xml").is_err());
    }

    #[test]
    fn json_lines_are_one_object_each() {
        let line = format_line(Format::Json, SystemTime::UNIX_EPOCH, Level::Warn, "datanode-1", "a \"quoted\"\nline");
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1, "{line:?}");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["level"], "warn");
        assert_eq!(value["component"], "datanode-1");
        assert_eq!(value["message"], "a \"quoted\"\nline");
        assert_eq!(value["time"], "1970-01-01T00:00:00.000Z");
    }
}

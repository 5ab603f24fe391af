//! Operator-facing log lines on standard error: a UTC timestamp, a level, the component
//! that speaks (`master`, `datanode-1`, ..) and one sentence. Deliberately tiny: a line per
//! event is all the servers need, and journald or `docker logs` collects standard error.

use std::io::Write;
use std::time::SystemTime;

fn line(level: &str, component: &str, message: &str) {
    let now = humantime::format_rfc3339_millis(SystemTime::now());
    // Formatted first and written with one call: standard error is unbuffered, so
    // `writeln!` on it would cost a system call per piece, and one write keeps lines
    // from different threads whole.
    let line = format!("{now} {level} {component}: {message}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

pub fn info(component: &str, message: &str) {
    line("INFO", component, message);
}

pub fn warn(component: &str, message: &str) {
    line("WARN", component, message);
}

pub fn error(component: &str, message: &str) {
    line("ERROR", component, message);
}

//! Operator-facing log lines on standard error: a UTC timestamp, a level, the component
//! that speaks (`master`, `datanode-1`, ..) and one sentence. Deliberately tiny: a line per
//! event is all the servers need, and journald or `docker logs` collects standard error.

use std::io::Write;
use std::time::SystemTime;

fn line(level: &str, component: &str, message: &str) {
    let now = humantime::format_rfc3339_millis(SystemTime::now());
    // One locked write per line keeps lines from different threads whole.
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{now} {level} {component}: {message}");
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

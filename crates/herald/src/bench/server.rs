//! Readings of the server under test and of the load generator itself: CPU time (utime +
//! stime from `/proc/<pid>/stat`) and resident memory (`VmRSS` from `/proc/<pid>/status`).
//! Without `--server-pid`, the server's `GET /api/v1/stats` answer is searched for numbers
//! that look like RSS or CPU time (best effort; see [`ServerProbe::rss_kb`]).

use herald_client::Api;
use serde_json::Value;

/// CPU seconds (user + system) of `/proc/<pid>/stat` (`pid` may be `"self"`).
pub fn proc_cpu_seconds(pid: &str) -> Option<f64> {
    proc_cpu_split(pid).map(|(user, sys)| user + sys)
}

/// User and system CPU seconds of `/proc/<pid>/stat` (utime, stime).
pub fn proc_cpu_split(pid: &str) -> Option<(f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" that ends the command name; utime and stime are fields 14 and 15
    // of the whole line, i.e. indexes 11 and 12 after the name.
    let rest = &s[s.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let hz = herald_client::os::clock_ticks_per_second() as f64;
    Some((utime as f64 / hz, stime as f64 / hz))
}

/// `VmRSS` of `/proc/<pid>/status` in kB (`pid` may be `"self"`).
pub fn proc_rss_kb(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Where server readings come from.
pub struct ServerProbe {
    /// The server's PID, if given.
    pub pid: Option<u32>,
    /// The HTTP API with the admin key, for the stats fallback.
    pub api: Option<Api>,
}

impl ServerProbe {
    /// Server CPU seconds so far: from `/proc` with a PID, else from a stats field whose
    /// name mentions cpu (seconds, ms or µs by its suffix).
    pub async fn cpu_seconds(&self) -> Option<f64> {
        if let Some(pid) = self.pid {
            return proc_cpu_seconds(&pid.to_string());
        }
        let stats = self.stats().await?;
        find_scaled(
            &stats,
            "cpu",
            &[("_us", 1e-6), ("_ms", 1e-3), ("seconds", 1.0), ("_s", 1.0)],
        )
    }

    /// Server user and system CPU seconds so far (needs the PID).
    pub fn cpu_split(&self) -> Option<(f64, f64)> {
        proc_cpu_split(&self.pid?.to_string())
    }

    /// Server RSS in kB: from `/proc` with a PID, else from a stats field whose name mentions
    /// rss (bytes, kB or MB by its suffix).
    pub async fn rss_kb(&self) -> Option<u64> {
        if let Some(pid) = self.pid {
            return proc_rss_kb(&pid.to_string());
        }
        let stats = self.stats().await?;
        find_scaled(
            &stats,
            "rss",
            &[("bytes", 1.0 / 1024.0), ("_kb", 1.0), ("_mb", 1024.0)],
        )
        .map(|kb| kb.round() as u64)
    }

    /// The server's `GET /api/v1/stats` answer, if the API is reachable with the admin key.
    pub async fn stats(&self) -> Option<Value> {
        self.api.as_ref()?.stats().await.ok()
    }

    /// The `connections` number of the stats answer (searched at any depth).
    pub async fn connections(&self) -> Option<u64> {
        let stats = self.stats().await?;
        find_number(&stats, &|k| k == "connections")
    }
}

/// The first number (depth-first) under a key accepted by `pred`; `{"connections":{"current":
/// N}}`-style objects are looked into for `current`/`total`/`count`.
fn find_number(v: &Value, pred: &dyn Fn(&str) -> bool) -> Option<u64> {
    let obj = v.as_object()?;
    for (k, val) in obj {
        if pred(k) {
            if let Some(n) = val.as_u64() {
                return Some(n);
            }
            for inner in ["current", "open", "total", "count"] {
                if let Some(n) = val.get(inner).and_then(Value::as_u64) {
                    return Some(n);
                }
            }
        }
    }
    obj.values().find_map(|val| find_number(val, pred))
}

/// The first number under a key containing `word` and ending with one of the `units`
/// suffixes, multiplied by that unit's factor.
fn find_scaled(v: &Value, word: &str, units: &[(&str, f64)]) -> Option<f64> {
    let obj = v.as_object()?;
    for (k, val) in obj {
        let key = k.to_ascii_lowercase();
        if !key.contains(word) {
            continue;
        }
        if let (Some(n), Some((_, factor))) = (
            val.as_f64(),
            units.iter().find(|(suffix, _)| key.ends_with(suffix)),
        ) {
            return Some(n * factor);
        }
    }
    obj.values().find_map(|val| find_scaled(val, word, units))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stats_fallback_search() {
        let stats =
            json!({"connections": {"current": 7}, "process": {"rss_bytes": 2048, "cpu_ms": 1500}});
        assert_eq!(find_number(&stats, &|k| k == "connections"), Some(7));
        let rss = find_scaled(&stats, "rss", &[("bytes", 1.0 / 1024.0)]);
        assert_eq!(rss, Some(2.0));
        let cpu = find_scaled(&stats, "cpu", &[("_us", 1e-6), ("_ms", 1e-3)]);
        assert_eq!(cpu, Some(1.5));
    }

    #[test]
    fn own_process_readings() {
        assert!(proc_cpu_seconds("self").is_some());
        assert!(proc_rss_kb("self").is_some_and(|kb| kb > 0));
    }
}

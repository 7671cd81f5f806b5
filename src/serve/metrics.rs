//! Counters and gauges of the server, written for `/metrics` in Prometheus's
//! text format (names after vLLM's, with the `saescope:` prefix).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

#[derive(Default)]
pub struct Metrics {
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    /// Requests that ended, by `finish_reason` (`stop`, `length`, `cancelled`).
    finished: Mutex<BTreeMap<String, u64>>,
    /// Responses by route and status code.
    responses: Mutex<BTreeMap<(String, u16), u64>>,
    pub time_to_first_token: Histogram,
    pub time_per_output_token: Histogram,
    pub cache_moves: AtomicU64,
}

impl Metrics {
    pub fn finished(&self, reason: &str) {
        if let Ok(mut m) = self.finished.lock() {
            *m.entry(reason.to_string()).or_default() += 1;
        }
    }

    pub fn responded(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.responses.lock() {
            *m.entry((route.to_string(), status)).or_default() += 1;
        }
    }

    /// Everything, in Prometheus's text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, kind: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        };
        gauge(
            &mut out,
            "saescope:num_requests_running",
            "gauge",
            "Requests in the running batch.",
            &self.running,
        );
        gauge(
            &mut out,
            "saescope:num_requests_waiting",
            "gauge",
            "Requests waiting for a place in the batch.",
            &self.waiting,
        );
        gauge(
            &mut out,
            "saescope:prompt_tokens_total",
            "counter",
            "Prompt tokens processed.",
            &self.prompt_tokens,
        );
        gauge(
            &mut out,
            "saescope:generation_tokens_total",
            "counter",
            "Tokens generated.",
            &self.generation_tokens,
        );
        gauge(
            &mut out,
            "saescope:kv_cache_moves_total",
            "counter",
            "Times the running rows moved within the KV cache.",
            &self.cache_moves,
        );
        let _ = writeln!(
            out,
            "# HELP saescope:request_success_total Requests finished, by finish reason.\n# TYPE saescope:request_success_total counter"
        );
        if let Ok(m) = self.finished.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "saescope:request_success_total{{finished_reason=\"{reason}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP saescope:http_responses_total HTTP responses, by route and status.\n# TYPE saescope:http_responses_total counter"
        );
        if let Ok(m) = self.responses.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "saescope:http_responses_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        self.time_to_first_token.write(
            &mut out,
            "saescope:time_to_first_token_seconds",
            "Time from arrival to the first token.",
        );
        self.time_per_output_token.write(
            &mut out,
            "saescope:time_per_output_token_seconds",
            "Time between consecutive tokens of a request.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.generation_tokens.fetch_add(5, Ordering::Relaxed);
        m.finished("stop");
        m.finished("stop");
        m.responded("/v1/completions", 429);
        m.time_to_first_token.observe(0.02);
        m.time_to_first_token.observe(3.0);
        let text = m.render();
        assert!(
            text.contains("saescope:generation_tokens_total 5\n"),
            "{text}"
        );
        assert!(text.contains("saescope:request_success_total{finished_reason=\"stop\"} 2\n"));
        assert!(text.contains("route=\"/v1/completions\",status=\"429\"} 1\n"));
        assert!(text.contains("saescope:time_to_first_token_seconds_bucket{le=\"0.01\"} 0\n"));
        assert!(text.contains("saescope:time_to_first_token_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("saescope:time_to_first_token_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("saescope:time_to_first_token_seconds_count 2\n"));
    }
}

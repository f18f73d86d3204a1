//! Prometheus metrics (`GET /metrics`), one registry per server so tests can run
//! several servers in one process. Names follow the issue: `sd_queue_size`,
//! `sd_requests_running`, `sd_requests_total{dialect}`,
//! `sd_request_failures_total{reason}`, `sd_queue_duration_seconds`,
//! `sd_request_duration_seconds`, `sd_inference_duration_seconds{stage}`,
//! `sd_batch_size`.
//!
//! Accounting: every generation request that reaches a dialect's handler counts
//! once in `sd_requests_total`; it then either succeeds (one observation in
//! `sd_request_duration_seconds`) or fails once in `sd_request_failures_total`
//! with a `reason` (`queue_full`, `invalid_request`, `cancelled`, ...).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Failure reasons pre-registered so they show as 0 before the first failure.
const KNOWN_REASONS: [&str; 6] = [
    "queue_full",
    "invalid_request",
    "cancelled",
    "generation",
    "draining",
    "internal",
];

/// Bucket bounds for durations, from 10 ms to ~20 min.
const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 1200.0,
];

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    /// Jobs waiting in the queue.
    pub queue_size: IntGauge,
    /// Jobs in the batch on the worker.
    pub requests_running: IntGauge,
    /// Generation requests received, by dialect.
    pub requests_total: IntCounterVec,
    /// Generation requests that did not succeed, by reason.
    pub request_failures_total: IntCounterVec,
    /// Time from acceptance to the start of the job's batch.
    pub queue_duration_seconds: Histogram,
    /// Time from acceptance to success.
    pub request_duration_seconds: Histogram,
    /// Time per stage of a batch (`text_encoding`, `denoising`, `decoding`, `png_encoding`).
    pub inference_duration_seconds: HistogramVec,
    /// Jobs per UNet batch.
    pub batch_size: Histogram,
}

impl Metrics {
    /// Registers all metrics in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let queue_size = IntGauge::new("sd_queue_size", "Jobs waiting in the queue")?;
        let requests_running = IntGauge::new(
            "sd_requests_running",
            "Jobs in the batch running on the worker",
        )?;
        let requests_total = IntCounterVec::new(
            Opts::new("sd_requests_total", "Generation requests received"),
            &["dialect"],
        )?;
        let request_failures_total = IntCounterVec::new(
            Opts::new(
                "sd_request_failures_total",
                "Generation requests that did not succeed",
            ),
            &["reason"],
        )?;
        let queue_duration_seconds = Histogram::with_opts(
            HistogramOpts::new("sd_queue_duration_seconds", "Time jobs waited in the queue")
                .buckets(DURATION_BUCKETS.to_vec()),
        )?;
        let request_duration_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "sd_request_duration_seconds",
                "Time from acceptance to a successful result",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
        )?;
        let inference_duration_seconds = HistogramVec::new(
            HistogramOpts::new("sd_inference_duration_seconds", "Time per inference stage")
                .buckets(DURATION_BUCKETS.to_vec()),
            &["stage"],
        )?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("sd_batch_size", "Jobs per UNet batch")
                .buckets(vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0, 32.0]),
        )?;
        registry.register(Box::new(queue_size.clone()))?;
        registry.register(Box::new(requests_running.clone()))?;
        registry.register(Box::new(requests_total.clone()))?;
        registry.register(Box::new(request_failures_total.clone()))?;
        registry.register(Box::new(queue_duration_seconds.clone()))?;
        registry.register(Box::new(request_duration_seconds.clone()))?;
        registry.register(Box::new(inference_duration_seconds.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        for reason in KNOWN_REASONS {
            request_failures_total.with_label_values(&[reason]);
        }
        Ok(Self {
            registry,
            queue_size,
            requests_running,
            requests_total,
            request_failures_total,
            queue_duration_seconds,
            request_duration_seconds,
            inference_duration_seconds,
            batch_size,
        })
    }

    /// Counts one failed request.
    pub fn failure(&self, reason: &str) {
        self.request_failures_total
            .with_label_values(&[reason])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "could not encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_names_of_the_issue() {
        let m = Metrics::new().unwrap();
        m.requests_total.with_label_values(&["native"]).inc();
        m.inference_duration_seconds
            .with_label_values(&["denoising"])
            .observe(0.2);
        m.failure("queue_full");
        let text = m.render();
        for name in [
            "sd_queue_size",
            "sd_requests_running",
            "sd_requests_total{dialect=\"native\"} 1",
            "sd_request_failures_total{reason=\"queue_full\"} 1",
            "sd_queue_duration_seconds_bucket",
            "sd_request_duration_seconds_count",
            "sd_inference_duration_seconds_count{stage=\"denoising\"} 1",
            "sd_batch_size_bucket",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}

//! Prometheus metrics of the controller (names fixed; the chart documents them).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::reason::Reason;
use bundlecopy_engine::ProgressSnapshot;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// A Ready reason, e.g. `Unreachable`.
    pub reason: String,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are lower case on the wire
pub enum BlobAction {
    copied,
    mounted,
    skipped,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BlobLabels {
    pub action: BlobAction,
}

/// Every metric, registered in one registry; clone-cheap handles share their values.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// `bundlecopy_reconciles_total`
    pub reconciles: Counter,
    /// `bundlecopy_reconcile_failures_total{reason}`
    pub failures: Family<FailureLabels, Counter>,
    /// `bundlecopy_copy_duration_seconds`
    pub copy_duration: Histogram,
    /// `bundlecopy_copied_bytes_total`
    pub copied_bytes: Counter,
    /// `bundlecopy_blobs_total{action}`
    pub blobs: Family<BlobLabels, Counter>,
    /// `bundlecopy_copies_in_flight`
    pub copies_in_flight: Gauge,
    /// `bundlecopy_leader`: 1 while this process reconciles (the leader, or the only controller
    /// without leader election), 0 on a standby or before it starts.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bundlecopy");
        let reconciles = Counter::default();
        let failures = Family::<FailureLabels, Counter>::default();
        // 0.5 s to about 4.5 h: small bundles on loopback up to large ones across the internet.
        let copy_duration = Histogram::new(exponential_buckets(0.5, 2.0, 16));
        let copied_bytes = Counter::default();
        let blobs = Family::<BlobLabels, Counter>::default();
        let copies_in_flight = Gauge::default();
        let leader = Gauge::default();
        registry.register(
            "reconciles",
            "Reconciles of BundleCopy resources",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciles that ended with Ready False, by reason",
            failures.clone(),
        );
        registry.register_with_unit(
            "copy_duration",
            "Duration of bundle copies, finished or failed",
            Unit::Seconds,
            copy_duration.clone(),
        );
        registry.register(
            "copied_bytes",
            "Blob bytes streamed between registries",
            copied_bytes.clone(),
        );
        registry.register("blobs", "Blobs handled by copies, by action", blobs.clone());
        registry.register(
            "copies_in_flight",
            "Copies running now",
            copies_in_flight.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica reconciles (the leader, or the only one without leader election), 0 on a standby",
            leader.clone(),
        );
        // Pre-create the label sets so a scrape shows every series from the start.
        for action in [BlobAction::copied, BlobAction::mounted, BlobAction::skipped] {
            let _ = blobs.get_or_create(&BlobLabels { action });
        }
        Metrics {
            registry,
            reconciles,
            failures,
            copy_duration,
            copied_bytes,
            blobs,
            copies_in_flight,
            leader,
        }
    }

    pub fn record_failure(&self, reason: Reason) {
        self.failures
            .get_or_create(&FailureLabels {
                reason: reason.as_str().to_string(),
            })
            .inc();
    }

    /// Counts what a copy moved, from its final progress.
    pub fn record_copy(&self, seconds: f64, progress: &ProgressSnapshot) {
        self.copy_duration.observe(seconds);
        self.copied_bytes.inc_by(progress.bytes);
        let add = |action, count| {
            self.blobs
                .get_or_create(&BlobLabels { action })
                .inc_by(count);
        };
        add(BlobAction::copied, progress.copied);
        add(BlobAction::mounted, progress.mounted);
        add(BlobAction::skipped, progress.skipped);
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_documented_ones_and_values_move() {
        let metrics = Metrics::new();
        metrics.reconciles.inc();
        metrics.record_failure(Reason::AuthenticationFailed);
        metrics.copies_in_flight.inc();
        metrics.leader.set(1);
        metrics.record_copy(
            1.5,
            &ProgressSnapshot {
                copied: 3,
                mounted: 1,
                skipped: 2,
                bytes: 4096,
                ..Default::default()
            },
        );
        let text = metrics.encode();
        for line in [
            "bundlecopy_reconciles_total 1",
            "bundlecopy_reconcile_failures_total{reason=\"AuthenticationFailed\"} 1",
            "bundlecopy_copy_duration_seconds_count 1",
            "bundlecopy_copied_bytes_total 4096",
            "bundlecopy_blobs_total{action=\"copied\"} 3",
            "bundlecopy_blobs_total{action=\"mounted\"} 1",
            "bundlecopy_blobs_total{action=\"skipped\"} 2",
            "bundlecopy_copies_in_flight 1",
            "bundlecopy_leader 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}

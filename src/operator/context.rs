//! What every reconcile shares: the Kubernetes client, the event recorder, metrics, engine
//! settings, the copy slots, and per-object memory that does not belong in the status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use super::crd::{BundleCopyStatus, FIELD_MANAGER};
use super::metrics::Metrics;
use super::secrets;
use bundlecopy_engine::EngineSettings;

/// Errors that end a reconcile early; registry and Secret problems are not among them (they go
/// to the status).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("BundleCopy {0} has no namespace")]
    NoNamespace(String),
    #[error("writing the status failed: {0}")]
    PatchStatus(#[source] kube::Error),
    #[error("reading the BundleCopy failed: {0}")]
    ReadObject(#[source] kube::Error),
    #[error(transparent)]
    ReadSecret(Box<secrets::ReadError>),
    #[error("the controller is shutting down")]
    ShuttingDown,
}

/// Objects whose backoff and source-check times are remembered.
const MAX_REMEMBERED_OBJECTS: usize = 10_000;

/// Per-object memory that does not belong in the status.
#[derive(Debug, Default, Clone)]
struct ObjectMemory {
    /// Transient failures in a row, for the backoff.
    failures: u32,
    /// When the source was last resolved.
    last_source_check: Option<Timestamp>,
    /// The status this process last wrote, and the resourceVersion of the object it was
    /// computed from: a rerun that still sees that version in the cache (our own write's echo
    /// not yet arrived) starts from what was written, so it does not write it again.
    written: Option<(String, BundleCopyStatus)>,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub engine: EngineSettings,
    /// Bounds the copies that run at once (`--max-concurrent-copies`).
    pub copy_slots: Arc<Semaphore>,
    /// Bounds the copies that run at once against one registry (`--max-copies-per-registry`).
    pub registry_slots: RegistrySlots,
    /// How often a running copy reports progress in the status.
    pub progress_every: Duration,
    memory: Mutex<HashMap<String, ObjectMemory>>,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        engine: EngineSettings,
        max_concurrent_copies: usize,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            engine,
            copy_slots: Arc::new(Semaphore::new(max_concurrent_copies.max(1))),
            registry_slots: RegistrySlots::new(max_concurrent_copies),
            progress_every: Duration::from_secs(5),
            memory: Mutex::default(),
        }
    }

    /// At most `per_registry` copies at once against any one registry host.
    pub fn with_copies_per_registry(mut self, per_registry: usize) -> Self {
        self.registry_slots = RegistrySlots::new(per_registry);
        self
    }

    fn with_memory<T>(&self, key: &str, f: impl FnOnce(&mut ObjectMemory) -> T) -> T {
        // A poisoned lock only means another reconcile panicked mid-update of plain counters.
        let mut memory = self
            .memory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Entries of deleted objects are never removed one by one; bound the map instead (losing
        // a backoff count or a check time only costs one early retry or one extra HEAD).
        if memory.len() >= MAX_REMEMBERED_OBJECTS && !memory.contains_key(key) {
            memory.clear();
        }
        f(memory.entry(key.to_string()).or_default())
    }

    /// Counts a transient failure; returns the failures in a row.
    pub fn count_failure(&self, key: &str) -> u32 {
        self.with_memory(key, |m| {
            m.failures = m.failures.saturating_add(1);
            m.failures
        })
    }

    pub fn forget_failures(&self, key: &str) {
        self.with_memory(key, |m| m.failures = 0);
    }

    pub fn remember_source_check(&self, key: &str, at: Timestamp) {
        self.with_memory(key, |m| m.last_source_check = Some(at));
    }

    pub fn last_source_check(&self, key: &str) -> Option<Timestamp> {
        self.with_memory(key, |m| m.last_source_check)
    }

    pub fn remember_written(&self, key: &str, read_version: String, status: BundleCopyStatus) {
        self.with_memory(key, |m| m.written = Some((read_version, status)));
    }

    /// The status last written from the object at `read_version`, if that is the version seen
    /// now (the cache has not caught up with the write yet).
    pub fn written_since(&self, key: &str, read_version: &str) -> Option<BundleCopyStatus> {
        self.with_memory(key, |m| match &m.written {
            Some((version, status)) if version == read_version => Some(status.clone()),
            _ => None,
        })
    }
}

/// Identifies an object across reconciles (a re-created object starts afresh).
pub fn memory_key(object: &impl Resource) -> String {
    match object.uid() {
        Some(uid) => uid,
        None => format!(
            "{}/{}",
            object.namespace().unwrap_or_default(),
            object.name_any()
        ),
    }
}

/// One semaphore per registry host, made on first use: a copy holds a permit of its source's
/// and of its destination's registry while it runs.
pub struct RegistrySlots {
    per_registry: usize,
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl RegistrySlots {
    pub fn new(per_registry: usize) -> Self {
        RegistrySlots {
            per_registry: per_registry.max(1),
            slots: Mutex::default(),
        }
    }

    /// Waits for a permit of each distinct host, always in the same (sorted) order, so two
    /// copies never each hold what the other waits for.
    pub async fn acquire(&self, hosts: &[&str]) -> Result<Vec<OwnedSemaphorePermit>, AcquireError> {
        let mut hosts = hosts.to_vec();
        hosts.sort_unstable();
        hosts.dedup();
        let mut permits = Vec::with_capacity(hosts.len());
        for host in hosts {
            let semaphore = self
                .slots
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .entry(host.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_registry)))
                .clone();
            permits.push(semaphore.acquire_owned().await?);
        }
        Ok(permits)
    }
}

#[cfg(test)]
mod registry_slots_tests {
    use std::time::Duration;

    use crate::operator::context::RegistrySlots;

    #[tokio::test]
    async fn a_busy_registry_holds_back_its_copies_and_no_other() {
        let slots = RegistrySlots::new(1);
        let held = slots.acquire(&["b.example", "a.example"]).await.unwrap();
        assert_eq!(held.len(), 2);
        let same_host_twice = slots.acquire(&["c.example", "c.example"]).await.unwrap();
        assert_eq!(same_host_twice.len(), 1, "one host counts once");
        let waiting = slots.acquire(&["d.example", "b.example"]);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                .await
                .is_err(),
            "b.example is busy"
        );
        drop(held);
        assert_eq!(waiting.await.unwrap().len(), 2);
    }
}

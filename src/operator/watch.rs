//! The watch set-up: BundleCopies (one namespace or all), re-triggered by the Secrets they name,
//! each reconciled by `reconcile::reconcile`.

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Api, Client, ResourceExt};

use super::context::{Context, Error, memory_key};
use super::crd::BundleCopy;
use super::decide;
use super::reconcile;

/// After a failure to talk to the API server: back off like a transient registry error.
pub fn error_policy(
    object: Arc<DeserializeGuard<BundleCopy>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let failures = ctx.count_failure(&memory_key(object.as_ref()));
    let wait = decide::transient_backoff(failures, None);
    tracing::warn!(bundlecopy = %object.name_any(), %error, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// The BundleCopies in the Secret's namespace that name it (credentials, caSecretRef or
/// proxySecretRef).
pub fn bundle_copies_using(
    store: &Store<DeserializeGuard<BundleCopy>>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<DeserializeGuard<BundleCopy>>> {
    let name = secret.name_any();
    let namespace = secret.namespace();
    store
        .state()
        .iter()
        .filter(|stored| {
            stored.namespace() == namespace
                && stored
                    .0
                    .as_ref()
                    .is_ok_and(|bundle| refers_to_secret(bundle, &name))
        })
        .map(|stored| ObjectRef::from_obj(stored.as_ref()))
        .collect()
}

pub fn refers_to_secret(bundle: &BundleCopy, secret: &str) -> bool {
    [&bundle.spec.source, &bundle.spec.destination]
        .iter()
        .any(|endpoint| {
            endpoint.credentials.iter().any(|c| c.name == secret)
                || endpoint
                    .ca_secret_ref
                    .as_ref()
                    .is_some_and(|r| r.name == secret)
                || endpoint
                    .proxy_secret_ref
                    .as_ref()
                    .is_some_and(|r| r.name == secret)
        })
}

/// One controller: BundleCopies of one namespace (or all), re-triggered by their Secrets.
/// Status-only changes do not trigger it (generation predicate): our own status writes would
/// otherwise bypass the backoff after a failure.
pub fn controller_stream(
    client: Client,
    namespace: Option<String>,
    ctx: Arc<Context>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl futures_util::Stream<Item = ()> + Send {
    // Secrets are watched by metadata only: their data is never needed to map them.
    // Each BundleCopy is deserialized on its own: one that does not match the types (stored
    // under an older CRD) is reconciled as InvalidSpec instead of failing every list of the watch.
    let (bundles, secrets): (
        Api<DeserializeGuard<BundleCopy>>,
        Api<PartialObjectMeta<Secret>>,
    ) = match namespace.as_deref() {
        Some(namespace) => (
            Api::namespaced(client.clone(), namespace),
            Api::namespaced(client.clone(), namespace),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (reader, writer) = reflector::store();
    let bundle_stream = watcher(bundles, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let secret_stream = changed_objects(
        watcher(secrets, watcher::Config::default().any_semantic()).default_backoff(),
    );
    let store = reader.clone();
    let scope = namespace.unwrap_or_else(|| "all namespaces".to_string());
    Controller::for_stream(bundle_stream, reader)
        .watches_stream(secret_stream, move |secret| {
            bundle_copies_using(&store, &secret)
        })
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, error_policy, ctx)
        .map(move |result| match result {
            Ok((object, action)) => tracing::debug!(%object, ?action, "reconciled"),
            Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
                tracing::debug!(%object, "object is gone")
            }
            Err(error) => tracing::warn!(scope = %scope, %error, "controller"),
        })
}

/// The objects a watch reports changed, without its first listing: at start-up every BundleCopy
/// is reconciled anyway, and a second trigger from its Secret would run a failed object twice in
/// a row. After a re-list, listed objects count as changed (the watch may have missed a change).
fn changed_objects<K>(
    events: impl futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
) -> impl futures_util::Stream<Item = Result<K, watcher::Error>> {
    let mut first_list_done = false;
    events.filter_map(move |event| {
        let changed = match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::Delete(object)) => Some(Ok(object)),
            Ok(watcher::Event::InitApply(object)) if first_list_done => Some(Ok(object)),
            Ok(watcher::Event::InitDone) => {
                first_list_done = true;
                None
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => None,
            Err(error) => Some(Err(error)),
        };
        std::future::ready(changed)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(namespace: &str, source_secret: &str, ca: Option<&str>) -> BundleCopy {
        let mut bundle: BundleCopy = serde_json::from_value(serde_json::json!({
            "apiVersion": "bundlecopy.dev/v1alpha1", "kind": "BundleCopy",
            "metadata": {"name": format!("b-{source_secret}"), "namespace": namespace},
            "spec": {
                "source": {"reference": "localhost:5001/a:v1", "credentials": [{"name": source_secret}]},
                "destination": {"reference": "localhost:5002/team"},
            }
        }))
        .unwrap();
        if let Some(ca) = ca {
            bundle.spec.destination.ca_secret_ref = Some(crate::operator::crd::CaSecretReference {
                name: ca.into(),
                key: "ca.crt".into(),
            });
        }
        bundle
    }

    #[test]
    fn secrets_map_to_the_bundle_copies_that_name_them() {
        let (reader, mut writer) = reflector::store::<DeserializeGuard<BundleCopy>>();
        let mut proxied = bundle("team-a", "third", None);
        proxied.spec.source.proxy_secret_ref = Some(crate::operator::crd::SecretReference {
            name: "corp-proxy".into(),
        });
        for object in [
            bundle("team-a", "pull", None),
            bundle("team-a", "other", Some("corp-ca")),
            bundle("team-b", "pull", None),
            proxied,
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(object))));
        }
        // An object that does not deserialize names no Secret we can know of.
        let malformed: DeserializeGuard<BundleCopy> = serde_json::from_value(serde_json::json!({
            "apiVersion": "bundlecopy.dev/v1alpha1", "kind": "BundleCopy",
            "metadata": {"name": "broken", "namespace": "team-a"},
            "spec": {"source": {"reference": 5, "credentials": [{"name": "pull"}]}}
        }))
        .unwrap();
        assert!(malformed.0.is_err());
        writer.apply_watcher_event(&watcher::Event::Apply(malformed));
        let secret = |namespace: &str, name: &str| PartialObjectMeta::<Secret> {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let names = |refs: Vec<ObjectRef<DeserializeGuard<BundleCopy>>>| {
            let mut names: Vec<String> = refs
                .iter()
                .map(|r| format!("{}/{}", r.namespace.clone().unwrap_or_default(), r.name))
                .collect();
            names.sort();
            names
        };
        assert_eq!(
            names(bundle_copies_using(&reader, &secret("team-a", "pull"))),
            ["team-a/b-pull"]
        );
        assert_eq!(
            names(bundle_copies_using(&reader, &secret("team-a", "corp-ca"))),
            ["team-a/b-other"]
        );
        assert_eq!(
            names(bundle_copies_using(
                &reader,
                &secret("team-a", "corp-proxy")
            )),
            ["team-a/b-third"]
        );
        assert!(bundle_copies_using(&reader, &secret("team-b", "corp-proxy")).is_empty());
        assert!(bundle_copies_using(&reader, &secret("team-c", "pull")).is_empty());
        assert!(bundle_copies_using(&reader, &secret("team-a", "unrelated")).is_empty());
    }

    /// A Secret watch's first listing triggers nothing (every BundleCopy is reconciled at
    /// start-up anyway; a second trigger ran a failed object twice in a row); changes, deletions
    /// and later re-listings do.
    #[tokio::test]
    async fn the_first_listing_of_a_watch_is_not_a_change() {
        let named = |name: &str| PartialObjectMeta::<Secret> {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let events = vec![
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(named("listed-at-start"))),
            Ok(watcher::Event::InitDone),
            Ok(watcher::Event::Apply(named("changed"))),
            Ok(watcher::Event::Delete(named("deleted"))),
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(named("listed-again"))),
            Ok(watcher::Event::InitDone),
        ];
        let changed: Vec<String> = changed_objects(futures_util::stream::iter(events))
            .map(|object| object.map(|o| o.metadata.name.unwrap_or_default()))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(changed, ["changed", "deleted", "listed-again"]);
    }
}

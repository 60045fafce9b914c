//! The watch set-up of BundleMirrors: each mirror is reconciled on a change of its spec, when a
//! BundleCopy it owns changes (so its status follows its children), and every interval.

use std::sync::Arc;

use futures_util::StreamExt;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client};

use super::api::BundleMirror;
use super::reconcile::{self, MirrorContext};
use crate::operator::crd::BundleCopy;

/// One mirror controller for one namespace (or all).
pub fn mirror_stream(
    client: Client,
    namespace: Option<String>,
    ctx: Arc<MirrorContext>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl futures_util::Stream<Item = ()> + Send {
    let (mirrors, copies): (Api<BundleMirror>, Api<BundleCopy>) = match namespace.as_deref() {
        Some(namespace) => (
            Api::namespaced(client.clone(), namespace),
            Api::namespaced(client.clone(), namespace),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (reader, writer) = reflector::store();
    // Our own status writes do not trigger a reconcile (generation predicate); the children's do.
    let mirror_stream = watcher(mirrors, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let children = watcher::Config::default()
        .labels(super::api::MIRROR_LABEL)
        .any_semantic();
    let scope = namespace.unwrap_or_else(|| "all namespaces".to_string());
    Controller::for_stream(mirror_stream, reader)
        .owns(copies, children)
        .with_config(ControllerConfig::default().concurrency(2))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .map(move |result| match result {
            Ok((object, action)) => tracing::debug!(%object, ?action, "mirror reconciled"),
            Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
                tracing::debug!(%object, "mirror is gone")
            }
            Err(error) => tracing::warn!(scope = %scope, %error, "mirror controller"),
        })
}

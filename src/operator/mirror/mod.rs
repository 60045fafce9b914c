//! BundleMirror: one BundleCopy per selected tag of a source repository, kept in step with the
//! repository's tags. `api` is the resource, `plan` the pure middle of its reconcile,
//! `reconcile` the I/O around it and `watch` its controller.

pub mod api;
pub mod plan;
pub mod reconcile;
pub mod watch;

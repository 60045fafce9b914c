//! The controller's tests, by subject, all against the one fake API server of
//! `support::fake_api` (real HTTP on loopback). In-process: `reconcile` (one reconcile's exact API
//! requests, in order, from the server's log; real registries behind the copy) and `watch` (the
//! controller loop: which watch events start a reconcile). As processes (the real `bundlecopy
//! controller` binary): `process` (start-up, readiness, SIGTERM), `leader` (leader election
//! between real controllers), `restart` (a controller killed mid-copy), `stalled` (a registry
//! that stops answering), `malformed` (objects that do not deserialize), `mirror` (a BundleMirror
//! and its children), `proxy` (proxySecretRef through a real forward proxy, and a cloud `provider`) and `scale` (1,000
//! BundleCopies).

mod leader;
mod malformed;
mod mirror;
mod process;
mod proxy;
mod reconcile;
mod restart;
mod scale;
mod stalled;
mod watch;

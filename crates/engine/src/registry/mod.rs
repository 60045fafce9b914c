//! The registry client. Layers, bottom first, each its own module: `transport` (plain HTTP or
//! HTTPS, the HTTP client, transport errors), `retry` (the one retry policy) applied by `http`
//! (one origin, requests), `auth` (challenges, credentials, token scopes), and on top the
//! operations a copy needs: `manifests`, `blobs` (with `verify`, the checking stream), `tags`
//! and `referrers` (the OCI 1.1 referrers API). The copy
//! plan sees only `Registry`'s operations: no scope, token or retry. Credentials are only ever
//! sent to the registry's own origin (never to a redirect target).

pub mod auth;
pub mod blobs;
pub mod client;
pub mod http;
pub mod manifests;
pub mod referrers;
pub mod response;
pub mod retry;
pub mod tags;
pub mod transport;

pub use auth::Access;
pub use blobs::{BlobAction, BlobRef, Presence};
pub use client::Registry;
pub use manifests::{Manifest, Pushed};
pub use retry::RetryPolicy;

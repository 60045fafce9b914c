//! The one integration-test binary of bundlecopy. Every module here runs against real registries
//! started by `support` (Debian's `docker-registry`), never against a mocked registry client.

mod support;

mod chart;
mod copy;
mod dockerfile;
mod harness_smoke;

//! The one integration-test binary of bundlecopy. Every module here runs against real registries
//! started by `support` (Debian's `docker-registry`), never against a mocked registry client.

mod support;

mod copy;
mod harness_smoke;
mod controller;
mod e2e;
mod controller_loop;

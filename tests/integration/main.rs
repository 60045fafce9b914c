//! The one integration-test binary of bundlecopy. Every module here runs against real registries
//! started by `support` (Debian's `docker-registry`), never against a mocked registry client.

mod support;

mod airgap;
mod architecture;
mod bad_input;
mod chart;
mod cloud;
mod controller;
mod copy;
mod crd_rules;
mod dockerfile;
mod e2e;
mod faults;
mod harness_smoke;
mod proxies;
mod referrers;
mod security;
mod signed;
mod tags;
mod upload_race;

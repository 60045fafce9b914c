//! The registry client of one repository: transport (`transport`), retries (`retry`, applied in
//! `http`) and authentication (`auth`) stacked under the operations of the distribution API that
//! a copy needs (`manifests`, `blobs`).

use url::Url;

use super::auth::{Access, Authenticated};
use super::http::Endpoint;
use super::retry::RetryPolicy;
use super::transport::{Transport, build_client, choose_transport, proxies_for};
use crate::error::{CopyError, Side};
use crate::reference::Reference;
use crate::settings::{EndpointOptions, EngineSettings};

/// A connected registry, bound to one repository and one kind of access.
pub struct Registry {
    pub(super) auth: Authenticated,
    pub(super) repository: String,
    /// Where blobs are mounted from (`Access::Push { mount_from }`).
    pub(super) mount_from: Option<String>,
}

impl Registry {
    /// Choose the transport, then (with credentials) ping `/v2/` to learn how the registry
    /// authenticates.
    pub async fn connect(
        side: Side,
        reference: &Reference,
        access: Access,
        endpoint: &EndpointOptions,
        settings: &EngineSettings,
    ) -> Result<Registry, CopyError> {
        // The pod's cloud identity first (when the endpoint has a provider; before any request,
        // so that a registry of another cloud is refused before it is contacted), then the
        // Docker config's matches.
        let cloud = crate::cloud::registry_credential(
            endpoint.provider,
            side,
            reference.registry(),
            settings,
        )
        .await?;
        let host = reference.api_host().to_string();
        let proxies = proxies_for(endpoint, settings);
        let transport = choose_transport(side, &host, &proxies, endpoint, settings).await?;
        let http = build_client(side, transport, &proxies, endpoint, settings)?;
        let base = Url::parse(&format!("{}://{host}/", transport.scheme())).map_err(|e| {
            CopyError::InvalidSpec(format!("registry host {host:?} cannot form a URL: {e}"))
        })?;
        let candidates: Vec<_> = cloud
            .into_iter()
            .chain(
                endpoint
                    .credentials
                    .lookup(reference.registry(), reference.repository()),
            )
            .collect();
        let repository = reference.repository().to_string();
        let scope = access.scope(&repository);
        let origin = Endpoint {
            side,
            name: reference.registry().to_string(),
            base,
            transport,
            http,
            proxies,
            policy: RetryPolicy {
                max_attempts: settings.max_attempts,
                max_retry_after: settings.max_retry_after,
            },
        };
        let registry = Registry {
            auth: Authenticated::new(origin, candidates, scope),
            repository,
            mount_from: match access {
                Access::Push { mount_from } => mount_from,
                Access::Pull => None,
            },
        };
        let proxy = registry
            .endpoint()
            .proxies
            .route(&registry.endpoint().base)
            .map(|route| format!("{} ({})", route.address, route.origin));
        tracing::debug!(side = %side, registry = %registry.name(), transport = transport.describe(),
            credentials = registry.auth.credential_count(), proxy = proxy.as_deref().unwrap_or("none"),
            "connecting");
        registry.auth.start().await?;
        Ok(registry)
    }

    /// The registry as the reference names it.
    pub fn name(&self) -> &str {
        &self.auth.endpoint.name
    }

    /// The repository this client is bound to.
    /// Whether blobs come here by mounting them from another repository of the registry.
    pub fn mounts(&self) -> bool {
        self.mount_from.is_some()
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn transport(&self) -> Transport {
        self.auth.endpoint.transport
    }

    pub(super) fn endpoint(&self) -> &Endpoint {
        &self.auth.endpoint
    }

    /// The retry policy of this registry's requests and blob transfers.
    pub fn policy(&self) -> &RetryPolicy {
        &self.auth.endpoint.policy
    }
}

//! The OCI 1.1 referrers API (`GET /v2/<name>/referrers/<digest>`): the image index of the
//! manifests whose `subject` is a digest, page by page as the registry's `Link` headers say.

use bytes::Bytes;

use super::client::Registry;
use crate::bundle::{MAX_MANIFEST_BYTES, OCI_INDEX};
use crate::error::CopyError;

/// More pages than this mean a registry that links in circles.
const MAX_REFERRER_PAGES: usize = 100;

impl Registry {
    /// The referrers of `digest` as the registry's referrers API lists them: the raw image index
    /// of each page. `None` when the registry answers 404, which the distribution spec reserves
    /// for registries without the API.
    pub async fn get_referrers(&self, digest: &str) -> Result<Option<Vec<Bytes>>, CopyError> {
        let repository = &self.repository;
        self.get_pages(
            &format!("v2/{repository}/referrers/{digest}"),
            OCI_INDEX,
            MAX_MANIFEST_BYTES,
            MAX_REFERRER_PAGES,
            &format!("the referrers list of {repository}@{digest}"),
        )
        .await
    }
}

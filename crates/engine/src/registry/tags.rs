//! Listing a repository's tags (`GET /v2/<name>/tags/list`), page by page as the registry's
//! `Link` headers say; the paging serves the referrers API too.

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::client::Registry;
use super::response::read_limited;
use crate::error::CopyError;

/// Tags asked for per page (`n`); registries may answer with fewer and a `Link` to the next.
pub const TAGS_PAGE_SIZE: usize = 100;
/// A page of tags larger than this is not a tag list.
const MAX_TAGS_PAGE_BYTES: usize = 4 << 20;
/// More pages than this mean a registry that links in circles.
const MAX_TAG_PAGES: usize = 10_000;

#[derive(Deserialize)]
struct TagPage {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

impl Registry {
    /// Every tag of the repository, in the registry's order, following `Link: <…>; rel="next"`.
    /// A repository the registry does not know is `SourceNotFound`.
    pub async fn list_tags(&self) -> Result<Vec<String>, CopyError> {
        let repository = &self.repository;
        let pages = self
            .get_pages(
                &format!("v2/{repository}/tags/list?n={TAGS_PAGE_SIZE}"),
                "application/json",
                MAX_TAGS_PAGE_BYTES,
                MAX_TAG_PAGES,
                &format!("the tag list of {repository}"),
            )
            .await?
            .ok_or_else(|| CopyError::SourceNotFound {
                reference: format!("{}/{repository}", self.name()),
                detail: "the registry has no such repository".into(),
            })?;
        let mut tags = Vec::new();
        for bytes in pages {
            let page: TagPage = serde_json::from_slice(&bytes).map_err(|e| {
                self.bad_answer(
                    &format!("the tag list of {repository}"),
                    &format!("is not the JSON the distribution API defines: {e}"),
                )
            })?;
            tags.extend(page.tags.unwrap_or_default());
        }
        Ok(tags)
    }

    /// GET `path` and the pages its `Link: <…>; rel="next"` headers name (only on the registry's
    /// own origin), each body at most `limit` bytes: the bodies, or `None` when the first answer
    /// is 404. `what` names the listing in messages.
    pub(super) async fn get_pages(
        &self,
        path: &str,
        accept: &'static str,
        limit: usize,
        max_pages: usize,
        what: &str,
    ) -> Result<Option<Vec<Bytes>>, CopyError> {
        let mut url = self.endpoint().url(path)?;
        let mut pages = Vec::new();
        for _ in 0..max_pages {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
            let response = self
                .auth
                .send(self.policy(), Method::GET, &url, headers, None)
                .await?;
            let status = response.status();
            if status == StatusCode::NOT_FOUND && pages.is_empty() {
                return Ok(None);
            }
            if !status.is_success() {
                return Err(self
                    .endpoint()
                    .status_error(response, &format!("GET {what}"))
                    .await);
            }
            let next = next_page(response.headers());
            let bytes = read_limited(response, limit)
                .await
                .map_err(|e| self.bad_answer(what, &format!("could not be read: {e}")))?;
            pages.push(bytes);
            let Some(next) = next else {
                return Ok(Some(pages));
            };
            url = url.join(&next).map_err(|e| {
                self.bad_answer(
                    what,
                    &format!("has a Link header {next:?} that is not a URL: {e}"),
                )
            })?;
            if !self.endpoint().same_origin(&url) {
                return Err(self.bad_answer(
                    what,
                    &format!("sends its next page to another host ({url})"),
                ));
            }
        }
        Err(self.bad_answer(what, &format!("links more than {max_pages} pages")))
    }

    fn bad_answer(&self, what: &str, detail: &str) -> CopyError {
        self.endpoint()
            .registry_error(None, format!("{what} {detail}"))
    }
}

/// The target of `Link: <URL>; rel="next"`, if the header has one.
fn next_page(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::LINK)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|link| {
            let (target, params) = link.trim().split_once(';')?;
            let is_next = params.split(';').any(|param| {
                let param = param.trim().replace(' ', "");
                param == "rel=\"next\"" || param == "rel=next"
            });
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            is_next.then(|| target.to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::LINK, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn the_next_page_comes_from_the_link_header() {
        assert_eq!(
            next_page(&link(r#"</v2/app/tags/list?last=b&n=100>; rel="next""#)).as_deref(),
            Some("/v2/app/tags/list?last=b&n=100")
        );
        assert_eq!(
            next_page(&link(
                r#"<https://r.example/x>; rel="prev", </v2/a/tags/list?last=z>; rel=next"#
            ))
            .as_deref(),
            Some("/v2/a/tags/list?last=z")
        );
        assert_eq!(next_page(&link(r#"</v2/a>; rel="prev""#)), None);
        assert_eq!(next_page(&link("garbage")), None);
        assert_eq!(next_page(&HeaderMap::new()), None);
    }
}

//! Paging through a list of the API server: one page held at a time, whatever the size of the
//! cluster. Shared by the audit and the PolicyReport sync. Imports nothing of the crate.

use std::time::Duration;

use kube::Api;
use kube::api::{DynamicObject, ListParams};

/// Objects per page of every list trustgate makes (the audit, `check --cluster`, the
/// PolicyReport sync).
pub const PAGE_SIZE: u32 = 500;

/// A list that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// The API server answered with an error, or the connection failed.
    #[error(transparent)]
    Api(kube::Error),
    /// kube's client waits for an answer forever; the caller chose to wait this long per page.
    #[error("no answer to a list page within {0:?}")]
    Timeout(Duration),
}

/// Lists every object of `api`, `params.limit` at a time, handing each page's objects to
/// `visit` (one page is held at a time). With `timeout`, each page is abandoned after it.
pub async fn each_page(
    api: &Api<DynamicObject>,
    mut params: ListParams,
    timeout: Option<Duration>,
    mut visit: impl FnMut(&[DynamicObject]),
) -> Result<(), PageError> {
    loop {
        let list = api.list(&params);
        let page = match timeout {
            Some(limit) => tokio::time::timeout(limit, list).await.map_err(|_| PageError::Timeout(limit))?,
            None => list.await,
        }
        .map_err(PageError::Api)?;
        visit(&page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
}

//! Paging through a list of the API server: one page held at a time, whatever the size of the
//! cluster. Shared by the audit and the PolicyReport sync.

/// Objects per page of every list trustgate makes (the audit, `check --cluster`, the
/// PolicyReport sync).
pub const PAGE_SIZE: u32 = 500;

use kube::Api;
use kube::api::{DynamicObject, ListParams};

/// Lists every object of `api`, `params.limit` at a time, handing each page's objects to
/// `visit` (one page is held at a time).
pub async fn each_page(
    api: &Api<DynamicObject>,
    mut params: ListParams,
    mut visit: impl FnMut(&[DynamicObject]),
) -> Result<(), kube::Error> {
    loop {
        let page = api.list(&params).await?;
        visit(&page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
}

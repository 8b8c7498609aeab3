//! `/api/v1/tags`: Mailpit's tag endpoints. Setting a message's tags tells the page with an
//! `update` event (`{"ID", "Tags"}`), renaming and deleting a tag with `prune`, as Mailpit does.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::Inbox;
use super::api::{ApiError, ok};
use super::id::InboxId;
use super::request::{json_body, message_ids};
use super::tags::{clean, renamed};

/// Every tag in use, with how many messages carry it (summaries loaded first).
pub async fn counts(inbox: &Inbox) -> BTreeMap<String, usize> {
    inbox.store.wait_loaded().await;
    let view = inbox.tags.snapshot();
    view.counts(inbox.store.index().newest_first())
}

/// `GET /api/v1/tags`: every tag in use, sorted.
pub async fn list(State(inbox): State<Arc<Inbox>>) -> Response {
    let tags: Vec<String> = counts(&inbox).await.into_keys().collect();
    axum::Json(tags).into_response()
}

/// The body of `PUT /api/v1/tags` (keys in lowercase: see [`json_body`]).
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct SetTags {
    tags: Vec<String>,
    ids: Vec<String>,
}

/// `PUT /api/v1/tags` with `{"Tags": […], "IDs": […]}`: those messages get exactly those tags
/// (`[]` removes them all).
pub async fn set(State(inbox): State<Arc<Inbox>>, body: Bytes) -> Result<Response, ApiError> {
    let request: SetTags = json_body(&body)?;
    let ids: Vec<InboxId> = message_ids(&request.ids)?
        .into_iter()
        .filter(|id| inbox.store.index().get(id).is_some())
        .collect();
    let tags = inbox.tags.set(&ids, request.tags).await;
    for id in &ids {
        inbox.events.tags_updated(id, &tags);
    }
    Ok(ok())
}

/// The body of `PUT /api/v1/tags/{tag}`.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Rename {
    name: String,
}

/// `PUT /api/v1/tags/{tag}` with `{"Name": "…"}`: renames the tag on every message.
pub async fn rename(
    State(inbox): State<Arc<Inbox>>,
    Path(tag): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: Rename = json_body(&body)?;
    let to = clean(&request.name);
    if to.is_empty() {
        return Err(ApiError::bad(format!("invalid tag name: {}", request.name)));
    }
    if to == tag {
        return Ok(ok());
    }
    let in_use = counts(&inbox).await;
    let clash = |name: &String| name.eq_ignore_ascii_case(&to) && !name.eq_ignore_ascii_case(&tag);
    if in_use.keys().any(clash) {
        return Err(ApiError::bad(format!("tag already exists: {to}")));
    }
    change(&inbox, &tag, Some(&to)).await
}

/// `DELETE /api/v1/tags/{tag}`: removes the tag from every message (the messages stay).
pub async fn delete(
    State(inbox): State<Arc<Inbox>>,
    Path(tag): Path<String>,
) -> Result<Response, ApiError> {
    change(&inbox, &tag, None).await
}

/// Renames `from` to `to`, or removes it, on every message carrying it; `400` when none does.
async fn change(inbox: &Inbox, from: &str, to: Option<&str>) -> Result<Response, ApiError> {
    inbox.store.wait_loaded().await;
    let changed: Vec<(InboxId, Vec<String>)> = {
        let view = inbox.tags.snapshot();
        let index = inbox.store.index();
        index
            .newest_first()
            .filter_map(|e| renamed(&view.of(e), from, to).map(|tags| (e.id.clone(), tags)))
            .collect()
    };
    if changed.is_empty() {
        return Err(ApiError::bad(format!("tag not found: {from}")));
    }
    inbox.tags.record(changed).await;
    inbox.events.pruned();
    Ok(ok())
}

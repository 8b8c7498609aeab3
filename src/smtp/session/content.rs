//! What the end of DATA refuses before a message is handed over, whatever the relay mode: a
//! header section that readers would split into different fields (a bare CR), and a From the
//! authenticated user may not use.

use std::net::SocketAddr;
use std::sync::Arc;

use super::secure;
use crate::message::headers::check_line_endings;
use crate::message::{HEAD_LIMIT, Message};
use crate::smtp::auth::User;
use crate::smtp::reply::Reply;
use crate::status::Status;

/// The reply refusing `message`, or `None` when it may be handed over. Reads the head once, for
/// every check: a 35 MB body is not read again.
/// (A function of the parts it needs rather than a `&self` method: a shared borrow of the
/// session held across the read would need the session's stream to be `Sync`.)
pub(super) async fn refused(
    user: Option<&Arc<User>>,
    remote: SocketAddr,
    message: &Message,
) -> Option<Reply> {
    let head = match message.head(HEAD_LIMIT).await {
        Ok(head) => head,
        Err(err) => {
            tracing::error!(remote = %remote, %err, "cannot read the message head");
            let text = "cannot read the message, try again later";
            return Some(Reply::new(451, Status::SYSTEM_TEMPORARY, text));
        }
    };
    if let Err(err) = check_line_endings(&head) {
        // Before every rule that reads the headers: none of them can be trusted with it.
        tracing::warn!(remote = %remote, "message refused: {err}");
        return Some(Reply::new(550, Status::BAD_MESSAGE, err.to_string()));
    }
    secure::from_refused(user, &head)
}

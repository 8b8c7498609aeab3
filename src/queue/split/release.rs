//! What releasing a group of held transactions makes, whoever keeps the group: the spool's
//! splitter (groups in its memory) and the replicas' (groups in the database) both decide here,
//! so the two backends cannot disagree on a merged message, a dead letter's reason, or a
//! repetition.
//!
//! A group is released as one [`Merge`]: its record is the oldest transaction's stored decision
//! with the union of the envelopes and of the stored Bcc lists ([`Group::merged`]); complete, it
//! is queued; incomplete after `queue.split_window`, what was decided at accept
//! (`split.incomplete`) says whether it is queued once or made a dead letter.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::group::{Group, Outcome};
use super::{Routing, if_incomplete};
use crate::message::mailbox::mailbox_key;
use crate::message::recipient_rules::Provider;
use crate::queue::record::{Entry, IfIncomplete, Merge, Place};
use crate::queue::store::Store;

/// What the release of a group depends on besides the group: the window, and the accounts' rule
/// for a transaction held by version 1 (which did not store it).
pub(super) struct Rules {
    /// `queue.split_window`.
    pub window: Duration,
    /// The relay's accounts.
    pub routing: Arc<dyn Routing>,
}

/// A group released: the merge to record and carry out, and what it became.
pub(super) struct Release {
    /// The merge record.
    pub merge: Merge,
    outcome: Outcome,
}

impl Rules {
    /// The release of `group` at `now`. `earlier` is the last merge already made of the same
    /// message, if any (a dead letter's reason says so).
    pub fn release(&self, group: &Group, earlier: Option<&Merge>, now: SystemTime) -> Release {
        let mut outcome = match self.if_incomplete(group) {
            None | Some(IfIncomplete::Send) => Outcome::Queue,
            Some(IfIncomplete::Refuse) => Outcome::Dead(self.incomplete_reason(group, earlier)),
        };
        let mut entry = group.merged(&outcome, now);
        let limit = self.routing.upload_limit();
        if let Some(reason) = too_large(&entry, limit).filter(|_| outcome == Outcome::Queue) {
            outcome = Outcome::Dead(reason);
            entry = group.merged(&outcome, now);
        }
        let merge = Merge {
            entry,
            dead: outcome != Outcome::Queue,
            served: group.served(&outcome).into_iter().collect(),
            at: now,
        };
        Release { merge, outcome }
    }

    /// What to do with the group if it is incomplete (`None` when it is complete): what was
    /// decided when its oldest transaction was accepted, or for a transaction held by version 1
    /// (which did not store it) the account's setting now.
    fn if_incomplete(&self, group: &Group) -> Option<IfIncomplete> {
        if group.is_complete() {
            return None;
        }
        let first = &group.parts[0];
        let stored = first.split.as_ref().and_then(|split| split.incomplete);
        Some(
            stored.unwrap_or_else(|| {
                if_incomplete(self.routing.header_only_recipients(&first.account))
            }),
        )
    }

    fn incomplete_reason(&self, group: &Group, earlier: Option<&Merge>) -> String {
        let uncovered = group.uncovered();
        let message_id = group.parts[0]
            .split
            .as_ref()
            .map_or("", |s| s.message_id.as_str());
        let earlier = match earlier {
            Some(merge) => format!(
                " (other transactions of it arrived earlier and were released as {})",
                merge.entry.id
            ),
            None => String::new(),
        };
        format!(
            "split message <{message_id}> incomplete: within queue.split_window ({}) its {} \
             transaction(s) named {} of its {} header recipients{earlier}; never in an envelope: \
             {}. Refused by {table}.header_only_recipients = \"reject\" (the API would deliver \
             to them); set it to \"allow\" and run `smtp2gmail queue retry` on this message to send \
             it to every header recipient",
            humantime::format_duration(self.window),
            group.parts.len(),
            group.header.len() - uncovered.len(),
            group.header.len(),
            list(&uncovered),
            table = self.routing.upload_limit().0.table(),
        )
    }
}

impl Release {
    /// Logs what became of `group` once the release is carried out.
    pub fn log(&self, group: &Group) {
        let entry = &self.merge.entry;
        let message_id = entry.split.as_ref().map_or("", |s| s.message_id.as_str());
        let (id, parts, recipients) = (&entry.id, group.parts.len(), entry.rcpt_to.len());
        match &self.outcome {
            Outcome::Queue if group.is_complete() => tracing::info!(
                id,
                message_id,
                parts,
                recipients,
                "transactions of a split message merged"
            ),
            Outcome::Queue => tracing::warn!(
                id, message_id, parts, recipients,
                uncovered = %list(&group.uncovered()),
                "split message incomplete after queue.split_window: queued once \
                 (header_only_recipients = \"allow\")"
            ),
            Outcome::Dead(reason) => tracing::warn!(id, message_id, %reason, "dead letter"),
        }
    }
}

/// A merge of the same message (one of `merges`, the merges of the transaction's group) that
/// already includes this transaction or served every one of its recipients: the transaction
/// repeats it (the client sent it again after a lost 250).
pub(super) fn repeats<'a>(
    merges: impl IntoIterator<Item = &'a Merge>,
    part: &Entry,
) -> Option<&'a Merge> {
    merges.into_iter().find(|merge| {
        merge.parts().contains(&part.id)
            || part
                .rcpt_to
                .iter()
                .all(|a| merge.served.contains(&mailbox_key(a)))
    })
}

/// Drops a held transaction that repeats `merge` ([`repeats`]).
pub(super) async fn drop_repeat(store: &dyn Store, part: &Entry, merge: &Merge) {
    let (id, merged) = (&part.id, &merge.entry.id);
    // Gone already when it is itself part of that merge (loaded, then announced).
    match store.remove(Place::Held, id).await {
        Ok(true) => tracing::info!(
            id,
            merged,
            "transaction repeats a message already released; dropped"
        ),
        Ok(false) => {}
        Err(err) => tracing::error!(id, %err, "cannot remove a repeated transaction"),
    }
}

/// Why a merged message cannot go to Gmail, if it cannot: its Bcc, now naming the envelope-only
/// recipients of every transaction, takes the upload over Gmail's limit (each transaction was
/// checked with its own share before its 250).
fn too_large(merged: &Entry, (provider, limit): (Provider, u64)) -> Option<String> {
    let route = merged.route.as_ref()?;
    let upload: usize = route.upload.iter().map(|piece| piece.len()).sum();
    let violation = crate::message::recipient_rules::PolicyViolation::TooLarge {
        provider,
        limit,
        upload: upload as u64,
        received: merged.size,
    };
    (upload as u64 > limit).then(|| violation.to_string())
}

/// The first few addresses of a list, and how many more.
fn list(addresses: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = addresses
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if addresses.len() > SHOWN {
        text.push_str(&format!(" and {} more", addresses.len() - SHOWN));
    }
    text
}

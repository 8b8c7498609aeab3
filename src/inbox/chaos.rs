//! Mailpit's chaos triggers (`inbox.chaos`, as Mailpit's `--enable-chaos`): `GET`/`PUT
//! /api/v1/chaos` set, for the sender (`MAIL FROM`), each recipient (`RCPT TO`) and `AUTH`, an
//! SMTP error code and the percentage of commands answered with it, so that a test suite sees its
//! retry handling meet a real `451` or `550`. The SMTP session asks the inbox
//! as its [`Faults`](crate::smtp::faults::Faults); a refused recipient
//! is never part of a message, so nothing is captured for it.
//!
//! Off by default: then both routes answer `400 Chaos is not enabled`, as Mailpit does, and no
//! command ever fails.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::Inbox;
use super::api::ApiError;
use super::request::json_body;
use crate::smtp::faults::SessionStep;

/// One trigger: the reply code and how often, in percent, it is given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Trigger {
    /// The SMTP reply code, 400–599 (0 in a request: the step's default).
    #[serde(rename(serialize = "ErrorCode", deserialize = "errorcode"))]
    pub error_code: u16,
    /// The chance, 0–100 %, that a command is refused.
    #[serde(rename(serialize = "Probability", deserialize = "probability"))]
    pub probability: u8,
}

/// Mailpit's `ChaosTriggers`: one trigger per step. Keys are read whatever their case (see
/// [`json_body`]); a trigger left out of a `PUT` is reset to its default at 0 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Triggers {
    /// At `MAIL FROM`.
    #[serde(rename(serialize = "Sender", deserialize = "sender"))]
    pub sender: Trigger,
    /// At each `RCPT TO`.
    #[serde(rename(serialize = "Recipient", deserialize = "recipient"))]
    pub recipient: Trigger,
    /// At `AUTH`.
    #[serde(rename(serialize = "Authentication", deserialize = "authentication"))]
    pub authentication: Trigger,
}

impl Default for Triggers {
    /// Mailpit's defaults: 451, 451 and 535, never given.
    fn default() -> Self {
        Triggers {
            sender: Trigger {
                error_code: 451,
                probability: 0,
            },
            recipient: Trigger {
                error_code: 451,
                probability: 0,
            },
            authentication: Trigger {
                error_code: 535,
                probability: 0,
            },
        }
    }
}

impl Triggers {
    /// The triggers of a request: a code left at 0 takes the default; codes outside 400–599 and
    /// probabilities above 100 are refused with Mailpit's words.
    fn checked(mut self) -> Result<Triggers, String> {
        let defaults = Triggers::default();
        for (trigger, default) in [
            (&mut self.sender, defaults.sender),
            (&mut self.recipient, defaults.recipient),
            (&mut self.authentication, defaults.authentication),
        ] {
            if trigger.error_code == 0 {
                trigger.error_code = default.error_code;
            }
            if !(400..=599).contains(&trigger.error_code) {
                return Err("error code must be between 400 and 599".into());
            }
            if trigger.probability > 100 {
                return Err("probability must be between 0 and 100".into());
            }
        }
        Ok(self)
    }

    fn at(&self, step: SessionStep) -> Trigger {
        match step {
            SessionStep::Sender => self.sender,
            SessionStep::Recipient => self.recipient,
            SessionStep::Authentication => self.authentication,
        }
    }

    /// Whether any trigger can fire (the page shows chaos as active).
    pub fn active(&self) -> bool {
        [self.sender, self.recipient, self.authentication]
            .iter()
            .any(|t| t.probability > 0)
    }
}

/// The inbox's triggers; `None` when `inbox.chaos` is off.
pub struct Chaos {
    triggers: Option<Mutex<Triggers>>,
}

impl Chaos {
    /// Chaos as `inbox.chaos` says: available (every trigger at 0 %) or off.
    pub fn new(enabled: bool) -> Chaos {
        Chaos {
            triggers: enabled.then(|| Mutex::new(Triggers::default())),
        }
    }

    /// Whether the API may set triggers.
    pub fn enabled(&self) -> bool {
        self.triggers.is_some()
    }

    /// The current triggers, when enabled.
    pub fn triggers(&self) -> Option<Triggers> {
        let triggers = self.triggers.as_ref()?;
        Some(*triggers.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The code to answer at `step` with, when its trigger fires this time.
    pub fn fires(&self, step: SessionStep) -> Option<u16> {
        let trigger = self.triggers()?.at(step);
        // 0..100 is below the probability in `probability` cases out of 100.
        (fastrand::u8(0..100) < trigger.probability).then_some(trigger.error_code)
    }

    fn set(&self, triggers: Triggers) -> Option<Triggers> {
        let current = self.triggers.as_ref()?;
        *current.lock().unwrap_or_else(|e| e.into_inner()) = triggers;
        Some(triggers)
    }
}

fn not_enabled() -> ApiError {
    ApiError::bad("Chaos is not enabled")
}

/// `GET /api/v1/chaos`
pub async fn get(State(inbox): State<Arc<Inbox>>) -> Result<Response, ApiError> {
    let triggers = inbox.chaos.triggers().ok_or_else(not_enabled)?;
    Ok(axum::Json(triggers).into_response())
}

/// `PUT /api/v1/chaos`: replaces every trigger (those left out are reset), answers the result.
pub async fn put(State(inbox): State<Arc<Inbox>>, body: Bytes) -> Result<Response, ApiError> {
    if !inbox.chaos.enabled() {
        return Err(not_enabled());
    }
    let triggers: Triggers = json_body(&body)?;
    let triggers = triggers.checked().map_err(ApiError::bad)?;
    let set = inbox.chaos.set(triggers).ok_or_else(not_enabled)?;
    tracing::info!(
        sender = ?set.sender,
        recipient = ?set.recipient,
        authentication = ?set.authentication,
        "inbox chaos triggers set"
    );
    Ok(axum::Json(set).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_take_defaults_and_are_checked() {
        let parse = |body: &str| json_body::<Triggers>(body.as_bytes()).map_err(|e| e.1);
        let empty = parse("{}").unwrap().checked().unwrap();
        assert_eq!(empty, Triggers::default());
        let one = parse(r#"{"Recipient": {"ErrorCode": 550, "Probability": 100}}"#)
            .unwrap()
            .checked()
            .unwrap();
        assert_eq!(one.recipient.error_code, 550);
        assert_eq!(one.sender, Triggers::default().sender);
        let bad_code = parse(r#"{"sender": {"errorcode": 250, "probability": 5}}"#).unwrap();
        assert_eq!(
            bad_code.checked().unwrap_err(),
            "error code must be between 400 and 599"
        );
        let bad_chance = parse(r#"{"Sender": {"Probability": 101}}"#).unwrap();
        assert_eq!(
            bad_chance.checked().unwrap_err(),
            "probability must be between 0 and 100"
        );
        assert!(parse(r#"{"Sender": {"Probability": -1}}"#).is_err());
        assert!(parse(r#"{"Chaos": {}}"#).is_err());
    }

    #[test]
    fn answers_use_mailpit_names_and_fire_at_their_chance() {
        let json = serde_json::to_value(Triggers::default()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "Sender": {"ErrorCode": 451, "Probability": 0},
                "Recipient": {"ErrorCode": 451, "Probability": 0},
                "Authentication": {"ErrorCode": 535, "Probability": 0},
            })
        );
        let chaos = Chaos::new(true);
        assert_eq!(chaos.fires(SessionStep::Recipient), None);
        let mut always = Triggers::default();
        always.recipient.probability = 100;
        chaos.set(always);
        assert!((0..50).all(|_| chaos.fires(SessionStep::Recipient) == Some(451)));
        assert!((0..50).all(|_| chaos.fires(SessionStep::Sender).is_none()));
        assert!(Chaos::new(false).fires(SessionStep::Recipient).is_none());
    }
}

//! The JSON bodies of the API (`DELETE`/`PUT /api/v1/messages`, release), read as Mailpit reads
//! them — Go's decoder matches a key to a field whatever its case, so `{"ids": […]}` names the
//! `IDs` — with one difference: a key that names no field is an error. Ignoring it, as Go does,
//! turns a misspelt `{"idz": […]}` into "no IDs", which means *every* message.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::api::ApiError;
use super::id::InboxId;

/// The body as `T`, whose fields are named in lowercase and which denies unknown fields. An
/// empty body is `{}`: clients send `DELETE` without one to mean all.
pub fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = match body.iter().all(u8::is_ascii_whitespace) {
        true => b"{}".as_slice(),
        false => body,
    };
    let object: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|err| ApiError::bad(format!("the body must be a JSON object: {err}")))?;
    let fields = lowercase_keys(object)?;
    serde_json::from_value(Value::Object(fields)).map_err(|err| {
        ApiError::bad(format!(
            "invalid request: {err} (keys are matched whatever their case)"
        ))
    })
}

/// The object with its keys in lowercase, and those of the objects it holds (`{"From": {"Email":
/// …}}` of a send), except the keys of [`DATA_KEYED`] maps, which are data, not field names.
fn lowercase_keys(object: Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let mut fields = Map::new();
    for (key, value) in object {
        let name = key.to_ascii_lowercase();
        let value = match value {
            Value::Object(inner) if !DATA_KEYED.contains(&name.as_str()) => {
                Value::Object(lowercase_keys(inner)?)
            }
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .map(|item| match item {
                        Value::Object(inner) => lowercase_keys(inner).map(Value::Object),
                        other => Ok(other),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            other => other,
        };
        if fields.insert(name, value).is_some() {
            return Err(ApiError::bad(format!(
                "the key {key:?} is given twice (keys are matched whatever their case)"
            )));
        }
    }
    Ok(fields)
}

/// Maps whose keys are data: the header fields of `POST /api/v1/send`.
const DATA_KEYED: &[&str] = &["headers"];

/// The `IDs` of a request, each checked: one that is not an id refuses the whole request, before
/// anything is changed.
pub fn message_ids(ids: &[String]) -> Result<Vec<InboxId>, ApiError> {
    ids.iter()
        .map(|id| InboxId::parse(id).map_err(|err| ApiError::bad(format!("IDs: {err}"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Ids {
        ids: Option<Vec<String>>,
        read: bool,
    }

    fn reason(body: &str) -> String {
        json_body::<Ids>(body.as_bytes()).unwrap_err().1
    }

    #[test]
    fn keys_match_whatever_their_case_and_unknown_keys_are_refused() {
        let ids = |body: &str| json_body::<Ids>(body.as_bytes()).ok();
        let some = Some(Ids {
            ids: Some(vec!["a".into()]),
            read: true,
        });
        assert_eq!(ids(r#"{"IDs": ["a"], "Read": true}"#), some);
        assert_eq!(ids(r#"{"ids": ["a"], "read": true}"#), some);
        assert_eq!(ids(" \n"), Some(Ids::default()));
        assert_eq!(ids(r#"{"IDs": null}"#), Some(Ids::default()));
        assert!(reason(r#"{"idz": ["a"]}"#).contains("unknown field `idz`"));
        assert!(reason(r#"{"IDs": ["a"], "ids": []}"#).contains("given twice"));
        assert!(reason(r#"["a"]"#).contains("must be a JSON object"));
        assert!(reason("{").contains("must be a JSON object"));
    }

    #[test]
    fn one_bad_id_refuses_the_request() {
        let ok = message_ids(&["a".into(), "b".into()]).map_err(|e| e.1);
        assert_eq!(ok.unwrap().len(), 2);
        let err = message_ids(&["a".into(), "../victim/token".into()]).unwrap_err();
        assert_eq!(err.0, axum::http::StatusCode::BAD_REQUEST);
        assert!(!err.1.contains("victim"));
    }
}

//! What the token endpoint's refusals mean, by `error_codes` (never by the text, which Microsoft
//! changes), and the fix an operator needs for each (microsoft.md, "Tokens").

use serde::Deserialize;

use super::{AppProof, EntraApp};
use crate::google::TokenError;

/// The identity platform's error body.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u64>,
}

/// AADSTS codes that pass by themselves: retry with backoff.
const TEMPORARY_CODES: [u64; 5] = [50033, 90006, 90024, 90033, 90090];

/// Classifies a refusal of the token endpoint at `token_uri` to `app`.
pub(super) fn classify(app: &EntraApp, token_uri: &str, body: &[u8]) -> TokenError {
    classify_with(token_uri, body, |code| fix(app, code))
}

/// Classifies a refusal of the token endpoint at `token_uri`; `fix` says what to do about an
/// AADSTS code that needs a person.
pub(super) fn classify_with(
    token_uri: &str,
    body: &[u8],
    fix: impl FnOnce(Option<u64>) -> String,
) -> TokenError {
    let Ok(body) = serde_json::from_slice::<ErrorBody>(body) else {
        return TokenError::Temporary {
            reason: format!("token endpoint {token_uri} answered without an OAuth error"),
        };
    };
    let code = body.error_codes.first().copied();
    let description = first_sentence(&body.error_description);
    let temporary = matches!(
        body.error.as_str(),
        "temporarily_unavailable" | "server_error"
    ) || code.is_some_and(|c| TEMPORARY_CODES.contains(&c));
    if temporary {
        return TokenError::Temporary {
            reason: format!(
                "token endpoint {token_uri} answered {}: {description}",
                body.error
            ),
        };
    }
    TokenError::Credentials {
        error: body.error,
        description,
        fix: fix(code),
    }
}

/// The certificate or key cannot sign: found before any request.
pub(super) fn unusable_certificate(app: &EntraApp, err: &super::CertificateError) -> TokenError {
    TokenError::Credentials {
        error: "invalid_certificate".to_string(),
        description: err.to_string(),
        fix: format!(
            "configure a PEM certificate and its RSA private key for app {} (certificate and \
             private_key in [microsoft])",
            app.client_id
        ),
    }
}

/// "AADSTS7000222: The provided client secret keys … are expired.\r\nTrace ID: …": the part
/// before the trace, correlation and time stamps, which differ on every answer.
fn first_sentence(description: &str) -> String {
    let line = description.lines().next().unwrap_or_default();
    line.split(" Trace ID:")
        .next()
        .unwrap_or(line)
        .trim()
        .to_string()
}

/// What to do about AADSTS `code` for `app`.
fn fix(app: &EntraApp, code: Option<u64>) -> String {
    let id = &app.client_id;
    let tenant = &app.tenant;
    let registration = format!("Entra admin center > App registrations > the app {id}");
    let replace_secret = match &app.proof {
        AppProof::Secret { source, .. } if source.starts_with("file:") => format!(
            "write the new value to {} (held mail is sent as soon as the file is read again, \
             within seconds; no restart)",
            &source["file:".len()..]
        ),
        AppProof::Secret { source, .. } => format!(
            "put the new value in {source} and restart, or point client_secret at a \"file:PATH\" \
             so that the next rotation needs no restart"
        ),
        AppProof::Certificate(certificate) => format!(
            "upload the certificate {} to the app, or configure a certificate it has",
            certificate.path.display()
        ),
    };
    match code {
        Some(7000222) => format!(
            "the client secret of app {id} has expired: create a new one ({registration} > \
             Certificates & secrets > New client secret) and {replace_secret}"
        ),
        Some(7000215) => format!(
            "the client secret is not a valid secret of app {id} (the secret's ID was given \
             instead of its value, or it was deleted): create a new one ({registration} > \
             Certificates & secrets) and {replace_secret}"
        ),
        Some(700016) | Some(7000012) => format!(
            "app {id} is not in tenant {tenant}: check tenant and client_id, or have an \
             administrator of {tenant} consent to the app"
        ),
        Some(90002) => format!(
            "tenant {tenant} does not exist: set tenant to the directory (tenant) id or a verified \
             domain such as contoso.onmicrosoft.com"
        ),
        Some(65001) | Some(500011) => format!(
            "the app has no admin consent for Microsoft Graph in tenant {tenant}: {registration} > \
             API permissions > add the application permission Mail.Send and \"Grant admin consent\""
        ),
        Some(700027) | Some(50012) => format!(
            "the certificate assertion was refused: {replace_secret}; check that this machine's \
             clock is right"
        ),
        Some(70011) => format!(
            "the scope {} is not valid for app {id}: report this as a bug in smtp2gmail",
            app.scope
        ),
        _ => format!(
            "check tenant, client_id and the credential ({app}); the AADSTS code is explained at \
             https://login.microsoftonline.com/error"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::google::Secret;

    fn app(source: &str) -> EntraApp {
        EntraApp {
            tenant: "contoso.onmicrosoft.com".into(),
            client_id: "11111111-2222-3333-4444-555555555555".into(),
            proof: AppProof::Secret {
                secret: Secret::new("fake-secret"),
                source: source.into(),
            },
            scope: super::super::GRAPH_SCOPE.into(),
        }
    }

    #[test]
    fn an_expired_secret_needs_a_person_and_says_where_the_new_one_goes() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000222: The provided client secret keys for app '1111' are expired. Trace ID: x Correlation ID: y","error_codes":[7000222]}"#;
        let TokenError::Credentials {
            error,
            description,
            fix,
        } = classify(&app("file:/run/secrets/m365"), "http://t", body)
        else {
            panic!("not a credentials error")
        };
        assert_eq!(error, "invalid_client");
        assert!(description.starts_with("AADSTS7000222"), "{description}");
        assert!(!description.contains("Trace ID"), "{description}");
        assert!(
            fix.contains("has expired") && fix.contains("/run/secrets/m365"),
            "{fix}"
        );
    }

    #[test]
    fn passing_trouble_is_temporary() {
        let body = br#"{"error":"temporarily_unavailable","error_description":"AADSTS90033: busy","error_codes":[90033]}"#;
        assert!(classify(&app("env:X"), "http://t", body).is_temporary());
        let consent = br#"{"error":"invalid_grant","error_description":"AADSTS65001: no consent","error_codes":[65001]}"#;
        let refused = classify(&app("env:X"), "http://t", consent);
        assert!(
            refused.fix().unwrap().contains("Grant admin consent"),
            "{refused}"
        );
    }
}

//! The OAuth client file (`client_secret_*.json`) that `authorize` starts from, and the loopback
//! redirect URI that client allows.

use std::path::{Path, PathBuf};

use oauth2::{AuthUrl, TokenUrl};
use serde_json::Value;

use super::AuthorizeError;
use crate::google::files::{self, Fields, Shape};
use crate::google::{DEFAULT_TOKEN_URI, Secret};

/// Google's authorization endpoint, for the rare client file without `auth_uri`.
const DEFAULT_AUTH_URI: &str = "https://accounts.google.com/o/oauth2/auth";

/// Which kind of OAuth client a file describes: it decides which redirect URIs Google accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientType {
    /// `installed`: a "Desktop app" client. Any `http://127.0.0.1:PORT/` works, unregistered.
    Installed,
    /// `web`: a "Web application" client. Only its registered redirect URIs work, exactly.
    Web,
}

/// An OAuth client as downloaded from the Google Cloud console. Its `auth_uri` and `token_uri`
/// are used as they are, which is also how tests point `authorize` at a fake Google.
#[derive(Debug, Clone)]
pub struct ClientSecretFile {
    pub(crate) path: PathBuf,
    pub(crate) client_type: ClientType,
    pub(crate) client_id: String,
    pub(crate) client_secret: Secret,
    pub(crate) auth_uri: AuthUrl,
    pub(crate) token_uri: TokenUrl,
    pub(crate) redirect_uris: Vec<String>,
}

/// Where the browser is sent back to, before the listener's port is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RedirectPlan {
    /// A desktop client: `http://127.0.0.1:PORT/` with whatever port we get (0 = any).
    AnyPort(u16),
    /// A web client: one registered loopback URI, used verbatim, on its own port and path.
    Registered {
        uri: String,
        port: u16,
        path: String,
    },
}

impl RedirectPlan {
    /// The port to listen on (0: let the system choose).
    pub(crate) fn port(&self) -> u16 {
        match self {
            RedirectPlan::AnyPort(port) | RedirectPlan::Registered { port, .. } => *port,
        }
    }

    /// The redirect URI and the path the redirect arrives on, once the listener has `bound` a port.
    pub(crate) fn resolve(&self, bound: u16) -> (String, String) {
        match self {
            RedirectPlan::AnyPort(_) => (format!("http://127.0.0.1:{bound}/"), "/".to_string()),
            RedirectPlan::Registered { uri, path, .. } => (uri.clone(), path.clone()),
        }
    }
}

impl ClientSecretFile {
    /// Reads a client secret file. Any other Google file (a token, a service account key) is
    /// refused with a message that says what it is and what to do with it instead.
    pub fn load(path: &Path) -> Result<ClientSecretFile, AuthorizeError> {
        let not_client = |what, hint| AuthorizeError::NotClientSecret {
            path: path.to_path_buf(),
            what,
            hint,
        };
        let Value::Object(map) = files::read_json(path)? else {
            return Err(not_client(
                "a JSON value that is not an object",
                UNKNOWN_HINT,
            ));
        };
        match files::shape(&map) {
            Shape::ClientSecret => {}
            Shape::TokenFile | Shape::AuthorizedUser => {
                return Err(not_client(
                    "a token file (it holds a refresh token)",
                    "it can be configured as [gmail] credentials as it is; to authorize again, \
                     pass the OAuth client file downloaded from the Google Cloud console \
                     (APIs & Services > Credentials), usually named client_secret_....json",
                ));
            }
            Shape::ServiceAccount => {
                return Err(not_client(
                    "a service account key",
                    "service accounts need no authorization in a browser: configure the key as \
                     [gmail] credentials and set up domain-wide delegation in the Google Admin \
                     console (see docs/google-cloud-setup.md)",
                ));
            }
            Shape::OtherType => {
                return Err(not_client(
                    "Google credentials of another type",
                    UNKNOWN_HINT,
                ));
            }
            Shape::Unknown => return Err(not_client("JSON of an unknown kind", UNKNOWN_HINT)),
        }
        let (client_type, client) = match (map.get("installed"), map.get("web")) {
            (Some(Value::Object(client)), _) => (ClientType::Installed, client),
            (_, Some(Value::Object(client))) => (ClientType::Web, client),
            _ => return Err(not_client("JSON of an unknown kind", UNKNOWN_HINT)),
        };
        let fields = Fields::new(path, client, key_error);
        Ok(ClientSecretFile {
            path: path.to_path_buf(),
            client_type,
            client_id: fields.required("client_id")?.to_string(),
            client_secret: Secret::new(fields.required("client_secret")?),
            auth_uri: AuthUrl::new(fields.uri("auth_uri", DEFAULT_AUTH_URI)?)
                .map_err(|_| fields.invalid("auth_uri", "is not a valid URL"))?,
            token_uri: TokenUrl::new(fields.uri("token_uri", DEFAULT_TOKEN_URI)?)
                .map_err(|_| fields.invalid("token_uri", "is not a valid URL"))?,
            redirect_uris: fields.redirect_uris()?,
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Desktop app or web application.
    pub fn client_type(&self) -> ClientType {
        self.client_type
    }

    /// The OAuth client id (not a secret; it appears in the authorization URL).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Chooses the redirect. A desktop client takes any loopback port; a web client must use
    /// one of its registered loopback URIs exactly (the one on `port`, when a port is asked for).
    pub(crate) fn redirect_plan(&self, port: u16) -> Result<RedirectPlan, AuthorizeError> {
        if self.client_type == ClientType::Installed {
            return Ok(RedirectPlan::AnyPort(port));
        }
        let loopback: Vec<RedirectPlan> = self
            .redirect_uris
            .iter()
            .filter_map(|uri| registered_loopback(uri))
            .collect();
        let chosen = loopback
            .iter()
            .find(|plan| port == 0 || plan.port() == port);
        chosen.cloned().ok_or_else(|| {
            let uris = if self.redirect_uris.is_empty() {
                "none".to_string()
            } else {
                self.redirect_uris.join(", ")
            };
            if loopback.is_empty() {
                AuthorizeError::NoLoopbackRedirect {
                    path: self.path.clone(),
                    uris,
                }
            } else {
                AuthorizeError::PortNotRegistered {
                    path: self.path.clone(),
                    port,
                    uris,
                }
            }
        })
    }
}

const UNKNOWN_HINT: &str = "download the OAuth client of type \"Desktop app\" from the Google \
     Cloud console (APIs & Services > Credentials); the file has an \"installed\" key";

/// A registered `http://127.0.0.1[:port]/path` or `http://localhost[:port]/path`.
fn registered_loopback(uri: &str) -> Option<RedirectPlan> {
    let url = url::Url::parse(uri).ok()?;
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost"));
    (url.scheme() == "http" && loopback && url.query().is_none()).then(|| {
        RedirectPlan::Registered {
            uri: uri.to_string(),
            port: url.port_or_known_default().unwrap_or(80),
            path: url.path().to_string(),
        }
    })
}

fn key_error(path: PathBuf, key: &'static str, problem: &'static str) -> AuthorizeError {
    AuthorizeError::ClientKey { path, key, problem }
}

/// The keys of the `installed` or `web` object that only a client secret file has.
impl Fields<'_, AuthorizeError> {
    fn uri(&self, key: &'static str, default: &str) -> Result<String, AuthorizeError> {
        Ok(self.optional(key)?.unwrap_or(default).to_string())
    }

    fn redirect_uris(&self) -> Result<Vec<String>, AuthorizeError> {
        match self.map().get("redirect_uris") {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.invalid("redirect_uris", "must be a list of strings")),
            Some(_) => Err(self.invalid("redirect_uris", "must be a list of strings")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(uris: &[&str]) -> ClientSecretFile {
        ClientSecretFile {
            path: "client.json".into(),
            client_type: ClientType::Web,
            client_id: "id".into(),
            client_secret: Secret::new("secret"),
            auth_uri: AuthUrl::new(DEFAULT_AUTH_URI.into()).unwrap(),
            token_uri: TokenUrl::new(DEFAULT_TOKEN_URI.into()).unwrap(),
            redirect_uris: uris.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn desktop_clients_take_any_port() {
        let mut client = web(&[]);
        client.client_type = ClientType::Installed;
        let plan = client.redirect_plan(0).unwrap();
        assert_eq!(plan, RedirectPlan::AnyPort(0));
        let (uri, path) = plan.resolve(41234);
        assert_eq!(
            (uri.as_str(), path.as_str()),
            ("http://127.0.0.1:41234/", "/")
        );
    }

    #[test]
    fn web_clients_use_a_registered_loopback_uri_verbatim() {
        let client = web(&[
            "https://example.com/cb",
            "http://localhost:8080/oauth/callback",
            "http://127.0.0.1:9000/",
        ]);
        let plan = client.redirect_plan(0).unwrap();
        assert_eq!(plan.port(), 8080);
        assert_eq!(
            plan.resolve(8080),
            (
                "http://localhost:8080/oauth/callback".to_string(),
                "/oauth/callback".to_string()
            )
        );
        assert_eq!(client.redirect_plan(9000).unwrap().port(), 9000);
        let err = client.redirect_plan(1234).unwrap_err();
        assert!(
            matches!(err, AuthorizeError::PortNotRegistered { .. }),
            "{err}"
        );
    }

    #[test]
    fn web_clients_without_loopback_are_refused() {
        for uris in [
            &[][..],
            &["https://example.com/cb", "https://127.0.0.1/x"][..],
        ] {
            let err = web(uris).redirect_plan(0).unwrap_err();
            assert!(
                matches!(err, AuthorizeError::NoLoopbackRedirect { .. }),
                "{err}"
            );
            assert!(err.to_string().contains("Desktop app"), "{err}");
        }
    }
}

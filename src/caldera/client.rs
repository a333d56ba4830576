//! An HTTP client for Caldera's REST API v2 that is cheap for Caldera.
//!
//! Every request carrying the `KEY` header costs Caldera ~200 ms of its single event loop (two
//! argon2 verifications), while a session cookie costs ~1 ms. So when a user and password are
//! configured we log in once (`POST /enter`, answered 302 with an `API_SESSION` cookie) and send
//! no `KEY` at all; a 401 means the session expired and triggers one re-login. `KEY` is used only
//! when no user is configured, or while the login itself is refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use url::Url;

use crate::config::{CalderaAuth, CalderaSettings, Secret};
use crate::state::Shared;

/// What went wrong talking to Caldera. Messages carry the path, never a credential.
#[derive(Debug, thiserror::Error)]
pub enum CalderaError {
    #[error("{path}: authentication failed ({why})")]
    Unauthorized { path: String, why: String },
    #[error("{path}: not found (404): {message}")]
    NotFound { path: String, message: String },
    #[error("{path}: HTTP {status}: {snippet}")]
    Status {
        path: String,
        status: u16,
        snippet: String,
    },
    #[error("{path}: no answer within {secs} s")]
    Timeout { path: String, secs: u64 },
    #[error("{path}: cannot connect: {message}")]
    Transport { path: String, message: String },
    #[error("{path}: undecodable reply ({bytes} bytes): {message}")]
    Decode {
        path: String,
        bytes: usize,
        message: String,
    },
    #[error(
        "{path}: answer larger than CALDERA_MAX_BODY_MB ({limit_mb:.2} MB after decompression); reading stopped there. Raise CALDERA_MAX_BODY_MB if Caldera really holds that much"
    )]
    TooLarge { path: String, limit_mb: f64 },
}

impl CalderaError {
    pub fn is_auth(&self) -> bool {
        matches!(self, CalderaError::Unauthorized { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Session,
    Key,
}

#[derive(Debug)]
enum SessionState {
    NeedLogin,
    Active,
    /// Login refused: use the key (if any) and try logging in again after this instant.
    Refused {
        retry_at: Instant,
    },
}

pub struct CalderaClient {
    http: reqwest::Client,
    base: Url,
    auth: CalderaAuth,
    timeout: Duration,
    max_body: usize,
    session: Mutex<SessionState>,
    shared: Arc<Shared>,
}

/// Error answers are only read for a snippet: a little is enough.
const MAX_ERROR_BODY: usize = 64 * 1024;

const LOGIN_RETRY: Duration = Duration::from_secs(60);

fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(200)]);
    crate::document::sanitize::clean_text(&s, 200)
}

impl CalderaClient {
    pub fn new(settings: &CalderaSettings, shared: Arc<Shared>) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder();
        if let Some(ca) = &settings.ca_cert {
            // Added to the built-in roots; certificate and host name checks stay on.
            for c in ca.certificates()? {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .cookie_store(true)
            // /enter answers 302; a redirect elsewhere (e.g. to /login) is an auth signal, not a page to fetch.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("caldera-sidecar/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the Caldera HTTP client: {e}"))?;
        let mut base = settings.url.clone();
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let method = match settings.auth {
            CalderaAuth::Session { .. } => "session",
            CalderaAuth::Key(_) => "key",
            CalderaAuth::None => "none",
        };
        shared.caldera(|c| c.auth_method = method);
        Ok(Self {
            http,
            base,
            auth: settings.auth.clone(),
            timeout: settings.timeout,
            max_body: settings.max_body_bytes,
            session: Mutex::new(SessionState::NeedLogin),
            shared,
        })
    }

    fn key(&self) -> Option<&Secret> {
        match &self.auth {
            CalderaAuth::Session { key, .. } => key.as_ref(),
            CalderaAuth::Key(k) => Some(k),
            CalderaAuth::None => None,
        }
    }

    /// Chooses how the next request authenticates, logging in first if needed.
    async fn mode(&self) -> Result<Mode, CalderaError> {
        let CalderaAuth::Session { user, password, .. } = &self.auth else {
            return Ok(Mode::Key);
        };
        let mut s = self.session.lock().await;
        match *s {
            SessionState::Active => return Ok(Mode::Session),
            SessionState::Refused { retry_at } if Instant::now() < retry_at => {
                return if self.key().is_some() {
                    Ok(Mode::Key)
                } else {
                    Err(CalderaError::Unauthorized {
                        path: "/enter".into(),
                        why: "Caldera refused the configured user and password".into(),
                    })
                };
            }
            _ => {}
        }
        match self.login(user, password).await {
            Ok(()) => {
                *s = SessionState::Active;
                Ok(Mode::Session)
            }
            Err(e) => {
                // Only a refused login waits; a Caldera that is down is simply tried again.
                if e.is_auth() {
                    *s = SessionState::Refused {
                        retry_at: Instant::now() + LOGIN_RETRY,
                    };
                }
                if e.is_auth() && self.key().is_some() {
                    tracing::warn!(error = %e, "Caldera login failed; falling back to the KEY header (costly for Caldera) and retrying the login in 60 s");
                    Ok(Mode::Key)
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn login(&self, user: &str, password: &Secret) -> Result<(), CalderaError> {
        let path = "/enter".to_string();
        let url = self
            .base
            .join("enter")
            .map_err(|e| CalderaError::Transport {
                path: path.clone(),
                message: e.to_string(),
            })?;
        self.shared.stats.caldera_logins.inc();
        let resp = self
            .http
            .post(url)
            .form(&[("username", user), ("password", password.expose())])
            .send()
            .await
            .map_err(|e| self.transport_error(&path, e))?;
        // Caldera answers 302 either way; only a successful login sets the session cookie.
        let has_cookie = resp
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.starts_with("API_SESSION=")));
        if has_cookie {
            tracing::info!(user, "logged in to Caldera (session)");
            Ok(())
        } else {
            Err(CalderaError::Unauthorized {
                path,
                why: format!(
                    "login as {user:?} refused (HTTP {}, no session cookie)",
                    resp.status().as_u16()
                ),
            })
        }
    }

    fn transport_error(&self, path: &str, e: reqwest::Error) -> CalderaError {
        if e.is_timeout() {
            CalderaError::Timeout {
                path: path.to_string(),
                secs: self.timeout.as_secs(),
            }
        } else {
            // without_url: the message must not echo anything from the request line.
            let e = e.without_url();
            let mut message = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                message.push_str(": ");
                message.push_str(&s.to_string());
                src = s.source();
            }
            CalderaError::Transport {
                path: path.to_string(),
                message: crate::telemetry::cap_text(&message),
            }
        }
    }

    /// Sends one request and returns the body of a 2xx answer.
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Vec<u8>, CalderaError> {
        let url =
            self.base
                .join(path.trim_start_matches('/'))
                .map_err(|e| CalderaError::Transport {
                    path: path.to_string(),
                    message: e.to_string(),
                })?;
        let mut relogged = false;
        loop {
            let mode = self.mode().await?;
            let mut req = self.http.request(method.clone(), url.clone());
            if let Some(b) = body {
                req = req.json(b);
            }
            match (mode, self.key()) {
                (Mode::Key, Some(k)) => {
                    req = req.header("KEY", k.expose());
                    self.shared.stats.caldera_requests_key.inc();
                }
                (Mode::Key, None) => {
                    return Err(CalderaError::Unauthorized {
                        path: path.to_string(),
                        why: "no Caldera credentials configured (CALDERA_USER/CALDERA_PASSWORD or CALDERA_API_KEY)".into(),
                    });
                }
                (Mode::Session, _) => self.shared.stats.caldera_requests_session.inc(),
            }
            let resp = req
                .send()
                .await
                .map_err(|e| self.transport_error(path, e))?;
            let status = resp.status();
            let to_login = status.is_redirection()
                && resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .is_some_and(|l| l.contains("login"));
            if status == reqwest::StatusCode::UNAUTHORIZED || to_login {
                if mode == Mode::Session && !relogged {
                    // The session expired (Caldera restarted, or session_expiration_days passed).
                    *self.session.lock().await = SessionState::NeedLogin;
                    relogged = true;
                    tracing::info!(path, "Caldera session expired; logging in again");
                    continue;
                }
                return Err(CalderaError::Unauthorized {
                    path: path.to_string(),
                    why: match mode {
                        Mode::Key => "Caldera refused the API key (HTTP 401)".into(),
                        Mode::Session => "Caldera refused a fresh session (HTTP 401)".into(),
                    },
                });
            }
            let limit = if status.is_success() {
                self.max_body
            } else {
                MAX_ERROR_BODY.min(self.max_body)
            };
            let bytes = match self.read_body(path, resp, limit).await {
                Ok(b) => b,
                // An oversized error answer still has a status worth reporting.
                Err(CalderaError::TooLarge { .. }) if !status.is_success() => {
                    b"(answer too large to show)".to_vec()
                }
                Err(e) => return Err(e),
            };
            if status == reqwest::StatusCode::NOT_FOUND {
                return Err(CalderaError::NotFound {
                    path: path.to_string(),
                    message: snippet(&bytes),
                });
            }
            if !status.is_success() {
                return Err(CalderaError::Status {
                    path: path.to_string(),
                    status: status.as_u16(),
                    snippet: snippet(&bytes),
                });
            }
            return Ok(bytes);
        }
    }

    /// Reads a body chunk by chunk and stops at `limit` bytes. The chunks are what the HTTP
    /// client hands over after decompression (the elasticsearch crate turns reqwest's gzip on
    /// for the whole process), so a small compressed bomb is stopped at the limit too.
    async fn read_body(
        &self,
        path: &str,
        mut resp: reqwest::Response,
        limit: usize,
    ) -> Result<Vec<u8>, CalderaError> {
        let too_large = || CalderaError::TooLarge {
            path: path.to_string(),
            limit_mb: self.max_body as f64 / (1024.0 * 1024.0),
        };
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| self.transport_error(path, e))?
        {
            if out.len() + chunk.len() > limit {
                return Err(too_large());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Decodes a body; `T` may borrow from it (see [`super::model::Operation`]).
    pub fn decode<'a, T: serde::Deserialize<'a>>(
        path: &str,
        bytes: &'a [u8],
    ) -> Result<T, CalderaError> {
        // serde's message quotes the offending value, which can be megabytes long.
        serde_json::from_slice(bytes).map_err(|e| CalderaError::Decode {
            path: path.to_string(),
            bytes: bytes.len(),
            message: crate::telemetry::cap_text(&e.to_string()),
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CalderaError> {
        let bytes = self.request(reqwest::Method::GET, path, None).await?;
        Self::decode(path, &bytes)
    }

    /// The raw body of a GET, for types that borrow from it.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, CalderaError> {
        self.request(reqwest::Method::GET, path, None).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, CalderaError> {
        let bytes = self
            .request(reqwest::Method::POST, path, Some(body))
            .await?;
        Self::decode(path, &bytes)
    }
}

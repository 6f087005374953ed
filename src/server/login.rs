//! Signing in and out: the login page, `GET /login?token=…` (the one-click URL `serve` prints),
//! `POST /login`, `POST /logout`, and the middleware that lets nothing else through without
//! credentials.

use axum::Form;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::auth::{Auth, AuthError, Credential};

/// Paths anyone may fetch: health, the login itself, the built assets (no data in them), and
/// approval links (their token is the credential: `gate_page`).
fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/login" | "/favicon.ico") || path.starts_with("/pkg/") || path.starts_with("/gates/")
}

/// Lets a request through only with a valid bearer token or session cookie, and hands the
/// handlers its [`super::auth::Identity`] as an extension (and the pages and server functions
/// who that is, as a [`crate::protocol::SignedIn`]). Anything else gets 401: the login
/// page for a browser, a JSON error for a program.
pub async fn require_login(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    if is_public(request.uri().path()) {
        return next.run(request).await;
    }
    match state.auth.identify_anywhere(request.headers()).await {
        Ok(identity) => {
            request.extensions_mut().insert(identity.signed_in());
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        Err(error) => unauthorized(request.headers(), &error),
    }
}

fn unauthorized(headers: &HeaderMap, error: &AuthError) -> Response {
    let wants_html =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|accept| accept.contains("text/html"));
    let mut response = if wants_html {
        let notice = match error {
            AuthError::Missing => None,
            AuthError::BadToken | AuthError::NoSession => Some(error.to_string()),
        };
        (StatusCode::UNAUTHORIZED, Html(login_page(notice.as_deref()))).into_response()
    } else {
        (StatusCode::UNAUTHORIZED, axum::Json(json!({ "error": format!("unauthorized: {error}") }))).into_response()
    };
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"dagstream\""));
    response
}

#[derive(Deserialize)]
pub struct TokenForm {
    token: Option<String>,
}

/// `GET /login`: the form; with `?token=…`, signs in and sends the browser on to `/` so the
/// token leaves the address bar (and the history entry).
pub async fn page(State(state): State<AppState>, headers: HeaderMap, Query(form): Query<TokenForm>) -> Response {
    match form.token {
        Some(token) => sign_in(&state.auth, &headers, &token).await,
        None => Html(login_page(None)).into_response(),
    }
}

/// `POST /login` with a form field `token`.
pub async fn submit(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<TokenForm>) -> Response {
    sign_in(&state.auth, &headers, form.token.as_deref().unwrap_or("")).await
}

async fn sign_in(auth: &Auth, headers: &HeaderMap, token: &str) -> Response {
    match auth.login(token).await {
        Ok((session_id, who)) => {
            tracing::info!(user = %who.name, role = who.role.as_str(), "signed in");
            // Behind a TLS proxy the cookie is marked Secure.
            let secure = headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes() == b"https");
            redirect_with_cookie("/", &auth.session_cookie(&session_id, secure))
        }
        Err(error) => (StatusCode::UNAUTHORIZED, Html(login_page(Some(&error.to_string())))).into_response(),
    }
}

/// `POST /logout`: ends the session (its open sockets close) and clears the cookie.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Ok(identity) = state.auth.identify_anywhere(&headers).await
        && let Credential::Session { id_hash } = &identity.credential
    {
        state.auth.logout(id_hash).await;
        tracing::info!(user = %identity.name, "signed out");
    }
    redirect_with_cookie("/login", &Auth::clearing_cookie())
}

fn redirect_with_cookie(to: &'static str, cookie: &str) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response();
    match HeaderValue::from_str(cookie) {
        Ok(value) => {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        // A cookie we built ourselves is always a valid header value.
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
    response
}

/// The login page: self-contained (it is shown before anything else may load).
fn login_page(notice: Option<&str>) -> String {
    let notice = notice
        .map(|n| format!(r#"<p class="notice" role="alert" data-testid="login-error">{}</p>"#, escape(n)))
        .unwrap_or_default();
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · dagstream</title>
<style>
{PALETTE}
body {{ margin: 0; min-height: 100vh; display: grid; place-items: center; background: var(--bg); color: var(--text); font: 15px/1.5 system-ui, sans-serif; }}
form {{ background: var(--panel); border: 1px solid var(--line); border-radius: 10px; padding: 1.6rem; width: min(24rem, 90vw); display: grid; gap: 0.8rem; }}
h1 {{ margin: 0; font-size: 1.2rem; }} p {{ margin: 0; color: var(--muted); }}
input {{ font: inherit; padding: 0.5rem; border: 1px solid var(--line); border-radius: 6px; background: transparent; color: inherit; }}
button {{ font: inherit; padding: 0.5rem; border: 0; border-radius: 6px; background: var(--accent); color: #fff; cursor: pointer; }}
.notice {{ color: var(--bad); }}
</style></head>
<body><form method="post" action="/login" data-testid="login">
<h1>dagstream</h1>
<p>Sign in with your token. <code>dagstream serve</code> prints a link that signs the admin in; <code>dagstream user add</code> makes tokens for others.</p>
{notice}
<input type="password" name="token" placeholder="Token" autocomplete="current-password" required autofocus data-testid="token">
<button type="submit">Sign in</button>
</form></body></html>"#
    )
}

/// The colours of the pages served without the app (sign-in, approval links), light and dark.
pub(super) const PALETTE: &str = ":root { color-scheme: light dark; --bg: #f6f7f9; --panel: #fff; --text: #1c2330; \
--muted: #5d6778; --line: #dde1e8; --accent: #3b6fe0; --bad: #c63c3c; --good: #2f8a4c; }
@media (prefers-color-scheme: dark) { :root { --bg: #11151c; --panel: #181e28; --text: #e4e8ef; --muted: #98a2b3; \
--line: #2a3240; --accent: #6d9bff; --bad: #ff7b7b; --good: #5fcf85; } }";

/// Text made safe to put in HTML, in an element or a quoted attribute.
pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

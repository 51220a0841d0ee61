//! The read-only web dashboard (`collectord --dashboard-listen`): hosts and
//! their attestation state, violations over time and by destination
//! country, a filterable violation table, the audit trail, and a host's
//! chain verification — server-rendered HTML and SVG, no script, nothing
//! fetched from anywhere else.
//!
//! Who may look: auditors and operators, by the same client certificates as
//! the gRPC API (the TLS handshake asks for one and checks it against
//! `--client-ca`), or by a short-lived login token a reader asks for
//! (`collectorctl dashboard-token`), traded for a session cookie. An agent's
//! certificate is refused. Every page is answered by calling the gRPC
//! service in this process with the authenticated caller, so the dashboard
//! shows exactly what `QueryViolations`, `ListHosts` and `VerifyChain`
//! return, and can do nothing they would not allow.

mod charts;
mod html;
mod pages;
pub mod token;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use residency_daemon::http::{Incoming, Peer};

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use residency_proto::listen;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{auth::Caller, service::CollectorService};

/// The session cookie's name.
const COOKIE: &str = "residency_session";

/// Connections the dashboard admits (browsers open several each).
const LIMITS: listen::Limits = listen::Limits {
    max_connections: 128,
    per_peer: 32,
    idle: Duration::from_secs(60),
};

/// What every handler shares.
#[derive(Clone)]
struct App {
    service: CollectorService,
    /// Served over TLS (cookies are then `Secure`).
    secure: bool,
}

/// The TLS settings of the dashboard: the collector's certificate, and
/// client certificates asked for (not required: browsers without one log in
/// with a token) and checked against `ca`.
pub fn tls_config(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<rustls::ServerConfig, String> {
    residency_daemon::http::tls_optional_client_certs(cert, key, ca)
}

/// Binds the dashboard's address (before serving, so that a port in use
/// stops the collector at start).
pub async fn bind(addr: SocketAddr) -> std::io::Result<Incoming> {
    residency_daemon::http::bind(addr, LIMITS).await
}

/// Serves the dashboard on `incoming` (bound to `addr`) until `stop` turns
/// true. With `tls`, HTTPS; without, plain HTTP on a loopback address
/// (login tokens only).
pub async fn serve(
    incoming: Incoming,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    service: CollectorService,
    stop: watch::Receiver<bool>,
) {
    let secure = tls.is_some();
    info!(listen = %addr, tls = secure, "dashboard listening");
    residency_daemon::http::serve(incoming, tls, router(App { service, secure }), stop).await;
}

fn router(app: App) -> Router {
    let pages = Router::new()
        .route("/", get(pages::hosts))
        .route("/violations", get(pages::violations))
        .route("/audit", get(pages::audit))
        .route(
            "/hosts/{host}/verify",
            get(pages::verify).post(pages::reverify),
        )
        .route("/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate));
    Router::new()
        .route("/login", get(pages::login_form).post(login_post))
        .route("/static/style.css", get(html::stylesheet))
        .merge(pages)
        .fallback(pages::not_found)
        .layer(middleware::from_fn(security_headers))
        .with_state(app)
}

/// Headers every answer carries: no script, no framing, nothing cached, no
/// referrer (a login URL holds a token).
async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let mut set = |k: header::HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::REFERRER_POLICY, "no-referrer");
    set(header::X_FRAME_OPTIONS, "DENY");
    set(header::CACHE_CONTROL, "no-store");
    res
}

/// The session token in the request's cookies.
fn session_token(req: &Request) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Who is asking: a reader's certificate, or a valid session; else the
/// login page (or a refusal for an agent's certificate).
async fn authenticate(State(app): State<App>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<Peer>().cloned();
    let caller = match peer.as_ref().and_then(|p| p.names.clone()) {
        Some(names) => match app.service.roles().by_certificate(names) {
            Ok(c @ (Caller::Auditor { .. } | Caller::Operator { .. })) => c,
            Ok(Caller::Agent { host }) => {
                warn!(peer = ?peer.map(|p| p.addr), host = %host, "dashboard: an agent's certificate was refused");
                return pages::refused(&format!(
                    "The certificate you presented is agent {host:?}'s. Agents may only deliver records; \
                     the dashboard is for auditors and operators (a certificate listed with --auditor or \
                     --operator, or a login token from `collectorctl dashboard-token`)."
                ));
            }
            Err(e) => return pages::refused(e.message()),
        },
        None => match session_token(&req) {
            Some(t) => match app.service.tokens().check(&t, now_ns()) {
                Ok((c, _)) => c,
                Err(e) => {
                    return Redirect::to(&format!(
                        "/login?why={}",
                        html::url_encode(&e.to_string())
                    ))
                    .into_response();
                }
            },
            None => return Redirect::to("/login").into_response(),
        },
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// The login form's fields (also the query of a login link).
#[derive(serde::Deserialize, Default)]
struct Login {
    #[serde(default)]
    token: String,
}

/// Checks a login token and sets the session cookie.
fn login(app: &App, token: &str) -> Response {
    match app.service.tokens().check(token, now_ns()) {
        Ok((caller, expires)) => {
            let max_age = ((expires - now_ns()) / 1_000_000_000).max(0);
            let secure = if app.secure { "; Secure" } else { "" };
            let cookie = format!(
                "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
                token.trim()
            );
            info!(actor = %caller.actor(), "dashboard login");
            let mut res = Redirect::to("/").into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            res
        }
        Err(e) => {
            info!(error = %e, "dashboard login refused");
            (
                StatusCode::UNAUTHORIZED,
                pages::login_page(Some(&e.to_string())),
            )
                .into_response()
        }
    }
}

async fn login_post(State(app): State<App>, axum::Form(f): axum::Form<Login>) -> Response {
    login(&app, &f.token)
}

/// Ends the session (the cookie; the token itself lives until it expires).
async fn logout() -> Response {
    let mut res = Redirect::to("/login").into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "residency_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    res
}

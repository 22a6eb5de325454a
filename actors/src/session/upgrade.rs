//! The WebSocket upgrade endpoint (`/ws` and `/`): Origin check, token from the upgrade
//! request (Bearer header or `Sec-WebSocket-Protocol`), then a [`WsSession`](super::WsSession).

use std::sync::Arc;

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use coda_protocol::ConnectionState;

use super::guard::GuardPolicy;
use super::{SessionShared, UpgradeAuth, WsSession};
use crate::auth::{extract_bearer, extract_from_subprotocols};

/// The subprotocol the server echoes to browsers that offer it.
pub const SUBPROTOCOL: &str = "coda.v1";

/// State the upgrade handler needs (registered as actix-web app data).
pub struct UpgradeState {
    /// Shared session state.
    pub shared: Arc<SessionShared>,
    /// Host/Origin policy.
    pub guard: GuardPolicy,
}

/// Handles `GET /ws` (and `GET /` with an `Upgrade` header).
pub async fn ws_upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<UpgradeState>,
) -> actix_web::Result<HttpResponse> {
    let shared = &state.shared;
    let peer_addr = req.peer_addr();
    let peer = peer_addr
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into());
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let auth_on = shared.settings.auth_required;

    let refuse = |status: actix_web::http::StatusCode, reason: String| {
        tracing::warn!(%peer, origin = ?origin, %reason, "connection refused");
        shared.connection_event(
            "-",
            &peer,
            origin.as_deref(),
            ConnectionState::Refused,
            Some(reason.clone()),
        );
        HttpResponse::build(status)
            .content_type("text/plain; charset=utf-8")
            .body(format!("{reason}\n"))
    };

    if !state
        .guard
        .origin_allowed(origin.as_deref(), peer_addr.map(|a| a.ip()), auth_on)
    {
        let reason = match &origin {
            Some(o) => format!("origin `{o}` is not allowed (server.allowed_origins)"),
            None => "a request without Origin is only allowed from loopback".to_string(),
        };
        return Ok(refuse(actix_web::http::StatusCode::FORBIDDEN, reason));
    }

    // A token may come with the upgrade; it is never taken from the URL.
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(extract_bearer)
        .map(str::to_string);
    let from_protocol = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| extract_from_subprotocols(v).map(|(_, t)| t.to_string()));
    let presented = bearer.or(from_protocol);

    let auth = if !auth_on {
        // Auth is off: no token is needed, but one that checks out still names the
        // principal (the per-boot token unlocks the local admin commands).
        match presented.as_deref().map(|t| shared.auth.check(Some(t))) {
            Some(Ok(principal)) => UpgradeAuth::Authenticated(principal),
            Some(Err(failure)) => {
                tracing::debug!(%peer, %failure, "token ignored: auth is off");
                UpgradeAuth::NotRequired
            }
            None => UpgradeAuth::NotRequired,
        }
    } else {
        match presented.as_deref() {
            None => UpgradeAuth::AwaitMessage,
            Some(token) => match shared.auth.check(Some(token)) {
                Ok(principal) => UpgradeAuth::Authenticated(principal),
                Err(failure) => {
                    return Ok(refuse(
                        actix_web::http::StatusCode::UNAUTHORIZED,
                        format!("token refused: {failure}"),
                    ));
                }
            },
        }
    };

    // actix-ws does the handshake and reads frames; the outbound side is our own ordered
    // queue (see outbox.rs), so its `Session` handle is not used.
    let (response, _unused_session, stream) =
        actix_ws::handle_with_protocols(&req, body, &[SUBPROTOCOL])?;
    let (head, actix_body) = response.into_parts();
    let out =
        WsSession::start_session(state.shared.clone(), stream, actix_body, peer, origin, auth);
    Ok(head.set_body(out).map_into_boxed_body())
}

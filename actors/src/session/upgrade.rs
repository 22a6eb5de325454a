//! The WebSocket upgrade endpoint (`/ws` and `/`): Origin check, token from the upgrade
//! request (Bearer header or `Sec-WebSocket-Protocol`), then a [`WsSession`](super::WsSession).

use std::sync::Arc;

use actix_http::BoxedPayloadStream;
use actix_web::dev;
use actix_web::{http::header, web, FromRequest, HttpRequest, HttpResponse};
use coda_protocol::ConnectionState;

use super::frames::{FrameCheck, FrameLimits};
use super::guard::{echo, GuardPolicy};
use super::{Accepted, SessionShared, UpgradeAuth, WsSession};
use crate::auth::{extract_bearer, extract_from_subprotocols};
use crate::hub::Refusal;

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
    let origins: Vec<_> = req.headers().get_all(header::ORIGIN).collect();
    // Unreadable bytes become U+FFFD: such an Origin matches no allowed one.
    let origin = origins
        .first()
        .map(|v| v.to_str().unwrap_or("\u{fffd}").to_string());
    let auth_on = shared.settings.auth_required;
    // Only what may be echoed goes into logs and events (a header can be ~128 KiB).
    let shown_origin = origin.as_deref().map(echo);

    let refuse = |status: actix_web::http::StatusCode, reason: String| {
        tracing::warn!(%peer, origin = ?shown_origin, %reason, "connection refused");
        shared.connection_event(
            "-",
            &peer,
            shown_origin.as_deref(),
            ConnectionState::Refused,
            Some(reason.clone()),
        );
        HttpResponse::build(status)
            .content_type("text/plain; charset=utf-8")
            .body(format!("{reason}\n"))
    };

    // Before any other work (and without an event: a flood of refusals would be
    // broadcast to every dashboard, which is the cost this limit is for).
    let slot = match peer_addr.map(|a| shared.admission.admit(a.ip())) {
        Some(Err(refused)) => {
            shared.hub.counters().refused(Refusal::Connection);
            tracing::debug!(%peer, %refused, "connection refused");
            return Ok(HttpResponse::TooManyRequests()
                .content_type("text/plain; charset=utf-8")
                .body(format!("{refused}\n")));
        }
        Some(Ok(slot)) => Some(slot),
        None => None,
    };
    if origins.len() > 1 {
        return Ok(refuse(
            actix_web::http::StatusCode::BAD_REQUEST,
            format!("{} Origin headers; a request carries one", origins.len()),
        ));
    }
    if !state
        .guard
        .origin_allowed(origin.as_deref(), peer_addr.map(|a| a.ip()), auth_on)
    {
        let reason = match &origin {
            Some(o) => format!(
                "origin `{}` is not allowed (server.allowed_origins)",
                echo(o)
            ),
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

    // Every frame header is checked as it arrives (see frames.rs); before authentication
    // nothing above max_frame_bytes is read at all.
    let limits = FrameLimits::new(&shared.settings);
    let check = FrameCheck::new(match auth {
        UpgradeAuth::AwaitMessage => limits.before_auth,
        _ => limits.hard_cap,
    });
    let checked: BoxedPayloadStream = Box::pin(check.guard(body));
    let body = web::Payload::from_request(&req, &mut dev::Payload::from(checked)).await?;
    // actix-ws does the handshake and reads frames; the outbound side is our own ordered
    // queue (see outbox.rs), so its `Session` handle is not used.
    let (response, _unused_session, stream) =
        actix_ws::handle_with_protocols(&req, body, &[SUBPROTOCOL])?;
    let (head, actix_body) = response.into_parts();
    let conn = Accepted {
        peer,
        origin,
        auth,
        frames: check,
        slot,
    };
    let out = WsSession::start_session(state.shared.clone(), stream, actix_body, conn);
    Ok(head.set_body(out).map_into_boxed_body())
}

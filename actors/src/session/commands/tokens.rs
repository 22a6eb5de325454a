//! Token administration (`token_create|list|revoke|rotate`), for the per-boot
//! principal only.

use std::time::Duration;

use actix::prelude::*;
use coda_protocol::{Command, ErrorCode};

use super::super::{AuthState, WsSession};
use crate::auth::Principal;

impl WsSession {
    /// The `token_*` admin commands: only for the per-boot principal (the local CLI,
    /// which can read the 0600 token file), whatever `auth.required` says.
    pub(in crate::session) fn admin_token(
        &mut self,
        id: Option<String>,
        command: Command,
        ctx: &mut Context<Self>,
    ) {
        if !matches!(self.auth, AuthState::Ok(Some(Principal::Boot))) {
            let msg = format!(
                "`{}` needs the server's per-boot token (use the `coda token` command on this machine)",
                command.command_type()
            );
            self.reply_err(id, ErrorCode::Unauthorized, msg, ctx);
            return;
        }
        let Some(store) = self.shared.auth.tokens() else {
            self.reply_err(
                id,
                ErrorCode::Unavailable,
                "this server has no token store",
                ctx,
            );
            return;
        };
        // The protocol bounds `expires_s`; anything else that slips through is refused by
        // the store as a zero lifetime rather than panicking here.
        let ttl = |s: Option<f64>| s.map(|s| Duration::try_from_secs_f64(s).unwrap_or_default());
        let result = match command {
            Command::TokenCreate(c) => store
                .create(&c.name, ttl(c.expires_s))
                .map(|(info, secret)| serde_json::json!({"token": info, "secret": secret})),
            Command::TokenRotate(c) => store
                .rotate(&c.token, ttl(c.expires_s))
                .map(|(info, secret)| serde_json::json!({"token": info, "secret": secret})),
            Command::TokenRevoke(c) => store
                .revoke(&c.token)
                .map(|info| serde_json::json!({"token": info})),
            Command::TokenList => store.list().map(|list| serde_json::json!({"tokens": list})),
            _ => return,
        };
        match result {
            Ok(data) => {
                tracing::info!(client = %self.client_id, "token admin command done");
                self.reply_ok(id, data, ctx);
            }
            Err(e) => {
                use crate::auth::TokenError;
                let code = match e {
                    TokenError::Store(_) | TokenError::BadRecord(_) | TokenError::Random(_) => {
                        ErrorCode::Internal
                    }
                    _ => ErrorCode::InvalidData,
                };
                self.reply_err(id, code, e.to_string(), ctx)
            }
        }
    }
}

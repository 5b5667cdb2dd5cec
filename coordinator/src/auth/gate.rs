//! Who gets in: a client's credentials at its Hello, an operator's admin token on every Jobs
//! call, failed attempts counted per peer, and token files reloaded without a restart. These are
//! the [`Coordinator`]'s checks; the token sets and budget they use live beside them in `auth`.

use shoal_proto::v1;
use tracing::info;

use crate::coordinator::Coordinator;
use crate::error::{Error, Result};

/// Client and admin token sets.
#[derive(Debug)]
pub(crate) struct Tokens {
    pub(crate) client: Option<crate::auth::TokenSet>,
    pub(crate) admin: Option<crate::auth::TokenSet>,
    /// Bumped by every reload, so a Hello checked against older sets is checked again.
    pub(crate) generation: u64,
}

impl Coordinator {
    /// Checks a client's credentials: its token against the client token file (bound to its
    /// name), and with mutual TLS its certificate's name against the name it gave. The error is
    /// the reason it is refused; `Ok` holds the generation of the token sets it was checked
    /// against (see [`Coordinator::tokens_reloaded_since`]).
    pub(crate) fn authenticate_client(
        &self,
        hello: &v1::Hello,
        cert_name: Option<&str>,
    ) -> std::result::Result<u64, String> {
        let auth = &self.config.auth;
        let name = hello.client_name.trim();
        if auth.client_certs {
            match cert_name {
                None => return Err("no client certificate (mutual TLS is required)".into()),
                Some(c) if c != name => {
                    return Err(format!("the client certificate is `{c}`'s, not `{name}`'s"))
                }
                Some(_) => {}
            }
        }
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = &tokens.client {
            if hello.token.trim().is_empty() {
                return Err("no token (pass --token-file)".into());
            }
            if !client.verify(name, &hello.token) {
                return Err(format!("the token is not `{name}`'s"));
            }
        }
        Ok(tokens.generation)
    }

    /// Whether the token sets were reloaded after generation `checked`: a Hello checked before
    /// a reload and registered after it must be checked again, or a revoked token could slip in
    /// between the reload's check of connected clients and its registration.
    pub(crate) fn tokens_reloaded_since(&self, checked: u64) -> bool {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .generation
            != checked
    }

    /// Puts new client and admin token sets in force (what `serve` does on SIGHUP, after reading
    /// both token files again). Token checks cannot be turned on or off this way. Clients whose
    /// token was changed or removed are disconnected, so a revoked token serves no longer; their
    /// next Hello needs the new one. Returns their names.
    pub fn reload_tokens(
        &self,
        client: Option<crate::auth::TokenSet>,
        admin: Option<crate::auth::TokenSet>,
    ) -> Result<Vec<String>> {
        let revoked = {
            let mut t = self.tokens.write().unwrap_or_else(|p| p.into_inner());
            if t.client.is_some() != client.is_some() || t.admin.is_some() != admin.is_some() {
                return Err(Error::Config(
                    "a reload cannot turn token checks on or off: restart the coordinator with or without --client-tokens / --admin-tokens".into(),
                ));
            }
            let revoked = match (&t.client, &client) {
                (Some(old), Some(new)) => old.revoked_in(new),
                _ => Vec::new(),
            };
            *t = Tokens {
                client,
                admin,
                generation: t.generation + 1,
            };
            revoked
        };
        Ok(revoked
            .into_iter()
            .filter(|name| self.registry.drop_client(name))
            .inspect(|name| info!(client = %name, "token revoked: client disconnected"))
            .collect())
    }

    /// Lets a Jobs call through when it carries an admin token (`authorization: Bearer TOKEN`),
    /// or when no admin tokens are configured (a development coordinator).
    pub(crate) fn authorize_admin<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> std::result::Result<(), tonic::Status> {
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        let Some(admins) = &tokens.admin else {
            return Ok(());
        };
        let peer = request.remote_addr();
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let reason = match token {
            None => "no admin token (pass --admin-token-file or set SHOAL_ADMIN_TOKEN)",
            Some(t) if admins.find(t).is_some() => return Ok(()),
            Some(_) => "the token is not an admin token",
        };
        self.auth_failed(peer, "Jobs", reason)?;
        Err(
            Error::Unauthenticated(format!("the Jobs service needs an admin token: {reason}"))
                .into(),
        )
    }

    /// Records a failed attempt. Within the peer address's budget it is logged with the address
    /// and the caller gives its own answer (`Ok`); past the budget it is not logged and the
    /// answer is `ResourceExhausted`, for the rest of the window. Valid credentials are always
    /// checked first and let in: a flood from an address (a shared NAT, say) must not lock out
    /// the honest clients behind it, and 256-bit tokens are not guessed, so what the budget
    /// bounds is the noise and work failures cause.
    pub(crate) fn auth_failed(
        &self,
        peer: Option<std::net::SocketAddr>,
        service: &str,
        reason: &str,
    ) -> std::result::Result<(), tonic::Status> {
        use crate::auth::Failure;
        let peer_text = peer.map_or_else(|| "unknown peer".into(), |p| p.to_string());
        match self.failures.fail(peer.map(|a| a.ip())) {
            Failure::Logged => {
                tracing::warn!(peer = %peer_text, service, "refused: {reason}");
                Ok(())
            }
            Failure::Exhausted => {
                tracing::warn!(
                    peer = %peer_text,
                    service,
                    "refused: {reason}; this address has used its failed-attempt budget: its next failures are answered ResourceExhausted, unlogged, for {} s",
                    crate::auth::FAILURE_WINDOW.as_secs()
                );
                Ok(())
            }
            Failure::Quiet => Err(Error::Exhausted(format!(
                "too many failed attempts from {}; try again within {} s",
                peer.map_or_else(|| "this address".into(), |p| p.ip().to_string()),
                crate::auth::FAILURE_WINDOW.as_secs()
            ))
            .into()),
        }
    }
}

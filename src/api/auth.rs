//! Who is calling: bearer tokens from the configuration, each with a tenant and a role, and
//! the end user a service call acts for (`X-User-Id`).
//!
//! Tokens are kept only as sha256 digests and compared in constant time; neither a token nor
//! its digest is ever logged.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;
use crate::config::{ALL_TENANTS, Role, TokenConfig};
use crate::ids::{TenantId, UserId};
use crate::supervisor::Owner;

/// The header that names the end user of a service call.
pub const USER_HEADER: &str = "x-user-id";

/// The accepted tokens.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], TenantId, Role)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.entries.len())
    }
}

impl Tokens {
    /// The tokens of the configuration. A `token_sha256` that is not 64 hex digits is refused.
    pub fn new(configured: &[TokenConfig]) -> Result<Self, String> {
        let mut entries = Vec::new();
        for token in configured {
            // Checked here too: tokens may come from the development tokens file, which the
            // configuration's own validation never sees.
            if let Some(problem) = token.problem() {
                return Err(problem);
            }
            let digest: [u8; 32] = match (&token.token, &token.token_sha256) {
                (Some(secret), _) => Sha256::digest(secret.as_bytes()).into(),
                (None, Some(hex_digest)) => hex::decode(hex_digest)
                    .ok()
                    .and_then(|bytes| bytes.try_into().ok())
                    .ok_or_else(|| {
                        format!(
                            "token_sha256 of tenant {:?} is not 64 hex digits",
                            token.tenant
                        )
                    })?,
                (None, None) => {
                    return Err("a token entry has neither token nor token_sha256".into());
                }
            };
            entries.push((
                digest,
                TenantId::from_stored(token.tenant.as_str()),
                token.role,
            ));
        }
        Ok(Self { entries })
    }

    /// The tenant and role of `presented`, comparing against every token in constant time.
    pub fn check(&self, presented: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (known, tenant, role) in &self.entries {
            if bool::from(known.ct_eq(&digest)) {
                found = Some(Caller {
                    tenant: tenant.clone(),
                    role: *role,
                });
            }
        }
        found
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A caller with a valid token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's tenant.
    pub tenant: TenantId,
    /// The token's role.
    pub role: Role,
}

impl Caller {
    /// The tenant an operator acts within, or `None` for a global operator (tenant `*`).
    pub fn tenant_scope(&self) -> Option<&TenantId> {
        (self.tenant != ALL_TENANTS).then_some(&self.tenant)
    }
}

/// The caller of a request with a bearer token (any role).
pub fn caller_of(headers: &HeaderMap, tokens: &Tokens) -> Result<Caller, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|value| {
            // The scheme name is case-insensitive (RFC 9110).
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| ApiError::unauthorized("the Authorization header is not Bearer <token>"))?;
    tokens
        .check(token)
        .ok_or_else(|| ApiError::unauthorized("unknown token"))
}

/// The end user named in `X-User-Id`: 1 to 256 visible ASCII characters.
pub fn user_of(headers: &HeaderMap) -> Result<UserId, ApiError> {
    let value = headers
        .get(USER_HEADER)
        .ok_or_else(|| ApiError::invalid("the X-User-Id header is required"))?;
    let user = value
        .to_str()
        .map_err(|_| ApiError::invalid("X-User-Id must be visible ASCII"))?;
    Ok(UserId::parse("X-User-Id", user)?)
}

/// The caller of a request, refused with 403 unless its token has `role`.
fn caller_with_role(headers: &HeaderMap, tokens: &Tokens, role: Role) -> Result<Caller, ApiError> {
    let caller = caller_of(headers, tokens)?;
    if caller.role != role {
        let needed = match role {
            Role::Service => "a service token",
            Role::Admin => "an admin token",
        };
        return Err(ApiError::forbidden(format!("this route needs {needed}")));
    }
    Ok(caller)
}

/// The owner a service call acts for: a service token's tenant and the `X-User-Id` user.
pub fn owner_of(headers: &HeaderMap, tokens: &Tokens) -> Result<Owner, ApiError> {
    let caller = caller_with_role(headers, tokens, Role::Service)?;
    Ok(Owner {
        tenant: caller.tenant,
        user: user_of(headers)?,
    })
}

/// A service call acting for one end user: the owner every lookup is scoped to.
#[derive(Debug, Clone)]
pub struct UserCaller(pub Owner);

impl FromRequestParts<AppState> for UserCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        owner_of(&parts.headers, &state.tokens).map(Self)
    }
}

/// An operator's call.
#[derive(Debug, Clone)]
pub struct AdminCaller(pub Caller);

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        caller_with_role(&parts.headers, &state.tokens, Role::Admin).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(&[
            TokenConfig {
                token: Some("service-token-0123456789".into()),
                token_sha256: None,
                tenant: "acme".into(),
                role: Role::Service,
            },
            TokenConfig {
                token: None,
                token_sha256: Some(hex::encode(Sha256::digest(b"admin-token-0123456789"))),
                tenant: "ops".into(),
                role: Role::Admin,
            },
        ])
        .expect("tokens")
    }

    #[test]
    fn tokens_resolve_to_tenant_and_role() {
        let tokens = tokens();
        let service = tokens.check("service-token-0123456789").expect("known");
        assert_eq!(
            (service.tenant.as_str(), service.role),
            ("acme", Role::Service)
        );
        let admin = tokens
            .check("admin-token-0123456789")
            .expect("known by digest");
        assert_eq!((admin.tenant.as_str(), admin.role), ("ops", Role::Admin));
        assert!(tokens.check("service-token-012345678").is_none());
        assert!(tokens.check("").is_none());
    }

    #[test]
    fn headers_are_checked() {
        let tokens = tokens();
        let mut headers = HeaderMap::new();
        assert_eq!(
            caller_of(&headers, &tokens)
                .expect_err("none")
                .status()
                .as_u16(),
            401
        );
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().expect("header"));
        assert_eq!(
            caller_of(&headers, &tokens)
                .expect_err("basic")
                .status()
                .as_u16(),
            401
        );
        headers.insert(
            header::AUTHORIZATION,
            "Bearer nope".parse().expect("header"),
        );
        assert_eq!(
            caller_of(&headers, &tokens)
                .expect_err("unknown")
                .status()
                .as_u16(),
            401
        );
        headers.insert(
            header::AUTHORIZATION,
            "Bearer service-token-0123456789".parse().expect("header"),
        );
        assert!(caller_of(&headers, &tokens).is_ok());

        assert_eq!(
            user_of(&headers).expect_err("missing").status().as_u16(),
            422
        );
        headers.insert(USER_HEADER, "a b".parse().expect("header"));
        assert_eq!(user_of(&headers).expect_err("space").status().as_u16(), 422);
        headers.insert(USER_HEADER, "alice@example.com".parse().expect("header"));
        assert_eq!(user_of(&headers).expect("ok"), "alice@example.com");
    }

    #[test]
    fn bad_digests_are_refused() {
        let error = Tokens::new(&[TokenConfig {
            token: None,
            token_sha256: Some("abc".into()),
            tenant: "t".into(),
            role: Role::Admin,
        }])
        .expect_err("short digest");
        assert!(error.contains("64 hex digits"));
    }

    #[test]
    fn every_tenant_is_for_admin_tokens_only() {
        let entry = |role| TokenConfig {
            token: Some("global-token-0123456789".into()),
            token_sha256: None,
            tenant: ALL_TENANTS.into(),
            role,
        };
        let error = Tokens::new(&[entry(Role::Service)]).expect_err("a global service token");
        assert!(error.contains("admin tokens only"), "{error}");
        let tokens = Tokens::new(&[entry(Role::Admin)]).expect("a global operator");
        let caller = tokens.check("global-token-0123456789").expect("known");
        assert_eq!(caller.tenant_scope(), None);
        let scoped = Caller {
            tenant: TenantId::from_stored("acme"),
            role: Role::Admin,
        };
        assert_eq!(scoped.tenant_scope().map(TenantId::as_str), Some("acme"));
    }
}

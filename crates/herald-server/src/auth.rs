//! Who a connection is: the credential it presents at the handshake (`Authorization: Bearer`
//! or `?token=`) or later in `{"op":"auth"}`, turned into an [`Identity`]. Today a credential
//! is the admin key (compared in constant time) or, when `[jwt]` has a key, a JWT connection
//! token (crate::jwt).

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use herald_core::secret;
use herald_core::{ChannelName, ErrorCode, HeraldError};

use crate::jwt;

/// What a verified credential says about a connection.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    /// It may do what the admin key allows and hears lifecycle events.
    pub admin: bool,
    /// The user it acts for.
    pub user: Option<Arc<str>>,
    /// Channels to subscribe it to right away.
    pub channels: Vec<ChannelName>,
}

/// The credential of an `Authorization: Bearer <credential>` header. The scheme is
/// case-insensitive and may be followed by any run of spaces or tabs (RFC 7235); `None` for
/// another scheme, an empty credential or a header that is not visible ASCII.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    bearer_value(headers.get(AUTHORIZATION)?.as_bytes())
}

/// The credential of an `Authorization` header's value, if it is `Bearer <credential>`.
pub fn bearer_value(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?;
    // What `HeaderValue::to_str` accepts: visible ASCII and spaces/tabs.
    if !value
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return None;
    }
    let (scheme, credential) = value.trim_start().split_once([' ', '\t'])?;
    let credential = credential.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty()).then_some(credential)
}

/// The credential a handshake carries: `Authorization: Bearer <credential>`, else the
/// `token` query parameter (for browsers, which cannot set headers on a WebSocket). Lenient:
/// another scheme counts as no credential (the auth hook judges those).
pub fn handshake_credential(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    bearer(headers)
        .map(str::to_string)
        .or_else(|| query_token(query))
}

fn query_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .filter(|t| !t.is_empty())
}

/// [`handshake_credential`], strict, for when Herald judges the credential itself: a
/// `Bearer` header that carries no usable credential (empty, not visible ASCII), or a
/// `Bearer` header and a `?token=` naming two different credentials (or two headers, or two
/// `token` parameters), is refused rather than
/// taken for no credential (a client that meant to authenticate learns it did not). Another
/// scheme is not Herald's and is passed over (a browser sends `Basic` on its own to a site
/// behind HTTP Basic authentication).
pub fn handshake_credential_strict(
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<String>, HeraldError> {
    // Two of either is refused too: a proxy in front may take the other one.
    if headers.get_all(AUTHORIZATION).iter().nth(1).is_some() {
        return Err(HeraldError::new(
            ErrorCode::Unauthorized,
            "more than one Authorization header",
        ));
    }
    let tokens = query.map_or(0, |q| {
        form_urlencoded::parse(q.as_bytes())
            .filter(|(k, _)| k == "token")
            .count()
    });
    if tokens > 1 {
        return Err(HeraldError::new(
            ErrorCode::Unauthorized,
            "more than one token parameter",
        ));
    }
    let from_query = query_token(query);
    let Some(header) = headers.get(AUTHORIZATION) else {
        return Ok(from_query);
    };
    let Some(credential) = bearer_value(header.as_bytes()) else {
        let scheme = header.as_bytes().trim_ascii_start();
        let is_bearer = scheme.len() >= 6
            && scheme[..6].eq_ignore_ascii_case(b"bearer")
            && scheme.get(6).is_none_or(|b| *b == b' ' || *b == b'\t');
        if is_bearer {
            return Err(HeraldError::new(
                ErrorCode::Unauthorized,
                "the Authorization header must be `Bearer <credential>`, with a credential",
            ));
        }
        return Ok(from_query);
    };
    match from_query {
        Some(other) if other != credential => Err(HeraldError::new(
            ErrorCode::Unauthorized,
            "two different credentials: give the Authorization header or ?token=, not both",
        )),
        _ => Ok(Some(credential.to_string())),
    }
}

/// What credentials are checked against: the node's admin key and its JWT verifier.
#[derive(Clone, Copy)]
pub struct Keys<'a> {
    pub admin_key: &'a str,
    pub jwt: Option<&'a jwt::JwtVerifier>,
}

/// Verifies a connection credential: the admin key, or a JWT connection token.
pub fn verify(keys: Keys, credential: &str) -> Result<Identity, HeraldError> {
    if secret::secrets_equal(credential, keys.admin_key) {
        return Ok(Identity {
            admin: true,
            ..Identity::default()
        });
    }
    match keys.jwt {
        Some(verifier) if jwt::looks_like_jwt(credential) => {
            let claims = verifier.verify(credential)?;
            if claims.channel.is_some() {
                return Err(HeraldError::new(
                    ErrorCode::Unauthorized,
                    "this is a subscription token (it has a \"channel\" claim); connect with a connection token",
                ));
            }
            Ok(Identity {
                admin: claims.admin,
                channels: jwt::token_channels(&claims)?,
                user: Some(Arc::from(claims.sub.as_str())),
            })
        }
        Some(_) => Err(HeraldError::new(
            ErrorCode::Unauthorized,
            "unknown credential: expected the admin key or a JWT connection token",
        )),
        None => Err(HeraldError::new(
            ErrorCode::Unauthorized,
            "unknown credential: expected the admin key (JWT is not configured)",
        )),
    }
}

/// Checks a subscription token (JWT with a `channel` claim) for `channel` and the
/// connection's `user`: it must name that channel and that user.
pub fn verify_subscription(
    keys: Keys,
    token: &str,
    channel: &ChannelName,
    user: Option<&str>,
) -> Result<(), HeraldError> {
    let verifier = keys.jwt.ok_or_else(|| {
        HeraldError::new(
            ErrorCode::Unauthorized,
            "JWT is not configured on this server",
        )
    })?;
    let claims = verifier.verify(token)?;
    match claims.channel.as_deref() {
        None => Err(HeraldError::forbidden(
            "this is a connection token: subscribing needs a subscription token (with a \"channel\" claim)",
        )),
        Some(c) if c != channel.as_str() => Err(HeraldError::forbidden(format!(
            "the subscription token is for channel {c:?}, not {channel:?}"
        ))),
        Some(_) if user != Some(claims.sub.as_str()) => Err(HeraldError::forbidden(
            "the subscription token belongs to another user than this connection's",
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in [
            "Bearer k1",
            "bearer k1",
            "BEARER k1",
            "bEaReR   k1 ",
            "Bearer\tk1",
        ] {
            assert_eq!(bearer(&headers(value)), Some("k1"), "{value:?}");
        }
        for value in ["Basic k1", "Bearer", "Bearer   ", "Bearerk1", "Token k1"] {
            assert_eq!(bearer(&headers(value)), None, "{value:?}");
        }
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}

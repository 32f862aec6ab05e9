//! JSON Web Tokens (docs/auth.md): connection tokens (`sub` = user id, `exp`, optional
//! `channels` to subscribe to at connect and `admin`) and subscription tokens for private
//! channels (`channel`, bound to the connection's user by `sub`). Verified with an HMAC
//! secret, an RSA or an ECDSA public key from `[jwt]`, chosen by the token's `alg`, with a
//! small leeway for clock skew. [`mint`] makes tokens for `herald token` and the tests.

use std::path::Path;

use herald_core::{ChannelName, ErrorCode, HeraldError};
use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind,
};
use serde::{Deserialize, Serialize};

use crate::config::JwtConfig;

pub use jsonwebtoken::Algorithm as JwtAlgorithm;

/// Most channels a connection token may list.
pub const MAX_TOKEN_CHANNELS: usize = 100;
/// Longest token accepted (bytes).
pub const MAX_TOKEN_LEN: usize = 8192;

/// The claims Herald reads. Other claims are ignored.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch (required).
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// A string or an array of strings (jsonwebtoken checks it against `jwt.audience`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    /// Connection tokens: channels to subscribe to at connect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Connection tokens: the connection is an admin.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    /// Subscription tokens: the one channel this token lets `sub` subscribe to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// Whether `s` has the shape of a JWT (three base64url parts), to tell it from other
/// credentials such as the admin key or a channel token.
pub fn looks_like_jwt(s: &str) -> bool {
    s.starts_with("eyJ") && s.split('.').count() == 3
}

/// Verifies tokens with the keys of `[jwt]`.
pub struct JwtVerifier {
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ec: Option<DecodingKey>,
    validation: Validation,
}

fn read_key(key: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("jwt.{key}: cannot read {}: {e}", path.display()))
}

impl JwtVerifier {
    /// Builds the verifier; `None` when no key is configured. Errors name the key at fault.
    pub fn from_config(cfg: &JwtConfig) -> anyhow::Result<Option<JwtVerifier>> {
        let hmac = match cfg.hmac_secret.0.as_str() {
            "" => None,
            secret => Some(
                DecodingKey::from_secret(secret.as_bytes())
                    .map_err(|e| anyhow::anyhow!("jwt.hmac_secret: {e}"))?,
            ),
        };
        let rsa = match cfg.rsa_public_key_file.as_os_str().is_empty() {
            true => None,
            false => {
                let pem = read_key("rsa_public_key_file", &cfg.rsa_public_key_file)?;
                Some(DecodingKey::from_rsa_pem(&pem).map_err(|e| {
                    anyhow::anyhow!("jwt.rsa_public_key_file: not an RSA public key in PEM: {e}")
                })?)
            }
        };
        let ec = match cfg.ecdsa_public_key_file.as_os_str().is_empty() {
            true => None,
            false => {
                let pem = read_key("ecdsa_public_key_file", &cfg.ecdsa_public_key_file)?;
                Some(DecodingKey::from_ec_pem(&pem).map_err(|e| {
                    anyhow::anyhow!("jwt.ecdsa_public_key_file: not an EC public key in PEM: {e}")
                })?)
            }
        };
        if hmac.is_none() && rsa.is_none() && ec.is_none() {
            return Ok(None);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = cfg.leeway_secs;
        // A configured issuer or audience must be present in the token, not only right when
        // present: a token minted for another service that shares the key has neither.
        let mut required = vec!["exp", "sub"];
        if !cfg.issuer.is_empty() {
            required.push("iss");
        }
        if !cfg.audience.is_empty() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation.validate_nbf = true;
        if cfg.issuer.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&[&cfg.issuer]);
        }
        if cfg.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&cfg.audience]);
        }
        Ok(Some(JwtVerifier {
            hmac,
            rsa,
            ec,
            validation,
        }))
    }

    /// Verifies a token's signature, expiry (with leeway) and shape.
    pub fn verify(&self, token: &str) -> Result<Claims, HeraldError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(unauthorized(format!(
                "the token is longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| unauthorized(format!("malformed token: {e}")))?;
        let family = header.alg.family();
        let key = match family {
            AlgorithmFamily::Hmac => self.hmac.as_ref(),
            AlgorithmFamily::Rsa => self.rsa.as_ref(),
            AlgorithmFamily::Ec => self.ec.as_ref(),
            AlgorithmFamily::Ed => None,
        }
        .ok_or_else(|| {
            unauthorized(format!(
                "tokens signed with {:?} are not accepted: no such key in [jwt]",
                header.alg
            ))
        })?;
        let mut validation = self.validation.clone();
        validation.algorithms = family.algorithms().to_vec();
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::ExpiredSignature => {
                HeraldError::new(ErrorCode::TokenExpired, "the token has expired")
            }
            ErrorKind::InvalidSignature => unauthorized("the token's signature is invalid".into()),
            ErrorKind::ImmatureSignature => unauthorized("the token is not valid yet (nbf)".into()),
            ErrorKind::InvalidIssuer => {
                unauthorized("the token's issuer (iss) is not accepted".into())
            }
            ErrorKind::InvalidAudience => {
                unauthorized("the token's audience (aud) is not accepted".into())
            }
            ErrorKind::MissingRequiredClaim(c) => {
                unauthorized(format!("the token has no {c:?} claim"))
            }
            _ => unauthorized(format!("invalid token: {e}")),
        })?;
        let claims = data.claims;
        if let Err(why) = herald_core::ids::check_user_id(&claims.sub) {
            return Err(unauthorized(format!("the token's sub: {why}")));
        }
        if claims.channels.len() > MAX_TOKEN_CHANNELS {
            return Err(unauthorized(format!(
                "the token lists more than {MAX_TOKEN_CHANNELS} channels"
            )));
        }
        Ok(claims)
    }
}

/// The channels a connection token lists, validated: a name that is not a channel name makes
/// the token unusable (401, as any other bad claim).
pub fn token_channels(claims: &Claims) -> Result<Vec<ChannelName>, HeraldError> {
    claims
        .channels
        .iter()
        .map(|c| ChannelName::parse(c))
        .collect::<Result<_, _>>()
        .map_err(|e| unauthorized(format!("the token's channels: {}", e.message)))
}

fn unauthorized(message: String) -> HeraldError {
    HeraldError::new(ErrorCode::Unauthorized, message)
}

/// Signs `claims`. `key` is an HMAC secret for HS*, or a PEM private key (PKCS#8 for EC)
/// for RS*/PS*/ES*.
pub fn mint(claims: &Claims, alg: Algorithm, key: &[u8]) -> anyhow::Result<String> {
    let key = match alg.family() {
        AlgorithmFamily::Hmac => EncodingKey::from_secret(key)?,
        AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(key)?,
        AlgorithmFamily::Ec => EncodingKey::from_ec_pem(key)?,
        AlgorithmFamily::Ed => EncodingKey::from_ed_pem(key)?,
    };
    Ok(jsonwebtoken::encode(&Header::new(alg), claims, &key)?)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    herald_core::client::now_ms() / 1000
}

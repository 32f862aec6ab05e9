//! JSON Web Tokens (`herald_server::jwt`): verifying any token string with an HS256 key,
//! and signed tokens of any header and claims shape.
//!
//! Input: one byte choosing the mode, then the token text, or a header and claims to sign
//! (correctly, with the verifier's key), or claims to mint. Two verifiers: the default rules
//! (leeway 5 s), and one requiring `iss` "herald" and `aud` "app" with no leeway. Asserts:
//! - verifying never panics, whatever the string, header or claims;
//! - an accepted token is signed with the key: its signature is the HMAC (SHA-256, -384 or
//!   -512, as its header says) of its first two parts; nothing unsigned, `none`, or of
//!   another family passes;
//! - accepted claims are what the token says (serde_json reading its payload) and keep
//!   Herald's rules: `sub` of 1 to 256 bytes, at most 100 channels, not expired, not before
//!   `nbf`, the configured issuer and audience present and right;
//! - minted tokens round-trip: a valid token verifies to its claims, and any one-byte change
//!   to it is refused.
#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use herald_fuzz::Input;
use herald_server::config::{JwtConfig, Secret};
use herald_server::jwt::{self, Claims, JwtAlgorithm, JwtVerifier};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzzing-secret-0123456789abcdefghijklmnop";
const NEVER: u64 = 4_102_444_800; // 2100-01-01

struct Verifier {
    jwt: JwtVerifier,
    leeway: u64,
    strict: bool,
}

static VERIFIERS: LazyLock<[Verifier; 2]> = LazyLock::new(|| {
    let make = |strict: bool| {
        let cfg = JwtConfig {
            hmac_secret: Secret(SECRET.into()),
            leeway_secs: if strict { 0 } else { 5 },
            issuer: if strict {
                "herald".into()
            } else {
                String::new()
            },
            audience: if strict { "app".into() } else { String::new() },
            ..JwtConfig::default()
        };
        Verifier {
            jwt: JwtVerifier::from_config(&cfg).unwrap().unwrap(),
            leeway: cfg.leeway_secs,
            strict,
        }
    };
    [make(false), make(true)]
});

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mode = input.byte();
    match mode % 3 {
        0 => {
            if let Ok(token) = std::str::from_utf8(input.rest()) {
                verify(token);
            }
        }
        1 => {
            let alg = ["HS256", "HS384", "HS512"][usize::from(input.byte() % 3)];
            let split = usize::from(input.u16());
            let rest = input.rest();
            let (header, claims) = rest.split_at(split.min(rest.len()));
            verify(&sign(alg, header, claims));
        }
        _ => mint(&mut input),
    }
});

fn mac(alg: &str, message: &[u8]) -> Vec<u8> {
    macro_rules! with {
        ($h:ty) => {{
            let mut m = Hmac::<$h>::new_from_slice(SECRET.as_bytes()).unwrap();
            m.update(message);
            m.finalize().into_bytes().to_vec()
        }};
    }
    match alg {
        "HS256" => with!(sha2::Sha256),
        "HS384" => with!(sha2::Sha384),
        _ => with!(sha2::Sha512),
    }
}

/// A token of this header and claims text, signed with the verifiers' key.
fn sign(alg: &str, header: &[u8], claims: &[u8]) -> String {
    let signed = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let signature = mac(alg, signed.as_bytes());
    format!("{signed}.{}", B64.encode(signature))
}

fn verify(token: &str) {
    for v in VERIFIERS.iter() {
        let Ok(claims) = v.jwt.verify(token) else {
            continue;
        };
        let now = jwt::now_secs();
        // Signed with the key, as its header says.
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "{token}");
        let header: serde_json::Value =
            serde_json::from_slice(&B64.decode(parts[0]).expect("base64 header")).unwrap();
        let alg = header["alg"].as_str().expect("an alg");
        assert!(["HS256", "HS384", "HS512"].contains(&alg), "accepted {alg}");
        let signed = &token[..parts[0].len() + 1 + parts[1].len()];
        assert_eq!(
            B64.decode(parts[2]).expect("base64 signature"),
            mac(alg, signed.as_bytes()),
            "accepted a token not signed with the key"
        );
        // What the token says.
        let payload = B64.decode(parts[1]).expect("base64 claims");
        let said: Claims = serde_json::from_slice(&payload).expect("the claims read");
        assert_eq!(claims, said);
        // Herald's rules.
        assert_eq!(herald_core::ids::check_user_id(&claims.sub), Ok(()));
        assert!(claims.channels.len() <= jwt::MAX_TOKEN_CHANNELS);
        assert!(
            claims.exp + v.leeway + 2 >= now,
            "expired: {} < {now}",
            claims.exp
        );
        if let Some(nbf) = claims.nbf {
            assert!(nbf <= now + v.leeway + 2, "not yet valid: {nbf} > {now}");
        }
        if v.strict {
            assert_eq!(claims.iss.as_deref(), Some("herald"));
            let aud = claims.aud.as_ref().expect("an audience");
            assert!(
                aud == "app" || aud.as_array().is_some_and(|a| a.iter().any(|x| x == "app")),
                "{aud}"
            );
        }
        let _ = jwt::token_channels(&claims);
    }
}

fn mint(input: &mut Input) {
    let strict = input.bool();
    let sub = input.string();
    let channels: Vec<String> = (0..input.byte() % 4).map(|_| input.string()).collect();
    let claims = Claims {
        sub,
        exp: if input.bool() {
            NEVER
        } else {
            input.u64() % (2 * NEVER)
        },
        iat: input.bool().then(|| input.u64() % NEVER),
        nbf: input.bool().then(|| input.u64() % NEVER),
        iss: strict.then(|| "herald".to_string()),
        aud: strict.then(|| serde_json::json!("app")),
        channels,
        admin: input.bool(),
        channel: input.bool().then(|| input.string()),
    };
    let v = &VERIFIERS[usize::from(strict)];
    let token = jwt::mint(&claims, JwtAlgorithm::HS256, SECRET.as_bytes()).unwrap();
    let now = jwt::now_secs();
    let valid = herald_core::ids::check_user_id(&claims.sub).is_ok()
        && claims.exp > now + v.leeway + 2
        && claims.nbf.is_none_or(|nbf| nbf + v.leeway + 2 < now)
        && token.len() <= jwt::MAX_TOKEN_LEN;
    if valid {
        assert_eq!(v.jwt.verify(&token), Ok(claims));
    }
    // Any one-byte change is refused.
    let at = usize::from(input.u16()) % token.len();
    let mut changed = token.clone().into_bytes();
    changed[at] = match input.byte() {
        b if b != changed[at] && b.is_ascii() => b,
        _ => {
            if changed[at] == b'A' {
                b'B'
            } else {
                b'A'
            }
        }
    };
    if let Ok(changed) = String::from_utf8(changed) {
        assert!(
            v.jwt.verify(&changed).is_err(),
            "{changed} accepted (from {token})"
        );
    }
    verify(&token);
}

//! Credentials without a colon — what pymilvus sends for `MilvusClient(token=<no colon>)`:
//! `authorization: base64(token)`. Two kinds are recognised by their shape: credstore API
//! keys (`csk_<id>_<secret>`, see `apikey`) and JWTs (`eyJ…`, three base64url segments, see
//! `oidc`). Anything else keeps Milvus's answers (`api key` / `invalid token format`).
//!
//! Every refusal of a recognised credential answers UNAUTHENTICATED with exactly the text of
//! a wrong password; the finer reason ([`Refusal`]) goes only to the audit line and the debug
//! log. Nothing here logs or keeps the token itself.

use base64::Engine;
use zeroize::Zeroizing;

use crate::auth::apikey;

/// The longest `authorization` header read as a token: a JWT with a 4096-bit RSA signature
/// and a few dozen claims fits; the server's header limit (16 KiB) is above it.
pub const MAX_TOKEN_HEADER_LEN: usize = 8 * 1024;

/// Why an API key or a token was refused (audit and debug log only; the client sees the text
/// of a wrong password).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    KeyMalformed,
    KeyUnknown,
    KeyWrongSecret,
    KeyExpired,
    KeyRevoked,
    KeyOwnerGone,
    /// A JWT arrived but no OIDC issuer is configured.
    OidcOff,
    TokenMalformed,
    /// `alg` is not RS256, ES256 or EdDSA (`none` and HMAC included).
    TokenAlgorithm,
    /// Its `kid` is not in the issuer's key set, even after a refetch.
    TokenUnknownKey,
    TokenBadSignature,
    TokenExpired,
    TokenNotYetValid,
    TokenWrongIssuer,
    TokenWrongAudience,
    TokenRevoked,
    /// The username claim is missing, not a string, empty or unreasonable.
    TokenNoName,
}

impl Refusal {
    /// The audit line's `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::KeyMalformed => "apikey_malformed",
            Refusal::KeyUnknown => "apikey_unknown",
            Refusal::KeyWrongSecret => "apikey_wrong_secret",
            Refusal::KeyExpired => "apikey_expired",
            Refusal::KeyRevoked => "apikey_revoked",
            Refusal::KeyOwnerGone => "apikey_owner_deleted",
            Refusal::OidcOff => "jwt_oidc_not_configured",
            Refusal::TokenMalformed => "jwt_malformed",
            Refusal::TokenAlgorithm => "jwt_algorithm_refused",
            Refusal::TokenUnknownKey => "jwt_unknown_kid",
            Refusal::TokenBadSignature => "jwt_bad_signature",
            Refusal::TokenExpired => "jwt_expired",
            Refusal::TokenNotYetValid => "jwt_not_yet_valid",
            Refusal::TokenWrongIssuer => "jwt_wrong_issuer",
            Refusal::TokenWrongAudience => "jwt_wrong_audience",
            Refusal::TokenRevoked => "jwt_revoked",
            Refusal::TokenNoName => "jwt_no_username",
        }
    }

    /// The credential kind it concerns (metrics).
    pub fn kind(self) -> &'static str {
        match self {
            Refusal::KeyMalformed
            | Refusal::KeyUnknown
            | Refusal::KeyWrongSecret
            | Refusal::KeyExpired
            | Refusal::KeyRevoked
            | Refusal::KeyOwnerGone => "apikey",
            _ => "oidc",
        }
    }
}

/// A token taken from the header, wiped when dropped.
pub enum Bearer {
    ApiKey(Zeroizing<Vec<u8>>),
    Jwt(Zeroizing<String>),
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bearer::ApiKey(_) => f.write_str("Bearer::ApiKey(<redacted>)"),
            Bearer::Jwt(_) => f.write_str("Bearer::Jwt(<redacted>)"),
        }
    }
}

/// Reads `header` as a token, when it is one: `None` when it is not base64, too long, or
/// decodes to something that is neither an API key nor a JWT.
pub fn parse(header: Option<&[u8]>) -> Option<Bearer> {
    let raw = header?;
    if raw.len() > MAX_TOKEN_HEADER_LEN {
        return None;
    }
    let decoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(raw).ok()?);
    if decoded.starts_with(apikey::KEY_PREFIX.as_bytes()) {
        return Some(Bearer::ApiKey(decoded));
    }
    if looks_like_jwt(&decoded) {
        let text = std::str::from_utf8(&decoded).ok()?.to_string();
        return Some(Bearer::Jwt(Zeroizing::new(text)));
    }
    None
}

/// Three non-empty base64url segments, the first starting like a JSON object (`eyJ`).
fn looks_like_jwt(token: &[u8]) -> bool {
    let url_safe = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
    let segments: Vec<&[u8]> = token.split(|b| *b == b'.').collect();
    token.starts_with(b"eyJ")
        && segments.len() == 3
        && segments[..2].iter().all(|s| !s.is_empty())
        && segments.iter().all(|s| s.iter().all(url_safe))
}

/// The name a failed login is audited under: `apikey:<id>` for a key (the id is public);
/// nothing for a JWT (its claims are unverified).
pub fn audit_name(header: Option<&[u8]>) -> Option<String> {
    match parse(header)? {
        Bearer::ApiKey(token) => apikey::parse(&token).map(|(id, _)| format!("apikey:{id}")),
        Bearer::Jwt(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(token: &str) -> Option<&'static str> {
        let header = base64::engine::general_purpose::STANDARD.encode(token);
        parse(Some(header.as_bytes())).map(|b| match b {
            Bearer::ApiKey(_) => "key",
            Bearer::Jwt(_) => "jwt",
        })
    }

    #[test]
    fn shapes() {
        assert_eq!(kind("csk_0011223344556677_abc"), Some("key"));
        assert_eq!(
            kind("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"),
            Some("jwt")
        );
        assert_eq!(kind("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."), Some("jwt"));
        assert_eq!(kind("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0"), None);
        assert_eq!(kind("eyJ.a b.c"), None);
        assert_eq!(kind("an-api-key"), None);
        assert!(parse(Some(b"%%%")).is_none());
        assert!(parse(Some(&[b'A'; MAX_TOKEN_HEADER_LEN + 4])).is_none());
        assert_eq!(
            format!("{:?}", parse(Some(b"Y3NrX3g=")).unwrap()),
            "Bearer::ApiKey(<redacted>)"
        );
    }
}

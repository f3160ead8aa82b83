//! Authentication: who is calling. [`AuthLayer`] wraps the whole gRPC router (installed once,
//! in `server`), parses the `authorization` header and asks the [`Authenticator`], which
//! verifies passwords through a coherent cache. Success puts an [`Authenticated`] into the
//! request's extensions; failure is answered by the layer and the handler never runs.
//!
//! Authorization (what the caller may do) is decided by `service`, from `Authenticated`.
//!
//! Identity rule: the header's name is parsed once, here at the edge, into the canonical
//! [`Username`] with [`Username::parse_exact`]; a name with surrounding white space of any
//! Unicode kind is refused (UNAUTHENTICATED, after the work of a wrong password), never
//! trimmed. The header's decoded bytes are wiped when [`Credentials`] is dropped, and its
//! `Debug` prints no password.
//!
//! `cache` holds the verified-password cache, its invalidation watermarks and the trust
//! deadline; `authenticator` the flow; `lockout` the failed-login counts and locks (shared
//! through the store, consulted only when a login misses the cache); `pace` how many failed
//! verifications an address may cost per second; `layer` the tower plumbing. A header without
//! a colon is a token (`bearer`): an API key (`apikey`) or an OIDC JWT (`oidc`); those
//! refusals answer with the text of a wrong password and carry their finer reason
//! ([`Refusal`]) to the audit.

pub mod apikey;
mod authenticator;
mod bearer;
mod cache;
mod layer;
mod lockout;
mod oidc;
mod pace;

use std::sync::Arc;

use base64::Engine;
use zeroize::Zeroize;

use crate::password::{HashError, Limits, Username};

pub use authenticator::{Authenticator, AuthenticatorConfig, SeenIdentity};
pub use bearer::Refusal;
pub use cache::{AuthStats, CredentialCache, Trust};
pub use layer::{AuthLayer, AuthService};
pub use lockout::{LockedCounts, Lockout, LockoutObserver, LockoutPolicy, MAX_TRACKED};
pub use oidc::{JwksSource, Oidc, OidcSettings};

/// Who sent `request` (put there by [`AuthLayer`]; `None` if it did not pass through it) and
/// the database it names in Milvus's `dbname` header (absent or empty: `default`). The
/// service and the proxy tier both read a request's caller here.
pub fn caller<T>(request: &tonic::Request<T>) -> Option<(Authenticated, String)> {
    let who = request.extensions().get::<Authenticated>().cloned()?;
    let db = request
        .metadata()
        .get("dbname")
        .and_then(|v| v.to_str().ok())
        .filter(|d| !d.is_empty())
        .unwrap_or("default")
        .to_string();
    Some((who, db))
}

/// The identity a request was authenticated as. Only this module can create one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    /// `None` when authorization is disabled: every operation is allowed, as in Milvus.
    name: Option<Name>,
    super_user: bool,
    /// Which roles count when the request is authorized (`rbac::Policies` honours it).
    roles: Roles,
    kind: CredentialKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Name {
    /// A user in the store (a password, or the owner of an API key).
    Local(Username),
    /// An identity from an OIDC issuer (`oidc:<claim>`), never a valid local name.
    External(Arc<str>),
}

/// Which roles count when a request is authorized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Roles {
    /// The user's roles in the store (a password; an API key without a role list).
    Stored,
    /// Those of the user's stored roles that are also listed (an API key with roles). An
    /// owner who passes every check without roles (root) holds exactly the listed ones.
    Within(Arc<Vec<String>>),
    /// Exactly these (an OIDC identity: roles mapped from its token; none are stored).
    Given(Arc<Vec<String>>),
}

/// The kind of credential a request was authenticated with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// Authorization is disabled: no credential was checked.
    None,
    Password,
    ApiKey,
    Oidc,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::None => "none",
            CredentialKind::Password => "password",
            CredentialKind::ApiKey => "apikey",
            CredentialKind::Oidc => "oidc",
        }
    }
}

impl Authenticated {
    pub(crate) fn user(name: Username, super_user: bool) -> Authenticated {
        Authenticated {
            name: Some(Name::Local(name)),
            super_user,
            roles: Roles::Stored,
            kind: CredentialKind::Password,
        }
    }

    /// The owner of an API key, limited to `roles` when the key lists any.
    pub(crate) fn api_key(
        owner: Username,
        super_user: bool,
        roles: Option<Arc<Vec<String>>>,
    ) -> Authenticated {
        Authenticated {
            name: Some(Name::Local(owner)),
            super_user,
            roles: roles.map_or(Roles::Stored, Roles::Within),
            kind: CredentialKind::ApiKey,
        }
    }

    /// An OIDC identity with the roles its token maps to.
    pub(crate) fn external(name: Arc<str>, roles: Arc<Vec<String>>) -> Authenticated {
        Authenticated {
            name: Some(Name::External(name)),
            super_user: false,
            roles: Roles::Given(roles),
            kind: CredentialKind::Oidc,
        }
    }

    pub(crate) fn unchecked() -> Authenticated {
        Authenticated {
            name: None,
            super_user: false,
            roles: Roles::Stored,
            kind: CredentialKind::None,
        }
    }

    /// The verified name (a local user or `oidc:…`), or `None` when authorization is disabled.
    pub fn name(&self) -> Option<&str> {
        match self.name.as_ref()? {
            Name::Local(user) => Some(user.as_str()),
            Name::External(name) => Some(name),
        }
    }

    /// The verified canonical name of a local user (`None` for an OIDC identity or when
    /// authorization is disabled).
    pub fn username(&self) -> Option<&Username> {
        match self.name.as_ref()? {
            Name::Local(user) => Some(user),
            Name::External(_) => None,
        }
    }

    /// Listed in `common.security.superUsers`: may reset passwords without the old one.
    pub fn is_super_user(&self) -> bool {
        self.super_user
    }

    /// Which roles count for this request.
    pub fn roles(&self) -> &Roles {
        &self.roles
    }

    /// The credential this request was authenticated with.
    pub fn kind(&self) -> CredentialKind {
        self.kind
    }
}

/// Why a request was not authenticated. Messages are Milvus's; none carries a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing authorization in header")]
    MissingHeader,
    #[error("invalid token format")]
    BadToken,
    #[error("auth check failure, please check api key is correct")]
    ApiKey,
    #[error("auth check failure, please check username and password are correct")]
    Denied,
    /// An API key or token refused; the client sees the text of a wrong password.
    #[error("auth check failure, please check username and password are correct")]
    Refused(Refusal),
    /// The hash pool's queue is full; the text is the pool's own (one busy condition, one text).
    #[error("{}", HashError::Busy)]
    Busy,
    /// Too many failures: the (name, address) pair, or the name from every address, is
    /// locked for `seconds` more. The same for names that exist and names that do not.
    #[error("{}", locked_text(*account, *seconds))]
    Locked { account: bool, seconds: u64 },
    /// This replica is already verifying its share of the attempts a lock still allows for
    /// this user, or the address has spent its failed verifications for now (`pace`).
    #[error(
        "too many logins of this user, or failed logins from this address, right now; retry in a moment"
    )]
    Throttled,
    #[error("credential store unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// The gRPC status pymilvus sees: UNAUTHENTICATED is never retried; RESOURCE_EXHAUSTED is
    /// raised to the user at once; UNAVAILABLE is retried with back-off, which is right when
    /// etcd is away or the replica is re-syncing.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            AuthError::MissingHeader
            | AuthError::BadToken
            | AuthError::ApiKey
            | AuthError::Denied
            | AuthError::Refused(_)
            | AuthError::Locked { .. } => tonic::Status::unauthenticated(self.to_string()),
            AuthError::Busy | AuthError::Throttled => {
                tonic::Status::resource_exhausted(self.to_string())
            }
            AuthError::Unavailable(_) => tonic::Status::unavailable(self.to_string()),
        }
    }
}

/// The lock answer: that attempts are locked and for how long, never whether the user exists.
fn locked_text(account: bool, seconds: u64) -> String {
    let whom = match account {
        true => "this user from every address",
        false => "this user from this address",
    };
    format!(
        "auth check failure: login attempts for {whom} are locked after too many failures; \
         retry in {seconds} s or ask an administrator to unlock"
    )
}

/// Most bytes of an `authorization` header we decode: base64 of a 32-byte name, a colon and a
/// 256-byte password is far below this; anything longer is refused before any work.
const MAX_HEADER_LEN: usize = 1024;

/// Most bytes a valid header decodes to.
const MAX_DECODED_LEN: usize = MAX_HEADER_LEN / 4 * 3;

/// A decoded `authorization` header: user and password in one fixed buffer (no allocation
/// on the hot path). The password is never printed (`Debug` is redacted), and the bytes the
/// decoder wrote are wiped when dropped.
pub struct Credentials {
    decoded: [u8; MAX_DECODED_LEN],
    /// How many leading bytes of `decoded` may hold header bytes (all of it until decoding
    /// succeeded: a failed decode may have written any prefix).
    len: usize,
    colon: usize,
}

impl Credentials {
    /// The name exactly as sent (not yet validated: use [`Credentials::username`]).
    pub fn user(&self) -> &str {
        // Checked to be UTF-8 when parsed.
        std::str::from_utf8(&self.decoded[..self.colon]).unwrap_or_default()
    }

    /// The name as the one canonical [`Username`], or `None` if it is not exactly a valid name
    /// (surrounding white space included: it is refused, not trimmed).
    pub fn username(&self, limits: &Limits) -> Option<Username> {
        Username::parse_exact(self.user(), limits).ok()
    }

    pub fn password(&self) -> &[u8] {
        &self.decoded[self.colon + 1..self.len]
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        // Only what was written: the base64 decoder writes exactly the decoded bytes, and the
        // wipe is byte-by-byte volatile writes (a whole 768-byte buffer was ~0.3 µs a request).
        self.decoded[..self.len].zeroize();
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The raw name may be anything a client sent; `{:?}` escapes it.
        f.debug_struct("Credentials")
            .field("user", &self.user())
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Parses the `authorization` header value: standard base64 of `user:password`, split at
/// the first colon (the password may contain colons).
pub fn parse_header(value: Option<&[u8]>) -> Result<Credentials, AuthError> {
    let raw = value.ok_or(AuthError::MissingHeader)?;
    if raw.len() > MAX_HEADER_LEN {
        return Err(AuthError::BadToken);
    }
    // Built first so that the buffer is wiped on every return below.
    let mut credentials = Credentials {
        decoded: [0u8; MAX_DECODED_LEN],
        len: MAX_DECODED_LEN,
        colon: 0,
    };
    credentials.len = base64::engine::general_purpose::STANDARD
        .decode_slice(raw, &mut credentials.decoded)
        .map_err(|_| AuthError::BadToken)?;
    credentials.colon = credentials.decoded[..credentials.len]
        .iter()
        .position(|b| *b == b':')
        .ok_or(AuthError::ApiKey)?;
    std::str::from_utf8(&credentials.decoded[..credentials.colon])
        .map_err(|_| AuthError::Denied)?;
    Ok(credentials)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(header: Option<&str>, expected: Result<(&str, &str), AuthError>) {
        let got = parse_header(header.map(str::as_bytes));
        let got = got
            .as_ref()
            .map(|c| (c.user(), std::str::from_utf8(c.password()).unwrap()));
        assert_eq!(got, expected.as_ref().map(|(u, p)| (*u, *p)), "{header:?}");
    }

    #[test]
    fn header_parsing() {
        check(Some("cm9vdDpNaWx2dXM="), Ok(("root", "Milvus")));
        // "bob:s3:cret": split at the first colon.
        check(Some("Ym9iOnMzOmNyZXQ="), Ok(("bob", "s3:cret")));
        check(None, Err(AuthError::MissingHeader));
        check(Some("not base64!"), Err(AuthError::BadToken));
        check(Some("Bearer cm9vdDpNaWx2dXM="), Err(AuthError::BadToken));
        // "abcdef": no colon, an API key.
        check(Some("YWJjZGVm"), Err(AuthError::ApiKey));
        check(Some(&"A".repeat(2000)), Err(AuthError::BadToken));
    }

    #[test]
    fn credentials_debug_prints_no_password() {
        let credentials = parse_header(Some(b"Ym9iOnMzOmNyZXQ=")).unwrap();
        let printed = format!("{credentials:?}");
        assert_eq!(
            printed,
            r#"Credentials { user: "bob", password: "<redacted>" }"#
        );
        assert!(!printed.contains("s3:cret"));
        let identity =
            Authenticated::user(credentials.username(&Limits::default()).unwrap(), false);
        assert_eq!(identity.name(), Some("bob"));
    }

    #[test]
    fn header_names_are_canonical_or_refused() {
        use base64::Engine;
        let encode = |raw: &str| base64::engine::general_purpose::STANDARD.encode(raw);
        let limits = Limits::default();
        let parsed = parse_header(Some(encode("alice:pw").as_bytes())).unwrap();
        assert_eq!(parsed.username(&limits).unwrap().as_str(), "alice");
        for variant in [" alice", "alice\t", "\u{3000}alice", "al ice", ""] {
            let parsed = parse_header(Some(encode(&format!("{variant}:pw")).as_bytes())).unwrap();
            assert_eq!(parsed.user(), variant);
            assert_eq!(parsed.username(&limits), None, "{variant:?}");
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(
            AuthError::Denied.to_status().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            AuthError::Denied.to_status().message(),
            "auth check failure, please check username and password are correct"
        );
        // A refused key or token reads exactly like a wrong password.
        let refused = AuthError::Refused(Refusal::KeyRevoked).to_status();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert_eq!(refused.message(), AuthError::Denied.to_status().message());
        assert_eq!(
            AuthError::Busy.to_status().code(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(
            AuthError::Unavailable("x".into()).to_status().code(),
            tonic::Code::Unavailable
        );
        let locked = AuthError::Locked {
            account: false,
            seconds: 897,
        }
        .to_status();
        assert_eq!(locked.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            locked.message(),
            "auth check failure: login attempts for this user from this address are locked \
             after too many failures; retry in 897 s or ask an administrator to unlock"
        );
        let account = AuthError::Locked {
            account: true,
            seconds: 1,
        };
        assert!(account.to_string().contains("from every address"));
        assert_eq!(
            AuthError::Throttled.to_status().code(),
            tonic::Code::ResourceExhausted
        );
    }
}

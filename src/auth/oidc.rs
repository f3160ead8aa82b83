//! OIDC single sign-on: a JWT from the configured issuer (`credstore.oidc.*`), sent as
//! pymilvus's `token`, authenticates `{userPrefix}{username claim}` (`oidc:alice`, never a
//! valid local name) with the roles its roles claim maps to (`roleMapping`; unmapped values
//! grant nothing).
//!
//! Verification is `jsonwebtoken`'s (no signature code here): only RS256, ES256 and EdDSA are
//! accepted — the header's `alg` is checked before any key is looked at, so `none` and every
//! HMAC algorithm are refused and a public key can never be used as an HMAC secret; each
//! issuer key is used only with the algorithm of its type. `exp`, `nbf`, `iss` and `aud` are
//! enforced with `leewaySeconds`; claims of the wrong type are refused (jsonwebtoken ≥ 10.3).
//!
//! Keys come from the issuer's JWKS (`jwksUri`: `https://…` verified against `caPemPath`, or
//! `file://…`), fetched at start and again when a token names an unknown `kid` — at most once
//! per `jwksRefetchSeconds`, so random `kid`s cannot make credstore hammer the issuer. A
//! refetch that drops a key forgets the tokens verified with the old set.
//!
//! Verified tokens are cached by the SHA-256 of the token until they expire. Revocations
//! (`{meta}/root-coord/credstore/auth/oidc/revoked/…`: a `jti`, or a subject's tokens issued before a
//! time) are read from the store, cached, and dropped — with every cached token — when the
//! coherence watch sees a revocation change; a load that raced such a change is not cached
//! (an epoch, as for API keys). Nothing here logs or keeps a token.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::auth::apikey::now_unix;
use crate::auth::bearer::Refusal;
use crate::auth::cache::CredentialCache;
use crate::auth::pace::Ticket;
use crate::auth::{AuthError, Authenticated, SeenIdentity};
use crate::catalog::{Catalog, CatalogError};

/// Largest JWKS document read.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// How long one JWKS fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest username claim accepted.
const MAX_NAME_LEN: usize = 256;
/// Most keys tried for a token without `kid`.
const MAX_KEYS_TRIED: usize = 8;
/// Identities remembered for `credstore oidc list`.
const SEEN_CAPACITY: u64 = 1024;

/// Where the issuer's keys are read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    /// `https://host[:port]/path`, verified against the CA at `ca_pem`.
    Https {
        host: String,
        port: u16,
        path: String,
        ca_pem: PathBuf,
    },
    /// `file:///path` (air-gapped sites).
    File(PathBuf),
}

/// The OIDC settings (`credstore.oidc.*`, checked by `config`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcSettings {
    pub issuer: String,
    pub audience: String,
    pub jwks: JwksSource,
    pub username_claim: String,
    pub roles_claim: String,
    pub role_mapping: BTreeMap<String, String>,
    pub user_prefix: String,
    pub leeway_seconds: u64,
    pub refetch_every: Duration,
}

/// One issuer key, usable with exactly one algorithm.
struct IssuerKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// A verified token, as cached.
struct Verified {
    name: Arc<str>,
    roles: Arc<Vec<String>>,
    /// `exp`, seconds since the epoch.
    expires: i64,
}

/// Revocations in force.
#[derive(Default)]
struct Revoked {
    jtis: HashSet<String>,
    /// Subject → tokens issued before this time are revoked.
    subjects: HashMap<String, i64>,
}

/// The OIDC half of authentication; cheap to clone.
#[derive(Clone)]
pub struct Oidc {
    inner: Arc<Inner>,
}

struct Inner {
    settings: OidcSettings,
    catalog: Catalog,
    /// The password cache: only its trust deadline and miss counter are used here.
    cache: CredentialCache,
    keys: RwLock<Arc<Vec<IssuerKey>>>,
    /// When the JWKS was last fetched (or tried); held while fetching, so fetches never overlap.
    fetched: tokio::sync::Mutex<Option<Instant>>,
    tokens: moka::sync::Cache<[u8; 32], Arc<Verified>>,
    revoked: RwLock<Option<Arc<Revoked>>>,
    /// Bumped by every invalidation, under the lock inserts take too.
    epoch: Mutex<u64>,
    seen: moka::sync::Cache<Arc<str>, (Arc<Vec<String>>, i64)>,
}

impl Oidc {
    pub fn new(
        settings: OidcSettings,
        catalog: Catalog,
        cache: CredentialCache,
        capacity: u64,
    ) -> Oidc {
        Oidc {
            inner: Arc::new(Inner {
                settings,
                catalog,
                cache,
                keys: RwLock::new(Arc::new(Vec::new())),
                fetched: tokio::sync::Mutex::new(None),
                tokens: moka::sync::Cache::new(capacity),
                revoked: RwLock::new(None),
                epoch: Mutex::new(0),
                seen: moka::sync::Cache::new(SEEN_CAPACITY),
            }),
        }
    }

    fn epoch(&self) -> std::sync::MutexGuard<'_, u64> {
        self.inner
            .epoch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Fetches the issuer's keys once (at start); a failure is logged and retried on demand.
    pub async fn warm_up(&self) {
        let mut fetched = self.inner.fetched.lock().await;
        if let Err(reason) = self.refetch(&mut fetched).await {
            tracing::warn!(%reason, "cannot fetch the OIDC issuer's keys yet; tokens are refused until they are");
        }
    }

    /// Authenticates a JWT.
    /// `admit` is asked on a miss only, before the signature is checked: a peer that spent
    /// its failures for now (`pace`) is refused without any work, and a refused token spends
    /// one.
    pub async fn authenticate<'p>(
        &self,
        token: &str,
        admit: impl FnOnce() -> Option<Ticket<'p>>,
    ) -> Result<Authenticated, AuthError> {
        if !self.inner.cache.is_trusted() {
            return Err(AuthError::Unavailable(
                "replica is re-syncing with etcd".into(),
            ));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = now_unix();
        let leeway = self.inner.settings.leeway_seconds as i64;
        let entry = match self.inner.tokens.get(&digest) {
            Some(entry) => entry,
            None => {
                let ticket = admit().ok_or(AuthError::Throttled)?;
                let loaded = Box::pin(self.load(token, digest)).await;
                if matches!(loaded, Err(AuthError::Refused(_))) {
                    ticket.failed();
                }
                loaded?
            }
        };
        if entry.expires + leeway < now {
            return Err(AuthError::Refused(Refusal::TokenExpired));
        }
        Ok(Authenticated::external(
            entry.name.clone(),
            entry.roles.clone(),
        ))
    }

    async fn load(&self, token: &str, digest: [u8; 32]) -> Result<Arc<Verified>, AuthError> {
        self.inner.cache.record_miss();
        let epoch = *self.epoch();
        let (algorithm, kid) = header(token)?;
        let claims = self.verify(token, algorithm, kid.as_deref()).await?;
        let settings = &self.inner.settings;
        let name = match claims.get(&settings.username_claim) {
            Some(Value::String(raw))
                if !raw.is_empty()
                    && raw.len() <= MAX_NAME_LEN
                    && !raw.chars().any(char::is_control) =>
            {
                Arc::<str>::from(format!("{}{raw}", settings.user_prefix))
            }
            _ => return Err(AuthError::Refused(Refusal::TokenNoName)),
        };
        let roles = Arc::new(self.map_roles(claims.get(&settings.roles_claim)));
        let expires = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        let revoked = self.revocations(epoch).await?;
        let jti = claims.get("jti").and_then(Value::as_str);
        let subject = claims.get("sub").and_then(Value::as_str);
        let issued = claims.get("iat").and_then(Value::as_i64);
        if jti.is_some_and(|jti| revoked.jtis.contains(jti)) {
            return Err(AuthError::Refused(Refusal::TokenRevoked));
        }
        if let Some(before) = subject.and_then(|s| revoked.subjects.get(s))
            && issued.is_none_or(|iat| iat < *before)
        {
            return Err(AuthError::Refused(Refusal::TokenRevoked));
        }
        let entry = Arc::new(Verified {
            name: name.clone(),
            roles: roles.clone(),
            expires,
        });
        let current = self.epoch();
        if *current == epoch {
            self.inner.tokens.insert(digest, entry.clone());
        }
        drop(current);
        self.inner.seen.insert(name, (roles, now_unix()));
        Ok(entry)
    }

    /// Checks the signature and the registered claims; returns the claims.
    async fn verify(
        &self,
        token: &str,
        algorithm: Algorithm,
        kid: Option<&str>,
    ) -> Result<serde_json::Map<String, Value>, AuthError> {
        let settings = &self.inner.settings;
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = settings.leeway_seconds;
        let mut keys = self.candidates(algorithm, kid);
        if keys.is_empty() {
            keys = self.refetch_for(algorithm, kid).await;
        }
        if keys.is_empty() {
            return Err(AuthError::Refused(Refusal::TokenUnknownKey));
        }
        let mut refusal = Refusal::TokenBadSignature;
        for key in keys.iter().take(MAX_KEYS_TRIED) {
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    refusal = refusal_of(e.kind());
                    if refusal != Refusal::TokenBadSignature {
                        break;
                    }
                }
            }
        }
        Err(AuthError::Refused(refusal))
    }

    /// The keys a token signed with `algorithm` (and `kid`, if it names one) may be checked with.
    fn candidates(&self, algorithm: Algorithm, kid: Option<&str>) -> Vec<DecodingKey> {
        let keys = self
            .inner
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        keys.iter()
            .filter(|k| k.algorithm == algorithm)
            .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
            .map(|k| k.key.clone())
            .collect()
    }

    /// Fetches the JWKS again for an unknown key, unless that was done within
    /// `jwksRefetchSeconds`; returns the candidates afterwards.
    async fn refetch_for(&self, algorithm: Algorithm, kid: Option<&str>) -> Vec<DecodingKey> {
        let mut fetched = self.inner.fetched.lock().await;
        // Another request may have fetched while this one waited.
        let found = self.candidates(algorithm, kid);
        if !found.is_empty() {
            return found;
        }
        let recent = fetched.is_some_and(|at| at.elapsed() < self.inner.settings.refetch_every);
        if recent {
            return Vec::new();
        }
        if let Err(reason) = self.refetch(&mut fetched).await {
            tracing::warn!(%reason, "cannot fetch the OIDC issuer's keys");
        }
        self.candidates(algorithm, kid)
    }

    /// Fetches and installs the JWKS; the caller holds the fetch lock.
    async fn refetch(&self, fetched: &mut Option<Instant>) -> Result<(), String> {
        *fetched = Some(Instant::now());
        let body = tokio::time::timeout(FETCH_TIMEOUT, fetch(&self.inner.settings.jwks))
            .await
            .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))??;
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| format!("not a JWK set: {e}"))?;
        let keys = usable_keys(&set);
        let old: HashSet<Option<String>> = {
            let current = self
                .inner
                .keys
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            current.iter().map(|k| k.kid.clone()).collect()
        };
        let new: HashSet<Option<String>> = keys.iter().map(|k| k.kid.clone()).collect();
        tracing::info!(keys = keys.len(), "fetched the OIDC issuer's keys");
        *self
            .inner
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        if !old.is_subset(&new) {
            // A key was withdrawn: tokens it signed must not outlive it in the cache.
            let mut epoch = self.epoch();
            *epoch += 1;
            self.inner.tokens.invalidate_all();
        }
        Ok(())
    }

    /// The revocations in force (loaded from the store when not cached).
    async fn revocations(&self, epoch: u64) -> Result<Arc<Revoked>, AuthError> {
        if let Some(revoked) = self
            .inner
            .revoked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Ok(revoked);
        }
        let read = self
            .inner
            .catalog
            .oidc_revocations()
            .await
            .map_err(store_error)?
            .value;
        let revoked = Arc::new(Revoked {
            jtis: read.jtis.into_iter().map(|(jti, _)| jti).collect(),
            subjects: read.subjects.into_iter().collect(),
        });
        let current = self.epoch();
        if *current == epoch {
            *self
                .inner
                .revoked
                .write()
                .unwrap_or_else(PoisonError::into_inner) = Some(revoked.clone());
        }
        Ok(revoked)
    }

    fn map_roles(&self, claim: Option<&Value>) -> Vec<String> {
        let mapping = &self.inner.settings.role_mapping;
        let values: Vec<&str> = match claim {
            Some(Value::String(one)) => vec![one.as_str()],
            Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let mut roles: Vec<String> = values
            .iter()
            .filter_map(|v| mapping.get(*v).cloned())
            .collect();
        roles.sort();
        roles.dedup();
        roles
    }

    /// Forgets every verified token and the revocations (a revocation changed).
    pub fn invalidate_all(&self) {
        let mut epoch = self.epoch();
        *epoch += 1;
        self.inner.tokens.invalidate_all();
        *self
            .inner
            .revoked
            .write()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The identities this replica verified recently.
    pub fn seen(&self) -> Vec<SeenIdentity> {
        let mut seen: Vec<SeenIdentity> = self
            .inner
            .seen
            .iter()
            .map(|(name, (roles, at))| SeenIdentity {
                name: name.to_string(),
                roles: roles.to_vec(),
                last_seen: at,
            })
            .collect();
        seen.sort_by(|a, b| a.name.cmp(&b.name));
        seen
    }
}

/// The token's `alg` (only RS256, ES256, EdDSA) and `kid`, read before anything else.
fn header(token: &str) -> Result<(Algorithm, Option<String>), AuthError> {
    let malformed = AuthError::Refused(Refusal::TokenMalformed);
    let encoded = token.split('.').next().ok_or(malformed.clone())?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| malformed.clone())?;
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| malformed.clone())?;
    let algorithm = match header.get("alg").and_then(Value::as_str) {
        Some("RS256") => Algorithm::RS256,
        Some("ES256") => Algorithm::ES256,
        Some("EdDSA") => Algorithm::EdDSA,
        _ => return Err(AuthError::Refused(Refusal::TokenAlgorithm)),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) if kid.len() <= MAX_NAME_LEN => Some(kid.clone()),
        Some(_) => return Err(malformed),
    };
    Ok((algorithm, kid))
}

/// The keys of `set` credstore uses: RSA (RS256), EC P-256 (ES256) and Ed25519 (EdDSA), each
/// bound to that one algorithm; a key whose `alg` says otherwise (or HMAC, or anything else)
/// is skipped.
fn usable_keys(set: &JwkSet) -> Vec<IssuerKey> {
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDSA
            }
            _ => continue,
        };
        let declared = match jwk.common.key_algorithm {
            None => true,
            Some(KeyAlgorithm::RS256) => algorithm == Algorithm::RS256,
            Some(KeyAlgorithm::ES256) => algorithm == Algorithm::ES256,
            Some(KeyAlgorithm::EdDSA) => algorithm == Algorithm::EdDSA,
            Some(_) => false,
        };
        if !declared {
            continue;
        }
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => keys.push(IssuerKey {
                kid: jwk.common.key_id.clone(),
                algorithm,
                key,
            }),
            Err(e) => {
                tracing::warn!(kid = ?jwk.common.key_id, error = %e, "an unreadable key in the OIDC issuer's JWKS")
            }
        }
    }
    keys
}

fn refusal_of(kind: &ErrorKind) -> Refusal {
    match kind {
        ErrorKind::InvalidSignature => Refusal::TokenBadSignature,
        ErrorKind::ExpiredSignature => Refusal::TokenExpired,
        ErrorKind::ImmatureSignature => Refusal::TokenNotYetValid,
        ErrorKind::InvalidIssuer => Refusal::TokenWrongIssuer,
        ErrorKind::InvalidAudience => Refusal::TokenWrongAudience,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Refusal::TokenAlgorithm,
        _ => Refusal::TokenMalformed,
    }
}

fn store_error(err: CatalogError) -> AuthError {
    match err {
        CatalogError::Meta(e) => AuthError::Unavailable(e.to_string()),
        other => {
            tracing::error!(error = %other, "cannot read the OIDC revocations");
            AuthError::Unavailable("the OIDC revocations are unreadable".into())
        }
    }
}

/// The JWKS document, at most [`MAX_JWKS_BYTES`].
async fn fetch(source: &JwksSource) -> Result<Vec<u8>, String> {
    match source {
        JwksSource::File(path) => {
            let file = path.clone();
            let read = tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let mut bytes = Vec::new();
                std::fs::File::open(&file)?
                    .take(MAX_JWKS_BYTES as u64 + 1)
                    .read_to_end(&mut bytes)?;
                Ok::<_, std::io::Error>(bytes)
            });
            let bytes = read
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            match bytes.len() > MAX_JWKS_BYTES {
                true => Err(format!(
                    "{} is larger than {MAX_JWKS_BYTES} bytes",
                    path.display()
                )),
                false => Ok(bytes),
            }
        }
        JwksSource::Https {
            host,
            port,
            path,
            ca_pem,
        } => {
            let stream = crate::tls::connect_https(host, *port, "credstore.oidc.caPemPath", ca_pem)
                .await
                .map_err(|e| e.to_string())?;
            let io = hyper_util::rt::TokioIo::new(stream);
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            let authority = match *port {
                443 => host.clone(),
                port => format!("{host}:{port}"),
            };
            let request = hyper::Request::get(path.as_str())
                .header(hyper::header::HOST, authority)
                .header(hyper::header::ACCEPT, "application/json")
                .body(Empty::<hyper::body::Bytes>::new())
                .map_err(|e| e.to_string())?;
            let exchange = async move {
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    return Err(format!("the issuer answered {}", response.status()));
                }
                let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
                    .collect()
                    .await
                    .map_err(|e| format!("reading the JWKS: {e}"))?;
                Ok(body.to_bytes().to_vec())
            };
            // The connection is driven beside the exchange and ends with it.
            let (body, _) = tokio::join!(exchange, connection);
            body
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(json: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn only_three_algorithms_pass_the_header() {
        let check = |json: &str, expected: Result<(Algorithm, Option<&str>), Refusal>| {
            let token = format!("{}.e30.c2ln", b64(json));
            let got = header(&token);
            let want = expected
                .map(|(a, k)| (a, k.map(str::to_string)))
                .map_err(AuthError::Refused);
            assert_eq!(got, want, "{json}");
        };
        check(
            r#"{"alg":"RS256","kid":"k1"}"#,
            Ok((Algorithm::RS256, Some("k1"))),
        );
        check(r#"{"alg":"ES256"}"#, Ok((Algorithm::ES256, None)));
        check(
            r#"{"alg":"EdDSA","kid":"e"}"#,
            Ok((Algorithm::EdDSA, Some("e"))),
        );
        for refused in [
            "none", "HS256", "HS384", "HS512", "RS384", "PS256", "ES384", "",
        ] {
            check(
                &format!(r#"{{"alg":"{refused}"}}"#),
                Err(Refusal::TokenAlgorithm),
            );
        }
        check(r#"{"kid":"k"}"#, Err(Refusal::TokenAlgorithm));
        check(r#"{"alg":"RS256","kid":7}"#, Err(Refusal::TokenMalformed));
        assert_eq!(
            header("!!.e30.c2ln"),
            Err(AuthError::Refused(Refusal::TokenMalformed))
        );
    }

    #[test]
    fn hmac_and_mislabelled_keys_are_never_used() {
        let set: JwkSet = serde_json::from_str(
            r#"{"keys":[
                {"kty":"oct","k":"c2VjcmV0","kid":"h","alg":"HS256"},
                {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"ed"},
                {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"lie","alg":"RS256"}
            ]}"#,
        )
        .unwrap();
        let keys = usable_keys(&set);
        let kinds: Vec<_> = keys
            .iter()
            .map(|k| (k.kid.as_deref(), k.algorithm))
            .collect();
        assert_eq!(kinds, vec![(Some("ed"), Algorithm::EdDSA)]);
    }
}

//! Usernames, passwords and password hashes, as types that can only be built valid, and the
//! one place that touches argon2 and bcrypt. Milvus's rules and messages
//! (`proxy.maxUsernameLength`, `proxy.minPasswordLength`, `proxy.maxPasswordLength`) live here.
//!
//! Hashing is CPU-heavy and blocking: callers go through `hash_pool::HashPool`.
//!
//! Two ways to read a name: [`Username::parse`] trims surrounding white space first, as
//! Milvus's `ValidateUsername` does for the admin RPCs, and [`Username::parse_exact`] accepts
//! only the canonical spelling — the login path uses it, so `" alice"`, `"alice\n"` or
//! `"alice\u{3000}"` in an `authorization` header are refused rather than mapped to `alice`.
//!
//! Secrets: [`Password`], [`PasswordHash`] and [`Secret`] (a configured secret: the etcd
//! password, the default root password, the upstream token) wipe their bytes when dropped
//! (`zeroize`), and none prints them in `Debug`. In bcrypt mode a password over 72 bytes is refused when it
//! would be written ([`HashError::BcryptTooLong`], Go's text) and never matches when verified —
//! nothing is ever silently truncated.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use zeroize::Zeroize;

/// A configured secret (the etcd password, the default root password, the upstream token):
/// read from the file or the environment like any string, but `Debug` prints `<redacted>`,
/// so a logged or printed config never shows it, and its bytes are wiped when dropped.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// OWASP's first recommendation for argon2id, (memory KiB, iterations, lanes): the default
/// scheme and the weakest one credstore writes without `allowWeakParameters`. The one place
/// this number lives ([`HashScheme::default`], [`HashScheme::check_strength`],
/// [`HashError::TooWeak`] and `config` read it).
pub const MIN_ARGON2: (u32, u32, u32) = (19_456, 2, 1);

/// OWASP's minimum bcrypt cost (also Go's `bcrypt.DefaultCost`, which Milvus writes).
pub const MIN_BCRYPT_COST: u32 = 10;

/// The largest bcrypt cost a hash may carry (bcrypt's own limit).
pub const MAX_BCRYPT_COST: u32 = 31;

/// The largest argon2id parameters a stored hash may carry: (memory KiB, iterations, lanes) —
/// far above any configuration (OWASP's is [`MIN_ARGON2`]), far below a denial of service.
/// `config` refuses to write above it, so every hash credstore writes can be read back.
pub const MAX_STORED_ARGON2: (u32, u32, u32) = (1 << 20, 64, 16);

/// The most bytes bcrypt reads from a password; Go's bcrypt refuses longer ones.
pub const BCRYPT_MAX_PASSWORD_BYTES: usize = 72;

/// Milvus's limits on names and passwords.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_username_len: usize,
    pub min_password_len: usize,
    pub max_password_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_username_len: 32,
            min_password_len: 6,
            max_password_len: 256,
        }
    }
}

/// Why a name or password was refused; the texts are Milvus's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("username must be not empty")]
    EmptyName,
    #[error(
        "invalid username {name} with length {len}, the length of username must be less than {max}"
    )]
    NameTooLong {
        name: String,
        len: usize,
        max: usize,
    },
    #[error("invalid user name {name}, the first character must be a letter, but got {first}")]
    BadFirstChar { name: String, first: String },
    #[error(
        "invalid user name {name}, username must contain only numbers, letters and underscores, but got {bad}"
    )]
    BadChar { name: String, bad: String },
    #[error(
        "invalid password length: invalid parameter[{len} out of range {min} <= value <= {max}]"
    )]
    PasswordLength { len: usize, min: usize, max: usize },
}

/// A valid username: 1..=max bytes, an ASCII letter first, then letters, digits or `_`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Username(String);

impl Username {
    /// Validates `raw` after trimming surrounding white space, as Milvus does for the names in
    /// admin requests (CreateCredential, UpdateCredential, …).
    pub fn parse(raw: &str, limits: &Limits) -> Result<Username, RuleError> {
        Username::parse_exact(raw.trim(), limits)
    }

    /// Validates `raw` as it is: the canonical spelling only. Any surrounding white space (of
    /// any Unicode kind) is refused, never trimmed: this is how the name in an `authorization`
    /// header is read, so one user has exactly one spelling that is verified, cached,
    /// coalesced, MAC'ed, reported and invalidated (as in Milvus 2.4, where `" alice"` at login
    /// looks up a key that does not exist).
    pub fn parse_exact(name: &str, limits: &Limits) -> Result<Username, RuleError> {
        let Some(first) = name.chars().next() else {
            return Err(RuleError::EmptyName);
        };
        if name.len() > limits.max_username_len {
            let max = limits.max_username_len;
            return Err(RuleError::NameTooLong {
                name: name.to_string(),
                len: name.len(),
                max,
            });
        }
        if !first.is_ascii_alphabetic() {
            return Err(RuleError::BadFirstChar {
                name: name.to_string(),
                first: first.to_string(),
            });
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !c.is_ascii_alphanumeric() && *c != '_')
        {
            return Err(RuleError::BadChar {
                name: name.to_string(),
                bad: bad.to_string(),
            });
        }
        Ok(Username(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A password that meets the length rules. It has no `Display`, its `Debug` is redacted, and
/// its bytes are overwritten with zeros when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Vec<u8>);

impl Password {
    /// Checks the length in bytes against the configured bounds. A refused `raw` is wiped too.
    pub fn new(mut raw: Vec<u8>, limits: &Limits) -> Result<Password, RuleError> {
        let len = raw.len();
        if len < limits.min_password_len || len > limits.max_password_len {
            raw.zeroize();
            return Err(RuleError::PasswordLength {
                len,
                min: limits.min_password_len,
                max: limits.max_password_len,
            });
        }
        Ok(Password(raw))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A stored hash in PHC (`$argon2id$…`) or bcrypt (`$2a$…`) form. `Debug` prints no hash
/// bytes, and the string is wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// Accepts the hash forms credstore can verify: argon2id in PHC form, and bcrypt as Go
    /// (Milvus) and the `bcrypt` crate write it — `$2a$`/`$2b$`/`$2y$`, a two-digit cost in
    /// 4..=31, 22 salt and 31 hash characters of bcrypt's base64 alphabet.
    ///
    /// A stored value is input too: argon2id parameters beyond [`MAX_STORED_ARGON2`] (memory
    /// KiB, iterations, lanes) are refused, so a hostile record cannot make one verification
    /// allocate gigabytes or run for minutes.
    pub fn parse(raw: &str) -> Result<PasswordHash, HashError> {
        if raw.starts_with("$argon2id$") {
            let parsed = argon2::PasswordHash::new(raw).map_err(|_| HashError::Malformed)?;
            let params = Params::try_from(&parsed).map_err(|_| HashError::Malformed)?;
            let (m, t, p) = MAX_STORED_ARGON2;
            if params.m_cost() > m || params.t_cost() > t || params.p_cost() > p {
                return Err(HashError::Malformed);
            }
        } else if !is_bcrypt(raw) {
            return Err(HashError::Malformed);
        }
        Ok(PasswordHash(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

impl Drop for PasswordHash {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

fn is_bcrypt(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let alphabet = |b: &u8| b.is_ascii_alphanumeric() || *b == b'.' || *b == b'/';
    bytes.len() == 60
        && ["$2a$", "$2b$", "$2y$"].iter().any(|p| raw.starts_with(p))
        && bytes[6] == b'$'
        && bcrypt_cost(raw).is_some_and(|cost| (4..=MAX_BCRYPT_COST).contains(&cost))
        && bytes[4..6].iter().all(u8::is_ascii_digit)
        && bytes[7..].iter().all(alphabet)
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("stored credential hash is invalid")]
    Malformed,
    #[error("password hashing failed: {0}")]
    Hashing(String),
    #[error(
        "hash parameters {0} are weaker than the minimum (argon2id m={m} KiB, t={t}, p={p}; bcrypt cost {cost})",
        m = MIN_ARGON2.0,
        t = MIN_ARGON2.1,
        p = MIN_ARGON2.2,
        cost = MIN_BCRYPT_COST
    )]
    TooWeak(String),
    #[error("too many password hash computations are waiting; retry later")]
    Busy,
    /// Go's `bcrypt.ErrPasswordTooLong`, wrapped as Milvus's proxy wraps it on
    /// CreateCredential/UpdateCredential.
    #[error("encrypt password failed: bcrypt: password length exceeds 72 bytes")]
    BcryptTooLong,
}

/// The algorithm new hashes are written with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashScheme {
    Argon2id {
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
    },
    /// For clusters that share etcd with Milvus itself, which can only read bcrypt.
    Bcrypt { cost: u32 },
}

impl Default for HashScheme {
    fn default() -> Self {
        let (memory_kib, iterations, parallelism) = MIN_ARGON2;
        HashScheme::Argon2id {
            memory_kib,
            iterations,
            parallelism,
        }
    }
}

impl HashScheme {
    /// Refuses parameters below OWASP's first recommendation unless `allow_weak` (tests only).
    pub fn check_strength(&self, allow_weak: bool) -> Result<(), HashError> {
        let strong = match self {
            HashScheme::Argon2id {
                memory_kib,
                iterations,
                parallelism,
            } => {
                let (m, t, p) = MIN_ARGON2;
                *memory_kib >= m && *iterations >= t && *parallelism >= p
            }
            HashScheme::Bcrypt { cost } => *cost >= MIN_BCRYPT_COST,
        };
        match strong || allow_weak {
            true => Ok(()),
            false => Err(HashError::TooWeak(format!("{self:?}"))),
        }
    }
}

/// Hashes and verifies passwords. Every method is CPU-bound: call from the blocking pool.
#[derive(Clone, Debug)]
pub struct Hasher {
    scheme: HashScheme,
}

impl Hasher {
    pub fn new(scheme: HashScheme) -> Hasher {
        Hasher { scheme }
    }

    /// A new salted hash of `password` in the configured scheme.
    pub fn hash(&self, password: &Password) -> Result<PasswordHash, HashError> {
        match &self.scheme {
            HashScheme::Argon2id {
                memory_kib,
                iterations,
                parallelism,
            } => {
                let params = Params::new(*memory_kib, *iterations, *parallelism, None)
                    .map_err(|e| HashError::Hashing(e.to_string()))?;
                let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
                let hash = argon
                    .hash_password(password.as_bytes())
                    .map_err(|e| HashError::Hashing(e.to_string()))?;
                Ok(PasswordHash(hash.to_string()))
            }
            HashScheme::Bcrypt { cost } => {
                // The crate would hash the first 72 bytes; Go (and so Milvus) refuses instead.
                if password.as_bytes().len() > BCRYPT_MAX_PASSWORD_BYTES {
                    return Err(HashError::BcryptTooLong);
                }
                let parts = bcrypt::hash_with_result(password.as_bytes(), *cost)
                    .map_err(|e| HashError::Hashing(e.to_string()))?;
                Ok(PasswordHash(
                    parts.format_for_version(bcrypt::Version::TwoA),
                ))
            }
        }
    }

    /// Whether `password` matches `hash`; the comparison inside both crates is constant-time.
    /// Takes raw bytes because a login's password has not passed the length rules.
    pub fn verify(&self, hash: &PasswordHash, password: &[u8]) -> Result<bool, HashError> {
        if is_bcrypt(&hash.0) {
            // Go's bcrypt refuses passwords over 72 bytes instead of truncating them; so do we,
            // so a long password never matches on its 72-byte prefix.
            if password.len() > BCRYPT_MAX_PASSWORD_BYTES {
                return Ok(false);
            }
            return bcrypt::verify(password, &hash.0).map_err(|_| HashError::Malformed);
        }
        let parsed = argon2::PasswordHash::new(&hash.0).map_err(|_| HashError::Malformed)?;
        match Argon2::default().verify_password(password, &parsed) {
            Ok(()) => Ok(true),
            Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
            Err(_) => Err(HashError::Malformed),
        }
    }

    /// Whether `hash` should be replaced by one in the configured scheme after a successful login.
    /// In bcrypt mode (etcd shared with Milvus) a bcrypt hash is never rewritten, whatever its
    /// cost: Milvus may have written it (the `milvus` 2.3.5 package writes cost 4) and keeps
    /// verifying it, so credstore never rewrites a hash it did not write. Only an argon2id
    /// hash, which Milvus cannot read, becomes bcrypt there.
    pub fn needs_rehash(&self, hash: &PasswordHash) -> bool {
        match &self.scheme {
            HashScheme::Bcrypt { .. } => !is_bcrypt(&hash.0),
            HashScheme::Argon2id {
                memory_kib,
                iterations,
                parallelism,
            } => {
                let Ok(parsed) = argon2::PasswordHash::new(&hash.0) else {
                    return true;
                };
                let Ok(params) = Params::try_from(&parsed) else {
                    return true;
                };
                params.m_cost() < *memory_kib
                    || params.t_cost() < *iterations
                    || params.p_cost() < *parallelism
            }
        }
    }

    /// A fixed hash to verify against when the user does not exist, so that an unknown user
    /// costs the same time as a wrong password.
    pub fn dummy_hash(&self) -> PasswordHash {
        let password = Password(b"credstore-dummy-password".to_vec());
        // Hashing fixed input with validated parameters cannot fail; if it did, every
        // verification would fail too, so fall back to a valid-looking bcrypt form.
        self.hash(&password).unwrap_or_else(|_| {
            PasswordHash("$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy".into())
        })
    }
}

fn bcrypt_cost(raw: &str) -> Option<u32> {
    raw.get(4..6)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weak() -> Hasher {
        Hasher::new(HashScheme::Argon2id {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        })
    }

    fn check_name(raw: &str, expected: Result<&str, &str>) {
        let got = Username::parse(raw, &Limits::default());
        match (got, expected) {
            (Ok(name), Ok(want)) => assert_eq!(name.as_str(), want, "{raw:?}"),
            (Err(err), Err(want)) => assert_eq!(err.to_string(), want, "{raw:?}"),
            (got, want) => panic!("{raw:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn username_rules() {
        let long = "a".repeat(33);
        check_name("alice", Ok("alice"));
        check_name("  bob_2 ", Ok("bob_2"));
        check_name(&"a".repeat(32), Ok(&"a".repeat(32)));
        check_name("", Err("username must be not empty"));
        check_name("   ", Err("username must be not empty"));
        check_name(
            &long,
            Err(&format!(
                "invalid username {long} with length 33, the length of username must be less than 32"
            )),
        );
        check_name(
            "1abc",
            Err("invalid user name 1abc, the first character must be a letter, but got 1"),
        );
        check_name(
            "_abc",
            Err("invalid user name _abc, the first character must be a letter, but got _"),
        );
        check_name(
            "a-b",
            Err(
                "invalid user name a-b, username must contain only numbers, letters and underscores, but got -",
            ),
        );
        check_name(
            "a/b",
            Err(
                "invalid user name a/b, username must contain only numbers, letters and underscores, but got /",
            ),
        );
        check_name(
            "é",
            Err("invalid user name é, the first character must be a letter, but got é"),
        );
    }

    #[test]
    fn password_rules_count_bytes() {
        let limits = Limits::default();
        assert!(Password::new(vec![b'x'; 6], &limits).is_ok());
        assert!(Password::new(vec![b'x'; 256], &limits).is_ok());
        let short = Password::new(vec![b'x'; 5], &limits).unwrap_err();
        assert_eq!(
            short.to_string(),
            "invalid password length: invalid parameter[5 out of range 6 <= value <= 256]"
        );
        assert!(Password::new(vec![b'x'; 257], &limits).is_err());
        // Three two-byte characters are six bytes.
        assert!(Password::new("ééé".as_bytes().to_vec(), &limits).is_ok());
        assert_eq!(
            format!("{:?}", Password::new(b"secret1".to_vec(), &limits).unwrap()),
            "Password(<redacted>)"
        );
    }

    #[test]
    fn argon2_hash_verifies_and_rejects() {
        let hasher = weak();
        let password = Password::new(b"correct horse".to_vec(), &Limits::default()).unwrap();
        let hash = hasher.hash(&password).unwrap();
        assert!(hash.as_str().starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert!(hasher.verify(&hash, b"correct horse").unwrap());
        assert!(!hasher.verify(&hash, b"correct horsE").unwrap());
        assert!(PasswordHash::parse(hash.as_str()).is_ok());
    }

    #[test]
    fn default_scheme_is_owasp_and_weak_is_refused() {
        assert_eq!(
            HashScheme::default(),
            HashScheme::Argon2id {
                memory_kib: 19_456,
                iterations: 2,
                parallelism: 1
            }
        );
        assert!(HashScheme::default().check_strength(false).is_ok());
        let weak = HashScheme::Argon2id {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        assert!(weak.check_strength(false).is_err());
        assert!(weak.check_strength(true).is_ok());
        assert!(
            HashScheme::Bcrypt { cost: 9 }
                .check_strength(false)
                .is_err()
        );
    }

    #[test]
    fn bcrypt_written_as_milvus_does_verifies_and_needs_rehash() {
        let bcrypt_hasher = Hasher::new(HashScheme::Bcrypt { cost: 10 });
        let password = Password::new(b"Milvus".to_vec(), &Limits::default()).unwrap();
        let hash = bcrypt_hasher.hash(&password).unwrap();
        assert!(hash.as_str().starts_with("$2a$10$"), "{}", hash.as_str());
        let parsed = PasswordHash::parse(hash.as_str()).unwrap();
        let argon = weak();
        assert!(argon.verify(&parsed, b"Milvus").unwrap());
        assert!(!argon.verify(&parsed, b"milvus").unwrap());
        assert!(argon.needs_rehash(&parsed));
        assert!(!bcrypt_hasher.needs_rehash(&parsed));
        // Shared mode: a cheaper bcrypt hash Milvus wrote stays as it is; argon2id does not.
        let cheap = Hasher::new(HashScheme::Bcrypt { cost: 4 })
            .hash(&password)
            .unwrap();
        assert!(cheap.as_str().starts_with("$2a$04$"));
        assert!(!bcrypt_hasher.needs_rehash(&cheap));
        assert!(bcrypt_hasher.needs_rehash(&argon.hash(&password).unwrap()));
        // A 73-byte password never matches a bcrypt hash, as with Go's bcrypt.
        assert!(!argon.verify(&parsed, &[b'M'; 73]).unwrap());
    }

    /// Issue 9.13: in bcrypt mode a password over 72 bytes is refused when written (Go's text,
    /// as Milvus's proxy wraps it), and a long candidate never matches on its 72-byte prefix.
    #[test]
    fn bcrypt_never_truncates() {
        let bcrypt_hasher = Hasher::new(HashScheme::Bcrypt { cost: 4 });
        let limits = Limits::default();
        let long = Password::new(vec![b'p'; 100], &limits).unwrap();
        let err = bcrypt_hasher.hash(&long).unwrap_err();
        assert!(matches!(err, HashError::BcryptTooLong));
        assert_eq!(
            err.to_string(),
            "encrypt password failed: bcrypt: password length exceeds 72 bytes"
        );
        let exactly = Password::new(vec![b'p'; 72], &limits).unwrap();
        let hash = bcrypt_hasher.hash(&exactly).unwrap();
        assert!(bcrypt_hasher.verify(&hash, &[b'p'; 72]).unwrap());
        // 73 and 100 bytes share the hashed 72-byte prefix; the crate alone would accept them.
        assert!(bcrypt::verify([b'p'; 100], hash.as_str()).unwrap());
        assert!(!bcrypt_hasher.verify(&hash, &[b'p'; 73]).unwrap());
        assert!(!bcrypt_hasher.verify(&hash, &[b'p'; 100]).unwrap());
        // argon2id has no such limit.
        assert!(weak().hash(&long).is_ok());
    }

    #[test]
    fn debug_prints_no_secret_or_hash_bytes() {
        let password = Password::new(b"hunter22-secret".to_vec(), &Limits::default()).unwrap();
        let hash = weak().hash(&password).unwrap();
        let printed = format!("{password:?} {hash:?} {:?}", Some(&hash));
        assert!(!printed.contains("hunter22"), "{printed}");
        assert!(!printed.contains("argon2"), "{printed}");
        let salt_and_hash = hash.as_str().rsplit('$').take(2).collect::<Vec<_>>();
        for part in salt_and_hash {
            assert!(!printed.contains(part), "{printed}");
        }
        let milvus = PasswordHash::parse(MILVUS_ROOT_HASH).unwrap();
        assert_eq!(format!("{milvus:?}"), "PasswordHash(<redacted>)");
    }

    /// A `$2a$10$` value in the form Go's bcrypt (so Milvus) writes.
    const MILVUS_ROOT_HASH: &str = "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

    #[test]
    fn exact_names_refuse_what_parse_trims() {
        let limits = Limits::default();
        assert_eq!(
            Username::parse_exact("alice", &limits).unwrap().as_str(),
            "alice"
        );
        for variant in [
            " alice",
            "alice ",
            "\talice",
            "alice\n",
            "\r\nalice",
            "\u{a0}alice",
            "alice\u{3000}",
            "\u{2003}alice",
            "\u{85}alice",
        ] {
            assert!(
                Username::parse_exact(variant, &limits).is_err(),
                "{variant:?}"
            );
            // The admin RPCs trim as Milvus does: the same canonical name.
            assert_eq!(
                Username::parse(variant, &limits).unwrap().as_str(),
                "alice",
                "{variant:?}"
            );
        }
    }

    #[test]
    fn rehash_policy_follows_parameters() {
        let password = Password::new(b"secret1".to_vec(), &Limits::default()).unwrap();
        let old = weak().hash(&password).unwrap();
        let stronger = Hasher::new(HashScheme::Argon2id {
            memory_kib: 128,
            iterations: 1,
            parallelism: 1,
        });
        assert!(stronger.needs_rehash(&old));
        assert!(!weak().needs_rehash(&old));
    }

    #[test]
    fn malformed_hashes_are_refused() {
        let good = MILVUS_ROOT_HASH;
        assert!(PasswordHash::parse(good).is_ok());
        let cost_99 = good.replace("$10$", "$99$");
        let cost_plus = good.replace("$10$", "$+9$");
        let bad_char = format!("{}!", &good[..59]);
        let non_ascii = format!("{}é", &good[..58]);
        for raw in [
            "",
            "plain",
            "$argon2id$v=19$garbage",
            "$2a$10$short",
            &cost_99,
            &cost_plus,
            &bad_char,
            &non_ascii,
        ] {
            assert!(PasswordHash::parse(raw).is_err(), "{raw:?}");
        }
    }
}

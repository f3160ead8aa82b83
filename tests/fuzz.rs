//! Property tests (proptest, stable toolchain) for everything `auth` and `password` parse from
//! the outside: the `authorization` header and its base64, usernames, passwords, and stored
//! hash strings (argon2id PHC and bcrypt, including `$2a$10$` values as Milvus writes them).
//! Properties: no input panics; what is accepted round-trips; rejected input changes nothing.
//!
//! `cargo test --test fuzz` runs a short pass (256 cases per property). A long run sets
//! `FUZZ_CASES` (cases per parser property; the authenticator property runs a tenth of it):
//! `FUZZ_CASES=200000 cargo test --release --test fuzz` generates over 10^6 inputs.

use std::sync::OnceLock;

use base64::Engine;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

use credstore::auth::{AuthError, Authenticator, AuthenticatorConfig, parse_header};
use credstore::catalog::Catalog;
use credstore::hash_pool::{HashPool, HashPoolConfig};
use credstore::meta::{EmbeddedKv, MetaKv, Store};
use credstore::password::{
    HashScheme, Hasher, Limits, Password, PasswordHash, RuleError, Username,
};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn cases(divisor: u32) -> u32 {
    let base = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(256);
    (base / divisor).max(16)
}

fn config(divisor: u32) -> Config {
    Config {
        cases: cases(divisor),
        // No regression files in the tree; a failure prints its minimal input.
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

/// Characters that make names interesting: valid ones, white space of every kind, the
/// separator, controls, non-ASCII letters and digits.
fn name_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range('a', 'z'),
        1 => proptest::char::range('A', 'Z'),
        1 => proptest::char::range('0', '9'),
        1 => Just('_'),
        1 => prop::sample::select(vec![
            ' ', '\t', '\n', '\r', '\u{b}', '\u{c}', '\u{85}', '\u{a0}', '\u{1680}', '\u{2000}',
            '\u{2003}', '\u{2028}', '\u{2029}', '\u{202f}', '\u{205f}', '\u{3000}', '\u{feff}',
            '\u{200b}', ':', '\0', '-', '.', '/', '$', 'é', 'ß', 'İ', '٣', '🦀',
        ]),
        1 => any::<char>(),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(name_char(), 0..40).prop_map(|chars| chars.into_iter().collect())
}

fn is_canonical(raw: &str, limits: &Limits) -> bool {
    let bytes = raw.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= limits.max_username_len
        && bytes[0].is_ascii_alphabetic()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

fn weak_scheme() -> HashScheme {
    HashScheme::Argon2id {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
    }
}

fn weak_hasher() -> Hasher {
    Hasher::new(weak_scheme())
}

/// A few valid stored hashes to mutate: argon2id (weak, fast) and bcrypt `$2a$`/`$2b$`/`$2y$`
/// at cost 4, and a `$2a$10$` value in Go's (Milvus's) form.
fn seeds() -> &'static [String] {
    static SEEDS: OnceLock<Vec<String>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let password = Password::new(b"Milvus".to_vec(), &Limits::default()).unwrap();
        let bcrypt = bcrypt::hash_with_result(b"Milvus", 4).unwrap();
        vec![
            weak_hasher().hash(&password).unwrap().as_str().to_string(),
            bcrypt.format_for_version(bcrypt::Version::TwoA),
            bcrypt.format_for_version(bcrypt::Version::TwoB),
            bcrypt.format_for_version(bcrypt::Version::TwoY),
            "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy".to_string(),
            "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$q5ZyN0jvwN3ozbxyA2b0pUKZQ6mbZpYWzXhbvuGbEFU"
                .to_string(),
        ]
    })
}

/// A seed with some characters replaced, inserted or removed, or cut short.
fn hash_string() -> impl Strategy<Value = String> {
    let edits = prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<char>()), 0..4);
    prop_oneof![
        3 => (0..seeds().len(), edits, any::<prop::sample::Index>(), any::<bool>()).prop_map(
            |(seed, edits, cut, truncate)| {
                let mut chars: Vec<char> = seeds()[seed].chars().collect();
                for (at, kind, c) in edits {
                    let at = at.index(chars.len().max(1)).min(chars.len());
                    match kind {
                        0 if at < chars.len() => chars[at] = c,
                        1 => chars.insert(at, c),
                        2 if at < chars.len() => {
                            chars.remove(at);
                        }
                        // A digit: parameters and costs.
                        _ if at < chars.len() => chars[at] = char::from(b'0' + (c as u8 % 10)),
                        _ => {}
                    }
                }
                if truncate {
                    chars.truncate(cut.index(chars.len().max(1)));
                }
                chars.into_iter().collect()
            }
        ),
        1 => ".*",
        1 => "\\$(argon2id|argon2i|2a|2b|2y|2x)\\$[ -~]{0,80}",
    ]
}

proptest! {
    #![proptest_config(config(1))]

    /// Any bytes: the parser answers, and an accepted header is exactly base64 of `user:pw`.
    #[test]
    fn header_parser_never_panics(raw in prop::collection::vec(any::<u8>(), 0..1400)) {
        if let Ok(credentials) = parse_header(Some(&raw)) {
            let decoded = B64.decode(&raw).expect("accepted input is base64");
            let mut joined = credentials.user().as_bytes().to_vec();
            joined.push(b':');
            joined.extend_from_slice(credentials.password());
            prop_assert_eq!(joined, decoded);
        }
    }

    /// Base64 text with noise: the same, from inputs that mostly decode.
    #[test]
    fn base64_like_headers_never_panic(raw in "[A-Za-z0-9+/=]{0,1100}[ -~]{0,3}") {
        let parsed = parse_header(Some(raw.as_bytes()));
        match B64.decode(raw.as_bytes()) {
            Ok(bytes) if raw.len() <= 1024 => match &parsed {
                Ok(c) => prop_assert_eq!(c.user().len() + 1 + c.password().len(), bytes.len()),
                Err(e) => prop_assert!(
                    matches!(e, AuthError::ApiKey | AuthError::Denied),
                    "{e:?}"
                ),
            },
            _ => prop_assert!(parsed.is_err()),
        }
    }

    /// Encode, parse, get the same name and password back; the name is a `Username` exactly
    /// when it is already canonical — white space around it is refused, never trimmed.
    #[test]
    fn header_round_trips(user in name(), password in prop::collection::vec(any::<u8>(), 0..300)) {
        let limits = Limits::default();
        let user = user.replace(':', "");
        let mut raw = user.clone().into_bytes();
        raw.push(b':');
        raw.extend_from_slice(&password);
        let header = B64.encode(&raw);
        match parse_header(Some(header.as_bytes())) {
            Ok(credentials) => {
                prop_assert_eq!(credentials.user(), user.as_str());
                prop_assert_eq!(credentials.password(), password.as_slice());
                let name = credentials.username(&limits);
                prop_assert_eq!(name.is_some(), is_canonical(&user, &limits));
                if let Some(name) = name {
                    prop_assert_eq!(name.as_str(), user.as_str());
                }
            }
            // Too long for the header bound.
            Err(e) => prop_assert!(header.len() > 1024, "{e:?}"),
        }
    }

    /// Any string: `parse_exact` accepts exactly the canonical names and returns them as they
    /// are; `parse` (admin RPCs) is `parse_exact` of the trimmed string; both are idempotent.
    #[test]
    fn usernames(raw in name()) {
        let limits = Limits::default();
        let exact = Username::parse_exact(&raw, &limits);
        prop_assert_eq!(exact.is_ok(), is_canonical(&raw, &limits));
        if let Ok(name) = &exact {
            prop_assert_eq!(name.as_str(), raw.as_str());
            prop_assert_eq!(Username::parse(name.as_str(), &limits).ok(), Some(name.clone()));
        }
        let trimmed = Username::parse(&raw, &limits);
        prop_assert_eq!(&trimmed, &Username::parse_exact(raw.trim(), &limits));
        if let Ok(name) = &trimmed {
            prop_assert_eq!(Username::parse_exact(name.as_str(), &limits).ok(), Some(name.clone()));
        }
        let padded = format!("{raw} ");
        prop_assert!(Username::parse_exact(&padded, &limits).is_err());
        if let Err(err) = exact {
            // Errors never panic when printed, and quote at most the name itself.
            let _ = err.to_string();
        }
    }

    /// Any bytes: a password is accepted exactly within the byte bounds, kept as given, and
    /// its `Debug` never shows it.
    #[test]
    fn passwords(raw in prop::collection::vec(any::<u8>(), 0..300)) {
        let limits = Limits::default();
        let len = raw.len();
        match Password::new(raw.clone(), &limits) {
            Ok(password) => {
                prop_assert!((6..=256).contains(&len));
                prop_assert_eq!(password.as_bytes(), raw.as_slice());
                prop_assert_eq!(format!("{password:?}"), "Password(<redacted>)");
            }
            Err(RuleError::PasswordLength { len: got, .. }) => {
                prop_assert_eq!(got, len);
                prop_assert!(!(6..=256).contains(&len));
            }
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    /// Stored hash strings, valid and mangled: parsing never panics, an accepted string
    /// round-trips and never prints, and the rehash policy answers for it.
    #[test]
    fn stored_hashes(raw in hash_string()) {
        if let Ok(hash) = PasswordHash::parse(&raw) {
            prop_assert_eq!(hash.as_str(), raw.as_str());
            prop_assert_eq!(PasswordHash::parse(hash.as_str()).map(|h| h == hash).ok(), Some(true));
            prop_assert_eq!(format!("{hash:?}"), "PasswordHash(<redacted>)");
            let _ = weak_hasher().needs_rehash(&hash);
            let _ = Hasher::new(HashScheme::Bcrypt { cost: 10 }).needs_rehash(&hash);
        }
    }
}

proptest! {
    #![proptest_config(config(20))]

    /// Mangled seeds that still parse are verified without panicking (cheap seeds only:
    /// argon2 at 8 KiB, bcrypt at cost 4; parameters stay bounded by the parser).
    #[test]
    fn stored_hashes_verify_without_panic(raw in hash_string(), password in prop::collection::vec(any::<u8>(), 0..100)) {
        if let Ok(hash) = PasswordHash::parse(&raw) {
            let cheap = raw.starts_with("$2a$04$") || raw.starts_with("$2b$04$")
                || raw.starts_with("$2y$04$") || raw.contains("m=8,t=1,p=1");
            if cheap {
                let verified = weak_hasher().verify(&hash, &password);
                if raw == seeds()[0] || raw == seeds()[1] {
                    prop_assert_eq!(verified.ok(), Some(password == b"Milvus"));
                }
            }
        }
    }
}

/// An authenticator over an embedded store with alice cached, shared by the cases.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    auth: Authenticator,
    store: Store,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Embedded(EmbeddedKv::open(&dir.path().join("kv.redb")).unwrap());
        let auth = runtime.block_on(async {
            let catalog = Catalog::new(store.clone(), "fuzz/meta");
            let pool = HashPool::new(HashPoolConfig::new(weak_scheme()));
            let password = Password::new(b"password1".to_vec(), &Limits::default()).unwrap();
            let hash = pool.hash(password).await.unwrap();
            let alice = Username::parse_exact("alice", &Limits::default()).unwrap();
            catalog.create_user(&alice, &hash, None).await.unwrap();
            let config = AuthenticatorConfig {
                enabled: true,
                super_users: vec!["alice".into()],
                limits: Limits::default(),
                cache_capacity: 1000,
                cache_ttl: None,
                // The properties are about header parsing and the cache; alice's wrong
                // passwords would lock her pair after 5 and answer the lock instead.
                lockout: credstore::auth::LockoutPolicy {
                    enabled: false,
                    ..Default::default()
                },
            };
            let auth = Authenticator::new(config, catalog, pool).await.unwrap();
            let header = B64.encode("alice:password1");
            auth.authenticate(Some(header.as_bytes())).await.unwrap();
            auth
        });
        Fixture {
            runtime,
            auth,
            store,
            _dir: dir,
        }
    })
}

/// Headers that are mostly well-formed: a name (often a spelling of alice), a colon, and a
/// password (often alice's).
fn near_header() -> impl Strategy<Value = Vec<u8>> {
    let user = prop_oneof![
        2 => (name(), name()).prop_map(|(a, b)| format!("{a}alice{b}")),
        1 => name(),
        1 => Just("alice".to_string()),
    ];
    let password = prop_oneof![
        1 => Just(b"password1".to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..80),
    ];
    prop_oneof![
        4 => (user, password).prop_map(|(u, p)| {
            let mut raw = u.into_bytes();
            raw.push(b':');
            raw.extend_from_slice(&p);
            B64.encode(raw).into_bytes()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ]
}

proptest! {
    #![proptest_config(config(10))]

    /// Rejected input changes nothing: the store is not written, no entry is added or
    /// removed (alice's stays), and only `alice:password1` is accepted.
    #[test]
    fn rejected_headers_change_nothing(header in near_header()) {
        let f = fixture();
        let before_revision = f.runtime.block_on(f.store.get("fuzz/")).unwrap().revision;
        let before = f.auth.stats();
        let result = f.runtime.block_on(f.auth.authenticate(Some(&header)));
        let accepted = B64.encode("alice:password1").into_bytes();
        match &result {
            Ok(identity) => {
                prop_assert_eq!(&header, &accepted);
                prop_assert_eq!(identity.name(), Some("alice"));
                prop_assert!(identity.is_super_user());
            }
            Err(e) => prop_assert!(
                matches!(e, AuthError::Denied | AuthError::BadToken | AuthError::ApiKey),
                "{e:?}"
            ),
        }
        let after = f.auth.stats();
        prop_assert_eq!(after.rehashed, before.rehashed);
        // Nothing but alice is ever cached (the entry count is only eventually exact).
        let raw = B64.decode(&header).unwrap_or_default();
        if let Some(colon) = raw.iter().position(|b| *b == b':') {
            let user = String::from_utf8_lossy(&raw[..colon]);
            prop_assert_eq!(f.auth.is_cached(&user), user == "alice");
        }
        prop_assert!(f.auth.is_cached("alice"));
        let after_revision = f.runtime.block_on(f.store.get("fuzz/")).unwrap().revision;
        prop_assert_eq!(after_revision, before_revision);
    }
}

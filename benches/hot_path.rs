//! Micro-benchmarks of the costs that decide credstore's speed: a cached verification (the
//! per-request hot path: header parse, cache lookup, keyed hash, constant-time compare) of a
//! password, an API key and an OIDC token, a
//! full argon2id and bcrypt verification at production parameters (what a cache miss costs),
//! and the catalog's JSON encode/decode. Run: `cargo bench --bench hot_path`.

use std::hint::black_box;

use base64::Engine;
use credstore::auth::{Authenticator, AuthenticatorConfig, JwksSource, OidcSettings};
use credstore::catalog::{Catalog, StoredKey, StoredUser};
use credstore::hash_pool::{HashPool, HashPoolConfig};
use credstore::meta::{EmbeddedKv, KeyValue, Store};
use credstore::password::{HashScheme, Hasher, Limits, Password, PasswordHash, Username};
use criterion::{Criterion, criterion_group, criterion_main};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn cached_verification(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let (auth, header) = rt.block_on(async {
        let (auth, _) = authenticator(&dir, None).await;
        let header = base64::engine::general_purpose::STANDARD.encode("alice:bench-password");
        auth.authenticate(Some(header.as_bytes()))
            .await
            .expect("first login verifies and caches");
        (auth, header)
    });
    c.bench_function(
        "cached verification (header parse + cache + HMAC + ct compare)",
        |b| {
            b.to_async(&rt).iter(|| async {
                auth.authenticate(Some(black_box(header.as_bytes())))
                    .await
                    .expect("cached")
            })
        },
    );
}

/// An API key as `MilvusClient(token=key)` sends it, cached after its first use: the same
/// header parse, cache lookup, HMAC and constant-time compare as a password, plus an expiry
/// check.
fn cached_api_key(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let (auth, header) = rt.block_on(async {
        let (auth, catalog) = authenticator(&dir, None).await;
        let new = credstore::auth::apikey::generate().expect("a key");
        let key = StoredKey {
            id: new.id.clone(),
            owner: Username::parse("alice", &Limits::default()).expect("valid"),
            hash: new.hash.clone(),
            roles: vec!["reader".into()],
            created: 0,
            expires: Some(i64::MAX / 2),
            description: String::new(),
            revoked: None,
            mod_revision: 0,
        };
        catalog
            .create_api_key(&key)
            .await
            .expect("stored")
            .expect("a fresh id");
        let header = base64::engine::general_purpose::STANDARD.encode(new.key.as_str());
        auth.authenticate(Some(header.as_bytes()))
            .await
            .expect("first use verifies and caches");
        (auth, header)
    });
    c.bench_function(
        "cached API key (header parse + cache + HMAC + ct compare + expiry)",
        |b| {
            b.to_async(&rt).iter(|| async {
                auth.authenticate(Some(black_box(header.as_bytes())))
                    .await
                    .expect("cached")
            })
        },
    );
}

/// An EdDSA JWT (RFC 8032's first test key) cached after its first verification: header
/// decode, SHA-256 of the token, cache lookup, expiry check.
fn cached_oidc_token(c: &mut Criterion) {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const PUBLIC_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{PUBLIC_X}","kid":"k1"}}]}}"#),
    )
    .expect("jwks written");
    let settings = OidcSettings {
        issuer: "https://issuer.bench".into(),
        audience: "credstore".into(),
        jwks: JwksSource::File(jwks),
        username_claim: "sub".into(),
        roles_claim: "groups".into(),
        role_mapping: [("readers".to_string(), "reader".to_string())].into(),
        user_prefix: "oidc:".into(),
        leeway_seconds: 30,
        refetch_every: std::time::Duration::from_secs(10),
    };
    // PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410).
    let mut der = hex("302e020100300506032b657004220420");
    der.extend(hex(SEED));
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("k1".into());
    let claims = serde_json::json!({
        "iss": "https://issuer.bench", "aud": "credstore", "sub": "alice",
        "groups": ["readers"], "exp": 4_000_000_000u64, "iat": 1_700_000_000u64,
    });
    let token =
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&der)).expect("signed");
    let (auth, header) = rt.block_on(async {
        let (auth, _) = authenticator(&dir, Some(settings)).await;
        auth.warm_up_oidc().await;
        let header = base64::engine::general_purpose::STANDARD.encode(&token);
        auth.authenticate(Some(header.as_bytes()))
            .await
            .expect("first use verifies and caches");
        (auth, header)
    });
    c.bench_function(
        "cached OIDC token (header decode + SHA-256 + cache + expiry)",
        |b| {
            b.to_async(&rt).iter(|| async {
                auth.authenticate(Some(black_box(header.as_bytes())))
                    .await
                    .expect("cached")
            })
        },
    );
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// An authenticator over an embedded store holding the user `alice`.
async fn authenticator(
    dir: &tempfile::TempDir,
    oidc: Option<OidcSettings>,
) -> (Authenticator, Catalog) {
    let store = Store::Embedded(EmbeddedKv::open(&dir.path().join("kv.redb")).expect("store"));
    let catalog = Catalog::new(store, "bench/meta");
    let pool = HashPool::new(HashPoolConfig {
        queued: 16,
        ..HashPoolConfig::new(HashScheme::default())
    });
    let password = Password::new(b"bench-password".to_vec(), &Limits::default()).expect("valid");
    let hash = pool.hash(password).await.expect("hash");
    let name = Username::parse("alice", &Limits::default()).expect("valid");
    catalog
        .create_user(&name, &hash, None)
        .await
        .expect("created");
    let config = AuthenticatorConfig {
        enabled: true,
        super_users: vec![],
        limits: Limits::default(),
        cache_capacity: 1000,
        cache_ttl: None,
        lockout: credstore::auth::LockoutPolicy::default(),
    };
    let auth = Authenticator::with_oidc(config, catalog.clone(), pool, oidc)
        .await
        .expect("authenticator");
    (auth, catalog)
}

fn hash_verification(c: &mut Criterion) {
    let password = b"bench-password";
    let valid = Password::new(password.to_vec(), &Limits::default()).expect("valid");
    let argon = Hasher::new(HashScheme::default());
    let argon_hash = argon.hash(&valid).expect("argon2id hash");
    let bcrypt = Hasher::new(HashScheme::Bcrypt { cost: 10 });
    let bcrypt_hash = bcrypt.hash(&valid).expect("bcrypt hash");
    let mut group = c.benchmark_group("full verification (cache miss)");
    group.sample_size(10);
    group.bench_function("argon2id m=19456 t=2 p=1", |b| {
        b.iter(|| {
            assert!(
                argon
                    .verify(&argon_hash, black_box(password))
                    .expect("verifies")
            )
        })
    });
    group.bench_function("bcrypt cost 10 ($2a$, as Milvus writes)", |b| {
        b.iter(|| {
            assert!(
                argon
                    .verify(&bcrypt_hash, black_box(password))
                    .expect("verifies")
            )
        })
    });
    group.finish();
}

fn catalog_json(c: &mut Criterion) {
    let hash = PasswordHash::parse("$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$q5ZyN0jvwN3ozbxyA2b0pUKZQ6mbZpYWzXhbvuGbEFU")
        .expect("valid PHC");
    let json = format!(
        r#"{{"encrypted_password":"{}","description":"ops","time_tick":42}}"#,
        hash.as_str()
    );
    let kv = KeyValue {
        key: "by-dev/meta/root-coord/credential/users/alice".into(),
        value: json.into_bytes(),
        create_revision: 1,
        mod_revision: 1,
    };
    let user = StoredUser::decode(&kv).expect("decodes");
    c.bench_function("catalog JSON decode (users/{name})", |b| {
        b.iter(|| StoredUser::decode(black_box(&kv)).expect("decodes"))
    });
    c.bench_function("catalog JSON encode (users/{name})", |b| {
        b.iter(|| black_box(&user).encode())
    });
}

criterion_group!(
    benches,
    cached_verification,
    cached_api_key,
    cached_oidc_token,
    hash_verification,
    catalog_json
);
criterion_main!(benches);

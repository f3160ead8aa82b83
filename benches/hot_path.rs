//! Micro-benchmarks of the costs that decide credstore's speed: a cached verification (the
//! per-request hot path: header parse, cache lookup, keyed hash, constant-time compare), a
//! full argon2id and bcrypt verification at production parameters (what a cache miss costs),
//! and the catalog's JSON encode/decode. Run: `cargo bench --bench hot_path`.

use std::hint::black_box;

use base64::Engine;
use credstore::auth::{Authenticator, AuthenticatorConfig};
use credstore::catalog::{Catalog, StoredUser};
use credstore::hash_pool::HashPool;
use credstore::meta::{EmbeddedKv, KeyValue, Store};
use credstore::password::{HashScheme, Hasher, Limits, Password, PasswordHash};
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
        let store = Store::Embedded(EmbeddedKv::open(&dir.path().join("kv.redb")).expect("store"));
        let catalog = Catalog::new(store, "bench/meta");
        let pool = HashPool::new(Hasher::new(HashScheme::default()), 1, 16, 0);
        let password =
            Password::new(b"bench-password".to_vec(), &Limits::default()).expect("valid");
        let hash = pool.hash(password).await.expect("hash");
        let name =
            credstore::password::Username::parse("alice", &Limits::default()).expect("valid");
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
        let auth = Authenticator::new(config, catalog, pool)
            .await
            .expect("authenticator");
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
    hash_verification,
    catalog_json
);
criterion_main!(benches);

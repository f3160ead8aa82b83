//! The catalog against a real etcd: Milvus's key layout, one winner among racing creators,
//! compare-and-swap updates, deletes that take role mappings along, nothing lost across
//! restarts, no plaintext password anywhere, and legacy bcrypt hashes rehashed on login.

mod common;

use std::time::Duration;

use credstore::auth::{AuthError, Authenticator, AuthenticatorConfig};
use credstore::catalog::{Catalog, CatalogError, RoleName};
use credstore::hash_pool::HashPool;
use credstore::meta::{EtcdKv, EtcdOptions, MetaKv, Op, Store, Txn};
use credstore::password::{HashScheme, Hasher, Limits, Password, PasswordHash, Username};

async fn catalog(endpoint: &str, root: &str) -> Catalog {
    let options = EtcdOptions {
        endpoints: vec![endpoint.to_string()],
        request_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    Catalog::new(
        Store::Etcd(EtcdKv::connect(&options).await.expect("etcd connects")),
        &format!("{root}/meta"),
    )
}

fn pool() -> HashPool {
    HashPool::new(
        Hasher::new(HashScheme::Argon2id {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }),
        2,
        64,
        0,
    )
}

fn name(raw: &str) -> Username {
    Username::parse(raw, &Limits::default()).unwrap()
}

async fn hash(pool: &HashPool, password: &str) -> PasswordHash {
    pool.hash(Password::new(password.as_bytes().to_vec(), &Limits::default()).unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_live_under_milvus_keys_as_json() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let root = common::unique_root("layout");
    let catalog = catalog(&etcd.endpoint(), &root).await;
    let pool = pool();
    catalog
        .create_user(
            &name("alice"),
            &hash(&pool, "password1").await,
            Some("ops".into()),
        )
        .await
        .unwrap();
    let key = format!("{root}/meta/root-coord/credential/users/alice");
    let stored = catalog
        .store()
        .get(&key)
        .await
        .unwrap()
        .value
        .expect("user key exists");
    let json: serde_json::Value = serde_json::from_slice(&stored.value).unwrap();
    assert!(
        json["encrypted_password"]
            .as_str()
            .unwrap()
            .starts_with("$argon2id$v=19$")
    );
    assert_eq!(json["description"], "ops");
    assert!(
        json.get("username").is_none(),
        "the name lives in the key only"
    );
    assert_eq!(catalog.list_users().await.unwrap(), ["alice"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_have_one_winner() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let catalog = catalog(&etcd.endpoint(), &common::unique_root("race")).await;
    let hash = hash(&pool(), "password1").await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (catalog, hash) = (catalog.clone(), hash.clone());
            tokio::spawn(async move { catalog.create_user(&name("bob"), &hash, None).await })
        })
        .collect();
    let mut created = 0;
    let mut exists = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => created += 1,
            Err(CatalogError::UserExists(n)) if n == "bob" => exists += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((created, exists), (1, 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_compare_and_swap_is_reported_not_applied() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let catalog = catalog(&etcd.endpoint(), &common::unique_root("cas")).await;
    let pool = pool();
    catalog
        .create_user(&name("carol"), &hash(&pool, "password1").await, None)
        .await
        .unwrap();
    let read = catalog
        .get_user(&name("carol"))
        .await
        .unwrap()
        .value
        .unwrap();
    let first = hash(&pool, "password2").await;
    catalog
        .replace_user(&name("carol"), &read.with_hash(first.clone()))
        .await
        .unwrap();
    // A second writer that read before the first wrote must lose.
    let stale = catalog
        .replace_user(
            &name("carol"),
            &read.with_hash(hash(&pool, "password3").await),
        )
        .await;
    assert!(matches!(stale, Err(CatalogError::Conflict(_))), "{stale:?}");
    let now = catalog
        .get_user(&name("carol"))
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(now.hash, first, "the first change stands");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_role_mappings_in_the_same_transaction() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let root = common::unique_root("del");
    let catalog = catalog(&etcd.endpoint(), &root).await;
    catalog.ensure_default_roles().await.unwrap();
    let admin = RoleName::parse("admin").unwrap();
    catalog
        .create_user(&name("dave"), &hash(&pool(), "password1").await, None)
        .await
        .unwrap();
    catalog
        .add_user_to_role(&name("dave"), &admin)
        .await
        .unwrap();
    assert_eq!(catalog.user_roles("dave").await.unwrap(), ["admin"]);
    assert!(catalog.delete_user(&name("dave")).await.unwrap().is_some());
    let mappings = catalog
        .store()
        .list(&format!(
            "{root}/meta/root-coord/credential/user-role-mapping/"
        ))
        .await
        .unwrap();
    assert!(
        mappings.value.is_empty(),
        "mappings left behind: {:?}",
        mappings.value
    );
    assert!(
        catalog.delete_user(&name("dave")).await.unwrap().is_none(),
        "a second delete finds nothing"
    );
    assert!(matches!(
        catalog.drop_role(&admin).await,
        Err(CatalogError::DefaultRole(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_is_created_once_and_never_overwritten() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let catalog = catalog(&etcd.endpoint(), &common::unique_root("root")).await;
    let pool = pool();
    let first = hash(&pool, "Milvus").await;
    assert!(catalog.ensure_root(async || first.clone()).await.unwrap());
    let second = hash(&pool, "Other1").await;
    assert!(!catalog.ensure_root(async || second.clone()).await.unwrap());
    let root = catalog
        .get_user(&name("root"))
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(root.hash, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_etcd_loses_nothing() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let mut etcd = common::Etcd::start();
    let root = common::unique_root("restart");
    let catalog_before = catalog(&etcd.endpoint(), &root).await;
    for user in ["u1", "u2", "u3"] {
        catalog_before
            .create_user(&name(user), &hash(&pool(), "password1").await, None)
            .await
            .unwrap();
    }
    etcd.restart();
    etcd.wait_healthy();
    let catalog_after = catalog(&etcd.endpoint(), &root).await;
    assert_eq!(
        catalog_after.list_users().await.unwrap(),
        ["u1", "u2", "u3"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_value_in_etcd_holds_a_plaintext_password() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let root = common::unique_root("plain");
    let yaml = common::config_yaml(&etcd.endpoint(), &root, "");
    let replica = common::Replica::start(&yaml);
    let mut admin = common::client(&replica.uri(), "root", "Milvus").await;
    let secrets = ["Plaintext-Secret-1", "another:secret:2", "ünïcödé-pw"];
    for (i, secret) in secrets.iter().enumerate() {
        let request = credstore::proto::milvus::CreateCredentialRequest {
            username: format!("user{i}"),
            password: common::b64(secret),
            ..Default::default()
        };
        let status = admin.create_credential(request).await.unwrap().into_inner();
        assert_eq!((status.code, status.error_code), (0, 0), "{status:?}");
        // A login puts the user in the cache: the verifier must not reach etcd either.
        let mut login = common::client(&replica.uri(), &format!("user{i}"), secret).await;
        login
            .get_version(credstore::proto::milvus::GetVersionRequest {})
            .await
            .unwrap();
    }
    let everything = catalog(&etcd.endpoint(), &root)
        .await
        .store()
        .list("")
        .await
        .unwrap()
        .value;
    assert!(everything.len() >= 5, "root, three users, roles");
    for kv in &everything {
        let text = String::from_utf8_lossy(&kv.value);
        for secret in secrets.iter().chain(["Milvus"].iter()) {
            assert!(
                !text.contains(secret),
                "{} holds a plaintext password",
                kv.key
            );
            assert!(
                !text.contains(&common::b64(secret)),
                "{} holds a base64 password",
                kv.key
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milvus_bcrypt_hash_verifies_and_is_rehashed_to_argon2id() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let root = common::unique_root("bcrypt");
    let catalog = catalog(&etcd.endpoint(), &root).await;
    // Written the way Milvus writes it: Go's bcrypt, cost 10, `$2a$`, JSON with time_tick.
    let legacy = bcrypt::hash_with_result("legacy-pass", 10)
        .unwrap()
        .format_for_version(bcrypt::Version::TwoA);
    let key = format!("{root}/meta/root-coord/credential/users/old_user");
    let value = format!(r#"{{"encrypted_password":"{legacy}","time_tick":42}}"#);
    catalog
        .store()
        .txn(Txn::default().then(Op::Put(key.clone(), value.into_bytes())))
        .await
        .unwrap();
    let config = AuthenticatorConfig {
        enabled: true,
        super_users: vec![],
        limits: Limits::default(),
        cache_capacity: 100,
        cache_ttl: None,
    };
    let auth = Authenticator::new(config, catalog.clone(), pool())
        .await
        .unwrap();
    assert_eq!(
        auth.verify("old_user", b"wrong-pass").await,
        Err(AuthError::Denied)
    );
    assert_eq!(auth.verify("old_user", b"legacy-pass").await, Ok(()));
    let stored = catalog.store().get(&key).await.unwrap().value.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&stored.value).unwrap();
    assert!(
        json["encrypted_password"]
            .as_str()
            .unwrap()
            .starts_with("$argon2id$"),
        "{json}"
    );
    assert_eq!(json["time_tick"], 42, "fields Milvus wrote are kept");
    assert_eq!(auth.stats().rehashed, 1);
    assert_eq!(
        auth.verify("old_user", b"legacy-pass").await,
        Ok(()),
        "the new hash verifies too"
    );
}

//! The catalog against a real etcd: Milvus's key layout, one winner among racing creators,
//! compare-and-swap updates, deletes that take role mappings along, nothing lost across
//! restarts, no plaintext password anywhere, and legacy bcrypt hashes rehashed on login.

mod common;

use std::time::Duration;

use credstore::auth::{AuthError, Authenticator, AuthenticatorConfig};
use credstore::catalog::{Catalog, CatalogError, RoleName};
use credstore::hash_pool::{HashPool, HashPoolConfig};
use credstore::meta::{MetaKv, Op, Txn};
use credstore::password::{HashScheme, Limits, Password, PasswordHash, Username};

async fn catalog(etcd: &common::Etcd, root: &str) -> Catalog {
    Catalog::new(etcd.store().await, &format!("{root}/meta"))
}

fn pool() -> HashPool {
    HashPool::new(HashPoolConfig {
        concurrent: 2,
        ..HashPoolConfig::new(HashScheme::Argon2id {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        })
    })
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
    let catalog = catalog(&etcd, &root).await;
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
    let catalog = catalog(&etcd, &common::unique_root("race")).await;
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
    let catalog = catalog(&etcd, &common::unique_root("cas")).await;
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
    assert!(
        matches!(stale, Err(CatalogError::UserConflict(_))),
        "{stale:?}"
    );
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
    let catalog = catalog(&etcd, &root).await;
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
    let catalog = catalog(&etcd, &common::unique_root("root")).await;
    let pool = pool();
    // A hashing failure is reported as it is, and nothing is stored.
    let failed = catalog
        .ensure_root(async || Err(CatalogError::UserNotFound("hashing failed".into())))
        .await;
    assert!(
        matches!(&failed, Err(CatalogError::UserNotFound(why)) if why == "hashing failed"),
        "{failed:?}"
    );
    assert!(
        catalog
            .get_user(&name("root"))
            .await
            .unwrap()
            .value
            .is_none()
    );
    let first = hash(&pool, "Milvus").await;
    assert!(
        catalog
            .ensure_root(async || Ok::<_, CatalogError>(first.clone()))
            .await
            .unwrap()
    );
    let second = hash(&pool, "Other1").await;
    assert!(
        !catalog
            .ensure_root(async || Ok::<_, CatalogError>(second.clone()))
            .await
            .unwrap()
    );
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
    let catalog_before = catalog(&etcd, &root).await;
    for user in ["u1", "u2", "u3"] {
        catalog_before
            .create_user(&name(user), &hash(&pool(), "password1").await, None)
            .await
            .unwrap();
    }
    etcd.restart();
    etcd.wait_healthy();
    let catalog_after = catalog(&etcd, &root).await;
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
    let everything = catalog(&etcd, &root)
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
    let catalog = catalog(&etcd, &root).await;
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
        cache_capacity: 100,
        ..common::authenticator_config()
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

/// Every membership key of `role` under `root`.
async fn memberships(catalog: &Catalog, root: &str, role: &str) -> Vec<String> {
    let prefix = format!("{root}/meta/root-coord/credential/user-role-mapping/");
    let keys = catalog.store().list_keys(&prefix).await.unwrap().value;
    keys.into_iter()
        .filter(|k| k.rsplit('/').next() == Some(role))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_role_held_by_more_than_a_transaction_of_users_works() {
    let etcd = common::Etcd::start();
    let root = common::unique_root("bigrole");
    let catalog = catalog(&etcd, &root).await;
    let body = async {
        let role = RoleName::parse("crowd").unwrap();
        catalog.create_role(&role).await.unwrap();
        let other = RoleName::parse("other").unwrap();
        catalog.create_role(&other).await.unwrap();
        let hash = hash(&pool(), "password1").await;
        // etcd takes at most 128 operations per transaction.
        for i in 0..300 {
            let user = name(&format!("member{i}"));
            catalog.create_user(&user, &hash, None).await.unwrap();
            catalog.add_user_to_role(&user, &role).await.unwrap();
        }
        catalog
            .add_user_to_role(&name("member0"), &other)
            .await
            .unwrap();
        assert_eq!(memberships(&catalog, &root, "crowd").await.len(), 300);
        let dropped = catalog.drop_role(&role).await;
        assert!(dropped.is_ok(), "{dropped:?}");
        assert!(!catalog.role_exists(&role).await.unwrap());
        assert_eq!(
            memberships(&catalog, &root, "crowd").await,
            Vec::<String>::new()
        );
        assert_eq!(
            catalog.user_roles("member0").await.unwrap(),
            ["other"],
            "other roles stay"
        );
    };
    tokio::time::timeout(Duration::from_secs(120), body)
        .await
        .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_racing_drop_role_leave_no_orphan_membership() {
    let etcd = common::Etcd::start();
    let root = common::unique_root("race");
    let catalog = catalog(&etcd, &root).await;
    let body = async {
        let hash = hash(&pool(), "password1").await;
        let users: Vec<Username> = (0..16).map(|i| name(&format!("racer{i}"))).collect();
        for user in &users {
            catalog.create_user(user, &hash, None).await.unwrap();
        }
        let mut raced = 0;
        for round in 0..30 {
            let role = RoleName::parse(&format!("contested{round}")).unwrap();
            catalog.create_role(&role).await.unwrap();
            // A few members first, so the drop has memberships to list and delete.
            for user in &users[..4] {
                catalog.add_user_to_role(user, &role).await.unwrap();
            }
            let grants = users[4..].iter().map(|user| {
                let (catalog, role, user) = (catalog.clone(), role.clone(), user.clone());
                tokio::spawn(async move { catalog.add_user_to_role(&user, &role).await })
            });
            let grants: Vec<_> = grants.collect();
            let dropped = catalog.drop_role(&role).await;
            let mut granted = 0;
            for grant in grants {
                if grant.await.unwrap().is_ok() {
                    granted += 1;
                }
            }
            if granted > 0 {
                raced += 1;
            }
            match dropped {
                Ok(_) => {
                    assert!(!catalog.role_exists(&role).await.unwrap());
                    assert_eq!(
                        memberships(&catalog, &root, role.as_str()).await,
                        Vec::<String>::new(),
                        "round {round}: {granted} grants succeeded; none may outlive the role"
                    );
                }
                Err(CatalogError::RoleConflict(_)) => {}
                Err(other) => panic!("round {round}: {other:?}"),
            }
        }
        assert!(raced > 0, "no grant ever overlapped a drop");
    };
    tokio::time::timeout(Duration::from_secs(180), body)
        .await
        .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_that_change_nothing_write_nothing() {
    let etcd = common::Etcd::start();
    let root = common::unique_root("noop");
    let catalog = catalog(&etcd, &root).await;
    let body = async {
        let role = RoleName::parse("reader").unwrap();
        catalog.create_role(&role).await.unwrap();
        let erin = name("erin");
        catalog
            .create_user(&erin, &hash(&pool(), "password1").await, None)
            .await
            .unwrap();
        let before = catalog.store().get("nothing").await.unwrap().revision;
        assert_eq!(
            catalog.remove_user_from_role(&erin, &role).await.unwrap(),
            None,
            "taking a role the user does not hold changes nothing"
        );
        let missing = RoleName::parse("nosuchrole").unwrap();
        assert!(matches!(
            catalog.remove_user_from_role(&erin, &missing).await,
            Err(CatalogError::RoleNotFound(_))
        ));
        assert_eq!(
            catalog.store().get("nothing").await.unwrap().revision,
            before,
            "nothing was written"
        );
        let granted = catalog.add_user_to_role(&erin, &role).await.unwrap();
        assert!(granted.is_some());
        assert_eq!(
            catalog.add_user_to_role(&erin, &role).await.unwrap(),
            None,
            "granting a held role changes nothing"
        );
        let removed = catalog.remove_user_from_role(&erin, &role).await.unwrap();
        assert!(removed > granted, "{removed:?} after {granted:?}");
        assert!(catalog.user_roles("erin").await.unwrap().is_empty());
    };
    tokio::time::timeout(Duration::from_secs(60), body)
        .await
        .expect("test finished in time");
}

//! Grants and privilege groups against a real etcd: Milvus's exact keys and grantee ids,
//! quiet re-grants and revokes of missing grants, grants Milvus wrote (legacy keys too) read
//! back, no orphan grant when a grant races `DropRole`, groups as Milvus's protobuf.

mod common;

use std::time::Duration;

use credstore::catalog::{Catalog, CatalogError, GrantTarget, RoleName, grantee_id};
use credstore::meta::{MetaKv, Op, Txn};

const LIMIT: Duration = Duration::from_secs(120);

async fn catalog(etcd: &common::Etcd, root: &str) -> Catalog {
    Catalog::new(etcd.store().await, &format!("{root}/meta"))
}

fn target(object: &str, db: &str, name: &str) -> GrantTarget {
    GrantTarget {
        object: object.into(),
        db: db.into(),
        name: name.into(),
    }
}

fn role(name: &str) -> RoleName {
    RoleName::parse(name).expect("a valid role name")
}

async fn value(catalog: &Catalog, key: &str) -> Option<String> {
    let read = catalog.store().get(key).await.expect("etcd answers");
    read.value
        .map(|kv| String::from_utf8(kv.value).expect("UTF-8"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_are_written_in_milvus_layout_and_are_idempotent() {
    let etcd = common::Etcd::start();
    let root = common::unique_root("grants");
    tokio::time::timeout(LIMIT, async {
        let catalog = catalog(&etcd, &root).await;
        catalog.create_role(&role("r1")).await.unwrap();
        let on = target("Global", "", "*");
        let first = catalog
            .grant_privilege(&role("r1"), &on, "PrivilegeCreateOwnership", "root")
            .await
            .unwrap();
        assert!(first.is_some(), "a new grant writes");
        // Milvus's worked example: the grantee key and the md5 grantee id.
        let relative = "root-coord/credential/grantee-privileges/r1/Global/default.*";
        let id = grantee_id(relative);
        let meta = format!("{root}/meta/");
        assert_eq!(
            value(&catalog, &format!("{meta}{relative}")).await,
            Some(id.clone())
        );
        let privilege_key =
            format!("{meta}root-coord/credential/grantee-id/{id}/PrivilegeCreateOwnership");
        assert_eq!(
            value(&catalog, &privilege_key).await.as_deref(),
            Some("root")
        );

        let again = catalog
            .grant_privilege(&role("r1"), &on, "PrivilegeCreateOwnership", "root")
            .await
            .unwrap();
        assert_eq!(again, None, "a re-grant changes nothing");
        let grants = catalog.role_grants("r1").await.unwrap();
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].target, target("Global", "default", "*"));

        assert!(
            catalog
                .revoke_privilege(&role("r1"), &on, "PrivilegeCreateOwnership")
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(value(&catalog, &privilege_key).await, None);
        assert_eq!(
            value(&catalog, &format!("{meta}{relative}")).await,
            None,
            "last one"
        );
        assert_eq!(
            catalog
                .revoke_privilege(&role("r1"), &on, "PrivilegeCreateOwnership")
                .await
                .unwrap(),
            None,
            "revoking a missing grant changes nothing"
        );
        let missing = catalog
            .grant_privilege(&role("nobody"), &on, "PrivilegeCreateOwnership", "root")
            .await;
        assert!(
            matches!(missing, Err(CatalogError::RoleNotFound(_))),
            "{missing:?}"
        );
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_milvus_wrote_are_read_back_including_legacy_keys() {
    let etcd = common::Etcd::start();
    let root = common::unique_root("grants-fixture");
    tokio::time::timeout(LIMIT, async {
        let catalog = catalog(&etcd, &root).await;
        let meta = format!("{root}/meta/root-coord/credential/");
        // As Milvus 2.5 writes them: a db-qualified key, a legacy key (db default), a group.
        let fixture = [
            (format!("{meta}roles/reader"), String::new()),
            (
                format!("{meta}grantee-privileges/reader/Collection/db1.c1"),
                "aaaa".into(),
            ),
            (
                format!("{meta}grantee-id/aaaa/PrivilegeQuery"),
                "root".into(),
            ),
            (
                format!("{meta}grantee-id/aaaa/PrivilegeSearch"),
                "admin_user".into(),
            ),
            (
                format!("{meta}grantee-privileges/reader/Global/*"),
                "bbbb".into(),
            ),
            (
                format!("{meta}grantee-id/bbbb/PrivilegeGroupClusterReadOnly"),
                "root".into(),
            ),
        ];
        let mut txn = Txn::default();
        for (key, value) in fixture {
            txn = txn.then(Op::Put(key, value.into_bytes()));
        }
        catalog.store().txn(txn).await.unwrap();
        let mut grants = catalog.role_grants("reader").await.unwrap();
        grants.sort_by(|a, b| a.privilege.cmp(&b.privilege));
        let seen: Vec<_> = grants
            .iter()
            .map(|g| {
                (
                    g.target.object.as_str(),
                    g.target.db.as_str(),
                    g.target.name.as_str(),
                    g.privilege.as_str(),
                    g.grantor.as_str(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (
                    "Global",
                    "default",
                    "*",
                    "PrivilegeGroupClusterReadOnly",
                    "root"
                ),
                ("Collection", "db1", "c1", "PrivilegeQuery", "root"),
                ("Collection", "db1", "c1", "PrivilegeSearch", "admin_user"),
            ]
        );
        // A forced drop removes every key of the role's grants.
        catalog.delete_role_grants("reader").await.unwrap();
        assert!(catalog.role_grants("reader").await.unwrap().is_empty());
        let left = catalog
            .store()
            .list(&format!("{meta}grantee-id/"))
            .await
            .unwrap();
        assert!(
            left.value.is_empty(),
            "grantee-id keys left: {:?}",
            left.value
        );
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_racing_drop_role_leaves_no_orphan() {
    let etcd = common::Etcd::start();
    let root = common::unique_root("grants-race");
    tokio::time::timeout(LIMIT, async {
        let catalog = catalog(&etcd, &root).await;
        // In sequence: dropping a role takes its grants along.
        catalog.create_role(&role("granted")).await.unwrap();
        let on = target("Collection", "db1", "c1");
        catalog
            .grant_privilege(&role("granted"), &on, "PrivilegeQuery", "root")
            .await
            .unwrap();
        catalog.drop_role(&role("granted")).await.unwrap();
        assert!(catalog.role_grants("granted").await.unwrap().is_empty());
        // Racing: whichever wins, no grant outlives its role. The grant is held back by
        // 0–4 ms in turn so both orders occur, and the loop goes on until each was seen.
        let (mut grant_first, mut drop_first) = (0, 0);
        for round in 0..200 {
            if grant_first >= 3 && drop_first >= 3 {
                break;
            }
            let name = format!("racer{round}");
            catalog.create_role(&role(&name)).await.unwrap();
            let granting = {
                let (catalog, name) = (catalog.clone(), name.clone());
                let delay = Duration::from_millis(round % 5);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    catalog
                        .grant_privilege(
                            &role(&name),
                            &target("Collection", "db1", "c1"),
                            "PrivilegeQuery",
                            "root",
                        )
                        .await
                })
            };
            let dropped = catalog.drop_role(&role(&name)).await;
            let granted = granting.await.unwrap();
            let exists = catalog.role_exists(&role(&name)).await.unwrap();
            let grants = catalog.role_grants(&name).await.unwrap();
            assert!(dropped.is_ok() || granted.is_ok(), "round {round}");
            if !exists {
                // Either the grant lost, or it won before the drop, which took it along.
                assert!(
                    grants.is_empty(),
                    "round {round}: orphan {grants:?} after {granted:?}"
                );
                match granted.is_ok() {
                    true => grant_first += 1,
                    false => drop_first += 1,
                }
            }
        }
        assert!(
            grant_first >= 3 && drop_first >= 3,
            "both orders raced: grant then drop {grant_first} times, drop then grant {drop_first} times"
        );
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privilege_groups_are_stored_as_milvus_protobuf() {
    let etcd = common::Etcd::start();
    let root = common::unique_root("groups");
    tokio::time::timeout(LIMIT, async {
        let catalog = catalog(&etcd, &root).await;
        assert!(
            catalog
                .create_privilege_group("readers")
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            catalog.create_privilege_group("readers").await.unwrap(),
            None
        );
        let add = |members: &mut Vec<String>| {
            for p in ["Query", "Search", "Query"] {
                if !members.iter().any(|m| m == p) {
                    members.push(p.to_string());
                }
            }
        };
        assert!(
            catalog
                .alter_privilege_group("readers", add)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            catalog.alter_privilege_group("readers", add).await.unwrap(),
            None
        );
        let groups = catalog.privilege_groups().await.unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].privileges, ["Query", "Search"]);
        let raw = catalog
            .store()
            .get(&format!("{root}/meta/root-coord/privilege-group/readers"))
            .await
            .unwrap()
            .value
            .expect("stored under Milvus's key");
        assert_eq!(&raw.value[..9], b"\x0a\x07readers");
        let missing = catalog.alter_privilege_group("nope", add).await;
        assert!(matches!(missing, Err(CatalogError::GroupNotFound(_))));
        assert!(
            catalog
                .drop_privilege_group("readers")
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(catalog.drop_privilege_group("readers").await.unwrap(), None);
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_decide_from_cached_grants_and_fail_closed() {
    use credstore::rbac::{BuiltinGroups, Check, ObjectType, Policies, PolicyChange, Privilege};
    let mut etcd = common::Etcd::start();
    let root = common::unique_root("policies");
    tokio::time::timeout(LIMIT, async {
        let catalog = catalog(&etcd, &root).await;
        catalog.ensure_default_roles().await.unwrap();
        catalog.create_role(&role("reader")).await.unwrap();
        let alice = credstore::password::Username::parse("alice", &Default::default()).unwrap();
        let hash = credstore::password::PasswordHash::parse(
            "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy",
        )
        .unwrap();
        catalog.create_user(&alice, &hash, None).await.unwrap();
        catalog
            .add_user_to_role(&alice, &role("reader"))
            .await
            .unwrap();
        let policies = Policies::new(catalog.clone(), BuiltinGroups::default(), 1000, false);
        let query = Check {
            object: ObjectType::Collection,
            privilege: Privilege::from_api("Query").unwrap(),
            db: "default",
            name: "c1",
        };
        assert!(
            !policies.allows("alice", &query).await.unwrap(),
            "no grant yet"
        );
        let on = target("Global", "default", "c1");
        catalog
            .grant_privilege(
                &role("reader"),
                &on,
                "PrivilegeGroupCollectionReadOnly",
                "root",
            )
            .await
            .unwrap();
        assert!(
            !policies.allows("alice", &query).await.unwrap(),
            "cached until invalidated"
        );
        policies.invalidate(&PolicyChange::Role("reader".into()));
        assert!(
            policies.allows("alice", &query).await.unwrap(),
            "a v2 group grant"
        );
        let other = Check {
            name: "c2",
            ..query
        };
        assert!(!policies.allows("alice", &other).await.unwrap());
        // A cold cache with etcd away is an error, never a decision.
        policies.invalidate_all();
        etcd.kill();
        assert!(
            policies.allows("alice", &query).await.is_err(),
            "fail closed"
        );
    })
    .await
    .expect("within the time limit");
}

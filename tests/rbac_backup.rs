//! `BackupRBAC` and `RestoreRBAC` over gRPC against real replicas and etcd (pymilvus never calls
//! them): the backup holds users but root with their stored hashes (never a plaintext), roles
//! but admin and public, grants in every db and custom groups; a restore into another cluster
//! brings back logins, memberships and grants; a restore that cannot be done completely
//! writes nothing and says why in Milvus's words; a password field that is not a hash is
//! refused (Milvus stores it verbatim).

mod common;

use credstore::proto::common::Status;
use credstore::proto::milvus::{
    BackupRbacMetaRequest, CreatePrivilegeGroupRequest, CreateRoleRequest, GrantEntity,
    GrantorEntity, ObjectEntity, OperatePrivilegeGroupRequest, OperatePrivilegeGroupType,
    OperatePrivilegeRequest, OperatePrivilegeType, OperatePrivilegeV2Request,
    OperateUserRoleRequest, OperateUserRoleType, PrivilegeEntity, RbacMeta, RestoreRbacMetaRequest,
    RoleEntity, SelectRoleRequest, UserInfo,
};
use tonic::Code;

const ALICE_PASSWORD: &str = "alice-secret-pw";

#[track_caller]
fn ok(status: &Status, what: &str) {
    assert!(
        status.code == 0 && status.error_code == 0,
        "{what}: expected success, got {status:?}"
    );
}

fn role(name: &str) -> Option<RoleEntity> {
    Some(RoleEntity {
        name: name.into(),
        ..Default::default()
    })
}

fn privilege(name: &str) -> Option<PrivilegeEntity> {
    Some(PrivilegeEntity { name: name.into() })
}

async fn backup(client: &mut common::Client) -> Result<RbacMeta, tonic::Status> {
    let reply = client
        .backup_rbac(BackupRbacMetaRequest::default())
        .await?
        .into_inner();
    ok(&reply.status.unwrap_or_default(), "BackupRBAC");
    Ok(reply.rbac_meta.unwrap_or_default())
}

async fn restore(client: &mut common::Client, meta: RbacMeta) -> Status {
    client
        .restore_rbac(RestoreRbacMetaRequest {
            rbac_meta: Some(meta),
            ..Default::default()
        })
        .await
        .expect("RestoreRBAC answers")
        .into_inner()
}

#[track_caller]
fn refused(status: &Status, text: &str) {
    assert!(
        status.code == 65535 && status.error_code == 41 && status.reason.contains(text),
        "expected OperatePrivilegeFailure with {text:?}, got {status:?}"
    );
}

/// root sets up on `client`: alice in role `readers` (with a description), which holds
/// Global/CreateOwnership on db `*` and the custom group `grp` (Query, Search) on db1.c1.
async fn set_up(client: &mut common::Client) {
    let status = common::create_user(client, "alice", ALICE_PASSWORD).await;
    ok(&status, "create alice");
    let status = client
        .create_role(CreateRoleRequest {
            entity: Some(RoleEntity {
                name: "readers".into(),
                description: "they read".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    ok(&status, "create readers");
    let status = client
        .operate_user_role(OperateUserRoleRequest {
            username: "alice".into(),
            role_name: "readers".into(),
            r#type: OperateUserRoleType::AddUserToRole as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    ok(&status, "alice joins readers");
    let status = client
        .create_privilege_group(CreatePrivilegeGroupRequest {
            group_name: "grp".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    ok(&status, "create grp");
    let status = client
        .operate_privilege_group(OperatePrivilegeGroupRequest {
            group_name: "grp".into(),
            privileges: vec![
                PrivilegeEntity {
                    name: "Query".into(),
                },
                PrivilegeEntity {
                    name: "Search".into(),
                },
            ],
            r#type: OperatePrivilegeGroupType::AddPrivilegesToGroup as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    ok(&status, "fill grp");
    let status = client
        .operate_privilege(OperatePrivilegeRequest {
            entity: Some(GrantEntity {
                role: role("readers"),
                object: Some(ObjectEntity {
                    name: "Global".into(),
                }),
                object_name: "*".into(),
                grantor: Some(GrantorEntity {
                    user: None,
                    privilege: privilege("CreateOwnership"),
                }),
                db_name: "*".into(),
            }),
            r#type: OperatePrivilegeType::Grant as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    ok(&status, "grant CreateOwnership");
    let status = client
        .operate_privilege_v2(OperatePrivilegeV2Request {
            role: role("readers"),
            grantor: Some(GrantorEntity {
                user: None,
                privilege: privilege("grp"),
            }),
            r#type: OperatePrivilegeType::Grant as i32,
            db_name: "db1".into(),
            collection_name: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    ok(&status, "grant grp on db1.c1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_exports_hashes_and_restore_brings_back_logins_and_grants() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    let etcd = tokio::task::block_in_place(common::Etcd::start);
    let (from_root, to_root) = (
        common::unique_root("backup"),
        common::unique_root("restore"),
    );
    let from = tokio::task::block_in_place(|| {
        common::Replica::start(&common::TestConfig::on_etcd(&etcd.endpoint(), &from_root).yaml())
    });
    let to = tokio::task::block_in_place(|| {
        common::Replica::start(&common::TestConfig::on_etcd(&etcd.endpoint(), &to_root).yaml())
    });
    common::time_limit(common::TEST_LIMIT, async {
        let mut source = common::client(&from.uri(), "root", "Milvus").await;
        set_up(&mut source).await;

        // Only who may: alice holds CreateOwnership, not BackupRBAC.
        let mut alice = common::client(&from.uri(), "alice", ALICE_PASSWORD).await;
        let denied = backup(&mut alice).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
        assert!(
            denied.message().contains("PrivilegeBackupRBAC"),
            "{denied:?}"
        );

        let meta = backup(&mut source).await.expect("root may back up");
        let users: Vec<_> = meta.users.iter().map(|u| u.user.as_str()).collect();
        assert_eq!(users, ["alice"], "every user but root");
        let alice_info = &meta.users[0];
        assert!(
            alice_info.password.starts_with("$argon2id$")
                && !alice_info.password.contains(ALICE_PASSWORD),
            "a stored hash, never the password: {}",
            alice_info.password
        );
        let alice_roles: Vec<_> = alice_info.roles.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(alice_roles, ["readers"]);
        assert_eq!(meta.roles.len(), 1, "admin and public are left out");
        assert_eq!(
            (
                meta.roles[0].name.as_str(),
                meta.roles[0].description.as_str()
            ),
            ("readers", "they read")
        );
        let mut grants: Vec<_> = meta
            .grants
            .iter()
            .map(|g| {
                (
                    g.object
                        .as_ref()
                        .map(|o| o.name.clone())
                        .unwrap_or_default(),
                    g.db_name.clone(),
                    g.object_name.clone(),
                    g.grantor
                        .as_ref()
                        .and_then(|g| g.privilege.as_ref())
                        .map(|p| p.name.clone())
                        .unwrap_or_default(),
                    g.grantor
                        .as_ref()
                        .and_then(|g| g.user.as_ref())
                        .map(|u| u.name.clone())
                        .unwrap_or_default(),
                )
            })
            .collect();
        grants.sort();
        let expected: Vec<(String, String, String, String, String)> = [
            ("Global", "*", "*", "CreateOwnership", "root"),
            ("Global", "db1", "c1", "grp", "root"),
        ]
        .iter()
        .map(|(a, b, c, d, e)| {
            (
                a.to_string(),
                b.to_string(),
                c.to_string(),
                d.to_string(),
                e.to_string(),
            )
        })
        .collect();
        assert_eq!(grants, expected);
        assert_eq!(meta.privilege_groups.len(), 1);
        let members: Vec<_> = meta.privilege_groups[0]
            .privileges
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            (meta.privilege_groups[0].group_name.as_str(), members),
            ("grp", vec!["Query", "Search"])
        );

        let mut target = common::client(&to.uri(), "root", "Milvus").await;
        // Refusals first: each leaves the target as it was.
        refused(
            &restore(&mut target, RbacMeta::default()).await,
            "rbac meta is empty",
        );
        let mut plaintext = meta.clone();
        plaintext.users.push(UserInfo {
            user: "bob".into(),
            password: "bob-plain-password".into(),
            roles: Vec::new(),
        });
        let status = restore(&mut target, plaintext).await;
        refused(&status, "user [bob]: the password is not a password hash");
        assert!(!status.reason.contains("bob-plain-password"), "{status:?}");
        let mut unknown = meta.clone();
        unknown.privilege_groups[0]
            .privileges
            .push(PrivilegeEntity {
                name: "Bogus".into(),
            });
        refused(
            &restore(&mut target, unknown).await,
            "privilege [Bogus] does not exist",
        );
        let mut orphan = meta.clone();
        orphan.users[0].roles.push(RoleEntity {
            name: "ghosts".into(),
            ..Default::default()
        });
        refused(
            &restore(&mut target, orphan).await,
            "role [ghosts] does not exist",
        );
        let roles = target
            .select_role(SelectRoleRequest::default())
            .await
            .unwrap()
            .into_inner();
        let names: Vec<_> = roles
            .results
            .iter()
            .filter_map(|r| r.role.as_ref().map(|r| r.name.as_str()))
            .collect();
        assert!(
            !names.contains(&"readers"),
            "a refused restore wrote: {names:?}"
        );

        ok(&restore(&mut target, meta.clone()).await, "restore");
        // alice logs in with her password (her hash came along) and keeps her grant.
        let mut alice = common::client(&to.uri(), "alice", ALICE_PASSWORD).await;
        // alice may create users after the restore.
        let status = common::create_user(&mut alice, "made_by_alice", "another-pw-1").await;
        ok(&status, "alice creates a user on the restored cluster");
        assert_eq!(
            backup(&mut target).await.unwrap().roles,
            meta.roles,
            "roles and descriptions restored"
        );
        // The same again: everything exists now (roles are checked first, as in Milvus).
        refused(
            &restore(&mut target, meta.clone()).await,
            "role [readers] already exists",
        );
        let mut only_users = meta.clone();
        only_users.roles.clear();
        only_users.privilege_groups.clear();
        only_users.grants.clear();
        refused(
            &restore(&mut target, only_users).await,
            "user [alice] already exists",
        );
        let mut only_groups = meta;
        only_groups.roles.clear();
        only_groups.users.clear();
        only_groups.grants.clear();
        refused(
            &restore(&mut target, only_groups).await,
            "privilege group [grp] already exists",
        );
    })
    .await;
}

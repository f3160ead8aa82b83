//! The gRPC front door through a real tonic client against a real server (in-process
//! `server::run` on a loopback port, on etcd or the embedded store): every RPC, Milvus's
//! answers and errors, malformed headers and bodies, authorization, and etcd going away.

mod common;

use std::time::Duration;

use credstore::proto::common::Status;
use credstore::proto::milvus::*;
use credstore::server::State;
use tonic::Code;

type Server = common::InProcess;

/// The message a call answered; a gRPC error (the call never reached Milvus's answer) fails
/// the test.
async fn answer<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> T {
    call.await.expect("a gRPC answer").into_inner()
}

fn ok(status: &Status) {
    assert_eq!(
        (status.code, status.error_code),
        (0, 0),
        "expected success, got {status:?}"
    );
}

fn failed(status: &Status, code: i32, legacy: i32, reason: &str) {
    assert_eq!(
        (status.code, status.error_code, status.reason.as_str()),
        (code, legacy, reason),
        "{status:?}"
    );
}

fn create(name: &str, password: &str) -> CreateCredentialRequest {
    CreateCredentialRequest {
        username: name.into(),
        password: common::b64(password),
        ..Default::default()
    }
}

fn update(name: &str, old: &str, new: &str) -> UpdateCredentialRequest {
    UpdateCredentialRequest {
        username: name.into(),
        old_password: common::b64(old),
        new_password: common::b64(new),
        ..Default::default()
    }
}

fn delete(name: &str) -> DeleteCredentialRequest {
    DeleteCredentialRequest {
        username: name.into(),
        ..Default::default()
    }
}

async fn login_works(uri: &str, user: &str, password: &str) -> bool {
    let mut client = common::client(uri, user, password).await;
    match client.get_version(GetVersionRequest {}).await {
        Ok(_) => true,
        Err(status) if status.code() == Code::Unauthenticated => false,
        Err(other) => panic!("unexpected {other:?}"),
    }
}

async fn etcd_server(etcd: &common::Etcd, extra: &str) -> Server {
    Server::start(&common::config_yaml(
        &etcd.endpoint(),
        &common::unique_root("grpc"),
        extra,
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_lifecycle_as_milvus_answers_it() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let server = etcd_server(&etcd, "").await;
    let mut root = common::client(&server.uri, "root", "Milvus").await;
    let connect = answer(root.connect(ConnectRequest::default())).await;
    ok(&connect.status.unwrap());
    assert!(connect.identifier > 0);
    assert!(
        connect
            .server_info
            .unwrap()
            .build_tags
            .starts_with("credstore-")
    );
    assert!(
        answer(root.get_version(GetVersionRequest {}))
            .await
            .version
            .starts_with("credstore-")
    );
    assert!(
        answer(root.check_health(CheckHealthRequest {}))
            .await
            .is_healthy
    );

    ok(&answer(root.create_credential(create("alice", "password1"))).await);
    failed(
        &answer(root.create_credential(create("alice", "password1"))).await,
        1100,
        29,
        "user already exists: alice: invalid parameter",
    );
    assert!(login_works(&server.uri, "alice", "password1").await);
    assert!(!login_works(&server.uri, "alice", "password2").await);
    let users = answer(root.list_cred_users(ListCredUsersRequest::default())).await;
    assert_eq!(users.usernames, ["alice", "root"]);

    // A user changes their own password with the old one.
    let mut alice = common::client(&server.uri, "alice", "password1").await;
    failed(
        &answer(alice.update_credential(update("alice", "wrong-old", "password2"))).await,
        1400,
        1, // UnexpectedError, as Milvus
        "old password not correct for alice: not authenticated",
    );
    // An old password longer than any stored one is refused without hashing it.
    let oversized = alice
        .update_credential(update("alice", &"x".repeat(100_000), "password2"))
        .await
        .unwrap();
    failed(
        &oversized.into_inner(),
        1400,
        1, // UnexpectedError, as Milvus
        "old password not correct for alice: not authenticated",
    );
    ok(&answer(alice.update_credential(update("alice", "password1", "password2"))).await);
    assert!(
        !login_works(&server.uri, "alice", "password1").await,
        "acknowledged: the old password is gone at once"
    );
    assert!(login_works(&server.uri, "alice", "password2").await);

    ok(&answer(root.delete_credential(delete("alice"))).await);
    assert!(!login_works(&server.uri, "alice", "password2").await);
    ok(&answer(root.delete_credential(delete("alice"))).await);
    failed(
        &answer(root.delete_credential(delete("root"))).await,
        1401,
        1, // UnexpectedError, as Milvus
        "root user cannot be deleted: privilege not permitted",
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_change_nothing() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let server = etcd_server(&etcd, "").await;
    let mut root = common::client(&server.uri, "root", "Milvus").await;
    let cases = [
        (
            create("", "password1"),
            "username must be not empty: invalid parameter",
        ),
        (
            create(&"a".repeat(33), "password1"),
            "the length of username must be less than 32",
        ),
        (
            create("9lives", "password1"),
            "the first character must be a letter, but got 9",
        ),
        (
            create("bad-name", "password1"),
            "username must contain only numbers, letters and underscores, but got -",
        ),
        (
            create("short", "12345"),
            "invalid password length: invalid parameter[5 out of range 6 <= value <= 256]",
        ),
        (
            create("long", &"x".repeat(257)),
            "invalid parameter[257 out of range 6 <= value <= 256]",
        ),
    ];
    for (request, reason) in cases {
        let status = root.create_credential(request).await.unwrap().into_inner();
        assert_eq!((status.code, status.error_code), (1100, 5), "{status:?}");
        assert!(
            status.reason.contains(reason),
            "{:?} should contain {reason:?}",
            status.reason
        );
        assert_eq!(
            status.extra_info.get("is_input_error").map(String::as_str),
            Some("true")
        );
    }
    let bad_b64 = CreateCredentialRequest {
        username: "eve".into(),
        password: "***".into(),
        ..Default::default()
    };
    let status = root.create_credential(bad_b64).await.unwrap().into_inner();
    assert_eq!(
        (status.code, status.error_code),
        (65535, 1),
        "UnexpectedError, as Milvus"
    );
    assert!(
        status.reason.starts_with("decode password fail:"),
        "{status:?}"
    );
    ok(&answer(root.create_credential(create(&"a".repeat(32), &"x".repeat(256)))).await);
    let users = answer(root.list_cred_users(ListCredUsersRequest::default()))
        .await
        .usernames;
    assert_eq!(
        users,
        ["a".repeat(32), "root".to_string()],
        "only the valid user was stored"
    );
    // The new password is validated before the old one is checked.
    let status = answer(root.update_credential(update("root", "Milvus", "123"))).await;
    assert_eq!(status.code, 1100);
    assert!(login_works(&server.uri, "root", "Milvus").await);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_wrong_headers_are_unauthenticated() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let server = etcd_server(&etcd, "").await;
    let cases: [(Option<String>, &str); 6] = [
        (None, "missing authorization in header"),
        (Some("%%%not-base64%%%".into()), "invalid token format"),
        (
            Some(common::b64("an-api-key")),
            "auth check failure, please check api key is correct",
        ),
        (
            Some(common::b64("root:wrong")),
            "auth check failure, please check username and password are correct",
        ),
        (
            Some(common::b64("nobody:password1")),
            "auth check failure, please check username and password are correct",
        ),
        (Some("A".repeat(5000)), "invalid token format"),
    ];
    for (header, message) in cases {
        let mut client = common::client_with_header(&server.uri, header.as_deref()).await;
        let connect = client.connect(ConnectRequest::default()).await.unwrap_err();
        assert_eq!(
            (connect.code(), connect.message()),
            (Code::Unauthenticated, message),
            "{header:?}"
        );
        let create = client
            .create_credential(create("mallory", "password1"))
            .await
            .unwrap_err();
        assert_eq!(create.code(), Code::Unauthenticated);
    }
    let mut root = common::client(&server.uri, "root", "Milvus").await;
    let users = answer(root.list_cred_users(ListCredUsersRequest::default()))
        .await
        .usernames;
    assert_eq!(
        users,
        ["root"],
        "nothing was created by unauthenticated calls"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_follows_milvus_default_roles() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let server = etcd_server(&etcd, "").await;
    let mut root = common::client(&server.uri, "root", "Milvus").await;
    for (user, password) in [
        ("bob", "password1"),
        ("carol", "password1"),
        ("foo", "password1"),
    ] {
        ok(&answer(root.create_credential(create(user, password))).await);
    }
    let mut bob = common::client(&server.uri, "bob", "password1").await;
    let denied = bob
        .create_credential(create("x1", "password1"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(
        denied.message(),
        "PrivilegeCreateOwnership: permission deny to bob in the `default` database"
    );
    assert_eq!(
        bob.delete_credential(delete("carol"))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        bob.list_cred_users(ListCredUsersRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        bob.update_credential(update("carol", "password1", "password9"))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    // Reading yourself is allowed, reading others is not.
    let me = SelectUserRequest {
        user: Some(UserEntity { name: "bob".into() }),
        include_role_info: true,
        ..Default::default()
    };
    let found = bob.select_user(me).await.unwrap().into_inner();
    assert_eq!(found.results[0].user.as_ref().unwrap().name, "bob");
    let other = SelectUserRequest {
        user: Some(UserEntity {
            name: "carol".into(),
        }),
        ..Default::default()
    };
    assert_eq!(
        bob.select_user(other).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // Members of admin may manage users.
    let grant = OperateUserRoleRequest {
        username: "bob".into(),
        role_name: "admin".into(),
        r#type: 0,
        ..Default::default()
    };
    ok(&root.operate_user_role(grant).await.unwrap().into_inner());
    ok(&answer(bob.create_credential(create("x1", "password1"))).await);
    let roles = SelectRoleRequest {
        role: Some(RoleEntity {
            name: "admin".into(),
            ..Default::default()
        }),
        include_user_info: true,
        ..Default::default()
    };
    let admin = bob.select_role(roles).await.unwrap().into_inner();
    assert_eq!(
        admin.results[0]
            .users
            .iter()
            .map(|u| u.name.as_str())
            .collect::<Vec<_>>(),
        ["bob"]
    );
    let all_roles = answer(bob.select_role(SelectRoleRequest::default())).await;
    let names: Vec<_> = all_roles
        .results
        .iter()
        .map(|r| r.role.as_ref().unwrap().name.as_str())
        .collect();
    assert_eq!(names, ["admin", "public"]);
    let missing = SelectRoleRequest {
        role: Some(RoleEntity {
            name: "nope".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(
        answer(bob.select_role(missing)).await.results.is_empty(),
        "a missing role is success with no results"
    );

    // A super user (foo) resets carol's password without the old one; bob (admin, not super) cannot.
    let mut foo = common::client(&server.uri, "foo", "password1").await;
    failed(
        &answer(bob.update_credential(update("carol", "not-it", "password7"))).await,
        1400,
        1, // UnexpectedError, as Milvus
        "old password not correct for carol: not authenticated",
    );
    let grant_foo = OperateUserRoleRequest {
        username: "foo".into(),
        role_name: "admin".into(),
        r#type: 0,
        ..Default::default()
    };
    ok(&answer(root.operate_user_role(grant_foo)).await);
    ok(&answer(foo.update_credential(update("carol", "", "password8"))).await);
    assert!(login_works(&server.uri, "carol", "password8").await);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn description_only_update_keeps_the_password() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let server = etcd_server(&etcd, "").await;
    let mut root = common::client(&server.uri, "root", "Milvus").await;
    ok(&answer(root.create_credential(create("dana", "password1"))).await);
    let describe = UpdateCredentialRequest {
        username: "dana".into(),
        description: Some("on call".into()),
        ..Default::default()
    };
    ok(&root.update_credential(describe).await.unwrap().into_inner());
    let select = SelectUserRequest {
        user: Some(UserEntity {
            name: "dana".into(),
        }),
        ..Default::default()
    };
    let found = root.select_user(select).await.unwrap().into_inner();
    assert_eq!(found.results[0].description, "on call");
    assert!(login_works(&server.uri, "dana", "password1").await);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_disabled_accepts_anyone() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let yaml = format!(
        "etcd:\n  endpoints: {}\n  rootPath: {}\ncommon:\n  security:\n    authorizationEnabled: false\n\
credstore:\n  password:\n    allowWeakParameters: true\n    argon2: {{memoryKiB: 64, iterations: 1}}\n",
        etcd.endpoint(),
        common::unique_root("noauth")
    );
    let server = Server::start(&yaml).await;
    let mut anonymous = common::client_with_header(&server.uri, None).await;
    ok(&answer(anonymous.connect(ConnectRequest::default()))
        .await
        .status
        .unwrap());
    ok(&answer(anonymous.create_credential(create("zed", "password1"))).await);
    assert!(
        login_works(&server.uri, "zed", "wrong-password").await,
        "as in Milvus, any password logs in"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_is_unavailable_and_changes_nothing() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let mut etcd = common::Etcd::start();
    let server = etcd_server(&etcd, "  etcdTimeoutMs: 1000\n").await;
    let mut root = common::client(&server.uri, "root", "Milvus").await;
    ok(&answer(root.create_credential(create("before", "password1"))).await);
    etcd.kill();
    let err = root
        .create_credential(create("during", "password1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    etcd.restart();
    etcd.wait_healthy();
    common::eventually("writes succeed again once etcd is back", async || {
        root.create_credential(create("after", "password1"))
            .await
            .is_ok_and(|r| r.into_inner().code == 0)
    })
    .await;
    let users = answer(root.list_cred_users(ListCredUsersRequest::default()))
        .await
        .usernames;
    assert_eq!(
        users,
        ["after", "before", "root"],
        "the failed write left nothing behind"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_is_the_default_and_survives_restart() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "etcd:\n  data:\n    dir: {}\ncredstore:\n  password:\n    allowWeakParameters: true\n    argon2: {{memoryKiB: 64, iterations: 1}}\n",
        dir.path().display()
    );
    let server = Server::start(&yaml).await;
    let mut root = common::client(&server.uri, "root", "Milvus").await;
    ok(&answer(root.create_credential(create("kept", "password1"))).await);
    ok(&answer(root.update_credential(update("root", "Milvus", "NewRoot1"))).await);
    server.shutdown().await;
    let server = Server::start(&yaml).await;
    assert!(login_works(&server.uri, "kept", "password1").await);
    assert!(
        !login_works(&server.uri, "root", "Milvus").await,
        "an existing root is never reset to the default"
    );
    assert!(login_works(&server.uri, "root", "NewRoot1").await);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_credstore_does_not_serve_are_unimplemented() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("etcd:\n  data:\n    dir: {}\n", dir.path().display());
    let server = Server::start(&yaml).await;
    // An empty message: a valid HasCollectionRequest, so only the method is unknown.
    let request = credstore::client::Authorization::credentials("root", "Milvus")
        .apply(tonic::Request::new(Default::default()));
    let err = common::upstream::unary(&server.uri, "HasCollection", request)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    server.shutdown().await;
}

/// etcdctl against the test etcd, before its auth is enabled.
fn etcdctl(etcd: &common::Etcd, args: &[&str]) {
    common::run_tool(
        std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.endpoint()])
            .args(args),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_authentication_with_a_least_privilege_user() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let root = common::unique_root("etcdauth");
    // etcd's root must exist to enable auth; credstore gets read-write on its own prefix only.
    etcdctl(&etcd, &["user", "add", "root:root-pw-1"]);
    etcdctl(&etcd, &["role", "add", "root"]);
    etcdctl(&etcd, &["user", "grant-role", "root", "root"]);
    etcdctl(&etcd, &["user", "add", "credstore:cs-pw-1"]);
    etcdctl(&etcd, &["role", "add", "credstore"]);
    etcdctl(
        &etcd,
        &[
            "role",
            "grant-permission",
            "credstore",
            "--prefix=true",
            "readwrite",
            &format!("{root}/"),
        ],
    );
    etcdctl(&etcd, &["user", "grant-role", "credstore", "credstore"]);
    etcdctl(&etcd, &["auth", "enable"]);
    let yaml = |password: &str| {
        format!(
            "etcd:\n  endpoints: {}\n  rootPath: {root}\n  auth:\n    enabled: true\n    userName: credstore\n    password: {password}\n\
credstore:\n  failedAuthDelayMs: 0\n  password:\n    allowWeakParameters: true\n    argon2: {{memoryKiB: 64, iterations: 1}}\n",
            etcd.endpoint()
        )
    };
    let server = Server::start(&yaml("cs-pw-1")).await;
    let mut admin = common::client(&server.uri, "root", "Milvus").await;
    ok(&answer(admin.create_credential(create("alice", "password1"))).await);
    assert!(login_works(&server.uri, "alice", "password1").await);
    ok(&answer(admin.update_credential(update("alice", "password1", "password2"))).await);
    assert!(
        !login_works(&server.uri, "alice", "password1").await,
        "acknowledged through the watch and the session"
    );
    server.shutdown().await;

    // A wrong etcd password stops start-up with etcd's reason, not a hang.
    let config = common::load_config(&yaml("wrong-pw"));
    let address = "127.0.0.1:1".parse().unwrap();
    let err = State::build(config, address)
        .await
        .err()
        .expect("start-up fails");
    assert!(err.to_string().contains("authentication failed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::test_certificates(certs.path());
    let (etcd, tls_port) = common::Etcd::start_with_tls(&cert, &key);
    let root = common::unique_root("tls");
    let yaml = format!(
        "etcd:\n  endpoints: 127.0.0.1:{tls_port}\n  rootPath: {root}\n  ssl:\n    enabled: true\n    tlsCACert: {}\n\
credstore:\n  failedAuthDelayMs: 0\n  password:\n    allowWeakParameters: true\n    argon2: {{memoryKiB: 64, iterations: 1}}\n",
        ca.display()
    );
    let server = Server::start(&yaml).await;
    let mut admin = common::client(&server.uri, "root", "Milvus").await;
    ok(&answer(admin.create_credential(create("tina", "password1"))).await);
    assert!(login_works(&server.uri, "tina", "password1").await);
    server.shutdown().await;
    // The user really is in that etcd (read over its plain listener).
    let kv = etcd.kv().await;
    let key = format!("{root}/meta/root-coord/credential/users/tina");
    assert!(
        credstore::meta::MetaKv::get(&kv, &key)
            .await
            .unwrap()
            .value
            .is_some()
    );
}

fn select_one(name: &str) -> SelectUserRequest {
    SelectUserRequest {
        user: Some(UserEntity { name: name.into() }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptions_are_bounded_and_an_oversized_one_stores_nothing() {
    let etcd = common::Etcd::start();
    let server = etcd_server(&etcd, "").await;
    common::time_limit(Duration::from_secs(60), async {
        let mut root = common::client(&server.uri, "root", "Milvus").await;
        let limit = credstore::service::MAX_DESCRIPTION_LEN;
        assert_eq!(limit, 1024, "the documented limit");
        let too_long = "d".repeat(limit + 1);
        let reason = format!(
            "invalid description length: invalid parameter[{} out of range 0 <= value <= {limit}]",
            limit + 1
        );
        let mut oversized = create("fern", "password1");
        oversized.description = Some(too_long.clone());
        failed(
            &answer(root.create_credential(oversized)).await,
            1100,
            5,
            &reason,
        );
        let listed = answer(root.list_cred_users(ListCredUsersRequest::default())).await;
        assert!(
            !listed.usernames.contains(&"fern".to_string()),
            "nothing stored"
        );

        let mut at_limit = create("fern", "password1");
        at_limit.description = Some("d".repeat(limit));
        ok(&root.create_credential(at_limit).await.unwrap().into_inner());

        // A description-only update, as the user themselves (no old password needed).
        let mut fern = common::client(&server.uri, "fern", "password1").await;
        let describe = UpdateCredentialRequest {
            username: "fern".into(),
            description: Some(too_long.clone()),
            ..Default::default()
        };
        failed(
            &fern.update_credential(describe).await.unwrap().into_inner(),
            1100,
            5,
            &reason,
        );
        // And with a password change: neither the password nor the description changes.
        let mut change = update("fern", "password1", "password2");
        change.description = Some(too_long);
        failed(
            &fern.update_credential(change).await.unwrap().into_inner(),
            1100,
            5,
            &reason,
        );
        assert!(login_works(&server.uri, "fern", "password1").await);
        assert!(!login_works(&server.uri, "fern", "password2").await);
        let found = answer(root.select_user(select_one("fern"))).await;
        assert_eq!(found.results[0].description, "d".repeat(limit));
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_answers_match_milvus() {
    let etcd = common::Etcd::start();
    let server = etcd_server(&etcd, "").await;
    common::time_limit(Duration::from_secs(60), async {
        let mut root = common::client(&server.uri, "root", "Milvus").await;
        ok(&answer(root.create_credential(create("gina", "password1"))).await);
        // Taking a user out of a role that does not exist: Milvus's OperateUserRoleFailure.
        let remove = OperateUserRoleRequest {
            username: "gina".into(),
            role_name: "nosuchrole".into(),
            r#type: OperateUserRoleType::RemoveUserFromRole as i32,
            ..Default::default()
        };
        failed(
            &root.operate_user_role(remove).await.unwrap().into_inner(),
            65535,
            37,
            "not found the role, maybe the role isn't existed or internal system error",
        );
        // Listing every user is checked as SelectUser on the user object, as Milvus does.
        let mut gina = common::client(&server.uri, "gina", "password1").await;
        let denied = gina
            .select_user(SelectUserRequest::default())
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert_eq!(
            denied.message(),
            "PrivilegeSelectUser: permission deny to gina in the `default` database"
        );
        let own = gina.select_user(select_one("gina")).await.unwrap();
        assert_eq!(own.into_inner().results.len(), 1);
    })
    .await;
    server.shutdown().await;
}

/// Taking away a role the user does not hold writes nothing, so it has nothing to wait for:
/// it answers at once even while another replica is frozen (its lease still alive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_role_not_held_answers_at_once() {
    let etcd = common::Etcd::start();
    let yaml = common::config_yaml(&etcd.endpoint(), &common::unique_root("noop"), "");
    let frozen = common::Replica::start(&yaml);
    // Started after the replica, so its view of the sessions includes it.
    let server = Server::start(&yaml).await;
    common::time_limit(Duration::from_secs(60), async {
        let mut root = common::client(&server.uri, "root", "Milvus").await;
        ok(&answer(root.create_credential(create("hana", "password1"))).await);
        let role = CreateRoleRequest {
            entity: Some(RoleEntity {
                name: "auditor".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        ok(&root.create_role(role).await.unwrap().into_inner());
        frozen.freeze();
        let started = std::time::Instant::now();
        let remove = OperateUserRoleRequest {
            username: "hana".into(),
            role_name: "auditor".into(),
            r#type: OperateUserRoleType::RemoveUserFromRole as i32,
            ..Default::default()
        };
        ok(&root.operate_user_role(remove).await.unwrap().into_inner());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a no-op waited {:?} for an acknowledgement",
            started.elapsed()
        );
        frozen.thaw();
    })
    .await;
    server.shutdown().await;
}

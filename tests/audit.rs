//! The audit log (`credstore.audit.path`) of a real `credstore serve` process on a real etcd:
//! user, role and grant changes and a failed login each leave one JSON line with the right
//! fields, `credstore admin reset-root` leaves one too, no line holds a password (checked on
//! the file's raw text), and after the file is renamed a SIGHUP sends new lines to a new file
//! at the configured path.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use credstore::proto::milvus::{
    CreateRoleRequest, GrantorEntity, OperatePrivilegeType, OperatePrivilegeV2Request,
    PrivilegeEntity, RoleEntity,
};
use serde_json::Value;

const ALICE_FIRST: &str = "alice-first-pw1";
const ALICE_SECOND: &str = "alice-second-pw2";
const WRONG: &str = "wrong-guess-pw3";
const NEW_ROOT: &str = "break-glass-pw4";

/// The audit file's lines, parsed.
fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The one line whose `action` (or, for failed logins, `event`) and `user` match.
fn find<'a>(lines: &'a [Value], key: &str, value: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l[key] == value).collect()
}

fn reset_root(config: &Path) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_credstore"))
        .args(["admin", "reset-root", "--config"])
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("credstore admin reset-root starts");
    let mut stdin = child.stdin.take().expect("piped stdin");
    writeln!(stdin, "{NEW_ROOT}").expect("password written");
    drop(stdin);
    let output = child.wait_with_output().expect("reset-root ends");
    assert!(
        output.status.success(),
        "reset-root failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn grant_request(role: &str) -> OperatePrivilegeV2Request {
    OperatePrivilegeV2Request {
        role: Some(RoleEntity {
            name: role.into(),
            description: String::new(),
        }),
        grantor: Some(GrantorEntity {
            user: None,
            privilege: Some(PrivilegeEntity {
                name: "Query".into(),
            }),
        }),
        r#type: OperatePrivilegeType::Grant as i32,
        db_name: "default".into(),
        collection_name: "books".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_failed_logins_and_reset_root_are_audited_and_sighup_reopens() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let yaml = common::TestConfig::on_etcd(&etcd.endpoint(), &common::unique_root("audit"))
        .set("credstore.audit.path", path.to_str().unwrap())
        .yaml();
    let replica = common::Replica::start_blocking(yaml).await;
    let config = replica.config_path();
    let uri = replica.uri();

    let mut admin = common::Admin::connect(&replica).await;
    common::assert_ok(admin.create("alice", ALICE_FIRST).await, "create alice");
    common::assert_ok(
        admin.change("alice", ALICE_FIRST, ALICE_SECOND).await,
        "change alice",
    );
    let created = admin
        .0
        .create_role(CreateRoleRequest {
            entity: Some(RoleEntity {
                name: "auditors".into(),
                description: String::new(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    common::assert_ok(Ok(created), "create role");
    let granted = admin
        .0
        .operate_privilege_v2(grant_request("auditors"))
        .await
        .unwrap()
        .into_inner();
    common::assert_ok(Ok(granted), "grant");
    // A change refused for lack of privilege is audited with its class.
    let mut alice = common::client(&uri, "alice", ALICE_SECOND).await;
    let denied = alice.create_role(CreateRoleRequest {
        entity: Some(RoleEntity {
            name: "sneaky".into(),
            description: String::new(),
        }),
        ..Default::default()
    });
    assert_eq!(
        denied.await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    let mut wrong = common::client(&uri, "alice", WRONG).await;
    let refused = wrong
        .get_version(credstore::proto::milvus::GetVersionRequest {})
        .await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unauthenticated);
    common::assert_ok(admin.delete("alice").await, "delete alice");
    tokio::task::block_in_place(|| reset_root(&config));

    let mut audit = Vec::new();
    common::eventually("the reset-root line is written", async || {
        audit = lines(&path);
        !find(&audit, "action", "ResetRoot").is_empty()
    })
    .await;
    let raw = std::fs::read_to_string(&path).unwrap();
    for secret in [ALICE_FIRST, ALICE_SECOND, WRONG, NEW_ROOT, "Milvus"] {
        assert!(
            !raw.contains(secret),
            "the audit log holds {secret:?}:\n{raw}"
        );
        let encoded = common::b64(secret);
        assert!(
            !raw.contains(&encoded),
            "the audit log holds b64({secret:?})"
        );
    }
    assert!(!raw.contains("$argon2"), "no hash in the audit log:\n{raw}");

    let peer = |line: &Value| {
        let peer = line["peer"].as_str().unwrap_or_default().to_string();
        assert!(peer.starts_with("127.0.0.1:"), "peer of {line}");
    };
    for (action, target_key, target) in [
        ("CreateCredential", "user", "alice"),
        ("UpdateCredential", "user", "alice"),
        ("DeleteCredential", "user", "alice"),
        ("OperatePrivilegeV2", "role", "auditors"),
    ] {
        let found = find(&audit, "action", action);
        assert_eq!(found.len(), 1, "one {action} line in:\n{raw}");
        let line = found[0];
        assert_eq!(line["event"], "change");
        assert_eq!(line["user"], "root", "{line}");
        assert_eq!(line["result"], "ok", "{line}");
        assert_eq!(line["target"][target_key], target, "{line}");
        assert!(line["revision"].as_i64().unwrap_or(0) > 0, "{line}");
        assert!(line["time"].as_str().unwrap_or_default().ends_with('Z'));
        peer(line);
    }
    let grant = find(&audit, "action", "OperatePrivilegeV2")[0];
    assert_eq!(grant["target"]["privilege"], "Query");
    assert_eq!(grant["target"]["collection"], "books");
    assert_eq!(grant["target"]["op"], "Grant");
    assert_eq!(
        find(&audit, "action", "UpdateCredential")[0]["target"]["password"],
        true
    );
    let roles = find(&audit, "action", "CreateRole");
    assert_eq!(roles.len(), 2, "{raw}");
    assert_eq!(roles[0]["target"]["role"], "auditors");
    assert_eq!(roles[0]["result"], "ok");
    assert_eq!(roles[1]["target"]["role"], "sneaky");
    assert_eq!(roles[1]["user"], "alice");
    assert_eq!(roles[1]["result"], "permission_denied");
    assert_eq!(roles[1]["revision"], Value::Null);
    let failed = find(&audit, "event", "login_failed");
    assert_eq!(failed.len(), 1, "{raw}");
    assert_eq!(failed[0]["user"], "alice");
    assert_eq!(failed[0]["reason"], "denied");
    peer(failed[0]);
    let reset = find(&audit, "action", "ResetRoot")[0];
    assert_eq!(reset["result"], "ok");
    assert_eq!(reset["target"]["user"], "root");
    assert_eq!(reset["user"], Value::Null);
    assert!(reset["revision"].as_i64().unwrap_or(0) > 0);

    // Rotation: rename the file, SIGHUP, and new lines land in a new file at the path.
    let rotated = dir.path().join("audit.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    replica.hangup();
    let mut attempt = 0;
    common::eventually("a line in the reopened file", async || {
        attempt += 1;
        let name = format!("after-hup-{attempt}");
        let mut client = common::client(&uri, &name, WRONG).await;
        let _ = client
            .get_version(credstore::proto::milvus::GetVersionRequest {})
            .await;
        !lines(&path).is_empty()
    })
    .await;
    let reopened = lines(&path);
    assert!(
        reopened
            .iter()
            .all(|l| l["event"] == "login_failed" && l["reason"] == "denied"),
        "{reopened:?}"
    );
    let old = lines(&rotated);
    assert!(old.len() >= audit.len(), "the rotated file keeps its lines");
}

//! bcrypt mode never truncates (issue 9.13), on a real replica over a real etcd: a password
//! over 72 bytes is refused when it would be written — Milvus's text, code 65535, nothing
//! stored — and a long candidate never logs in on its 72-byte prefix.

mod common;

use std::time::Duration;

use credstore::proto::milvus::{GetVersionRequest, ListCredUsersRequest, UpdateCredentialRequest};

const LIMIT: Duration = Duration::from_secs(120);
const TOO_LONG: &str = "encrypt password failed: bcrypt: password length exceeds 72 bytes";

async fn logs_in(uri: &str, user: &str, password: &str) -> bool {
    common::client(uri, user, password)
        .await
        .get_version(GetVersionRequest {})
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bcrypt_mode_refuses_passwords_over_72_bytes_and_never_truncates() {
    tokio::time::timeout(LIMIT, scenario())
        .await
        .expect("bcrypt scenario finished within its time limit");
}

async fn scenario() {
    let etcd = tokio::task::block_in_place(common::Etcd::start);
    let root = common::unique_root("bcrypt");
    let yaml = common::TestConfig::on_etcd(&etcd.endpoint(), &root)
        .set("credstore.password.algorithm", "bcrypt")
        .set("credstore.password.bcryptCost", 4)
        .yaml();
    let replica = tokio::task::block_in_place(|| common::Replica::start(&yaml));
    let uri = replica.uri();
    let mut admin = common::client(&uri, "root", "Milvus").await;
    let long = "p".repeat(100);
    let prefix = "p".repeat(72);

    let status = common::create_user(&mut admin, "longpw", &long).await;
    assert_eq!(status.code, 65535, "{status:?}");
    assert!(status.reason.contains(TOO_LONG), "{status:?}");
    let users = admin
        .list_cred_users(ListCredUsersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .usernames;
    assert!(
        !users.contains(&"longpw".to_string()),
        "nothing stored: {users:?}"
    );
    assert!(!logs_in(&uri, "longpw", &long).await);
    assert!(!logs_in(&uri, "longpw", &prefix).await);

    // Exactly 72 bytes is bcrypt's whole input: stored, and only that password logs in.
    let status = common::create_user(&mut admin, "maxpw", &prefix).await;
    assert_eq!(status.code, 0, "{status:?}");
    assert!(logs_in(&uri, "maxpw", &prefix).await);
    assert!(
        !logs_in(&uri, "maxpw", &format!("{prefix}q")).await,
        "73 bytes must not match on the 72-byte prefix"
    );
    assert!(!logs_in(&uri, "maxpw", &long).await);

    // Changing to a long password is refused too, and the old one keeps working.
    let status = admin
        .update_credential(UpdateCredentialRequest {
            username: "maxpw".into(),
            old_password: common::b64(&prefix),
            new_password: common::b64(&long),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.code, 65535, "{status:?}");
    assert!(status.reason.contains(TOO_LONG), "{status:?}");
    assert!(logs_in(&uri, "maxpw", &prefix).await);
}

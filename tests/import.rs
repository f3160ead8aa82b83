//! `credstore admin import` against real etcd processes and a real replica: a source keyspace
//! laid out as Milvus 2.2, 2.4, 2.5, 2.6 and master write it (each fixture names the Milvus
//! source it follows; no Milvus binary of those versions runs here — tests/compat/test_adopt.py
//! imports what a real Milvus 2.3.5 wrote) is copied into the store of a replica that keeps
//! running: the summary line, logins with the Milvus passwords at once (the import is
//! acknowledged), grants in credstore's layout, a second run that changes nothing (even after
//! a login rehashed a copied hash), conflicts refused until `--overwrite`, root only with
//! `--include-root`, the audit line, an unreadable source refused with nothing written, and a
//! source etcd reached over TLS.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use credstore::catalog::{Catalog, GrantTarget, StoredGrant, grantee_id};
use credstore::meta::{KeyValue, MetaKv, Op, Store, Txn};
use credstore::proto::milvus::{SelectUserRequest, UserEntity};
use serde_json::Value;

/// bcrypt hashes (cost 4, `$2a$`, as the `milvus` 2.3.5 package writes them) of known passwords.
const ALICE: (&str, &str) = (
    "alice-pass-24",
    "$2a$04$UkxfcFQhusz60D20RrEt5.IMtcJ7cipXfStIt/SURK/AA3dQvgdxm",
);
const BOB: (&str, &str) = (
    "bob-pass-25",
    "$2a$04$RTf7v01FjudyX5t7nls1JuGUfXLbN.Ar/AbdWvY7IeGcxii1bUykW",
);
const CAROL: (&str, &str) = (
    "carol-pass-26",
    "$2a$04$wY5vKLU0POz8lOLF7/DSre1/zdvmTUmFZLT57.sM9K8kxPg3Mra5i",
);
const MILVUS_ROOT: (&str, &str) = (
    "milvus-root-pw",
    "$2a$04$GH27EbkyyytjQXWlnELQ3etRHj7Q0TCQJq78oNsW7e9EQFb3Ifg32",
);
const OTHER: (&str, &str) = (
    "other-pass-1",
    "$2a$04$3k9fyPv7dvjdaGq291rxTexML5Y0Yq7ieHoUfJfVllW2S9xgzH9Di",
);

/// `{"encrypted_password": …}` as Milvus ≤ 2.5 writes a user: `kv_catalog.go`
/// `AlterCredential` marshals `internalpb.CredentialInfo` with `credentialInfo.Username = ""`
/// (the name is in the key) and protoc-gen-go's `omitempty` tags.
fn user_value(hash: &str) -> String {
    format!(r#"{{"encrypted_password":"{hash}"}}"#)
}

/// A `milvus.PrivilegeGroupInfo` encoded by hand (field 1: name; field 2, repeated:
/// `PrivilegeEntity{1: name}`), as 2.5's `kv_catalog.go` `SavePrivilegeGroup` stores
/// `proto.Marshal(groupInfo)`.
fn group_value(name: &str, privileges: &[&str]) -> Vec<u8> {
    let field = |tag: u8, bytes: &[u8]| {
        let mut out = vec![tag, u8::try_from(bytes.len()).expect("short")];
        out.extend_from_slice(bytes);
        out
    };
    let mut value = field(0x0a, name.as_bytes());
    for privilege in privileges {
        value.extend(field(0x12, &field(0x0a, privilege.as_bytes())));
    }
    value
}

/// The source keyspace (keys relative to `{root}/meta/`), one block per Milvus version.
fn milvus_keyspace() -> Vec<(String, Vec<u8>)> {
    let grantee = |relative: &str| grantee_id(relative);
    let c = "root-coord/credential";
    let mut keys: Vec<(String, String)> = Vec::new();
    let mut put = |key: String, value: String| keys.push((key, value));

    // Milvus 2.4, internal/metastore/kv/rootcoord/kv_catalog.go: `CreateRole` saves the role
    // key with "" (`kc.Txn.Save(k, "")`), so do `initRbac`'s admin and public; `AlterUserRole`
    // saves `user-role-mapping/{user}/{role}` = ""; `AlterGrant` saves
    // `grantee-privileges/{role}/{object}/` + `funcutil.CombineObjectName(db, name)` with the
    // id `crypto.MD5(k)` (hex md5 of that relative key, [8:24]), then
    // `grantee-id/{id}/{privilegeName}` = the grantor's name.
    for role in ["admin", "public", "reader"] {
        put(format!("{c}/roles/{role}"), String::new());
    }
    put(format!("{c}/users/alice"), user_value(ALICE.1));
    put(format!("{c}/users/root"), user_value(MILVUS_ROOT.1));
    put(format!("{c}/user-role-mapping/alice/reader"), String::new());
    put(format!("{c}/user-role-mapping/root/admin"), String::new());
    let books = format!("{c}/grantee-privileges/reader/Collection/default.books");
    put(books.clone(), grantee(&books));
    put(
        format!("{c}/grantee-id/{}/PrivilegeQuery", grantee(&books)),
        "root".into(),
    );
    // Milvus 2.2 (before databases) keyed grants `{role}/{object}/{objectName}`; 2.4's
    // `AlterGrant` still reads that key first for the default db ("Compatible with logic
    // without db").
    let legacy = format!("{c}/grantee-privileges/reader/Global/*");
    put(legacy.clone(), grantee(&legacy));
    put(
        format!(
            "{c}/grantee-id/{}/PrivilegeDescribeCollection",
            grantee(&legacy)
        ),
        "root".into(),
    );
    // A binding whose user does not exist, and a grant whose role does not.
    put(format!("{c}/user-role-mapping/ghost/reader"), String::new());
    let ghost = format!("{c}/grantee-privileges/ghost_role/Global/default.*");
    put(ghost.clone(), grantee(&ghost));
    put(
        format!(
            "{c}/grantee-id/{}/PrivilegeCreateOwnership",
            grantee(&ghost)
        ),
        "root".into(),
    );

    // Milvus 2.5: `grant_privilege_v2` with db "*" stores `{object}/*.*`; built-in groups are
    // stored as `PrivilegeGroup{Name}` (`util.PrivilegeGroupNameForMetastore`), custom ones
    // under `root-coord/privilege-group/{name}` (see `group_value`).
    put(format!("{c}/users/bob"), user_value(BOB.1));
    put(format!("{c}/user-role-mapping/bob/reader"), String::new());
    put(format!("{c}/user-role-mapping/bob/writer"), String::new());
    let cluster = format!("{c}/grantee-privileges/writer/Global/*.*");
    put(cluster.clone(), grantee(&cluster));
    put(
        format!(
            "{c}/grantee-id/{}/PrivilegeGroupClusterReadOnly",
            grantee(&cluster)
        ),
        "root".into(),
    );
    let papers = format!("{c}/grantee-privileges/writer/Collection/db2.papers");
    put(papers.clone(), grantee(&papers));
    put(
        format!("{c}/grantee-id/{}/PrivilegeGroupgrp_read", grantee(&papers)),
        "bob".into(),
    );

    // Milvus 2.6, internal/rootcoord/meta_table.go `AlterCredential`: the credential carries
    // `TimeTick: result.GetControlChannelResult().TimeTick`, so the JSON has `"time_tick"`.
    put(
        format!("{c}/users/carol"),
        format!(
            r#"{{"encrypted_password":"{}","time_tick":456789012345678}}"#,
            CAROL.1
        ),
    );
    // Milvus master: a role's value is `model.MarshalRoleModel`'s `{"description": …}`, and
    // collection grants are written twice, by name and by id (`dbID:{n}.colID:{n}`, PR
    // #48197); only the name key can be resolved without Milvus's collection catalog.
    put(
        format!("{c}/roles/writer"),
        r#"{"description":"writes papers"}"#.into(),
    );
    let by_id = format!("{c}/grantee-privileges/writer/Collection/dbID:1.colID:2");
    put(by_id.clone(), grantee(&by_id));
    put(
        format!("{c}/grantee-id/{}/PrivilegeGroupgrp_read", grantee(&by_id)),
        "bob".into(),
    );
    let mut out: Vec<(String, Vec<u8>)> =
        keys.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
    out.push((
        "root-coord/privilege-group/grp_read".into(),
        group_value("grp_read", &["Query", "Search"]),
    ));
    out
}

async fn write_keyspace(store: &Store, meta: &str, keys: &[(String, Vec<u8>)]) {
    for batch in keys.chunks(64) {
        let txn = batch.iter().fold(Txn::default(), |txn, (key, value)| {
            txn.then(Op::Put(format!("{meta}/{key}"), value.clone()))
        });
        store.txn(txn).await.expect("fixture written");
    }
}

/// Runs `credstore admin import --config CONFIG --from-etcd ENDPOINT --from-root-path ROOT
/// EXTRA…`.
fn import(config: &Path, endpoint: &str, root: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_credstore"))
        .args(["admin", "import", "--config"])
        .arg(config)
        .args(["--from-etcd", endpoint, "--from-root-path", root])
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .expect("credstore admin import runs")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(text.lines().count(), 1, "one summary line: {text}");
    text.trim_end().to_string()
}

fn refused(output: &Output) -> String {
    assert!(!output.status.success(), "import should have been refused");
    assert!(output.stdout.is_empty(), "no summary on a refusal");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `head` + the revision + `tail`: the summary line without its (unpredictable) revision.
fn assert_summary(line: &str, head: &str, tail: &str) {
    let rest = line
        .strip_prefix(head)
        .unwrap_or_else(|| panic!("{line:?} does not start with {head:?}"));
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    assert!(digits > 0, "a revision in {line:?}");
    assert_eq!(&rest[digits..], tail, "{line}");
}

/// Every credential and privilege-group key of a keyspace, with its mod revision.
async fn snapshot(store: &Store, meta: &str) -> Vec<(String, i64)> {
    let mut keys: Vec<(String, i64)> = Vec::new();
    for prefix in ["root-coord/credential/", "root-coord/privilege-group/"] {
        let listed = store.list(&format!("{meta}/{prefix}")).await.unwrap();
        keys.extend(listed.value.into_iter().map(|kv| (kv.key, kv.mod_revision)));
    }
    keys
}

async fn logs_in(uri: &str, user: &str, password: &str) -> bool {
    let channel = common::channel(uri).await;
    match common::login(&channel, user, password).await {
        Ok(()) => true,
        Err(tonic::Code::Unauthenticated) => false,
        Err(other) => panic!("{user}: neither accepted nor refused: {other:?}"),
    }
}

fn grant(role: &str, object: &str, db: &str, name: &str, privilege: &str, by: &str) -> StoredGrant {
    StoredGrant {
        role: role.into(),
        target: GrantTarget {
            object: object.into(),
            db: db.into(),
            name: name.into(),
        },
        privilege: privilege.into(),
        grantor: by.into(),
    }
}

async fn grants(catalog: &Catalog, role: &str) -> Vec<StoredGrant> {
    let mut grants = catalog.role_grants(role).await.unwrap();
    grants.sort_by(|a, b| (&a.target.name, &a.privilege).cmp(&(&b.target.name, &b.privilege)));
    grants
}

async fn stored(store: &Store, key: &str) -> Option<KeyValue> {
    store.get(key).await.unwrap().value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milvus_keyspaces_are_imported_into_a_running_replica() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let store = etcd.store().await;
    let (source, target) = (
        common::unique_root("milvus"),
        common::unique_root("adopted"),
    );
    let (src_meta, dst_meta) = (format!("{source}/meta"), format!("{target}/meta"));
    write_keyspace(&store, &src_meta, &milvus_keyspace()).await;

    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let yaml = common::TestConfig::on_etcd(&etcd.endpoint(), &target)
        .set("credstore.audit.path", audit.to_str().unwrap())
        .yaml();
    let replica = common::Replica::start_blocking(yaml).await;
    let config = replica.config_path();
    let uri = replica.uri();
    let endpoint = etcd.endpoint();
    let run = |extra: &'static [&'static str]| {
        let (config, endpoint, source) = (config.clone(), endpoint.clone(), source.clone());
        tokio::task::spawn_blocking(move || import(&config, &endpoint, &source, extra))
    };
    let head = |counts: &str| format!("imported {counts} from {src_meta} at revision ");
    let skipped = "; skipped 1 binding and 1 grant whose user or role does not exist; skipped 1 \
                   grantee key naming collections by id (Milvus writes them next to the name keys copied)";

    // Before: nobody Milvus knows logs in through credstore.
    assert!(!logs_in(&uri, "alice", ALICE.0).await);
    assert!(logs_in(&uri, "root", "Milvus").await, "positive control");

    let first = stdout(&run(&[]).await.unwrap());
    assert_summary(
        &first,
        &head("3 users, 2 roles, 3 bindings, 4 grants, 1 privilege group"),
        &format!(
            "; 2 already present; skipped root and 1 binding (--include-root copies them){skipped}"
        ),
    );

    // Acknowledged: the running replica accepts the Milvus passwords at once, not the
    // deleted or unknown; root keeps credstore's password.
    for (user, (password, _)) in [("alice", ALICE), ("bob", BOB), ("carol", CAROL)] {
        assert!(logs_in(&uri, user, password).await, "{user} logs in");
        assert!(
            !logs_in(&uri, user, OTHER.0).await,
            "{user}: wrong password"
        );
    }
    assert!(!logs_in(&uri, "ghost", ALICE.0).await);
    assert!(logs_in(&uri, "root", "Milvus").await);
    assert!(!logs_in(&uri, "root", MILVUS_ROOT.0).await);
    let catalog = Catalog::new(store.clone(), &dst_meta);
    // alice's login rehashed her bcrypt hash to argon2id, keeping the other fields.
    let alice = stored(
        &store,
        &format!("{dst_meta}/root-coord/credential/users/alice"),
    )
    .await;
    let alice: Value = serde_json::from_slice(&alice.unwrap().value).unwrap();
    assert!(
        alice["encrypted_password"]
            .as_str()
            .unwrap()
            .starts_with("$argon2id$")
    );
    assert!(alice["imported_from"].is_string(), "{alice}");
    let carol = stored(
        &store,
        &format!("{dst_meta}/root-coord/credential/users/carol"),
    )
    .await;
    let carol: Value = serde_json::from_slice(&carol.unwrap().value).unwrap();
    assert_eq!(
        carol["time_tick"], 456789012345678u64,
        "2.6's fields are kept"
    );

    // The replica serves the bindings; the grants are in credstore's layout (the legacy key
    // under db `default`, Milvus's md5 id of the new key), the id-keyed one left out.
    let mut bob = common::client(&uri, "bob", BOB.0).await;
    let selected = bob
        .select_user(SelectUserRequest {
            user: Some(UserEntity { name: "bob".into() }),
            include_role_info: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut roles: Vec<String> = selected.results[0]
        .roles
        .iter()
        .map(|r| r.name.clone())
        .collect();
    roles.sort();
    assert_eq!(roles, ["reader", "writer"]);
    assert_eq!(
        grants(&catalog, "reader").await,
        [
            grant(
                "reader",
                "Global",
                "default",
                "*",
                "PrivilegeDescribeCollection",
                "root"
            ),
            grant(
                "reader",
                "Collection",
                "default",
                "books",
                "PrivilegeQuery",
                "root"
            ),
        ]
    );
    assert_eq!(
        grants(&catalog, "writer").await,
        [
            grant(
                "writer",
                "Global",
                "*",
                "*",
                "PrivilegeGroupClusterReadOnly",
                "root"
            ),
            grant(
                "writer",
                "Collection",
                "db2",
                "papers",
                "PrivilegeGroupgrp_read",
                "bob"
            ),
        ]
    );
    let legacy = "root-coord/credential/grantee-privileges/reader/Global/default.*";
    let id = stored(&store, &format!("{dst_meta}/{legacy}"))
        .await
        .unwrap();
    assert_eq!(String::from_utf8(id.value).unwrap(), grantee_id(legacy));
    assert_eq!(
        catalog.privilege_groups().await.unwrap()[0].privileges,
        ["Query", "Search"]
    );
    assert_eq!(
        catalog.role_description("writer").await.unwrap().as_deref(),
        Some("writes papers")
    );

    // Idempotent, even after a login rehashed alice: nothing is written.
    let before = snapshot(&store, &dst_meta).await;
    let again = stdout(&run(&[]).await.unwrap());
    assert_summary(
        &again,
        &head("0 users, 0 roles, 0 bindings, 0 grants, 0 privilege groups"),
        &format!(
            "; nothing changed: 15 already present; skipped root and 1 binding (--include-root \
             copies them){skipped}"
        ),
    );
    assert_eq!(snapshot(&store, &dst_meta).await, before);

    // Milvus changed alice's password after the import, and credstore has its own dora: both
    // conflict, and nothing is written until --overwrite.
    write_keyspace(
        &store,
        &src_meta,
        &[
            (
                "root-coord/credential/users/alice".into(),
                user_value(OTHER.1).into_bytes(),
            ),
            (
                "root-coord/credential/users/dora".into(),
                user_value(CAROL.1).into_bytes(),
            ),
        ],
    )
    .await;
    let mut admin = common::Admin::connect(&replica).await;
    common::assert_ok(
        admin.create("dora", "dora-in-credstore").await,
        "create dora",
    );
    let before = snapshot(&store, &dst_meta).await;
    let conflict = refused(&run(&[]).await.unwrap());
    assert!(
        conflict.contains("2 users, roles or privilege groups exist in credstore with other content (alice, dora); --overwrite replaces them; nothing was imported"),
        "{conflict}"
    );
    assert_eq!(snapshot(&store, &dst_meta).await, before);
    assert!(logs_in(&uri, "alice", ALICE.0).await);
    let overwritten = stdout(&run(&["--overwrite"]).await.unwrap());
    assert!(
        overwritten.starts_with(&head(
            "2 users, 0 roles, 0 bindings, 0 grants, 0 privilege groups"
        )),
        "{overwritten}"
    );
    assert!(logs_in(&uri, "alice", OTHER.0).await);
    assert!(!logs_in(&uri, "alice", ALICE.0).await);
    assert!(logs_in(&uri, "dora", CAROL.0).await);
    assert!(!logs_in(&uri, "dora", "dora-in-credstore").await);

    // --include-root: Milvus's root password and root's binding.
    let rooted = stdout(&run(&["--include-root"]).await.unwrap());
    assert!(
        rooted.starts_with(&head(
            "1 user, 0 roles, 1 binding, 0 grants, 0 privilege groups"
        )),
        "{rooted}"
    );
    assert!(logs_in(&uri, "root", MILVUS_ROOT.0).await);
    assert!(!logs_in(&uri, "root", "Milvus").await);

    // One audit line per run, with what it wrote; never a hash.
    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &Value| l["action"] == "Import")
        .collect();
    let results: Vec<&str> = lines
        .iter()
        .map(|l| l["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["ok", "ok", "conflict", "ok", "ok"], "{lines:?}");
    assert_eq!(lines[0]["target"]["users"], 3, "{}", lines[0]);
    assert_eq!(lines[0]["target"]["grants"], 4, "{}", lines[0]);
    assert_eq!(lines[0]["target"]["source"], src_meta.as_str());
    assert!(
        lines[1]["revision"].is_null(),
        "nothing written: {}",
        lines[1]
    );
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(!text.contains("$2a$04$"), "no hash in the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_source_or_a_bad_flag_changes_nothing() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let etcd = common::Etcd::start();
    let store = etcd.store().await;
    let (source, target) = (common::unique_root("broken"), common::unique_root("kept"));
    write_keyspace(
        &store,
        &format!("{source}/meta"),
        &[
            (
                "root-coord/credential/users/alice".into(),
                user_value(ALICE.1).into_bytes(),
            ),
            (
                "root-coord/credential/users/mallory".into(),
                br#"{"encrypted_password":"plain"}"#.to_vec(),
            ),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("credstore.yaml");
    std::fs::write(
        &config,
        common::TestConfig::on_etcd(&etcd.endpoint(), &target).yaml(),
    )
    .unwrap();
    let endpoint = etcd.endpoint();
    let dst_meta = format!("{target}/meta");
    let (c, e, s) = (config.clone(), endpoint.clone(), source.clone());
    let output = tokio::task::spawn_blocking(move || import(&c, &e, &s, &[]))
        .await
        .unwrap();
    let error = refused(&output);
    assert!(
        error.contains(&format!(
            "the source holds a value credstore cannot read (stored value at {source}/meta/root-coord/credential/users/mallory holds no valid hash"
        )) && error.contains("nothing was imported"),
        "{error}"
    );
    let users = Catalog::new(store.clone(), &dst_meta)
        .list_users()
        .await
        .unwrap();
    assert_eq!(users, ["root"], "alice was not imported either");

    // A user name credstore's rules refuse (proxy.maxUsernameLength) stops it too.
    write_keyspace(
        &store,
        &format!("{source}/meta"),
        &[(
            "root-coord/credential/users/mallory".into(),
            user_value(BOB.1).into_bytes(),
        )],
    )
    .await;
    let short = dir.path().join("short.yaml");
    std::fs::write(
        &short,
        common::TestConfig::on_etcd(&etcd.endpoint(), &target)
            .set("proxy.maxUsernameLength", 6)
            .yaml(),
    )
    .unwrap();
    let (e, s) = (endpoint.clone(), source.clone());
    let output = tokio::task::spawn_blocking(move || import(&short, &e, &s, &[]))
        .await
        .unwrap();
    let error = refused(&output);
    assert!(
        error.contains("the source's user \"mallory\" is not a valid name here"),
        "{error}"
    );
    assert_eq!(
        Catalog::new(store.clone(), &dst_meta)
            .list_users()
            .await
            .unwrap(),
        ["root"]
    );

    // Flags that cannot work are refused before anything is read.
    let (c, e, s) = (config.clone(), endpoint.clone(), source.clone());
    let output =
        tokio::task::spawn_blocking(move || import(&c, &e, &s, &["--from-etcd-user", "milvus"]))
            .await
            .unwrap();
    let error = refused(&output);
    assert!(
        error.contains(
            "--from-etcd-user and --from-etcd-password (CREDSTORE_FROM_ETCD_PASSWORD) go together"
        ),
        "{error}"
    );
    // And the positive control on the same store and source: it works once fixed.
    let (c, e, s) = (config.clone(), endpoint.clone(), source.clone());
    let output = tokio::task::spawn_blocking(move || import(&c, &e, &s, &[]))
        .await
        .unwrap();
    assert!(stdout(&output).starts_with("imported 2 users,"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_etcd_is_reached_over_tls() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let certificates = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::test_certificates(certificates.path());
    let (source_etcd, tls_port) = common::Etcd::start_with_tls(&cert, &key);
    let source = common::unique_root("milvus-tls");
    write_keyspace(
        &source_etcd.store().await,
        &format!("{source}/meta"),
        &[(
            "root-coord/credential/users/alice".into(),
            user_value(ALICE.1).into_bytes(),
        )],
    )
    .await;
    let etcd = common::Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("credstore.yaml");
    let target = common::unique_root("adopted-tls");
    std::fs::write(
        &config,
        common::TestConfig::on_etcd(&etcd.endpoint(), &target).yaml(),
    )
    .unwrap();
    let endpoint = format!("127.0.0.1:{tls_port}");
    let ca = ca.to_str().unwrap().to_string();
    let (c, e, s, a) = (config.clone(), endpoint.clone(), source.clone(), ca.clone());
    let output = tokio::task::spawn_blocking(move || {
        import(&c, &e, &s, &["--from-etcd-ca-cert", a.as_str()])
    })
    .await
    .unwrap();
    assert!(stdout(&output).starts_with("imported 1 user,"));
    let store = etcd.store().await;
    let users = Catalog::new(store, &format!("{target}/meta"))
        .list_users()
        .await
        .unwrap();
    assert_eq!(users, ["alice", "root"]);
    // Without the CA the same endpoint is refused, with the reason.
    let output = tokio::task::spawn_blocking(move || import(&config, &endpoint, &source, &[]))
        .await
        .unwrap();
    assert!(refused(&output).contains("cannot reach the source etcd"));
}

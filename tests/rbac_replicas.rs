//! Grants that agree across replicas, proven with real processes: one etcd, two
//! `credstore serve` replicas A and B, and gRPC clients that authenticate as pymilvus does.
//!
//! The promise under test (issue 10, "Coherent like passwords"): once a grant or a revoke
//! returns success on replica A, replica B decides by it on the very next request. A task on
//! B creates users in an open loop as a user whose only power is a custom role holding
//! `Global/CreateOwnership` on db `*`, while A revokes that privilege: every create sent after
//! the revoke returned must be refused with PERMISSION_DENIED; one success is a stale grant and
//! fails the test. Then every replica is stopped and started again: the grants are read back
//! from etcd and still enforced. Last, B is partitioned from etcd while A revokes a privilege
//! B checks without touching etcd (a call B forwards to an upstream Milvus): the revoke
//! returns within B's session TTL, and from then on B refuses the call.

mod common;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use credstore::proto::milvus::milvus_service_client::MilvusServiceClient;
use credstore::proto::milvus::{
    CreateCredentialRequest, CreateRoleRequest, GrantEntity, GrantorEntity, ObjectEntity,
    OperatePrivilegeRequest, OperatePrivilegeType, OperateUserRoleRequest, OperateUserRoleType,
    PrivilegeEntity, RoleEntity,
};
use tonic::Code;
use tonic::transport::Channel;

const ROLE: &str = "creators";
const CREATOR: &str = "creator";
const CREATOR_PASSWORD: &str = "creator-pw";

use common::Reply;

#[track_caller]
fn assert_ok(reply: Reply, what: &str) {
    assert!(
        matches!(&reply, Ok(status) if status.code == 0 && status.error_code == 0),
        "{what}: expected success, got {reply:?}"
    );
}

/// What one CreateCredential got back.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Create {
    Created,
    Denied,
    Other(String),
}

/// One connection to a replica that sends `creator`'s credentials with every request.
#[derive(Clone)]
struct Creator {
    channel: Channel,
}

impl Creator {
    async fn connect(replica: &common::Replica) -> Creator {
        let channel = Channel::from_shared(replica.uri())
            .expect("a valid URI")
            .connect()
            .await
            .expect("replica reachable");
        Creator { channel }
    }

    async fn create(&self, user: &str) -> Create {
        let mut request = tonic::Request::new(CreateCredentialRequest {
            username: user.into(),
            password: common::b64("new-user-pw"),
            ..Default::default()
        });
        let header = common::b64(&format!("{CREATOR}:{CREATOR_PASSWORD}"))
            .parse()
            .expect("base64 is ASCII");
        request.metadata_mut().insert("authorization", header);
        match MilvusServiceClient::new(self.channel.clone())
            .create_credential(request)
            .await
        {
            Ok(reply) => {
                let status = reply.into_inner();
                match (status.code, status.error_code) {
                    (0, 0) => Create::Created,
                    _ => Create::Other(format!("{status:?}")),
                }
            }
            Err(status) if status.code() == Code::PermissionDenied => Create::Denied,
            Err(status) => Create::Other(format!("{:?}: {}", status.code(), status.message())),
        }
    }
}

/// root's client on one replica: the harness's `Admin` (users) plus role and grant writes.
struct Root(common::Admin);

impl Root {
    async fn connect(replica: &common::Replica) -> Root {
        Root(common::Admin::connect(replica).await)
    }

    async fn create_user(&mut self, user: &str, password: &str) -> Reply {
        self.0.create(user, password).await
    }

    async fn create_role(&mut self, role: &str) -> Reply {
        let request = CreateRoleRequest {
            entity: Some(RoleEntity {
                name: role.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.0
            .0
            .create_role(request)
            .await
            .map(tonic::Response::into_inner)
    }

    async fn add_to_role(&mut self, user: &str, role: &str) -> Reply {
        let request = OperateUserRoleRequest {
            username: user.into(),
            role_name: role.into(),
            r#type: OperateUserRoleType::AddUserToRole as i32,
            ..Default::default()
        };
        self.0
            .0
            .operate_user_role(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Grants (or revokes) `Global/CreateOwnership` on db `*` to `ROLE`, as pymilvus's
    /// `grant_privilege(ROLE, "Global", "*", "CreateOwnership", db_name="*")` sends it.
    async fn create_ownership(&mut self, grant: bool) -> Reply {
        self.operate(grant, ROLE, ("Global", "*", "*"), "CreateOwnership")
            .await
    }

    /// `OperatePrivilege` (v1) as pymilvus sends it, on `(object type, object name, db)`.
    async fn operate(
        &mut self,
        grant: bool,
        role: &str,
        (object, object_name, db): (&str, &str, &str),
        privilege: &str,
    ) -> Reply {
        let r#type = match grant {
            true => OperatePrivilegeType::Grant,
            false => OperatePrivilegeType::Revoke,
        };
        let request = OperatePrivilegeRequest {
            entity: Some(GrantEntity {
                role: Some(RoleEntity {
                    name: role.into(),
                    ..Default::default()
                }),
                object: Some(ObjectEntity {
                    name: object.into(),
                }),
                object_name: object_name.into(),
                grantor: Some(GrantorEntity {
                    user: None,
                    privilege: Some(PrivilegeEntity {
                        name: privilege.into(),
                    }),
                }),
                db_name: db.into(),
            }),
            r#type: r#type as i32,
            ..Default::default()
        };
        self.0
            .0
            .operate_privilege(request)
            .await
            .map(tonic::Response::into_inner)
    }
}

/// Starts replicas at once, all on `endpoints` under `root`.
fn start_replicas<const N: usize>(endpoints: &str, root: &str) -> [common::Replica; N] {
    let yaml = common::TestConfig::on_etcd(endpoints, root).yaml();
    common::start_replicas_from(std::array::from_fn(|_| yaml.clone()))
}

/// Prints a replica's log if the test fails while this guard lives.
struct LogOnFailure<'r>(&'static str, &'r common::Replica);

impl Drop for LogOnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- log of replica {} ----\n{}", self.0, self.1.log());
        }
    }
}

/// One create of the hammer: when it was sent and what it got.
struct Shot {
    sent: Instant,
    got: Create,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_through_a_is_refused_by_b_from_the_moment_it_returns_and_grants_survive_restarts() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    let etcd = tokio::task::block_in_place(common::Etcd::start);
    let root_path = common::unique_root("rbac-replicas");
    let [a, b] = start_replicas(&etcd.endpoint(), &root_path);
    let logs = (LogOnFailure("A", &a), LogOnFailure("B", &b));
    let mut root = Root::connect(&a).await;
    assert_ok(
        root.create_user(CREATOR, CREATOR_PASSWORD).await,
        "create creator via A",
    );
    assert_ok(root.create_role(ROLE).await, "create the role via A");
    assert_ok(
        root.add_to_role(CREATOR, ROLE).await,
        "creator joins the role via A",
    );
    let on_b = Creator::connect(&b).await;
    assert_eq!(
        on_b.create("before_any_grant").await,
        Create::Denied,
        "without a grant, creator may not create users"
    );

    const ROUNDS: usize = 30;
    const TASKS: usize = 3;
    // Each task keeps going until it has this many answers to creates sent after the revoke.
    const AFTER_REVOKE: usize = 8;
    let started = Instant::now();
    let (mut rounds, mut after_revoke, mut created_before) = (0, 0, 0);
    let (mut stale, mut wrong) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if started.elapsed() > Duration::from_secs(60) {
            break;
        }
        assert_ok(
            root.create_ownership(true).await,
            &format!("round {round}: grant via A"),
        );
        // Acknowledged: B decides by the grant on the next request, no retry.
        assert_eq!(
            on_b.create(&format!("granted_{round}")).await,
            Create::Created,
            "round {round}: B refused a create right after the grant returned"
        );
        let revoked: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
        // Open loop: a create every 2 ms whatever the answers, each with a new name.
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let (on_b, revoked) = (on_b.clone(), revoked.clone());
                tokio::spawn(async move {
                    let mut requests = Vec::new();
                    let mut after = 0;
                    let deadline = Instant::now() + Duration::from_secs(10);
                    let mut i = 0;
                    while after < AFTER_REVOKE && Instant::now() < deadline {
                        i += 1;
                        let sent = Instant::now();
                        let (on_b, user) = (on_b.clone(), format!("h{round}t{task}n{i}"));
                        requests
                            .push((sent, tokio::spawn(async move { on_b.create(&user).await })));
                        if revoked.get().is_some_and(|at| sent > *at) {
                            after += 1;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    let mut shots = Vec::new();
                    for (sent, request) in requests {
                        shots.push(Shot {
                            sent,
                            got: request.await.expect("create task"),
                        });
                    }
                    shots
                })
            })
            .collect();
        // Vary where in the hammering the revoke lands.
        tokio::time::sleep(Duration::from_millis(5 + (round as u64 % 4) * 5)).await;
        let reply = root.create_ownership(false).await;
        let at = Instant::now();
        revoked.set(at).expect("set once");
        assert_ok(reply, &format!("round {round}: revoke via A"));
        for task in tasks {
            for shot in task.await.expect("hammer task") {
                match (shot.sent > at, shot.got) {
                    (false, Create::Created) => created_before += 1,
                    (false, _) => {}
                    (true, Create::Denied) => after_revoke += 1,
                    (true, Create::Created) => {
                        after_revoke += 1;
                        stale.push(format!(
                            "round {round}: B created a user {:?} after the revoke returned",
                            shot.sent - at
                        ));
                    }
                    (true, Create::Other(other)) => wrong.push(format!(
                        "round {round}: B answered {other} after the revoke"
                    )),
                }
            }
        }
        rounds += 1;
    }
    println!(
        "rbac hammer: {rounds} rounds, {created_before} creates granted before revokes, \
         {after_revoke} creates sent after revokes, {:?}",
        started.elapsed()
    );
    assert!(rounds >= 5, "only {rounds} rounds ran in the time bound");
    assert!(
        created_before > 0,
        "the hammer never saw a create succeed before a revoke"
    );
    assert!(
        after_revoke >= rounds * TASKS * AFTER_REVOKE / 2,
        "too few creates after revokes: {after_revoke}"
    );
    assert!(
        stale.is_empty(),
        "{} stale grants of {after_revoke} creates sent after a revoke returned: {:#?}",
        stale.len(),
        &stale[..stale.len().min(10)]
    );
    assert!(
        wrong.is_empty(),
        "unexpected answers after revokes: {:#?}",
        &wrong[..wrong.len().min(10)]
    );

    // Grants survive a restart of every replica: grant again, stop both, start both.
    assert_ok(
        root.create_ownership(true).await,
        "grant before the restart",
    );
    drop((root, on_b, logs));
    let (a_status, b_status) = (a.stop(), b.stop());
    assert!(
        a_status.success() && b_status.success(),
        "{a_status:?} {b_status:?}"
    );
    let [a, b] = start_replicas(&etcd.endpoint(), &root_path);
    let _logs = (LogOnFailure("A", &a), LogOnFailure("B", &b));
    for (name, replica) in [("A", &a), ("B", &b)] {
        let creator = Creator::connect(replica).await;
        assert_eq!(
            creator.create(&format!("after_restart_{name}")).await,
            Create::Created,
            "{name} lost the grant across the restart"
        );
    }
    // And a revoke after the restart still reaches the other replica at once.
    let mut root = Root::connect(&b).await;
    assert_ok(root.create_ownership(false).await, "revoke via B");
    assert_eq!(
        Creator::connect(&a)
            .await
            .create("after_restart_revoked")
            .await,
        Create::Denied,
        "A still allowed a create after the revoke through B returned"
    );
}

/// `Insert` into collection `c1` through `channel` as `user:password`, as raw bytes.
async fn insert(channel: &Channel, user: &str, password: &str) -> Result<(), Code> {
    let mut client = tonic::client::Grpc::new(channel.clone());
    client.ready().await.map_err(|_| Code::Unavailable)?;
    // InsertRequest { collection_name (3): "c1" }
    let mut request = credstore::client::Authorization::credentials(user, password).apply(
        tonic::Request::new(prost::bytes::Bytes::from_static(&[0x1a, 2, b'c', b'1'])),
    );
    request.set_timeout(Duration::from_secs(5));
    let path = "/milvus.proto.milvus.MilvusService/Insert"
        .parse()
        .expect("a valid path");
    client
        .unary(request, path, credstore::proxy::RawCodec)
        .await
        .map(|_| ())
        .map_err(|status| status.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_with_b_partitioned_returns_within_the_ttl_and_b_refuses_from_then_on() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    let etcd = tokio::task::block_in_place(common::Etcd::start);
    let proxy = Proxy::start(etcd.client_port);
    // A stand-in for Milvus behind B's proxy tier: answers Insert with its own body.
    let running = common::upstream::start_upstream(common::upstream::Upstream::default()).await;
    let upstream = running.address;
    let root_path = common::unique_root("rbac-partition");
    let a_yaml = common::TestConfig::on_etcd(&etcd.endpoint(), &root_path).yaml();
    let b_yaml = common::TestConfig::on_etcd(&proxy.endpoint(), &root_path)
        .set("credstore.upstream.uri", format!("http://{upstream}"))
        .set("credstore.upstream.token", "root:Milvus")
        .yaml();
    let a = tokio::task::block_in_place(|| common::Replica::start(&a_yaml));
    let b = tokio::task::block_in_place(|| common::Replica::start(&b_yaml));
    let _logs = (LogOnFailure("A", &a), LogOnFailure("B", &b));
    let mut root = Root::connect(&a).await;
    assert_ok(
        root.create_user("writer", "writer-pw").await,
        "create writer",
    );
    assert_ok(root.create_role("writers").await, "create writers");
    assert_ok(
        root.add_to_role("writer", "writers").await,
        "writer joins writers",
    );
    let on_b = Creator::connect(&b).await.channel;
    assert_eq!(
        insert(&on_b, "writer", "writer-pw").await,
        Err(Code::PermissionDenied)
    );
    assert_ok(
        root.operate(true, "writers", ("Collection", "c1", ""), "Insert")
            .await,
        "grant Insert on default.c1",
    );
    for attempt in 0..3 {
        assert_eq!(
            insert(&on_b, "writer", "writer-pw").await,
            Ok(()),
            "B forwards writer's Insert after the grant (attempt {attempt})"
        );
    }

    proxy.partition();
    let asked = Instant::now();
    let reply = root
        .operate(false, "writers", ("Collection", "c1", ""), "Insert")
        .await;
    let took = asked.elapsed();
    println!("revoke with B partitioned returned after {took:?}");
    assert_ok(reply, "revoke via A while B is partitioned");
    assert!(
        took <= Duration::from_secs(13),
        "the revoke took {took:?}, more than the session TTL plus 3 s"
    );
    // From the moment the revoke returned, B must not forward the call: it cannot have
    // seen the revoke, so it must have stopped trusting its policy.
    let until = Instant::now() + Duration::from_secs(1);
    let mut answers = 0;
    while Instant::now() < until {
        let got = insert(&on_b, "writer", "writer-pw").await;
        assert!(
            got.is_err(),
            "B forwarded a revoked call after the revoke returned"
        );
        answers += 1;
    }
    assert!(answers > 0);
    proxy.heal();
    common::eventually(
        "B refuses the revoked call as denied after healing",
        async || {
            let got = insert(&on_b, "writer", "writer-pw").await;
            assert_ne!(got, Ok(()), "B forwarded a revoked call after healing");
            got == Err(Code::PermissionDenied)
        },
    )
    .await;
}

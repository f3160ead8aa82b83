//! The proxy tier forwards exactly what it authorized (issue 16), on the wire:
//!
//! - every forwarded method of the privilege table (and every unannotated one) is walked:
//!   a caller granted exactly its privilege on object X in database D gets the call to the
//!   upstream with D (the only `dbname`) and the body naming X, and nothing else the caller
//!   sent; granted it in another database, or on another collection, the call never reaches
//!   the upstream;
//! - a `dbname` header with bytes 0x80–0xFF is refused, never forwarded (row 7);
//! - a property test: for ≥ 10⁶ generated requests (duplicated and reordered fields, nested
//!   requests, unknown fields, zero to two `dbname` headers) the subject credstore extracts
//!   equals what a reference decoder with protobuf's semantics (prost-reflect, on pymilvus's
//!   descriptors) reads, or the request is refused.
//!
//! Requests are built from pymilvus's descriptors (tests/data/milvus.fds, written by
//! scripts/subject_table.py), not from credstore's own tables.

mod common;

use std::time::Duration;

use common::upstream::{
    Credstore, SERVICE, Upstream, start_credstore, start_credstore_with, start_upstream,
};
use credstore::catalog::{GrantTarget, RoleName};
use credstore::client::Authorization;
use credstore::password::{Limits, Username};
use credstore::proxy::methods::{CALLER_DEPENDENT, FILTERED, OWNED, STREAMING, UNANNOTATED};
use credstore::proxy::subject::{self, Subject};
use credstore::rbac::{Reach, method_privileges as methods};
use prost::Message;
use prost::bytes::Bytes;
use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MessageDescriptor, ReflectMessage, Value,
};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::{Code, Request, Response, Status};

const D: &str = "dbt";
const E: &str = "dbe";
const X: &str = "coll_x";
const Y: &str = "coll_y";
const HEADER: &str = "hdr";

const DB_FIELDS: &[&str] = &["db_name", "dbName"];
const OTHER_DB_FIELDS: &[&str] = &["newDBName", "new_db_name", "target_db_name"];
const NAME_FIELDS: &[&str] = &[
    "collection_name",
    "collectionName",
    "collection_names",
    "oldName",
    "newName",
    "target_collection_name",
];

fn pool() -> DescriptorPool {
    DescriptorPool::decode(include_bytes!("data/milvus.fds").as_ref()).unwrap()
}

fn input(pool: &DescriptorPool, method: &str) -> MessageDescriptor {
    let service = pool.get_service_by_name(SERVICE).unwrap();
    let found = service.methods().find(|m| m.name() == method);
    found
        .unwrap_or_else(|| panic!("{method} is not in pymilvus's descriptors"))
        .input()
}

/// A request of `method` acting in `db` on collection `name`: its own database field, every
/// top-level collection-name field, and its alias field (`al_<name>`, which the recording
/// upstream resolves to `name`).
fn request(pool: &DescriptorPool, method: &str, db: &str, name: &str) -> (Vec<u8>, bool) {
    let descriptor = input(pool, method);
    let mut message = DynamicMessage::new(descriptor.clone());
    let mut has_db = false;
    for field in descriptor.fields() {
        if field.kind() != Kind::String {
            continue;
        }
        let value = match field.name() {
            n if DB_FIELDS.contains(&n) => {
                has_db = true;
                db.to_string()
            }
            n if NAME_FIELDS.contains(&n) => name.to_string(),
            "alias" => format!("al_{name}"),
            _ => continue,
        };
        let value = match field.is_list() {
            true => Value::List(vec![Value::String(value)]),
            false => Value::String(value),
        };
        message.set_field(&field, value);
    }
    (message.encode_to_vec(), has_db)
}

/// The forwarded methods: every annotated or unannotated method the tier forwards and
/// authorizes (owned, caller-dependent, filtered and streaming ones are elsewhere).
fn forwarded() -> Vec<&'static str> {
    let mut all: Vec<&str> = methods::all().map(|(m, _)| m).collect();
    all.extend(UNANNOTATED);
    all.retain(|m| {
        ![OWNED, CALLER_DEPENDENT, FILTERED, STREAMING]
            .iter()
            .any(|list| list.contains(m))
    });
    all.sort();
    all
}

/// `method` with `body` through credstore as bob, with `dbname: db` and a request id.
async fn call(
    credstore: &Credstore,
    method: &str,
    body: Vec<u8>,
    db: AsciiMetadataValue,
    id: &str,
) -> Result<Response<Bytes>, Status> {
    let mut request =
        Authorization::credentials("bob", "password1").apply(Request::new(Bytes::from(body)));
    let metadata = request.metadata_mut();
    metadata.insert("dbname", db);
    metadata.insert("client-request-id", id.parse().unwrap());
    metadata.insert("sourceid", "-1".parse().unwrap());
    metadata.insert("x-evil", "1".parse().unwrap());
    request.set_timeout(Duration::from_secs(3));
    common::upstream::unary(&credstore.uri, method, request).await
}

/// The call the upstream saw with request id `id`, if any.
fn seen_with(upstream: &Upstream, id: &str) -> Option<common::upstream::Seen> {
    upstream
        .seen()
        .into_iter()
        .find(|s| s.metadata.get("client-request-id").is_some_and(|v| v == id))
}

/// Grants (or revokes) `privilege` on `target` to role `tbl` and waits until the replica
/// applied it.
async fn set_grant(credstore: &Credstore, target: &GrantTarget, privilege: &str, on: bool) {
    let role = RoleName::parse("tbl").unwrap();
    let revision = match on {
        true => {
            credstore
                .catalog
                .grant_privilege(&role, target, privilege, "root")
                .await
        }
        false => {
            credstore
                .catalog
                .revoke_privilege(&role, target, privilege)
                .await
        }
    };
    if let Some(revision) = revision.unwrap() {
        credstore.coherence.confirm(revision).await.unwrap();
    }
}

/// Binds (or unbinds) `user` to `role` and waits until the replica applied it.
async fn set_binding(credstore: &Credstore, user: &Username, role: &RoleName, on: bool) {
    let revision = match on {
        true => credstore.catalog.add_user_to_role(user, role).await,
        false => credstore.catalog.remove_user_from_role(user, role).await,
    };
    let revision = revision.unwrap().expect("the binding changed");
    credstore.coherence.confirm(revision).await.unwrap();
}

/// Creates user bob (password `password1`, no role) as root, through the API.
async fn create_bob(credstore: &Credstore) -> Username {
    let mut root = common::client(&credstore.uri, "root", "Milvus").await;
    let created = common::create_user(&mut root, "bob", "password1").await;
    assert_eq!(created.code, 0, "{created:?}");
    Username::parse("bob", &Limits::default()).unwrap()
}

struct Case<'a> {
    method: &'a str,
    body: Vec<u8>,
    header: &'a str,
}

impl Case<'_> {
    /// Asserts the call reached the upstream acting in D on the body as sent, and nothing
    /// the caller sent beyond the allowlist.
    async fn forwarded(&self, credstore: &Credstore, upstream: &Upstream, id: &str) {
        let header = self.header.parse().unwrap();
        let answer = call(credstore, self.method, self.body.clone(), header, id).await;
        // The recording upstream fails Flush and lets GetMetrics time out on purpose: what
        // counts is that the call got there, not refused at the tier.
        if let Err(status) = &answer {
            let upstreams = matches!(
                status.code(),
                Code::Aborted | Code::DeadlineExceeded | Code::Cancelled
            );
            assert!(upstreams, "{}: {status:?}", self.method);
        }
        let seen =
            seen_with(upstream, id).unwrap_or_else(|| panic!("{} not forwarded", self.method));
        assert_eq!(seen.method, self.method);
        assert_eq!(seen.body.as_ref(), &self.body[..], "{}", self.method);
        let dbs: Vec<_> = seen.metadata.get_all("dbname").iter().collect();
        assert_eq!(dbs, [D], "{}: forwarded dbname", self.method);
        for dropped in ["sourceid", "x-evil"] {
            assert!(
                seen.metadata.get(dropped).is_none(),
                "{}: {dropped} crossed",
                self.method
            );
        }
        assert_eq!(
            seen.metadata.get("authorization").unwrap(),
            common::b64("svc:tok").as_str()
        );
    }

    /// Asserts the call was refused with PERMISSION_DENIED and never reached the upstream.
    async fn refused(&self, credstore: &Credstore, upstream: &Upstream, id: &str, text: &str) {
        let header = self.header.parse().unwrap();
        let answer = call(credstore, self.method, self.body.clone(), header, id).await;
        let status = answer.expect_err(self.method);
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{}: {status:?}",
            self.method
        );
        assert!(
            status.message().contains(text),
            "{}: {:?} lacks {text:?}",
            self.method,
            status.message()
        );
        assert!(
            seen_with(upstream, id).is_none(),
            "{} reached the upstream",
            self.method
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_forwarded_method_reaches_the_upstream_with_what_was_authorized() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let upstream = Upstream::default();
    let running = start_upstream(upstream.clone()).await;
    // Without `public`'s default grants (DescribeCollection, ListAliases, IndexDetail for
    // everyone), so that every privilege is held only where this test grants it.
    let dir = tempfile::tempdir().unwrap();
    let base = common::TestConfig::new()
        .weak_hashing()
        .set("etcd.data.dir", dir.path().display().to_string())
        .set("credstore.failedAuthDelayMs", 0)
        .set("proxy.enablePublicPrivilege", false);
    let credstore = start_credstore_with(&running, "svc:tok", base, dir).await;
    let bob = create_bob(&credstore).await;
    let role = RoleName::parse("tbl").unwrap();
    credstore.catalog.create_role(&role).await.unwrap();
    set_binding(&credstore, &bob, &role, true).await;
    let admin = RoleName::parse("admin").unwrap();

    let pool = pool();
    let methods = forwarded();
    assert!(methods.len() > 100, "{} forwarded methods", methods.len());
    for (i, method) in methods.iter().copied().enumerate() {
        let (body, has_db) = request(&pool, method, D, X);
        let case = Case {
            method,
            body,
            header: if has_db { HEADER } else { D },
        };
        let id = |n: usize| format!("{i}-{n}");
        let Some(rule) = methods::rule(method) else {
            case.refused(
                &credstore,
                &upstream,
                &id(0),
                "allowed to root and the admin role only",
            )
            .await;
            set_binding(&credstore, &bob, &admin, true).await;
            case.forwarded(&credstore, &upstream, &id(1)).await;
            set_binding(&credstore, &bob, &admin, false).await;
            continue;
        };
        let privilege = rule.privilege.metastore_name();
        let target = |db: &str, name: &str| GrantTarget {
            object: rule.object.as_str().to_string(),
            db: db.to_string(),
            name: name.to_string(),
        };
        let reach = Reach::of(rule.privilege);
        let (granted, elsewhere, other_name) = match reach {
            Reach::Collection => (target(D, X), target(E, X), Some(target(D, Y))),
            Reach::Database => (target(D, "*"), target(E, "*"), None),
            Reach::Cluster => (target("*", "*"), target(E, "*"), None),
        };
        let denied = format!("{privilege}: permission deny to bob");
        set_grant(&credstore, &granted, &privilege, true).await;
        case.forwarded(&credstore, &upstream, &id(0)).await;
        set_grant(&credstore, &granted, &privilege, false).await;
        for (n, wrong) in std::iter::once(elsewhere).chain(other_name).enumerate() {
            set_grant(&credstore, &wrong, &privilege, true).await;
            case.refused(&credstore, &upstream, &id(n + 1), &denied)
                .await;
            set_grant(&credstore, &wrong, &privilege, false).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_dbname_header_is_refused_not_forwarded() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let upstream = Upstream::default();
    let running = start_upstream(upstream.clone()).await;
    let credstore = start_credstore(&running, "svc:tok").await;
    let bob = create_bob(&credstore).await;
    let admin = RoleName::parse("admin").unwrap();
    set_binding(&credstore, &bob, &admin, true).await;
    let (body, _) = request(&pool(), "Query", "", X);
    // Positive control: a readable header is forwarded as the database.
    let good = call(
        &credstore,
        "Query",
        body.clone(),
        "mydb".parse().unwrap(),
        "ok",
    )
    .await;
    assert!(good.is_ok(), "{good:?}");
    assert_eq!(
        seen_with(&upstream, "ok")
            .unwrap()
            .metadata
            .get("dbname")
            .unwrap(),
        "mydb"
    );
    let raw = AsciiMetadataValue::try_from(&b"\x80db\xff"[..]).unwrap();
    let refused = call(&credstore, "Query", body, raw, "raw")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        refused.message(),
        "the dbname header is not a readable database name"
    );
    assert!(seen_with(&upstream, "raw").is_none(), "forwarded");
}

// ---- the property test -------------------------------------------------------------

/// xorshift64*: a small deterministic generator (the seed is printed; set
/// SUBJECT_PROPERTY_SEED to replay).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

/// Values names and databases are drawn from: valid, empty, a wildcard, invalid.
const VALUES: &[&str] = &[
    "a", "b", "default", "c_1", "al_a", "db_2", "", "", "*", "bad name",
];

fn key(number: u32, wire: u8) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(number, wire_type(wire), &mut out);
    out
}

fn wire_type(wire: u8) -> prost::encoding::WireType {
    match wire {
        0 => prost::encoding::WireType::Varint,
        1 => prost::encoding::WireType::SixtyFourBit,
        5 => prost::encoding::WireType::ThirtyTwoBit,
        _ => prost::encoding::WireType::LengthDelimited,
    }
}

fn length_delimited(number: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = key(number, 2);
    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// A random encoding of a `descriptor` message: each interesting field 0–3 times (strings
/// from VALUES, nested messages recursively), some other fields, unknown fields, and the
/// occasional wrong wire type; the field chunks shuffled.
fn random_message(rng: &mut Rng, descriptor: &MessageDescriptor, depth: usize) -> Vec<u8> {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    for field in descriptor.fields() {
        let interesting = DB_FIELDS.contains(&field.name())
            || OTHER_DB_FIELDS.contains(&field.name())
            || NAME_FIELDS.contains(&field.name())
            || field.name() == "alias";
        match field.kind() {
            Kind::String if interesting => {
                for _ in 0..rng.below(4) {
                    let value = rng.pick(VALUES);
                    chunks.push(length_delimited(field.number(), value.as_bytes()));
                }
                if rng.below(200) == 0 {
                    chunks.push(key(field.number(), 0).into_iter().chain([1]).collect());
                }
                if rng.below(200) == 0 {
                    chunks.push(length_delimited(field.number(), &[0xff, 0xfe]));
                }
            }
            Kind::Message(nested) if depth < 3 && !nested.is_map_entry() && rng.below(3) == 0 => {
                for _ in 0..rng.below(3) {
                    let inner = random_message(rng, &nested, depth + 1);
                    chunks.push(length_delimited(field.number(), &inner));
                }
            }
            Kind::String if rng.below(4) == 0 => {
                chunks.push(length_delimited(field.number(), b"filler"));
            }
            _ => {}
        }
    }
    for _ in 0..rng.below(3) {
        let number = 1000 + rng.below(50) as u32;
        match rng.below(2) {
            0 => chunks.push(key(number, 0).into_iter().chain([42]).collect()),
            _ => chunks.push(length_delimited(number, b"unknown")),
        }
    }
    for i in (1..chunks.len()).rev() {
        let j = rng.below(i + 1);
        chunks.swap(i, j);
    }
    chunks.concat()
}

/// What the reference decoder says the upstream acts on, or `None` when it must be refused.
fn reference(message: &DynamicMessage, headers: &[&str]) -> Option<Subject> {
    let valid = |db: &str| credstore::rbac::validate::name(db).is_ok();
    let header = match headers {
        [] => None,
        [""] => None,
        [one] if valid(one) => Some(one.to_string()),
        _ => return None,
    };
    let mut own_db = String::new();
    let (mut other, mut names, mut aliases) = (Vec::new(), Vec::new(), Vec::new());
    walk(
        message,
        0,
        &mut own_db,
        &mut other,
        &mut names,
        &mut aliases,
    );
    let db = match (own_db.as_str(), header) {
        ("", Some(h)) => h,
        ("", None) => "default".to_string(),
        (own, _) => own.to_string(),
    };
    if !valid(&db) || other.iter().any(|d: &String| !valid(d)) {
        return None;
    }
    other.retain(|d| *d != db);
    Some(Subject {
        db,
        other_dbs: sorted(other),
        names: sorted(names),
        aliases: sorted(aliases),
    })
}

fn sorted(mut list: Vec<String>) -> Vec<String> {
    list.retain(|v| !v.is_empty());
    list.sort();
    list.dedup();
    list
}

fn walk(
    message: &DynamicMessage,
    depth: usize,
    own_db: &mut String,
    other: &mut Vec<String>,
    names: &mut Vec<String>,
    aliases: &mut Vec<String>,
) {
    for field in message.descriptor().fields() {
        if !message.has_field(&field) {
            continue;
        }
        let value = message.get_field(&field);
        let strings: Vec<String> = match &*value {
            Value::String(s) => vec![s.clone()],
            Value::List(list) => list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        let name = field.name();
        match field.kind() {
            Kind::String if DB_FIELDS.contains(&name) && depth == 0 => {
                *own_db = strings.into_iter().next().unwrap_or_default()
            }
            Kind::String if DB_FIELDS.contains(&name) || OTHER_DB_FIELDS.contains(&name) => {
                other.extend(strings.into_iter().filter(|s| !s.is_empty()))
            }
            Kind::String if NAME_FIELDS.contains(&name) => names.extend(strings),
            Kind::String if name == "alias" => aliases.extend(strings),
            Kind::Message(_) if depth < 4 => match &*value {
                Value::Message(m) => walk(m, depth + 1, own_db, other, names, aliases),
                Value::List(list) => {
                    for m in list.iter().filter_map(Value::as_message) {
                        walk(m, depth + 1, own_db, other, names, aliases);
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
}

#[test]
fn the_subject_is_what_a_protobuf_decoder_reads_or_the_request_is_refused() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let cases: usize = std::env::var("SUBJECT_PROPERTY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let seed: u64 = std::env::var("SUBJECT_PROPERTY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_cafe_f00d_d00d);
    println!("seed {seed}, {cases} cases");
    let pool = pool();
    let methods: Vec<&str> = subject::listed_methods().collect();
    let descriptors: Vec<MessageDescriptor> = methods.iter().map(|m| input(&pool, m)).collect();
    let mut rng = Rng(seed.max(1));
    let (mut agreed, mut refused_both, mut refused_only_here, mut undecodable) = (0, 0, 0, 0);
    for case in 0..cases {
        let i = rng.below(methods.len());
        let body = random_message(&mut rng, &descriptors[i], 0);
        let headers: Vec<&str> = (0..rng.below(3)).map(|_| rng.pick(VALUES)).collect();
        let Ok(decoded) = DynamicMessage::decode(descriptors[i].clone(), body.as_slice()) else {
            undecodable += 1;
            continue;
        };
        let mut metadata = MetadataMap::new();
        for h in &headers {
            metadata.append("dbname", h.parse().unwrap());
        }
        let ours = subject::header_db(&metadata)
            .and_then(|h| subject::extract(methods[i], &body, h.as_deref()))
            .map(|s| Subject {
                other_dbs: sorted(s.other_dbs),
                names: sorted(s.names),
                aliases: sorted(s.aliases),
                db: s.db,
            });
        match (reference(&decoded, &headers), ours) {
            (Some(theirs), Ok(ours)) => {
                assert_eq!(
                    ours, theirs,
                    "case {case} (seed {seed}): {} {body:?} {headers:?}",
                    methods[i]
                );
                agreed += 1;
            }
            (None, Err(_)) => refused_both += 1,
            (Some(_), Err(e)) => {
                // Allowed (refusing is always safe), but only for what credstore refuses on
                // purpose: a listed field with another wire type, or an invalid name.
                let text = e.to_string();
                assert!(
                    text.contains("wire type")
                        || text.contains("invalid database name")
                        || text.contains("of one oneof are both set"),
                    "case {case}: refused for {text}"
                );
                refused_only_here += 1;
            }
            (None, Ok(s)) => panic!(
                "case {case} (seed {seed}): {} must be refused, credstore read {s:?} from {body:?} {headers:?}",
                methods[i]
            ),
        }
    }
    println!(
        "{agreed} agreed, {refused_both} refused by both, {refused_only_here} refused by credstore only, {undecodable} undecodable"
    );
    assert!(agreed > cases / 3, "too few comparable cases: {agreed}");
    assert!(
        refused_only_here < cases / 100,
        "{refused_only_here} refused by credstore only"
    );
}

//! Micro-benchmark of an authorization decision on the hot path: 100 roles × 100 grants each
//! (mixed single privileges, built-in and custom groups, `*` patterns), a user holding three
//! roles, checks that are allowed (found in the last role) and denied (every role scanned).
//! The target (issue "authorization the Milvus way") is ≤ 1 µs median. Also what the proxy
//! tier adds per forwarded call before that decision: reading the request's subject from its
//! bytes (a Query, a 1 MiB Insert, a HybridSearch with nested requests) and a cached alias
//! resolution (issue 16: ≤ 1 µs on a hit). Run: `cargo bench --bench rbac`.

use std::collections::HashMap;
use std::hint::black_box;

use credstore::rbac::{
    BuiltinGroups, Check, CustomGroups, Grant, ObjectType, Privilege, RolePolicy, allowed,
};
use criterion::{Criterion, criterion_group, criterion_main};

fn grants_of(role: usize) -> Vec<Grant> {
    let privileges = [
        "PrivilegeQuery",
        "PrivilegeSearch",
        "PrivilegeInsert",
        "PrivilegeGroupCollectionReadOnly",
        "PrivilegeGroupreaders",
    ];
    (0..100)
        .map(|i| Grant {
            object: ObjectType::Collection,
            db: if i % 10 == 0 {
                "*".into()
            } else {
                format!("db{}", i % 7)
            },
            name: format!("c{role}_{i}"),
            privilege: privileges[i % privileges.len()].into(),
        })
        .collect()
}

fn decision(c: &mut Criterion) {
    let builtin = BuiltinGroups::default();
    let mut custom = CustomGroups::new();
    custom.insert("readers".into(), vec!["Query".into(), "Search".into()]);
    let policies: HashMap<String, RolePolicy> = (0..100)
        .map(|r| {
            (
                format!("role{r}"),
                RolePolicy::build(&grants_of(r), &builtin, &custom),
            )
        })
        .collect();
    let user_roles = vec![
        "role3".to_string(),
        "role50".to_string(),
        "role99".to_string(),
    ];
    let lookup = |role: &str| policies.get(role);
    let query = Privilege::from_api("Query").expect("catalogued");
    let allowed_check = Check {
        object: ObjectType::Collection,
        privilege: query,
        db: "db3",
        name: "c99_3",
    };
    let denied_check = Check {
        name: "c42_3",
        ..allowed_check
    };
    assert!(
        allowed(&user_roles, lookup, &allowed_check),
        "the bench checks a real grant"
    );
    assert!(
        !allowed(&user_roles, lookup, &denied_check),
        "and a real denial"
    );
    c.bench_function("rbac decision allowed (3 of 100 roles x 100 grants)", |b| {
        b.iter(|| allowed(black_box(&user_roles), lookup, black_box(&allowed_check)))
    });
    c.bench_function("rbac decision denied (3 of 100 roles x 100 grants)", |b| {
        b.iter(|| allowed(black_box(&user_roles), lookup, black_box(&denied_check)))
    });
}

/// Length-delimited field `number` holding `bytes`.
fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

fn subject_extraction(c: &mut Criterion) {
    use credstore::proxy::subject::extract;
    let query = [
        field(2, b"sales"),
        field(3, b"orders"),
        field(4, b"id > 10"),
    ]
    .concat();
    let insert = [
        field(2, b"sales"),
        field(3, b"orders"),
        field(5, &vec![7u8; 1 << 20]),
    ]
    .concat();
    let sub = [field(2, b"sales"), field(3, b"orders"), field(4, b"id > 0")].concat();
    let hybrid = [
        field(2, b"sales"),
        field(3, b"orders"),
        field(5, &sub),
        field(5, &sub),
        field(5, &sub),
    ]
    .concat();
    for (name, method, body) in [
        ("subject of a Query", "Query", &query),
        ("subject of a 1 MiB Insert", "Insert", &insert),
        (
            "subject of a HybridSearch (3 sub-requests)",
            "HybridSearch",
            &hybrid,
        ),
    ] {
        let subject = extract(method, body, None).expect("a readable request");
        assert_eq!(
            (subject.db.as_str(), subject.names[0].as_str()),
            ("sales", "orders")
        );
        c.bench_function(name, |b| {
            b.iter(|| extract(black_box(method), black_box(body), black_box(Some("hdr"))))
        });
    }
}

fn alias_cache_hit(c: &mut Criterion) {
    use credstore::catalog::Catalog;
    use credstore::meta::{EmbeddedKv, Store};
    use credstore::rbac::Policies;
    let dir = tempfile::tempdir().expect("a temp dir");
    let kv = EmbeddedKv::open(&dir.path().join("bench.redb")).expect("an embedded store");
    let catalog = Catalog::new(Store::Embedded(kv), "by-dev/meta");
    let policies = Policies::new(catalog, BuiltinGroups::default(), 10_000, false);
    for i in 0..1000 {
        let token = policies.alias_token();
        policies.remember_alias(token, "sales", &format!("a{i}"), format!("c{i}").into());
    }
    assert_eq!(
        policies.cached_alias("sales", "a500").as_deref(),
        Some("c500")
    );
    c.bench_function("alias resolution, cache hit (1000 cached)", |b| {
        b.iter(|| policies.cached_alias(black_box("sales"), black_box("a500")))
    });
}

criterion_group!(benches, decision, subject_extraction, alias_cache_hit);
criterion_main!(benches);

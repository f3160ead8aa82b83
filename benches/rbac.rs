//! Micro-benchmark of an authorization decision on the hot path: 100 roles × 100 grants each
//! (mixed single privileges, built-in and custom groups, `*` patterns), a user holding three
//! roles, checks that are allowed (found in the last role) and denied (every role scanned).
//! The target (issue "authorization the Milvus way") is ≤ 1 µs median. Run:
//! `cargo bench --bench rbac`.

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

criterion_group!(benches, decision);
criterion_main!(benches);

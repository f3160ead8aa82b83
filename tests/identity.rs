//! One canonical name everywhere (issue 9.1), proven on real processes: a real etcd and two
//! `credstore serve` replicas A and B. A name in the `authorization` header with surrounding
//! white space of any kind (`" alice"`, `"\talice"`, `"alice\n"`, U+00A0, U+3000, …) is
//! refused, never trimmed to `alice` — so after an acknowledged password change or delete, no
//! spelling of the old password is accepted on any replica. The admin RPCs still trim names
//! as Milvus's `ValidateUsername` does, which names the same canonical user.

mod common;

use common::{Login, Probe};

use std::time::Duration;

use credstore::proto::common::Status;
use credstore::proto::milvus::{
    CreateCredentialRequest, DeleteCredentialRequest, UpdateCredentialRequest,
};

/// Spellings of `alice` that must never authenticate as (or instead of) alice.
const VARIANTS: [&str; 8] = [
    " alice",
    "alice ",
    "\talice",
    "alice\n",
    "\r\nalice",
    "\u{a0}alice",
    "alice\u{3000}",
    "\u{2003}alice\u{2003}",
];

/// The whole test may take this long; a hung RPC fails it instead of holding CI.
const LIMIT: Duration = Duration::from_secs(180);

fn assert_ok(reply: Result<tonic::Response<Status>, tonic::Status>, what: &str) {
    let status = reply.unwrap_or_else(|e| panic!("{what}: {e}")).into_inner();
    assert_eq!(status.code, 0, "{what}: {status:?}");
}

/// Every spelling of alice with `password`, on every probe: (probe, spelling, outcome) of each
/// that was accepted.
async fn accepted(probes: &[&Probe], password: &str) -> Vec<(&'static str, String, Login)> {
    let mut accepted = Vec::new();
    for probe in probes {
        for user in VARIANTS.iter().chain(["alice"].iter()) {
            let login = probe.login(user, password).await;
            if login != Login::Rejected {
                accepted.push((probe.name, format!("{user:?}"), login));
            }
        }
    }
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_an_old_password_survives_a_change_or_delete_on_any_replica() {
    tokio::time::timeout(LIMIT, scenario())
        .await
        .expect("identity scenario finished within its time limit");
}

async fn scenario() {
    let etcd = tokio::task::block_in_place(common::Etcd::start);
    let root = common::unique_root("identity");
    let yaml = common::config_yaml(&etcd.endpoint(), &root, "");
    let [a, b] = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let started = [0, 1].map(|_| scope.spawn(|| common::Replica::start(&yaml)));
            started.map(|handle| handle.join().expect("replica started"))
        })
    });
    let mut admin = common::client(&a.uri(), "root", "Milvus").await;
    let (pa, pb) = (Probe::connect("A", &a).await, Probe::connect("B", &b).await);
    let probes = [&pa, &pb];

    // Created through A with a padded name: trimmed to the canonical "alice", as Milvus does.
    assert_ok(
        admin
            .create_credential(CreateCredentialRequest {
                username: " alice ".into(),
                password: common::b64("old-pass-1"),
                ..Default::default()
            })
            .await,
        "create alice",
    );
    // The canonical spelling logs in (twice: a load, then a cache hit); every variant is
    // refused — before any change, so none of them is ever cached.
    for probe in probes {
        for _ in 0..2 {
            assert_eq!(probe.login("alice", "old-pass-1").await, Login::Accepted);
        }
    }
    let only_canonical = vec![
        ("A", "\"alice\"".to_string(), Login::Accepted),
        ("B", "\"alice\"".to_string(), Login::Accepted),
    ];
    assert_eq!(
        accepted(&probes, "old-pass-1").await,
        only_canonical,
        "only the canonical spelling is accepted"
    );
    // Again: an old build would now answer the variants from its cache.
    assert_eq!(
        accepted(&probes, "old-pass-1").await,
        only_canonical,
        "only the canonical spelling is accepted, cached or not"
    );

    // An acknowledged change through A, with a variant spelling in the request (trimmed).
    assert_ok(
        admin
            .update_credential(UpdateCredentialRequest {
                username: "alice\t".into(),
                old_password: common::b64("old-pass-1"),
                new_password: common::b64("new-pass-2"),
                ..Default::default()
            })
            .await,
        "change alice's password",
    );
    assert_eq!(
        accepted(&probes, "old-pass-1").await,
        vec![],
        "the old password in any spelling, on any replica, right after the acknowledgement"
    );
    for probe in probes {
        assert_eq!(probe.login("alice", "new-pass-2").await, Login::Accepted);
        for variant in VARIANTS {
            assert_eq!(
                probe.login(variant, "new-pass-2").await,
                Login::Rejected,
                "{variant:?} on {}",
                probe.name
            );
        }
    }

    // An acknowledged delete through B: nothing of alice is accepted anywhere.
    let mut admin_b = common::client(&b.uri(), "root", "Milvus").await;
    assert_ok(
        admin_b
            .delete_credential(DeleteCredentialRequest {
                username: "\u{a0}alice".into(),
                ..Default::default()
            })
            .await,
        "delete alice",
    );
    assert_eq!(accepted(&probes, "old-pass-1").await, vec![]);
    assert_eq!(
        accepted(&probes, "new-pass-2").await,
        vec![],
        "a deleted user in any spelling, on any replica"
    );
}

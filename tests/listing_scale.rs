//! Listing every user at scale: users written straight into etcd under Milvus's layout
//! (`by-dev/meta/root-coord/credential/users/NAME` holding `{"encrypted_password":"$2a$10$…"}`),
//! then listed through `Catalog::list_users` (EtcdKv's paged `list_keys`) and through
//! `MetaKv::list` (values too). Checks that exactly N users come back, and reports the time
//! and the peak resident memory of each listing.
//!
//! By default it runs a small case (a few thousand users, small pages) against its own etcd.
//! `scripts/bench_listing.sh` runs the real sizes with these variables, each of which must be
//! a valid value when set (a wrong value fails the test rather than silently shrinking it):
//!
//! - `CREDSTORE_LISTING_USERS`: how many users (default 3000);
//! - `CREDSTORE_LISTING_PAGE`: keys per etcd range request, or several comma-separated page
//!   sizes to measure in turn on the same data (default: the store's own default, or 256 for
//!   the small default case so that it spans many pages);
//! - `CREDSTORE_LISTING_ETCD`: `host:port` of an etcd to use instead of starting one (its
//!   `by-dev/` tree is rewritten unless it already holds exactly the N users this test writes).

mod common;

use std::time::{Duration, Instant};

use credstore::catalog::Catalog;
use credstore::meta::{EtcdKv, EtcdOptions, MetaKv, Store};
use etcd_client::{Client, DeleteOptions, GetOptions, Txn, TxnOp};

const USERS_VAR: &str = "CREDSTORE_LISTING_USERS";
const PAGE_VAR: &str = "CREDSTORE_LISTING_PAGE";
const ETCD_VAR: &str = "CREDSTORE_LISTING_ETCD";

const META_ROOT: &str = "by-dev/meta";
const USERS_PREFIX: &str = "by-dev/meta/root-coord/credential/users/";
/// A bcrypt hash as Milvus (Go's bcrypt, cost 10) writes it; every user gets the same one.
const VALUE: &str =
    r#"{"encrypted_password":"$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"}"#;
/// etcd's default `--max-txn-ops`.
const PUTS_PER_TXN: usize = 128;
const TXNS_IN_FLIGHT: usize = 8;

/// Positive numbers (comma-separated) from `name`, or `None` when unset; anything else is
/// a loud failure.
fn env_numbers(name: &str) -> Option<Vec<usize>> {
    let raw = std::env::var(name).ok()?;
    let numbers = raw
        .split(',')
        .map(|n| n.trim().parse::<usize>().ok().filter(|n| *n > 0))
        .collect::<Option<Vec<usize>>>();
    match numbers {
        Some(numbers) if !numbers.is_empty() => Some(numbers),
        _ => panic!("{name}={raw:?} is not a list of positive whole numbers; unset it or fix it"),
    }
}

fn user_name(i: usize) -> String {
    // Zero-padded, so key order is numeric order.
    format!("user{i:08}")
}

/// `VmRSS` or `VmHWM` of this process, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Resets `VmHWM` to the current RSS, so the next reading is the peak of what follows.
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting the peak RSS (clear_refs)");
}

async fn count(client: &mut Client) -> usize {
    let options = GetOptions::new().with_prefix().with_count_only();
    let response = client
        .get(USERS_PREFIX, Some(options))
        .await
        .expect("count");
    usize::try_from(response.count()).expect("a count")
}

/// Writes users 0..n under Milvus's layout, 128 puts per transaction, a few in flight.
async fn fill(client: &Client, n: usize) {
    let mut counting = client.clone();
    if count(&mut counting).await == n {
        let last = counting
            .get(format!("{USERS_PREFIX}{}", user_name(n - 1)), None)
            .await
            .expect("read the last user");
        if !last.kvs().is_empty() {
            eprintln!("etcd already holds the {n} users; not writing them again");
            return;
        }
    }
    counting
        .delete("by-dev/", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("clear by-dev/");
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    let batches: Vec<std::ops::Range<usize>> = (0..n)
        .step_by(PUTS_PER_TXN)
        .map(|from| from..(from + PUTS_PER_TXN).min(n))
        .collect();
    for batch in batches {
        if writers.len() >= TXNS_IN_FLIGHT {
            writers.join_next().await.expect("a writer").expect("write");
        }
        let mut client = client.clone();
        writers.spawn(async move {
            let puts: Vec<TxnOp> = batch
                .map(|i| TxnOp::put(format!("{USERS_PREFIX}{}", user_name(i)), VALUE, None))
                .collect();
            client
                .txn(Txn::new().and_then(puts))
                .await
                .expect("a txn of puts");
        });
    }
    while let Some(done) = writers.join_next().await {
        done.expect("write");
    }
    eprintln!(
        "wrote {n} users in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(count(&mut counting).await, n, "every user written");
}

async fn measure(endpoint: String, users: usize, pages: Vec<Option<usize>>) {
    let options = EtcdOptions {
        endpoints: vec![endpoint],
        request_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let kv = EtcdKv::connect(&options).await.expect("etcd connects");
    fill(&kv.client(), users).await;
    for page in pages {
        measure_listing(kv.clone(), users, page).await;
    }
}

async fn measure_listing(kv: EtcdKv, users: usize, page: Option<usize>) {
    let kv = match page {
        Some(page) => kv.with_page_size(page),
        None => kv,
    };
    let store = Store::Etcd(kv);
    let catalog = Catalog::new(store.clone(), META_ROOT);

    let rss_before = status_kib("VmRSS");
    reset_peak_rss();
    let started = Instant::now();
    let names = catalog.list_users().await.expect("list_users");
    let keys_time = started.elapsed();
    let keys_peak = status_kib("VmHWM");
    assert_eq!(names.len(), users, "list_users returns every user");
    for (i, name) in names.iter().enumerate() {
        assert_eq!(*name, user_name(i), "user {i} listed in key order");
    }
    drop(names);

    let rss_between = status_kib("VmRSS");
    reset_peak_rss();
    let started = Instant::now();
    let listed = store.list(USERS_PREFIX).await.expect("list with values");
    let values_time = started.elapsed();
    let values_peak = status_kib("VmHWM");
    assert_eq!(listed.value.len(), users, "list returns every user");
    assert!(listed.value.iter().all(|kv| kv.value == VALUE.as_bytes()));
    drop(listed);

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "LISTING users={users} page={} list_users_s={:.2} rss_before_mib={:.1} peak_rss_mib={:.1} \
         list_values_s={:.2} rss_before_values_mib={:.1} peak_rss_values_mib={:.1}",
        page.map_or_else(|| "default".to_string(), |p| p.to_string()),
        keys_time.as_secs_f64(),
        mib(rss_before),
        mib(keys_peak),
        values_time.as_secs_f64(),
        mib(rss_between),
        mib(values_peak),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_returns_every_user_in_milvus_layout() {
    let users = env_numbers(USERS_VAR).map(|n| match n[..] {
        [one] => one,
        _ => panic!("{USERS_VAR} takes one number"),
    });
    let pages: Vec<Option<usize>> = match (env_numbers(PAGE_VAR), users) {
        (Some(pages), _) => pages.into_iter().map(Some).collect(),
        (None, None) => vec![Some(256)],
        (None, Some(_)) => vec![None],
    };
    let users = users.unwrap_or(3000);
    let external = std::env::var(ETCD_VAR).ok();
    if let Some(endpoint) = &external {
        assert!(
            !endpoint.trim().is_empty() && endpoint.contains(':'),
            "{ETCD_VAR}={endpoint:?} is not host:port; unset it or fix it"
        );
    }
    // Filling a million keys takes minutes on a small machine; the bound grows with N.
    let limit = Duration::from_secs(120 + users as u64 / 500);
    let own = external.is_none().then(common::Etcd::start);
    let endpoint = external.unwrap_or_else(|| own.as_ref().expect("own etcd").endpoint());
    tokio::time::timeout(limit, measure(endpoint, users, pages))
        .await
        .expect("the listing benchmark finishes in time");
}

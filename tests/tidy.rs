//! Tidy checks that keep the code's promises to its readers: every Rust file says why it
//! exists in a `//!` comment; imports follow the layering of ARCHITECTURE.md's code map and
//! the shared DESIGN.md's "Layout" (`../shared/DESIGN.md`; the import matrix below: who may
//! import whom); only `meta` names the storage crates, only `password` the hashing crates,
//! only `coherence` opens watches, and the inner modules (`NO_GRPC`: catalog, password,
//! config, hash_pool, coherence, rbac, metrics, audit, import) do not speak gRPC; no test is
//! ignored or expected to panic without saying why; every test that uses the harness
//! (tests/common) has a time limit.

#[path = "common/report.rs"]
mod report;
use report::report;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The import matrix: each module of `src/` and the `crate::` modules it may import (its own
/// is always allowed). Rows run top to bottom in tier order — a row names only rows below it
/// (`the_matrix_rows_run_top_down`) — and ARCHITECTURE.md's code map lists the modules in
/// the same order (`the_code_map_follows_the_matrix`):
///
///   server → import → config → service / proxy / http → coherence → rbac → auth
///     → transport → bench → client → catalog / hash_pool → meta / password
///     → the leaves metrics, audit, proto, tls
///
/// `config` turns the file into each component's settings, so it sits above the components,
/// which never read it; `import` (`admin import`) reads the source's etcd.* through it.
/// `proto` (the wire types) is named by `service`, `proxy`, `server` and the client side only.
/// Every row names a module that exists (`every_matrix_row_is_a_module`); a new module needs
/// a row, and a new arrow an edit here, said in review.
const MATRIX: &[(&str, &[&str])] = &[
    (
        "server",
        &[
            "import",
            "config",
            "service",
            "proxy",
            "http",
            "coherence",
            "rbac",
            "auth",
            "transport",
            "catalog",
            "hash_pool",
            "meta",
            "password",
            "metrics",
            "audit",
            "proto",
            "tls",
        ],
    ),
    // `admin import`: reads a Milvus keyspace (meta's paged etcd reads, the catalog's
    // readers) and writes through the catalog; the source's etcd.* keys go through config.
    ("import", &["config", "catalog", "meta", "password"]),
    (
        "config",
        &[
            "proxy",
            "http",
            "coherence",
            "rbac",
            "auth",
            "transport",
            "catalog",
            "hash_pool",
            "meta",
            "password",
            "tls",
        ],
    ),
    (
        "service",
        &[
            "coherence",
            "rbac",
            "auth",
            "catalog",
            "hash_pool",
            "meta",
            "password",
            "metrics",
            "audit",
            "proto",
        ],
    ),
    (
        "proxy",
        &[
            "coherence",
            "rbac",
            "auth",
            "client",
            "catalog",
            "meta",
            "password",
            "metrics",
            "proto",
            "tls",
        ],
    ),
    (
        "http",
        &[
            "coherence",
            "rbac",
            "auth",
            "catalog",
            "hash_pool",
            "meta",
            "password",
            "metrics",
        ],
    ),
    (
        "coherence",
        &["rbac", "auth", "catalog", "hash_pool", "meta", "password"],
    ),
    ("rbac", &["auth", "catalog", "meta", "password"]),
    (
        "auth",
        &[
            "catalog",
            "hash_pool",
            "meta",
            "password",
            "metrics",
            "audit",
            // OIDC fetches the issuer's keys over TLS (`tls::connect_https`).
            "tls",
        ],
    ),
    // The gRPC port's connections (caps, handshake, HTTP/2 limits, idle): below `server`,
    // which hands it the request stack; above `tls` (handshakes) and `metrics` (counts).
    ("transport", &["metrics", "tls"]),
    // The client side speaks only the wire.
    ("bench", &["client", "password", "proto", "tls"]),
    ("client", &["proto", "tls"]),
    ("catalog", &["meta", "password"]),
    ("hash_pool", &["password"]),
    ("meta", &[]),
    ("password", &[]),
    // A leaf: the server hands it closures that read the other parts at scrape time.
    ("metrics", &[]),
    // A leaf: callers hand it names, addresses and classes, never the types they come from.
    ("audit", &[]),
    ("proto", &[]),
    // A leaf: TLS files to rustls configurations, server and client side.
    ("tls", &[]),
];

/// External crates only some files may name: (crate, the paths under `src/` that may).
const CRATE_OWNERS: &[(&str, &[&str])] = &[
    ("etcd_client", &["src/meta/"]),
    ("redb", &["src/meta/"]),
    ("argon2", &["src/password.rs"]),
    ("bcrypt", &["src/password.rs"]),
    ("prometheus_client", &["src/metrics.rs"]),
    ("rustls", &["src/tls.rs"]),
    ("tokio_rustls", &["src/tls.rs"]),
];

/// Modules below `service` that must not speak gRPC (`meta/etcd.rs` may name tonic's status
/// codes: etcd itself speaks gRPC; `auth`'s layer sits on tonic's HTTP types).
const NO_GRPC: &[&str] = &[
    "catalog",
    "password",
    "config",
    "hash_pool",
    "coherence",
    "rbac",
    "metrics",
    "audit",
    "import",
];

/// What bounds a test's time: tests/common's `watchdog`, `cluster_test` and `time_limit`, or
/// tokio's `timeout` (also behind a file's own `within` helper).
const TIME_LIMITS: &[&str] = &[
    "watchdog(",
    "cluster_test(",
    "time_limit(",
    "timeout(",
    "within(",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// (path relative to the crate root, text) of every `.rs` file under `dir`, if it exists.
fn sources(dir: &str) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !root.join(dir).exists() {
        return Vec::new();
    }
    let mut files = Vec::new();
    rust_files(&root.join(dir), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.strip_prefix(root).unwrap().display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

/// The lines of code of `text` (numbered from 1), comments removed: whole comment lines and
/// a trailing `// …` outside a string literal.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        if line.trim_start().starts_with("//") {
            return None;
        }
        let mut quotes = 0;
        let bytes = line.as_bytes();
        for (at, byte) in bytes.iter().enumerate() {
            match byte {
                b'"' if at == 0 || bytes[at - 1] != b'\\' => quotes += 1,
                b'/' if quotes % 2 == 0 && bytes.get(at + 1) == Some(&b'/') => {
                    return Some((i + 1, &line[..at]));
                }
                _ => {}
            }
        }
        Some((i + 1, line))
    })
}

fn is_ident(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

/// The identifier at the start of `text`.
fn leading_ident(text: &str) -> &str {
    let end = text
        .bytes()
        .position(|b| !is_ident(b))
        .unwrap_or(text.len());
    &text[..end]
}

/// The top-level modules a line names through `crate::`, grouped imports included.
fn crate_modules(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let bytes = line.as_bytes();
    for (at, _) in line.match_indices("crate::") {
        if at > 0 && (is_ident(bytes[at - 1]) || bytes[at - 1] == b'$') {
            continue; // `credstore::`, `$crate::`
        }
        let rest = &line[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::X, b::{Y, Z}}`: the first identifier of each top-level item.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        found.push(leading_ident(&group[i..]).to_string());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.push(leading_ident(rest).to_string());
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

/// Whether a line names the external crate `name` (`name::…`, `use name;`).
fn names_crate(line: &str, name: &str) -> bool {
    let bytes = line.as_bytes();
    line.match_indices(name).any(|(at, _)| {
        let before_ok = at == 0 || !(is_ident(bytes[at - 1]) || bytes[at - 1] == b':');
        let after = &line[at + name.len()..];
        before_ok && (after.starts_with("::") || after.trim_start().starts_with(';'))
    })
}

/// The module a file of `src/` belongs to (`src/meta/etcd.rs` → `meta`); None for the
/// crate roots.
fn module_of(path: &str) -> Option<&str> {
    let inner = path.strip_prefix("src/")?;
    match inner.split_once('/') {
        Some((dir, _)) => Some(dir),
        None if inner == "lib.rs" || inner == "main.rs" => None,
        None => inner.strip_suffix(".rs"),
    }
}

/// The modules of the crate: `src/NAME.rs` and `src/NAME/` (the crate roots excepted).
fn crate_modules_on_disk() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let is_module = path.is_dir() || path.extension().is_some_and(|e| e == "rs");
        if is_module && name != "lib" && name != "main" {
            modules.insert(name);
        }
    }
    modules
}

fn matrix() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    MATRIX
        .iter()
        .map(|(module, allowed)| (*module, allowed.iter().copied().collect()))
        .collect()
}

#[test]
fn every_rust_file_opens_with_a_module_comment() {
    let mut missing = Vec::new();
    for dir in ["src", "tests", "benches"] {
        for (path, text) in sources(dir) {
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default();
            if !first.starts_with("//!") {
                missing.push(format!("{path}: say what it owns in a `//!` comment first"));
            }
        }
    }
    report("Every .rs file opens with a `//!` comment:", &missing);
}

#[test]
fn the_import_matrix_has_no_cycle() {
    let matrix = matrix();
    let mut findings = Vec::new();
    for (module, allowed) in &matrix {
        for target in allowed {
            if !matrix.contains_key(target) {
                findings.push(format!(
                    "`{module}` may import `{target}`, which has no row"
                ));
            }
        }
    }
    // A path back from a module to itself would let imports go both ways.
    for start in matrix.keys() {
        let mut stack: Vec<Vec<&str>> = vec![vec![start]];
        while let Some(path) = stack.pop() {
            let last = path[path.len() - 1];
            for next in matrix.get(last).into_iter().flatten() {
                if next == start {
                    findings.push(format!("cycle: {} → {start}", path.join(" → ")));
                } else if !path.contains(next) {
                    let mut longer = path.clone();
                    longer.push(next);
                    stack.push(longer);
                }
            }
        }
    }
    findings.sort();
    findings.dedup();
    report(
        "The import matrix in tests/tidy.rs must be a layering:",
        &findings,
    );
}

#[test]
fn every_matrix_row_is_a_module() {
    let modules = crate_modules_on_disk();
    let mut findings = Vec::new();
    for (module, _) in MATRIX {
        if !modules.contains(*module) {
            findings.push(format!(
                "`{module}` has a row but no src/{module}.rs or src/{module}/: remove the row \
                 or name the module it meant"
            ));
        }
    }
    for module in &modules {
        if !MATRIX.iter().any(|(row, _)| row == module) {
            findings.push(format!("src/{module}: no row in the matrix"));
        }
    }
    report(
        "The import matrix in tests/tidy.rs has one row per module of src/, and no other:",
        &findings,
    );
}

#[test]
fn the_matrix_rows_run_top_down() {
    let position = |name: &str| MATRIX.iter().position(|(row, _)| *row == name);
    let mut findings = Vec::new();
    for (at, (module, allowed)) in MATRIX.iter().enumerate() {
        for target in *allowed {
            if position(target).is_some_and(|below| below <= at) {
                findings.push(format!(
                    "`{module}` may import `{target}`, whose row is above it: move the row"
                ));
            }
        }
    }
    report(
        "Rows of the import matrix are in tier order (each names only rows below it):",
        &findings,
    );
}

#[test]
fn the_code_map_follows_the_matrix() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let map = text
        .split("\n## Code map\n")
        .nth(1)
        .expect("ARCHITECTURE.md has a `## Code map` section");
    let map = map.split("\n## ").next().unwrap_or(map);
    // Table rows: | `module` | owns | must not |
    let listed: Vec<&str> = map
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .collect();
    let rows: Vec<&str> = MATRIX.iter().map(|(row, _)| *row).collect();
    assert_eq!(
        listed, rows,
        "ARCHITECTURE.md's code map lists the modules in the matrix's order (tests/tidy.rs)"
    );
}

#[test]
fn imports_follow_the_layering() {
    let matrix = matrix();
    let mut findings = Vec::new();
    for (path, text) in sources("src") {
        let Some(module) = module_of(&path) else {
            continue;
        };
        let Some(allowed) = matrix.get(module) else {
            findings.push(format!(
                "{path}: module `{module}` has no row in the import matrix (MATRIX in \
                 tests/tidy.rs): add one saying which modules it may import"
            ));
            continue;
        };
        for (line_no, line) in code_lines(&text) {
            for target in crate_modules(line) {
                if target == module || allowed.contains(target.as_str()) {
                    continue;
                }
                let why = if matrix.contains_key(target.as_str()) {
                    format!("`{module}` may import only {allowed:?}")
                } else {
                    format!("`{target}` is not a module in the matrix")
                };
                findings.push(format!(
                    "{path}:{line_no}: `{module}` imports crate::{target}; {why}"
                ));
            }
        }
    }
    report(
        "Imports must point down the layering of MATRIX in tests/tidy.rs (server → … → \
         catalog → meta/password):",
        &findings,
    );
}

#[test]
fn only_their_owners_name_storage_and_hashing_crates() {
    let mut findings = Vec::new();
    for (path, text) in sources("src") {
        for (krate, owners) in CRATE_OWNERS {
            if owners.iter().any(|owner| path.starts_with(owner)) {
                continue;
            }
            for (line_no, line) in code_lines(&text) {
                if names_crate(line, krate) {
                    findings.push(format!(
                        "{path}:{line_no}: names `{krate}`, which only {owners:?} may"
                    ));
                }
            }
        }
    }
    report(
        "Storage crates (etcd_client, redb) belong to src/meta/, hashing crates (argon2, \
         bcrypt) to src/password.rs:",
        &findings,
    );
}

#[test]
fn inner_modules_do_not_speak_grpc() {
    let mut findings = Vec::new();
    for (path, text) in sources("src") {
        if !module_of(&path).is_some_and(|m| NO_GRPC.contains(&m)) {
            continue;
        }
        // The catalog may encode protobuf values: Milvus stores privilege groups that way.
        let banned: &[&str] = match module_of(&path) {
            Some("catalog") => &["tonic"],
            _ => &["tonic", "prost"],
        };
        for (line_no, line) in code_lines(&text) {
            for &krate in banned {
                if names_crate(line, krate) {
                    findings.push(format!("{path}:{line_no}: names `{krate}`"));
                }
            }
        }
    }
    report(
        &format!("Nothing below `service` speaks gRPC; these modules must not: {NO_GRPC:?}"),
        &findings,
    );
}

#[test]
fn only_coherence_opens_watches() {
    let mut findings = Vec::new();
    for (path, text) in sources("src") {
        if matches!(module_of(&path), Some("coherence" | "meta")) {
            continue;
        }
        for (line_no, line) in code_lines(&text) {
            if line.contains(".watch(") {
                findings.push(format!("{path}:{line_no}: opens a watch"));
            }
        }
    }
    report(
        "Only coherence opens watches (meta implements them):",
        &findings,
    );
}

#[test]
fn ignored_and_should_panic_tests_say_why() {
    // Built at run time so this file does not match itself.
    let bare_ignore = format!("#[{}]", "ignore");
    let bare_should_panic = format!("#[{}]", "should_panic");
    let mut findings = Vec::new();
    for dir in ["src", "tests", "benches"] {
        for (path, text) in sources(dir) {
            for (line_no, line) in code_lines(&text) {
                let line = line.trim();
                if line.contains(&bare_ignore) {
                    findings.push(format!(
                        "{path}:{line_no}: write #[ignore = \"why\"] instead of {bare_ignore}"
                    ));
                }
                if line.contains(&bare_should_panic) {
                    findings.push(format!(
                        "{path}:{line_no}: write #[should_panic(expected = \"…\")] instead of \
                         {bare_should_panic}"
                    ));
                }
            }
        }
    }
    report(
        "An ignored test says why, a should_panic test says which panic:",
        &findings,
    );
}

#[test]
fn tests_that_use_the_harness_have_a_time_limit() {
    let mut findings = Vec::new();
    for (path, text) in sources("tests") {
        let uses_harness = text.lines().any(|l| l.trim() == "mod common;");
        if path.starts_with("tests/common/") || !uses_harness {
            continue;
        }
        let lines: Vec<&str> = text.lines().collect();
        for (at, line) in lines.iter().enumerate() {
            let attribute = line.trim_start();
            if !(attribute.starts_with("#[test]") || attribute.starts_with("#[tokio::test")) {
                continue;
            }
            let Some(signature) = (at + 1..lines.len()).find(|&i| {
                let l = lines[i].trim_start();
                l.starts_with("fn ") || l.starts_with("async fn ")
            }) else {
                continue;
            };
            // rustfmt closes a top-level function with `}` alone in the first column.
            let end = (signature..lines.len())
                .find(|&i| lines[i] == "}")
                .unwrap_or(lines.len());
            let bounded = lines[signature..end]
                .iter()
                .any(|l| TIME_LIMITS.iter().any(|limit| l.contains(limit)));
            if !bounded {
                findings.push(format!(
                    "{path}:{}: `{}` has no time limit",
                    signature + 1,
                    lines[signature].trim()
                ));
            }
        }
    }
    report(
        "Every test that uses tests/common has a time limit: start it with \
         `let _watchdog = common::watchdog(common::TEST_LIMIT);` (or `common::cluster_test` \
         if it starts a cluster, see tests/common/mod.rs):",
        &findings,
    );
}

#[test]
fn the_scanner_reads_imports_as_written() {
    assert_eq!(crate_modules("use crate::meta::{Store, Txn};"), ["meta"]);
    assert_eq!(
        crate_modules("use crate::{auth::X, catalog::{A, B}, password};"),
        ["auth", "catalog", "password"]
    );
    assert!(crate_modules("use credstore::meta::Store;").is_empty());
    assert!(crate_modules("$crate::meta::x!()").is_empty());
    assert!(names_crate(
        "use etcd_client::{Client, PutOptions};",
        "etcd_client"
    ));
    assert!(names_crate(
        "    Err(etcd_client::Error::X) => 1,",
        "etcd_client"
    ));
    assert!(!names_crate("join(\"credstore.redb\")", "redb"));
    assert!(!names_crate("let kv_redb::x = 1;", "redb"));
    let lines: Vec<_> = code_lines("// crate::x\nlet a = \"//\"; // crate::y\nb // c")
        .map(|(_, l)| l)
        .collect();
    assert_eq!(lines, ["let a = \"//\"; ", "b "]);
    assert_eq!(module_of("src/meta/etcd.rs"), Some("meta"));
    assert_eq!(module_of("src/server.rs"), Some("server"));
    assert_eq!(module_of("src/lib.rs"), None);
}

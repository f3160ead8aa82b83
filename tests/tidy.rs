//! Tidy checks that keep the code's promises to its readers: every Rust file says why it
//! exists in a `//!` comment, and the dependency rules of ARCHITECTURE.md hold (nothing
//! below `service` speaks gRPC or the generated proto; only `password` touches hashing
//! crates; only `coherence` opens watches).

use std::path::{Path, PathBuf};

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

fn sources(dir: &str) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join(dir), &mut files);
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

#[test]
fn every_rust_file_opens_with_a_module_comment() {
    let mut missing = Vec::new();
    for dir in ["src", "tests", "benches"] {
        if !Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).exists() {
            continue;
        }
        for (path, text) in sources(dir) {
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default();
            if !first.starts_with("//!") {
                missing.push(path);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "files without a //! comment: {missing:?}"
    );
}

fn assert_absent(files: &[&str], needles: &[&str]) {
    for (path, text) in sources("src") {
        if !files
            .iter()
            .any(|f| path.ends_with(f) || path.contains(&format!("/{f}/")))
        {
            continue;
        }
        for needle in needles {
            assert!(!text.contains(needle), "{path} must not use {needle}");
        }
    }
}

#[test]
fn inner_modules_do_not_speak_grpc() {
    // `meta/etcd.rs` may name tonic's status codes: etcd itself speaks gRPC.
    assert_absent(
        &["meta"],
        &[
            "crate::proto",
            "crate::service",
            "crate::auth",
            "crate::catalog",
        ],
    );
    assert_absent(
        &["catalog.rs", "password.rs", "config.rs"],
        &["crate::proto", "crate::service", "crate::auth", "tonic::"],
    );
    assert_absent(&["auth"], &["crate::proto", "crate::service"]);
    assert_absent(&["coherence.rs"], &["crate::proto", "crate::service"]);
}

#[test]
fn only_password_touches_hashing_crates() {
    for (path, text) in sources("src") {
        if path.ends_with("password.rs") {
            continue;
        }
        for needle in ["argon2::", "bcrypt::"] {
            assert!(
                !text.contains(needle),
                "{path} uses {needle}; hashing belongs in password.rs"
            );
        }
    }
}

#[test]
fn only_coherence_opens_watches() {
    for (path, text) in sources("src") {
        if path.ends_with("coherence.rs") || path.contains("meta") {
            continue;
        }
        assert!(
            !text.contains(".watch("),
            "{path} opens a watch; that belongs in coherence.rs"
        );
    }
}

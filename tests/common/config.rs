//! Test configs built as values: a `TestConfig` is a JSON document (which YAML accepts, so
//! `credstore serve --config` and `Config::load` read it as they read milvus.yaml), changed
//! by dotted milvus.yaml keys, never by splicing indented lines into a template.
//!
//! ```ignore
//! let yaml = common::TestConfig::on_etcd(&etcd.endpoint(), &root)
//!     .set("credstore.ackTimeoutMs", 18000)
//!     .yaml();
//! ```

use serde_json::{Map, Value, json};

/// A config document under construction.
#[derive(Clone, Debug, Default)]
pub struct TestConfig {
    document: Map<String, Value>,
}

impl TestConfig {
    /// Every key at its default (the embedded store, OWASP hashing) except two: no metrics
    /// and health port (`credstore.http.port: 0`; replicas running side by side would all
    /// want 9091) and no drain on SIGTERM (`credstore.shutdown.drainMs: 0`). Tests of those
    /// set them again.
    pub fn new() -> TestConfig {
        TestConfig::default()
            .set("credstore.http.port", 0)
            .set("credstore.shutdown.drainMs", 0)
    }

    /// The usual test config: etcd at `endpoints` under `root`, superUsers `root` and `foo`,
    /// no failed-authentication delay, no lockout or pacing of failed logins (coherence tests
    /// try old passwords hundreds of times from one address; tests/lockout.rs and
    /// tests/fair_hashing.rs switch it on), and fast (weak) hashing, which production refuses
    /// unless switched on explicitly.
    pub fn on_etcd(endpoints: &str, root: &str) -> TestConfig {
        TestConfig::new()
            .set("etcd.endpoints", endpoints)
            .set("etcd.rootPath", root)
            .set("common.security.superUsers", "root, foo")
            .set("credstore.failedAuthDelayMs", 0)
            .set("credstore.lockout.enabled", false)
            .weak_hashing()
    }

    /// Fast hashing: argon2id with 64 KiB and one pass (allowed by `allowWeakParameters`).
    pub fn weak_hashing(self) -> TestConfig {
        self.set("credstore.password.allowWeakParameters", true)
            .set(
                "credstore.password.argon2",
                json!({"memoryKiB": 64, "iterations": 1, "parallelism": 1}),
            )
    }

    /// Sets the dotted milvus.yaml `key` (`credstore.session.ttlSeconds`) to `value`,
    /// creating the sections on the way.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> TestConfig {
        let (sections, last) = split_key(key);
        let mut map = &mut self.document;
        for section in sections {
            let entry = map
                .entry(section.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            map = entry.as_object_mut().expect("made an object above");
        }
        map.insert(last.to_string(), value.into());
        self
    }

    /// Removes the dotted `key` (its default applies again).
    pub fn remove(mut self, key: &str) -> TestConfig {
        let (sections, last) = split_key(key);
        let mut map = &mut self.document;
        for section in sections {
            match map.get_mut(section).and_then(Value::as_object_mut) {
                Some(inner) => map = inner,
                None => return self,
            }
        }
        map.remove(last);
        self
    }

    /// Merges a YAML fragment into the document: sections merge, other values replace.
    pub fn merge_yaml(mut self, fragment: &str) -> TestConfig {
        let parsed: Value = serde_saphyr::from_str(fragment)
            .unwrap_or_else(|e| panic!("a test config fragment is not YAML ({e}):\n{fragment}"));
        match parsed {
            Value::Object(map) => merge(&mut self.document, map),
            Value::Null => {}
            other => panic!("a test config fragment must be a mapping, not {other}"),
        }
        self
    }

    /// The document as text for a config file: JSON, which YAML accepts.
    pub fn yaml(&self) -> String {
        serde_json::to_string_pretty(&self.document).expect("a JSON value serializes")
    }
}

fn split_key(key: &str) -> (Vec<&str>, &str) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts
        .pop()
        .filter(|l| !l.is_empty())
        .expect("a non-empty key");
    (parts, last)
}

fn merge(into: &mut Map<String, Value>, from: Map<String, Value>) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            // `credstore:` with nothing under it adds nothing.
            (_, Value::Null) => {}
            (Some(Value::Object(inner)), Value::Object(more)) => merge(inner, more),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// `TestConfig::on_etcd(endpoints, root)` with `extra`, YAML lines under `credstore:`
/// indented by two spaces (`"  ackTimeoutMs: 8000\n"`), merged in. Kept for the tests that
/// call it; new tests use `TestConfig` directly.
pub fn config_yaml(endpoints: &str, root: &str, extra: &str) -> String {
    TestConfig::on_etcd(endpoints, root)
        .merge_yaml(&format!("credstore:\n{extra}"))
        .yaml()
}

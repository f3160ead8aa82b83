//! Where values come from and how they merge: defaults ← a YAML file ← environment variables
//! named Milvus's way ← command-line flags, as one JSON tree deserialized into `Config` (with
//! the path of a bad key), then validated. Keys of Milvus's sections credstore does not use are
//! dropped here. The environment is a value passed in, never read.

use std::path::Path;

use serde_json::Value;

use super::*;

/// Values given on the command line; they beat the file and the environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub etcd_endpoints: Option<String>,
}

impl Config {
    /// Loads defaults ← `file` ← `env` (pairs of name and value) ← `overrides`, then validates.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let tree = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.into(),
                    source,
                })?;
                parse_yaml(&text, path)?
            }
            None => Value::Object(Default::default()),
        };
        Config::from_tree(tree, env, overrides)
    }

    /// Loads defaults ← `tree` (the file, parsed) ← `env` ← `overrides`, then validates.
    pub(super) fn from_tree(
        mut tree: Value,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let defaults = serde_json::to_value(Config::default()).expect("default config serializes");
        let mut ignored = Vec::new();
        ignore_foreign_keys(&mut tree, &defaults, "", &mut ignored);
        if !ignored.is_empty() {
            tracing::debug!(keys = ?ignored, "ignoring milvus.yaml keys credstore does not use");
        }
        let mut leaves = Vec::new();
        leaf_paths(&defaults, String::new(), &mut leaves);
        let env: std::collections::HashMap<String, String> = env.into_iter().collect();
        for (path, default) in &leaves {
            if let Some(raw) = env.get(&env_name(path)) {
                set_path(&mut tree, path, coerce(default, raw));
            }
        }
        if let Some(endpoints) = &overrides.etcd_endpoints {
            set_path(
                &mut tree,
                "etcd.endpoints",
                Value::String(endpoints.clone()),
            );
        }
        remove_nulls(&mut tree);
        let config: Config =
            serde_path_to_error::deserialize(tree).map_err(|e| ConfigError::Key {
                key: e.path().to_string(),
                reason: e.inner().to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }
}

/// The YAML text of the file at `path` as a JSON tree; an empty file is an empty map.
pub(super) fn parse_yaml(text: &str, path: &Path) -> Result<Value, ConfigError> {
    let value: Value = serde_saphyr::from_str(text).map_err(|source| ConfigError::Yaml {
        path: path.into(),
        source: Box::new(source),
    })?;
    match value {
        Value::Null => Ok(Value::Object(Default::default())),
        other => Ok(other),
    }
}

/// Drops the keys of `tree` that the defaults do not have — other Milvus components' settings
/// in a shared milvus.yaml — except inside `credstore:`, where an unknown key is a mistake the
/// deserializer then reports. Dropped key paths are pushed to `ignored`.
pub(super) fn ignore_foreign_keys(
    tree: &mut Value,
    known: &Value,
    prefix: &str,
    ignored: &mut Vec<String>,
) {
    let (Value::Object(map), Value::Object(known)) = (tree, known) else {
        return;
    };
    map.retain(|key, _| {
        let keep = known.contains_key(key) || (prefix.is_empty() && key == "credstore");
        if !keep {
            ignored.push(format!("{prefix}{key}"));
        }
        keep
    });
    for (key, child) in map.iter_mut() {
        if prefix.is_empty() && key == "credstore" {
            continue;
        }
        if let Some(known_child) = known.get(key) {
            ignore_foreign_keys(child, known_child, &format!("{prefix}{key}."), ignored);
        }
    }
}

/// A key written with no value (`credstore:` alone) means "the default", as in milvus.yaml.
pub(super) fn remove_nulls(value: &mut Value) {
    if let Value::Object(map) = value {
        map.retain(|_, v| !v.is_null());
        map.values_mut().for_each(remove_nulls);
    }
}

/// Every leaf key path of the defaults, e.g. `common.security.authorizationEnabled`.
pub(super) fn leaf_paths(value: &Value, prefix: String, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_paths(child, path, out);
            }
        }
        leaf => out.push((prefix, leaf.clone())),
    }
}

/// Milvus's environment name for a key path.
pub(super) fn env_name(path: &str) -> String {
    path.to_ascii_uppercase().replace('.', "_")
}

/// Reads an environment value as the type of the key's default (a bool stays a bool,
/// a password of digits stays a string).
pub(super) fn coerce(default: &Value, raw: &str) -> Value {
    let parsed = match default {
        Value::Bool(_) => raw.trim().parse::<bool>().ok().map(Value::Bool),
        Value::Number(_) => raw.trim().parse::<u64>().ok().map(Value::from),
        _ => None,
    };
    parsed.unwrap_or_else(|| Value::String(raw.to_string()))
}

pub(super) fn set_path(tree: &mut Value, path: &str, value: Value) {
    let mut node = tree;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if !node.is_object() {
            *node = Value::Object(Default::default());
        }
        let map = node.as_object_mut().expect("made an object above");
        if parts.peek().is_none() {
            map.insert(part.to_string(), value);
            return;
        }
        node = map
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
}

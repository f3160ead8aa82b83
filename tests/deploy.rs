//! The deployment files are correct by construction. No container engine runs where this
//! project is built and tested, so nothing ever starts `docker-compose.yml` or the
//! `Dockerfile`; instead this test reads them (and the `deploy/*.yaml` configs they use) and
//! checks that they ask credstore only for what the test suite runs:
//!
//! - every `credstore` subcommand and flag in a compose `command`, a compose or Dockerfile
//!   health check, or the Dockerfile's `ENTRYPOINT`/`CMD` is one a test passes to a real
//!   `credstore` process (its literal appears in `tests/**/*.rs` or `tests/compat/*.py`);
//! - every config key in a `deploy/*.yaml` file the compose file mounts or the Dockerfile
//!   copies is a key credstore reads (a typo in Milvus's sections would otherwise be ignored
//!   silently, as milvus.yaml's other keys are) and one a test sets: a dotted literal
//!   (`"credstore.upstream.token"`), a nested mapping literal (`{"etcd": {"rootPath": …}}`,
//!   `.set("credstore.password.argon2", json!({"memoryKiB": …}))`) or a YAML string in
//!   `tests/`, `tests/compat/*.py` or a `#[cfg(test)]` module of `src/`; the file loads with
//!   the environment and flags the compose file gives it;
//! - environment variables the compose file gives credstore are named by a test too;
//! - the topology holds together: every service has a health check and waits for the health
//!   of what it depends on, images are pinned, Milvus is reachable only through credstore,
//!   credstore's etcd and upstream are services of the file, and credstore's etcd root path
//!   differs from Milvus's own (credstore uses Milvus's key layout: on one root path each
//!   would read the other's users);
//! - the Dockerfile is multi-stage, runs as a non-root user and its final stage copies the
//!   binary and the deploy config only.
//!
//! Pure parsing: no process starts here.

#[path = "common/report.rs"]
mod report;
use report::report;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use credstore::config::{Config, Overrides};
use serde_json::Value;

/// The top-level sections of credstore's config; paths outside them are not config keys.
const SECTIONS: &[&str] = &["etcd", "proxy", "common", "credstore"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

fn yaml(relative: &str) -> Value {
    serde_saphyr::from_str(&read(relative))
        .unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"))
}

// ---------------------------------------------------------------------------------------
// What the test suite exercises
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Str(String),
    Punct(char),
    Word(String),
}

#[derive(Clone, Copy, PartialEq)]
enum Lang {
    Rust,
    Python,
}

/// The string literals, brackets, `:`, `,`, `!` and words of a Rust or Python source, with
/// comments dropped. Good enough for test code: escapes are decoded (`\n`, `\"`, `\\`,
/// `\t`); Rust's single quotes (chars, lifetimes) are skipped, Python's are strings.
fn tokens(text: &str, lang: Lang) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match (lang, c) {
            (Lang::Rust, '/') if next == Some('/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            (Lang::Rust, '/') if next == Some('*') => {
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            }
            (Lang::Python, '#') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            // Rust raw strings: r"…", r#"…"#, r##"…"##.
            (Lang::Rust, 'r') if matches!(next, Some('"' | '#')) && !word_before(&chars, i) => {
                let mut j = i + 1;
                let mut hashes = 0;
                while chars.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if chars.get(j) != Some(&'"') {
                    i += 1;
                    continue;
                }
                let start = j + 1;
                let mut end = start;
                loop {
                    if end >= chars.len() {
                        break;
                    }
                    if chars[end] == '"'
                        && (0..hashes).all(|h| chars.get(end + 1 + h) == Some(&'#'))
                    {
                        break;
                    }
                    end += 1;
                }
                out.push(Token::Str(
                    chars[start..end.min(chars.len())].iter().collect(),
                ));
                i = end + 1 + hashes;
            }
            (Lang::Rust, '\'') => {
                // A char literal ('x', '\n') or a lifetime ('a): skip it.
                if next == Some('\\') {
                    i += 2;
                    while i < chars.len() && chars[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                } else if chars.get(i + 2) == Some(&'\'') {
                    i += 3;
                } else {
                    i += 1;
                }
            }
            (_, '"') | (Lang::Python, '\'') => {
                let triple = lang == Lang::Python
                    && chars.get(i + 1) == Some(&c)
                    && chars.get(i + 2) == Some(&c);
                let mut j = if triple { i + 3 } else { i + 1 };
                let mut value = String::new();
                while j < chars.len() {
                    if chars[j] == '\\' {
                        match chars.get(j + 1) {
                            Some('n') => value.push('\n'),
                            Some('t') => value.push('\t'),
                            Some('\n') => {}
                            Some(&other) => value.push(other),
                            None => {}
                        }
                        j += 2;
                        continue;
                    }
                    let closes = if triple {
                        chars[j] == c
                            && chars.get(j + 1) == Some(&c)
                            && chars.get(j + 2) == Some(&c)
                    } else {
                        chars[j] == c
                    };
                    if closes {
                        break;
                    }
                    value.push(chars[j]);
                    j += 1;
                }
                out.push(Token::Str(value));
                i = j + if triple { 3 } else { 1 };
            }
            (_, '{' | '}' | '[' | ']' | '(' | ')' | ':' | ',' | '!') => {
                out.push(Token::Punct(c));
                i += 1;
            }
            (_, c) if c.is_alphanumeric() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                out.push(Token::Word(chars[start..i].iter().collect()));
            }
            _ => i += 1,
        }
    }
    out
}

/// Whether `chars[at]` continues a word (`for` in `br"…"` or an identifier ending in r).
fn word_before(chars: &[char], at: usize) -> bool {
    at > 0 && (chars[at - 1].is_alphanumeric() || chars[at - 1] == '_')
}

/// A dotted config key (`credstore.upstream.token`) split into its path, if `text` is one.
fn dotted_key(text: &str) -> Option<Vec<String>> {
    let parts: Vec<&str> = text.split('.').collect();
    let is_key = parts.len() >= 2
        && SECTIONS.contains(&parts[0])
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    is_key.then(|| parts.iter().map(|p| p.to_string()).collect())
}

/// Every leaf path of a YAML/JSON value (lists are leaves).
fn leaf_paths(value: &Value, prefix: &mut Vec<String>, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, inner) in map {
                prefix.push(key.clone());
                leaf_paths(inner, prefix, out);
                prefix.pop();
            }
        }
        _ if !prefix.is_empty() => {
            out.insert(prefix.join("."));
        }
        _ => {}
    }
}

/// The config key paths a source sets: dotted literals, nested mapping literals (JSON in
/// `json!`, Python dicts; a mapping opened right after `.set("a.b", json!(` continues
/// `a.b`), and YAML documents in string literals. Only paths under one of `SECTIONS`.
fn keys_in(text: &str, lang: Lang) -> BTreeSet<String> {
    enum Frame {
        Map {
            path: Vec<String>,
            key: Option<String>,
        },
        Other,
    }
    let tokens = tokens(text, lang);
    let mut found = BTreeSet::new();
    let mut emit = |path: Vec<String>| {
        if path.len() >= 2 && SECTIONS.contains(&path[0].as_str()) {
            found.insert(path.join("."));
        }
    };
    let mut stack: Vec<Frame> = Vec::new();
    for (at, token) in tokens.iter().enumerate() {
        match token {
            Token::Str(s) => {
                if let Some(path) = dotted_key(s) {
                    emit(path);
                }
                if s.contains('\n')
                    && s.contains(':')
                    && let Ok(value) = serde_saphyr::from_str::<Value>(s)
                {
                    let mut paths = BTreeSet::new();
                    leaf_paths(&value, &mut Vec::new(), &mut paths);
                    for path in paths {
                        emit(path.split('.').map(str::to_string).collect());
                    }
                }
                if tokens.get(at + 1) == Some(&Token::Punct(':'))
                    && let Some(Frame::Map { path, key }) = stack.last_mut()
                {
                    *key = Some(s.clone());
                    let mut full = path.clone();
                    full.push(s.clone());
                    emit(full);
                }
            }
            Token::Punct('{') => {
                let path = match stack.last() {
                    Some(Frame::Map {
                        path,
                        key: Some(key),
                    }) => {
                        let mut path = path.clone();
                        path.push(key.clone());
                        path
                    }
                    _ => json_prefix(&tokens[..at]).unwrap_or_default(),
                };
                stack.push(Frame::Map { path, key: None });
            }
            Token::Punct('[' | '(') => stack.push(Frame::Other),
            Token::Punct('}' | ']' | ')') => {
                stack.pop();
            }
            Token::Punct(',') => {
                if let Some(Frame::Map { key, .. }) = stack.last_mut() {
                    *key = None;
                }
            }
            _ => {}
        }
    }
    found
}

/// `"a.b", json!(` just before a `{`: the mapping is the value of the key `a.b`.
fn json_prefix(before: &[Token]) -> Option<Vec<String>> {
    match before {
        [
            ..,
            Token::Str(key),
            Token::Punct(','),
            Token::Word(json),
            Token::Punct('!'),
            Token::Punct('('),
        ] if json == "json" => dotted_key(key),
        _ => None,
    }
}

fn files_under(dir: &Path, extension: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "__pycache__") {
                continue;
            }
            files_under(&path, extension, out);
        } else if path.extension().is_some_and(|e| e == extension) {
            out.push(path);
        }
    }
}

/// (language, text) of the test suite's sources: `tests/**/*.rs` but this file,
/// `tests/**/*.py`, and, when `with_unit_tests`, the `#[cfg(test)]` part of each `src/` file.
fn test_sources(with_unit_tests: bool) -> Vec<(Lang, String)> {
    let mut rust = Vec::new();
    files_under(&root().join("tests"), "rs", &mut rust);
    rust.retain(|p| !p.ends_with("tests/deploy.rs"));
    let mut python = Vec::new();
    files_under(&root().join("tests"), "py", &mut python);
    let mut sources: Vec<(Lang, String)> = rust
        .iter()
        .map(|p| (Lang::Rust, std::fs::read_to_string(p).unwrap()))
        .chain(
            python
                .iter()
                .map(|p| (Lang::Python, std::fs::read_to_string(p).unwrap())),
        )
        .collect();
    if with_unit_tests {
        let mut src = Vec::new();
        files_under(&root().join("src"), "rs", &mut src);
        for path in src {
            let text = std::fs::read_to_string(&path).unwrap();
            // A module's unit tests: its `#[cfg(test)]` part, or all of a `tests.rs` file
            // (`#[cfg(test)] mod tests;` in its parent, as config/ and coherence/ do).
            let at = match path.ends_with("tests.rs") {
                true => Some(0),
                false => text.find("#[cfg(test)]"),
            };
            if let Some(at) = at {
                sources.push((Lang::Rust, text[at..].to_string()));
            }
        }
    }
    sources
}

/// Config keys the test suite sets (integration, compat and unit tests).
fn exercised_keys() -> BTreeSet<String> {
    test_sources(true)
        .iter()
        .flat_map(|(lang, text)| keys_in(text, *lang))
        .collect()
}

/// Every string literal of the integration and compat tests: the words they pass to real
/// `credstore` processes (`"serve"`, `"--upstream"`) and the environment they set.
fn test_literals() -> BTreeSet<String> {
    test_sources(false)
        .iter()
        .flat_map(|(lang, text)| tokens(text, *lang))
        .filter_map(|t| match t {
            Token::Str(s) => Some(s),
            _ => None,
        })
        .collect()
}

/// The leaf key paths of `Config` (every key credstore reads), from its serialized default.
fn known_keys() -> BTreeSet<String> {
    let value = serde_json::to_value(Config::default()).expect("Config serializes");
    let mut keys = BTreeSet::new();
    leaf_paths(&value, &mut Vec::new(), &mut keys);
    keys
}

/// Milvus's environment name of a key: upper-cased, dots to underscores.
fn env_name(key: &str) -> String {
    key.replace('.', "_").to_uppercase()
}

// ---------------------------------------------------------------------------------------
// The compose file
// ---------------------------------------------------------------------------------------

const COMPOSE: &str = "docker-compose.yml";

fn services(compose: &Value) -> &serde_json::Map<String, Value> {
    compose["services"]
        .as_object()
        .expect("docker-compose.yml has services")
}

/// A credstore service: built from this repository or running its image.
fn is_credstore(service: &Value) -> bool {
    service.get("build").is_some()
        || service["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("credstore"))
}

/// A list of strings (a compose exec-form command or health check), or None.
fn strings(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// `environment` as name → value, from either of compose's forms (mapping or `K=V` list).
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (item.to_string(), String::new()),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// `./deploy/x.yaml:/etc/… [:ro]` volumes: (repository path, path in the container).
fn mounted_files(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|volume| {
            let mut parts = volume.split(':');
            let source = parts.next()?.strip_prefix("./")?;
            let target = parts.next()?;
            Some((source.to_string(), target.to_string()))
        })
        .collect()
}

/// The value after `flag` in an argv (`--flag value` or `--flag=value`).
fn flag_value<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
    argv.iter().enumerate().find_map(|(at, arg)| {
        if arg == flag {
            argv.get(at + 1).map(String::as_str)
        } else {
            arg.strip_prefix(flag)?.strip_prefix('=')
        }
    })
}

/// `host` and `port` of `http://host:port[/…]` or `host:port`.
fn host_port(address: &str) -> Option<(String, u16)> {
    let rest = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .unwrap_or(address);
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?))
}

// ---------------------------------------------------------------------------------------
// The Dockerfile
// ---------------------------------------------------------------------------------------

/// One Dockerfile instruction: its keyword (upper case) and the rest of its line(s).
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

/// The instructions of a Dockerfile, continuation lines joined, comments dropped, split into
/// stages (each starting with its `FROM`).
fn dockerfile_stages(text: &str) -> Vec<Vec<Instruction>> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let instruction = Instruction {
            keyword: keyword.to_uppercase(),
            args: args.trim().to_string(),
        };
        if instruction.keyword == "FROM" || stages.is_empty() {
            stages.push(Vec::new());
        }
        stages.last_mut().unwrap().push(instruction);
    }
    stages
}

/// The exec form (`["a", "b"]`) of an instruction's arguments.
fn exec_form(args: &str, what: &str) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|_| panic!("Dockerfile {what} must use the exec form [\"…\"]: {args}"))
}

struct Image {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    healthcheck: Vec<String>,
    user: String,
    stages: usize,
    /// The final stage's COPY instructions, as written.
    copies: Vec<String>,
}

fn image() -> Image {
    let stages = dockerfile_stages(&read("Dockerfile"));
    let last = stages.last().expect("the Dockerfile has a stage");
    let find = |keyword: &str| last.iter().rev().find(|i| i.keyword == keyword);
    let healthcheck = find("HEALTHCHECK").expect("the Dockerfile has a HEALTHCHECK");
    let (_, command) = healthcheck
        .args
        .split_once("CMD ")
        .expect("HEALTHCHECK … CMD [\"…\"]");
    Image {
        entrypoint: exec_form(
            &find("ENTRYPOINT").expect("an ENTRYPOINT").args,
            "ENTRYPOINT",
        ),
        cmd: exec_form(&find("CMD").expect("a CMD").args, "CMD"),
        healthcheck: exec_form(command.trim(), "HEALTHCHECK CMD"),
        user: find("USER").map(|i| i.args.clone()).unwrap_or_default(),
        stages: stages.len(),
        copies: last
            .iter()
            .filter(|i| i.keyword == "COPY")
            .map(|i| i.args.clone())
            .collect(),
    }
}

/// An argv that runs credstore: its program is `credstore` (or a path to it).
fn runs_credstore(argv: &[String]) -> bool {
    argv.first()
        .is_some_and(|p| p == "credstore" || p.ends_with("/credstore"))
}

// ---------------------------------------------------------------------------------------
// What the deployment asks of credstore
// ---------------------------------------------------------------------------------------

/// Every credstore command line of the deployment, with where it comes from.
fn credstore_argvs() -> Vec<(String, Vec<String>)> {
    let compose = yaml(COMPOSE);
    let image = image();
    let mut argvs = vec![
        (
            "Dockerfile ENTRYPOINT + CMD".to_string(),
            [image.entrypoint.clone(), image.cmd.clone()].concat(),
        ),
        ("Dockerfile HEALTHCHECK".to_string(), image.healthcheck),
    ];
    for (name, service) in services(&compose) {
        if !is_credstore(service) {
            continue;
        }
        let entrypoint = match service.get("entrypoint") {
            Some(value) => strings(value).expect("an exec-form entrypoint"),
            None => image.entrypoint.clone(),
        };
        let command = strings(&service["command"])
            .unwrap_or_else(|| panic!("{COMPOSE}: {name}'s command must be a list (exec form)"));
        argvs.push((
            format!("{COMPOSE} {name} command"),
            [entrypoint, command].concat(),
        ));
        let test = strings(&service["healthcheck"]["test"]).unwrap_or_default();
        if let Some(argv) = test.strip_prefix(&["CMD".to_string()]) {
            argvs.push((format!("{COMPOSE} {name} healthcheck"), argv.to_vec()));
        }
    }
    argvs
}

/// The deploy configs the deployment loads: (repository path, path in the container).
fn deploy_configs() -> BTreeSet<(String, String)> {
    let compose = yaml(COMPOSE);
    let mut configs = BTreeSet::new();
    for service in services(&compose).values().filter(|s| is_credstore(s)) {
        configs.extend(mounted_files(service));
    }
    for copy in image().copies {
        let words: Vec<&str> = copy.split_whitespace().collect();
        if let [.., source, target] = words.as_slice()
            && source.starts_with("deploy/")
        {
            configs.insert((source.to_string(), target.to_string()));
        }
    }
    configs
}

#[test]
fn credstore_flags_of_the_deployment_are_ones_the_tests_pass() {
    let literals = test_literals();
    let mut findings = Vec::new();
    let argvs = credstore_argvs();
    assert!(
        argvs.len() >= 4,
        "found too few credstore commands: {argvs:?}"
    );
    for (origin, argv) in &argvs {
        if !runs_credstore(argv) {
            findings.push(format!("{origin}: {argv:?} does not run credstore"));
            continue;
        }
        let mut args = argv[1..].iter();
        // The subcommand words before the first flag (`serve`, `health`, `admin reset-root`).
        let words: Vec<&String> = args.by_ref().take_while(|a| !a.starts_with("--")).collect();
        if words.is_empty() {
            findings.push(format!("{origin}: {argv:?} names no subcommand"));
        }
        for word in words {
            if !literals.contains(word) {
                findings.push(format!(
                    "{origin}: subcommand `{word}` is never run by a test"
                ));
            }
        }
        for arg in &argv[1..] {
            let Some(flag) = arg
                .starts_with("--")
                .then(|| arg.split('=').next().unwrap())
            else {
                continue;
            };
            if !literals.contains(flag) {
                findings.push(format!(
                    "{origin}: flag `{flag}` is never passed to credstore by a test"
                ));
            }
        }
    }
    report(
        "Every credstore subcommand and flag the deployment uses must be one a test passes to \
         a real credstore process (tests/**/*.rs, tests/compat/*.py); add such a test first:",
        &findings,
    );
}

#[test]
fn deploy_config_keys_are_read_by_credstore_and_set_by_the_tests() {
    let exercised = exercised_keys();
    let known = known_keys();
    let configs = deploy_configs();
    assert!(
        !configs.is_empty(),
        "neither {COMPOSE} nor the Dockerfile loads a deploy/*.yaml"
    );
    let mut findings = Vec::new();
    for (file, _) in &configs {
        let mut keys = BTreeSet::new();
        leaf_paths(&yaml(file), &mut Vec::new(), &mut keys);
        for key in keys {
            if !known.contains(&key) {
                findings.push(format!("{file}: `{key}` is not a key credstore reads"));
            } else if !exercised.contains(&key) {
                findings.push(format!("{file}: `{key}` is set by no test"));
            }
        }
    }
    let compose = yaml(COMPOSE);
    let literals = test_literals();
    let env_names: BTreeMap<String, &String> = known.iter().map(|k| (env_name(k), k)).collect();
    for (name, service) in services(&compose) {
        if !is_credstore(service) {
            continue;
        }
        for variable in environment(service).keys() {
            if variable == "RUST_LOG" {
                continue;
            }
            match env_names.get(variable) {
                None => findings.push(format!(
                    "{COMPOSE} {name}: environment `{variable}` names no credstore key"
                )),
                Some(_) if !literals.contains(variable) => findings.push(format!(
                    "{COMPOSE} {name}: environment `{variable}` is set by no test"
                )),
                Some(_) => {}
            }
        }
    }
    report(
        "Every config key and environment variable the deployment gives credstore must be one \
         credstore reads and a test sets (see this file's opening comment); add such a test \
         first:",
        &findings,
    );
}

#[test]
fn each_credstore_service_loads_its_config_with_its_environment_and_flags() {
    let compose = yaml(COMPOSE);
    let all = services(&compose);
    let mut replicas = 0;
    for (name, service) in all {
        if !is_credstore(service) {
            continue;
        }
        replicas += 1;
        let command = strings(&service["command"]).expect("an exec-form command");
        let mounts = mounted_files(service);
        let config_path = flag_value(&command, "--config")
            .unwrap_or_else(|| panic!("{name}: `serve --config FILE`"));
        let (file, _) = mounts
            .iter()
            .find(|(_, target)| target == config_path)
            .unwrap_or_else(|| panic!("{name}: --config {config_path} is not a mounted file"));
        let mut config = Config::load(
            Some(&root().join(file)),
            environment(service),
            &Overrides {
                etcd_endpoints: flag_value(&command, "--etcd-endpoints").map(str::to_string),
            },
        )
        .unwrap_or_else(|e| panic!("{name}: {file} does not load: {e}"));
        if let Some(uri) = flag_value(&command, "--upstream") {
            config.credstore.upstream.uri = uri.to_string();
        }

        // Its etcd is a service of this file; so is its upstream, which it presents a token to.
        let etcd = &config.etcd.endpoints.0;
        assert!(!etcd.is_empty(), "{name}: the replicas must share an etcd");
        for endpoint in etcd {
            let (host, _) = host_port(endpoint).expect("host:port");
            assert!(
                all.contains_key(&host),
                "{name}: etcd `{host}` is no service"
            );
        }
        let upstream = &config.credstore.upstream;
        let (host, port) = host_port(&upstream.uri)
            .unwrap_or_else(|| panic!("{name}: credstore.upstream.uri / --upstream is not set"));
        let milvus = all
            .get(&host)
            .unwrap_or_else(|| panic!("{name}: upstream `{host}` is no service"));
        assert_eq!(port, 19530, "{name}: Milvus's gRPC port");
        assert!(
            upstream.token.expose().contains(':'),
            "{name}: Milvus runs with authorization: credstore.upstream.token is user:password"
        );

        // On Milvus's etcd, never on Milvus's root path: both use Milvus's key layout.
        let milvus_env = environment(milvus);
        assert_eq!(
            milvus_env
                .get("COMMON_SECURITY_AUTHORIZATIONENABLED")
                .map(String::as_str),
            Some("true"),
            "{name}: the upstream Milvus must check credentials (credstore presents a token)"
        );
        let milvus_root = milvus_env
            .get("ETCD_ROOTPATH")
            .map(String::as_str)
            .unwrap_or("by-dev");
        let milvus_etcd = milvus_env
            .get("ETCD_ENDPOINTS")
            .cloned()
            .unwrap_or_default();
        if etcd
            .iter()
            .any(|e| milvus_etcd.split(',').any(|m| m.trim() == e))
        {
            assert_ne!(
                config.etcd.root_path, milvus_root,
                "{name}: on Milvus's etcd, credstore needs its own etcd.rootPath"
            );
        }

        // Its health check and its published port are the port it listens on.
        let listen = flag_value(&command, "--listen").map(str::to_string);
        let listen_port = match &listen {
            Some(address) => host_port(address).expect("--listen host:port").1,
            None => config.proxy.port,
        };
        let test = strings(&service["healthcheck"]["test"]).unwrap_or_default();
        let uri = flag_value(&test, "--uri").unwrap_or("http://127.0.0.1:19530");
        assert_eq!(
            host_port(uri).map(|(_, p)| p),
            Some(listen_port),
            "{name}: the health check asks the port it listens on"
        );
        for published in service["ports"].as_array().into_iter().flatten() {
            let text = match published {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let target = text.rsplit(':').next().unwrap_or_default();
            assert_eq!(
                target.parse::<u16>().ok(),
                Some(listen_port),
                "{name}: publishes {text}"
            );
        }
    }
    assert!(
        replicas >= 2,
        "the proxy tier is at least two credstore replicas"
    );
}

#[test]
fn every_service_is_pinned_health_checked_and_waits_for_health() {
    let compose = yaml(COMPOSE);
    let all = services(&compose);
    let mut findings = Vec::new();
    for (name, service) in all {
        let image = service["image"].as_str().unwrap_or_default();
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
        if !is_credstore(service) && (tag.is_empty() || tag == "latest" || tag.contains('/')) {
            findings.push(format!(
                "{name}: image `{image}` is not pinned to a version"
            ));
        }
        match strings(&service["healthcheck"]["test"]) {
            Some(test) if test.first().is_some_and(|t| t == "CMD" || t == "CMD-SHELL") => {}
            _ => findings.push(format!("{name}: no health check")),
        }
        if let Some(depends) = service["depends_on"].as_object() {
            for (on, condition) in depends {
                if !all.contains_key(on) {
                    findings.push(format!("{name}: depends on `{on}`, no service"));
                }
                if condition["condition"] != "service_healthy" {
                    findings.push(format!("{name}: waits for `{on}` without service_healthy"));
                }
            }
        } else if service.get("depends_on").is_some() {
            findings.push(format!("{name}: depends_on as a list waits for no health"));
        }
        // Milvus and its storage are reached only through credstore.
        if !is_credstore(service) && service.get("ports").is_some() {
            findings.push(format!("{name}: publishes ports; only credstore may"));
        }
    }
    for required in ["etcd", "minio", "milvus"] {
        if !all.contains_key(required) {
            findings.push(format!("no `{required}` service"));
        }
    }
    report(
        "The compose file is the deployment an operator copies:",
        &findings,
    );
}

#[test]
fn the_image_is_multi_stage_non_root_and_holds_the_binary_and_its_config() {
    let image = image();
    assert!(image.stages >= 2, "the Dockerfile builds in its own stage");
    assert!(
        !image.user.is_empty()
            && !["root", "0"].contains(&image.user.split(':').next().unwrap_or_default()),
        "the final stage runs as a non-root USER, not `{}`",
        image.user
    );
    assert!(runs_credstore(&image.entrypoint), "ENTRYPOINT is credstore");
    for copy in &image.copies {
        let words: Vec<&str> = copy.split_whitespace().collect();
        let from_builder = words.iter().any(|w| w.starts_with("--from="));
        let ok = match words.as_slice() {
            [.., source, _] if from_builder => source.ends_with("/credstore"),
            [.., source, _] => source.starts_with("deploy/") && source.ends_with(".yaml"),
            _ => false,
        };
        assert!(
            ok,
            "the final stage copies the binary and deploy/*.yaml only, not `COPY {copy}`"
        );
    }
}

#[test]
fn the_scanners_read_what_tests_write() {
    let rust = r#"
        TestConfig::new()
            .set("credstore.upstream.token", "root:Milvus") // "etcd.commented.out"
            .set("credstore.password.argon2", json!({"memoryKiB": 64, "x": {"y": 1}}));
        let yaml = "credstore:\n  listenHost: 127.0.0.1\n";
        let c = 'c'; let f = |x: &'static str| x;
    "#;
    let keys = keys_in(rust, Lang::Rust);
    let expected = [
        "credstore.listenHost",
        "credstore.password.argon2",
        "credstore.password.argon2.memoryKiB",
        "credstore.password.argon2.x",
        "credstore.password.argon2.x.y",
        "credstore.upstream.token",
    ];
    assert_eq!(keys, expected.iter().map(|s| s.to_string()).collect());
    let python = "return {\n  'etcd': {\"rootPath\": root, 'use': {'embed': False}},  # 'etcd.no'\n  \"common\": {\"security\": security},\n}\nx = f\"{a}\"\n";
    let keys = keys_in(python, Lang::Python);
    let expected = [
        "common.security",
        "etcd.rootPath",
        "etcd.use",
        "etcd.use.embed",
    ];
    assert_eq!(keys, expected.iter().map(|s| s.to_string()).collect());

    // The whole suite: keys the harnesses set in every test, and the proxy tier's.
    let exercised = exercised_keys();
    for key in [
        "etcd.endpoints",
        "etcd.rootPath",
        "etcd.metaSubPath",
        "credstore.password.argon2.memoryKiB",
        "credstore.upstream.uri",
        "credstore.upstream.token",
    ] {
        assert!(exercised.contains(key), "{key} not found in {exercised:?}");
    }
    assert!(!exercised.contains("etcd.data.dirr"));
    assert!(known_keys().contains("credstore.upstream.token"));
    assert!(!known_keys().contains("credstore.upstream"));
    let literals = test_literals();
    for word in [
        "serve",
        "--config",
        "--listen",
        "--upstream",
        "health",
        "--uri",
    ] {
        assert!(literals.contains(word), "{word}");
    }
}

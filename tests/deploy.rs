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
//! Everything is read with maintained parsers: YAML with serde-saphyr, Rust sources with
//! proc-macro2 (string literals decoded by litrs), Python sources with CPython's `tokenize`
//! (one `python3` process: `.venv`'s, else the PATH's). The Dockerfile is the exception (no
//! maintained, lean parser reads HEALTHCHECK): the rule is narrowed instead, the instructions
//! read here (FROM, USER, COPY, ENTRYPOINT, CMD, HEALTHCHECK) must each sit on one line, the
//! commands in exec form, and a test fails otherwise. No credstore or container starts here.

#[path = "common/report.rs"]
mod report;
use report::report;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::OnceLock;

use credstore::config::{Config, Overrides};
use proc_macro2::{Delimiter, TokenStream, TokenTree};
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

#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
enum Token {
    Str(String),
    Punct(char),
    Word(String),
}

/// A Rust source lexed by proc-macro2: its string literals (decoded by litrs), brackets,
/// `:`, `,`, `!` and words. Comments are dropped, doc comments too (proc-macro2 turns them
/// into `#[doc = "…"]`). `unit_tests` is where the first `#[cfg(test)]` attribute starts.
struct RustTokens {
    tokens: Vec<Token>,
    unit_tests: Option<usize>,
}

fn rust_tokens(text: &str, origin: &str) -> RustTokens {
    let stream = proc_macro2::TokenStream::from_str(text)
        .unwrap_or_else(|e| panic!("{origin} does not lex as Rust: {e}"));
    let mut out = RustTokens {
        tokens: Vec::new(),
        unit_tests: None,
    };
    flatten(stream, &mut out);
    out
}

fn flatten(stream: TokenStream, out: &mut RustTokens) {
    let trees: Vec<TokenTree> = stream.into_iter().collect();
    let mut at = 0;
    while at < trees.len() {
        // An attribute, `#[…]` or `#![…]`: doc comments are skipped, `cfg(test)` noted.
        if let TokenTree::Punct(hash) = &trees[at]
            && hash.as_char() == '#'
        {
            let bang = matches!(trees.get(at + 1), Some(TokenTree::Punct(p)) if p.as_char() == '!');
            if let Some(TokenTree::Group(group)) = trees.get(at + 1 + usize::from(bang))
                && group.delimiter() == Delimiter::Bracket
            {
                let inner: Vec<TokenTree> = group.stream().into_iter().collect();
                match inner.as_slice() {
                    [TokenTree::Ident(doc), ..] if doc == "doc" => {
                        at += 2 + usize::from(bang);
                        continue;
                    }
                    [TokenTree::Ident(cfg), TokenTree::Group(test)]
                        if cfg == "cfg" && test.stream().to_string() == "test" =>
                    {
                        out.unit_tests.get_or_insert(out.tokens.len());
                    }
                    _ => {}
                }
            }
        }
        match &trees[at] {
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    Delimiter::Parenthesis => (Some('('), Some(')')),
                    Delimiter::Brace => (Some('{'), Some('}')),
                    Delimiter::Bracket => (Some('['), Some(']')),
                    Delimiter::None => (None, None),
                };
                out.tokens.extend(open.map(Token::Punct));
                flatten(group.stream(), out);
                out.tokens.extend(close.map(Token::Punct));
            }
            TokenTree::Ident(ident) => out.tokens.push(Token::Word(ident.to_string())),
            TokenTree::Punct(punct) if matches!(punct.as_char(), ':' | ',' | '!') => {
                out.tokens.push(Token::Punct(punct.as_char()));
            }
            TokenTree::Punct(_) => {}
            TokenTree::Literal(literal) => {
                if let Ok(string) = litrs::StringLit::try_from(literal) {
                    out.tokens.push(Token::Str(string.into_value()));
                }
            }
        }
        at += 1;
    }
}

/// Python sources lexed by CPython's `tokenize`: string literals decoded by
/// `ast.literal_eval` (f-strings and bytes skipped), names, and the brackets, `:` and `,` of
/// `OP` tokens. A JSON list of sources in, a list of `Token` lists out.
const PYTHON_TOKENIZER: &str = r#"
import ast, io, json, re, sys, tokenize
out = []
for source in json.load(sys.stdin):
    tokens, fstring = [], 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        kind, text = tokenize.tok_name[tok.type], tok.string
        fstring += {"FSTRING_START": 1, "FSTRING_END": -1}.get(kind, 0)
        if fstring or kind == "FSTRING_END":
            continue
        if kind == "STRING" and "f" not in re.match("[a-zA-Z]*", text).group().lower():
            value = ast.literal_eval(text)
            if isinstance(value, str):
                tokens.append({"Str": value})
        elif kind == "NAME":
            tokens.append({"Word": text})
        elif kind == "OP" and text in "{}[]():,":
            tokens.append({"Punct": text})
    out.append(tokens)
json.dump(out, sys.stdout)
"#;

/// The tokens of each Python source, from one `python` process: the project's `.venv`
/// (scripts/setup.sh makes it) or `python3` on the PATH.
fn python_tokens(sources: &[String]) -> Vec<Vec<Token>> {
    let venv = root().join(".venv/bin/python");
    let python = if venv.exists() {
        venv
    } else {
        "python3".into()
    };
    let mut child = Command::new(&python)
        .args(["-c", PYTHON_TOKENIZER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; this test lexes tests/compat/*.py with CPython's tokenize \
                 (run scripts/setup.sh, or install python3)",
                python.display()
            )
        });
    // The script reads all of its input before it writes: no deadlock on the pipes.
    let input = serde_json::to_vec(sources).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{} could not tokenize the Python sources: {}",
        python.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the tokenizer prints JSON tokens")
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
fn keys_in(tokens: &[Token]) -> BTreeSet<String> {
    enum Frame {
        Map {
            path: Vec<String>,
            key: Option<String>,
        },
        Other,
    }
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

/// The test suite's sources, lexed once: `tests/**/*.rs` but this file, `tests/**/*.py`,
/// and the unit tests of `src/` (each file's part from its first `#[cfg(test)]` on).
struct Suite {
    integration: Vec<Vec<Token>>,
    unit: Vec<Vec<Token>>,
}

fn suite() -> &'static Suite {
    static SUITE: OnceLock<Suite> = OnceLock::new();
    SUITE.get_or_init(|| {
        let read = |path: &Path| std::fs::read_to_string(path).unwrap();
        let mut rust = Vec::new();
        files_under(&root().join("tests"), "rs", &mut rust);
        rust.retain(|p| !p.ends_with("tests/deploy.rs"));
        let mut python = Vec::new();
        files_under(&root().join("tests"), "py", &mut python);
        let mut integration: Vec<Vec<Token>> = rust
            .iter()
            .map(|p| rust_tokens(&read(p), &p.display().to_string()).tokens)
            .collect();
        integration.extend(python_tokens(
            &python.iter().map(|p| read(p)).collect::<Vec<_>>(),
        ));
        let mut src = Vec::new();
        files_under(&root().join("src"), "rs", &mut src);
        let unit = src
            .iter()
            .filter_map(|path| {
                let RustTokens { tokens, unit_tests } =
                    rust_tokens(&read(path), &path.display().to_string());
                // All of a `tests.rs` file (`#[cfg(test)] mod tests;` in its parent, as
                // config/ and coherence/ do).
                let at = if path.ends_with("tests.rs") {
                    Some(0)
                } else {
                    unit_tests
                };
                at.map(|at| tokens[at..].to_vec())
            })
            .collect();
        Suite { integration, unit }
    })
}

/// Config keys the test suite sets (integration, compat and unit tests).
fn exercised_keys() -> BTreeSet<String> {
    let suite = suite();
    suite
        .integration
        .iter()
        .chain(&suite.unit)
        .flat_map(|tokens| keys_in(tokens))
        .collect()
}

/// Every string literal of the integration and compat tests: the words they pass to real
/// `credstore` processes (`"serve"`, `"--upstream"`) and the environment they set.
fn test_literals() -> BTreeSet<String> {
    suite()
        .integration
        .iter()
        .flatten()
        .filter_map(|t| match t {
            Token::Str(s) => Some(s.clone()),
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

/// The instructions these tests read. The Dockerfile is not parsed as a whole (no maintained,
/// lean parser crate reads HEALTHCHECK): each of these must sit on one line (a trailing `\`
/// fails the test, so nothing hides on a continuation line), and ENTRYPOINT, CMD and
/// HEALTHCHECK's CMD are in exec form (a JSON array). Other instructions are not read.
const READ: &[&str] = &["FROM", "USER", "COPY", "ENTRYPOINT", "CMD", "HEALTHCHECK"];

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
    image_of(&read("Dockerfile")).unwrap_or_else(|e| panic!("Dockerfile: {e}"))
}

fn image_of(text: &str) -> Result<Image, String> {
    // Per stage (from its FROM), the read instructions: (keyword, arguments).
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for line in text.lines().map(str::trim) {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let keyword = keyword.to_ascii_uppercase();
        if !READ.contains(&keyword.as_str()) {
            continue;
        }
        if line.ends_with('\\') {
            return Err(format!("write {keyword} on one line: `{line}`"));
        }
        if keyword == "FROM" {
            stages.push(Vec::new());
        }
        let stage = stages.last_mut().ok_or(format!("{keyword} before FROM"))?;
        stage.push((keyword, args.trim().to_string()));
    }
    let count = stages.len();
    let last = stages.pop().ok_or("no FROM")?;
    let find = |keyword: &str| {
        last.iter()
            .rev()
            .find(|(k, _)| k == keyword)
            .map(|(_, args)| args.as_str())
            .ok_or(format!("the final stage has no {keyword}"))
    };
    let exec_form = |args: &str, what: &str| {
        serde_json::from_str::<Vec<String>>(args)
            .map_err(|_| format!("{what} must use the exec form [\"…\"]: {args}"))
    };
    let (_, health) = find("HEALTHCHECK")?
        .split_once("CMD ")
        .ok_or("HEALTHCHECK … CMD [\"…\"]")?;
    Ok(Image {
        entrypoint: exec_form(find("ENTRYPOINT")?, "ENTRYPOINT")?,
        cmd: exec_form(find("CMD")?, "CMD")?,
        healthcheck: exec_form(health.trim(), "HEALTHCHECK CMD")?,
        user: find("USER").unwrap_or_default().to_string(),
        stages: count,
        copies: last
            .iter()
            .filter(|(k, _)| k == "COPY")
            .map(|(_, args)| args.clone())
            .collect(),
    })
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
    let rust = r##"
        //! "etcd.inner.doc"
        TestConfig::new()
            .set("credstore.upstream.token", "root:Milvus") // "etcd.commented.out"
            /* "etcd.block.comment" */
            .set("credstore.password.argon2", json!({"memoryKiB": 64, "x": {"y": 1}}));
        /// "etcd.doc.comment"
        let yaml = "credstore:\n  listenHost: 127.0.0.1\n";
        let raw = r#"etcd.raw"#; let escaped = "etcd.\x64ata\u{2e}dir";
        let c = 'c'; let f = |x: &'static str| x;
    "##;
    let keys = keys_in(&rust_tokens(rust, "a snippet").tokens);
    let expected = [
        "credstore.listenHost",
        "credstore.password.argon2",
        "credstore.password.argon2.memoryKiB",
        "credstore.password.argon2.x",
        "credstore.password.argon2.x.y",
        "credstore.upstream.token",
        "etcd.data.dir",
        "etcd.raw",
    ];
    assert_eq!(keys, expected.iter().map(|s| s.to_string()).collect());
    // A module's unit tests start at its first `#[cfg(test)]`, at any depth.
    let module = r#"
        fn f() { "etcd.before" }
        impl X { #[cfg(test)] fn g() { "etcd.after" } }
    "#;
    let RustTokens { tokens, unit_tests } = rust_tokens(module, "a module");
    let keys = keys_in(&tokens[unit_tests.expect("#[cfg(test)] found")..]);
    assert_eq!(keys, BTreeSet::from(["etcd.after".to_string()]));

    let python = r#"return {
  'etcd': {"rootPath": root, 'use': {'embed': False}},  # 'etcd.no'
  "common": {"security": security},
}
x = f"{a}etcd.fstring" + "etcd.\x64ata.dir" + b"etcd.bytes"
y = '''etcd:
  kvSubPath: x
'''
"#;
    let keys = keys_in(&python_tokens(&[python.to_string()])[0]);
    let expected = [
        "common.security",
        "etcd.data.dir",
        "etcd.kvSubPath",
        "etcd.rootPath",
        "etcd.use",
        "etcd.use.embed",
    ];
    assert_eq!(keys, expected.iter().map(|s| s.to_string()).collect());

    // The Dockerfile's instructions that are read, on one line each, exec form.
    let dockerfile = "FROM rust AS builder\nRUN a \\\n && b\n# CMD [\"not\", \"read\"]\nFROM base\n\
        COPY --from=builder /x/credstore /bin/credstore\nUSER 1:1\n\
        HEALTHCHECK --interval=1s CMD [\"credstore\", \"health\"]\nENTRYPOINT [\"credstore\"]\n\
        CMD [\"serve\"]\n";
    let image = image_of(dockerfile).unwrap();
    assert_eq!(
        (image.stages, image.user.as_str(), image.copies.len()),
        (2, "1:1", 1)
    );
    assert_eq!(image.healthcheck, ["credstore", "health"]);
    assert_eq!(
        [image.entrypoint, image.cmd].concat(),
        ["credstore", "serve"]
    );
    let continued = dockerfile.replace("CMD [\"serve\"]", "CMD [\"serve\", \\\n  \"--x\"]");
    assert!(image_of(&continued).err().unwrap().contains("on one line"));
    let shell = dockerfile.replace("CMD [\"serve\"]", "CMD serve");
    assert!(image_of(&shell).err().unwrap().contains("exec form"));
    let copy = dockerfile.replace("COPY --from", "copy \\\n  --from");
    assert!(image_of(&copy).err().unwrap().contains("COPY on one line"));

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

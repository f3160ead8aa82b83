//! The config's tests: loading, merging, validation messages and derived settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::sources::*;
use super::*;
use crate::auth::JwksSource;
use crate::password::{HashScheme, Limits, MAX_STORED_ARGON2, MIN_ARGON2, MIN_BCRYPT_COST};
use crate::rbac::BuiltinGroups;
use crate::tls::TlsMode;
use crate::transport::ConnectionSettings;

fn load(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).unwrap();
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::load(Some(&path), env, &Overrides::default())
}

#[test]
fn oidc_settings_are_checked_and_named_by_key() {
    let base = "credstore:\n  oidc:\n    issuer: https://idp\n    audience: cs\n";
    let check = |extra: &str, expected: Result<JwksSource, &str>| {
        let got = load(&format!("{base}{extra}"), &[]).map(|c| c.oidc().unwrap().unwrap().jwks);
        match (got, expected) {
            (Ok(jwks), Ok(want)) => assert_eq!(jwks, want, "{extra}"),
            (Err(e), Err(key)) => assert!(e.to_string().contains(key), "{extra}: {e}"),
            (got, want) => panic!("{extra}: got {got:?}, want {want:?}"),
        }
    };
    check(
        "    jwksUri: file:///etc/jwks.json\n",
        Ok(JwksSource::File("/etc/jwks.json".into())),
    );
    check(
        "    jwksUri: https://idp.example:8443/certs\n    caPemPath: /ca.pem\n",
        Ok(JwksSource::Https {
            host: "idp.example".into(),
            port: 8443,
            path: "/certs".into(),
            ca_pem: "/ca.pem".into(),
        }),
    );
    check(
        "    jwksUri: https://idp/certs\n",
        Err("credstore.oidc.caPemPath"),
    );
    check(
        "    jwksUri: http://idp/certs\n",
        Err("credstore.oidc.jwksUri"),
    );
    check("", Err("credstore.oidc.jwksUri"));
    check(
        "    jwksUri: file:///j\n    userPrefix: oidc_\n",
        Err("credstore.oidc.userPrefix"),
    );
    check(
        "    jwksUri: file:///j\n    roleMapping: {g: \"not a role\"}\n",
        Err("credstore.oidc.roleMapping.g"),
    );
    assert_eq!(
        load("", &[]).unwrap().oidc().unwrap(),
        None,
        "off by default"
    );
    let on = load(&format!("{base}    jwksUri: file:///j\n"), &[]).unwrap();
    let settings = on.oidc().unwrap().unwrap();
    assert_eq!(
        (
            settings.username_claim.as_str(),
            settings.roles_claim.as_str()
        ),
        ("sub", "groups")
    );
    assert_eq!(
        (settings.user_prefix.as_str(), settings.leeway_seconds),
        ("oidc:", 30)
    );
}

#[test]
fn builtin_groups_are_overridden_by_milvus_keys() {
    use crate::rbac::Privilege;
    let names = |groups: &BuiltinGroups, group: &str| -> Vec<&'static str> {
        let members = groups.members(group).expect("a built-in group");
        members.iter().map(|p| p.api_name()).collect()
    };
    let defaults = BuiltinGroups::default();
    let overrides = "common:\n  security:\n    rbac:\n      cluster:\n        readonly:\n          privileges: ListDatabases, SelectUser\n      collection:\n        admin:\n          privileges: [Query, Search]\n";
    // Without the switch, the lists are ignored (as Milvus does).
    let off = load(overrides, &[]).unwrap().builtin_groups().unwrap();
    assert_eq!(off, defaults);
    let on = format!("{overrides}      overrideBuiltInPrivilegeGroups:\n        enabled: true\n");
    let groups = load(&on, &[]).unwrap().builtin_groups().unwrap();
    assert_eq!(
        names(&groups, "ClusterReadOnly"),
        ["ListDatabases", "SelectUser"]
    );
    assert_eq!(names(&groups, "CollectionAdmin"), ["Query", "Search"]);
    // Groups not overridden keep Milvus's defaults.
    assert_eq!(
        groups.members("ClusterAdmin"),
        defaults.members("ClusterAdmin")
    );
    assert!(
        groups
            .members("ClusterReadWrite")
            .unwrap()
            .contains(&Privilege::from_api("FlushAll").unwrap())
    );
    // Through the environment too, with Milvus's variable names.
    let env = [
        (
            "COMMON_SECURITY_RBAC_OVERRIDEBUILTINPRIVILEGEGROUPS_ENABLED",
            "true",
        ),
        (
            "COMMON_SECURITY_RBAC_DATABASE_READWRITE_PRIVILEGES",
            "ShowCollections,AlterDatabase",
        ),
    ];
    let from_env = load("", &env).unwrap().builtin_groups().unwrap();
    assert_eq!(
        names(&from_env, "DatabaseReadWrite"),
        ["ShowCollections", "AlterDatabase"]
    );
    // An unknown privilege stops start-up with an error naming the key.
    let bad = format!(
        "{on}      database:\n        admin:\n          privileges: CreateCollection, Bogus\n"
    );
    let err = load(&bad, &[]).unwrap_err().to_string();
    assert!(
        err.contains("common.security.rbac.database.admin.privileges") && err.contains("Bogus"),
        "{err}"
    );
}

#[test]
fn ack_timeout_outlasts_the_session_ttl() {
    let derived = |yaml: &str| load(yaml, &[]).unwrap().ack_timeout();
    assert_eq!(derived(""), Duration::from_secs(15));
    assert_eq!(
        derived("credstore:\n  session:\n    ttlSeconds: 60\n"),
        Duration::from_secs(90)
    );
    assert_eq!(
        derived("credstore:\n  session:\n    ttlSeconds: 2\n"),
        Duration::from_secs(4)
    );
    assert_eq!(
        derived("credstore:\n  ackTimeoutMs: 20000\n"),
        Duration::from_secs(20)
    );
    let err = load("credstore:\n  ackTimeoutMs: 5000\n", &[]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("credstore.ackTimeoutMs") && text.contains("credstore.session.ttlSeconds"),
        "{text}"
    );
}

#[test]
fn defaults_are_milvus_and_embedded() {
    let config = Config::load(None, [], &Overrides::default()).unwrap();
    assert!(config.embedded());
    assert_eq!(config.meta_root(), "by-dev/meta");
    assert_eq!(config.proxy.port, 19530);
    assert!(config.common.security.authorization_enabled);
    assert_eq!(
        config.common.security.default_root_password.expose(),
        "Milvus"
    );
    assert_eq!(config.limits(), Limits::default());
    assert_eq!(
        config.default_listen().unwrap().to_string(),
        "0.0.0.0:19530"
    );
}

#[test]
fn tls_modes_and_their_files() {
    assert_eq!(Config::default().server_tls().unwrap(), None);
    let err = load("common:\n  security:\n    tlsMode: 3\n", &[]).unwrap_err();
    assert!(err.to_string().contains("common.security.tlsMode"), "{err}");
    let err = load("common:\n  security:\n    tlsMode: 1\n", &[]).unwrap_err();
    assert!(err.to_string().contains("tls.serverPemPath"), "{err}");
    let one_way = "common:\n  security:\n    tlsMode: 1\ntls:\n  serverPemPath: s.pem\n  serverKeyPath: s.key\n";
    let files = load(one_way, &[]).unwrap().server_tls().unwrap().unwrap();
    assert_eq!(files.mode, TlsMode::Server);
    assert_eq!(files.cert, PathBuf::from("s.pem"));
    // Mode 2 also needs the CA; the environment sets the mode like any key.
    let err = load(one_way, &[("COMMON_SECURITY_TLSMODE", "2")]).unwrap_err();
    assert!(err.to_string().contains("tls.caPemPath"), "{err}");
    let mutual = format!("{one_way}  caPemPath: ca.pem\n");
    let files = load(&mutual, &[("COMMON_SECURITY_TLSMODE", "2")]).unwrap();
    let files = files.server_tls().unwrap().unwrap();
    let ca = PathBuf::from("ca.pem");
    assert_eq!(files.mode, TlsMode::Mutual { ca });
    // Milvus's shipped defaults with tlsMode 0 are read and unused.
    let shipped =
        "common:\n  security:\n    tlsMode: 0\ntls:\n  serverPemPath: configs/cert/server.pem\n";
    assert_eq!(load(shipped, &[]).unwrap().server_tls().unwrap(), None);
}

#[test]
fn upstream_tls_settings() {
    let yaml = "credstore:\n  upstream:\n    uri: https://milvus:19530\n    tls:\n      caPemPath: ca.pem\n      serverName: milvus\n";
    let tls = load(yaml, &[]).unwrap().credstore.upstream.options().tls;
    assert_eq!(tls.ca_pem_path, Some(PathBuf::from("ca.pem")));
    assert_eq!(tls.server_name.as_deref(), Some("milvus"));
    assert_eq!(tls.client_pem_path, None);
    let err = load("credstore:\n  upstream:\n    tls:\n      caPem: x\n", &[]).unwrap_err();
    assert!(err.to_string().contains("credstore.upstream.tls"), "{err}");
}

#[test]
fn milvus_yaml_keys_and_list_forms() {
    let config = load(
            "etcd:\n  endpoints: 'a:2379, b:2379'\n  rootPath: x\ncommon:\n  security:\n    superUsers: root, foo\n    authorizationEnabled: false\n",
            &[],
        )
        .unwrap();
    assert_eq!(config.etcd.endpoints.0, ["a:2379", "b:2379"]);
    assert_eq!(config.common.security.super_users.0, ["root", "foo"]);
    assert!(!config.common.security.authorization_enabled);
    assert_eq!(config.meta_root(), "x/meta");
    let listed = load(
        "etcd:\n  endpoints: [c:1, d:2]\ncommon:\n  security:\n    superUsers: [' a ']\n",
        &[],
    )
    .unwrap();
    assert_eq!(listed.etcd.endpoints.0, ["c:1", "d:2"]);
    assert_eq!(listed.common.security.super_users.0, ["a"]);
}

#[test]
fn environment_overrides_the_milvus_way() {
    let config = load(
        "common:\n  security:\n    authorizationEnabled: true\n",
        &[
            ("COMMON_SECURITY_AUTHORIZATIONENABLED", "false"),
            ("ETCD_ENDPOINTS", "e1:2379,e2:2379"),
            ("COMMON_SECURITY_DEFAULTROOTPASSWORD", "123456"),
            ("PROXY_PORT", "19600"),
            ("UNRELATED", "x"),
        ],
    )
    .unwrap();
    assert!(!config.common.security.authorization_enabled);
    assert_eq!(config.etcd.endpoints.0, ["e1:2379", "e2:2379"]);
    assert_eq!(
        config.common.security.default_root_password.expose(),
        "123456"
    );
    assert_eq!(config.proxy.port, 19600);
}

#[test]
fn the_compose_config_is_valid_and_production_grade() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/credstore.yaml");
    let config = Config::load(Some(&path), [], &Overrides::default()).unwrap();
    assert_eq!(config.etcd.endpoints.0, ["etcd:2379"]);
    assert!(!config.embedded());
    assert!(config.common.security.authorization_enabled);
    assert_eq!(config.hash_scheme(), HashScheme::default());
    assert!(!config.credstore.password.allow_weak_parameters);
}

#[test]
fn empty_sections_mean_defaults() {
    let config = load("credstore:\netcd:\n  ssl:\n    tlsCert:\n", &[]).unwrap();
    assert_eq!(config, Config::default());
}

#[test]
fn flags_beat_environment() {
    let env = [("ETCD_ENDPOINTS".to_string(), "env:1".to_string())];
    let overrides = Overrides {
        etcd_endpoints: Some("flag:2".into()),
    };
    let config = Config::load(None, env, &overrides).unwrap();
    assert_eq!(config.etcd.endpoints.0, ["flag:2"]);
}

fn check_error(yaml: &str, env: &[(&str, &str)], expected: &str) {
    let err = load(yaml, env).unwrap_err().to_string();
    assert!(
        err.contains(expected),
        "{err:?} should contain {expected:?}"
    );
}

#[test]
fn foreign_keys_of_a_milvus_yaml_are_ignored() {
    let yaml = "autoIndex:\n  enable: false\netcd:\n  endpoints: 10.0.0.1:2379\n  rootPath: prod\n  kvSubPath: kv\n  log:\n    level: info\nproxy:\n  port: 19531\n  http:\n    enabled: true\n  maxTaskNum: 1024\ncommon:\n  security:\n    authorizationEnabled: true\n    tlsMode: 0\n  retentionDuration: 432000\nqueryNode:\n  port: 21123\n";
    let config = load(yaml, &[]).expect("a milvus.yaml with other components' keys loads");
    assert_eq!(config.etcd.root_path, "prod");
    assert_eq!(config.proxy.port, 19531);
    assert!(config.common.security.authorization_enabled);
}

#[test]
fn bad_input_names_the_key() {
    check_error(
        "credstore:\n  cachez: 1\n",
        &[],
        "config key credstore.cachez: unknown field `cachez`",
    );
    check_error(
        "credstore:\n  password:\n    algorithmz: bcrypt\n",
        &[],
        "unknown field `algorithmz`",
    );
    check_error("proxy:\n  port: banana\n", &[], "config key proxy.port");
    check_error("", &[("PROXY_PORT", "99999")], "config key proxy.port");
    check_error(
        "",
        &[("COMMON_SECURITY_AUTHORIZATIONENABLED", "maybe")],
        "common.security.authorizationEnabled",
    );
    check_error(
        "credstore:\n  password:\n    argon2:\n      memoryKiB: 64\n",
        &[],
        "credstore.password",
    );
    check_error(
        "credstore:\n  password:\n    algorithm: md5\n",
        &[],
        "credstore.password.algorithm",
    );
    check_error("etcd: [\n", &[], "not valid YAML");
    check_error(
        "etcd:\n  ssl:\n    enabled: true\n",
        &[],
        "etcd.ssl.tlsCACert",
    );
}

#[test]
fn upstream_keys_and_a_hidden_token() {
    let config = load(
        "credstore:\n  upstream:\n    uri: http://m:19530\n    maxMessageBytes: 1024\n",
        &[
            ("CREDSTORE_UPSTREAM_TOKEN", "root:s3cret"),
            ("CREDSTORE_UPSTREAM_TIMEOUTMS", "1500"),
        ],
    )
    .unwrap();
    let options = config.credstore.upstream.options();
    assert_eq!(options.uri, "http://m:19530");
    assert_eq!(options.token.expose(), "root:s3cret");
    assert_eq!(options.max_message_bytes, 1024);
    assert_eq!(options.default_timeout, Duration::from_millis(1500));
    for debug in [format!("{config:?}"), format!("{options:?}")] {
        assert!(!debug.contains("s3cret"), "{debug}");
    }
    let defaults = Config::default().credstore.upstream;
    assert_eq!(defaults.max_message_bytes, 256 << 20);
    assert!(defaults.uri.is_empty());
}

#[test]
fn connection_and_body_limits() {
    let defaults = Config::default();
    assert_eq!(defaults.connections(), ConnectionSettings::default());
    let upstream = defaults.credstore.upstream.options();
    assert_eq!(upstream.max_in_flight_bytes, 1 << 30);
    assert_eq!(upstream.max_in_flight_bytes_per_connection, 256 << 20);
    assert_eq!(upstream.body_timeout, Duration::from_secs(30));
    let config = load(
            "credstore:\n  grpc:\n    handshakeTimeoutMs: 1500\n    maxConnectionsPerPeer: 7\n  upstream:\n    maxMessageBytes: 1024\n    maxInFlightBytes: 4096\n    maxInFlightBytesPerConnection: 2048\n    bodyTimeoutMs: 900\n",
            &[("CREDSTORE_GRPC_IDLETIMEOUTSECONDS", "12")],
        )
        .unwrap();
    let connections = config.connections();
    assert_eq!(connections.handshake_timeout, Duration::from_millis(1500));
    assert_eq!(connections.idle_timeout, Duration::from_secs(12));
    assert_eq!(connections.max_connections_per_peer, 7);
    assert_eq!(connections.max_connections, 10_000);
    let upstream = config.credstore.upstream.options();
    assert_eq!(
        (
            upstream.max_in_flight_bytes,
            upstream.max_in_flight_bytes_per_connection
        ),
        (4096, 2048)
    );
    assert_eq!(upstream.body_timeout, Duration::from_millis(900));
    for (yaml, key) in [
        (
            "grpc:\n    maxConnections: 0",
            "credstore.grpc.maxConnections",
        ),
        (
            "grpc:\n    handshakeTimeoutMs: 0",
            "credstore.grpc.handshakeTimeoutMs",
        ),
        (
            "grpc:\n    idleTimeoutSecond: 5",
            "credstore.grpc.idleTimeoutSecond",
        ),
        (
            "upstream:\n    bodyTimeoutMs: 0",
            "credstore.upstream.bodyTimeoutMs",
        ),
        (
            "upstream:\n    maxInFlightBytes: 1000",
            "credstore.upstream.maxInFlightBytesPerConnection",
        ),
        (
            "upstream:\n    maxInFlightBytesPerConnection: 1000",
            "credstore.upstream.maxMessageBytes",
        ),
    ] {
        check_error(&format!("credstore:\n  {yaml}\n"), &[], key);
    }
}

#[test]
fn weak_parameters_need_the_explicit_switch() {
    let yaml = "credstore:\n  password:\n    allowWeakParameters: true\n    argon2: {memoryKiB: 64, iterations: 1}\n";
    let config = load(yaml, &[]).unwrap();
    assert_eq!(
        config.hash_scheme(),
        HashScheme::Argon2id {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1
        }
    );
}

#[test]
fn debug_never_shows_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("c.pem"),
        dir.path().join("c.key"),
    );
    std::fs::write(&ca, "CA-PEM").unwrap();
    std::fs::write(&cert, "CERT-PEM").unwrap();
    std::fs::write(&key, "PRIVATE-KEY-PEM").unwrap();
    let yaml = format!(
        "etcd:\n  endpoints: e:2379\n  auth: {{enabled: true, userName: u, password: etcd-secret-pw}}\n  ssl: {{enabled: true, tlsCACert: '{}', tlsCert: '{}', tlsKey: '{}'}}\ncommon:\n  security:\n    defaultRootPassword: root-secret-pw\n",
        ca.display(),
        cert.display(),
        key.display()
    );
    let config = load(&yaml, &[]).unwrap();
    let store = config.store().unwrap();
    for shown in [
        format!("{config:?}"),
        format!("{store:?}"),
        format!("{store:#?}"),
    ] {
        for secret in ["etcd-secret-pw", "root-secret-pw", "PRIVATE-KEY-PEM"] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
    }
    let StoreConfig::Etcd(options) = store else {
        panic!("etcd configured");
    };
    assert_eq!(options.auth, Some(("u".into(), "etcd-secret-pw".into())));
    let tls = options.tls.expect("TLS configured");
    assert_eq!(tls.ca_pem, b"CA-PEM");
    assert_eq!(
        tls.client_cert_key_pem.map(|(_, key)| key),
        Some(b"PRIVATE-KEY-PEM".to_vec())
    );
}

#[test]
fn derived_settings() {
    let config = load(
            "credstore:\n  cache: {ttlSeconds: 30}\n  session: {ttlSeconds: 4}\n  password: {algorithm: bcrypt, bcryptCost: 11, maxConcurrentHashes: 3, maxQueuedHashes: 7, hashNiceness: 5}\n",
            &[],
        )
        .unwrap();
    assert_eq!(config.hash_scheme(), HashScheme::Bcrypt { cost: 11 });
    assert_eq!(
        config.hash_pool(),
        HashPoolConfig {
            scheme: HashScheme::Bcrypt { cost: 11 },
            concurrent: 3,
            queued: 7,
            per_peer: 32,
            niceness: 5
        }
    );
    assert_eq!(config.cache_ttl(), Some(Duration::from_secs(30)));
    assert_eq!(config.session_ttl(), Duration::from_secs(4));
    let auth = config.authenticator();
    assert!(auth.enabled);
    assert_eq!(auth.super_users, Vec::<String>::new());
    assert_eq!(auth.limits, Limits::default());
    assert_eq!(auth.cache_capacity, 100_000);
    assert_eq!(auth.cache_ttl, Some(Duration::from_secs(30)));
    let address = "127.0.0.1:19530".parse().unwrap();
    let coherence = config.coherence("r-1".into(), address);
    assert_eq!(coherence.replica_id, "r-1");
    assert_eq!(coherence.address, "127.0.0.1:19530");
    assert_eq!(coherence.session_ttl, Duration::from_secs(4));
    assert_eq!(coherence.ack_timeout, config.ack_timeout());
    assert_eq!(Config::default().cache_ttl(), None);
    assert!(Config::default().hash_pool().concurrent >= 1);
    let StoreConfig::Embedded { path } = Config::default().store().unwrap() else {
        panic!("embedded by default");
    };
    assert_eq!(path, Path::new("default.etcd/credstore.redb"));
    let env = [("CREDSTORE_PASSWORD_ALGORITHM", "bcrypt")];
    assert_eq!(
        load("", &env).unwrap().credstore.password.algorithm,
        HashAlgorithm::Bcrypt
    );
}

#[test]
fn hash_parameters_credstore_could_not_read_back_are_refused() {
    let (m, t, p) = MAX_STORED_ARGON2;
    let argon2 = |m: u32, t: u32, p: u32| {
        format!(
            "credstore:\n  password:\n    argon2: {{memoryKiB: {m}, iterations: {t}, parallelism: {p}}}\n"
        )
    };
    assert!(
        load(&argon2(m, t, p), &[]).is_ok(),
        "the largest readable is accepted"
    );
    check_error(
        &argon2(m + 1, t, p),
        &[],
        "credstore.password.argon2.memoryKiB",
    );
    check_error(
        &argon2(m, t + 1, p),
        &[],
        "credstore.password.argon2.iterations",
    );
    check_error(
        &argon2(m, t, p + 1),
        &[],
        "credstore.password.argon2.parallelism",
    );
    check_error(
        "credstore:\n  password: {algorithm: bcrypt, bcryptCost: 32}\n",
        &[],
        "credstore.password.bcryptCost",
    );
    let defaults = Config::default().credstore.password;
    assert_eq!(defaults.bcrypt_cost, MIN_BCRYPT_COST);
    assert_eq!(
        (
            defaults.argon2.memory_kib,
            defaults.argon2.iterations,
            defaults.argon2.parallelism
        ),
        MIN_ARGON2
    );
}

#[test]
fn unreadable_files_and_bad_root_passwords_name_the_key() {
    let config = load(
        "etcd:\n  endpoints: e:1\n  ssl: {enabled: true, tlsCACert: /nonexistent/ca.pem}\n",
        &[],
    )
    .unwrap();
    let err = config.store().unwrap_err().to_string();
    assert!(
        err.starts_with("config key etcd.ssl.tlsCACert: cannot read /nonexistent/ca.pem"),
        "{err}"
    );
    check_error(
        "common:\n  security:\n    defaultRootPassword: abc\n",
        &[],
        "config key common.security.defaultRootPassword: invalid password length",
    );
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// The whole of `load` after reading the file.
    fn load_text(text: &str, env: Vec<(String, String)>) -> Result<Config, ConfigError> {
        let tree = parse_yaml(text, Path::new("c.yaml"))?;
        Config::from_tree(tree, env, &Overrides::default())
    }

    /// Every key path credstore knows, with its default.
    fn known_leaves() -> Vec<(String, Value)> {
        let defaults = serde_json::to_value(Config::default()).unwrap();
        let mut leaves = Vec::new();
        leaf_paths(&defaults, String::new(), &mut leaves);
        leaves
    }

    /// YAML-ish text: nested maps and lists of short keys and scalars, so the parser gets
    /// past the first line; known key names are mixed in so values reach the typed layer.
    fn yamlish() -> impl Strategy<Value = String> {
        let known: Vec<String> = known_leaves()
            .iter()
            .flat_map(|(path, _)| path.split('.').map(str::to_string).collect::<Vec<_>>())
            .collect();
        let key = prop_oneof![
            proptest::sample::select(known),
            "[a-zA-Z_][a-zA-Z0-9_]{0,8}",
        ];
        let scalar = prop_oneof![
            "[ -~]{0,12}",
            any::<i64>().prop_map(|n| n.to_string()),
            Just("true".to_string()),
            Just("~".to_string()),
            Just("[a, b]".to_string()),
            Just("{x: 1}".to_string()),
        ];
        let line = (0usize..4, key, scalar, any::<bool>()).prop_map(|(depth, key, v, open)| {
            let indent = "  ".repeat(depth);
            match open {
                true => format!("{indent}{key}:\n"),
                false => format!("{indent}{key}: {v}\n"),
            }
        });
        proptest::collection::vec(line, 0..12).prop_map(|lines| lines.concat())
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        for text in [
            "[".repeat(100_000),
            "{a: ".repeat(50_000),
            "- ".repeat(50_000),
        ] {
            assert!(load_text(&text, Vec::new()).is_err());
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = load_text(&text, Vec::new());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = load_text(&text, Vec::new());
        }

        #[test]
        fn yaml_shaped_text_never_panics(text in yamlish()) {
            let _ = load_text(&text, Vec::new());
        }

        #[test]
        fn arbitrary_environment_values_never_panic(
            picks in proptest::collection::vec((any::<prop::sample::Index>(), "\\PC{0,20}"), 0..6)
        ) {
            let leaves = known_leaves();
            let env = picks
                .into_iter()
                .map(|(i, v)| (env_name(&i.get(&leaves).0), v))
                .collect();
            let _ = load_text("", env);
        }

        #[test]
        fn an_unknown_key_is_named(
            at in any::<prop::sample::Index>(),
            key in "[a-z][a-zA-Z0-9]{0,10}",
        ) {
            // A section of credstore's own config, and a key that is not one of its
            // fields (Milvus's sections ignore such keys: `foreign_keys_are_ignored`).
            let sections = ["credstore", "credstore.password", "credstore.cache", "credstore.upstream"];
            let section = *at.get(&sections);
            let known = known_leaves();
            let taken = known.iter().any(|(path, _)| {
                let rest = match section {
                    "" => Some(path.as_str()),
                    s => path.strip_prefix(s).and_then(|r| r.strip_prefix('.')),
                };
                rest.and_then(|r| r.split('.').next()) == Some(key.as_str())
            });
            prop_assume!(!taken);
            let mut text = String::new();
            let mut indent = String::new();
            for part in section.split('.').filter(|p| !p.is_empty()) {
                text.push_str(&format!("{indent}{part}:\n"));
                indent.push_str("  ");
            }
            text.push_str(&format!("{indent}{key}: 1\n"));
            let err = load_text(&text, Vec::new()).unwrap_err().to_string();
            prop_assert!(err.contains(&format!("unknown field `{key}`")), "{}", err);
            let prefix = match section {
                "" => format!("config key {key}: "),
                s => format!("config key {s}.{key}: "),
            };
            prop_assert!(err.starts_with(&prefix), "{} should start with {}", err, prefix);
        }
    }
}

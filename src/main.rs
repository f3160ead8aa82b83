//! The `credstore` binary: parses the command line, sets up logging, and either serves
//! (`credstore serve`) or acts as an admin client of a running server (`user`, `role`,
//! `health`, `bench`). Each admin command prints one line saying what it did (listings: one
//! name per line), or an error on stderr with a non-zero exit. Passwords come from a flag, an
//! environment variable, a prompt (when standard input is a terminal) or standard input, one
//! per line: never only from the command line, which `ps` shows. Everything else lives in the
//! library.

#![forbid(unsafe_code)]

/// mimalloc instead of glibc's allocator: many small, short-lived allocations per request
/// (HTTP/2 frames, headers, futures) on threads that hand them to each other.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use credstore::bench::BenchConfig;
use credstore::client::{Admin, Authorization, Grant, Keys, read_secret};
use credstore::config::{Config, Overrides};
use credstore::server::{self, State};
use credstore::tls::ClientTls;

#[derive(Parser)]
#[command(
    name = "credstore",
    version,
    about = "A Milvus-compatible credential store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Milvus user/role gRPC API.
    Serve {
        /// A milvus.yaml-style config file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (default: credstore.listenHost and proxy.port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// etcd endpoints, comma-separated (overrides etcd.endpoints).
        #[arg(long)]
        etcd_endpoints: Option<String>,
        /// Upstream Milvus for calls credstore does not own (overrides credstore.upstream.uri).
        #[arg(long)]
        upstream: Option<String>,
    },
    /// Manage users on a running server.
    User {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        action: UserAction,
    },
    /// Manage API keys (`MilvusClient(uri, token=<key>)`) on a running server.
    Apikey {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        action: ApikeyAction,
    },
    /// Revoke OIDC tokens on a running server, and list revocations.
    Oidc {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        action: OidcAction,
    },
    /// Manage roles, their privileges and their users on a running server (Milvus's RBAC).
    Role {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        action: RoleAction,
    },
    /// Load-generate against a Milvus-compatible endpoint and report throughput and latency.
    Bench {
        #[command(flatten)]
        config: BenchConfig,
        /// Print the report as one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// An empty MilvusService (fixed replies, no credentials) for `scripts/bench.sh`.
    #[command(hide = true)]
    BenchUpstream {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Break-glass administration through the store's own credentials (no login).
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Exit 0 when the server at --uri answers (with --ready: when it is ready to serve).
    Health {
        /// The server.
        #[arg(
            long,
            env = "CREDSTORE_URI",
            hide_env_values = true,
            default_value = "http://127.0.0.1:19530"
        )]
        uri: String,
        /// Ask the standard gRPC health service instead: exit 0 only while the replica is
        /// registered, trusts its cache and is not shutting down (a readiness probe).
        #[arg(long)]
        ready: bool,
        #[command(flatten)]
        tls: ClientTls,
    },
}

#[derive(Subcommand)]
enum AdminAction {
    /// Set root's password, read from standard input (one line; a prompt on a terminal).
    /// Every running replica refuses the old password once this returns. It never creates a
    /// store; an embedded store must not be held by a running server (stop it first).
    ResetRoot {
        /// The config the replicas use (its etcd settings and credentials).
        #[arg(long)]
        config: Option<PathBuf>,
        /// etcd endpoints, comma-separated (overrides etcd.endpoints).
        #[arg(long)]
        etcd_endpoints: Option<String>,
    },
    /// Copy a running Milvus's users (bcrypt hashes as they are), roles, bindings, grants and
    /// privilege groups from its etcd, in one consistent read; prints one summary line. Every
    /// running replica serves the imported state once this returns.
    Import {
        /// The config the replicas use (credstore's store and credentials).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        source: credstore::import::SourceArgs,
        /// Replace users, roles and privilege groups credstore stores with other content.
        #[arg(long)]
        overwrite: bool,
        /// Copy Milvus's root (its password and roles) over credstore's.
        #[arg(long)]
        include_root: bool,
    },
}

#[derive(clap::Args)]
struct Connection {
    /// The server to manage.
    #[arg(
        long,
        global = true,
        env = "CREDSTORE_URI",
        hide_env_values = true,
        default_value = "http://127.0.0.1:19530"
    )]
    uri: String,
    /// Who calls: a user allowed to do it (root, a member of `admin`, or one with the
    /// privilege).
    #[arg(long, global = true, default_value = "root")]
    user: String,
    /// The caller's password. A flag is visible to `ps`: prefer CREDSTORE_PASSWORD, or give
    /// neither to be prompted (or to pass it as the first line of standard input).
    #[arg(
        long,
        global = true,
        env = "CREDSTORE_PASSWORD",
        hide_env_values = true
    )]
    password: Option<String>,
    #[command(flatten)]
    tls: ClientTls,
}

/// A new password: the flag (visible to `ps`), CREDSTORE_NEW_PASSWORD, or else prompted (or
/// the next line of standard input, after the caller's password).
#[derive(clap::Args)]
struct NewPassword {
    #[arg(long, env = "CREDSTORE_NEW_PASSWORD", hide_env_values = true)]
    new_password: Option<String>,
}

#[derive(Subcommand)]
enum UserAction {
    /// Create a user; the new password comes from --new-password, CREDSTORE_NEW_PASSWORD,
    /// a prompt or standard input.
    Create {
        name: String,
        #[command(flatten)]
        new_password: NewPassword,
    },
    /// Change a password. Super users need no old password; a user changing their own uses
    /// their --password as the old one unless --old-password (or CREDSTORE_OLD_PASSWORD) says
    /// otherwise.
    Passwd {
        name: String,
        #[command(flatten)]
        new_password: NewPassword,
        #[arg(long, env = "CREDSTORE_OLD_PASSWORD", hide_env_values = true)]
        old_password: Option<String>,
    },
    /// Delete a user (never root).
    Delete { name: String },
    /// Print every user's name, one per line.
    List,
    /// Lift the login lockout of a user name (its account and every address) on every
    /// replica. Root or the admin role.
    Unlock { name: String },
}

#[derive(Subcommand)]
enum ApikeyAction {
    /// Create a key for OWNER and print it (one line, shown only this once).
    Create {
        owner: String,
        /// Limit the key to this role of its owner's (repeatable; default: all of them).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Lifetime, e.g. `30d`, `12h` (default: no expiry).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// One line per key: id, owner, roles, expiry, last use, state. Never a secret.
    List { owner: Option<String> },
    /// Revoke key ID: when this returns, every live replica refuses it.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum OidcAction {
    /// Revoke one token by its `jti`, or every token of a subject issued before now.
    Revoke {
        #[arg(long, conflicts_with = "subject", required_unless_present = "subject")]
        jti: Option<String>,
        #[arg(long)]
        subject: Option<String>,
    },
    /// The revocations in force and the identities the answering replica saw recently.
    List,
}

#[derive(Subcommand)]
enum RoleAction {
    /// Create a role.
    Create { role: String },
    /// Drop a role. It must have no grants unless --force, which drops them with it.
    Drop {
        role: String,
        /// Drop the role's grants too (Milvus's force_drop).
        #[arg(long)]
        force: bool,
    },
    /// Print every role's name, one per line (`admin` and `public` are built in).
    List,
    /// Grant a privilege on an object to a role (Milvus's grant_privilege).
    Grant(PrivilegeArgs),
    /// Revoke a privilege on an object from a role (Milvus's revoke_privilege).
    Revoke(PrivilegeArgs),
    /// Give a user a role.
    Bind(Membership),
    /// Take a role from a user.
    Unbind(Membership),
}

/// `USER ROLE`. Not `user`: that is the caller (`--user`), a global flag.
#[derive(clap::Args)]
struct Membership {
    #[arg(value_name = "USER")]
    member: String,
    role: String,
}

/// `ROLE OBJECT_TYPE OBJECT_NAME PRIVILEGE [--db DB]`, Milvus's names throughout.
#[derive(clap::Args)]
struct PrivilegeArgs {
    /// The role.
    role: String,
    /// Global, Collection or User.
    object_type: String,
    /// The object's name, or * for every object of the type (Global: *).
    object_name: String,
    /// Milvus's privilege name: Search, Query, Insert, Delete, Load, CreateCollection,
    /// DescribeCollection, ShowCollections, CreateOwnership, UpdateUser, SelectUser, …, or *
    /// for all. Privilege groups need MilvusClient's grant_privilege_v2.
    privilege: String,
    /// The database the grant is in.
    #[arg(long, default_value = "default")]
    db: String,
}

impl PrivilegeArgs {
    fn grant(&self) -> Grant<'_> {
        Grant {
            role: &self.role,
            object_type: &self.object_type,
            object_name: &self.object_name,
            privilege: &self.privilege,
            db: &self.db,
        }
    }

    /// `Search on Collection books in database default`.
    fn describe(&self) -> String {
        format!(
            "{} on {} {} in database {}",
            self.privilege, self.object_type, self.object_name, self.db
        )
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("credstore: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve {
                config,
                listen,
                etcd_endpoints,
                upstream,
            } => serve(config, listen, etcd_endpoints, upstream).await,
            Command::User { connection, action } => user(connection, action).await,
            Command::Apikey { connection, action } => apikey(connection, action).await,
            Command::Oidc { connection, action } => oidc(connection, action).await,
            Command::Role { connection, action } => role(connection, action).await,
            Command::Bench { config, json } => bench(config, json).await,
            Command::BenchUpstream { listen } => {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                Ok(credstore::bench::upstream::serve(listener).await?)
            }
            Command::Admin {
                action:
                    AdminAction::ResetRoot {
                        config,
                        etcd_endpoints,
                    },
            } => reset_root(config, etcd_endpoints).await,
            Command::Admin {
                action:
                    AdminAction::Import {
                        config,
                        source,
                        overwrite,
                        include_root,
                    },
            } => {
                let config =
                    Config::load(config.as_deref(), std::env::vars(), &Overrides::default())?;
                let timeout = std::time::Duration::from_millis(config.credstore.etcd_timeout_ms);
                let source = source.connect(timeout).await?;
                let options = credstore::import::ImportOptions {
                    overwrite,
                    include_root,
                };
                println!("{}", server::import(config, &source, &options).await?);
                Ok(())
            }
            Command::Health { uri, ready, tls } => health(&uri, ready, &tls).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("credstore: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    config: Option<PathBuf>,
    listen: Option<SocketAddr>,
    etcd_endpoints: Option<String>,
    upstream: Option<String>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::load(
        config.as_deref(),
        std::env::vars(),
        &Overrides { etcd_endpoints },
    )?;
    if let Some(uri) = upstream {
        config.credstore.upstream.uri = uri;
    }
    if config.credstore.password.allow_weak_parameters {
        tracing::warn!(
            "credstore.password.allowWeakParameters is on: hashes may be weaker than OWASP's minimum"
        );
    }
    let address = match listen {
        Some(address) => address,
        None => config.default_listen()?,
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let state = State::build(config, listener.local_addr()?).await?;
    server::run(listener, state, shutdown_signal()).await?;
    Ok(())
}

async fn reset_root(
    config: Option<PathBuf>,
    etcd_endpoints: Option<String>,
) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load(
        config.as_deref(),
        std::env::vars(),
        &Overrides { etcd_endpoints },
    )?;
    let password = read_secret("new password for root: ")?;
    let reset = server::reset_root(config, password.as_bytes()).await?;
    println!(
        "reset root's password in {} at revision {}; every live replica applied it",
        reset.store, reset.revision
    );
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutdown requested");
}

/// The caller's password (flag, CREDSTORE_PASSWORD, prompt or standard input) and a connected
/// [`Admin`].
async fn connect(connection: &Connection) -> Result<(Admin, String), Box<dyn std::error::Error>> {
    let password = match &connection.password {
        Some(password) => password.clone(),
        None => read_secret(&format!("Password for {}: ", connection.user))?,
    };
    let authorization = Authorization::credentials(&connection.user, &password);
    let admin = Admin::connect_tls(&connection.uri, &connection.tls, authorization).await?;
    Ok((admin, password))
}

async fn user(
    connection: Connection,
    action: UserAction,
) -> Result<(), Box<dyn std::error::Error>> {
    let (mut admin, password) = connect(&connection).await?;
    let new_password = |given: NewPassword, name: &str| match given.new_password {
        Some(password) => Ok(password),
        None => read_secret(&format!("New password for {name}: ")),
    };
    match action {
        UserAction::Create {
            name,
            new_password: given,
        } => {
            let new = new_password(given, &name)?;
            admin.create_user(&name, &new).await?;
            println!("created user {name}");
        }
        UserAction::Passwd {
            name,
            new_password: given,
            old_password,
        } => {
            let new = new_password(given, &name)?;
            let old = match old_password {
                Some(old) => Some(old),
                None if name.trim() == connection.user => Some(password),
                None => None,
            };
            admin.change_password(&name, old.as_deref(), &new).await?;
            println!("changed the password of user {name}");
        }
        UserAction::Delete { name } => {
            admin.delete_user(&name).await?;
            println!("deleted user {name}");
        }
        UserAction::List => {
            for name in admin.list_users().await? {
                println!("{name}");
            }
        }
        UserAction::Unlock { name } => match admin.unlock(&name).await? {
            true => println!("unlocked {}", name.trim()),
            false => println!(
                "{} was not locked; its failure counts are cleared",
                name.trim()
            ),
        },
    }
    Ok(())
}

/// The caller's credentials from `connection` (prompting for the password if needed).
fn authorization(connection: &Connection) -> Result<Authorization, Box<dyn std::error::Error>> {
    let password = match &connection.password {
        Some(password) => password.clone(),
        None => read_secret(&format!("Password for {}: ", connection.user))?,
    };
    Ok(Authorization::credentials(&connection.user, &password))
}

/// Seconds since the epoch as RFC 3339, or `never` for 0.
fn when(unix: i64) -> String {
    match u64::try_from(unix) {
        Ok(secs) if secs > 0 => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        )
        .to_string(),
        _ => "never".into(),
    }
}

async fn apikey(
    connection: Connection,
    action: ApikeyAction,
) -> Result<(), Box<dyn std::error::Error>> {
    let authorization = authorization(&connection)?;
    let mut keys = Keys::connect_tls(&connection.uri, &connection.tls, authorization).await?;
    match action {
        ApikeyAction::Create {
            owner,
            roles,
            ttl,
            description,
        } => {
            let ttl = ttl.map_or(0, |t| t.as_secs().max(1));
            let created = keys.create(&owner, &roles, ttl, &description).await?;
            println!("{}", created.key);
        }
        ApikeyAction::List { owner } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            for key in keys.list(owner.as_deref().unwrap_or_default()).await? {
                let roles = match key.roles.is_empty() {
                    true => "*".to_string(),
                    false => key.roles.join(","),
                };
                let state = match (key.revoked_unix, key.expires_unix) {
                    (r, _) if r > 0 => "revoked",
                    (_, e) if e > 0 && e <= now => "expired",
                    _ => "active",
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    key.id,
                    key.owner,
                    roles,
                    when(key.expires_unix),
                    when(key.last_used_unix),
                    state
                );
            }
        }
        ApikeyAction::Revoke { id } => {
            keys.revoke(&id).await?;
            println!("revoked API key {id}; every live replica refuses it");
        }
    }
    Ok(())
}

async fn oidc(
    connection: Connection,
    action: OidcAction,
) -> Result<(), Box<dyn std::error::Error>> {
    let authorization = authorization(&connection)?;
    let mut keys = Keys::connect_tls(&connection.uri, &connection.tls, authorization).await?;
    match action {
        OidcAction::Revoke { jti, subject } => {
            let at = keys
                .revoke_tokens(
                    jti.as_deref().unwrap_or_default(),
                    subject.as_deref().unwrap_or_default(),
                )
                .await?;
            println!("revoked at {}", when(at));
        }
        OidcAction::List => {
            let listed = keys.list_oidc().await?;
            for r in listed.revocations {
                match r.jti.is_empty() {
                    false => println!("revoked\tjti\t{}\t{}", r.jti, when(r.revoked_unix)),
                    true => println!("revoked\tsubject\t{}\t{}", r.subject, when(r.revoked_unix)),
                }
            }
            for seen in listed.identities {
                println!(
                    "seen\t{}\t{}\t{}",
                    seen.name,
                    seen.roles.join(","),
                    when(seen.last_seen_unix)
                );
            }
        }
    }
    Ok(())
}

async fn role(
    connection: Connection,
    action: RoleAction,
) -> Result<(), Box<dyn std::error::Error>> {
    let (mut admin, _) = connect(&connection).await?;
    match action {
        RoleAction::Create { role } => {
            admin.create_role(&role).await?;
            println!("created role {role}");
        }
        RoleAction::Drop { role, force } => match force {
            true => {
                admin.force_drop_role(&role).await?;
                println!("dropped role {role} and its grants");
            }
            false => {
                admin.drop_role(&role).await?;
                println!("dropped role {role}");
            }
        },
        RoleAction::List => {
            for role in admin.list_roles().await? {
                println!("{role}");
            }
        }
        RoleAction::Grant(args) => {
            admin.grant_privilege(&args.grant()).await?;
            println!("granted {} to role {}", args.describe(), args.role);
        }
        RoleAction::Revoke(args) => {
            admin.revoke_privilege(&args.grant()).await?;
            println!("revoked {} from role {}", args.describe(), args.role);
        }
        RoleAction::Bind(Membership { member, role }) => {
            admin.add_user_to_role(&member, &role).await?;
            println!("added user {member} to role {role}");
        }
        RoleAction::Unbind(Membership { member, role }) => {
            admin.remove_user_from_role(&member, &role).await?;
            println!("removed user {member} from role {role}");
        }
    }
    Ok(())
}

async fn health(uri: &str, ready: bool, tls: &ClientTls) -> Result<(), Box<dyn std::error::Error>> {
    match ready {
        true => {
            credstore::client::ready(uri, tls).await?;
            println!("{uri} is ready");
        }
        false => {
            Admin::connect_tls(uri, tls, Authorization::none())
                .await?
                .health()
                .await?;
            println!("{uri} answers");
        }
    }
    Ok(())
}

async fn bench(config: BenchConfig, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    let report = credstore::bench::run(config).await?;
    match json {
        true => println!("{}", serde_json::to_string(&report)?),
        false => println!("{report}"),
    }
    Ok(())
}

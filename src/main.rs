//! The `credstore` binary: parses the command line, sets up logging, and either serves
//! (`credstore serve`) or acts as an admin client of a running server (`user`, `health`).
//! Everything else lives in the library.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use credstore::admin::Admin;
use credstore::bench::{BenchConfig, Rpc};
use credstore::config::{Config, Overrides};
use credstore::server::{self, State};

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
    /// Load-generate against a Milvus-compatible endpoint and report throughput and latency.
    Bench(BenchArgs),
    /// Exit 0 when the server at --uri answers.
    Health {
        #[arg(long, default_value = "http://127.0.0.1:19530")]
        uri: String,
    },
}

#[derive(clap::Args)]
struct BenchArgs {
    #[arg(long, default_value = "http://127.0.0.1:19530")]
    uri: String,
    #[arg(long, value_enum, default_value = "get-version")]
    rpc: Rpc,
    /// gRPC connections (HTTP/2 channels).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    #[arg(long, default_value = "root")]
    user: String,
    #[arg(
        long,
        env = "CREDSTORE_PASSWORD",
        hide_env_values = true,
        default_value = "Milvus"
    )]
    password: String,
    /// Name prefix of the per-user RPCs' users.
    #[arg(long, default_value = "bench_")]
    prefix: String,
    /// How many per-user users exist (or to create).
    #[arg(long, default_value_t = 100)]
    users: u64,
    /// Password of the per-user users.
    #[arg(long, default_value = "bench-password")]
    user_password: String,
    /// Stop after this many requests in all (default: run for --seconds).
    #[arg(long)]
    requests: Option<u64>,
    /// Print the report as one JSON line.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct Connection {
    #[arg(long, global = true, default_value = "http://127.0.0.1:19530")]
    uri: String,
    #[arg(long, global = true, default_value = "root")]
    user: String,
    /// The caller's password (or set CREDSTORE_PASSWORD).
    #[arg(
        long,
        global = true,
        env = "CREDSTORE_PASSWORD",
        hide_env_values = true
    )]
    password: Option<String>,
}

#[derive(Subcommand)]
enum UserAction {
    Create {
        name: String,
        #[arg(long)]
        new_password: String,
    },
    Passwd {
        name: String,
        #[arg(long)]
        new_password: String,
        #[arg(long)]
        old_password: Option<String>,
    },
    Delete {
        name: String,
    },
    List,
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
            Command::Bench(args) => bench(args).await,
            Command::Health { uri } => Admin::connect(&uri, None)
                .await?
                .health()
                .await
                .map_err(Into::into),
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

async fn user(
    connection: Connection,
    action: UserAction,
) -> Result<(), Box<dyn std::error::Error>> {
    let password = connection.password.unwrap_or_default();
    let mut admin = Admin::connect(&connection.uri, Some((&connection.user, &password))).await?;
    match action {
        UserAction::Create { name, new_password } => {
            admin.create_user(&name, &new_password).await?
        }
        UserAction::Passwd {
            name,
            new_password,
            old_password,
        } => {
            admin
                .change_password(&name, old_password.as_deref(), &new_password)
                .await?
        }
        UserAction::Delete { name } => admin.delete_user(&name).await?,
        UserAction::List => {
            for name in admin.list_users().await? {
                println!("{name}");
            }
        }
    }
    Ok(())
}

async fn bench(args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    let config = BenchConfig {
        uri: args.uri,
        rpc: args.rpc,
        connections: args.connections,
        concurrency: args.concurrency,
        duration: std::time::Duration::from_secs_f64(args.seconds),
        user: args.user,
        password: args.password,
        prefix: args.prefix,
        users: args.users,
        user_password: args.user_password,
        requests: args.requests,
    };
    let report = credstore::bench::run(config).await?;
    match args.json {
        true => println!("{}", serde_json::to_string(&report)?),
        false => println!("{report}"),
    }
    Ok(())
}

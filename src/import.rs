//! `credstore admin import`: adopting a running Milvus. Copies its users (bcrypt hashes as
//! they are — each is rehashed to the configured algorithm at that user's next successful
//! login), roles, user-role bindings, grants (every layout Milvus 2.2–2.6 writes: with and
//! without a db, md5 grantee ids) and custom privilege groups from Milvus's etcd into
//! credstore's store.
//!
//! - One consistent read: every page of the source is read at the revision of the first.
//! - Streamed: the source is read [`PAGE_KEYS`] keys at a time (a page of grantee keys has
//!   its privileges read and written [`MAX_TXN_OPS`] grantees at a time) and each page is
//!   written before the next is read, so memory follows the page, not the keyspace.
//! - Two passes over that one revision: a check that reads and compares everything and writes
//!   nothing (an unreadable value, a name credstore refuses, or a user, role or group stored
//!   with other content stops the import before anything changed), then the writes, through
//!   the catalog's conditional batches (`catalog::batch`).
//! - Additive and idempotent: it never deletes; what is stored already is counted, not
//!   rewritten; a second run writes nothing and says so. `root` is copied only when asked.
//!
//! It only reads the source and never hashes; acknowledgement and the audit line are the
//! caller's (`server::import`), which holds the cluster session.

use std::fmt;
use std::time::Duration;

use crate::catalog::{
    BatchOutcome, Catalog, CatalogError, Existing, Grantee, Kind, MAX_TXN_OPS, Mode, ROOT_USER,
    StoredGrant, StoredGroup, StoredUser,
};
use crate::config::{Config, ConfigError, Secret, StoreConfig, StringList};
use crate::meta::{EtcdKv, KeyValue, MetaError, Revision, Store};
use crate::password::{Limits, Username};

/// Keys per page read from the source (a few MiB at most). Large because etcd 3.4 walks the
/// rest of a range's index for every page: 1 000-key pages made an import of 100 000 users
/// and grants take twice as long (BENCHMARKS.md, "Import at scale").
pub const PAGE_KEYS: usize = 10_000;

/// How many conflicting names an error lists (it counts them all).
const NAMES_SHOWN: usize = 10;

/// Where to import from: Milvus's etcd and root path, with etcd's own TLS and credentials
/// (the `etcd.*` keys of Milvus's milvus.yaml).
#[derive(Clone, clap::Args)]
pub struct SourceArgs {
    /// etcd endpoints of the Milvus to adopt, comma-separated (its etcd.endpoints).
    #[arg(long = "from-etcd", value_name = "ENDPOINTS")]
    pub endpoints: String,
    /// Milvus's etcd.rootPath (Milvus's default is by-dev).
    #[arg(long = "from-root-path", value_name = "PATH")]
    pub root_path: String,
    /// Milvus's etcd.metaSubPath.
    #[arg(
        long = "from-meta-sub-path",
        value_name = "PATH",
        default_value = "meta"
    )]
    pub meta_sub_path: String,
    /// etcd user of Milvus's etcd (its etcd.auth.userName).
    #[arg(long = "from-etcd-user", value_name = "NAME")]
    pub user: Option<String>,
    /// That user's password. A flag is visible to `ps`: prefer CREDSTORE_FROM_ETCD_PASSWORD.
    #[arg(
        long = "from-etcd-password",
        env = "CREDSTORE_FROM_ETCD_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// CA certificate (PEM file) of Milvus's etcd: TLS (its etcd.ssl.tlsCACert).
    #[arg(long = "from-etcd-ca-cert", value_name = "FILE")]
    pub ca_cert: Option<String>,
    /// Client certificate (PEM file) for mutual TLS (its etcd.ssl.tlsCert).
    #[arg(long = "from-etcd-cert", value_name = "FILE", requires = "key")]
    pub cert: Option<String>,
    /// Client key (PEM file) for mutual TLS (its etcd.ssl.tlsKey).
    #[arg(long = "from-etcd-key", value_name = "FILE", requires = "cert")]
    pub key: Option<String>,
}

/// What to copy over what credstore already stores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Replace users, roles and groups stored with other content (else: refuse, change nothing).
    pub overwrite: bool,
    /// Copy Milvus's `root` (its hash and bindings) over credstore's.
    pub include_root: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{flag} {reason}")]
    Flag {
        flag: &'static str,
        reason: &'static str,
    },
    #[error("the source etcd ({0}; the --from-etcd-* flags set these etcd.* keys)")]
    Source(#[source] ConfigError),
    #[error("cannot reach the source etcd: {0}")]
    Connect(#[source] MetaError),
    #[error("reading the source etcd: {0}")]
    Read(#[source] MetaError),
    #[error(
        "the source's revision {0} was compacted while it was read (Milvus's etcd compacts its \
         history every few minutes); run the import again: what was copied stays, the rest follows"
    )]
    Compacted(Revision),
    #[error("the source holds a value credstore cannot read ({0}); nothing was imported")]
    Unreadable(#[source] CatalogError),
    #[error(
        "the source's user {name:?} is not a valid name here ({reason}; see proxy.maxUsernameLength); \
         nothing was imported"
    )]
    BadName { name: String, reason: String },
    #[error(
        "{count} users, roles or privilege groups exist in credstore with other content ({names}); \
         --overwrite replaces them; nothing was imported"
    )]
    Conflicts { count: usize, names: String },
    #[error(
        "{count} users, roles or privilege groups changed in credstore while importing ({names}); \
         run the import again"
    )]
    ChangedMeanwhile { count: usize, names: String },
    #[error("writing to credstore's store: {0}")]
    Write(#[source] CatalogError),
}

/// The source: a Milvus keyspace on an etcd cluster.
pub struct Source {
    kv: EtcdKv,
    /// The source keyspace read with the catalog's own readers.
    keyspace: Catalog,
    meta_root: String,
}

impl SourceArgs {
    /// Connects to the source etcd (its TLS files read and checked like `etcd.ssl.*`).
    pub async fn connect(&self, request_timeout: Duration) -> Result<Source, ImportError> {
        let mut config = Config::default();
        config.etcd.endpoints = StringList(
            self.endpoints
                .split(',')
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect(),
        );
        config.etcd.root_path = self.root_path.clone();
        config.etcd.meta_sub_path = self.meta_sub_path.clone();
        config.etcd.ssl.enabled = self.ca_cert.is_some();
        config.etcd.ssl.tls_ca_cert = self.ca_cert.clone();
        config.etcd.ssl.tls_cert = self.cert.clone();
        config.etcd.ssl.tls_key = self.key.clone();
        config.etcd.auth.enabled = self.user.is_some();
        config.etcd.auth.user_name = self.user.clone();
        config.etcd.auth.password = self.password.clone().map(Secret::new);
        let refuse = |flag, reason| Err(ImportError::Flag { flag, reason });
        if config.etcd.endpoints.0.is_empty() {
            return refuse("--from-etcd", "names no endpoint");
        }
        if self.root_path.trim_matches('/').is_empty() {
            return refuse("--from-root-path", "is empty");
        }
        if self.user.is_some() != self.password.is_some() {
            return refuse(
                "--from-etcd-user",
                "and --from-etcd-password (CREDSTORE_FROM_ETCD_PASSWORD) go together",
            );
        }
        config.credstore.etcd_timeout_ms =
            u64::try_from(request_timeout.as_millis()).unwrap_or(u64::MAX);
        let StoreConfig::Etcd(options) = config.store().map_err(ImportError::Source)? else {
            unreachable!("endpoints are set and the embedded store is off");
        };
        let kv = EtcdKv::connect(&options)
            .await
            .map_err(ImportError::Connect)?;
        let meta_root = config.meta_root();
        Ok(Source {
            keyspace: Catalog::new(Store::Etcd(kv.clone()), &meta_root),
            kv,
            meta_root,
        })
    }
}

/// What an import did, for its one summary line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// `{rootPath}/{metaSubPath}` of the source.
    pub source: String,
    /// The source revision everything was read at.
    pub source_revision: Revision,
    pub users: BatchOutcome,
    pub roles: BatchOutcome,
    pub bindings: BatchOutcome,
    pub grants: BatchOutcome,
    pub groups: BatchOutcome,
    /// Milvus's root was left out (no `--include-root`), with this many bindings of it.
    pub root_skipped: Option<usize>,
    /// Grantee keys of Milvus master that name a collection by id, left out.
    pub grantees_by_id: usize,
}

impl Summary {
    /// The revision of the last write, which replicas must apply; `None`: nothing changed.
    pub fn revision(&self) -> Option<Revision> {
        self.all().filter_map(|o| o.revision).max()
    }

    fn all(&self) -> impl Iterator<Item = &BatchOutcome> {
        [
            &self.users,
            &self.roles,
            &self.bindings,
            &self.grants,
            &self.groups,
        ]
        .into_iter()
    }
}

fn count(n: usize, one: &str, many: &str) -> String {
    match n {
        1 => format!("1 {one}"),
        n => format!("{n} {many}"),
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "imported {}, {}, {}, {}, {} from {} at revision {}",
            count(self.users.written, "user", "users"),
            count(self.roles.written, "role", "roles"),
            count(self.bindings.written, "binding", "bindings"),
            count(self.grants.written, "grant", "grants"),
            count(self.groups.written, "privilege group", "privilege groups"),
            self.source,
            self.source_revision
        )?;
        let present: usize = self.all().map(|o| o.present).sum();
        match self.revision() {
            None => write!(f, "; nothing changed: {present} already present")?,
            Some(_) => write!(f, "; {present} already present")?,
        }
        if let Some(bindings) = self.root_skipped {
            write!(
                f,
                "; skipped root and {} (--include-root copies them)",
                count(bindings, "binding", "bindings")
            )?;
        }
        let orphans = self.bindings.orphans + self.grants.orphans;
        if orphans > 0 {
            write!(
                f,
                "; skipped {} and {} whose user or role does not exist",
                count(self.bindings.orphans, "binding", "bindings"),
                count(self.grants.orphans, "grant", "grants")
            )?;
        }
        if self.grantees_by_id > 0 {
            write!(
                f,
                "; skipped {} naming collections by id (Milvus writes them next to the name keys copied)",
                count(self.grantees_by_id, "grantee key", "grantee keys")
            )?;
        }
        Ok(())
    }
}

/// Imports `source` into `target`: checks everything, then writes. On success the summary
/// says what changed; the caller waits for the replicas to apply [`Summary::revision`].
pub async fn import(
    target: &Catalog,
    source: &Source,
    options: &ImportOptions,
    limits: &Limits,
) -> Result<Summary, ImportError> {
    let mut at = None;
    let checked = source
        .pass(target, options, limits, Mode::Check, &mut at)
        .await?;
    let conflicts: Vec<String> = checked.all().flat_map(|o| o.conflicts.clone()).collect();
    if !conflicts.is_empty() {
        return Err(ImportError::Conflicts {
            count: conflicts.len(),
            names: names(&conflicts),
        });
    }
    let written = source
        .pass(target, options, limits, Mode::Write, &mut at)
        .await?;
    let raced: Vec<String> = written.all().flat_map(|o| o.conflicts.clone()).collect();
    if !raced.is_empty() {
        return Err(ImportError::ChangedMeanwhile {
            count: raced.len(),
            names: names(&raced),
        });
    }
    Ok(written)
}

fn names(all: &[String]) -> String {
    let mut shown = all[..all.len().min(NAMES_SHOWN)].join(", ");
    if all.len() > NAMES_SHOWN {
        shown.push_str(", …");
    }
    shown
}

impl Source {
    /// The source's `{rootPath}/{metaSubPath}`.
    pub fn meta_root(&self) -> &str {
        &self.meta_root
    }

    /// One pass over every kind at revision `at` (the first read's, when `None`).
    async fn pass(
        &self,
        target: &Catalog,
        options: &ImportOptions,
        limits: &Limits,
        mode: Mode,
        at: &mut Option<Revision>,
    ) -> Result<Summary, ImportError> {
        let existing = match options.overwrite {
            true => Existing::Replace,
            false => Existing::Keep,
        };
        let mut summary = Summary {
            source: self.meta_root.clone(),
            ..Summary::default()
        };
        for kind in Kind::ALL {
            let mut after: Option<String> = None;
            loop {
                let page = self.page(kind, after.as_deref(), at, PAGE_KEYS).await?;
                after = page.kvs.last().map(|kv| kv.key.clone());
                let more = page.more && after.is_some();
                let write = |r: Result<BatchOutcome, CatalogError>| r.map_err(ImportError::Write);
                match kind {
                    Kind::Roles => {
                        let roles = self.decoded(&page.kvs, Catalog::decode_role)?;
                        summary
                            .roles
                            .add(write(target.import_roles(&roles, existing, mode).await)?);
                    }
                    Kind::Users => {
                        let (root, users) = self.users(&page.kvs, limits)?;
                        summary
                            .users
                            .add(write(target.import_users(&users, existing, mode).await)?);
                        match (options.include_root, root.is_empty()) {
                            (_, true) => {}
                            (true, false) => {
                                let replaced = target.import_users(&root, Existing::Replace, mode);
                                summary.users.add(write(replaced.await)?);
                            }
                            (false, false) => summary.root_skipped = Some(0),
                        }
                    }
                    Kind::Groups => {
                        let groups: Vec<StoredGroup> =
                            self.decoded(&page.kvs, Catalog::decode_group)?;
                        summary
                            .groups
                            .add(write(target.import_groups(&groups, existing, mode).await)?);
                    }
                    Kind::Bindings => {
                        let mut bindings = self.decoded(&page.kvs, Catalog::decode_binding)?;
                        if !options.include_root {
                            let before = bindings.len();
                            bindings.retain(|(user, _)| user != ROOT_USER);
                            if bindings.len() < before {
                                let skipped = summary.root_skipped.get_or_insert(0);
                                *skipped += before - bindings.len();
                            }
                        }
                        if mode == Mode::Write {
                            summary
                                .bindings
                                .add(write(target.import_bindings(&bindings).await)?);
                        }
                    }
                    Kind::Grantees => {
                        let grantees = self.grantees(&page.kvs, &mut summary)?;
                        if mode == Mode::Write {
                            for chunk in grantees.chunks(MAX_TXN_OPS) {
                                let grants = self.grants(chunk, at).await?;
                                let written = target.import_grants(&grants).await;
                                summary.grants.add(write(written)?);
                            }
                        }
                    }
                }
                if !more {
                    break;
                }
            }
        }
        summary.source_revision = at.unwrap_or_default();
        Ok(summary)
    }

    /// One page of `kind` at `at`; the first read of an import fixes `at`.
    async fn page(
        &self,
        kind: Kind,
        after: Option<&str>,
        at: &mut Option<Revision>,
        limit: usize,
    ) -> Result<crate::meta::Page, ImportError> {
        let prefix = self.keyspace.prefix_of(kind);
        let page = self
            .kv
            .page(&prefix, after, *at, limit)
            .await
            .map_err(|e| read_error(e, *at))?;
        at.get_or_insert(page.revision);
        Ok(page)
    }

    fn decoded<T>(
        &self,
        kvs: &[KeyValue],
        decode: impl Fn(&Catalog, &KeyValue) -> Result<T, CatalogError>,
    ) -> Result<Vec<T>, ImportError> {
        kvs.iter()
            .map(|kv| decode(&self.keyspace, kv).map_err(ImportError::Unreadable))
            .collect()
    }

    /// A page of users as (root, everyone else), names checked against credstore's rules.
    #[allow(clippy::type_complexity)]
    fn users(
        &self,
        kvs: &[KeyValue],
        limits: &Limits,
    ) -> Result<(Vec<(Username, StoredUser)>, Vec<(Username, StoredUser)>), ImportError> {
        let mut root = Vec::new();
        let mut users = Vec::new();
        for kv in kvs {
            let (name, user) = self
                .keyspace
                .decode_user(kv)
                .map_err(ImportError::Unreadable)?;
            let checked =
                Username::parse_exact(name, limits).map_err(|e| ImportError::BadName {
                    name: name.to_string(),
                    reason: e.to_string(),
                })?;
            match name == ROOT_USER {
                true => root.push((checked, user)),
                false => users.push((checked, user)),
            }
        }
        Ok((root, users))
    }

    /// A page of grantee keys, decoded; keys naming a collection by id are counted and left out.
    fn grantees(
        &self,
        kvs: &[KeyValue],
        summary: &mut Summary,
    ) -> Result<Vec<Grantee>, ImportError> {
        let mut grantees = self.decoded(kvs, Catalog::decode_grantee)?;
        let before = grantees.len();
        grantees.retain(|g| !g.by_collection_id);
        summary.grantees_by_id += before - grantees.len();
        Ok(grantees)
    }

    /// The grants of at most [`MAX_TXN_OPS`] grantees, their privileges read at `at` in one
    /// request.
    async fn grants(
        &self,
        grantees: &[Grantee],
        at: &Option<Revision>,
    ) -> Result<Vec<StoredGrant>, ImportError> {
        let at = at.expect("a page was read, so the revision is fixed");
        let prefixes: Vec<String> = grantees
            .iter()
            .map(|g| self.keyspace.privileges_prefix(&g.id))
            .collect();
        let privileges = self
            .kv
            .list_each_at(&prefixes, at)
            .await
            .map_err(|e| read_error(e, Some(at)))?;
        Ok(grantees
            .iter()
            .zip(&privileges)
            .flat_map(|(grantee, kvs)| self.keyspace.grants_of(grantee, kvs))
            .collect())
    }
}

fn read_error(err: MetaError, at: Option<Revision>) -> ImportError {
    match (&err, at) {
        (MetaError::Etcd(text), Some(revision)) if text.contains("compacted") => {
            ImportError::Compacted(revision)
        }
        _ => ImportError::Read(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(written: usize, present: usize) -> BatchOutcome {
        BatchOutcome {
            written,
            present,
            revision: (written > 0).then_some(9),
            ..BatchOutcome::default()
        }
    }

    #[test]
    fn the_summary_is_one_line_that_says_what_changed() {
        let summary = Summary {
            source: "by-dev/meta".into(),
            source_revision: 42,
            users: outcome(4, 1),
            roles: outcome(2, 2),
            bindings: outcome(1, 0),
            grants: outcome(9, 0),
            groups: outcome(0, 0),
            root_skipped: Some(0),
            grantees_by_id: 0,
        };
        assert_eq!(
            summary.to_string(),
            "imported 4 users, 2 roles, 1 binding, 9 grants, 0 privilege groups from by-dev/meta \
             at revision 42; 3 already present; skipped root and 0 bindings (--include-root \
             copies them)"
        );
        let again = Summary {
            users: outcome(0, 5),
            roles: outcome(0, 4),
            bindings: outcome(0, 1),
            grants: outcome(0, 9),
            root_skipped: None,
            ..summary
        };
        assert_eq!(again.revision(), None);
        assert_eq!(
            again.to_string(),
            "imported 0 users, 0 roles, 0 bindings, 0 grants, 0 privilege groups from by-dev/meta \
             at revision 42; nothing changed: 19 already present"
        );
    }
}

//! [`Authorizer`]: the proxy tier's side of authorization. It turns a forwarded call into
//! what `rbac::decide` judges: the databases of its [`Subject`], and its collection names
//! resolved through aliases when the privilege is collection-level. Before the body is read,
//! [`Authorizer::precheck`] refuses a caller who holds the method's privilege nowhere, so an
//! unprivileged caller cannot make the tier buffer a large body.
//!
//! Must not: read bytes (that is `subject`), or decide itself (that is `rbac::decide`).

use std::collections::HashSet;
use std::sync::Mutex;

use crate::auth::Authenticated;
use crate::catalog::DEFAULT_DB;
use crate::proxy::aliases::Aliases;
use crate::proxy::error::Refusal;
use crate::proxy::subject::Subject;
use crate::rbac::{self, ADMIN_ROLE, Denial, Policies, Reach, Target, method_privileges};

/// Authorization of forwarded calls; cheap to share behind an `Arc`.
pub struct Authorizer {
    policies: Policies,
    aliases: Aliases,
    /// Methods without a rule already logged (once each).
    logged: Mutex<HashSet<String>>,
}

impl Authorizer {
    pub fn new(policies: Policies, aliases: Aliases) -> Authorizer {
        Authorizer {
            policies,
            aliases,
            logged: Mutex::new(HashSet::new()),
        }
    }

    /// The policies this authorizer decides by (for answers cut to the caller's grants).
    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// Before the body is read: `Ok` unless `who` cannot hold `method`'s privilege anywhere.
    /// `db` only words the denial (the `dbname` header, or `default`).
    pub async fn precheck(
        &self,
        who: &Authenticated,
        method: &str,
        db: &str,
    ) -> Result<(), Refusal> {
        if rbac::may_hold(&self.policies, who, method)
            .await
            .map_err(Refusal::Policy)?
        {
            return Ok(());
        }
        let user = who.name().unwrap_or_default().to_string();
        let db = db.to_string();
        Err(match method_privileges::rule(method) {
            Some(rule) => Denial::Privilege {
                privilege: rule.privilege,
                user,
                db,
            },
            None => Denial::AdminOnly {
                method: method.to_string(),
                user,
                db,
            },
        }
        .into())
    }

    /// May `who` make `method` on `subject`?
    pub async fn authorize(
        &self,
        who: &Authenticated,
        method: &str,
        subject: &Subject,
    ) -> Result<(), Refusal> {
        let rule = method_privileges::rule(method);
        if rule.is_none() {
            self.log_once(method);
        }
        let resolve = match (who.name(), rule) {
            (Some(_), Some(rule)) => {
                Reach::of(rule.privilege) == Reach::Collection && !self.passes_all(who).await?
            }
            _ => false,
        };
        let names = match resolve {
            true => self.resolved(subject).await?,
            false => subject.names.clone(),
        };
        let dbs = subject.dbs();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let target = Target {
            dbs: &dbs,
            names: &names,
        };
        rbac::decide(&self.policies, who, method, target).await?;
        Ok(())
    }

    /// Whether `who` passes every check anyway (exempt root, `admin`): no resolution needed.
    async fn passes_all(&self, who: &Authenticated) -> Result<bool, Refusal> {
        if self.policies.exempt(who) {
            return Ok(true);
        }
        let roles = self.policies.roles_of(who).await.map_err(Refusal::Policy)?;
        Ok(roles.iter().any(|r| r == ADMIN_ROLE))
    }

    /// The collections the subject's names and aliases resolve to, in each of its databases.
    /// An alias name that resolves to nothing else (a new alias) adds nothing.
    async fn resolved(&self, subject: &Subject) -> Result<Vec<String>, Refusal> {
        let mut out: Vec<String> = Vec::new();
        let mut push = |name: &str| {
            if !out.iter().any(|n| n == name) {
                out.push(name.to_string());
            }
        };
        for db in subject.dbs() {
            for name in &subject.names {
                push(&self.aliases.resolve(db, name).await?);
            }
            for alias in &subject.aliases {
                let target = self.aliases.resolve(db, alias).await?;
                if *target != **alias {
                    push(&target);
                }
            }
        }
        Ok(out)
    }

    fn log_once(&self, method: &str) {
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.insert(method.to_string()) {
            tracing::info!(
                method,
                "method has no privilege rule: forwarded for root and admin only"
            );
        }
    }
}

/// The database a denial before the body is read names: the `dbname` header's, or `default`.
pub fn header_or_default(header: Option<&str>) -> &str {
    header.unwrap_or(DEFAULT_DB)
}

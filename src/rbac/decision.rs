//! The one authorization decision. Both doors ask it: `service` for the methods credstore
//! answers itself, `proxy` for the calls it forwards. Each hands over who is calling, the
//! method, and what the request acts on (its databases and object names, already read the
//! way the component that executes it reads them); the answer is allow, a typed denial, or
//! the policy being unavailable. API keys and OIDC identities reach it as an
//! [`Authenticated`] like any user.
//!
//! Where a privilege reaches decides which grants count ([`Reach`]):
//! - cluster-wide privileges (users, roles, grants, privilege groups, resource groups,
//!   creating databases) act on the whole cluster, so only grants Milvus places at cluster
//!   level count: database `*`, or `default`, where Milvus stores a Global grant made without
//!   a database. A grant scoped to another database never does, whatever the `dbname` header.
//! - database-level privileges count in each database the request acts on;
//! - collection-level ones on each (database, collection) pair it acts on.
//!
//! Must not: read requests or headers, or know the wire (callers pass names).

use crate::auth::Authenticated;
use crate::catalog::{CatalogError, DEFAULT_DB};
use crate::rbac::method_privileges::{self, MethodRule};
use crate::rbac::policy_cache::Policies;
use crate::rbac::privileges::{Level, ObjectType, Privilege};
use crate::rbac::role_policy::{ADMIN_ROLE, Check};

/// Where a privilege acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// The whole cluster: checked in `default` (matched by grants in `*` and `default`).
    Cluster,
    /// Each database the request acts on.
    Database,
    /// Each collection the request acts on, in each of its databases.
    Collection,
}

impl Reach {
    /// Milvus's privilege level, except the two cluster-group privileges that act on the
    /// databases a request names (dropping one, renaming into or out of one): they count in
    /// those databases only.
    pub fn of(privilege: Privilege) -> Reach {
        match (privilege.api_name(), privilege.level()) {
            ("DropDatabase" | "RenameCollection", _) => Reach::Database,
            (_, Level::Cluster) => Reach::Cluster,
            (_, Level::Database) => Reach::Database,
            (_, Level::Collection) => Reach::Collection,
        }
    }
}

/// What a request acts on: every database (the first is the one it acts in) and every
/// object name (collections after alias resolution, or users for user methods).
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub dbs: &'a [&'a str],
    pub names: &'a [&'a str],
}

/// Why a caller may not do what they asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// Milvus's words for a missing privilege.
    #[error("{}: permission deny to {user} in the `{db}` database", privilege.metastore_name())]
    Privilege {
        privilege: Privilege,
        user: String,
        db: String,
    },
    /// A method Milvus gives no privilege: root and `admin` only (fail safe).
    #[error(
        "{method} has no privilege in Milvus and is allowed to root and the admin role only: permission deny to {user} in the `{db}` database"
    )]
    AdminOnly {
        method: String,
        user: String,
        db: String,
    },
}

/// The outcome of a decision that could not allow.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Denied(#[from] Denial),
    /// The caller's roles or grants could not be read: fail closed, retryable.
    #[error("cannot load the authorization policy: {0}")]
    Unavailable(#[from] CatalogError),
}

/// May `who` call `method` on `target`? Authorization off allows everything (as in Milvus);
/// an exempt root passes; a method without a privilege is for `admin` only; otherwise every
/// check the target expands to ([`checks`]) must be allowed by the caller's roles.
pub async fn decide(
    policies: &Policies,
    who: &Authenticated,
    method: &str,
    target: Target<'_>,
) -> Result<(), Refused> {
    let Some(user) = who.name() else {
        return Ok(());
    };
    if policies.exempt(who) {
        return Ok(());
    }
    let acting_db = target.dbs.first().copied().unwrap_or(DEFAULT_DB);
    let Some(rule) = method_privileges::rule(method) else {
        let roles = policies.roles_of(who).await?;
        return match roles.iter().any(|r| r == ADMIN_ROLE) {
            true => Ok(()),
            false => Err(Denial::AdminOnly {
                method: method.to_string(),
                user: user.to_string(),
                db: acting_db.to_string(),
            }
            .into()),
        };
    };
    for check in checks(rule, target) {
        if !policies.allows_as(who, &check).await? {
            return Err(Denial::Privilege {
                privilege: rule.privilege,
                user: user.to_string(),
                db: check.db.to_string(),
            }
            .into());
        }
    }
    Ok(())
}

/// Before a request's body is read: could `who` be allowed `method` anywhere at all (the
/// privilege granted on some object in some database, `*`, `All`, or `admin`)? `false` means
/// every body would be refused, so none needs reading.
pub async fn may_hold(
    policies: &Policies,
    who: &Authenticated,
    method: &str,
) -> Result<bool, CatalogError> {
    if policies.exempt(who) {
        return Ok(true);
    }
    match method_privileges::rule(method) {
        Some(rule) => policies.holds_anywhere(who, rule.privilege).await,
        None => Ok(policies
            .roles_of(who)
            .await?
            .iter()
            .any(|r| r == ADMIN_ROLE)),
    }
}

/// The checks a request expands to, by the reach of its privilege: cluster-wide ones once in
/// `default` (user methods per user name); database ones per database on `*`; collection ones
/// per database and name (`*` when it names none, which only a grant on every collection
/// matches).
pub fn checks<'a>(rule: &MethodRule, target: Target<'a>) -> Vec<Check<'a>> {
    let check = |db: &'a str, name: &'a str| Check {
        object: rule.object,
        privilege: rule.privilege,
        db,
        name,
    };
    let dbs: &[&str] = match target.dbs.is_empty() {
        true => &[DEFAULT_DB],
        false => target.dbs,
    };
    let names: &[&str] = match target.names.is_empty() {
        true => &["*"],
        false => target.names,
    };
    match (Reach::of(rule.privilege), rule.object) {
        (Reach::Cluster, ObjectType::User) => names.iter().map(|n| check(DEFAULT_DB, n)).collect(),
        (Reach::Cluster, _) => vec![check(DEFAULT_DB, "*")],
        (Reach::Database, _) => dbs.iter().map(|db| check(db, "*")).collect(),
        (Reach::Collection, _) => dbs
            .iter()
            .flat_map(|db| names.iter().map(move |n| check(db, n)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(name: &str) -> Reach {
        Reach::of(Privilege::from_api(name).unwrap())
    }

    #[test]
    fn reaches_follow_milvus_levels_with_database_acts_scoped() {
        for p in [
            "CreateOwnership",
            "ManageOwnership",
            "UpdateUser",
            "CreateDatabase",
        ] {
            assert_eq!(reach(p), Reach::Cluster, "{p}");
        }
        for p in [
            "DropDatabase",
            "RenameCollection",
            "AlterDatabase",
            "CreateCollection",
        ] {
            assert_eq!(reach(p), Reach::Database, "{p}");
        }
        for p in ["Query", "DescribeCollection", "CreateAlias", "ListAliases"] {
            assert_eq!(reach(p), Reach::Collection, "{p}");
        }
    }

    fn names(rule: &str, dbs: &[&str], names: &[&str]) -> Vec<(String, String)> {
        let rule = method_privileges::rule(rule).unwrap();
        checks(rule, Target { dbs, names })
            .into_iter()
            .map(|c| (c.db.to_string(), c.name.to_string()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(d, n)| (d.to_string(), n.to_string()))
            .collect()
    }

    #[test]
    fn checks_per_reach() {
        // Cluster-wide: the header's database never counts.
        assert_eq!(
            names("OperateUserRole", &["edb"], &[]),
            pairs(&[("default", "*")])
        );
        assert_eq!(
            names("SelectUser", &["edb"], &["bob"]),
            pairs(&[("default", "bob")])
        );
        // Database: each database named, on `*`.
        assert_eq!(
            names("RenameCollection", &["a", "b"], &["c"]),
            pairs(&[("a", "*"), ("b", "*")])
        );
        // Collection: each pair; nothing named is `*`.
        assert_eq!(
            names("Query", &["a"], &["c", "d"]),
            pairs(&[("a", "c"), ("a", "d")])
        );
        assert_eq!(
            names("DescribeCollection", &["a"], &[]),
            pairs(&[("a", "*")])
        );
        assert_eq!(names("Insert", &[], &[]), pairs(&[("default", "*")]));
    }
}

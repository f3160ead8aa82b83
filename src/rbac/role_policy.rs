//! A role's policy: its stored grants expanded into an in-memory index, and the decision whether a
//! set of roles allows one checked action. This is Milvus's casbin model without casbin:
//!
//! ```text
//! allow ⇔ "admin" ∈ roles
//!        ∨ ∃ role ∈ roles ∪ {public}, grant of role:
//!            grant.object == check.object ∧ glob(grant.db, check.db) ∧ glob(grant.name, check.name)
//!            ∧ (grant.privilege == check.privilege ∨ grant.privilege == "*")
//!          ∨ grant.privilege == All ∧ glob(grant.db, check.db)
//! ```
//!
//! Groups (built-in, legacy and custom) are expanded when a role's policy is built, as
//! Milvus's `ListPolicy` does: each member applies to its own object type, with the object
//! name `*` for Global members. Names are Milvus names (`[A-Za-z_][A-Za-z0-9_$]*`), so a
//! pattern is either `*` or an exact name. A grant naming a privilege or group this build does
//! not know is skipped (it grants nothing) and reported, so a grant written by a newer Milvus
//! can never widen access or poison the rest of the policy.
//!
//! No I/O: the catalog reads grants, `rbac` builds and caches policies from them.

use std::collections::{HashMap, HashSet};

use crate::rbac::privileges::{BuiltinGroups, ObjectType, Privilege, api_name};

/// The built-in roles, defined once by the catalog (`admin` passes every check; every user
/// holds `public` implicitly).
pub use crate::catalog::{ADMIN_ROLE, PUBLIC_ROLE};

/// One stored grant: a `grantee-privileges/{role}/{object}/{db}.{name}` key and the privilege
/// (metastore spelling, `PrivilegeQuery` / `PrivilegeGroupX` / `*`) under its grantee id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Grant {
    pub object: ObjectType,
    pub db: String,
    pub name: String,
    pub privilege: String,
}

/// Custom privilege groups: name → members (API names; may name other custom groups).
pub type CustomGroups = HashMap<String, Vec<String>>;

/// The action a request needs, on which object.
#[derive(Clone, Copy, Debug)]
pub struct Check<'a> {
    pub object: ObjectType,
    pub privilege: Privilege,
    pub db: &'a str,
    pub name: &'a str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Pattern {
    Any,
    Exact(Box<str>),
}

impl Pattern {
    fn new(raw: &str) -> Pattern {
        match raw {
            "*" => Pattern::Any,
            exact => Pattern::Exact(exact.into()),
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(exact) => **exact == *value,
        }
    }
}

/// Where a granted privilege applies. `object: None` (the `All` privilege) is any object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Scope {
    object: Option<ObjectType>,
    db: Pattern,
    name: Pattern,
}

impl Scope {
    fn matches(&self, check: &Check<'_>) -> bool {
        self.object.is_none_or(|o| o == check.object)
            && self.db.matches(check.db)
            && self.name.matches(check.name)
    }
}

/// The scopes of one privilege, indexed by exact object name so a check looks at the few
/// scopes naming its object plus the wildcard ones, not at every grant of the role.
#[derive(Clone, Debug, Default)]
struct Scopes {
    by_name: HashMap<Box<str>, Vec<Scope>>,
    any_name: Vec<Scope>,
}

impl Scopes {
    fn push(&mut self, scope: Scope) {
        match &scope.name {
            Pattern::Exact(name) => self.by_name.entry(name.clone()).or_default().push(scope),
            Pattern::Any => self.any_name.push(scope),
        }
    }

    fn matches(&self, check: &Check<'_>) -> bool {
        let named = self
            .by_name
            .get(check.name)
            .is_some_and(|scopes| scopes.iter().any(|s| s.matches(check)));
        named || self.any_name.iter().any(|s| s.matches(check))
    }

    fn dedup(&mut self) {
        self.by_name.values_mut().for_each(dedup);
        dedup(&mut self.any_name);
    }

    fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.by_name.values().flatten().chain(&self.any_name)
    }
}

/// One role's grants, expanded and indexed by privilege and object name.
#[derive(Clone, Debug, Default)]
pub struct RolePolicy {
    by_privilege: HashMap<Privilege, Scopes>,
    /// Grants of `*` and `All`: they match any privilege.
    any_privilege: Scopes,
    /// Stored privilege names this build could not resolve (granting nothing).
    unresolved: Vec<String>,
}

/// How deep custom groups may nest (a group naming a group naming a group …).
const MAX_GROUP_DEPTH: usize = 8;

impl RolePolicy {
    /// Expands `grants` through the built-in and custom groups.
    pub fn build(grants: &[Grant], builtin: &BuiltinGroups, custom: &CustomGroups) -> RolePolicy {
        let mut policy = RolePolicy::default();
        for grant in grants {
            policy.add(grant, builtin, custom);
        }
        policy.by_privilege.values_mut().for_each(Scopes::dedup);
        policy.any_privilege.dedup();
        policy
    }

    fn add(&mut self, grant: &Grant, builtin: &BuiltinGroups, custom: &CustomGroups) {
        let scope = Scope {
            object: Some(grant.object),
            db: Pattern::new(&grant.db),
            name: Pattern::new(&grant.name),
        };
        if grant.privilege == "*" {
            self.any_privilege.push(scope);
            return;
        }
        let name = api_name(&grant.privilege);
        match Privilege::from_api(name) {
            Some(p) if p.is_all() => self.any_privilege.push(Scope {
                object: None,
                name: Pattern::Any,
                ..scope
            }),
            Some(p) => self.by_privilege.entry(p).or_default().push(scope),
            None => {
                let mut members = HashSet::new();
                if expand(name, builtin, custom, 0, &mut members) {
                    for member in members {
                        self.add_member(member, grant);
                    }
                } else {
                    self.unresolved.push(grant.privilege.clone());
                }
            }
        }
    }

    /// A group member applies to its own object type, within the grant's database and name:
    /// a group granted on one collection grants its members on that collection only, Global
    /// members included (Milvus 2.5 lets them reach every name of the database; see the
    /// README's differences).
    fn add_member(&mut self, member: Privilege, grant: &Grant) {
        let scope = Scope {
            object: Some(member.object_type()),
            db: Pattern::new(&grant.db),
            name: Pattern::new(&grant.name),
        };
        if member.is_all() {
            self.any_privilege.push(Scope {
                object: None,
                name: Pattern::Any,
                ..scope
            });
        } else {
            self.by_privilege.entry(member).or_default().push(scope);
        }
    }

    /// Whether this role's grants allow `check`.
    pub fn allows(&self, check: &Check<'_>) -> bool {
        let granted = self
            .by_privilege
            .get(&check.privilege)
            .is_some_and(|scopes| scopes.matches(check));
        granted || self.any_privilege.matches(check)
    }

    /// Whether this role may see collection `name` of `db` in a listing: it holds some
    /// privilege on that collection (or on every collection, or `All`), or Global
    /// `ShowCollections`, which lists every collection of the database.
    pub fn sees_collection(&self, db: &str, name: &str) -> bool {
        let on_it = |s: &Scope| {
            s.object.is_none_or(|o| o == ObjectType::Collection)
                && s.db.matches(db)
                && s.name.matches(name)
        };
        let lists_all = Privilege::from_api("ShowCollections")
            .and_then(|p| self.by_privilege.get(&p))
            .is_some_and(|scopes| {
                scopes
                    .iter()
                    .any(|s| s.object == Some(ObjectType::Global) && s.db.matches(db))
            });
        lists_all
            || self.any_privilege.iter().any(on_it)
            || self
                .by_privilege
                .values()
                .any(|scopes| scopes.iter().any(on_it))
    }

    /// Whether this role holds any grant in `db` (a grant in `*` counts): the databases a
    /// `ListDatabases` answer shows the caller, as Milvus 2.4+ cuts it.
    pub fn reaches_db(&self, db: &str) -> bool {
        self.any_privilege.iter().any(|s| s.db.matches(db))
            || self
                .by_privilege
                .values()
                .any(|scopes| scopes.iter().any(|s| s.db.matches(db)))
    }

    /// Whether this role holds `privilege` on any object at all (or `*` / `All` anywhere).
    pub fn mentions(&self, privilege: Privilege) -> bool {
        self.by_privilege.contains_key(&privilege)
            || !self.any_privilege.any_name.is_empty()
            || !self.any_privilege.by_name.is_empty()
    }

    /// Stored privilege names that granted nothing (unknown to this build).
    pub fn unresolved(&self) -> &[String] {
        &self.unresolved
    }
}

/// Adds the members of group `name` to `out`; false when `name` is no group at all.
fn expand(
    name: &str,
    builtin: &BuiltinGroups,
    custom: &CustomGroups,
    depth: usize,
    out: &mut HashSet<Privilege>,
) -> bool {
    if let Some(members) = builtin.members(name) {
        out.extend(members.iter().copied());
        return true;
    }
    let Some(members) = custom.get(name) else {
        return false;
    };
    for member in members {
        match Privilege::from_api(member) {
            Some(p) => {
                out.insert(p);
            }
            None if depth < MAX_GROUP_DEPTH => {
                expand(member, builtin, custom, depth + 1, out);
            }
            None => {}
        }
    }
    true
}

fn dedup(scopes: &mut Vec<Scope>) {
    let mut seen = HashSet::new();
    scopes.retain(|s| seen.insert(s.clone()));
}

/// Whether a user holding `roles` may do `check`: `admin` passes; otherwise any of the roles
/// or the implicit `public` must allow it. `policy_of` returns a role's policy (`None`: the
/// role has no grants).
pub fn allowed<'p>(
    roles: &[String],
    policy_of: impl Fn(&str) -> Option<&'p RolePolicy>,
    check: &Check<'_>,
) -> bool {
    if roles.iter().any(|r| r == ADMIN_ROLE) {
        return true;
    }
    let holds = |role: &str| policy_of(role).is_some_and(|p| p.allows(check));
    roles.iter().any(|r| holds(r))
        || (!roles.iter().any(|r| r == PUBLIC_ROLE) && holds(PUBLIC_ROLE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(object: ObjectType, db: &str, name: &str, privilege: &str) -> Grant {
        Grant {
            object,
            db: db.into(),
            name: name.into(),
            privilege: privilege.into(),
        }
    }

    fn check<'a>(object: ObjectType, privilege: &str, db: &'a str, name: &'a str) -> Check<'a> {
        Check {
            object,
            privilege: Privilege::from_api(privilege).unwrap(),
            db,
            name,
        }
    }

    fn policy(grants: &[Grant]) -> RolePolicy {
        let mut custom = CustomGroups::new();
        custom.insert("readers".into(), vec!["Query".into(), "Search".into()]);
        custom.insert("nested".into(), vec!["readers".into(), "Insert".into()]);
        custom.insert("loop".into(), vec!["loop".into(), "Load".into()]);
        RolePolicy::build(grants, &BuiltinGroups::default(), &custom)
    }

    use ObjectType::{Collection, Global, User};

    #[test]
    fn listings_show_the_collections_a_role_reaches() {
        use ObjectType::{Collection, Global};
        let reader = policy(&[grant(Collection, "default", "books", "PrivilegeQuery")]);
        assert!(reader.sees_collection("default", "books"));
        assert!(!reader.sees_collection("default", "films"));
        assert!(!reader.sees_collection("other", "books"));
        let every = policy(&[grant(Collection, "*", "*", "PrivilegeSearch")]);
        assert!(every.sees_collection("any", "films"));
        let group = policy(&[grant(Collection, "default", "films", "readers")]);
        assert!(group.sees_collection("default", "films"));
        let lister = policy(&[grant(Global, "default", "*", "PrivilegeShowCollections")]);
        assert!(lister.sees_collection("default", "films"));
        assert!(!lister.sees_collection("other", "films"));
        let all = policy(&[grant(Global, "*", "*", "PrivilegeAll")]);
        assert!(all.sees_collection("default", "films"));
        // A Global privilege other than ShowCollections lists nothing.
        let creator = policy(&[grant(Global, "*", "*", "PrivilegeCreateCollection")]);
        assert!(!creator.sees_collection("default", "films"));
        assert!(!RolePolicy::default().sees_collection("default", "films"));
    }

    #[test]
    fn a_single_privilege_matches_its_object_db_and_name() {
        let p = policy(&[grant(Collection, "default", "c1", "PrivilegeInsert")]);
        assert!(p.allows(&check(Collection, "Insert", "default", "c1")));
        assert!(!p.allows(&check(Collection, "Insert", "default", "c2")));
        assert!(!p.allows(&check(Collection, "Insert", "db1", "c1")));
        assert!(!p.allows(&check(Collection, "Query", "default", "c1")));
        assert!(!p.allows(&check(Global, "Insert", "default", "c1")));
    }

    #[test]
    fn stars_glob_db_name_and_privilege() {
        let p = policy(&[
            grant(Collection, "*", "c1", "PrivilegeQuery"),
            grant(Collection, "db2", "*", "*"),
        ]);
        assert!(p.allows(&check(Collection, "Query", "db9", "c1")));
        assert!(p.allows(&check(Collection, "Delete", "db2", "anything")));
        assert!(!p.allows(&check(Global, "CreateCollection", "db2", "*")));
        assert!(!p.allows(&check(Collection, "Delete", "db3", "c1")));
    }

    #[test]
    fn all_matches_every_privilege_in_its_db() {
        let p = policy(&[grant(Global, "db1", "*", "PrivilegeAll")]);
        assert!(p.allows(&check(Collection, "Insert", "db1", "c1")));
        assert!(p.allows(&check(User, "UpdateUser", "db1", "bob")));
        assert!(!p.allows(&check(Collection, "Insert", "db2", "c1")));
    }

    #[test]
    fn builtin_groups_expand_per_member_object_type() {
        // grant_v2("CollectionReadOnly", "c1", "db1") is stored as object Global, db1.c1.
        let p = policy(&[grant(
            Global,
            "db1",
            "c1",
            "PrivilegeGroupCollectionReadOnly",
        )]);
        assert!(p.allows(&check(Collection, "Query", "db1", "c1")));
        assert!(!p.allows(&check(Collection, "Query", "db1", "c2")));
        assert!(!p.allows(&check(Collection, "Insert", "db1", "c1")));
        // A Global member applies to the granted collection only, never db-wide.
        assert!(p.allows(&check(Global, "DescribeCollection", "db1", "c1")));
        assert!(!p.allows(&check(Global, "DescribeCollection", "db1", "c2")));
        assert!(!p.allows(&check(Global, "DescribeCollection", "db1", "*")));
        assert!(p.mentions(Privilege::from_api("Query").unwrap()));
        assert!(!p.mentions(Privilege::from_api("Insert").unwrap()));
        let admin = policy(&[grant(Global, "*", "*", "PrivilegeGroupClusterAdmin")]);
        assert!(admin.allows(&check(User, "UpdateUser", "default", "bob")));
        assert!(admin.allows(&check(Global, "CreateOwnership", "default", "*")));
        assert!(
            !admin.allows(&check(Collection, "Insert", "default", "c1")),
            "no cascade"
        );
    }

    #[test]
    fn custom_groups_nest_and_loops_end() {
        let p = policy(&[
            grant(Global, "default", "c1", "PrivilegeGroupnested"),
            grant(Global, "default", "c2", "PrivilegeGrouploop"),
        ]);
        assert!(p.allows(&check(Collection, "Search", "default", "c1")));
        assert!(p.allows(&check(Collection, "Insert", "default", "c1")));
        assert!(p.allows(&check(Collection, "Load", "default", "c2")));
        assert!(p.unresolved().is_empty());
    }

    #[test]
    fn unknown_privileges_grant_nothing_and_poison_nothing() {
        let p = policy(&[
            grant(Global, "*", "*", "PrivilegeGroupFromTheFuture"),
            grant(Collection, "default", "c1", "PrivilegeQuery"),
        ]);
        assert_eq!(p.unresolved(), ["PrivilegeGroupFromTheFuture"]);
        assert!(p.allows(&check(Collection, "Query", "default", "c1")));
        assert!(!p.allows(&check(Collection, "Insert", "default", "c1")));
    }

    #[test]
    fn admin_passes_and_public_is_implicit() {
        let public = policy(&[grant(Global, "*", "*", "PrivilegeDescribeCollection")]);
        let reader = policy(&[grant(Collection, "default", "c1", "PrivilegeQuery")]);
        let lookup = |role: &str| match role {
            PUBLIC_ROLE => Some(&public),
            "reader" => Some(&reader),
            _ => None,
        };
        let describe = check(Global, "DescribeCollection", "db1", "*");
        let query = check(Collection, "Query", "default", "c1");
        let insert = check(Collection, "Insert", "default", "c1");
        assert!(
            allowed(&[], lookup, &describe),
            "public applies to everyone"
        );
        assert!(!allowed(&[], lookup, &query));
        assert!(allowed(&["reader".into()], lookup, &query));
        assert!(!allowed(&["reader".into()], lookup, &insert));
        assert!(allowed(&["admin".into()], lookup, &insert));
        assert!(!allowed(&["missing".into()], lookup, &insert));
    }
}

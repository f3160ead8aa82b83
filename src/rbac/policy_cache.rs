//! `Policies`: the per-replica cache of authorization state — each user's roles, each role's
//! expanded policy, the custom privilege groups — and the allow check on them (`allows`) that
//! `decision.rs` asks.
//!
//! A decision on cached state is a few in-memory lookups (no etcd read). A miss reads the
//! catalog; a read error is returned to the caller (fail closed: never an empty policy that
//! denies everything, never a partial one that allows too much). Invalidation comes from the
//! same watch as passwords (`coherence` calls [`Policies::invalidate`] for every changed
//! key): a load that started before an invalidation it raced with is not cached (an epoch
//! recorded before the read must still be current when the result is inserted).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::auth::{Authenticated, Roles};
use crate::catalog::{Catalog, CatalogError, ChangedKey, ROOT_USER, StoredGrant};
use crate::rbac::privileges::{BuiltinGroups, ObjectType};
use crate::rbac::role_policy::{ADMIN_ROLE, Check, CustomGroups, Grant, PUBLIC_ROLE, RolePolicy};

/// What a changed key means for the cached authorization state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyChange {
    /// `user-role-mapping/{user}/…` or `users/{user}`: the user's roles.
    User(String),
    /// `roles/{role}` or `grantee-privileges/{role}/…`: one role's policy.
    Role(String),
    /// `grantee-id/…` or a privilege group: any role's policy may have changed.
    All,
    /// The alias epoch: any alias may point elsewhere now.
    Aliases,
}

/// The cached authorization state of one replica; cheap to clone.
#[derive(Clone)]
pub struct Policies {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Catalog,
    builtin: BuiltinGroups,
    user_roles: moka::sync::Cache<String, Arc<Vec<String>>>,
    roles: moka::sync::Cache<String, Arc<RolePolicy>>,
    groups: RwLock<Option<Arc<CustomGroups>>>,
    /// (db, name) → the collection the name resolves to (itself when it is no alias), as
    /// the proxy tier last learnt it from the upstream.
    aliases: moka::sync::Cache<(String, String), Arc<str>>,
    /// `common.security.rootShouldBindRole`: root is checked through its roles like anyone.
    root_binds_role: bool,
    /// Bumped by every invalidation; a load inserts only if it is unchanged since its read.
    epoch: AtomicU64,
}

impl Policies {
    pub fn new(
        catalog: Catalog,
        builtin: BuiltinGroups,
        capacity: u64,
        root_binds_role: bool,
    ) -> Policies {
        let inner = Inner {
            catalog,
            builtin,
            user_roles: moka::sync::Cache::new(capacity),
            roles: moka::sync::Cache::new(capacity),
            groups: RwLock::new(None),
            aliases: moka::sync::Cache::new(capacity),
            root_binds_role,
            epoch: AtomicU64::new(0),
        };
        Policies {
            inner: Arc::new(inner),
        }
    }

    pub fn builtin_groups(&self) -> &BuiltinGroups {
        &self.inner.builtin
    }

    /// Whether `who` passes every check without looking at grants: root with its own roles,
    /// unless `common.security.rootShouldBindRole` (an API key of root that lists roles is
    /// limited to them); everyone when authorization is disabled (no name).
    pub fn exempt(&self, who: &Authenticated) -> bool {
        match who.name() {
            None => true,
            Some(user) => self.exempt_name(user) && *who.roles() == Roles::Stored,
        }
    }

    fn exempt_name(&self, user: &str) -> bool {
        user == ROOT_USER && !self.inner.root_binds_role
    }

    /// The roles that count for `who` — the one place where a credential's limits are
    /// honoured: a password's (or an unlimited API key's) stored roles; for an API key with a
    /// role list, the stored roles that are listed (all listed ones for an exempt owner);
    /// for an OIDC identity, the roles its token mapped to.
    pub async fn roles_of(&self, who: &Authenticated) -> Result<Arc<Vec<String>>, CatalogError> {
        let Some(user) = who.name() else {
            return Ok(Arc::default());
        };
        match who.roles() {
            Roles::Stored => self.user_roles(user).await,
            Roles::Given(roles) => Ok(roles.clone()),
            Roles::Within(listed) if self.exempt_name(user) => Ok(listed.clone()),
            Roles::Within(listed) => {
                let stored = self.user_roles(user).await?;
                Ok(Arc::new(
                    stored
                        .iter()
                        .filter(|role| listed.contains(role))
                        .cloned()
                        .collect(),
                ))
            }
        }
    }

    /// Whether `who` may do `check` — the decision for a request: an exempt root passes; so
    /// does `admin` among the roles that count for it ([`Policies::roles_of`]); otherwise one
    /// of those roles or the implicit `public` must allow it.
    pub async fn allows_as(
        &self,
        who: &Authenticated,
        check: &Check<'_>,
    ) -> Result<bool, CatalogError> {
        if self.exempt(who) {
            return Ok(true);
        }
        let roles = self.roles_of(who).await?;
        self.roles_allow(&roles, check).await
    }

    /// Whether the local user `user`, with all of their stored roles (a password's view), may
    /// do `check`. Requests are decided by [`Policies::allows_as`], which honours a
    /// credential's limits.
    pub async fn allows(&self, user: &str, check: &Check<'_>) -> Result<bool, CatalogError> {
        if self.exempt_name(user) {
            return Ok(true);
        }
        let roles = self.user_roles(user).await?;
        self.roles_allow(&roles, check).await
    }

    async fn roles_allow(&self, roles: &[String], check: &Check<'_>) -> Result<bool, CatalogError> {
        if roles.iter().any(|r| r == ADMIN_ROLE) {
            return Ok(true);
        }
        let implicit = (!roles.iter().any(|r| r == PUBLIC_ROLE)).then_some(PUBLIC_ROLE);
        for role in roles.iter().map(String::as_str).chain(implicit) {
            if self.role_policy(role).await?.allows(check) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether `who` holds `privilege` on some object in some database (for refusing a
    /// request before its body is read): an exempt root and `admin` do.
    pub async fn holds_anywhere(
        &self,
        who: &Authenticated,
        privilege: crate::rbac::Privilege,
    ) -> Result<bool, CatalogError> {
        Ok(match self.restricted_policies(who).await? {
            None => true,
            Some(policies) => policies.iter().any(|p| p.mentions(privilege)),
        })
    }

    /// Which of `dbs` `who` may see in a listing: all for an exempt root and `admin`;
    /// otherwise those one of their roles (or `public`) holds a grant in.
    pub async fn visible_databases(
        &self,
        who: &Authenticated,
        dbs: &[String],
    ) -> Result<Vec<bool>, CatalogError> {
        let Some(policies) = self.restricted_policies(who).await? else {
            return Ok(vec![true; dbs.len()]);
        };
        Ok(dbs
            .iter()
            .map(|db| policies.iter().any(|p| p.reaches_db(db)))
            .collect())
    }

    /// The policies of `who`'s roles ([`Policies::roles_of`]) and `public`; `None` for an
    /// exempt root or `admin`, who see everything.
    async fn restricted_policies(
        &self,
        who: &Authenticated,
    ) -> Result<Option<Vec<Arc<RolePolicy>>>, CatalogError> {
        if self.exempt(who) {
            return Ok(None);
        }
        let roles = self.roles_of(who).await?;
        if roles.iter().any(|r| r == ADMIN_ROLE) {
            return Ok(None);
        }
        let implicit = (!roles.iter().any(|r| r == PUBLIC_ROLE)).then_some(PUBLIC_ROLE);
        let mut policies = Vec::new();
        for role in roles.iter().map(String::as_str).chain(implicit) {
            policies.push(self.role_policy(role).await?);
        }
        Ok(Some(policies))
    }

    /// Which of `names` (collections of `db`) `who` may see in a listing: all for an exempt
    /// root and `admin`; otherwise those one of their roles or `public` sees
    /// ([`RolePolicy::sees_collection`]).
    pub async fn visible_collections(
        &self,
        who: &Authenticated,
        db: &str,
        names: &[String],
    ) -> Result<Vec<bool>, CatalogError> {
        let Some(policies) = self.restricted_policies(who).await? else {
            return Ok(vec![true; names.len()]);
        };
        Ok(names
            .iter()
            .map(|name| policies.iter().any(|p| p.sees_collection(db, name)))
            .collect())
    }

    /// The roles granted to `user` (cached).
    pub async fn user_roles(&self, user: &str) -> Result<Arc<Vec<String>>, CatalogError> {
        if let Some(roles) = self.inner.user_roles.get(user) {
            return Ok(roles);
        }
        let epoch = self.epoch();
        let roles = Arc::new(self.inner.catalog.user_roles(user).await?);
        self.insert_if_current(epoch, || {
            self.inner
                .user_roles
                .insert(user.to_string(), roles.clone())
        });
        Ok(roles)
    }

    /// One role's expanded policy (cached; a role without grants has an empty policy).
    pub async fn role_policy(&self, role: &str) -> Result<Arc<RolePolicy>, CatalogError> {
        if let Some(policy) = self.inner.roles.get(role) {
            return Ok(policy);
        }
        let epoch = self.epoch();
        let groups = self.custom_groups(epoch).await?;
        let stored = self.inner.catalog.role_grants(role).await?;
        let grants: Vec<Grant> = stored.iter().filter_map(to_grant).collect();
        let policy = Arc::new(RolePolicy::build(&grants, &self.inner.builtin, &groups));
        if !policy.unresolved().is_empty() {
            tracing::warn!(role, unresolved = ?policy.unresolved(), "grants of unknown privileges grant nothing");
        }
        self.insert_if_current(epoch, || {
            self.inner.roles.insert(role.to_string(), policy.clone())
        });
        Ok(policy)
    }

    async fn custom_groups(&self, epoch: u64) -> Result<Arc<CustomGroups>, CatalogError> {
        if let Some(groups) = self.read_groups().clone() {
            return Ok(groups);
        }
        let stored = self.inner.catalog.privilege_groups().await?;
        let groups: CustomGroups = stored.into_iter().map(|g| (g.name, g.privileges)).collect();
        let groups = Arc::new(groups);
        self.insert_if_current(epoch, || {
            *self.inner.groups.write().unwrap_or_else(|e| e.into_inner()) = Some(groups.clone())
        });
        Ok(groups)
    }

    fn read_groups(&self) -> std::sync::RwLockReadGuard<'_, Option<Arc<CustomGroups>>> {
        self.inner.groups.read().unwrap_or_else(|e| e.into_inner())
    }

    fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Acquire)
    }

    /// Runs `insert` unless an invalidation happened since `epoch` was read. The insert and a
    /// racing invalidation are ordered by the epoch: an invalidation bumps it before clearing,
    /// so an insert that passes the check is cleared by any invalidation that follows.
    fn insert_if_current(&self, epoch: u64, insert: impl FnOnce()) {
        if self.epoch() == epoch {
            insert();
            if self.epoch() != epoch {
                // An invalidation ran between the check and the insert: start over empty.
                self.clear();
            }
        }
    }

    /// The collection `name` of `db` resolves to, if this replica has learnt it since the
    /// last alias change.
    pub fn cached_alias(&self, db: &str, name: &str) -> Option<Arc<str>> {
        self.inner.aliases.get(&(db.to_string(), name.to_string()))
    }

    /// A token to pass to [`Policies::remember_alias`]: taken before asking the upstream, so
    /// an answer that raced an alias change is not kept.
    pub fn alias_token(&self) -> u64 {
        self.epoch()
    }

    /// Keeps what `name` of `db` resolved to, unless anything was invalidated since `token`.
    pub fn remember_alias(&self, token: u64, db: &str, name: &str, target: Arc<str>) {
        self.insert_if_current(token, || {
            self.inner
                .aliases
                .insert((db.to_string(), name.to_string()), target.clone())
        });
    }

    /// Applies a changed key's meaning to the cache.
    pub fn invalidate(&self, change: &PolicyChange) {
        self.inner.epoch.fetch_add(1, Ordering::AcqRel);
        match change {
            PolicyChange::User(user) => self.inner.user_roles.invalidate(user),
            PolicyChange::Role(role) => self.inner.roles.invalidate(role),
            PolicyChange::All => self.clear(),
            PolicyChange::Aliases => self.inner.aliases.invalidate_all(),
        }
    }

    /// Drops everything (a re-sync or a compacted watch).
    pub fn invalidate_all(&self) {
        self.invalidate(&PolicyChange::All);
    }

    fn clear(&self) {
        self.inner.user_roles.invalidate_all();
        self.inner.roles.invalidate_all();
        self.inner.aliases.invalidate_all();
        *self.inner.groups.write().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl PolicyChange {
    /// The meaning of a changed catalog key; `None` when it does not affect authorization.
    pub fn of(key: ChangedKey<'_>) -> Option<PolicyChange> {
        match key {
            ChangedKey::User(user) | ChangedKey::Mapping { user, .. } => {
                Some(PolicyChange::User(user.to_string()))
            }
            ChangedKey::Role(role) | ChangedKey::Grantee { role } => {
                Some(PolicyChange::Role(role.to_string()))
            }
            ChangedKey::GranteeId | ChangedKey::PrivilegeGroup => Some(PolicyChange::All),
            ChangedKey::AliasEpoch => Some(PolicyChange::Aliases),
        }
    }
}

/// A stored grant as the policy sees it; `None` for an object type this build does not know
/// (it grants nothing).
fn to_grant(stored: &StoredGrant) -> Option<Grant> {
    Some(Grant {
        object: ObjectType::parse(&stored.target.object)?,
        db: stored.target.db.clone(),
        name: stored.target.name.clone(),
        privilege: stored.privilege.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::catalog::RoleName;
    use crate::meta::{EmbeddedKv, Store};
    use crate::password::{Limits, PasswordHash, Username};

    /// A key's role list limits its owner's roles; root holds exactly the listed ones; an
    /// OIDC identity holds its mapped roles and nothing from the store.
    #[tokio::test]
    async fn the_roles_that_count_follow_the_credential() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Embedded(EmbeddedKv::open(&dir.path().join("kv.redb")).unwrap());
        let catalog = Catalog::new(store, "t/meta");
        catalog.ensure_default_roles().await.unwrap();
        let hash =
            PasswordHash::parse("$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy")
                .unwrap();
        let name = |raw: &str| Username::parse(raw, &Limits::default()).unwrap();
        catalog
            .create_user(&name("alice"), &hash, None)
            .await
            .unwrap();
        for role in ["reader", "writer"] {
            let role = RoleName::parse(role).unwrap();
            catalog.create_role(&role).await.unwrap();
            catalog
                .add_user_to_role(&name("alice"), &role)
                .await
                .unwrap();
        }
        let policies = Policies::new(catalog, BuiltinGroups::default(), 100, false);
        let list = |roles: &[&str]| Arc::new(roles.iter().map(|r| r.to_string()).collect());
        let check = async |who: Authenticated, expected: &[&str], exempt: bool| {
            let got = policies.roles_of(&who).await.unwrap();
            assert_eq!(*got, expected.to_vec(), "{who:?}");
            assert_eq!(policies.exempt(&who), exempt, "{who:?}");
        };
        check(
            Authenticated::user(name("alice"), false),
            &["reader", "writer"],
            false,
        )
        .await;
        check(
            Authenticated::api_key(name("alice"), false, None),
            &["reader", "writer"],
            false,
        )
        .await;
        let limited =
            Authenticated::api_key(name("alice"), false, Some(list(&["reader", "admin"])));
        check(limited, &["reader"], false).await;
        check(Authenticated::user(name("root"), true), &[], true).await;
        let root_key = Authenticated::api_key(name("root"), false, Some(list(&["admin"])));
        check(root_key, &["admin"], false).await;
        let external = Authenticated::external("oidc:alice".into(), list(&["writer"]));
        check(external, &["writer"], false).await;
        check(Authenticated::unchecked(), &[], true).await;
    }
}

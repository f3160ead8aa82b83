//! [`Gate`]: whether the caller may make a forwarded call — Milvus's privilege interceptor.
//! root passes unless `common.security.rootShouldBindRole` is set; a method
//! with a privilege rule needs that privilege on every object the request names, in the db
//! of the `dbname` header; a method without a rule is for root and `admin` only (fail safe).
//! Object names are read from the encoded request (`rbac::methods`); an unreadable body is
//! refused for everyone, root included, so the upstream never parses what the tier could not.

use std::collections::HashSet;
use std::sync::Mutex;

use tonic::Status;

use crate::auth::Authenticated;
use crate::rbac::{ADMIN_ROLE, Check, Policies, methods};

/// Authorization of forwarded calls; cheap to share behind an `Arc`.
pub struct Gate {
    policies: Policies,
    /// Methods without a rule already logged (once each).
    logged: Mutex<HashSet<String>>,
}

impl Gate {
    pub fn new(policies: Policies) -> Gate {
        Gate {
            policies,
            logged: Mutex::new(HashSet::new()),
        }
    }

    /// The policies this gate decides by (for answers cut to the caller's grants).
    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// `Ok` when `caller` may call `method` with `body` in `db`; otherwise the status to
    /// answer: INVALID_ARGUMENT (unreadable body), PERMISSION_DENIED (Milvus's text) or
    /// UNAVAILABLE (the policy could not be loaded).
    pub async fn authorize(
        &self,
        caller: &Authenticated,
        method: &str,
        db: &str,
        body: &[u8],
    ) -> Result<(), Status> {
        let rule = methods::rule(method);
        let names = match rule {
            Some(rule) => rule
                .object_names(body)
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
            None => Vec::new(),
        };
        let Some(user) = caller.name() else {
            // Authorization is disabled: everything is allowed, as in Milvus.
            return Ok(());
        };
        // Reflected methods need no privilege; filtered ones are cut to the caller's grants.
        use crate::proxy::methods::{FILTERED, REFLECTED};
        if REFLECTED.contains(&method) || FILTERED.contains(&method) {
            return Ok(());
        }
        if self.policies.exempt(caller) {
            return Ok(());
        }
        let Some(rule) = rule else {
            self.log_once(method);
            let roles = self.policies.roles_of(caller).await.map_err(unavailable)?;
            return match roles.iter().any(|r| r == ADMIN_ROLE) {
                true => Ok(()),
                false => Err(Status::permission_denied(format!(
                    "{method} has no privilege in Milvus and is allowed to root and the admin role only: permission deny to {user} in the `{db}` database"
                ))),
            };
        };
        for name in &names {
            let check = Check {
                object: rule.object,
                privilege: rule.privilege,
                db,
                name,
            };
            if !self
                .policies
                .allows_as(caller, &check)
                .await
                .map_err(unavailable)?
            {
                tracing::debug!(user, method, db, name = %name, "forwarded call denied");
                return Err(Status::permission_denied(format!(
                    "{}: permission deny to {user} in the `{db}` database",
                    rule.privilege.metastore_name()
                )));
            }
        }
        Ok(())
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

fn unavailable(e: crate::catalog::CatalogError) -> Status {
    tracing::warn!(error = %e, "cannot load the authorization policy");
    Status::unavailable(format!("cannot load the authorization policy: {e}"))
}

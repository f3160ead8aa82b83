//! Authorization the Milvus way: the privilege catalogue and built-in groups
//! ([`privileges`]), a role's grants expanded into its policy and the allow check
//! ([`role_policy`]), which privilege each `MilvusService` method needs
//! ([`method_privileges`], from `methods.tsv`), the per-replica cache of roles and policies
//! ([`policy_cache`]), the one decision both doors ask ([`decision`]) and Milvus's grant rules
//! and texts ([`validate`]).
//!
//! No gRPC types and no etcd: the catalog stores grants in Milvus's layout, `policy_cache`
//! reads them through it; the service and the proxy tier ask for decisions.

pub mod decision;
pub mod method_privileges;
pub mod policy_cache;
pub mod privileges;
pub mod role_policy;
pub mod validate;

pub use decision::{Denial, Reach, Refused, Target, decide, may_hold};
pub use method_privileges::MethodRule;
pub use policy_cache::{Policies, PolicyChange};
pub use privileges::{BuiltinGroups, Level, ObjectType, Privilege};
pub use role_policy::{ADMIN_ROLE, Check, CustomGroups, Grant, PUBLIC_ROLE, RolePolicy, allowed};

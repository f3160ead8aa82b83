//! Authorization the Milvus way: the privilege catalogue and built-in groups
//! ([`privileges`]), the policy a role's grants expand into and the allow/deny decision
//! ([`policy`]), which privilege each `MilvusService` method needs ([`methods`]), and the
//! per-replica cache of roles and policies that answers a request ([`policies`]).
//!
//! No gRPC types and no etcd: the catalog stores grants in Milvus's layout, `policies` reads
//! them through it; the service and the proxy tier ask for decisions.

pub mod decision;
pub mod methods;
pub mod policies;
pub mod policy;
pub mod privileges;
pub mod validate;

pub use decision::{Denial, Reach, Refused, Target, decide, may_hold};
pub use methods::MethodRule;
pub use policies::{Policies, PolicyChange};
pub use policy::{ADMIN_ROLE, Check, CustomGroups, Grant, PUBLIC_ROLE, RolePolicy, allowed};
pub use privileges::{BuiltinGroups, Level, ObjectType, Privilege};

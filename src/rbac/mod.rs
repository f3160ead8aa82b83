//! Authorization the Milvus way: the privilege catalogue and built-in groups
//! ([`privileges`]), the policy a role's grants expand into and the allow/deny decision
//! ([`policy`]), and which privilege each `MilvusService` method needs ([`methods`]).
//!
//! Pure logic: no I/O, no gRPC types, no etcd. The catalog stores grants in Milvus's layout;
//! the service and the proxy tier ask these modules for decisions.

pub mod methods;
pub mod policy;
pub mod privileges;

pub use methods::{MethodRule, NameError};
pub use policy::{ADMIN_ROLE, Check, CustomGroups, Grant, PUBLIC_ROLE, RolePolicy, allowed};
pub use privileges::{BuiltinGroups, Level, ObjectType, Privilege};

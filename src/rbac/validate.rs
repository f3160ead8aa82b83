//! Milvus's rules for grant requests and privilege groups, with Milvus's texts: which
//! privilege names a v1 or v2 grant may use, which object it lands on, the level rules of
//! groups, and privilege-group names. Pure: the service reads the request, asks here, then
//! writes through the catalog.

use crate::rbac::privileges::{
    self, BUILTIN_GROUP_NAMES, Level, ObjectType, Privilege, is_builtin_group, is_defined,
};

/// A grant or group request Milvus would refuse, with Milvus's words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the grant entity in the request is nil")]
    NoGrantEntity,
    #[error("the role entity in the grant entity is nil")]
    NoGrantRole,
    #[error("the object entity in the request is nil or invalid")]
    BadObject,
    #[error("the privilege entity in the grant entity is nil")]
    NoPrivilege,
    #[error(
        "invalid name {0}: the first character must be an underscore or a letter, then letters, digits, underscores or dollar signs, at most 255"
    )]
    BadName(String),
    #[error("can not operate the custom privilege group [{0}]")]
    CustomGroupInV1(String),
    #[error("can not operate the built-in privilege group [{0}]")]
    BuiltinGroupInV1(String),
    #[error("not found the privilege name[{name}] in object[{object}]")]
    NotInObject { name: String, object: &'static str },
    #[error("not found the privilege name[{0}]")]
    UnknownPrivilege(String),
    #[error("dbName and collectionName should be * for the cluster level privilege: {0}")]
    ClusterLevel(String),
    #[error("collectionName should be * for the database level privilege: {0}")]
    DatabaseLevel(String),
    #[error("please specify database name for the collection level privilege: {0}")]
    CollectionLevel(String),
    #[error("invalid privilege group name: {0}")]
    BadGroupName(String),
    #[error("privilege group name [{0}] is defined by users")]
    GroupExists(String),
    #[error(
        "privilege group name [{0}] is defined by built in privileges or privilege groups in system"
    )]
    GroupIsBuiltin(String),
    #[error(
        "privilege group [{group}] is used by role [{role}], Use REVOKE API to revoke it first"
    )]
    GroupInUse { group: String, role: String },
    #[error("privileges are not the same privilege level")]
    MixedLevels,
    #[error("the privileges in the request are empty")]
    NoPrivileges,
    #[error("fail to drop the role that it has privileges. Use REVOKE API to revoke privileges")]
    RoleHasGrants,
    #[error("unable to create role because the number of roles has reached the limit: {0}")]
    TooManyRoles(usize),
    // RestoreRBAC (Milvus's `CheckIfRBACRestorable` texts, and credstore's hash check).
    #[error("rbac meta is empty")]
    EmptyRbacMeta,
    #[error("role [{0}] already exists")]
    RestoreRoleExists(String),
    #[error("privilege group [{0}] already exists")]
    RestoreGroupExists(String),
    #[error("privilege [{0}] does not exist")]
    RestorePrivilegeUnknown(String),
    #[error("user [{0}] already exists")]
    RestoreUserExists(String),
    #[error("role [{0}] does not exist")]
    RestoreRoleMissing(String),
    #[error("user [{user}]: the password is not a password hash credstore can verify: {reason}")]
    RestoreBadHash { user: String, reason: String },
}

impl Refusal {
    /// Refused by Milvus's proxy before any lookup (code 1100, `is_input_error`); the rest
    /// are refused by its rootcoord (code 65535 with the operation's legacy error code).
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Refusal::NoGrantEntity
                | Refusal::NoGrantRole
                | Refusal::NoPrivilege
                | Refusal::BadName(_)
                | Refusal::ClusterLevel(_)
                | Refusal::DatabaseLevel(_)
                | Refusal::CollectionLevel(_)
                | Refusal::GroupIsBuiltin(_)
        )
    }
}

/// Milvus's `validateName`: `*` aside, 1–255 characters, a letter or `_` first, then letters,
/// digits, `_` or `$`.
pub fn name(raw: &str) -> Result<(), Refusal> {
    let mut chars = raw.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c == '_' || c == '$' || c.is_ascii_alphanumeric());
    match raw.len() <= 255 && first_ok && rest_ok {
        true => Ok(()),
        false => Err(Refusal::BadName(raw.to_string())),
    }
}

/// A name or `*`.
pub fn name_or_star(raw: &str) -> Result<(), Refusal> {
    match raw {
        "*" => Ok(()),
        other => name(other),
    }
}

/// A v1 grant's privilege (`isValidPrivilege`): `*`, or a privilege (or legacy group) listed
/// for the object; groups need v2.
pub fn v1_privilege(
    privilege: &str,
    object: ObjectType,
    is_custom_group: bool,
) -> Result<(), Refusal> {
    if privilege == "*" {
        return Ok(());
    }
    if is_custom_group {
        return Err(Refusal::CustomGroupInV1(privilege.to_string()));
    }
    if BUILTIN_GROUP_NAMES.contains(&privilege) {
        return Err(Refusal::BuiltinGroupInV1(privilege.to_string()));
    }
    match privileges::valid_for_object(privilege, object) {
        true => Ok(()),
        false => Err(Refusal::NotInObject {
            name: privilege.to_string(),
            object: object.as_str(),
        }),
    }
}

/// A v2 grant's privilege (`isValidPrivilegeV2`) and the object type it is stored under
/// (`GetObjectType`: a privilege's own type; groups and `*` are Global).
pub fn v2_privilege(privilege: &str, is_custom_group: bool) -> Result<ObjectType, Refusal> {
    if privilege == "*" || is_custom_group || is_builtin_group(privilege) {
        return Ok(ObjectType::Global);
    }
    match Privilege::from_api(privilege) {
        Some(p) => Ok(p.object_type()),
        None if is_defined(privilege) => Ok(ObjectType::Global),
        None => Err(Refusal::UnknownPrivilege(privilege.to_string())),
    }
}

/// The level rule of a v2 group grant (`validatePrivilegeGroupParams`): the group's level is
/// its first member's.
pub fn group_scope(
    group: &str,
    first_member: Option<Privilege>,
    db: &str,
    collection: &str,
) -> Result<(), Refusal> {
    let Some(first) = first_member else {
        return Ok(());
    };
    match first.level() {
        Level::Cluster if db != "*" || collection != "*" => {
            Err(Refusal::ClusterLevel(group.to_string()))
        }
        Level::Database if collection != "*" && !collection.is_empty() => {
            Err(Refusal::DatabaseLevel(group.to_string()))
        }
        Level::Collection if db == "*" && collection != "*" => {
            Err(Refusal::CollectionLevel(group.to_string()))
        }
        _ => Ok(()),
    }
}

/// A new custom group's name: Milvus's name rule, and not a built-in name.
pub fn new_group_name(raw: &str) -> Result<(), Refusal> {
    let valid = name(raw).is_ok() && !raw.contains('$');
    if !valid {
        return Err(Refusal::BadGroupName(raw.to_string()));
    }
    match is_defined(raw) {
        true => Err(Refusal::GroupIsBuiltin(raw.to_string())),
        false => Ok(()),
    }
}

/// Members added to a group must all sit at one level (with the group's existing members).
pub fn same_level(members: &[Privilege]) -> Result<(), Refusal> {
    let mut levels = members.iter().map(|p| p.level());
    let first = levels.next();
    match levels.all(|l| Some(l) == first) {
        true => Ok(()),
        false => Err(Refusal::MixedLevels),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_milvus() {
        assert!(name("c1").is_ok() && name("_x$1").is_ok() && name_or_star("*").is_ok());
        for bad in ["", "1c", "a-b", "a.b", "*x", &"a".repeat(256)] {
            assert!(name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn v1_privileges_per_object() {
        use ObjectType::*;
        assert_eq!(v1_privilege("Insert", Collection, false), Ok(()));
        assert_eq!(v1_privilege("*", User, false), Ok(()));
        assert_eq!(
            v1_privilege("Insert", Global, false),
            Err(Refusal::NotInObject {
                name: "Insert".into(),
                object: "Global"
            })
        );
        assert!(matches!(
            v1_privilege("ClusterAdmin", Global, false),
            Err(Refusal::BuiltinGroupInV1(_))
        ));
        assert!(matches!(
            v1_privilege("mine", Global, true),
            Err(Refusal::CustomGroupInV1(_))
        ));
    }

    #[test]
    fn v2_object_types_and_levels() {
        assert_eq!(v2_privilege("Insert", false), Ok(ObjectType::Collection));
        assert_eq!(
            v2_privilege("CollectionReadOnly", false),
            Ok(ObjectType::Global)
        );
        assert_eq!(v2_privilege("mine", true), Ok(ObjectType::Global));
        assert!(matches!(
            v2_privilege("Bogus", false),
            Err(Refusal::UnknownPrivilege(_))
        ));
        let first = |p| Privilege::from_api(p);
        assert!(group_scope("ClusterAdmin", first("BackupRBAC"), "*", "*").is_ok());
        assert!(group_scope("ClusterAdmin", first("BackupRBAC"), "db1", "*").is_err());
        assert!(group_scope("DatabaseAdmin", first("ShowCollections"), "db1", "c1").is_err());
        assert!(group_scope("CollectionAdmin", first("Query"), "*", "c1").is_err());
        assert!(group_scope("CollectionAdmin", first("Query"), "db1", "c1").is_ok());
    }

    #[test]
    fn group_names_and_levels() {
        assert!(new_group_name("readers").is_ok());
        assert!(matches!(
            new_group_name("ClusterAdmin"),
            Err(Refusal::GroupIsBuiltin(_))
        ));
        assert!(matches!(
            new_group_name("Query"),
            Err(Refusal::GroupIsBuiltin(_))
        ));
        assert!(matches!(
            new_group_name("1x"),
            Err(Refusal::BadGroupName(_))
        ));
        let p = |n| Privilege::from_api(n).unwrap();
        assert!(same_level(&[p("Query"), p("Insert")]).is_ok());
        assert_eq!(
            same_level(&[p("Query"), p("CreateOwnership")]),
            Err(Refusal::MixedLevels)
        );
    }
}

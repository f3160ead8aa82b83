//! The privilege catalogue: every privilege Milvus names (`commonpb.ObjectPrivilege`), the object
//! type each applies to, the built-in privilege groups, and the two spellings of a privilege
//! (API `Query`, metastore `PrivilegeQuery` / `PrivilegeGroupClusterAdmin`).
//!
//! Pure data and lookups: no I/O, no users, no gRPC. The tables follow Milvus 2.5
//! (`pkg/util/constant.go`, `paramtable/rbac_param.go`); privileges added after 2.5 take the
//! object type of the RPCs that require them (see `methods.tsv`), or `Global`.

use std::collections::HashMap;
use std::sync::OnceLock;

/// `commonpb.ObjectType`. Database-scoped privileges are `Global` privileges with a db name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectType {
    Collection,
    Global,
    User,
}

impl ObjectType {
    pub fn parse(raw: &str) -> Option<ObjectType> {
        match raw {
            "Collection" => Some(ObjectType::Collection),
            "Global" => Some(ObjectType::Global),
            "User" => Some(ObjectType::User),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ObjectType::Collection => "Collection",
            ObjectType::Global => "Global",
            ObjectType::User => "User",
        }
    }
}

/// `milvuspb.PrivilegeLevel`: used only to keep a privilege group's members at one level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Cluster,
    Database,
    Collection,
}

/// Collection privileges (API names), Milvus 2.5 `ObjectPrivileges[Collection]` plus the
/// collection-scoped privileges of later protos.
const COLLECTION: &[&str] = &[
    "Load",
    "Release",
    "Compaction",
    "Insert",
    "Delete",
    "Upsert",
    "GetStatistics",
    "CreateIndex",
    "IndexDetail",
    "DropIndex",
    "Search",
    "Flush",
    "Query",
    "LoadBalance",
    "Import",
    "GetLoadingProgress",
    "GetLoadState",
    "CreatePartition",
    "DropPartition",
    "ShowPartitions",
    "HasPartition",
    "GetFlushState",
    "ReadOnly",
    "ReadWrite",
    "AddCollectionField",
    "AlterCollectionSchema",
    "CreateSnapshot",
    "DropSnapshot",
    "DescribeSnapshot",
    "ListSnapshots",
    "RestoreSnapshot",
    "RefreshExternalCollection",
];

/// Global privileges (API names), Milvus 2.5 `ObjectPrivileges[Global]` plus later ones.
const GLOBAL: &[&str] = &[
    "All",
    "CreateCollection",
    "DropCollection",
    "DescribeCollection",
    "ShowCollections",
    "RenameCollection",
    "CreateOwnership",
    "DropOwnership",
    "SelectOwnership",
    "ManageOwnership",
    "BackupRBAC",
    "RestoreRBAC",
    "CreateResourceGroup",
    "UpdateResourceGroups",
    "DropResourceGroup",
    "DescribeResourceGroup",
    "ListResourceGroups",
    "TransferReplica",
    "TransferNode",
    "FlushAll",
    "CreateDatabase",
    "DropDatabase",
    "ListDatabases",
    "AlterDatabase",
    "DescribeDatabase",
    "CreateAlias",
    "DropAlias",
    "DescribeAlias",
    "ListAliases",
    "Admin",
    "CreatePrivilegeGroup",
    "DropPrivilegeGroup",
    "ListPrivilegeGroups",
    "OperatePrivilegeGroup",
    "GetImportProgress",
    "ListImport",
    "AddFileResource",
    "RemoveFileResource",
    "ListFileResources",
    "UpdateReplicateConfiguration",
    "GetReplicateConfiguration",
    "PinSnapshotData",
    "UnpinSnapshotData",
    "RestoreExternalSnapshot",
    "ExportSnapshot",
];

const USER: &[&str] = &["UpdateUser", "SelectUser"];

/// The legacy (2.4.7+) groups, stored as `PrivilegeGroup<Name>`.
const LEGACY_GROUPS: &[&str] = &["ReadOnly", "ReadWrite", "Admin"];

/// The 9 built-in groups, in Milvus's order, with their default members (cumulative).
pub const BUILTIN_GROUP_NAMES: [&str; 9] = [
    "ClusterReadOnly",
    "ClusterReadWrite",
    "ClusterAdmin",
    "DatabaseReadOnly",
    "DatabaseReadWrite",
    "DatabaseAdmin",
    "CollectionReadOnly",
    "CollectionReadWrite",
    "CollectionAdmin",
];

const COLLECTION_RO: &[&str] = &[
    "Query",
    "Search",
    "IndexDetail",
    "GetFlushState",
    "GetLoadState",
    "GetLoadingProgress",
    "HasPartition",
    "ShowPartitions",
    "DescribeCollection",
    "DescribeAlias",
    "GetStatistics",
    "ListAliases",
];
const COLLECTION_RW: &[&str] = &[
    "Load",
    "Release",
    "Insert",
    "Delete",
    "Upsert",
    "Import",
    "Flush",
    "Compaction",
    "LoadBalance",
    "CreateIndex",
    "DropIndex",
    "CreatePartition",
    "DropPartition",
];
const COLLECTION_ADMIN: &[&str] = &["CreateAlias", "DropAlias"];
const DATABASE_RO: &[&str] = &["ShowCollections", "DescribeDatabase"];
const DATABASE_RW: &[&str] = &["AlterDatabase"];
const DATABASE_ADMIN: &[&str] = &["CreateCollection", "DropCollection"];
const CLUSTER_RO: &[&str] = &[
    "ListDatabases",
    "SelectOwnership",
    "SelectUser",
    "DescribeResourceGroup",
    "ListResourceGroups",
    "ListPrivilegeGroups",
];
const CLUSTER_RW: &[&str] = &[
    "FlushAll",
    "TransferNode",
    "TransferReplica",
    "UpdateResourceGroups",
];
const CLUSTER_ADMIN: &[&str] = &[
    "BackupRBAC",
    "RestoreRBAC",
    "CreateDatabase",
    "DropDatabase",
    "CreateOwnership",
    "DropOwnership",
    "ManageOwnership",
    "CreateResourceGroup",
    "DropResourceGroup",
    "UpdateUser",
    "RenameCollection",
    "CreatePrivilegeGroup",
    "DropPrivilegeGroup",
    "OperatePrivilegeGroup",
];

/// A built-in (non-group) privilege, by its index in the catalogue. Cheap to copy and hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Privilege(u8);

struct Catalogue {
    /// API names of the built-in privileges; `Privilege(i)` is `names[i]`.
    names: Vec<&'static str>,
    by_name: HashMap<&'static str, (Privilege, ObjectType)>,
}

fn catalogue() -> &'static Catalogue {
    static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
    CATALOGUE.get_or_init(|| {
        let mut names = Vec::new();
        let mut by_name = HashMap::new();
        let lists = [
            (ObjectType::Collection, COLLECTION),
            (ObjectType::Global, GLOBAL),
            (ObjectType::User, USER),
        ];
        for (object, list) in lists {
            for name in list.iter().filter(|n| !LEGACY_GROUPS.contains(n)) {
                let id = Privilege(u8::try_from(names.len()).expect("fewer than 256 privileges"));
                names.push(*name);
                by_name.insert(*name, (id, object));
            }
        }
        Catalogue { names, by_name }
    })
}

impl Privilege {
    /// A built-in privilege by API name (`Query`); `None` for groups and unknown names.
    pub fn from_api(name: &str) -> Option<Privilege> {
        catalogue().by_name.get(name).map(|(id, _)| *id)
    }

    pub fn api_name(self) -> &'static str {
        catalogue().names[usize::from(self.0)]
    }

    /// `PrivilegeQuery`: the action string of a check and of a stored grant.
    pub fn metastore_name(self) -> String {
        format!("Privilege{}", self.api_name())
    }

    /// Milvus's `GetObjectType`: the object type whose list names this privilege.
    pub fn object_type(self) -> ObjectType {
        catalogue().by_name[self.api_name()].1
    }

    /// `PrivilegeAll` ("All"): every privilege.
    pub fn is_all(self) -> bool {
        self.api_name() == "All"
    }

    /// Milvus's `GetPrivilegeLevel`, from the admin group that holds the privilege.
    pub fn level(self) -> Level {
        let name = self.api_name();
        let in_group = |lists: &[&[&str]]| lists.iter().any(|l| l.contains(&name));
        if in_group(&[COLLECTION_RO, COLLECTION_RW, COLLECTION_ADMIN]) {
            Level::Collection
        } else if in_group(&[DATABASE_RO, DATABASE_RW, DATABASE_ADMIN]) {
            Level::Database
        } else {
            Level::Cluster
        }
    }
}

/// Whether `name` (API form) is valid for `object` in a v1 grant (`ObjectPrivileges`).
pub fn valid_for_object(name: &str, object: ObjectType) -> bool {
    let list = match object {
        ObjectType::Collection => COLLECTION,
        ObjectType::Global => GLOBAL,
        ObjectType::User => USER,
    };
    list.contains(&name) || (object == ObjectType::Global && BUILTIN_GROUP_NAMES.contains(&name))
}

/// Whether `name` is a built-in privilege or built-in / legacy group (`IsPrivilegeNameDefined`).
pub fn is_defined(name: &str) -> bool {
    Privilege::from_api(name).is_some() || is_builtin_group(name)
}

/// The 9 built-in groups and the 3 legacy ones.
pub fn is_builtin_group(name: &str) -> bool {
    BUILTIN_GROUP_NAMES.contains(&name) || LEGACY_GROUPS.contains(&name)
}

/// The metastore spelling of an API privilege or group name (`getMetastorePrivilegeName`):
/// `Privilege<X>` for a privilege, `PrivilegeGroup<X>` for any group, `*` unchanged.
pub fn metastore_name(api: &str) -> String {
    if api == "*" {
        "*".to_string()
    } else if Privilege::from_api(api).is_some() {
        format!("Privilege{api}")
    } else {
        format!("PrivilegeGroup{api}")
    }
}

/// The API spelling of a stored privilege (`PrivilegeNameForAPI`): prefixes stripped.
pub fn api_name(metastore: &str) -> &str {
    metastore
        .strip_prefix("PrivilegeGroup")
        .or_else(|| metastore.strip_prefix("Privilege"))
        .unwrap_or(metastore)
}

/// The built-in privilege groups' members: Milvus's defaults, replaced per group by
/// `common.security.rbac.{cluster|database|collection}.{readonly|readwrite|admin}.privileges`
/// when `common.security.rbac.overrideBuiltInPrivilegeGroups.enabled` is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltinGroups {
    members: HashMap<&'static str, Vec<Privilege>>,
}

impl Default for BuiltinGroups {
    fn default() -> BuiltinGroups {
        let tiers: [([&[&str]; 3], [&str; 3]); 3] = [
            (
                [CLUSTER_RO, CLUSTER_RW, CLUSTER_ADMIN],
                ["ClusterReadOnly", "ClusterReadWrite", "ClusterAdmin"],
            ),
            (
                [DATABASE_RO, DATABASE_RW, DATABASE_ADMIN],
                ["DatabaseReadOnly", "DatabaseReadWrite", "DatabaseAdmin"],
            ),
            (
                [COLLECTION_RO, COLLECTION_RW, COLLECTION_ADMIN],
                [
                    "CollectionReadOnly",
                    "CollectionReadWrite",
                    "CollectionAdmin",
                ],
            ),
        ];
        let mut members = HashMap::new();
        for (lists, names) in tiers {
            let mut cumulative = Vec::new();
            for (list, name) in lists.iter().zip(names) {
                cumulative.extend(list.iter().map(|p| resolve(p)));
                members.insert(name, cumulative.clone());
            }
        }
        // The legacy groups (2.4) have no override keys here: they stand for the matching
        // newer groups (documented difference from Milvus's `common.security.readonly.*`).
        members.insert("ReadOnly", members["CollectionReadOnly"].clone());
        members.insert("ReadWrite", members["CollectionReadWrite"].clone());
        let mut admin = members["ClusterAdmin"].clone();
        admin.extend(members["DatabaseAdmin"].iter().copied());
        members.insert("Admin", admin);
        BuiltinGroups { members }
    }
}

fn resolve(name: &str) -> Privilege {
    Privilege::from_api(name).expect("built-in group members are catalogued privileges")
}

/// Why a built-in group override was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("{0} is not a built-in privilege group")]
    UnknownGroup(String),
    #[error("privilege group {group}: unknown privilege {privilege}")]
    UnknownPrivilege { group: String, privilege: String },
}

impl BuiltinGroups {
    /// Replaces the members of one built-in group (from configuration).
    pub fn set(&mut self, group: &str, privileges: &[String]) -> Result<(), GroupError> {
        let Some(name) = BUILTIN_GROUP_NAMES.iter().find(|n| **n == group) else {
            return Err(GroupError::UnknownGroup(group.to_string()));
        };
        let mut members = Vec::with_capacity(privileges.len());
        for privilege in privileges {
            let id = Privilege::from_api(privilege.trim()).ok_or_else(|| {
                GroupError::UnknownPrivilege {
                    group: group.to_string(),
                    privilege: privilege.clone(),
                }
            })?;
            members.push(id);
        }
        self.members.insert(name, members);
        Ok(())
    }

    /// The members of a built-in or legacy group; `None` for anything else.
    pub fn members(&self, group: &str) -> Option<&[Privilege]> {
        self.members.get(group).map(Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_between_api_and_metastore() {
        for (api, stored) in [
            ("Query", "PrivilegeQuery"),
            ("All", "PrivilegeAll"),
            ("ClusterAdmin", "PrivilegeGroupClusterAdmin"),
            ("ReadOnly", "PrivilegeGroupReadOnly"),
            ("my_group", "PrivilegeGroupmy_group"),
            ("*", "*"),
        ] {
            assert_eq!(metastore_name(api), stored, "{api}");
            assert_eq!(api_name(stored), api, "{stored}");
        }
    }

    #[test]
    fn object_types_and_levels_follow_milvus() {
        let check = |name: &str, object: ObjectType, level: Level| {
            let p = Privilege::from_api(name).unwrap();
            assert_eq!((p.object_type(), p.level()), (object, level), "{name}");
        };
        check("Insert", ObjectType::Collection, Level::Collection);
        check("DescribeCollection", ObjectType::Global, Level::Collection);
        check("ShowCollections", ObjectType::Global, Level::Database);
        check("CreateOwnership", ObjectType::Global, Level::Cluster);
        check("UpdateUser", ObjectType::User, Level::Cluster);
        assert!(Privilege::from_api("ClusterAdmin").is_none(), "a group");
        assert!(Privilege::from_api("Nope").is_none());
    }

    #[test]
    fn v1_validity_per_object() {
        assert!(valid_for_object("Insert", ObjectType::Collection));
        assert!(!valid_for_object("Insert", ObjectType::Global));
        assert!(valid_for_object("ClusterAdmin", ObjectType::Global));
        assert!(valid_for_object("ReadOnly", ObjectType::Collection));
        assert!(valid_for_object("UpdateUser", ObjectType::User));
        assert!(!valid_for_object("UpdateUser", ObjectType::Global));
        assert!(is_defined("CollectionAdmin") && is_defined("Query") && !is_defined("x"));
    }

    #[test]
    fn builtin_groups_are_cumulative_and_overridable() {
        let mut groups = BuiltinGroups::default();
        let ro = groups.members("CollectionReadOnly").unwrap().len();
        let rw = groups.members("CollectionReadWrite").unwrap().len();
        let admin = groups.members("CollectionAdmin").unwrap().len();
        assert_eq!((ro, rw, admin), (12, 25, 27));
        let cluster_admin = groups.members("ClusterAdmin").unwrap();
        assert!(cluster_admin.contains(&Privilege::from_api("UpdateUser").unwrap()));
        assert!(cluster_admin.contains(&Privilege::from_api("SelectUser").unwrap()));
        groups
            .set("ClusterReadOnly", &["ListDatabases".to_string()])
            .unwrap();
        assert_eq!(groups.members("ClusterReadOnly").unwrap().len(), 1);
        assert!(groups.set("Nope", &[]).is_err());
        assert!(groups.set("ClusterAdmin", &["Bogus".into()]).is_err());
    }
}

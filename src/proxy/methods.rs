//! Which `MilvusService` methods credstore answers itself, which it forwards, and which it
//! refuses. A method is known when `rbac::method_privileges` has a privilege rule for it or it is in
//! [`UNANNOTATED`] (Milvus methods without a `privilege_ext_obj`, listed from pymilvus's
//! descriptors); anything else is refused with UNIMPLEMENTED and never forwarded.

use crate::proxy::error::Refusal;
use crate::rbac::method_privileges::rule;

/// The gRPC service every forwarded method belongs to.
pub const SERVICE: &str = "milvus.proto.milvus.MilvusService";

/// Methods credstore owns: users, roles, grants and privilege groups are never forwarded
/// (the upstream would act on its own users), and Connect/GetVersion/CheckHealth are answered
/// by credstore. Owned methods credstore does not implement yet ([`NOT_IMPLEMENTED`]) answer
/// UNIMPLEMENTED saying so.
pub const OWNED: &[&str] = &[
    "Connect",
    "GetVersion",
    "CheckHealth",
    "CreateCredential",
    "UpdateCredential",
    "DeleteCredential",
    "ListCredUsers",
    "SelectUser",
    "AddUserTags",
    "DeleteUserTags",
    "GetUserTags",
    "ListUsersWithTag",
    "CreateRole",
    "AlterRole",
    "DropRole",
    "OperateUserRole",
    "SelectRole",
    "OperatePrivilege",
    "OperatePrivilegeV2",
    "SelectGrant",
    "BackupRBAC",
    "RestoreRBAC",
    "CreatePrivilegeGroup",
    "DropPrivilegeGroup",
    "ListPrivilegeGroups",
    "OperatePrivilegeGroup",
];

/// Milvus methods with no privilege annotation (pymilvus 3.0.2's descriptors), less the
/// owned ones: forwarded for root and `admin` only.
pub const UNANNOTATED: &[&str] = &[
    "AllocTimestamp",
    "CalcDistance",
    "ComputePhraseMatchSlop",
    "DescribePrewarmTask",
    "DescribeSegmentIndexData",
    "Dummy",
    "GetCompactionState",
    "GetCompactionStateWithPlans",
    "GetComponentStates",
    "GetFlushAllState",
    "GetImportState",
    "GetMetrics",
    "GetPersistentSegmentInfo",
    "GetQuerySegmentInfo",
    "GetRefreshExternalCollectionProgress",
    "GetReplicas",
    "GetReplicateInfo",
    "GetRestoreSnapshotState",
    "HasCollection",
    "ListDatabases",
    "ListImportTasks",
    "ListIndexedSegment",
    "ListRefreshExternalCollectionJobs",
    "RegisterLink",
    "ReplicateMessage",
    "RunAnalyzer",
    "ShowCollections",
];

/// Owned methods that reflect the upstream when there is one, so pymilvus sees the upstream
/// Milvus's version and server info (features it enables by version keep working), and a
/// health check sees the upstream's health with this replica's folded in (`health.rs`).
/// Milvus gives them no privilege: any authenticated caller may make them.
pub const REFLECTED: &[&str] = &["Connect", "GetVersion", "CheckHealth"];

/// Unannotated methods any authenticated caller may make because credstore filters the
/// upstream's answer by the caller's grants (`listing.rs`), as Milvus 2.4+ filters it.
pub const FILTERED: &[&str] = &["ShowCollections", "ListDatabases"];

/// Owned methods credstore does not serve yet.
pub const NOT_IMPLEMENTED: &[&str] = &[
    "AddUserTags",
    "DeleteUserTags",
    "GetUserTags",
    "ListUsersWithTag",
];

/// Methods whose meaning depends on the caller's identity at the upstream (row-level
/// security), where every call through credstore is credstore's own: refused.
pub const CALLER_DEPENDENT: &[&str] = &["CreateRowPolicy", "DropRowPolicy", "ListRowPolicies"];

/// Streaming methods: the forwarder is unary only, so these are refused.
pub const STREAMING: &[&str] = &["CreateReplicateStream", "DumpMessages"];

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// credstore's own service answers.
    Own,
    /// Authorized, then forwarded upstream; the method name.
    Forward(&'a str),
    /// Answered by the router itself, saying why.
    Refuse(Unserved<'a>),
}

/// Why the router answers a call itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unserved<'a> {
    /// Not a `MilvusService` method this build knows (the whole path).
    Unknown(&'a str),
    Streaming(&'a str),
    NotImplemented(&'a str),
    /// A method the upstream serves, and none is configured.
    NoUpstream(&'a str),
    CallerDependent(&'a str),
}

impl Unserved<'_> {
    pub fn refusal(self) -> Refusal {
        match self {
            Unserved::Unknown(path) => Refusal::UnknownMethod(path.to_string()),
            Unserved::Streaming(m) => Refusal::Streaming(m.to_string()),
            Unserved::NotImplemented(m) => Refusal::NotImplemented(m.to_string()),
            Unserved::NoUpstream(m) => Refusal::NoUpstream(m.to_string()),
            Unserved::CallerDependent(m) => Refusal::CallerDependent(m.to_string()),
        }
    }
}

/// The route of a request path when an upstream is (or is not) configured.
pub fn route(path: &str, upstream: bool) -> Route<'_> {
    let method = path
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(SERVICE))
        .and_then(|p| p.strip_prefix('/'));
    let Some(method) = method else {
        return Route::Refuse(Unserved::Unknown(path));
    };
    if NOT_IMPLEMENTED.contains(&method) {
        return Route::Refuse(Unserved::NotImplemented(method));
    }
    if upstream && REFLECTED.contains(&method) {
        return Route::Forward(method);
    }
    if OWNED.contains(&method) {
        return Route::Own;
    }
    let known = rule(method).is_some() || UNANNOTATED.contains(&method);
    if STREAMING.contains(&method) {
        return Route::Refuse(Unserved::Streaming(method));
    }
    if !known {
        return Route::Refuse(Unserved::Unknown(path));
    }
    if CALLER_DEPENDENT.contains(&method) {
        return Route::Refuse(Unserved::CallerDependent(method));
    }
    match upstream {
        true => Route::Forward(method),
        false => Route::Refuse(Unserved::NoUpstream(method)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, upstream: bool, expected: Route<'_>) {
        assert_eq!(
            route(path, upstream),
            expected,
            "{path} upstream={upstream}"
        );
    }

    #[test]
    fn routes() {
        let p = |m: &str| format!("/{SERVICE}/{m}");
        check(&p("CreateCredential"), true, Route::Own);
        check(&p("Connect"), true, Route::Forward("Connect"));
        check(&p("GetVersion"), true, Route::Forward("GetVersion"));
        check(&p("GetVersion"), false, Route::Own);
        check(&p("CheckHealth"), true, Route::Forward("CheckHealth"));
        check(&p("CheckHealth"), false, Route::Own);
        check(&p("OperatePrivilege"), true, Route::Own);
        check(&p("Insert"), true, Route::Forward("Insert"));
        check(
            &p("ShowCollections"),
            true,
            Route::Forward("ShowCollections"),
        );
        check(
            &p("Insert"),
            false,
            Route::Refuse(Unserved::NoUpstream("Insert")),
        );
        check(
            &p("ListDatabases"),
            false,
            Route::Refuse(Unserved::NoUpstream("ListDatabases")),
        );
        let unknown = p("NoSuchMethod");
        check(&unknown, true, Route::Refuse(Unserved::Unknown(&unknown)));
        check(&unknown, false, Route::Refuse(Unserved::Unknown(&unknown)));
        check(
            &p("DumpMessages"),
            true,
            Route::Refuse(Unserved::Streaming("DumpMessages")),
        );
        check(
            &p("AddUserTags"),
            true,
            Route::Refuse(Unserved::NotImplemented("AddUserTags")),
        );
        check(
            &p("CreateRowPolicy"),
            true,
            Route::Refuse(Unserved::CallerDependent("CreateRowPolicy")),
        );
        let other = "/other.Service/Insert";
        check(other, true, Route::Refuse(Unserved::Unknown(other)));
        let extra = format!("/{SERVICE}Extra/Insert");
        check(&extra, true, Route::Refuse(Unserved::Unknown(&extra)));
    }

    #[test]
    fn owned_methods_are_never_forwarded_and_lists_do_not_overlap() {
        for m in OWNED
            .iter()
            .filter(|m| !REFLECTED.contains(m) && !NOT_IMPLEMENTED.contains(m))
        {
            assert_eq!(route(&format!("/{SERVICE}/{m}"), true), Route::Own, "{m}");
        }
        // Only version, server info and health reflect the upstream: never a user, role or
        // grant call.
        assert_eq!(REFLECTED, ["Connect", "GetVersion", "CheckHealth"]);
        assert!(
            REFLECTED
                .iter()
                .all(|m| OWNED.contains(m) && rule(m).is_none())
        );
        assert!(FILTERED.iter().all(|m| UNANNOTATED.contains(m)));
        for m in UNANNOTATED.iter().chain(STREAMING) {
            assert!(rule(m).is_none(), "{m} has a rule; drop it from the list");
            assert!(!OWNED.contains(m), "{m}");
        }
    }
}

//! Which privilege each `MilvusService` method needs, and on which object.
//!
//! The table (`methods.tsv`) is generated from the `privilege_ext_obj` options of the request
//! messages in pymilvus's generated descriptors (`scripts/privilege_table.py`), and a pymilvus
//! test keeps the committed file equal to what pymilvus says, so a new Milvus RPC cannot go
//! unchecked silently. A method absent from the table has no privilege entry: callers treat it
//! as root/admin only (fail safe).
//!
//! Table data only: reading names out of a request's bytes is `proxy::subject`'s job.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::rbac::privileges::{ObjectType, Privilege};

/// The privilege a method needs and where the request names its object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodRule {
    pub object: ObjectType,
    pub privilege: Privilege,
    /// Field number of the object name (0: none, the object is `*`).
    name_field: u32,
    /// Field number of a repeated object name (0: none): each name is checked.
    names_field: u32,
    /// The name field is a message whose field 1 holds the name (`SelectUser.user`).
    nested: bool,
}

const TABLE: &str = include_str!("methods.tsv");

fn table() -> &'static HashMap<&'static str, MethodRule> {
    static RULES: OnceLock<HashMap<&'static str, MethodRule>> = OnceLock::new();
    RULES.get_or_init(|| {
        TABLE
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| parse_row(line).unwrap_or_else(|| panic!("bad methods.tsv row: {line}")))
            .collect()
    })
}

fn parse_row(line: &'static str) -> Option<(&'static str, MethodRule)> {
    let mut cols = line.split('\t');
    let method = cols.next()?;
    let object = ObjectType::parse(cols.next()?)?;
    let privilege = Privilege::from_api(cols.next()?)?;
    let name_field = cols.next()?.parse().ok()?;
    let names_field = cols.next()?.parse().ok()?;
    let nested = cols.next()? == "1";
    let rule = MethodRule {
        object,
        privilege,
        name_field,
        names_field,
        nested,
    };
    Some((method, rule))
}

/// The rule for a `MilvusService` method name (`Insert`), if Milvus annotates it.
pub fn rule(method: &str) -> Option<&'static MethodRule> {
    table().get(method)
}

/// Every annotated method (for tests and the start-up self-check).
pub fn all() -> impl Iterator<Item = (&'static str, &'static MethodRule)> {
    table().iter().map(|(m, r)| (*m, r))
}

impl MethodRule {
    /// The field numbers that name the request's object (its name field, or its repeated
    /// name field); none when the object is `*`. `proxy::subject` reads them, with every
    /// other name a request carries.
    pub fn name_fields(&self) -> Vec<u32> {
        [self.name_field, self.names_field]
            .into_iter()
            .filter(|f| *f != 0)
            .collect()
    }

    /// Whether the name field is a message whose field 1 holds the name (`SelectUser.user`).
    pub fn name_is_nested(&self) -> bool {
        self.nested
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_covers_milvus_annotations() {
        assert_eq!(all().count(), 112, "rows in methods.tsv");
        let insert = rule("Insert").unwrap();
        assert_eq!(insert.object, ObjectType::Collection);
        assert_eq!(insert.privilege.api_name(), "Insert");
        let create = rule("CreateCredential").unwrap();
        assert_eq!(
            (create.object, create.privilege.api_name()),
            (ObjectType::Global, "CreateOwnership")
        );
        assert!(rule("Connect").is_none() && rule("GetVersion").is_none());
    }

    #[test]
    fn name_fields_follow_the_annotations() {
        assert_eq!(rule("Insert").unwrap().name_fields(), [3]);
        assert_eq!(rule("Flush").unwrap().name_fields(), [3]);
        assert!(rule("CreateCollection").unwrap().name_fields().is_empty());
        assert!(rule("SelectUser").unwrap().name_is_nested());
    }
}

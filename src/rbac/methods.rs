//! Which privilege each `MilvusService` method needs, and on which object.
//!
//! The table (`methods.tsv`) is generated from the `privilege_ext_obj` options of the request
//! messages in pymilvus's generated descriptors (`scripts/privilege_table.py`), and a pymilvus
//! test keeps the committed file equal to what pymilvus says, so a new Milvus RPC cannot go
//! unchecked silently. A method absent from the table has no privilege entry: callers treat it
//! as root/admin only (fail safe).
//!
//! [`MethodRule::object_name`] reads the object name straight from a request's encoded bytes
//! (one field, or field 1 of a message field), without decoding the whole message, so the
//! proxy tier can authorize a forwarded call it never deserializes.

use std::collections::HashMap;
use std::sync::OnceLock;

use prost::bytes::Buf;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};

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

/// Why a request's object name could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the request's object name cannot be read: {0}")]
pub struct NameError(String);

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
    /// The object names the request acts on: its name field, or each entry of its repeated
    /// name field; `["*"]` when it has none or the field is empty (Milvus's rule).
    pub fn object_names(&self, mut body: &[u8]) -> Result<Vec<String>, NameError> {
        let wanted = match (self.name_field, self.names_field) {
            (0, 0) => return Ok(vec!["*".to_string()]),
            (0, repeated) => repeated,
            (single, _) => single,
        };
        let mut names = Vec::new();
        while body.has_remaining() {
            let (tag, wire) = decode_key(&mut body).map_err(err)?;
            if tag == wanted && wire == WireType::LengthDelimited {
                let value = length_delimited(&mut body)?;
                let name = match self.nested {
                    true => first_string(value)?,
                    false => utf8(value)?,
                };
                if self.name_field != 0 {
                    names.clear();
                }
                names.push(name);
            } else {
                skip_field(wire, tag, &mut body, DecodeContext::default()).map_err(err)?;
            }
        }
        names.retain(|n| !n.is_empty());
        if names.is_empty() {
            names.push("*".to_string());
        }
        Ok(names)
    }
}

fn length_delimited<'a>(body: &mut &'a [u8]) -> Result<&'a [u8], NameError> {
    let len = usize::try_from(decode_varint(body).map_err(err)?)
        .map_err(|_| NameError("length overflows".into()))?;
    if len > body.len() {
        return Err(NameError("truncated field".into()));
    }
    let (value, rest) = body.split_at(len);
    *body = rest;
    Ok(value)
}

/// Field 1 of an embedded message, as a string ("" when absent).
fn first_string(mut message: &[u8]) -> Result<String, NameError> {
    let mut found = String::new();
    while message.has_remaining() {
        let (tag, wire) = decode_key(&mut message).map_err(err)?;
        if tag == 1 && wire == WireType::LengthDelimited {
            found = utf8(length_delimited(&mut message)?)?;
        } else {
            skip_field(wire, tag, &mut message, DecodeContext::default()).map_err(err)?;
        }
    }
    Ok(found)
}

fn utf8(bytes: &[u8]) -> Result<String, NameError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| NameError("name is not UTF-8".into()))
}

fn err(e: prost::DecodeError) -> NameError {
    NameError(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Stand-ins with the same field numbers as Milvus's requests.
    #[derive(Clone, PartialEq, Message)]
    struct Insert {
        #[prost(string, tag = "2")]
        db_name: String,
        #[prost(string, tag = "3")]
        collection_name: String,
        #[prost(bytes = "vec", tag = "5")]
        payload: Vec<u8>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct UserEntity {
        #[prost(string, tag = "1")]
        name: String,
    }

    #[derive(Clone, PartialEq, Message)]
    struct SelectUser {
        #[prost(message, optional, tag = "2")]
        user: Option<UserEntity>,
        #[prost(bool, tag = "3")]
        include_role_info: bool,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Flush {
        #[prost(string, tag = "2")]
        db_name: String,
        #[prost(string, repeated, tag = "3")]
        collection_names: Vec<String>,
    }

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
    fn object_names_are_read_from_encoded_requests() {
        let body = Insert {
            db_name: "db1".into(),
            collection_name: "c1".into(),
            payload: vec![7; 1000],
        }
        .encode_to_vec();
        assert_eq!(rule("Insert").unwrap().object_names(&body).unwrap(), ["c1"]);

        let select = |name: &str| {
            SelectUser {
                user: Some(UserEntity { name: name.into() }),
                include_role_info: true,
            }
            .encode_to_vec()
        };
        let rule_select = rule("SelectUser").unwrap();
        assert_eq!(rule_select.object_names(&select("bob")).unwrap(), ["bob"]);
        assert_eq!(rule_select.object_names(&select("")).unwrap(), ["*"]);
        assert_eq!(rule_select.object_names(&[]).unwrap(), ["*"]);

        let flush = Flush {
            db_name: "default".into(),
            collection_names: vec!["a".into(), "b".into()],
        }
        .encode_to_vec();
        assert_eq!(
            rule("Flush").unwrap().object_names(&flush).unwrap(),
            ["a", "b"]
        );
        assert_eq!(
            rule("CreateCollection")
                .unwrap()
                .object_names(&body)
                .unwrap(),
            ["*"]
        );
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        let insert = rule("Insert").unwrap();
        for body in [
            &[0x1a, 0x05, b'a'][..],
            &[0xff; 11],
            &[0x1a, 0x02, 0xff, 0xfe],
            &[0x0b],
        ] {
            assert!(insert.object_names(body).is_err(), "{body:?}");
        }
    }
}

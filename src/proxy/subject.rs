//! [`Subject`]: what a forwarded call acts on, read from its bytes and headers exactly as the
//! upstream Milvus will read them, so the tier authorizes what will execute.
//!
//! - The database: the request's own `db_name` when it is set (the last value sent, as
//!   protobuf decoders keep), else the single `dbname` header, else `default`. Two `dbname`
//!   headers, a header that is not a readable database name, or an invalid database name
//!   anywhere are refused: the upstream must never be told a different database than the
//!   one checked, and a reader that guesses is how the gap opens.
//! - Every other database and every collection and alias name the request carries, at the
//!   positions `subjects.tsv` lists (generated from pymilvus's descriptors by
//!   `scripts/subject_table.py`; nested requests included). Singular fields keep their last
//!   value and singular messages merge, as protobuf decoders do; repeated fields count
//!   every value.
//! - A field whose meaning depends on the caller's identity at the upstream (row-level
//!   security) is refused when set: upstream, every call is credstore's identity.
//!
//! Must not: decide anything (that is `rbac::decide`), or decode whole messages: it walks
//! only the fields on the listed paths, so a 100 MB insert costs a few field skips.

use std::collections::HashMap;
use std::sync::OnceLock;

use prost::bytes::Buf;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
use tonic::metadata::MetadataMap;

use crate::catalog::DEFAULT_DB;
use crate::rbac::validate;

/// The database, collections and aliases a request acts on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    /// The database the upstream acts in; forwarded as the only `dbname` header.
    pub db: String,
    /// Other databases the request names (never `db`), in order of appearance.
    pub other_dbs: Vec<String>,
    /// Collection names, as sent (aliases resolve later), without repeats.
    pub names: Vec<String>,
    /// Alias names, without repeats.
    pub aliases: Vec<String>,
}

impl Subject {
    /// `db` first, then the others.
    pub fn dbs(&self) -> Vec<&str> {
        std::iter::once(self.db.as_str())
            .chain(self.other_dbs.iter().map(String::as_str))
            .collect()
    }
}

/// Why a request's subject could not be determined unambiguously; the request is refused
/// with INVALID_ARGUMENT and never forwarded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("more than one dbname header: send exactly one")]
    DbHeaders,
    #[error("the dbname header is not a readable database name")]
    UnreadableHeader,
    #[error("invalid database name {0:?}")]
    InvalidDb(String),
    #[error("the request cannot be read: {0}")]
    Malformed(String),
    #[error(
        "{0} depends on the caller's identity at the upstream, where every call through credstore is credstore's own: refused"
    )]
    CallerDependent(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Db,
    OtherDb,
    Name,
    Alias,
    Caller,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Step {
    number: u32,
    repeated: bool,
    /// The other members of the oneof this field belongs to (empty: none).
    oneof: Vec<u32>,
}

/// One listed position: what it holds and the path of field numbers to it.
#[derive(Clone, Debug)]
struct Field {
    kind: Kind,
    path: Vec<Step>,
}

const TABLE: &str = include_str!("subjects.tsv");

fn table() -> &'static HashMap<&'static str, Vec<Field>> {
    static FIELDS: OnceLock<HashMap<&'static str, Vec<Field>>> = OnceLock::new();
    FIELDS.get_or_init(|| {
        let mut fields: HashMap<&str, Vec<Field>> = HashMap::new();
        for line in TABLE
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (method, field) =
                parse_row(line).unwrap_or_else(|| panic!("bad subjects.tsv row: {line}"));
            fields.entry(method).or_default().push(field);
        }
        fields
    })
}

fn parse_row(line: &'static str) -> Option<(&'static str, Field)> {
    let mut cols = line.split('\t');
    let method = cols.next()?;
    let kind = match cols.next()? {
        "db" => Kind::Db,
        "db+" => Kind::OtherDb,
        "name" => Kind::Name,
        "alias" => Kind::Alias,
        "caller" => Kind::Caller,
        _ => return None,
    };
    let path = cols
        .next()?
        .split('.')
        .map(|s| {
            let (s, oneof) = match s.split_once('|') {
                Some((n, others)) => {
                    let others = others.split(',').map(|o| o.parse().ok());
                    (n, others.collect::<Option<Vec<u32>>>()?)
                }
                None => (s, Vec::new()),
            };
            let (number, repeated) = match s.strip_suffix("[]") {
                Some(n) => (n, true),
                None => (s, false),
            };
            Some(Step {
                number: number.parse().ok()?,
                repeated,
                oneof,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some((method, Field { kind, path }))
}

/// The single `dbname` header, if any (empty counts as none, as in Milvus).
pub fn header_db(metadata: &MetadataMap) -> Result<Option<String>, SubjectError> {
    let mut values = metadata.get_all("dbname").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(SubjectError::DbHeaders);
    }
    let db = value.to_str().map_err(|_| SubjectError::UnreadableHeader)?;
    match db {
        "" => Ok(None),
        db => valid_db(db).map(Some),
    }
}

fn valid_db(db: &str) -> Result<String, SubjectError> {
    validate::name(db)
        .map(|_| db.to_string())
        .map_err(|_| SubjectError::InvalidDb(db.to_string()))
}

/// The subject of a `method` request with `body`, sent with the `dbname` header `header`.
pub fn extract(method: &str, body: &[u8], header: Option<&str>) -> Result<Subject, SubjectError> {
    let fields = table().get(method).map(Vec::as_slice).unwrap_or_default();
    let mut own_db = None;
    let mut subject = Subject::default();
    for field in fields {
        let mut values = Vec::new();
        collect(&[body], &field.path, field.kind, &mut values)?;
        match field.kind {
            Kind::Db => own_db = values.pop().filter(|v| !v.is_empty()),
            Kind::OtherDb => {
                for db in values.into_iter().filter(|v| !v.is_empty()) {
                    push_new(&mut subject.other_dbs, valid_db(&db)?);
                }
            }
            Kind::Name => extend_new(&mut subject.names, values),
            Kind::Alias => extend_new(&mut subject.aliases, values),
            Kind::Caller if values.iter().any(|v| !v.is_empty()) => {
                return Err(SubjectError::CallerDependent(method.to_string()));
            }
            Kind::Caller => {}
        }
    }
    subject.db = match (own_db, header) {
        (Some(db), _) => valid_db(&db)?,
        (None, Some(db)) => valid_db(db)?,
        (None, None) => DEFAULT_DB.to_string(),
    };
    let db = subject.db.clone();
    subject.other_dbs.retain(|d| *d != db);
    Ok(subject)
}

fn push_new(list: &mut Vec<String>, value: String) {
    if !list.contains(&value) {
        list.push(value);
    }
}

fn extend_new(list: &mut Vec<String>, values: Vec<String>) {
    for value in values.into_iter().filter(|v| !v.is_empty()) {
        push_new(list, value);
    }
}

/// The values at `path` in the message made of `chunks` (a singular message sent several
/// times is the merge of its occurrences, which is reading them one after another).
fn collect(
    chunks: &[&[u8]],
    path: &[Step],
    kind: Kind,
    out: &mut Vec<String>,
) -> Result<(), SubjectError> {
    let Some((step, rest)) = path.split_first() else {
        return Ok(());
    };
    let leaf = rest.is_empty();
    let found = occurrences(chunks, step.number, leaf && kind == Kind::Caller)?;
    if !found.is_empty() {
        for other in &step.oneof {
            if !occurrences(chunks, *other, true)?.is_empty() {
                return Err(SubjectError::Malformed(format!(
                    "field {} and field {other} of one oneof are both set",
                    step.number
                )));
            }
        }
    }
    match (leaf, step.repeated) {
        (true, _) if kind == Kind::Caller => {
            out.extend(found.iter().filter_map(|v| caller_value(v)));
        }
        (true, true) => {
            for value in found {
                out.push(utf8(value.bytes())?);
            }
        }
        (true, false) => {
            if let Some(last) = found.last() {
                out.push(utf8(last.bytes())?);
            }
        }
        (false, true) => {
            for element in &found {
                collect(&[element.bytes()], rest, kind, out)?;
            }
        }
        (false, false) => {
            let merged: Vec<&[u8]> = found.iter().map(Occurrence::bytes).collect();
            if !merged.is_empty() {
                collect(&merged, rest, kind, out)?;
            }
        }
    }
    Ok(())
}

/// One occurrence of a field: its bytes, or a varint (only for `caller` flags).
enum Occurrence<'a> {
    Bytes(&'a [u8]),
    Varint(u64),
}

impl<'a> Occurrence<'a> {
    fn bytes(&self) -> &'a [u8] {
        match self {
            Occurrence::Bytes(b) => b,
            Occurrence::Varint(_) => &[],
        }
    }
}

/// A caller-dependent field's value as text: non-empty when it is set.
fn caller_value(occurrence: &Occurrence<'_>) -> Option<String> {
    match occurrence {
        Occurrence::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Occurrence::Varint(0) => Some(String::new()),
        Occurrence::Varint(_) => Some("set".to_string()),
    }
}

/// Every occurrence of field `number` in `chunks`, in order. A listed field sent with another
/// wire type is refused (decoders disagree on it: some skip it, some fail).
fn occurrences<'a>(
    chunks: &[&'a [u8]],
    number: u32,
    varint_ok: bool,
) -> Result<Vec<Occurrence<'a>>, SubjectError> {
    let mut found = Vec::new();
    for chunk in chunks {
        let mut buf: &'a [u8] = chunk;
        while buf.has_remaining() {
            let (tag, wire) = decode_key(&mut buf).map_err(malformed)?;
            if tag != number {
                skip_field(wire, tag, &mut buf, DecodeContext::default()).map_err(malformed)?;
                continue;
            }
            match wire {
                WireType::LengthDelimited => {
                    found.push(Occurrence::Bytes(length_delimited(&mut buf)?))
                }
                WireType::Varint if varint_ok => found.push(Occurrence::Varint(
                    decode_varint(&mut buf).map_err(malformed)?,
                )),
                other => {
                    return Err(SubjectError::Malformed(format!(
                        "field {number} has wire type {other:?}"
                    )));
                }
            }
        }
    }
    Ok(found)
}

fn length_delimited<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], SubjectError> {
    let len = usize::try_from(decode_varint(buf).map_err(malformed)?)
        .map_err(|_| SubjectError::Malformed("length overflows".into()))?;
    if len > buf.len() {
        return Err(SubjectError::Malformed("truncated field".into()));
    }
    let (value, rest) = buf.split_at(len);
    *buf = rest;
    Ok(value)
}

fn utf8(bytes: &[u8]) -> Result<String, SubjectError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| SubjectError::Malformed("a name is not UTF-8".into()))
}

fn malformed(e: prost::DecodeError) -> SubjectError {
    SubjectError::Malformed(e.to_string())
}

/// The methods the table lists (for tests).
pub fn listed_methods() -> impl Iterator<Item = &'static str> {
    table().keys().copied()
}

/// The top-level field numbers listed as collection names for `method` (for tests).
pub fn top_level_name_fields(method: &str) -> Vec<u32> {
    table()
        .get(method)
        .into_iter()
        .flatten()
        .filter(|f| f.kind == Kind::Name && f.path.len() == 1)
        .map(|f| f.path[0].number)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[derive(Clone, PartialEq, Message)]
    struct Query {
        #[prost(string, tag = "2")]
        db_name: String,
        #[prost(string, tag = "3")]
        collection_name: String,
        #[prost(string, tag = "4")]
        expr: String,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Rename {
        #[prost(string, tag = "2")]
        db_name: String,
        #[prost(string, tag = "3")]
        old_name: String,
        #[prost(string, tag = "4")]
        new_name: String,
        #[prost(string, tag = "5")]
        new_db_name: String,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Hybrid {
        #[prost(string, tag = "2")]
        db_name: String,
        #[prost(string, tag = "3")]
        collection_name: String,
        #[prost(message, repeated, tag = "5")]
        requests: Vec<Query>,
    }

    fn query(db: &str, name: &str) -> Vec<u8> {
        Query {
            db_name: db.into(),
            collection_name: name.into(),
            expr: "id > 0".into(),
        }
        .encode_to_vec()
    }

    #[test]
    fn the_body_database_wins_over_the_header() {
        let s = extract("Query", &query("secretdb", "c"), Some("default")).unwrap();
        assert_eq!(
            (s.db.as_str(), s.names.as_slice()),
            ("secretdb", &["c".to_string()][..])
        );
        let s = extract("Query", &query("", "c"), Some("mydb")).unwrap();
        assert_eq!(s.db, "mydb");
        let s = extract("Query", &query("", "c"), None).unwrap();
        assert_eq!(s.db, "default");
    }

    #[test]
    fn duplicated_fields_keep_the_last_value() {
        let mut body = query("a", "c1");
        body.extend(query("b", "c2"));
        let s = extract("Query", &body, None).unwrap();
        assert_eq!(
            (s.db.as_str(), s.names.as_slice()),
            ("b", &["c2".to_string()][..])
        );
        // An empty last value clears the earlier one: the header decides.
        let mut body = query("a", "c1");
        body.extend([0x12, 0x00]);
        assert_eq!(extract("Query", &body, Some("h")).unwrap().db, "h");
    }

    #[test]
    fn every_database_and_name_counts() {
        let rename = Rename {
            db_name: "a".into(),
            old_name: "x".into(),
            new_name: "y".into(),
            new_db_name: "b".into(),
        }
        .encode_to_vec();
        let s = extract("RenameCollection", &rename, Some("h")).unwrap();
        assert_eq!(s.dbs(), ["a", "b"]);
        assert_eq!(s.names, ["x", "y"]);
        let hybrid = Hybrid {
            db_name: String::new(),
            collection_name: "c".into(),
            requests: vec![
                Query {
                    db_name: "other".into(),
                    collection_name: "d".into(),
                    expr: String::new(),
                },
                Query::default(),
            ],
        }
        .encode_to_vec();
        let s = extract("HybridSearch", &hybrid, None).unwrap();
        assert_eq!(s.dbs(), ["default", "other"]);
        assert_eq!(s.names, ["c", "d"]);
        let alias = Query {
            db_name: "a".into(),
            collection_name: "target".into(),
            expr: "al".into(),
        }
        .encode_to_vec();
        let s = extract("CreateAlias", &alias, None).unwrap();
        assert_eq!(
            (s.names.as_slice(), s.aliases.as_slice()),
            (&["target".to_string()][..], &["al".to_string()][..])
        );
    }

    #[test]
    fn ambiguous_or_invalid_databases_are_refused() {
        assert_eq!(
            extract("Query", &query("bad name", "c"), None),
            Err(SubjectError::InvalidDb("bad name".into()))
        );
        assert_eq!(
            extract("Query", &query("", "c"), Some("*")),
            Err(SubjectError::InvalidDb("*".into()))
        );
        let mut metadata = MetadataMap::new();
        assert_eq!(header_db(&metadata), Ok(None));
        metadata.append("dbname", "".parse().unwrap());
        assert_eq!(header_db(&metadata), Ok(None));
        metadata.append("dbname", "secretdb".parse().unwrap());
        assert_eq!(header_db(&metadata), Err(SubjectError::DbHeaders));
        let mut metadata = MetadataMap::new();
        metadata.insert(
            "dbname",
            tonic::metadata::AsciiMetadataValue::try_from(&b"\x80\xff"[..]).unwrap(),
        );
        assert_eq!(header_db(&metadata), Err(SubjectError::UnreadableHeader));
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        for body in [
            &[0x1a, 0x05, b'a'][..],
            &[0xff; 11],
            &[0x1a, 0x02, 0xff, 0xfe],
            &[0x0b],
            &[0x10, 0x01],
        ] {
            assert!(extract("Query", body, None).is_err(), "{body:?}");
        }
    }

    #[test]
    fn the_table_agrees_with_the_privilege_table() {
        // Every object-name field Milvus annotates is a collection name the subject reads.
        for (method, rule) in crate::rbac::method_privileges::all() {
            if rule.object != crate::rbac::ObjectType::Collection {
                continue;
            }
            for field in rule.name_fields() {
                assert!(
                    top_level_name_fields(method).contains(&field),
                    "{method}: field {field} is not a listed collection name"
                );
            }
        }
        assert!(listed_methods().any(|m| m == "HybridSearch"));
    }
}

//! What follows from a forwarded call that changed collections upstream, recorded before the
//! caller hears back and acknowledged by every live replica like any grant change:
//!
//! - `DropCollection` / `DropDatabase`: the grants on the collection (every grant in the
//!   database) are deleted, so a new collection with an old name inherits nothing;
//! - `RenameCollection`: its grants move to the new name (and database);
//! - those and `CreateAlias` / `AlterAlias` / `DropAlias`: the alias epoch is bumped, so
//!   every replica drops the alias resolutions it cached.
//!
//! Only a success counts (the answer's `common.Status`); a failed call changes nothing. If
//! the recording fails, the caller gets UNAVAILABLE and pymilvus retries the call, which
//! Milvus answers idempotently (dropping what is gone succeeds), completing the record.

use prost::Message;
use prost::bytes::Bytes;

use crate::catalog::{Catalog, CatalogError};
use crate::coherence::Coherence;
use crate::meta::Revision;
use crate::proto::common::Status as MilvusStatus;
use crate::proto::milvus::RenameCollectionRequest;
use crate::proxy::aliases::succeeded;
use crate::proxy::error::Refusal;
use crate::proxy::subject::Subject;

/// The methods whose success changes grants or aliases.
pub const CHANGING: &[&str] = &[
    "DropCollection",
    "DropDatabase",
    "RenameCollection",
    "CreateAlias",
    "AlterAlias",
    "DropAlias",
];

/// Records what `method` (forwarded with `request` on `subject`, answered `answer`) changed.
pub async fn record(
    catalog: &Catalog,
    coherence: &Coherence,
    method: &str,
    subject: &Subject,
    request: &[u8],
    answer: &Bytes,
) -> Result<(), Refusal> {
    if !CHANGING.contains(&method) || !answer_succeeded(answer) {
        return Ok(());
    }
    let fail = |e: CatalogError| Refusal::aftermath(method, e);
    let mut last: Option<Revision> = None;
    let mut wrote = |r: Option<Revision>| last = last.max(r);
    match method {
        "DropCollection" => {
            for name in &subject.names {
                wrote(
                    catalog
                        .delete_grants_on(&subject.db, Some(name))
                        .await
                        .map_err(fail)?,
                );
            }
        }
        "DropDatabase" => wrote(
            catalog
                .delete_grants_on(&subject.db, None)
                .await
                .map_err(fail)?,
        ),
        "RenameCollection" => {
            let rename = RenameCollectionRequest::decode(request)
                .map_err(|e| Refusal::aftermath(method, e))?;
            let to_db = match rename.new_db_name.as_str() {
                "" => subject.db.as_str(),
                db => db,
            };
            let moved = catalog
                .move_grants((&subject.db, &rename.old_name), (to_db, &rename.new_name))
                .await
                .map_err(fail)?;
            wrote(moved);
        }
        _ => {}
    }
    wrote(Some(catalog.bump_alias_epoch().await.map_err(fail)?));
    if let Some(revision) = last {
        coherence
            .confirm(revision)
            .await
            .map_err(|e| Refusal::coherence(method, e))?;
    }
    Ok(())
}

/// Whether a `common.Status` answer says success (every changing method answers one).
fn answer_succeeded(answer: &Bytes) -> bool {
    MilvusStatus::decode(answer.clone()).is_ok_and(|s| succeeded(&s))
}

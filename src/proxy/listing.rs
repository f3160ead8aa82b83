//! The two listings any authenticated caller may make, cut to the caller's grants as Milvus
//! 2.4+ cuts them; root and `admin` see everything. The upstream answers with credstore's
//! token, so without the cut every user would see every name.
//!
//! - `ShowCollections`: the collections of the request's database (its subject's, read like
//!   every forwarded call's) that the caller's grants reach (some privilege on the collection,
//!   on every collection, `All`, or Global `ShowCollections`).
//! - `ListDatabases`: the databases the caller holds any grant in.
//!
//! The answer's lists are parallel (entry i of each describes collection i): each is cut with
//! the same mask. A list of another length cannot be attributed and is emptied, and fields
//! this build does not know are dropped (prost decodes only the declared ones): the cut fails
//! closed. Requests and answers are small (names and numbers), so decoding them whole is
//! bounded by the forwarder's message limit like any forwarded call.

use prost::Message;
use prost::bytes::Bytes;
use tonic::{Request, Response, Status};

use crate::proto::milvus::{ListDatabasesResponse, ShowCollectionsResponse};
use crate::proxy::router::Proxy;
use crate::proxy::subject::Subject;

/// The methods this module answers.
pub const SHOW_COLLECTIONS: &str = "ShowCollections";
pub const LIST_DATABASES: &str = "ListDatabases";

/// Forwards the listing and cuts the answer to what `user` may see in the subject's
/// database. `user` is `None` when authorization is off: the answer passes whole.
pub async fn show_collections(
    proxy: &Proxy,
    user: Option<&str>,
    subject: &Subject,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, Status> {
    let db = subject.db.as_str();
    let response = proxy
        .forwarder
        .forward(SHOW_COLLECTIONS, db, request)
        .await?;
    let Some(user) = user else {
        return Ok(response);
    };
    let (metadata, body, extensions) = response.into_parts();
    let mut answer = ShowCollectionsResponse::decode(body.clone()).map_err(|e| {
        Status::internal(format!(
            "the upstream's ShowCollections answer is unreadable: {e}"
        ))
    })?;
    let visible = proxy
        .authorizer
        .policies()
        .visible_collections(user, db, &answer.collection_names)
        .await
        .map_err(|e| Status::unavailable(format!("cannot load the caller's grants: {e}")))?;
    if visible.iter().all(|&v| v) {
        // Nothing to cut: the upstream's answer as it came, byte for byte.
        return Ok(Response::from_parts(metadata, body, extensions));
    }
    cut(&mut answer, &visible);
    Ok(Response::from_parts(
        metadata,
        Bytes::from(answer.encode_to_vec()),
        extensions,
    ))
}

/// Forwards `ListDatabases` and cuts the answer to the databases `user` holds a grant in.
pub async fn list_databases(
    proxy: &Proxy,
    user: Option<&str>,
    subject: &Subject,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, Status> {
    let response = proxy
        .forwarder
        .forward(LIST_DATABASES, &subject.db, request)
        .await?;
    let Some(user) = user else {
        return Ok(response);
    };
    let (metadata, body, extensions) = response.into_parts();
    let mut answer = ListDatabasesResponse::decode(body.clone()).map_err(|e| {
        Status::internal(format!(
            "the upstream's ListDatabases answer is unreadable: {e}"
        ))
    })?;
    let visible = proxy
        .authorizer
        .policies()
        .visible_databases(user, &answer.db_names)
        .await
        .map_err(|e| Status::unavailable(format!("cannot load the caller's grants: {e}")))?;
    if visible.iter().all(|&v| v) {
        return Ok(Response::from_parts(metadata, body, extensions));
    }
    filter(&mut answer.created_timestamp, &visible);
    filter(&mut answer.db_ids, &visible);
    filter(&mut answer.db_names, &visible);
    Ok(Response::from_parts(
        metadata,
        Bytes::from(answer.encode_to_vec()),
        extensions,
    ))
}

/// Keeps entry i of `list` where `keep[i]`; a list of another length is emptied.
fn filter<T>(list: &mut Vec<T>, keep: &[bool]) {
    if list.len() != keep.len() {
        list.clear();
        return;
    }
    let mut i = 0;
    list.retain(|_| {
        i += 1;
        keep[i - 1]
    });
}

/// Keeps entry i of every parallel list where `keep[i]`.
fn cut(answer: &mut ShowCollectionsResponse, keep: &[bool]) {
    filter(&mut answer.collection_ids, keep);
    filter(&mut answer.created_timestamps, keep);
    filter(&mut answer.created_utc_timestamps, keep);
    filter(&mut answer.in_memory_percentages, keep);
    filter(&mut answer.query_service_available, keep);
    filter(&mut answer.shards_num, keep);
    filter(&mut answer.collection_names, keep);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parallel_list_is_cut_alike_and_odd_ones_are_emptied() {
        let mut answer = ShowCollectionsResponse {
            status: None,
            collection_names: vec!["a".into(), "b".into(), "c".into()],
            collection_ids: vec![1, 2, 3],
            created_timestamps: vec![10, 20, 30],
            created_utc_timestamps: vec![11, 21, 31],
            in_memory_percentages: vec![],
            query_service_available: vec![true, false, true],
            shards_num: vec![1, 2],
        };
        cut(&mut answer, &[true, false, true]);
        assert_eq!(answer.collection_names, ["a", "c"]);
        assert_eq!(answer.collection_ids, [1, 3]);
        assert_eq!(answer.created_timestamps, [10, 30]);
        assert_eq!(answer.created_utc_timestamps, [11, 31]);
        assert_eq!(answer.query_service_available, [true, true]);
        // Two entries for three names: which is whose is unknown, so none is kept.
        assert!(answer.shards_num.is_empty());
        assert!(answer.in_memory_percentages.is_empty());
    }
}

//! Users in Milvus's layout: `root-coord/credential/users/{name}` holds JSON
//! `{"encrypted_password": "<hash>"}` plus `description` and any field Milvus wrote, kept as
//! it was. Reading, creating (conditional on absence), replacing (conditional on the revision
//! read), deleting with the user's role mappings, and the root user at start.

use serde::{Deserialize, Serialize};

use crate::catalog::*;
use crate::meta::{Compare, KeyValue, MetaKv, Op, Read, Revision, Txn};
use crate::password::{PasswordHash, Username};

/// A user as stored, with the revision it was read at (for compare-and-swap).
#[derive(Clone, Debug)]
pub struct StoredUser {
    pub hash: PasswordHash,
    pub description: Option<String>,
    pub mod_revision: Revision,
    /// Fields Milvus may have written (e.g. `time_tick`), carried over on rewrite.
    pub(super) extra: serde_json::Map<String, serde_json::Value>,
}

impl StoredUser {
    /// The same user with another hash (keeps description and foreign fields).
    pub fn with_hash(&self, hash: PasswordHash) -> StoredUser {
        StoredUser {
            hash,
            ..self.clone()
        }
    }

    pub fn with_description(&self, description: Option<String>) -> StoredUser {
        StoredUser {
            description,
            ..self.clone()
        }
    }

    /// Reads a `users/{name}` value as Milvus writes it.
    pub fn decode(kv: &KeyValue) -> Result<StoredUser, CatalogError> {
        decode_user(kv)
    }

    /// The JSON value stored at `users/{name}`.
    pub fn encode(&self) -> Vec<u8> {
        encode_user(&self.hash, self.description.clone(), self.extra.clone())
    }
}

#[derive(Serialize, Deserialize)]
struct UserValue {
    encrypted_password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(flatten)]
    pub(super) extra: serde_json::Map<String, serde_json::Value>,
}

impl Catalog {
    pub(super) fn users_prefix(&self) -> String {
        format!("{}users/", self.prefix)
    }

    pub(super) fn user_key(&self, name: &str) -> String {
        format!("{}users/{name}", self.prefix)
    }

    /// Which user a changed key concerns: `users/{name}` or `user-role-mapping/{name}/…`.
    pub fn user_of_key<'k>(&self, key: &'k str) -> Option<&'k str> {
        let rest = key.strip_prefix(self.prefix.as_str())?;
        if let Some(name) = rest.strip_prefix("users/") {
            return Some(name);
        }
        rest.strip_prefix("user-role-mapping/")?.split('/').next()
    }

    /// The user's stored record, read at the returned revision.
    pub async fn get_user(
        &self,
        name: &Username,
    ) -> Result<Read<Option<StoredUser>>, CatalogError> {
        let read = self.kv.get(&self.user_key(name.as_str())).await?;
        let user = read.value.map(|kv| decode_user(&kv)).transpose()?;
        Ok(Read {
            value: user,
            revision: read.revision,
        })
    }

    /// Creates the user; exactly one of several racing creators wins.
    pub async fn create_user(
        &self,
        name: &Username,
        hash: &PasswordHash,
        description: Option<String>,
    ) -> Result<Revision, CatalogError> {
        let key = self.user_key(name.as_str());
        let value = encode_user(hash, description, serde_json::Map::new());
        let txn = Txn::default()
            .when(Compare::Absent(key.clone()))
            .then(Op::Put(key, value));
        let outcome = self.kv.txn(txn).await?;
        match outcome.succeeded {
            true => Ok(outcome.revision),
            false => Err(CatalogError::UserExists(name.to_string())),
        }
    }

    /// Sets `name`'s password hash, creating the user if absent, as one conditional write
    /// read-then-written again when a racing writer got there first, at most `attempts`
    /// times; `None` when every attempt lost its race (for `admin reset-root`).
    pub async fn put_user_hash(
        &self,
        name: &Username,
        hash: &PasswordHash,
        attempts: usize,
    ) -> Result<Option<Revision>, CatalogError> {
        for _ in 0..attempts {
            let attempt = match self.get_user(name).await?.value {
                Some(stored) => {
                    self.replace_user(name, &stored.with_hash(hash.clone()))
                        .await
                }
                None => self.create_user(name, hash, None).await,
            };
            match attempt {
                Ok(revision) => return Ok(Some(revision)),
                Err(CatalogError::UserConflict(_) | CatalogError::UserExists(_)) => continue,
                Err(other) => return Err(other),
            }
        }
        Ok(None)
    }

    /// Replaces the user's record if it is still at `user.mod_revision`; a concurrent change
    /// or delete is reported, never overwritten.
    pub async fn replace_user(
        &self,
        name: &Username,
        user: &StoredUser,
    ) -> Result<Revision, CatalogError> {
        let key = self.user_key(name.as_str());
        let value = encode_user(&user.hash, user.description.clone(), user.extra.clone());
        let txn = Txn::default()
            .when(Compare::ModRevision(key.clone(), user.mod_revision))
            .then(Op::Put(key, value));
        let outcome = self.kv.txn(txn).await?;
        match outcome.succeeded {
            true => Ok(outcome.revision),
            false => Err(CatalogError::UserConflict(name.to_string())),
        }
    }

    /// Deletes the user and their role mappings in one transaction; `None` if absent.
    pub async fn delete_user(&self, name: &Username) -> Result<Option<Revision>, CatalogError> {
        let key = self.user_key(name.as_str());
        let Some(current) = self.kv.get(&key).await?.value else {
            return Ok(None);
        };
        let txn = Txn::default()
            .when(Compare::ModRevision(key.clone(), current.mod_revision))
            .then(Op::Delete(key))
            .then(Op::DeletePrefix(self.mapping_prefix(name.as_str())));
        let outcome = self.kv.txn(txn).await?;
        match outcome.succeeded {
            true => Ok(Some(outcome.revision)),
            false => Err(CatalogError::UserConflict(name.to_string())),
        }
    }

    /// Every username, from the keys (values are not decoded).
    pub async fn list_users(&self) -> Result<Vec<String>, CatalogError> {
        let prefix = self.users_prefix();
        self.names_under(&prefix).await
    }

    /// Creates `root` with the hash `hash()` computes if root does not exist; an existing root
    /// is never touched (and no hash is computed). Returns whether this call created it; a
    /// hashing failure is returned as it is.
    pub async fn ensure_root<E: From<CatalogError>>(
        &self,
        hash: impl AsyncFnOnce() -> Result<PasswordHash, E>,
    ) -> Result<bool, E> {
        let key = self.user_key(ROOT_USER);
        let existing = self.kv.get(&key).await.map_err(CatalogError::from)?;
        if existing.value.is_some() {
            return Ok(false);
        }
        let value = encode_user(&hash().await?, None, serde_json::Map::new());
        let txn = Txn::default()
            .when(Compare::Absent(key.clone()))
            .then(Op::Put(key, value));
        let outcome = self.kv.txn(txn).await.map_err(CatalogError::from)?;
        Ok(outcome.succeeded)
    }
}

fn encode_user(
    hash: &PasswordHash,
    description: Option<String>,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Vec<u8> {
    let value = UserValue {
        encrypted_password: hash.as_str().to_string(),
        description,
        extra,
    };
    // Serializing strings and a JSON map into a Vec cannot fail.
    serde_json::to_vec(&value).expect("user JSON serializes")
}

fn decode_user(kv: &KeyValue) -> Result<StoredUser, CatalogError> {
    let value: UserValue =
        serde_json::from_slice(&kv.value).map_err(|source| CatalogError::BadJson {
            key: kv.key.clone(),
            source,
        })?;
    let hash =
        PasswordHash::parse(&value.encrypted_password).map_err(|source| CatalogError::BadHash {
            key: kv.key.clone(),
            source,
        })?;
    Ok(StoredUser {
        hash,
        description: value.description,
        mod_revision: kv.mod_revision,
        extra: value.extra,
    })
}

#[cfg(test)]
mod tests {

    use proptest::prelude::*;

    use super::*;

    fn kv(value: Vec<u8>) -> KeyValue {
        KeyValue {
            key: "by-dev/meta/root-coord/credential/users/alice".into(),
            value,
            create_revision: 1,
            mod_revision: 2,
        }
    }

    /// A bcrypt hash as Milvus writes it (cost 10), for the fixture below.
    const MILVUS_BCRYPT: &str = "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

    #[test]
    fn a_value_milvus_wrote_decodes_and_keeps_its_fields() {
        let written =
            format!(r#"{{"encrypted_password":"{MILVUS_BCRYPT}","time_tick":451234567890123}}"#);
        let user = StoredUser::decode(&kv(written.into_bytes())).unwrap();
        assert_eq!(user.hash.as_str(), MILVUS_BCRYPT);
        assert_eq!(user.description, None);
        let again: serde_json::Value = serde_json::from_slice(&user.encode()).unwrap();
        assert_eq!(again["time_tick"], 451234567890123u64);
        assert!(again.get("description").is_none());
    }

    #[test]
    fn unreadable_values_name_the_key() {
        let key = "by-dev/meta/root-coord/credential/users/alice";
        for (value, expected) in [
            (&b"not json"[..], "is not a user record"),
            (br#"{"description":"x"}"#, "is not a user record"),
            (br#"{"encrypted_password":"plain"}"#, "holds no valid hash"),
            (br#"{"encrypted_password":7}"#, "is not a user record"),
        ] {
            let err = StoredUser::decode(&kv(value.to_vec()))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("stored value at {key} ")) && err.contains(expected),
                "{err}"
            );
        }
    }

    /// JSON values shaped like stored users, with arbitrary contents.
    fn user_json() -> impl Strategy<Value = serde_json::Value> {
        let hash = prop_oneof![
            "\\PC{0,40}",
            Just(MILVUS_BCRYPT.to_string()),
            "\\$2[abxy]\\$[0-9]{2}\\$[./A-Za-z0-9]{0,60}",
            "\\$argon2id\\$v=19\\$m=[0-9]{1,6},t=[0-9],p=[0-9]\\$[A-Za-z0-9+/]{0,30}\\$[A-Za-z0-9+/]{0,50}",
        ];
        let leaf = prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            "\\PC{0,20}".prop_map(serde_json::Value::from),
            any::<bool>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
        ];
        let extra = proptest::collection::btree_map("[a-z_]{1,12}", leaf.clone(), 0..4);
        (
            prop::option::of(hash.prop_map(serde_json::Value::from)),
            prop::option::of(leaf),
            extra,
        )
            .prop_map(|(hash, description, extra)| {
                let mut map: serde_json::Map<_, _> = extra.into_iter().collect();
                if let Some(hash) = hash {
                    map.insert("encrypted_password".into(), hash);
                }
                if let Some(description) = description {
                    map.insert("description".into(), description);
                }
                serde_json::Value::Object(map)
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = StoredUser::decode(&kv(bytes));
        }

        #[test]
        fn user_shaped_values_never_panic_and_round_trip(value in user_json()) {
            let bytes = serde_json::to_vec(&value).unwrap();
            if let Ok(user) = StoredUser::decode(&kv(bytes)) {
                // What decodes re-encodes to the same record, foreign fields included.
                let again = StoredUser::decode(&kv(user.encode())).unwrap();
                prop_assert_eq!(&again.hash, &user.hash);
                prop_assert_eq!(&again.description, &user.description);
                prop_assert_eq!(&again.extra, &user.extra);
                prop_assert_eq!(again.extra.get("encrypted_password"), None);
            }
        }
    }
}

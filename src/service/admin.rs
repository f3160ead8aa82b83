//! credstore's own administration API (`credstore.v1.CredstoreAdmin`), served from the same
//! [`Api`] state as the Milvus service and behind the same auth layer: `Unlock` lifts a user
//! name's login locks (`credstore user unlock NAME`). It is authorized by decision one with
//! `UpdateCredential`'s rule (`UpdateUser` on that user: root and the admin role by default —
//! whoever may reset the password could get past a lock anyway), audited like every change,
//! and its errors reach the wire through `status::to_status` like every handler's.

use tonic::{Request, Response};

use crate::proto::common::ErrorCode;
use crate::proto::credstore::credstore_admin_server::CredstoreAdmin;
use crate::proto::credstore::{UnlockRequest, UnlockResponse};
use crate::service::milvus::outcome;
use crate::service::status::ServiceError;
use crate::service::{Api, Caller};

#[tonic::async_trait]
impl CredstoreAdmin for Api {
    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, tonic::Status> {
        let result = self.audited(request, async |caller, body| {
            self.unlock_user(&caller, body).await
        });
        let (status, was_locked) = outcome(result.await, ErrorCode::UnexpectedError)?;
        Ok(Response::new(UnlockResponse { status, was_locked }))
    }
}

impl Api {
    /// Clears every lockout record of the name (its account and all its pairs); the other
    /// replicas follow through the lockout watch. Returns whether anything was locked.
    async fn unlock_user(
        &self,
        caller: &Caller,
        body: UnlockRequest,
    ) -> Result<bool, ServiceError> {
        self.require(caller, "UpdateCredential", body.user_name.trim())
            .await?;
        let name = self.username(&body.user_name)?;
        let (revision, was_locked) = self.auth.lockout().unlock(&name).await?;
        caller.wrote(revision);
        Ok(was_locked)
    }
}

//! DeleteDeliveryStream: removes the stream from the catalog, then its log. Records
//! not yet delivered are discarded, as on Firehose; a stream still `CREATING` cannot
//! be deleted yet (`ResourceInUseException`), as on Firehose.

use sluice_protocol::dto::{DeleteDeliveryStreamInput, Empty};
use sluice_protocol::{ApiError, ErrorCode};

use super::{log_failure, ok, AppState, Reply, RequestContext};
use crate::catalog::{Lifecycle, StreamRecord};

pub(super) async fn handle(state: &AppState, ctx: &RequestContext, input: DeleteDeliveryStreamInput) -> Reply {
    let stream = state.stream(ctx, &input.name)?;
    if stream.status(ctx.now_ms) == "CREATING" {
        let message = format!(
            "Firehose {} under account {} is still CREATING and cannot be deleted yet.",
            input.name, state.config.account_id
        );
        return Err(ApiError::new(ErrorCode::ResourceInUseException, message));
    }
    remove(state, &stream).await?;
    ok(&Empty {})
}

/// Removes the stream and its log, whatever its status (the test controls' reset
/// removes streams still `CREATING` too).
pub(super) async fn remove(state: &AppState, stream: &StreamRecord) -> Result<(), ApiError> {
    // The intent is recorded beside the log first: a crash after it finishes the
    // delete at start-up, instead of taking the log for one whose catalog was lost.
    state.keep_definition(stream, Lifecycle::Deleting).await.map_err(log_failure)?;
    let key = (stream.region.clone(), stream.name.clone());
    let removed = state
        .update_catalog(|catalog| {
            // Only the stream read: one made again under the name meanwhile stays.
            if catalog.streams.get(&key).is_some_and(|s| s.id == stream.id) {
                catalog.streams.remove(&key);
            }
            Ok(())
        })
        .await;
    if let Err(error) = removed {
        if let Err(undo) = state.keep_definition(stream, Lifecycle::Active).await {
            tracing::warn!(stream = %stream.name, error = %undo, "Could not undo the delete mark of a stream whose delete failed.");
        }
        return Err(error);
    }
    if let Err(error) = state.log.delete_stream(stream.id).await {
        // The definition says the delete began; startup finishes it if this failed.
        tracing::warn!(stream = %stream.name, %error, "Could not delete a stream's log; it will be removed at restart.");
    }
    Ok(())
}

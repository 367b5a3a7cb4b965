//! DeleteDeliveryStream: removes the stream from the catalog, then its log. Records
//! not yet delivered are discarded, as on Firehose; a stream still `CREATING` cannot
//! be deleted yet (`ResourceInUseException`), as on Firehose.

use sluice_protocol::dto::{DeleteDeliveryStreamInput, Empty};
use sluice_protocol::{ApiError, ErrorCode};

use super::{ok, AppState, Reply, RequestContext};

pub(super) fn handle(state: &AppState, ctx: &RequestContext, input: DeleteDeliveryStreamInput) -> Reply {
    let stream = state.stream(ctx, &input.name)?;
    if stream.status(ctx.now_ms) == "CREATING" {
        let message = format!(
            "Firehose {} under account {} is still CREATING and cannot be deleted yet.",
            input.name, state.config.account_id
        );
        return Err(ApiError::new(ErrorCode::ResourceInUseException, message));
    }
    state.update_catalog(|catalog| {
        catalog.streams.remove(&(ctx.region.clone(), input.name.clone()));
        Ok(())
    })?;
    if let Err(error) = state.log.delete_stream(stream.id) {
        // The catalog no longer names the log; startup removes it if this failed.
        tracing::warn!(stream = %input.name, %error, "Could not delete a stream's log; it will be removed at restart.");
    }
    ok(&Empty {})
}

//! DeleteDeliveryStream: removes the stream from the catalog, then its log. Records
//! not yet delivered are discarded, as on Firehose.

use sluice_protocol::dto::{DeleteDeliveryStreamInput, Empty};

use super::{ok, AppState, Reply, RequestContext};

pub(super) fn handle(state: &AppState, ctx: &RequestContext, input: DeleteDeliveryStreamInput) -> Reply {
    let stream = state.stream(ctx, &input.name)?;
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

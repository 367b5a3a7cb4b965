//! UpdateDestination: optimistic locking on `VersionId`, then a merge (same kind) or
//! a replacement (another kind). The version goes up by one.

use sluice_protocol::dto::{Empty, UpdateDestinationInput};
use sluice_protocol::{ApiError, ErrorCode};

use super::{ok, AppState, Reply, RequestContext};

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidArgumentException, message)
}

pub(super) async fn handle(state: &AppState, ctx: &RequestContext, input: UpdateDestinationInput) -> Reply {
    let [update] = &input.updates[..] else {
        return Err(invalid("Exactly one destination update is supported for a Firehose"));
    };
    if !update.kind.is_supported() {
        return Err(invalid(format!(
            "Sluice does not deliver to {} destinations; supported: ExtendedS3, S3, HttpEndpoint, Iceberg.",
            update.kind.name()
        )));
    }
    // A conversion's table is looked up (in Glue, perhaps) before the catalog
    // change, which cannot wait on it; the change applies the update again.
    let key = (ctx.region.clone(), input.name.clone());
    if let Some(stream) = state.catalog.snapshot().streams.get(&key) {
        let options = sluice_protocol::ParseOptions { allow_http_endpoints: state.config.http.allow_http };
        if let Ok(updated) = stream.destination.apply_with(update, &options) {
            super::check_conversion(state, &updated, &ctx.region).await?;
            super::check_iceberg(state, &updated).await?;
        }
    }
    state
        .update_stream(ctx, &input.name, |stream| {
            if stream.status(ctx.now_ms) != "ACTIVE" {
                let message =
                    format!("Firehose {} under account {} is not ACTIVE.", input.name, state.config.account_id);
                return Err(ApiError::new(ErrorCode::ResourceInUseException, message));
            }
            if input.current_version_id != stream.version_id.to_string() {
                let message = format!(
                "Cannot update firehose: {} since the current version id: {} and specified version id: {} do not match",
                input.name, stream.version_id, input.current_version_id
            );
                return Err(ApiError::new(ErrorCode::ConcurrentModificationException, message));
            }
            if input.destination_id != stream.destination_id {
                return Err(invalid(format!("Destination Id {} not found.", input.destination_id)));
            }
            let options = sluice_protocol::ParseOptions { allow_http_endpoints: state.config.http.allow_http };
            let updated = stream.destination.apply_with(update, &options)?;
            super::check_queries(&updated)?;
            super::check_buckets_shared(state, &updated)?;
            stream.destination = updated;
            stream.version_id += 1;
            stream.last_update_ms = Some(ctx.now_ms);
            Ok(())
        })
        .await?;
    ok(&Empty {})
}

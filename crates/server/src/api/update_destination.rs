//! UpdateDestination: optimistic locking on `VersionId`, then a merge (same kind) or
//! a replacement (another kind). The version goes up by one.

use std::sync::Arc;

use sluice_protocol::dto::{Empty, UpdateDestinationInput};
use sluice_protocol::{ApiError, ErrorCode};

use super::{ok, AppState, Reply, RequestContext};

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidArgumentException, message)
}

pub(super) fn handle(state: &AppState, ctx: &RequestContext, input: UpdateDestinationInput) -> Reply {
    let [update] = &input.updates[..] else {
        return Err(invalid("Exactly one destination update is supported for a Firehose"));
    };
    if !update.kind.is_supported() {
        return Err(invalid(format!(
            "Sluice does not deliver to {} destinations; supported: ExtendedS3, S3, HttpEndpoint.",
            update.kind.name()
        )));
    }
    let account = state.config.account_id.clone();
    state.update_catalog(|catalog| {
        let key = (ctx.region.clone(), input.name.clone());
        let current = catalog.streams.get(&key).ok_or_else(|| ApiError::stream_not_found(&input.name, &account))?;
        if current.status(ctx.now_ms) != "ACTIVE" {
            let message = format!("Firehose {} under account {account} is not ACTIVE.", input.name);
            return Err(ApiError::new(ErrorCode::ResourceInUseException, message));
        }
        if input.current_version_id != current.version_id.to_string() {
            let message = format!(
                "Cannot update firehose: {} since the current version id: {} and specified version id: {} do not match",
                input.name, current.version_id, input.current_version_id
            );
            return Err(ApiError::new(ErrorCode::ConcurrentModificationException, message));
        }
        if input.destination_id != current.destination_id {
            return Err(invalid(format!("Destination Id {} not found.", input.destination_id)));
        }
        let mut stream = (**current).clone();
        stream.destination = current.destination.apply(update)?;
        stream.version_id += 1;
        stream.last_update_ms = Some(ctx.now_ms);
        catalog.streams.insert(key, Arc::new(stream));
        Ok(())
    })?;
    ok(&Empty {})
}

//! TagDeliveryStream: adds or overwrites tags, at most 50 per stream.

use std::sync::Arc;

use sluice_protocol::dto::{Empty, TagDeliveryStreamInput};
use sluice_protocol::limits::TAGS_PER_STREAM_MAX;
use sluice_protocol::{ApiError, ErrorCode};

use super::{ok, AppState, Reply, RequestContext};

pub(super) fn handle(state: &AppState, ctx: &RequestContext, input: TagDeliveryStreamInput) -> Reply {
    state.stream(ctx, &input.name)?;
    let account = state.config.account_id.clone();
    state.update_catalog(|catalog| {
        let key = (ctx.region.clone(), input.name.clone());
        let current = catalog.streams.get(&key).ok_or_else(|| ApiError::stream_not_found(&input.name, &account))?;
        let mut stream = (**current).clone();
        for tag in &input.tags {
            stream.tags.insert(tag.key.clone(), tag.value.clone());
        }
        if stream.tags.len() > TAGS_PER_STREAM_MAX {
            let message = format!(
                "The number of tags on Firehose {} would exceed the limit of {TAGS_PER_STREAM_MAX}.",
                input.name
            );
            return Err(ApiError::new(ErrorCode::LimitExceededException, message));
        }
        catalog.streams.insert(key, Arc::new(stream));
        Ok(())
    })?;
    ok(&Empty {})
}

//! TagDeliveryStream: adds or overwrites tags, at most 50 per stream.

use sluice_protocol::dto::{Empty, TagDeliveryStreamInput};
use sluice_protocol::limits::TAGS_PER_STREAM_MAX;
use sluice_protocol::{ApiError, ErrorCode};

use super::{ok, AppState, Reply, RequestContext};

pub(super) async fn handle(state: &AppState, ctx: &RequestContext, input: TagDeliveryStreamInput) -> Reply {
    state
        .update_stream(ctx, &input.name, |stream| {
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
            Ok(())
        })
        .await?;
    ok(&Empty {})
}

//! UntagDeliveryStream: removes tags; keys that are not there are ignored.

use sluice_protocol::dto::{Empty, UntagDeliveryStreamInput};

use super::{ok, AppState, Reply, RequestContext};

pub(super) async fn handle(state: &AppState, ctx: &RequestContext, input: UntagDeliveryStreamInput) -> Reply {
    state
        .update_stream(ctx, &input.name, |stream| {
            for tag_key in &input.tag_keys {
                stream.tags.remove(tag_key);
            }
            Ok(())
        })
        .await?;
    ok(&Empty {})
}

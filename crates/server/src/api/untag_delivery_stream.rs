//! UntagDeliveryStream: removes tags; keys that are not there are ignored.

use std::sync::Arc;

use sluice_protocol::dto::{Empty, UntagDeliveryStreamInput};
use sluice_protocol::ApiError;

use super::{ok, AppState, Reply, RequestContext};

pub(super) fn handle(state: &AppState, ctx: &RequestContext, input: UntagDeliveryStreamInput) -> Reply {
    state.stream(ctx, &input.name)?;
    let account = state.config.account_id.clone();
    state.update_catalog(|catalog| {
        let key = (ctx.region.clone(), input.name.clone());
        let current = catalog.streams.get(&key).ok_or_else(|| ApiError::stream_not_found(&input.name, &account))?;
        let mut stream = (**current).clone();
        for tag_key in &input.tag_keys {
            stream.tags.remove(tag_key);
        }
        catalog.streams.insert(key, Arc::new(stream));
        Ok(())
    })?;
    ok(&Empty {})
}

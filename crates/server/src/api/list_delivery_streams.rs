//! ListDeliveryStreams: names in the request's region, alphabetical, paginated.

use sluice_protocol::dto::{ListDeliveryStreamsInput, ListDeliveryStreamsOutput};
use sluice_protocol::limits::LIST_STREAMS_LIMIT_DEFAULT;

use super::{ok, AppState, Reply, RequestContext};

pub(super) fn handle(state: &AppState, ctx: &RequestContext, input: ListDeliveryStreamsInput) -> Reply {
    let limit = input.limit.map(|l| l as usize).unwrap_or(LIST_STREAMS_LIMIT_DEFAULT);
    let catalog = state.catalog.snapshot();
    let mut names = catalog
        .streams
        .values()
        .filter(|s| s.region == ctx.region)
        .filter(|s| input.delivery_stream_type.as_deref().is_none_or(|t| t == s.stream_type))
        .map(|s| s.name.clone())
        .filter(|n| input.exclusive_start_delivery_stream_name.as_deref().is_none_or(|start| n.as_str() > start));
    let page: Vec<String> = names.by_ref().take(limit).collect();
    let has_more = names.next().is_some();
    ok(&ListDeliveryStreamsOutput { delivery_stream_names: page, has_more_delivery_streams: has_more })
}

//! ListTagsForDeliveryStream: tags by key, paginated.

use sluice_protocol::dto::{ListTagsForDeliveryStreamInput, ListTagsForDeliveryStreamOutput, Tag};
use sluice_protocol::limits::LIST_TAGS_LIMIT_DEFAULT;

use super::{ok, AppState, Reply, RequestContext};

pub(super) fn handle(state: &AppState, ctx: &RequestContext, input: ListTagsForDeliveryStreamInput) -> Reply {
    let stream = state.stream(ctx, &input.name)?;
    let limit = input.limit.map(|l| l as usize).unwrap_or(LIST_TAGS_LIMIT_DEFAULT);
    let mut tags = stream
        .tags
        .iter()
        .filter(|(k, _)| input.exclusive_start_tag_key.as_deref().is_none_or(|start| k.as_str() > start))
        .map(|(k, v)| Tag { key: k.clone(), value: v.clone() });
    let page: Vec<Tag> = tags.by_ref().take(limit).collect();
    let has_more_tags = tags.next().is_some();
    ok(&ListTagsForDeliveryStreamOutput { tags: page, has_more_tags })
}

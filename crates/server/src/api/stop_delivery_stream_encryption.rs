//! StopDeliveryStreamEncryption: records are written in the clear from this call on;
//! records already written stay encrypted and readable. The key type and ARN are
//! kept, as Firehose keeps them.

use std::sync::Arc;

use sluice_protocol::dto::{Empty, StopDeliveryStreamEncryptionInput};
use sluice_protocol::ApiError;

use super::start_delivery_stream_encryption::check_can_change;
use super::{ok, AppState, Reply, RequestContext};

pub(super) fn handle(state: &AppState, ctx: &RequestContext, input: StopDeliveryStreamEncryptionInput) -> Reply {
    let account = state.config.account_id.clone();
    state.update_catalog(|catalog| {
        let key = (ctx.region.clone(), input.name.clone());
        let current = catalog.streams.get(&key).ok_or_else(|| ApiError::stream_not_found(&input.name, &account))?;
        let mut recent = check_can_change(state, ctx, current)?;
        recent.push(ctx.now_ms);
        let mut stream = (**current).clone();
        stream.encryption.enabled = false;
        stream.encryption.changed_at_ms = ctx.now_ms;
        stream.encryption.changes_ms = recent;
        catalog.streams.insert(key, Arc::new(stream));
        Ok(())
    })?;
    ok(&Empty {})
}

//! StopDeliveryStreamEncryption: records are written in the clear from this call on;
//! records already written stay encrypted and readable. The key type and ARN are
//! kept, as Firehose keeps them.

use sluice_protocol::dto::{Empty, StopDeliveryStreamEncryptionInput};

use super::start_delivery_stream_encryption::check_can_change;
use super::{ok, AppState, Reply, RequestContext};

pub(super) async fn handle(state: &AppState, ctx: &RequestContext, input: StopDeliveryStreamEncryptionInput) -> Reply {
    state
        .update_stream(ctx, &input.name, |stream| {
            let mut recent = check_can_change(state, ctx, stream)?;
            recent.push(ctx.now_ms);
            stream.encryption.enabled = false;
            stream.encryption.changed_at_ms = ctx.now_ms;
            stream.encryption.changes_ms = recent;
            Ok(())
        })
        .await?;
    ok(&Empty {})
}

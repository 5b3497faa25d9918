//! The data plane's part in garbage collection: shard 0 of every data plane asks the control
//! plane for WAL objects no index entry refers to any more (past their grace period), deletes
//! them through its object store, and reports them with its next request. The control plane
//! decides what is garbage; this only carries it out, since the data planes hold the object
//! store. Several data planes may be handed the same object: deleting it twice is harmless.

use crate::metrics::M;
use crate::shard::{Shard, RPC_TIMEOUT};
use futures::StreamExt;
use sluice_rpc::{body::Body, Garbage, TakeGarbage};
use std::rc::Rc;
use std::time::Duration;

/// How often to ask when there was nothing to delete.
const IDLE: Duration = Duration::from_secs(2);
/// Objects asked for at once, and deleted concurrently.
const BATCH: u32 = 256;
const CONCURRENT: usize = 16;

/// Runs until the process exits.
pub async fn run(shard: Rc<Shard>) {
    let mut deleted: Vec<String> = Vec::new();
    loop {
        let ask = TakeGarbage { deleted: std::mem::take(&mut deleted), max: BATCH };
        let objects = match shard.rpc.call(Body::TakeGarbage(ask.clone()), RPC_TIMEOUT).await {
            Ok(Body::Garbage(Garbage { objects })) => objects,
            other => {
                // Report the same deletions again next time (forgetting a record twice is fine).
                tracing::debug!(answer = ?other.map(|b| std::mem::discriminant(&b)), "cannot take garbage");
                deleted = ask.deleted;
                glommio::timer::sleep(IDLE).await;
                continue;
            }
        };
        let full = objects.len() as u32 >= BATCH;
        let store = shard.store.clone();
        let results: Vec<(String, std::io::Result<()>)> = futures::stream::iter(objects)
            .map(|o| {
                let store = store.clone();
                async move {
                    let r = store.delete(&o.key, o.size).await;
                    (o.key, r)
                }
            })
            .buffer_unordered(CONCURRENT)
            .collect()
            .await;
        for (key, r) in results {
            match r {
                Ok(()) => deleted.push(key),
                Err(e) => tracing::warn!(object = %key, error = %e, "cannot delete a garbage WAL object; it is handed out again"),
            }
        }
        shard.metrics.add(M::GcObjectsDeleted, deleted.len() as u64);
        if !full && deleted.is_empty() {
            glommio::timer::sleep(IDLE).await;
        }
    }
}

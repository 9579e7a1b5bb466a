//! A collection's status: the published snapshot and what waits for the next refit.

use serde::{Deserialize, Serialize};

use super::{
    delta_time_ms, list_deltas, read_current, CollectionLayout, CurrentPointer, Delta, RefitSummary,
};
use crate::error::Result;
use crate::ports::store::{ObjectStore, StoreError};

/// What `featurize status --collection` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectionStatus {
    /// The collection.
    pub collection: String,
    /// The published pointer, if any.
    pub current: Option<CurrentPointer>,
    /// The published snapshot's summary.
    pub summary: Option<RefitSummary>,
    /// Deltas waiting for the next refit.
    pub pending_deltas: usize,
    /// Changes (entries) they hold.
    pub pending_changes: usize,
    /// The newest waiting delta's time (RFC 3339-free: Unix ms).
    pub last_change_ms: Option<u64>,
    /// Where the store is (for messages).
    pub location: String,
}

/// Reads a collection's status: the published snapshot and what waits for the next refit.
pub async fn collection_status<S: ObjectStore>(
    store: &S,
    collection: &str,
) -> Result<CollectionStatus> {
    let layout = CollectionLayout::new(collection);
    let current = read_current(store, &layout).await?.map(|(p, _)| p);
    let summary = match &current {
        Some(p) => match store.get(&p.summary).await {
            Ok(b) => Some(serde_json::from_slice(&b)?),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let ids = list_deltas(store, &layout).await?;
    let mut pending_changes = 0;
    for id in &ids {
        match store.get(&layout.delta_doc(id)).await {
            Ok(b) => pending_changes += serde_json::from_slice::<Delta>(&b)?.entries.len(),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(CollectionStatus {
        collection: collection.to_string(),
        last_change_ms: ids.iter().filter_map(|id| delta_time_ms(id)).max(),
        pending_deltas: ids.len(),
        pending_changes,
        current,
        summary,
        location: store.describe(&layout.prefix()),
    })
}

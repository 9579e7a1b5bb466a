//! Reading and writing a run's manifest: `manifest.json` (the run's options and each shard's
//! image count) plus one image list per shard. A featurizer reads the small header and its
//! own shard's list, so what it reads grows with its shard, not with the run.

use futures::stream::{self, StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::layout::RunLayout;
use crate::manifest::{ImageRef, Manifest};
use crate::ports::store::{ObjectStore, StoreError};

/// Writes the shard lists, then `manifest.json` only if absent (the run's commit point: once
/// it exists, every shard list does). Returns whether this call created the manifest.
/// `concurrency` bounds the shard-list writes in flight.
pub async fn write<S: ObjectStore>(
    store: &S,
    manifest: &Manifest,
    concurrency: usize,
) -> Result<bool> {
    let layout = RunLayout::new(&manifest.run_id);
    stream::iter(manifest.shards.iter().map(|shard| {
        let key = layout.shard_list(&manifest.fingerprint, shard.id);
        async move {
            let body = serde_json::to_vec(&shard.images)?;
            store.put(&key, body.into()).await?;
            Ok::<_, Error>(())
        }
    }))
    .buffer_unordered(concurrency.max(1))
    .try_collect::<Vec<()>>()
    .await?;
    let header = serde_json::to_vec_pretty(&manifest.header())?;
    Ok(store
        .put_if_absent(&layout.manifest(), header.into())
        .await?)
}

/// The manifest without image lists (each shard's `count` is set).
pub async fn read_header<S: ObjectStore>(store: &S, layout: &RunLayout) -> Result<Manifest> {
    match store.get(&layout.manifest()).await {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes)?),
        Err(StoreError::NotFound(_)) => Err(Error::RunState(format!(
            "run {} does not exist (no {})",
            layout.run_id(),
            store.describe(&layout.manifest())
        ))),
        Err(e) => Err(e.into()),
    }
}

/// The images of one shard, checked against the manifest's count.
pub async fn read_shard<S: ObjectStore>(
    store: &S,
    manifest: &Manifest,
    shard: usize,
) -> Result<Vec<ImageRef>> {
    let layout = RunLayout::new(&manifest.run_id);
    let expected = manifest.shards.get(shard).ok_or_else(|| {
        Error::RunState(format!(
            "run {} has {} shards, there is no shard {shard}",
            manifest.run_id,
            manifest.shards.len()
        ))
    })?;
    if !expected.images.is_empty() {
        return Ok(expected.images.clone());
    }
    let key = layout.shard_list(&manifest.fingerprint, shard);
    let images: Vec<ImageRef> = match store.get(&key).await {
        Ok(bytes) => serde_json::from_slice(&bytes)?,
        Err(StoreError::NotFound(_)) => {
            return Err(Error::RunState(format!(
                "run {}: shard {shard}'s image list {} is missing",
                manifest.run_id,
                store.describe(&key)
            )))
        }
        Err(e) => return Err(e.into()),
    };
    if images.len() != expected.count {
        return Err(Error::RunState(format!(
            "run {}: shard {shard}'s list has {} images, the manifest says {}",
            manifest.run_id,
            images.len(),
            expected.count
        )));
    }
    Ok(images)
}

/// The whole manifest, every shard's list included (the reducer's invariant checks).
pub async fn read_full<S: ObjectStore>(
    store: &S,
    layout: &RunLayout,
    concurrency: usize,
) -> Result<Manifest> {
    let mut manifest = read_header(store, layout).await?;
    let lists: Vec<Vec<ImageRef>> =
        stream::iter((0..manifest.shards.len()).map(|id| read_shard(store, &manifest, id)))
            .buffered(concurrency.max(1))
            .try_collect()
            .await?;
    for (shard, images) in manifest.shards.iter_mut().zip(lists) {
        shard.images = images;
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{make_shards, InputLocation, RunOptions};
    use crate::ports::store::FsStore;

    fn manifest(n: usize, shard_size: usize) -> Manifest {
        let images = (0..n)
            .map(|i| ImageRef {
                path: format!("c{}/{i:04}.jpg", i % 3),
                label: format!("c{}", i % 3),
                version: String::new(),
                size: 0,
            })
            .collect();
        let options = RunOptions {
            shard_size,
            ..RunOptions::default()
        };
        Manifest {
            run_id: "r1".into(),
            created_at: String::new(),
            input: InputLocation {
                uri: "in".into(),
                bucket: None,
                prefix: String::new(),
            },
            shards: make_shards(images, &options),
            options,
            total_images: n,
            splitter: None,
            model_sha256: String::new(),
            fingerprint: "0123456789abcdef0123".into(),
            request: None,
        }
    }

    #[test]
    fn header_holds_counts_and_each_shard_reads_its_own_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        let m = manifest(10, 4);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(write(&store, &m, 2).await.unwrap());
            assert!(
                !write(&store, &m, 2).await.unwrap(),
                "the manifest is created once"
            );
            let layout = RunLayout::new("r1");
            let header = read_header(&store, &layout).await.unwrap();
            assert_eq!(
                header
                    .shards
                    .iter()
                    .map(|s| (s.count, s.images.len()))
                    .collect::<Vec<_>>(),
                vec![(4, 0), (4, 0), (2, 0)]
            );
            let raw = store.get(&layout.manifest()).await.unwrap();
            assert!(
                !String::from_utf8_lossy(&raw).contains("0004.jpg"),
                "no image list in the header"
            );
            assert_eq!(
                read_shard(&store, &header, 1).await.unwrap(),
                m.shards[1].images
            );
            assert_eq!(read_full(&store, &layout, 2).await.unwrap(), m);
            assert!(read_shard(&store, &header, 3).await.is_err());
            // A list that disagrees with the header's count is refused.
            store
                .put(&layout.shard_list(&m.fingerprint, 2), b"[]".to_vec().into())
                .await
                .unwrap();
            let err = read_shard(&store, &header, 2).await.unwrap_err();
            assert!(err.to_string().contains("the manifest says 2"), "{err}");
        });
    }
}

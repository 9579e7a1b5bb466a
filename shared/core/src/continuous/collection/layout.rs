//! The keys of a collection, and how inbox keys map to collections.

use super::{valid_collection, COLLECTIONS_PREFIX};

/// The keys of one collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionLayout {
    name: String,
}

impl CollectionLayout {
    /// The layout of collection `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
    /// The collection's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// `collections/<c>/`.
    pub fn prefix(&self) -> String {
        format!("{COLLECTIONS_PREFIX}{}/", self.name)
    }
    /// The pointer to the published snapshot, written last.
    pub fn current(&self) -> String {
        format!("{}current.json", self.prefix())
    }
    /// Where processed changes wait for the next refit.
    pub fn deltas_prefix(&self) -> String {
        format!("{}staging/deltas/", self.prefix())
    }
    /// A delta's document (its commit point, written after its part).
    pub fn delta_doc(&self, id: &str) -> String {
        format!("{}{id}.json", self.deltas_prefix())
    }
    /// A delta's features (the `Results` schema).
    pub fn delta_part(&self, id: &str) -> String {
        format!("{}{id}.parquet", self.deltas_prefix())
    }
    /// Every snapshot.
    pub fn snapshots_prefix(&self) -> String {
        format!("{}snapshots/", self.prefix())
    }
    /// One snapshot's folder.
    pub fn snapshot_prefix(&self, id: &str) -> String {
        format!("{}{id}/", self.snapshots_prefix())
    }
    /// Its `Results` dataset (a plain Parquet folder).
    pub fn results_prefix(&self, id: &str) -> String {
        format!("{}Results/", self.snapshot_prefix(id))
    }
    /// Its `Results_PCA` dataset.
    pub fn pca_prefix(&self, id: &str) -> String {
        format!("{}Results_PCA/", self.snapshot_prefix(id))
    }
    /// Its PCA model.
    pub fn pca_model(&self, id: &str) -> String {
        format!("{}pca_model.json", self.snapshot_prefix(id))
    }
    /// Its summary.
    pub fn summary(&self, id: &str) -> String {
        format!("{}summary.json", self.snapshot_prefix(id))
    }
    /// Its error list.
    pub fn errors(&self, id: &str) -> String {
        format!("{}errors.json", self.snapshot_prefix(id))
    }
    /// Written when the snapshot is complete (before the pointer).
    pub fn success(&self, id: &str) -> String {
        format!("{}_SUCCESS", self.snapshot_prefix(id))
    }
    /// Every state.
    pub fn states_prefix(&self) -> String {
        format!("{}state/", self.prefix())
    }
    /// The index (path → content, label, part) of a snapshot, as one document: the format
    /// before the index was split in buckets, still read ([`super::read_index`]).
    pub fn state_index(&self, id: &str) -> String {
        format!("{}{id}/index.json", self.states_prefix())
    }
    /// The bucketed index's manifest (buckets, their parts and counts, the model).
    pub fn state_buckets(&self, id: &str) -> String {
        format!("{}{id}/buckets.json", self.states_prefix())
    }
    /// The index shard of bucket `b` (path → entry, for the paths that hash to it).
    pub fn state_shard(&self, id: &str, b: usize) -> String {
        format!("{}{id}/index/{b:05}.json", self.states_prefix())
    }
    /// A snapshot's publication document: what publishes it once every projection part is
    /// written (when the projection is fanned out).
    pub fn state_publish(&self, id: &str) -> String {
        format!("{}{id}/publish.json", self.states_prefix())
    }
    /// The running sums of a snapshot's rows.
    pub fn state_sums(&self, id: &str) -> String {
        format!("{}{id}/sums.bin", self.states_prefix())
    }
}

/// Splits an object key under `inbox` into (collection, path in the collection, label):
/// `inbox/c/a/b/x.jpg` → (`c`, `a/b/x.jpg`, `b`). The label is the parent folder's name,
/// the collection's own name for a file directly under it. `None` for keys outside the
/// inbox or not inside a collection folder.
pub fn split_inbox_key(inbox: &str, key: &str) -> Option<(String, String, String)> {
    let rest = key.strip_prefix(inbox)?;
    let (collection, path) = rest.split_once('/')?;
    if !valid_collection(collection) || path.is_empty() || path.ends_with('/') {
        return None;
    }
    let label = crate::batch::listing::label_for(path, collection);
    Some((collection.to_string(), path.to_string(), label))
}

/// The object key of `path` in `collection`.
pub fn inbox_key(inbox: &str, collection: &str, path: &str) -> String {
    format!("{inbox}{collection}/{path}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::continuous::collection::{delta_time_ms, new_delta_id};

    #[test]
    fn inbox_keys_split_into_collection_path_and_label() {
        assert_eq!(
            split_inbox_key("inbox/", "inbox/fruits/Apple/1.jpg"),
            Some(("fruits".into(), "Apple/1.jpg".into(), "Apple".into()))
        );
        assert_eq!(
            split_inbox_key("inbox/", "inbox/fruits/a/b/x.png"),
            Some(("fruits".into(), "a/b/x.png".into(), "b".into()))
        );
        assert_eq!(
            split_inbox_key("inbox/", "inbox/fruits/x.png"),
            Some(("fruits".into(), "x.png".into(), "fruits".into()))
        );
        assert_eq!(split_inbox_key("inbox/", "other/fruits/a/x.png"), None);
        assert_eq!(split_inbox_key("inbox/", "inbox/x.png"), None);
        assert_eq!(split_inbox_key("inbox/", "inbox/fruits/"), None);
        assert_eq!(split_inbox_key("", "fruits/a/x.png").unwrap().0, "fruits");
        assert_eq!(inbox_key("inbox/", "c", "a/x.jpg"), "inbox/c/a/x.jpg");
        assert_eq!(delta_time_ms(&new_delta_id()).map(|t| t > 0), Some(true));
    }
}

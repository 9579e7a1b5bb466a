//! Listing: which objects are images, their labels, in a deterministic order.

use globset::GlobMatcher;

use crate::error::Result;
use crate::manifest::{compile_image_glob, ImageRef};
use crate::ports::store::ObjectStore;

/// Selects image files by a glob on the file name, case-insensitively (`*.{jpg,jpeg,png}`).
#[derive(Debug, Clone)]
pub struct ImageFilter {
    matcher: GlobMatcher,
}

impl ImageFilter {
    /// Compiles the glob.
    pub fn new(glob: &str) -> Result<Self> {
        Ok(Self {
            matcher: compile_image_glob(glob)?,
        })
    }

    /// Whether the object at `key` is selected (the glob is tried on the file name).
    pub fn matches(&self, key: &str) -> bool {
        let name = key.rsplit('/').next().unwrap_or(key);
        self.matcher.is_match(name)
    }
}

/// The label of an image: its parent folder's name (as the original notebook did);
/// for an image directly under the input root (or under a folder with an empty name, as
/// in the S3 key `images//x.jpg`), the root's own name.
pub fn label_for(relative_path: &str, root_name: &str) -> String {
    let mut parts = relative_path.rsplit('/');
    parts.next();
    match parts.next() {
        Some(parent) if !parent.is_empty() => parent.to_string(),
        _ => root_name.to_string(),
    }
}

/// The last component of a folder path or key prefix (`"a/b/"` -> `"b"`).
pub fn root_name(root: &str) -> String {
    root.trim_end_matches(['/', '\\'])
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("")
        .to_string()
}

/// Lists the images under `prefix` in `store`: selected by `filter`, paths relative to the
/// prefix, sorted by path so shards are the same every time. Keys are kept exactly as
/// listed (no slash is stripped or merged), so `prefix + path` is always the listed key, and
/// each keeps its listed version (the featurizer reads exactly that content).
///
/// Every listed object named like an image is an input image, and so ends in `Results` or in
/// the error list with a reason: locally that includes dangling symbolic links, link loops,
/// named pipes and sockets, which the local store lists without opening them and whose
/// reads fail with the reason (see `FsStore::list`). Folders, even named like images, are
/// walked, never images.
pub async fn list_images<S: ObjectStore>(
    store: &S,
    prefix: &str,
    filter: &ImageFilter,
    root_label: &str,
) -> Result<Vec<ImageRef>> {
    let mut images: Vec<ImageRef> = store
        .list(prefix)
        .await?
        .into_iter()
        .filter(|o| filter.matches(&o.key))
        .filter_map(|o| {
            let path = o.key.strip_prefix(prefix)?.to_string();
            (!path.is_empty()).then(|| ImageRef {
                label: label_for(&path, root_label),
                path,
                version: o.version,
                size: o.size,
            })
        })
        .collect();
    images.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_is_case_insensitive_on_file_names() {
        let f = ImageFilter::new("*.{jpg,jpeg,png}").unwrap();
        assert!(f.matches("a/b/x.JPG"));
        assert!(f.matches("x.jpeg"));
        assert!(f.matches("dir.png/x.Png"));
        assert!(!f.matches("a.jpg/readme.txt"));
        assert!(!f.matches("x.gif"));
        assert!(ImageFilter::new("*.{jpg").is_err());
    }

    #[test]
    fn labels_are_parent_folder_names() {
        assert_eq!(
            label_for("Apple Braeburn/321_100.jpg", "Test"),
            "Apple Braeburn"
        );
        assert_eq!(label_for("a/b/c.jpg", "Test"), "b");
        assert_eq!(label_for("c.jpg", "Test"), "Test");
        assert_eq!(label_for("/c.jpg", "Test"), "Test");
        assert_eq!(label_for("a//c.jpg", "Test"), "Test");
        assert_eq!(root_name("/data/fruits-360/Test/"), "Test");
        assert_eq!(root_name("images/smoke/"), "smoke");
    }
}

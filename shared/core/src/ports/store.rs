//! The object-store port: what the handlers need from S3, and its local-filesystem adapter.
//!
//! Keys are `/`-separated relative paths, as in S3. The S3 adapter lives in [`aws::sdk`].

use std::future::Future;
use std::path::{Path, PathBuf};

pub use bytes::Bytes;
use thiserror::Error;

/// Failures of an object store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("object not found: {0}")]
    NotFound(String),
    /// A local file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation (read, write, list, ...).
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The key is not acceptable (absolute, `..`, empty).
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
    /// A remote (S3) call failed.
    #[error("s3 {op} {key}{}: {source}", if *.transient { " (transient)" } else { "" })]
    Remote {
        /// The API call.
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// Whether a retry can help: throttling (503 SlowDown, 429), other 5xx, timeouts and
        /// connection errors. Access denied, bad requests and the like are not.
        transient: bool,
        /// The SDK error, with its chain.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// Whether retrying the same call later can succeed. Only [`StoreError::NotFound`] and
    /// the non-transient remote errors are permanent; local I/O errors count as transient
    /// (a full disk or a busy file is not the object's fault).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::NotFound(_) | StoreError::InvalidKey(_) => false,
            StoreError::Io { .. } => true,
            StoreError::Remote { transient, .. } => *transient,
        }
    }
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The full key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// What identifies this content of the key: the ETag on S3, size and modification time
    /// on a local folder. A run id covers it, so an image overwritten under the same key
    /// makes a new run instead of resuming into old results.
    pub version: String,
}

/// An object's body with its entity tag, for a later [`ObjectStore::put_if_match`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The content.
    pub body: Bytes,
    /// The entity tag of exactly this content (opaque).
    pub etag: String,
}

/// The storage the pipeline reads images from and writes runs to.
pub trait ObjectStore: Send + Sync {
    /// Reads a whole object.
    fn get(&self, key: &str) -> impl Future<Output = Result<Bytes, StoreError>> + Send;
    /// Writes (or overwrites) an object.
    fn put(&self, key: &str, body: Bytes) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Writes an object only if no object has that key; `Ok(false)` when it already existed.
    /// This is the pipeline's only synchronization primitive (S3 `If-None-Match: *`).
    fn put_if_absent(
        &self,
        key: &str,
        body: Bytes,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Reads a whole object with its entity tag.
    fn get_versioned(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Versioned, StoreError>> + Send;
    /// Replaces an object only if its entity tag is still `etag` (S3 `If-Match`);
    /// `Ok(false)` when it changed or is gone. The reducer's lock is fenced with it.
    fn put_if_match(
        &self,
        key: &str,
        body: Bytes,
        etag: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Whether an object exists.
    fn exists(&self, key: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// The entity tag of an object's current content, without its body (S3 HeadObject;
    /// [`StoreError::NotFound`] when it is gone). The same tag [`ObjectStore::get_versioned`]
    /// gives. By default it reads the object; the S3 adapter makes a HEAD request.
    fn head(&self, key: &str) -> impl Future<Output = Result<String, StoreError>> + Send {
        async move { Ok(self.get_versioned(key).await?.etag) }
    }
    /// Deletes an object (no error if it is already gone).
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Lists every object under a prefix, all pages, sorted by key.
    fn list(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<ObjectInfo>, StoreError>> + Send;
    /// A human-readable location for a key (a path or an `s3://` URI), for messages.
    fn describe(&self, key: &str) -> String;
}

/// An object store on a local folder: the embedded mode's store and the tests'.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder this store writes to.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let valid = !key.is_empty()
            && !key.starts_with('/')
            && key
                .split('/')
                .all(|part| !part.is_empty() && part != ".." && part != ".");
        if !valid {
            return Err(StoreError::InvalidKey(key.to_string()));
        }
        Ok(self.root.join(key))
    }

    fn io(op: &'static str, path: &Path, source: std::io::Error) -> StoreError {
        StoreError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    fn ensure_parent(path: &Path) -> Result<(), StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Self::io("create folder", parent, e))?;
        }
        Ok(())
    }
}

/// The local store's entity tag: a digest of the content (so that any rewrite changes it).
fn content_etag(body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(body);
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

impl FsStore {
    /// A temporary name beside `path`, unique to this process, thread and call; hidden from
    /// listings.
    fn temp_path(path: &Path) -> PathBuf {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        path.with_file_name(format!(
            ".{}.tmp-{}-{}",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("object"),
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ))
    }

    /// Writes `body` to a fresh temporary file and flushes it to disk.
    fn write_temp(path: &Path, body: &[u8]) -> Result<PathBuf, StoreError> {
        use std::io::Write;
        let tmp = Self::temp_path(path);
        let mut file = std::fs::File::create(&tmp).map_err(|e| Self::io("write", &tmp, e))?;
        file.write_all(body)
            .and_then(|()| file.sync_all())
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Self::io("write", &tmp, e)
            })?;
        Ok(tmp)
    }

    /// Flushes a folder's entries (a rename or link in it) to disk.
    fn sync_dir(path: &Path) -> Result<(), StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::File::open(parent)
                .and_then(|dir| dir.sync_all())
                .map_err(|e| Self::io("sync folder", parent, e))?;
        }
        Ok(())
    }

    /// Holds an exclusive lock on the object's folder for a read-compare-write.
    fn lock_folder(path: &Path) -> Result<std::fs::File, StoreError> {
        let parent = path.parent().unwrap_or(Path::new("."));
        let dir = std::fs::File::open(parent).map_err(|e| Self::io("open folder", parent, e))?;
        dir.lock().map_err(|e| Self::io("lock folder", parent, e))?;
        Ok(dir)
    }
}

impl ObjectStore for FsStore {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.path(key)?;
        match std::fs::read(&path) {
            Ok(data) => Ok(Bytes::from(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::NotFound(key.to_string()))
            }
            Err(e) => Err(Self::io("read", &path, e)),
        }
    }

    async fn get_versioned(&self, key: &str) -> Result<Versioned, StoreError> {
        let body = self.get(key).await?;
        Ok(Versioned {
            etag: content_etag(&body),
            body,
        })
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let path = self.path(key)?;
        Self::ensure_parent(&path)?;
        // Write and flush a temporary file, then rename it: readers never see a half-written
        // object, and a crash leaves either the old object or the new one.
        let tmp = Self::write_temp(&path, &body)?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Self::io("rename", &path, e)
        })?;
        Self::sync_dir(&path)
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        Self::ensure_parent(&path)?;
        // The complete, flushed content is linked into place: creating the name is the atomic
        // step (link fails if it exists), so a crash never leaves an empty or partial object.
        let tmp = Self::write_temp(&path, &body)?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                Self::sync_dir(&path)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Self::io("create", &path, e)),
        }
    }

    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        Self::ensure_parent(&path)?;
        let _folder_lock = Self::lock_folder(&path)?;
        let current = match std::fs::read(&path) {
            Ok(data) => content_etag(&data),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Self::io("read", &path, e)),
        };
        if current != etag {
            return Ok(false);
        }
        let tmp = Self::write_temp(&path, &body)?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Self::io("rename", &path, e)
        })?;
        Self::sync_dir(&path)?;
        Ok(true)
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.path(key)?.is_file())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::io("delete", &path, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        // List the deepest folder the prefix names, then filter by the full prefix, like S3.
        let folder = match prefix.rfind('/') {
            Some(i) => self.root.join(&prefix[..i]),
            None => self.root.clone(),
        };
        if !folder.is_dir() {
            return Ok(Vec::new());
        }
        let mut objects = Vec::new();
        for entry in walkdir::WalkDir::new(&folder).follow_links(true) {
            let entry = entry.map_err(|e| {
                let path = e.path().unwrap_or(&folder).to_path_buf();
                Self::io("list", &path, e.into())
            })?;
            if !entry.file_type().is_file() {
                continue;
            }
            let Ok(relative) = entry.path().strip_prefix(&self.root) else {
                continue;
            };
            let Some(key) = relative
                .to_str()
                .map(|k| k.replace(std::path::MAIN_SEPARATOR, "/"))
            else {
                continue;
            };
            let hidden_temp = key
                .rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with('.') && n.contains(".tmp-"));
            if key.starts_with(prefix) && !hidden_temp {
                let meta = entry
                    .metadata()
                    .map_err(|e| Self::io("stat", entry.path(), e.into()))?;
                let mtime_ns = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                objects.push(ObjectInfo {
                    key,
                    size: meta.len(),
                    version: format!("{}-{mtime_ns}", meta.len()),
                });
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    fn describe(&self, key: &str) -> String {
        self.root.join(key).display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::block;

    #[test]
    fn concurrent_creates_have_one_winner_with_complete_content() {
        let dir = std::env::temp_dir().join(format!("fsstore-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = FsStore::new(&dir);
        let body = |i: usize| Bytes::from(vec![b'a' + i as u8; 1 << 16]);
        let winners: Vec<usize> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let store = store.clone();
                    s.spawn(move || block(store.put_if_absent("runs/r/claim", body(i))).unwrap())
                })
                .collect();
            handles
                .into_iter()
                .enumerate()
                .filter_map(|(i, h)| h.join().unwrap().then_some(i))
                .collect()
        });
        assert_eq!(winners.len(), 1, "exactly one create wins");
        let content = block(store.get("runs/r/claim")).unwrap();
        assert_eq!(content, body(winners[0]), "the winner's whole content");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn fs_store_round_trip_list_and_conditional_put() {
        let dir = std::env::temp_dir().join(format!("fsstore-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = FsStore::new(&dir);
        block(async {
            store
                .put("a/b/one.txt", Bytes::from_static(b"1"))
                .await
                .unwrap();
            store
                .put("a/two.txt", Bytes::from_static(b"22"))
                .await
                .unwrap();
            store.put("ab.txt", Bytes::from_static(b"3")).await.unwrap();
            assert_eq!(
                store.get("a/b/one.txt").await.unwrap(),
                Bytes::from_static(b"1")
            );
            assert!(matches!(
                store.get("missing").await,
                Err(StoreError::NotFound(_))
            ));
            let store_ref = &store;
            let keys = move |prefix: &'static str| async move {
                let listed = store_ref.list(prefix).await.unwrap();
                listed.into_iter().map(|o| o.key).collect::<Vec<_>>()
            };
            assert_eq!(keys("a/").await, vec!["a/b/one.txt", "a/two.txt"]);
            assert_eq!(keys("a").await, vec!["a/b/one.txt", "a/two.txt", "ab.txt"]);
            assert!(store
                .put_if_absent("lock", Bytes::from_static(b"x"))
                .await
                .unwrap());
            assert!(!store
                .put_if_absent("lock", Bytes::from_static(b"y"))
                .await
                .unwrap());
            assert_eq!(store.get("lock").await.unwrap(), Bytes::from_static(b"x"));
            // Conditional replace: only with the current entity tag.
            let v = store.get_versioned("lock").await.unwrap();
            assert!(store
                .put_if_match("lock", Bytes::from_static(b"z"), &v.etag)
                .await
                .unwrap());
            assert!(!store
                .put_if_match("lock", Bytes::from_static(b"w"), &v.etag)
                .await
                .unwrap());
            assert_eq!(store.get("lock").await.unwrap(), Bytes::from_static(b"z"));
            assert!(!store
                .put_if_match("absent", Bytes::from_static(b"w"), &v.etag)
                .await
                .unwrap());
            // No temporary file is left behind or listed.
            let names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
            store.delete("lock").await.unwrap();
            assert!(!store.exists("lock").await.unwrap());
            assert!(matches!(
                store.get("../etc/passwd").await,
                Err(StoreError::InvalidKey(_))
            ));
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}

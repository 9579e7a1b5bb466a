//! The object-store port: what the handlers need from S3, and its local-filesystem adapter.
//!
//! Keys are `/`-separated relative paths, as in S3. The S3 adapter lives in [`crate::aws`].

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
    #[error("s3 {op} {key}: {source}")]
    Remote {
        /// The API call.
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// The SDK error, with its chain.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The full key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
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
    /// Whether an object exists.
    fn exists(&self, key: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;
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

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        let path = self.path(key)?;
        Self::ensure_parent(&path)?;
        // Write to a temporary name and rename, so readers never see a half-written object.
        let tmp = path.with_file_name(format!(
            ".{}.tmp-{}-{:?}",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("object"),
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&tmp, &body).map_err(|e| Self::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Self::io("rename", &path, e))
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, StoreError> {
        use std::io::Write;
        let path = self.path(key)?;
        Self::ensure_parent(&path)?;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                file.write_all(&body)
                    .map_err(|e| Self::io("write", &path, e))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Self::io("create", &path, e)),
        }
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
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                objects.push(ObjectInfo { key, size });
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

    fn block<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
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

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
    /// Reading the object is refused for good: S3 403 `AccessDenied` (a bucket, object or
    /// KMS key policy), or the local file's permissions. Another object may be readable.
    #[error("{op} {key}: access denied: {reason}")]
    AccessDenied {
        /// The call.
        op: &'static str,
        /// The key.
        key: String,
        /// The store's message (S3's error code and message, or the local error).
        reason: String,
    },
    /// The object is in an archive storage class (S3 `InvalidObjectState`: Glacier Flexible
    /// Retrieval or Deep Archive) and cannot be read until it is restored.
    #[error("{key} is archived: {reason}")]
    Archived {
        /// The key.
        key: String,
        /// S3's error code and message.
        reason: String,
    },
    /// The object no longer has the version it was read for (S3 412 `PreconditionFailed`
    /// on an `If-Match` read; locally, another size or modification time).
    #[error(
        "{key} changed: it is no longer version {expected}{}",
        current.as_deref().map(|c| format!(" (now {c})")).unwrap_or_default()
    )]
    Changed {
        /// The key.
        key: String,
        /// The version it was expected to have (the listing's).
        expected: String,
        /// Its current version, when the store says.
        current: Option<String>,
    },
    /// The key names something that cannot be read as an object, and never will as it is:
    /// locally a dangling symbolic link, a symbolic-link loop, a named pipe, a socket, a
    /// device or a folder. It is never opened for reading (a named pipe would block).
    #[error("{key} cannot be read: {reason}")]
    Unreadable {
        /// The key.
        key: String,
        /// What it is, and why it cannot be read.
        reason: String,
    },
    /// The object is larger than the reader's limit ([`ObjectStore::get_bounded`]): it was
    /// refused from its listed size or its `Content-Length`, or its read stopped at the limit.
    #[error("{key} is too large: {size} bytes, limit {limit}")]
    TooLarge {
        /// The key.
        key: String,
        /// Its size in bytes, as the store gave it; when the store did not say, the bytes read
        /// before the read stopped (a lower bound, above `limit`).
        size: u64,
        /// The limit, in bytes.
        limit: u64,
    },
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
    /// Whether retrying the same call later can succeed. Missing, refused, archived,
    /// changed and unreadable objects, invalid keys and the non-transient remote errors are
    /// permanent; local I/O errors count as transient (a full disk or a busy file is not the
    /// object's fault).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::NotFound(_)
            | StoreError::InvalidKey(_)
            | StoreError::AccessDenied { .. }
            | StoreError::Archived { .. }
            | StoreError::Changed { .. }
            | StoreError::TooLarge { .. }
            | StoreError::Unreadable { .. } => false,
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
    /// on a local folder ([`UNREADABLE_VERSION`] for a local entry that cannot be read). A
    /// run id covers it, so an image overwritten under the same key makes a new run instead
    /// of resuming into old results, and the featurizer reads exactly this content
    /// ([`ObjectStore::get_if_match`]).
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
    /// Reads a whole object only if it still has `version`, the version [`ObjectStore::list`]
    /// gave for it (S3 `GetObject` with `If-Match` on the listed ETag):
    /// [`StoreError::Changed`] when it has another. An empty `version` (a shard list written
    /// before versions were kept) reads unconditionally.
    ///
    /// By default it reads with [`ObjectStore::get_versioned`] and compares the entity tag,
    /// which is right for stores whose listing versions are their entity tags (S3). Stores
    /// whose versions are not ([`FsStore`]: size and modification time) implement it, and
    /// adapters that wrap another store forward it.
    fn get_if_match(
        &self,
        key: &str,
        version: &str,
    ) -> impl Future<Output = Result<Bytes, StoreError>> + Send {
        async move {
            if version.is_empty() {
                return self.get(key).await;
            }
            let current = self.get_versioned(key).await?;
            if current.etag == version {
                Ok(current.body)
            } else {
                Err(StoreError::Changed {
                    key: key.to_string(),
                    expected: version.to_string(),
                    current: Some(current.etag),
                })
            }
        }
    }
    /// Reads an object with its entity tag, as [`ObjectStore::get_if_match`] does (an empty
    /// `version` reads unconditionally), but only if it has at most `limit` bytes: a larger
    /// one is [`StoreError::TooLarge`], found from its size before its body is read when the
    /// store gives one (the local file's metadata; S3's `Content-Length`), else when the read
    /// passes the limit, where it stops. At most `limit` bytes of the body are ever held.
    ///
    /// By default it reads the whole object ([`ObjectStore::get_versioned`] for an empty
    /// `version`, else [`ObjectStore::get_if_match`], whose entity tag is `version`) and then
    /// compares its length: right for test stores, which hold bodies in memory anyway. The
    /// local and S3 adapters implement it, and adapters that wrap another store forward it.
    fn get_bounded(
        &self,
        key: &str,
        version: &str,
        limit: u64,
    ) -> impl Future<Output = Result<Versioned, StoreError>> + Send {
        async move {
            let read = if version.is_empty() {
                self.get_versioned(key).await?
            } else {
                Versioned {
                    body: self.get_if_match(key, version).await?,
                    etag: version.to_string(),
                }
            };
            check_size(key, read.body.len() as u64, limit)?;
            Ok(read)
        }
    }
    /// Copies the object `from` to the key `to` inside the store, without passing its bytes
    /// through the caller (S3 `CopyObject`; locally a hard link), and returns its size in
    /// bytes. `to` is overwritten unconditionally, atomically (readers see the old object or
    /// the whole new one); [`StoreError::NotFound`] names `from` when it does not exist.
    /// Copying an object onto itself is allowed and changes nothing visible. A retry after a
    /// lost answer copies again, with the same result.
    ///
    /// By default it reads `from` and writes `to` ([`ObjectStore::get`], [`ObjectStore::put`]).
    fn copy(&self, from: &str, to: &str) -> impl Future<Output = Result<u64, StoreError>> + Send {
        async move {
            let body = self.get(from).await?;
            let size = body.len() as u64;
            self.put(to, body).await?;
            Ok(size)
        }
    }
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

/// [`StoreError::TooLarge`] when `size` is above `limit`.
pub fn check_size(key: &str, size: u64, limit: u64) -> Result<(), StoreError> {
    if size > limit {
        Err(StoreError::TooLarge {
            key: key.to_string(),
            size,
            limit,
        })
    } else {
        Ok(())
    }
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

/// The listing version of a local entry that is not a readable regular file (a dangling
/// symbolic link, a symbolic-link loop, a named pipe, a socket, a device, an entry that
/// cannot be examined): [`FsStore::list`] lists it so that one named like an image reaches
/// the error list; reading it gives the reason.
pub const UNREADABLE_VERSION: &str = "unreadable";

/// The local store's listing version of a file: its size and modification time (ns).
fn fs_version(meta: &std::fs::Metadata) -> String {
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{mtime_ns}", meta.len())
}

/// What a file type is, for messages.
fn file_type_name(file_type: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a named pipe (FIFO)";
        }
        if file_type.is_socket() {
            return "a socket";
        }
        if file_type.is_block_device() || file_type.is_char_device() {
            return "a device";
        }
    }
    if file_type.is_dir() {
        "a folder"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_file() {
        "a regular file"
    } else {
        "not a regular file"
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

    /// Reads a regular file (following symbolic links) with its metadata after the read.
    /// Anything else is refused from its metadata, before it is opened: a named pipe would
    /// block the reader. Failures are sorted for the per-image guard: see [`Self::open_error`].
    fn read_file(key: &str, path: &Path) -> Result<(Bytes, std::fs::Metadata), StoreError> {
        Self::read_file_bounded(key, path, u64::MAX)
    }

    /// [`Self::read_file`] of a file of at most `limit` bytes: a larger one is refused from
    /// its metadata, before it is opened, and a file that grows past the limit while it is
    /// read is refused when the read passes it (at most `limit + 1` bytes are read).
    fn read_file_bounded(
        key: &str,
        path: &Path,
        limit: u64,
    ) -> Result<(Bytes, std::fs::Metadata), StoreError> {
        use std::io::Read;
        let meta = std::fs::metadata(path).map_err(|e| Self::open_error(key, path, e))?;
        if !meta.is_file() {
            return Err(StoreError::Unreadable {
                key: key.to_string(),
                reason: format!(
                    "{} is {}, not a regular file",
                    path.display(),
                    file_type_name(&meta.file_type())
                ),
            });
        }
        check_size(key, meta.len(), limit)?;
        let file = std::fs::File::open(path).map_err(|e| Self::open_error(key, path, e))?;
        let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        let mut reader = file.take(limit.saturating_add(1));
        reader
            .read_to_end(&mut data)
            .map_err(|e| Self::io("read", path, e))?;
        let file = reader.into_inner();
        let after = file.metadata().map_err(|e| Self::io("stat", path, e))?;
        check_size(key, (data.len() as u64).max(after.len()), limit)?;
        Ok((Bytes::from(data), after))
    }

    /// Why a file could not be examined or opened: missing ([`StoreError::NotFound`]), a
    /// dangling symbolic link or a loop ([`StoreError::Unreadable`]), refused by its
    /// permissions ([`StoreError::AccessDenied`]); anything else is an I/O error (transient).
    fn open_error(key: &str, path: &Path, e: std::io::Error) -> StoreError {
        let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        let target = || {
            std::fs::read_link(path)
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "?".into())
        };
        match e.kind() {
            std::io::ErrorKind::NotFound if link => StoreError::Unreadable {
                key: key.to_string(),
                reason: format!(
                    "{} is a dangling symbolic link: its target {} does not exist",
                    path.display(),
                    target()
                ),
            },
            std::io::ErrorKind::NotFound => StoreError::NotFound(key.to_string()),
            std::io::ErrorKind::PermissionDenied => StoreError::AccessDenied {
                op: "read",
                key: key.to_string(),
                reason: format!("{}: {e}", path.display()),
            },
            // ELOOP and the like: a link that cannot be followed, now or on a retry.
            _ if link => StoreError::Unreadable {
                key: key.to_string(),
                reason: format!(
                    "{} is a symbolic link (to {}) that cannot be followed: {e}",
                    path.display(),
                    target()
                ),
            },
            _ => Self::io("read", path, e),
        }
    }

    /// The key of a listed path under `prefix`, unless it is hidden (a temporary file) or
    /// its name is not UTF-8 (keys are strings; it is skipped with a warning).
    fn listed_key(&self, path: &Path, prefix: &str) -> Option<String> {
        let relative = path.strip_prefix(&self.root).ok()?;
        let Some(key) = relative
            .to_str()
            .map(|k| k.replace(std::path::MAIN_SEPARATOR, "/"))
        else {
            tracing::warn!(path = %path.display(), "skipped: the name is not UTF-8");
            return None;
        };
        let hidden_temp = key
            .rsplit('/')
            .next()
            .is_some_and(|n| n.starts_with('.') && n.contains(".tmp-"));
        (key.starts_with(prefix) && !hidden_temp).then_some(key)
    }

    /// A walk error as a store error: its I/O error itself (walkdir's own message repeats
    /// the path and the cause, which the error chain would print again).
    fn walk_error(path: &Path, e: walkdir::Error) -> StoreError {
        let source = match e.into_io_error() {
            Some(io) => io,
            None => std::io::Error::other("a symbolic-link loop"),
        };
        Self::io("list", path, source)
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
        Ok(Self::read_file(key, &path)?.0)
    }

    /// Reads the file if its size and modification time, after the read, are still
    /// `version` (as [`FsStore::list`] gave them).
    async fn get_if_match(&self, key: &str, version: &str) -> Result<Bytes, StoreError> {
        let path = self.path(key)?;
        let (body, meta) = Self::read_file(key, &path)?;
        let current = fs_version(&meta);
        if version.is_empty() || current == version {
            Ok(body)
        } else {
            Err(StoreError::Changed {
                key: key.to_string(),
                expected: version.to_string(),
                current: Some(current),
            })
        }
    }

    /// Refused from the file's metadata before it is opened when it is over `limit`; read
    /// with at most `limit + 1` bytes otherwise, then checked against `version` as
    /// [`FsStore::get_if_match`] does. The entity tag is [`FsStore::get_versioned`]'s.
    async fn get_bounded(
        &self,
        key: &str,
        version: &str,
        limit: u64,
    ) -> Result<Versioned, StoreError> {
        let path = self.path(key)?;
        let (body, meta) = Self::read_file_bounded(key, &path, limit)?;
        let current = fs_version(&meta);
        if version.is_empty() || current == version {
            Ok(Versioned {
                etag: content_etag(&body),
                body,
            })
        } else {
            Err(StoreError::Changed {
                key: key.to_string(),
                expected: version.to_string(),
                current: Some(current),
            })
        }
    }

    /// A hard link: the source file (its symbolic links resolved) is linked to a temporary
    /// name beside `to`, which is then renamed over `to`. Sharing the file is safe because
    /// this store never writes a file in place (every write renames a new file into place).
    /// Where a link is impossible (another file system, a file system without links) the
    /// bytes are copied to the temporary file and flushed instead.
    async fn copy(&self, from: &str, to: &str) -> Result<u64, StoreError> {
        let source = self.path(from)?;
        let target = self.path(to)?;
        let meta = std::fs::metadata(&source).map_err(|e| Self::open_error(from, &source, e))?;
        if !meta.is_file() {
            return Err(StoreError::Unreadable {
                key: from.to_string(),
                reason: format!(
                    "{} is {}, not a regular file",
                    source.display(),
                    file_type_name(&meta.file_type())
                ),
            });
        }
        // `hard_link` links a symbolic link itself on Linux: link its target.
        let source =
            std::fs::canonicalize(&source).map_err(|e| Self::open_error(from, &source, e))?;
        Self::ensure_parent(&target)?;
        let tmp = Self::temp_path(&target);
        if let Err(link_error) = std::fs::hard_link(&source, &tmp) {
            if link_error.kind() == std::io::ErrorKind::NotFound {
                return Err(StoreError::NotFound(from.to_string()));
            }
            tracing::debug!(error = %link_error, "hard link impossible: copying the bytes");
            let copied = std::fs::copy(&source, &tmp).and_then(|_| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&tmp)?
                    .sync_all()
            });
            if let Err(e) = copied {
                let _ = std::fs::remove_file(&tmp);
                return Err(match e.kind() {
                    std::io::ErrorKind::NotFound if !source.exists() => {
                        StoreError::NotFound(from.to_string())
                    }
                    _ => Self::io("copy", &target, e),
                });
            }
        }
        let renamed = std::fs::rename(&tmp, &target);
        // A rename between two links of one file (a copy onto itself) succeeds and leaves
        // both names: the temporary one is removed either way.
        let _ = std::fs::remove_file(&tmp);
        renamed.map_err(|e| Self::io("rename", &target, e))?;
        Self::sync_dir(&target)?;
        Ok(meta.len())
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

    /// Lists the files under the deepest folder the prefix names, filtered by the whole
    /// prefix, like S3. Folders are walked (symbolic links to folders too), never listed; a
    /// folder that cannot be walked (unreadable, or a link back to a folder above it) is
    /// skipped with a warning, since what is in it is unknown. Every other entry is listed,
    /// and nothing is opened: a regular file, or a symbolic link to one, with its size and
    /// modification time; an entry that is not a readable regular file (a dangling symbolic
    /// link, a symbolic-link loop, a named pipe, a socket, a device) with the version
    /// [`UNREADABLE_VERSION`], so that one named like an image reaches the run's error list
    /// with the reason its read gives ([`StoreError::Unreadable`]). Only an error on the
    /// listed folder itself fails the listing.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let folder = match prefix.rfind('/') {
            Some(i) => self.root.join(&prefix[..i]),
            None => self.root.clone(),
        };
        if !folder.is_dir() {
            return Ok(Vec::new());
        }
        let mut objects = Vec::new();
        for entry in walkdir::WalkDir::new(&folder).follow_links(true) {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    let Some(path) = e.path().map(Path::to_path_buf) else {
                        return Err(Self::walk_error(&folder, e));
                    };
                    if e.depth() == 0 {
                        return Err(Self::walk_error(&path, e));
                    }
                    let folder_like = e.loop_ancestor().is_some()
                        || std::fs::metadata(&path).is_ok_and(|m| m.is_dir());
                    if folder_like {
                        tracing::warn!(folder = %path.display(), error = %e,
                            "a folder that cannot be listed is skipped: the images in it are not listed");
                    } else if let Some(key) = self.listed_key(&path, prefix) {
                        objects.push(ObjectInfo {
                            key,
                            size: 0,
                            version: UNREADABLE_VERSION.to_string(),
                        });
                    }
                    continue;
                }
            };
            if entry.file_type().is_dir() {
                continue;
            }
            let Some(key) = self.listed_key(entry.path(), prefix) else {
                continue;
            };
            let meta = entry
                .file_type()
                .is_file()
                .then(|| entry.metadata().ok())
                .flatten();
            objects.push(match meta {
                Some(meta) => ObjectInfo {
                    key,
                    size: meta.len(),
                    version: fs_version(&meta),
                },
                None => ObjectInfo {
                    key,
                    size: 0,
                    version: UNREADABLE_VERSION.to_string(),
                },
            });
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    fn describe(&self, key: &str) -> String {
        self.root.join(key).display().to_string()
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;

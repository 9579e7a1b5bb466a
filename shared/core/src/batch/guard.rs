//! The per-image guard: what keeps one image from holding a shard (or an ingest batch)
//! hostage. Two halves, shared by the batch featurizer and the continuous ingest:
//!
//! - [`classify_fetch_error`] sorts a failed read of one object. A cause that is permanent
//!   for that object — gone, refused by a policy, archived, changed since the listing, not a
//!   readable file — becomes that image's error, with its kind and a specific reason; the
//!   shard completes. A cause a retry can cure (throttling, 5xx, timeouts, a local disk
//!   error), or one that is not the object's own (bad credentials: every key would fail),
//!   fails the whole attempt, so that the message is delivered again.
//! - [`catch_panic`] runs one image's decoding or preprocessing so that a panic in any
//!   decoder (PNG, the CMYK JPEG fallback, not only libjpeg's guarded path) is that image's
//!   `decode` error, `"decoder panicked: ..."`, instead of killing its inference thread and
//!   failing the shard on every delivery. Each such panic is logged once, as a warning
//!   (see [`catch_panic`]), not printed with the default hook's full report.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::Once;

use engine::preprocess::{ImageErrorKind, PreprocessError};

use crate::ports::store::StoreError;

/// Why one image is not in `Results`: a row of the error list without its path and label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFailure {
    /// The kind (the error list's `kind`).
    pub kind: ImageErrorKind,
    /// A specific reason.
    pub reason: String,
}

impl ImageFailure {
    /// A failure of `kind`.
    pub fn new(kind: ImageErrorKind, reason: impl Into<String>) -> Self {
        Self {
            kind,
            reason: reason.into(),
        }
    }
}

/// Sorts a failed read of one image: `Ok` with the image's error when the cause is permanent
/// for that object, `Err` with the error itself when the attempt must fail and be retried.
///
/// | store error | outcome |
/// |---|---|
/// | [`StoreError::NotFound`] | image error `not_found` |
/// | [`StoreError::AccessDenied`] (S3 403 `AccessDenied`, KMS; local permissions) | image error `access_denied` |
/// | [`StoreError::Archived`] (S3 `InvalidObjectState`) | image error `archived` |
/// | [`StoreError::Changed`] (S3 412 on `If-Match`; local size or mtime) | image error `changed` |
/// | [`StoreError::Unreadable`] (dangling link, link loop, FIFO, socket, folder) | image error `unreadable` |
/// | [`StoreError::InvalidKey`] (a listed key the store cannot address) | image error `unreadable` |
/// | [`StoreError::TooLarge`] (over the run's `max_image_bytes`) | image error `too_large` |
/// | [`StoreError::Io`] (local disk) | the attempt fails (transient) |
/// | [`StoreError::Remote`] (throttling, 5xx, timeouts; bad credentials) | the attempt fails |
pub fn classify_fetch_error(error: StoreError) -> Result<ImageFailure, StoreError> {
    use ImageErrorKind as K;
    Ok(match error {
        StoreError::NotFound(key) => ImageFailure::new(
            K::NotFound,
            format!("object not found: {key} (deleted or renamed after the run was listed)"),
        ),
        StoreError::AccessDenied { op, key, reason } => ImageFailure::new(
            K::AccessDenied,
            format!(
                "access denied on {op} {key}: {reason} (a bucket, object or KMS key policy, \
                 or the file's permissions, refuse reading it)"
            ),
        ),
        StoreError::Archived { key, reason } => ImageFailure::new(
            K::Archived,
            format!("{key} is archived ({reason}): restore it (S3 RestoreObject) to featurize it"),
        ),
        StoreError::Changed {
            key,
            expected,
            current,
        } => ImageFailure::new(
            K::Changed,
            format!(
                "changed after listing: {key} is no longer the content the run listed \
                 (version {expected}{}); the run's id covers the listed content, so submit \
                 the request again for a run of the new content",
                current.map(|c| format!(", now {c}")).unwrap_or_default()
            ),
        ),
        StoreError::Unreadable { key: _, reason } => ImageFailure::new(K::Unreadable, reason),
        StoreError::TooLarge { size, limit, .. } => too_large(size, limit),
        StoreError::InvalidKey(key) => ImageFailure::new(
            K::Unreadable,
            format!("the store cannot address the listed key {key:?}"),
        ),
        other @ (StoreError::Io { .. } | StoreError::Remote { .. }) => return Err(other),
    })
}

/// The error of an image over the byte limit, `"too large: N bytes, limit M"` (kind
/// `too_large`, as an image over the pixel limit).
pub fn too_large(size: u64, limit: u64) -> ImageFailure {
    ImageFailure::new(
        ImageErrorKind::TooLarge,
        format!("too large: {size} bytes, limit {limit}"),
    )
}

thread_local! {
    /// How many [`catch_panic`] calls this thread is inside (its panics are expected).
    static GUARDED: Cell<u32> = const { Cell::new(0) };
}

/// Makes panics inside [`catch_panic`] one warning line each; every other panic goes to the
/// hook that was installed before (the default one prints the usual report).
fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(Cell::get) > 0 {
                let location = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                tracing::warn!(
                    panic = %payload_message(info.payload()),
                    %location,
                    "an image's decoder panicked: the image is an error, the shard goes on"
                );
            } else {
                previous(info);
            }
        }));
    });
}

/// The message of a panic payload (`panic!` with a literal or a formatted string).
fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs one image's decoding or preprocessing step `what` (e.g. `"decoder"`): a panic in it
/// becomes that image's `decode` error, `"<what> panicked: <message>"`. The panic is logged
/// once as a warning instead of the default hook's report (the hook is installed on first
/// use and hands every panic outside this guard to the previous hook).
pub fn catch_panic<T>(
    what: &str,
    step: impl FnOnce() -> Result<T, PreprocessError>,
) -> Result<T, PreprocessError> {
    install_quiet_hook();
    GUARDED.with(|g| g.set(g.get() + 1));
    let result = std::panic::catch_unwind(AssertUnwindSafe(step));
    GUARDED.with(|g| g.set(g.get() - 1));
    result.unwrap_or_else(|payload| {
        Err(PreprocessError {
            kind: ImageErrorKind::Decode,
            reason: format!("{what} panicked: {}", payload_message(payload.as_ref())),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(transient: bool) -> StoreError {
        StoreError::Remote {
            op: "GetObject",
            key: "in/a.jpg".into(),
            transient,
            source: "503 SlowDown".into(),
        }
    }

    #[test]
    fn per_object_causes_are_image_errors_with_their_kind_and_reason() {
        use ImageErrorKind as K;
        let cases = [
            (
                StoreError::NotFound("in/a.jpg".into()),
                K::NotFound,
                "not found",
            ),
            (
                StoreError::AccessDenied {
                    op: "GetObject",
                    key: "in/a.jpg".into(),
                    reason: "403 AccessDenied: not authorized to perform kms:Decrypt".into(),
                },
                K::AccessDenied,
                "kms:Decrypt",
            ),
            (
                StoreError::Archived {
                    key: "in/a.jpg".into(),
                    reason: "403 InvalidObjectState: The operation is not valid".into(),
                },
                K::Archived,
                "InvalidObjectState",
            ),
            (
                StoreError::Changed {
                    key: "in/a.jpg".into(),
                    expected: "\"e1\"".into(),
                    current: Some("\"e2\"".into()),
                },
                K::Changed,
                "changed after listing",
            ),
            (
                StoreError::Unreadable {
                    key: "a.jpg".into(),
                    reason: "/in/a.jpg is a dangling symbolic link".into(),
                },
                K::Unreadable,
                "dangling symbolic link",
            ),
            (
                StoreError::InvalidKey("a//b.jpg".into()),
                K::Unreadable,
                "a//b.jpg",
            ),
            (
                StoreError::TooLarge {
                    key: "in/big.jpg".into(),
                    size: 3 << 30,
                    limit: 64 << 20,
                },
                K::TooLarge,
                "too large: 3221225472 bytes, limit 67108864",
            ),
        ];
        for (error, kind, part) in cases {
            let shown = error.to_string();
            assert!(!error.is_transient(), "{shown}");
            let failure = classify_fetch_error(error).expect("an image error");
            assert_eq!(failure.kind, kind, "{shown}");
            assert!(failure.reason.contains(part), "{failure:?}");
        }
        let changed = classify_fetch_error(StoreError::Changed {
            key: "k".into(),
            expected: "1-2".into(),
            current: Some("3-4".into()),
        })
        .unwrap();
        assert!(
            changed.reason.contains("1-2") && changed.reason.contains("3-4"),
            "{changed:?}"
        );
    }

    #[test]
    fn transient_and_not_the_objects_own_causes_fail_the_attempt() {
        let io = StoreError::Io {
            op: "read",
            path: "/in/a.jpg".into(),
            source: std::io::Error::other("disk error"),
        };
        for error in [remote(true), remote(false), io] {
            let shown = error.to_string();
            let back = classify_fetch_error(error).expect_err("the attempt fails");
            assert_eq!(back.to_string(), shown, "the error itself is returned");
        }
    }

    #[test]
    fn a_panicking_decoder_is_the_images_decode_error() {
        let failed = catch_panic("decoder", || -> Result<(), PreprocessError> {
            panic!("png: chunk length overflows")
        })
        .unwrap_err();
        assert_eq!(failed.kind, ImageErrorKind::Decode);
        assert_eq!(
            failed.reason,
            "decoder panicked: png: chunk length overflows"
        );
        let formatted = catch_panic("decoder", || -> Result<(), PreprocessError> {
            let n = 3;
            panic!("cmyk: {n} bytes left")
        })
        .unwrap_err();
        assert_eq!(formatted.reason, "decoder panicked: cmyk: 3 bytes left");
        // A step that returns normally, or fails normally, is untouched.
        assert_eq!(catch_panic("decoder", || Ok(7)).unwrap(), 7);
        let plain = PreprocessError {
            kind: ImageErrorKind::Empty,
            reason: "zero-byte file".into(),
        };
        let passed = catch_panic("decoder", || -> Result<(), _> { Err(plain.clone()) });
        assert_eq!(passed.unwrap_err(), plain);
        // The guard is left: a panic outside it is an ordinary panic again.
        assert_eq!(GUARDED.with(Cell::get), 0);
        let outside = std::panic::catch_unwind(|| panic!("not an image's"));
        assert!(outside.is_err());
    }

    #[test]
    fn panics_on_many_threads_at_once_are_each_their_images_error() {
        let reasons: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|i| {
                    s.spawn(move || {
                        catch_panic("decoder", || -> Result<(), PreprocessError> {
                            panic!("image {i}")
                        })
                        .unwrap_err()
                        .reason
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            reasons,
            (0..4)
                .map(|i| format!("decoder panicked: image {i}"))
                .collect::<Vec<_>>()
        );
    }
}

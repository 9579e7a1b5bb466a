//! Tests of the object-store port's local adapter: atomic and conditional writes, reads
//! bound to the listed version, and poison entries in a listed folder.

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
fn reads_are_bound_to_the_listed_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path());
    block(async {
        store
            .put("in/a.jpg", Bytes::from_static(b"one"))
            .await
            .unwrap();
        let listed = store.list("in/").await.unwrap();
        let version = listed[0].version.clone();
        assert_eq!(listed[0].size, 3);
        assert_eq!(
            store.get_if_match("in/a.jpg", &version).await.unwrap(),
            Bytes::from_static(b"one")
        );
        assert_eq!(
            store.get_if_match("in/a.jpg", "").await.unwrap(),
            Bytes::from_static(b"one"),
            "an empty version reads unconditionally"
        );
        store
            .put("in/a.jpg", Bytes::from_static(b"three"))
            .await
            .unwrap();
        match store.get_if_match("in/a.jpg", &version).await {
            Err(StoreError::Changed {
                expected, current, ..
            }) => {
                assert_eq!(expected, version);
                assert!(current.unwrap().starts_with("5-"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store.get_if_match("in/gone.jpg", &version).await,
            Err(StoreError::NotFound(_))
        ));
    });
}

/// Dangling links, link loops, named pipes, sockets and folders named like images:
/// listed (or walked) without failing, never opened, each read failing with its reason.
#[cfg(unix)]
#[test]
fn poison_entries_are_listed_and_refused_without_being_opened() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("in/folder.jpg")).unwrap();
    std::fs::write(root.join("in/folder.jpg/inside.jpg"), b"ok").unwrap();
    std::fs::write(root.join("in/good.jpg"), b"good").unwrap();
    symlink(root.join("in/nowhere.jpg"), root.join("in/dangling.jpg")).unwrap();
    symlink("loop.jpg", root.join("in/loop.jpg")).unwrap();
    symlink("..", root.join("in/up")).unwrap();
    symlink("good.jpg", root.join("in/link.jpg")).unwrap();
    let fifo = root.join("in/fifo.jpg");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let _socket = std::os::unix::net::UnixListener::bind(root.join("in/socket.jpg")).unwrap();
    let store = FsStore::new(root);
    block(async {
        let listed = store.list("in/").await.expect("the listing never fails");
        let by_key: std::collections::BTreeMap<&str, &str> = listed
            .iter()
            .map(|o| (o.key.as_str(), o.version.as_str()))
            .collect();
        let keys: Vec<&str> = by_key.keys().copied().collect();
        assert_eq!(
            keys,
            [
                "in/dangling.jpg",
                "in/fifo.jpg",
                "in/folder.jpg/inside.jpg",
                "in/good.jpg",
                "in/link.jpg",
                "in/loop.jpg",
                "in/socket.jpg",
            ]
        );
        for key in [
            "in/dangling.jpg",
            "in/fifo.jpg",
            "in/loop.jpg",
            "in/socket.jpg",
        ] {
            assert_eq!(by_key[key], UNREADABLE_VERSION, "{key}");
        }
        assert_eq!(
            by_key["in/link.jpg"], by_key["in/good.jpg"],
            "a link is its target"
        );
        let reason = |key: &'static str| {
            let store = &store;
            let version = by_key[key].to_string();
            async move {
                match store.get_if_match(key, &version).await {
                    Err(StoreError::Unreadable { reason, .. }) => reason,
                    other => panic!("{key}: {other:?}"),
                }
            }
        };
        assert!(reason("in/dangling.jpg")
            .await
            .contains("dangling symbolic link"));
        assert!(reason("in/loop.jpg").await.contains("cannot be followed"));
        assert!(reason("in/fifo.jpg").await.contains("named pipe"));
        assert!(reason("in/socket.jpg").await.contains("socket"));
        assert!(matches!(
            store.get("in/folder.jpg").await,
            Err(StoreError::Unreadable { .. })
        ));
        assert_eq!(
            store
                .get_if_match("in/link.jpg", by_key["in/link.jpg"])
                .await
                .unwrap(),
            Bytes::from_static(b"good")
        );
    });
}

#[test]
fn a_listing_of_a_missing_or_unreadable_root_is_an_error_with_one_cause() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path().join("absent"));
    assert!(block(store.list("")).unwrap().is_empty());
    let error = FsStore::walk_error(
        Path::new("/x"),
        walkdir::WalkDir::new("/nonexistent/folder")
            .into_iter()
            .next()
            .unwrap()
            .unwrap_err(),
    );
    let shown = error.to_string();
    let cause = std::error::Error::source(&error).unwrap().to_string();
    assert!(shown.ends_with(&cause), "{shown}");
    assert_eq!(shown.matches("os error 2").count(), 1, "{shown}");
    assert!(
        std::error::Error::source(&error)
            .unwrap()
            .source()
            .is_none(),
        "no further copy of the cause in the chain"
    );
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

#[test]
fn copies_are_links_that_overwrite_their_target_and_stay_independent() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path());
    block(async {
        store
            .put("a/src", Bytes::from_static(b"one"))
            .await
            .unwrap();
        store
            .put("b/dst", Bytes::from_static(b"old!!"))
            .await
            .unwrap();
        assert_eq!(store.copy("a/src", "b/dst").await.unwrap(), 3);
        assert_eq!(
            store.get("b/dst").await.unwrap(),
            Bytes::from_static(b"one")
        );
        assert_eq!(
            store.copy("a/src", "c/new").await.unwrap(),
            3,
            "a new folder"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let ino = |k: &str| std::fs::metadata(dir.path().join(k)).unwrap().ino();
            assert_eq!(ino("a/src"), ino("b/dst"), "a hard link, no bytes copied");
        }
        // Writes never change a file in place: the copy keeps its content.
        store
            .put("a/src", Bytes::from_static(b"two"))
            .await
            .unwrap();
        assert_eq!(
            store.get("b/dst").await.unwrap(),
            Bytes::from_static(b"one")
        );
        // Onto itself: nothing changes, no temporary file is left.
        assert_eq!(store.copy("a/src", "a/src").await.unwrap(), 3);
        assert_eq!(
            store.get("a/src").await.unwrap(),
            Bytes::from_static(b"two")
        );
        let keys: Vec<String> = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["a/src", "b/dst", "c/new"]);
        let leftovers = walkdir::WalkDir::new(dir.path())
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .count();
        assert_eq!(leftovers, 0, "no temporary file is left");
        match store.copy("a/missing", "b/dst").await {
            Err(StoreError::NotFound(key)) => assert_eq!(key, "a/missing"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            store.get("b/dst").await.unwrap(),
            Bytes::from_static(b"one")
        );
        assert!(matches!(
            store.copy("a/src", "../x").await,
            Err(StoreError::InvalidKey(_))
        ));
    });
}

#[cfg(unix)]
#[test]
fn a_copy_of_a_symbolic_link_copies_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path());
    block(async {
        store
            .put("t/real", Bytes::from_static(b"data"))
            .await
            .unwrap();
        std::fs::create_dir_all(dir.path().join("l")).unwrap();
        std::os::unix::fs::symlink("../t/real", dir.path().join("l/link")).unwrap();
        assert_eq!(store.copy("l/link", "other/copy").await.unwrap(), 4);
        let copied = dir.path().join("other/copy");
        assert!(!std::fs::symlink_metadata(&copied)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(copied).unwrap(), b"data");
    });
}

#[test]
fn bounded_reads_refuse_large_files_before_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path());
    block(async {
        store
            .put("in/ok.jpg", Bytes::from_static(b"12345"))
            .await
            .unwrap();
        // A sparse 3 GB file: nothing of it is read (it would not fit a test's memory).
        let big = dir.path().join("in/big.jpg");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(3 << 30)
            .unwrap();
        let listed = store.list("in/").await.unwrap();
        let version = |k: &str| listed.iter().find(|o| o.key == k).unwrap().version.clone();
        match store
            .get_bounded("in/big.jpg", &version("in/big.jpg"), 1 << 20)
            .await
        {
            Err(e @ StoreError::TooLarge { .. }) => {
                assert!(!e.is_transient());
                assert!(
                    e.to_string().contains("3221225472 bytes, limit 1048576"),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        let ok = store
            .get_bounded("in/ok.jpg", &version("in/ok.jpg"), 5)
            .await
            .unwrap();
        assert_eq!(
            ok.body,
            Bytes::from_static(b"12345"),
            "the limit is inclusive"
        );
        assert_eq!(ok.etag, store.head("in/ok.jpg").await.unwrap());
        assert!(matches!(
            store.get_bounded("in/ok.jpg", "", 4).await,
            Err(StoreError::TooLarge {
                size: 5,
                limit: 4,
                ..
            })
        ));
        assert!(matches!(
            store.get_bounded("in/ok.jpg", "5-0", 5).await,
            Err(StoreError::Changed { .. })
        ));
        assert!(matches!(
            store.get_bounded("in/none.jpg", "", 5).await,
            Err(StoreError::NotFound(_))
        ));
    });
}

/// A store with only the required methods: the port's default bounded read and copy.
struct Minimal(FsStore);

impl ObjectStore for Minimal {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.0.get(key).await
    }
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.0.put(key, body).await
    }
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, StoreError> {
        self.0.put_if_absent(key, body).await
    }
    async fn get_versioned(&self, key: &str) -> Result<Versioned, StoreError> {
        self.0.get_versioned(key).await
    }
    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> Result<bool, StoreError> {
        self.0.put_if_match(key, body, etag).await
    }
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        self.0.exists(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.0.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.0.list(prefix).await
    }
    fn describe(&self, key: &str) -> String {
        self.0.describe(key)
    }
}

#[test]
fn the_default_bounded_read_and_copy_keep_the_port_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let store = Minimal(FsStore::new(dir.path()));
    block(async {
        store.put("k", Bytes::from_static(b"abcdef")).await.unwrap();
        assert!(matches!(
            store.get_bounded("k", "", 5).await,
            Err(StoreError::TooLarge {
                size: 6,
                limit: 5,
                ..
            })
        ));
        let read = store.get_bounded("k", "", 6).await.unwrap();
        assert_eq!(read.etag, store.head("k").await.unwrap());
        let etag = read.etag;
        let read = store.get_bounded("k", &etag, 6).await.unwrap();
        assert_eq!((read.body.len(), read.etag), (6, etag));
        store.put("j", Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(store.copy("k", "j").await.unwrap(), 6);
        assert_eq!(store.get("j").await.unwrap(), Bytes::from_static(b"abcdef"));
        assert!(matches!(
            store.copy("none", "j").await,
            Err(StoreError::NotFound(k)) if k == "none"
        ));
    });
}

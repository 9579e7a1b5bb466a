//! How a refit decides each changed path: from its previous entry, the delta entries that
//! mention it and its current content.

use std::collections::HashMap;

use super::{CollectionIndex, Delta, DeltaEntry, IndexEntry};
use crate::error::{Error, Result};
use crate::parquet_io::VectorRow;
use engine::preprocess::ImageErrorKind;

/// How the refit decided one changed path.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Decision {
    /// Keep what the index has.
    Keep,
    /// Gone: drop it.
    Drop,
    /// Live with the row of a delta entry: (delta index, row, etag, label).
    Live(usize, usize, String, String),
    /// Failed: (etag, label, kind, reason).
    Fail(String, String, ImageErrorKind, String),
}

/// Decides a changed path from its previous entry, the delta entries that mention it and its
/// current ETag (`None`: gone). Pure: the order of `entries` does not matter.
pub(super) fn decide(
    previous: Option<&IndexEntry>,
    entries: &[(usize, &DeltaEntry)],
    current: Option<&str>,
) -> Decision {
    let Some(current) = current else {
        return if previous.is_some() {
            Decision::Drop
        } else {
            Decision::Keep
        };
    };
    if previous.is_some_and(|p| p.etag == current) {
        return Decision::Keep;
    }
    // Any entry of exactly this content will do: they all describe the same bytes.
    for (delta, entry) in entries {
        match entry {
            DeltaEntry::Upsert {
                etag, label, row, ..
            } if etag == current => {
                return Decision::Live(*delta, *row, etag.clone(), label.clone());
            }
            DeltaEntry::Failed {
                etag,
                label,
                kind,
                reason,
                ..
            } if etag == current => {
                return Decision::Fail(etag.clone(), label.clone(), *kind, reason.clone());
            }
            _ => {}
        }
    }
    Decision::Keep
}

/// Decides a changed path whose current content cannot be read (a permanent error on its
/// HEAD, e.g. access denied): it fails, with the ingest's reason when the ingest could not
/// read it either (a failed entry without ETag), else with the HEAD's.
pub(super) fn decide_unreadable(
    collection: &str,
    path: &str,
    previous: Option<&IndexEntry>,
    entries: &[(usize, &DeltaEntry)],
    head_error: &str,
) -> Decision {
    let label_of = |entry: &DeltaEntry| match entry {
        DeltaEntry::Upsert { label, .. } | DeltaEntry::Failed { label, .. } => Some(label.clone()),
        DeltaEntry::Removed { .. } => None,
    };
    let label = entries
        .iter()
        .find_map(|(_, e)| label_of(e))
        .or_else(|| previous.map(|p| p.label.clone()))
        .unwrap_or_else(|| crate::batch::listing::label_for(path, collection));
    let unread = entries.iter().find_map(|(_, e)| match e {
        DeltaEntry::Failed {
            etag, kind, reason, ..
        } if etag.is_empty() => Some((*kind, reason.clone())),
        _ => None,
    });
    let (kind, reason) = unread.unwrap_or_else(|| (ImageErrorKind::Fetch, head_error.to_string()));
    Decision::Fail(String::new(), label, kind, reason)
}

/// How each changed path was decided.
pub(super) type Decisions<'d> = Vec<(&'d str, Decision)>;

/// The changes to the live set, with their counts.
pub(super) struct Changes {
    /// The rows entering the live set (new or replacing).
    pub(super) arriving: Vec<VectorRow>,
    /// Rows added (new paths, or failed before).
    pub(super) added: usize,
    /// Rows replaced by new content.
    pub(super) replaced: usize,
    /// Rows removed (deleted, or now failing).
    pub(super) removed: usize,
}

/// Applies the decisions to the index; returns the arriving rows (from the winning deltas'
/// rows) and the counts. The arriving rows' entries get their part once it is named.
pub(super) fn apply_decisions(
    index: &mut CollectionIndex,
    decisions: &Decisions<'_>,
    delta_rows: &HashMap<usize, Vec<VectorRow>>,
    deltas: &[Delta],
) -> Result<Changes> {
    let mut arriving: Vec<VectorRow> = Vec::new();
    let (mut added, mut replaced, mut removed) = (0, 0, 0);
    for (path, decision) in decisions {
        let was_live = index.entries.get(*path).is_some_and(|e| e.part.is_some());
        match decision {
            Decision::Keep => continue,
            Decision::Drop => {
                if was_live {
                    removed += 1;
                }
                index.entries.remove(*path);
            }
            Decision::Fail(etag, label, kind, reason) => {
                if was_live {
                    removed += 1;
                }
                index.entries.insert(
                    path.to_string(),
                    IndexEntry {
                        etag: etag.clone(),
                        label: label.clone(),
                        part: None,
                        error: Some((*kind, reason.clone())),
                    },
                );
            }
            Decision::Live(delta, row, etag, label) => {
                let source = delta_rows
                    .get(delta)
                    .and_then(|rows| rows.get(*row))
                    .filter(|r| r.path == *path)
                    .ok_or_else(|| {
                        Error::RunState(format!(
                            "delta {} has no row {row} for {path}",
                            deltas[*delta].id
                        ))
                    })?;
                if was_live {
                    replaced += 1;
                } else {
                    added += 1;
                }
                arriving.push(VectorRow {
                    path: path.to_string(),
                    label: label.clone(),
                    values: source.values.clone(),
                });
                index.entries.insert(
                    path.to_string(),
                    IndexEntry {
                        etag: etag.clone(),
                        label: label.clone(),
                        part: None, // set below, once its part is named
                        error: None,
                    },
                );
            }
        }
    }
    Ok(Changes {
        arriving,
        added,
        replaced,
        removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(path: &str, etag: &str, row: usize) -> DeltaEntry {
        DeltaEntry::Upsert {
            path: path.into(),
            label: "l".into(),
            etag: etag.into(),
            row,
        }
    }

    #[test]
    fn the_current_content_decides_whatever_the_order_of_deltas() {
        let old = IndexEntry {
            etag: "e1".into(),
            label: "l".into(),
            part: Some("p".into()),
            error: None,
        };
        let a = upsert("x", "e1", 0);
        let b = upsert("x", "e2", 3);
        let gone = DeltaEntry::Removed { path: "x".into() };
        for entries in [
            vec![(0, &a), (1, &b), (2, &gone)],
            vec![(2, &gone), (1, &b), (0, &a)],
        ] {
            // Current content e2: the row that read e2 wins, in any order.
            assert_eq!(
                decide(Some(&old), &entries, Some("e2")),
                Decision::Live(1, 3, "e2".into(), "l".into())
            );
            // Gone now: dropped, whatever a delta saw.
            assert_eq!(decide(Some(&old), &entries, None), Decision::Drop);
            // Unchanged content (a redelivery, or a stale read): nothing changes.
            assert_eq!(decide(Some(&old), &entries, Some("e1")), Decision::Keep);
            // Content no delta has seen yet: kept as it is until its event is processed.
            assert_eq!(decide(Some(&old), &entries, Some("e3")), Decision::Keep);
        }
        let failed = DeltaEntry::Failed {
            path: "y".into(),
            label: "l".into(),
            etag: "f".into(),
            kind: ImageErrorKind::Empty,
            reason: "empty".into(),
        };
        assert!(matches!(
            decide(None, &[(0, &failed)], Some("f")),
            Decision::Fail(_, _, ImageErrorKind::Empty, _)
        ));
        assert_eq!(decide(None, &[(0, &gone)], None), Decision::Keep);
    }
}

//! How a refit decides each changed path: from its previous entry, the delta entries that
//! mention it and its current content.

use std::collections::{BTreeMap, HashMap};

use super::{Delta, DeltaEntry, IndexEntry};
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
    if previous.is_some_and(|p| p.etag == current && p.error.is_none()) {
        return Decision::Keep;
    }
    // A failed path whose content did not change is decided again from its entries: an
    // entry of exactly this content with features means the cause of the failure was not in
    // the bytes (access denied, an archived object, a decoder crash since fixed) and is gone.
    // Any entry of exactly this content will do: they all describe the same bytes. Features
    // win over a failure of the same content, whatever the order of the deltas.
    let live = entries.iter().find_map(|(delta, entry)| match entry {
        DeltaEntry::Upsert {
            etag, label, row, ..
        } if etag == current => Some(Decision::Live(*delta, *row, etag.clone(), label.clone())),
        _ => None,
    });
    if let Some(live) = live {
        return live;
    }
    // Else the failure of this content from the newest delta (deltas are numbered oldest
    // first), so that a retried failure shows its latest reason.
    entries
        .iter()
        .filter_map(|(delta, entry)| match entry {
            DeltaEntry::Failed {
                etag,
                label,
                kind,
                reason,
                ..
            } if etag == current => Some((*delta, label, kind, reason)),
            _ => None,
        })
        .max_by_key(|(delta, ..)| *delta)
        .map(|(_, label, kind, reason)| {
            Decision::Fail(current.to_string(), label.clone(), *kind, reason.clone())
        })
        .unwrap_or(Decision::Keep)
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

/// Whether a refit that waits for quiet is due, from the times (Unix ms) of the pending
/// deltas: when the newest is at least `quiet_ms` old (the fast path once uploads stop), or
/// when the oldest is at least `max_staleness_ms` old (under steady uploads, so that no
/// change waits longer than that plus one refit). `quiet_ms: None` means now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// Refit now.
    Now,
    /// Not yet.
    Wait {
        /// Milliseconds since the newest change.
        since_change_ms: u64,
        /// Until the quiet time is reached (if nothing else changes).
        quiet_left_ms: u64,
        /// Until the oldest pending change reaches the staleness bound (`None`: unbounded).
        staleness_left_ms: Option<u64>,
    },
}

/// Decides [`Due`] from the pending deltas' times at `now_ms`.
pub(super) fn refit_due(
    times: impl IntoIterator<Item = u64>,
    now_ms: u64,
    quiet_ms: Option<u64>,
    max_staleness_ms: Option<u64>,
) -> Due {
    let Some(quiet) = quiet_ms else {
        return Due::Now;
    };
    let (oldest, newest) =
        times
            .into_iter()
            .fold((None, None), |(lo, hi): (Option<u64>, Option<u64>), t| {
                (
                    Some(lo.map_or(t, |lo| lo.min(t))),
                    Some(hi.map_or(t, |hi| hi.max(t))),
                )
            });
    let (Some(oldest), Some(newest)) = (oldest, newest) else {
        return Due::Now; // nothing pending: the refit finds nothing to do (or a first view)
    };
    let since_change = now_ms.saturating_sub(newest);
    let age = now_ms.saturating_sub(oldest);
    if since_change >= quiet || max_staleness_ms.is_some_and(|bound| age >= bound) {
        return Due::Now;
    }
    Due::Wait {
        since_change_ms: since_change,
        quiet_left_ms: quiet - since_change,
        staleness_left_ms: max_staleness_ms.map(|bound| bound - age),
    }
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

/// Applies the decisions to the entries of the changed paths (`known`: what the index had
/// for them); returns the arriving rows (taken from the winning deltas' rows) and the
/// counts. The arriving rows' entries get their part once it is named.
pub(super) fn apply_decisions(
    known: &mut BTreeMap<String, IndexEntry>,
    decisions: &Decisions<'_>,
    delta_rows: &mut HashMap<usize, Vec<VectorRow>>,
    deltas: &[Delta],
) -> Result<Changes> {
    let mut arriving: Vec<VectorRow> = Vec::new();
    let (mut added, mut replaced, mut removed) = (0, 0, 0);
    for (path, decision) in decisions {
        let was_live = known.get(*path).is_some_and(|e| e.part.is_some());
        match decision {
            Decision::Keep => continue,
            Decision::Drop => {
                if was_live {
                    removed += 1;
                }
                known.remove(*path);
            }
            Decision::Fail(etag, label, kind, reason) => {
                if was_live {
                    removed += 1;
                }
                known.insert(
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
                    .get_mut(delta)
                    .and_then(|rows| rows.get_mut(*row))
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
                    values: std::mem::take(&mut source.values),
                });
                known.insert(
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

    #[test]
    fn a_refit_is_due_once_quiet_or_once_the_oldest_change_is_stale() {
        let (q, s) = (Some(60_000), Some(900_000));
        // Forced, or nothing pending: now.
        assert_eq!(refit_due([1_000], 1_000, None, s), Due::Now);
        assert_eq!(refit_due([], 1_000, q, s), Due::Now);
        // Quiet: the newest change is 60 s old.
        assert_eq!(refit_due([0, 40_000], 100_000, q, s), Due::Now);
        // Steady uploads: a change 10 s ago, the oldest 5 min ago: wait for whichever
        // comes first.
        assert_eq!(
            refit_due([0, 290_000], 300_000, q, s),
            Due::Wait {
                since_change_ms: 10_000,
                quiet_left_ms: 50_000,
                staleness_left_ms: Some(600_000)
            }
        );
        // The oldest pending change reached the bound: now, although not quiet.
        assert_eq!(refit_due([0, 899_000], 900_000, q, s), Due::Now);
        // Without a bound, steady uploads wait for ever.
        assert!(matches!(
            refit_due([0, 3_599_000], 3_600_000, q, None),
            Due::Wait {
                staleness_left_ms: None,
                ..
            }
        ));
        // Deltas in any order, and a clock behind a delta's time.
        assert_eq!(
            refit_due([290_000, 0], 300_000, q, s),
            refit_due([0, 290_000], 300_000, q, s)
        );
        assert!(matches!(
            refit_due([310_000], 300_000, q, s),
            Due::Wait {
                since_change_ms: 0,
                quiet_left_ms: 60_000,
                ..
            }
        ));
    }

    #[test]
    fn a_failure_whose_cause_is_gone_gives_way_to_the_features_of_the_same_content() {
        let denied = IndexEntry {
            etag: "e".into(),
            label: "l".into(),
            part: None,
            error: Some((ImageErrorKind::Fetch, "AccessDenied".into())),
        };
        let retried = upsert("x", "e", 2);
        let again = DeltaEntry::Failed {
            path: "x".into(),
            label: "l".into(),
            etag: "e".into(),
            kind: ImageErrorKind::Fetch,
            reason: "still denied".into(),
        };
        // The same content read again with success: live, in any order of deltas.
        for entries in [
            vec![(0, &again), (1, &retried)],
            vec![(1, &retried), (0, &again)],
        ] {
            assert_eq!(
                decide(Some(&denied), &entries, Some("e")),
                Decision::Live(1, 2, "e".into(), "l".into())
            );
        }
        // Failing again: failed, with the newest reason.
        assert!(matches!(
            decide(Some(&denied), &[(3, &again)], Some("e")),
            Decision::Fail(_, _, ImageErrorKind::Fetch, ref r) if r == "still denied"
        ));
        // Nothing about it: kept as it is.
        assert_eq!(decide(Some(&denied), &[], Some("e")), Decision::Keep);
    }

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

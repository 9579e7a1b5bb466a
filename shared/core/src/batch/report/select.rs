//! What the report shows of the rows: pure functions, deterministic whatever order the parts
//! arrive in (the reducer projects them concurrently).
//!
//! Memory does not grow with the run: a [`Collector`] keeps the label centroids (exact, over
//! every row) and a bounded sample of rows chosen by a hash of their path (a bottom-k sketch:
//! the same rows whatever the order), globally for the scatter and per label for the
//! thumbnails. Up to [`Limits::scatter_points`] rows every row is kept, so small runs are
//! shown whole; above it, the points and the thumbnail candidates are sampled.

use std::collections::{BTreeMap, HashSet};

use sha2::{Digest, Sha256};

/// How much the report keeps and shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Points in the PC1/PC2 scatter (sampled above this).
    pub scatter_points: usize,
    /// Rows per label kept as thumbnail candidates (sampled above this).
    pub candidates_per_label: usize,
    /// Coordinates kept per sampled row for the distances (the leading components).
    pub dims: usize,
    /// Thumbnails per label when there are few labels ([`Limits::many_labels`] or fewer)…
    pub thumbs_per_label: usize,
    /// …and when there are more.
    pub thumbs_per_label_many: usize,
    /// Above this many labels, [`Limits::thumbs_per_label_many`] thumbnails per label.
    pub many_labels: usize,
    /// Labels that get thumbnails at most (the largest labels first).
    pub max_thumb_labels: usize,
    /// Outliers shown.
    pub outliers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            scatter_points: 4000,
            candidates_per_label: 64,
            dims: 50,
            thumbs_per_label: 3,
            thumbs_per_label_many: 2,
            many_labels: 40,
            max_thumb_labels: 200,
            outliers: 12,
        }
    }
}

/// One projected row (only its leading coordinates).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Image path.
    pub path: String,
    /// Its label.
    pub label: String,
    /// Leading PCA coordinates.
    pub coords: Vec<f32>,
}

/// An image picked for a thumbnail.
#[derive(Debug, Clone, PartialEq)]
pub struct Pick {
    /// Image path.
    pub path: String,
    /// Its label.
    pub label: String,
    /// Euclidean distance in PCA space: to its label's centroid (nearest), or to the
    /// closest centroid of any label (outliers).
    pub distance: f64,
}

/// One label of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelGroup {
    /// The label.
    pub label: String,
    /// Rows with it.
    pub count: usize,
    /// The rows nearest its centroid (empty for labels beyond `max_thumb_labels`).
    pub nearest: Vec<Pick>,
}

/// What the report shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Rows seen.
    pub rows: usize,
    /// Scatter points: PC1 and PC2 of each (PC2 = 0 when k = 1).
    pub points: Vec<Point>,
    /// Whether the points (and thumbnail candidates) are a sample.
    pub sampled: bool,
    /// Every label, by name.
    pub labels: Vec<LabelGroup>,
    /// Rows farthest from every centroid, farthest first.
    pub outliers: Vec<Pick>,
}

impl Selection {
    /// Every path that needs a thumbnail (nearest, then outliers; no repeats).
    pub fn thumbnail_paths(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.labels
            .iter()
            .flat_map(|l| l.nearest.iter())
            .chain(self.outliers.iter())
            .filter(|p| seen.insert(p.path.clone()))
            .map(|p| p.path.clone())
            .collect()
    }
}

/// The sampling key of a path: the first 8 bytes of its sha256.
pub fn sample_key(path: &str) -> u64 {
    let digest = Sha256::digest(path.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The `cap` rows of smallest [`sample_key`] (ties by path): the same set whatever order
/// the rows are offered in.
#[derive(Debug, Clone)]
pub struct BottomK {
    cap: usize,
    kept: BTreeMap<(u64, String), Point>,
}

impl BottomK {
    /// Keeps at most `cap` rows.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            kept: BTreeMap::new(),
        }
    }

    /// Offers a row; it is kept if it is among the `cap` smallest keys so far.
    pub fn offer(&mut self, point: Point) {
        if self.cap == 0 {
            return;
        }
        let key = (sample_key(&point.path), point.path.clone());
        if self.kept.len() >= self.cap {
            match self.kept.last_key_value() {
                Some((largest, _)) if key < *largest => {}
                _ => return,
            }
        }
        self.kept.insert(key, point);
        if self.kept.len() > self.cap {
            self.kept.pop_last();
        }
    }

    /// Rows kept.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// No rows kept.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// The rows, in key order.
    pub fn into_points(self) -> Vec<Point> {
        self.kept.into_values().collect()
    }
}

/// Euclidean distance between a row's coordinates and a centroid (over their common length).
pub fn distance(coords: &[f32], centroid: &[f64]) -> f64 {
    coords
        .iter()
        .zip(centroid)
        .map(|(&a, &b)| (f64::from(a) - b).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// The `n` candidates nearest `centroid`, nearest first (ties by path).
pub fn nearest_to_centroid(candidates: &[Point], centroid: &[f64], n: usize) -> Vec<Pick> {
    let mut picks: Vec<Pick> = candidates
        .iter()
        .map(|p| Pick {
            path: p.path.clone(),
            label: p.label.clone(),
            distance: distance(&p.coords, centroid),
        })
        .collect();
    picks.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.path.cmp(&b.path)));
    picks.truncate(n);
    picks
}

/// The `n` candidates farthest from every centroid (largest distance to the closest
/// centroid), farthest first (ties by path); repeated paths count once.
pub fn farthest_from_centroids(
    candidates: &[Point],
    centroids: &[Vec<f64>],
    n: usize,
) -> Vec<Pick> {
    if centroids.is_empty() {
        return Vec::new();
    }
    let mut seen = HashSet::new();
    let mut picks: Vec<Pick> = candidates
        .iter()
        .filter(|p| seen.insert(p.path.as_str()))
        .map(|p| Pick {
            path: p.path.clone(),
            label: p.label.clone(),
            distance: centroids
                .iter()
                .map(|c| distance(&p.coords, c))
                .fold(f64::INFINITY, f64::min),
        })
        .collect();
    picks.sort_by(|a, b| b.distance.total_cmp(&a.distance).then(a.path.cmp(&b.path)));
    picks.truncate(n);
    picks
}

/// Gathers what the report needs from the projected rows, one row at a time.
#[derive(Debug, Clone)]
pub struct Collector {
    limits: Limits,
    rows: usize,
    scatter: BottomK,
    per_label: BTreeMap<String, BottomK>,
    /// Per label: rows and the sum of their leading coordinates.
    sums: BTreeMap<String, (usize, Vec<f64>)>,
}

impl Collector {
    /// An empty collector.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            rows: 0,
            scatter: BottomK::new(limits.scatter_points),
            per_label: BTreeMap::new(),
            sums: BTreeMap::new(),
        }
    }

    /// Adds one projected row.
    pub fn add(&mut self, path: &str, label: &str, projection: &[f32]) {
        let dims = projection.len().min(self.limits.dims.max(2));
        let coords = projection[..dims].to_vec();
        self.rows += 1;
        let (count, sum) = self
            .sums
            .entry(label.to_string())
            .or_insert_with(|| (0, vec![0.0; dims]));
        *count += 1;
        for (s, &c) in sum.iter_mut().zip(&coords) {
            *s += f64::from(c);
        }
        let point = Point {
            path: path.to_string(),
            label: label.to_string(),
            coords,
        };
        self.per_label
            .entry(label.to_string())
            .or_insert_with(|| BottomK::new(self.limits.candidates_per_label))
            .offer(point.clone());
        self.scatter.offer(point);
    }

    /// Rows added so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Picks the points, the thumbnails nearest each label's centroid and the outliers.
    pub fn finish(self) -> Selection {
        let limits = self.limits;
        let centroids: BTreeMap<&str, Vec<f64>> = self
            .sums
            .iter()
            .map(|(label, (count, sum))| {
                (
                    label.as_str(),
                    sum.iter().map(|s| s / *count as f64).collect(),
                )
            })
            .collect();
        // The labels with the most rows get thumbnails first (ties by name).
        let mut by_size: Vec<(&String, usize)> =
            self.sums.iter().map(|(l, (c, _))| (l, *c)).collect();
        by_size.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let with_thumbs: HashSet<&str> = by_size
            .iter()
            .take(limits.max_thumb_labels)
            .map(|(l, _)| l.as_str())
            .collect();
        let per_label_thumbs = if self.sums.len() > limits.many_labels {
            limits.thumbs_per_label_many
        } else {
            limits.thumbs_per_label
        };
        // A label's candidates: its own sample, and its rows in the scatter sample (which
        // holds every row of a run up to `scatter_points`: small runs are exact).
        let sampled = self.rows > self.scatter.len();
        let scatter = self.scatter.into_points();
        let mut scatter_by_label: BTreeMap<&str, Vec<&Point>> = BTreeMap::new();
        for p in &scatter {
            scatter_by_label
                .entry(p.label.as_str())
                .or_default()
                .push(p);
        }
        let mut candidates: Vec<Point> = Vec::new();
        let mut labels = Vec::new();
        for (label, sample) in self.per_label {
            let mut points = sample.into_points();
            let own: HashSet<String> = points.iter().map(|p| p.path.clone()).collect();
            points.extend(
                scatter_by_label
                    .get(label.as_str())
                    .into_iter()
                    .flatten()
                    .filter(|p| !own.contains(&p.path))
                    .map(|p| (*p).clone()),
            );
            let nearest = if with_thumbs.contains(label.as_str()) {
                nearest_to_centroid(&points, &centroids[label.as_str()], per_label_thumbs)
            } else {
                Vec::new()
            };
            labels.push(LabelGroup {
                count: self.sums[&label].0,
                label,
                nearest,
            });
            candidates.extend(points);
        }
        candidates.extend(scatter.iter().cloned());
        let centroid_list: Vec<Vec<f64>> = centroids.values().cloned().collect();
        let outliers = farthest_from_centroids(&candidates, &centroid_list, limits.outliers);
        let points = scatter
            .into_iter()
            .map(|mut p| {
                p.coords.resize(2, 0.0);
                p
            })
            .collect();
        Selection {
            rows: self.rows,
            points,
            sampled,
            labels,
            outliers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(path: &str, label: &str, coords: &[f32]) -> Point {
        Point {
            path: path.into(),
            label: label.into(),
            coords: coords.to_vec(),
        }
    }

    #[test]
    fn bottom_k_keeps_the_same_rows_in_any_order() {
        let points: Vec<Point> = (0..500)
            .map(|i| point(&format!("l/{i}.jpg"), "l", &[i as f32]))
            .collect();
        let mut forward = BottomK::new(40);
        points.iter().cloned().for_each(|p| forward.offer(p));
        let mut backward = BottomK::new(40);
        points.iter().rev().cloned().for_each(|p| backward.offer(p));
        let mut shuffled = BottomK::new(40);
        let mut order: Vec<usize> = (0..500).collect();
        fastrand::Rng::with_seed(7).shuffle(&mut order);
        order
            .iter()
            .for_each(|&i| shuffled.offer(points[i].clone()));
        let a = forward.into_points();
        assert_eq!(a.len(), 40);
        assert_eq!(a, backward.into_points());
        assert_eq!(a, shuffled.into_points());
        // They are the 40 smallest keys of all.
        let mut keys: Vec<u64> = points.iter().map(|p| sample_key(&p.path)).collect();
        keys.sort();
        let kept: Vec<u64> = a.iter().map(|p| sample_key(&p.path)).collect();
        assert_eq!(kept, keys[..40].to_vec());
        // Below the cap every row is kept.
        let mut all = BottomK::new(1000);
        points.iter().cloned().for_each(|p| all.offer(p));
        assert_eq!(all.len(), 500);
    }

    #[test]
    fn nearest_and_farthest() {
        let candidates = vec![
            point("a", "x", &[1.0, 0.0]),
            point("b", "x", &[0.1, 0.0]),
            point("c", "x", &[-0.5, 0.0]),
            point("d", "y", &[10.0, 10.0]),
        ];
        let picks = nearest_to_centroid(&candidates, &[0.0, 0.0], 2);
        assert_eq!(
            picks.iter().map(|p| p.path.as_str()).collect::<Vec<_>>(),
            ["b", "c"]
        );
        assert!((picks[0].distance - 0.1).abs() < 1e-6);
        // d is far from both centroids; a is 1 from the first; b is close to it.
        let centroids = vec![vec![0.0, 0.0], vec![10.0, 9.0]];
        let far = farthest_from_centroids(&candidates, &centroids, 2);
        assert_eq!(
            far.iter().map(|p| p.path.as_str()).collect::<Vec<_>>(),
            ["a", "d"]
        );
        assert!((far[0].distance - 1.0).abs() < 1e-9);
        assert!((far[1].distance - 1.0).abs() < 1e-9, "d is 1 from (10, 9)");
        assert!(farthest_from_centroids(&candidates, &[], 3).is_empty());
    }

    #[test]
    fn collector_selects_exactly_on_small_runs_and_samples_large_ones() {
        // Two labels in two clusters, one stray row far from both.
        let mut c = Collector::new(Limits::default());
        for i in 0..30 {
            let t = i as f32 / 30.0;
            c.add(&format!("a/{i}.jpg"), "a", &[t, 0.0, 0.5]);
            c.add(&format!("b/{i}.jpg"), "b", &[10.0 + t, 5.0, 0.5]);
        }
        c.add("a/stray.jpg", "a", &[50.0, -40.0, 0.5]);
        let s = c.finish();
        assert_eq!(s.rows, 61);
        assert!(!s.sampled);
        assert_eq!(s.points.len(), 61);
        assert!(s.points.iter().all(|p| p.coords.len() == 2));
        assert_eq!(
            s.labels
                .iter()
                .map(|l| (l.label.as_str(), l.count))
                .collect::<Vec<_>>(),
            [("a", 31), ("b", 30)]
        );
        assert!(s.labels.iter().all(|l| l.nearest.len() == 3));
        assert!(s.labels[1].nearest.iter().all(|p| p.label == "b"));
        // b's centroid is at t = 14.5/30: rows 14 and 15 are the nearest.
        let b: Vec<&str> = s.labels[1]
            .nearest
            .iter()
            .map(|p| p.path.as_str())
            .collect();
        assert!(b.contains(&"b/14.jpg") && b.contains(&"b/15.jpg"), "{b:?}");
        assert_eq!(s.outliers[0].path, "a/stray.jpg");
        assert_eq!(s.outliers.len(), 12);
        let paths = s.thumbnail_paths();
        assert_eq!(paths.len(), 6 + 12 - overlap(&s));

        // Order does not matter.
        let mut c2 = Collector::new(Limits::default());
        c2.add("a/stray.jpg", "a", &[50.0, -40.0, 0.5]);
        for i in (0..30).rev() {
            let t = i as f32 / 30.0;
            c2.add(&format!("b/{i}.jpg"), "b", &[10.0 + t, 5.0, 0.5]);
            c2.add(&format!("a/{i}.jpg"), "a", &[t, 0.0, 0.5]);
        }
        let s2 = c2.finish();
        assert_eq!(s2.labels, s.labels);
        assert_eq!(s2.outliers, s.outliers);
        let mut p1: Vec<&str> = s.points.iter().map(|p| p.path.as_str()).collect();
        let mut p2: Vec<&str> = s2.points.iter().map(|p| p.path.as_str()).collect();
        p1.sort();
        p2.sort();
        assert_eq!(p1, p2);

        // Above the limits: sampled, bounded.
        let limits = Limits {
            scatter_points: 100,
            candidates_per_label: 10,
            ..Limits::default()
        };
        // (Above the per-label cap, yet below the scatter's: still every row a candidate.)
        let mut exact = Collector::new(Limits {
            candidates_per_label: 4,
            ..Limits::default()
        });
        for i in 0..30 {
            exact.add(&format!("b/{i}.jpg"), "b", &[i as f32 - 14.4, 0.0]);
        }
        let nearest = &exact.finish().labels[0].nearest;
        assert_eq!(nearest[0].path, "b/14.jpg");
        let mut big = Collector::new(limits);
        for i in 0..5000 {
            let label = format!("l{}", i % 50);
            big.add(&format!("{label}/{i}.jpg"), &label, &[i as f32, 1.0]);
        }
        let s = big.finish();
        assert!(s.sampled);
        assert_eq!(s.points.len(), 100);
        assert_eq!(s.labels.len(), 50);
        assert!(s.labels.iter().all(|l| l.count == 100));
        assert!(
            s.labels.iter().all(|l| l.nearest.len() == 2),
            "2 per label above 40 labels"
        );
    }

    fn overlap(s: &Selection) -> usize {
        let nearest: HashSet<&str> = s
            .labels
            .iter()
            .flat_map(|l| l.nearest.iter().map(|p| p.path.as_str()))
            .collect();
        s.outliers
            .iter()
            .filter(|p| nearest.contains(p.path.as_str()))
            .count()
    }

    #[test]
    fn only_the_largest_labels_get_thumbnails() {
        let limits = Limits {
            max_thumb_labels: 2,
            ..Limits::default()
        };
        let mut c = Collector::new(limits);
        for (label, n) in [("small", 2), ("big", 9), ("mid", 5)] {
            for i in 0..n {
                c.add(&format!("{label}/{i}"), label, &[i as f32, 0.0]);
            }
        }
        let s = c.finish();
        let with: Vec<&str> = s
            .labels
            .iter()
            .filter(|l| !l.nearest.is_empty())
            .map(|l| l.label.as_str())
            .collect();
        assert_eq!(with, ["big", "mid"]);
        assert_eq!(s.labels.len(), 3);
    }
}

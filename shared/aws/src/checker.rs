//! The scheduled checker: on a schedule (EventBridge, template parameter `CheckerSchedule`)
//! it reads the unfinished runs and the collections of the bucket, decides which are stuck
//! by the rules of [`pipeline::stuck`], logs each with its reason and remedy, and emits two
//! CloudWatch metrics as an Embedded Metric Format log line (no CloudWatch SDK):
//! `Featurize/StuckRuns` and `Featurize/StuckCollections`, dimension `Stack`. The stack's
//! alarms fire on them (>= 1).
//!
//! On its second schedule (`ReconcileSchedule`, event `{"reconcile": true}`) it reconciles
//! every collection of the inbox against its index ([`pipeline::continuous::reconcile`]),
//! repairing through the ingest queue ([`reconcile_collections`]).
//!
//! **Work per invocation is bounded.** Runs are the folders under `runs/` (one delimited
//! listing, not every key); finished ones (`Results_PCA/<run>/_SUCCESS`, or a failed
//! summary) cost one or two reads and are skipped. At most `CHECKER_MAX_ITEMS` runs and as
//! many collections are examined per invocation: with more, each invocation takes the next
//! window (the window moves with the time, one step per 5 minutes), so every run is examined
//! within ⌈runs / CHECKER_MAX_ITEMS⌉ invocations.

use std::future::Future;

use serde::Serialize;
use tracing::{info, warn};

use pipeline::batch::listing::ImageFilter;
use pipeline::batch::status::run_status_at;
use pipeline::batch::summary::Summary;
use pipeline::continuous::collection::{collection_status_at, COLLECTIONS_PREFIX};
use pipeline::continuous::reconcile::{
    inbox_collections, reconcile, QueueRepair, ReconcileRecord, Repair,
};
use pipeline::error::Result;
use pipeline::layout::RunLayout;
use pipeline::manifest::RESERVED_RUN_IDS;
use pipeline::ports::store::{ObjectStore, StoreError};
use pipeline::stuck::{Clock, StallPolicy, Stuck, SystemClock};

use crate::config::Config;
use crate::retry::RetryPolicy;
use crate::sdk::{s3_client, sqs_client, SdkConfig, SqsQueue};

/// Prefix of the runs' folders.
pub const RUNS_PREFIX: &str = "runs/";
/// Folders under `runs/` that are not runs (requests, their results, request bindings).
pub const NOT_RUNS: &[&str] = &["bindings"];
/// The CloudWatch namespace of the checker's metrics.
pub const NAMESPACE: &str = "Featurize";
/// How often the window of examined items moves (s), when there are more than the budget.
pub const WINDOW_STEP_S: u64 = 300;

/// The child folders of a prefix (their names, without the prefix or the trailing `/`).
pub trait Folders: Send + Sync {
    /// The names of the folders directly under `prefix`, sorted.
    fn folders(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>>> + Send;
}

/// [`Folders`] through the object-store port: lists every key under the prefix (what the
/// local store and the tests use; on S3 prefer [`S3Folders`]).
pub struct ListedFolders<'a, S>(pub &'a S);

impl<S: ObjectStore> Folders for ListedFolders<'_, S> {
    async fn folders(&self, prefix: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .0
            .list(prefix)
            .await?
            .into_iter()
            .filter_map(|o| {
                let rest = o.key.strip_prefix(prefix)?;
                let (name, _) = rest.split_once('/')?;
                Some(name.to_string())
            })
            .collect();
        names.dedup();
        Ok(names)
    }
}

/// [`Folders`] on S3: ListObjectsV2 with the `/` delimiter (one page per 1,000 folders, not
/// per 1,000 keys). The same permission as any listing: `s3:ListBucket` on the bucket.
#[derive(Debug, Clone)]
pub struct S3Folders {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Folders {
    /// The folders of `bucket`.
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
        }
    }

    async fn page(
        &self,
        prefix: &str,
        token: Option<String>,
    ) -> std::result::Result<(Vec<String>, Option<String>), StoreError> {
        let response = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .delimiter("/")
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| {
                let status = e.raw_response().map(|r| r.status().as_u16());
                StoreError::Remote {
                    op: "ListObjectsV2",
                    key: prefix.to_string(),
                    transient: status.is_none_or(|s| s >= 500 || s == 429),
                    source: Box::new(e),
                }
            })?;
        let names = response
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix()?.strip_prefix(prefix)?.strip_suffix('/'))
            .map(String::from)
            .collect();
        let next = response
            .is_truncated()
            .unwrap_or(false)
            .then(|| response.next_continuation_token().map(String::from))
            .flatten();
        Ok((names, next))
    }
}

impl Folders for S3Folders {
    async fn folders(&self, prefix: &str) -> Result<Vec<String>> {
        let retry = RetryPolicy::default();
        let mut names = Vec::new();
        let mut token = None;
        loop {
            let (page, next) = retry
                .run("ListObjectsV2", prefix, || self.page(prefix, token.clone()))
                .await?;
            names.extend(page);
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        names.sort();
        Ok(names)
    }
}

/// How the checker works.
#[derive(Debug, Clone)]
pub struct CheckerSettings {
    /// The stuck bounds.
    pub policy: StallPolicy,
    /// Runs (and, separately, collections) examined per invocation.
    pub max_items: usize,
}

/// One stuck run or collection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StuckItem {
    /// `run` or `collection`.
    pub what: &'static str,
    /// The run id or the collection name.
    pub id: String,
    /// Why, since when, and the remedy.
    pub stuck: Stuck,
}

/// What one check found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CheckReport {
    /// Run folders under `runs/`.
    pub runs: usize,
    /// Runs examined this invocation (at most the budget).
    pub runs_examined: usize,
    /// Of those, finished (complete or failed) and skipped.
    pub runs_finished: usize,
    /// Runs whose status could not be read (no manifest yet, a read error): logged.
    pub runs_unreadable: usize,
    /// Collections under `collections/`.
    pub collections: usize,
    /// Collections examined this invocation.
    pub collections_examined: usize,
    /// Collections whose status could not be read.
    pub collections_unreadable: usize,
    /// What is stuck.
    pub stuck: Vec<StuckItem>,
}

impl CheckReport {
    /// Stuck runs.
    pub fn stuck_runs(&self) -> usize {
        self.stuck.iter().filter(|s| s.what == "run").count()
    }
    /// Stuck collections.
    pub fn stuck_collections(&self) -> usize {
        self.stuck.iter().filter(|s| s.what == "collection").count()
    }
}

/// At most `budget` of `items`, starting at a window that moves with the time.
fn window<T: Clone>(items: &[T], budget: usize, now_unix: u64) -> Vec<T> {
    if items.len() <= budget {
        return items.to_vec();
    }
    let step = (now_unix / WINDOW_STEP_S) as usize;
    let start = step.wrapping_mul(budget) % items.len();
    items
        .iter()
        .cycle()
        .skip(start)
        .take(budget)
        .cloned()
        .collect()
}

/// Whether a run has finished (complete, or failed by its summary): nothing can be stuck.
async fn finished<S: ObjectStore>(store: &S, layout: &RunLayout) -> Result<bool> {
    if store.exists(&layout.pca_success()).await? {
        return Ok(true);
    }
    match store.get(&layout.summary()).await {
        Ok(body) => Ok(serde_json::from_slice::<Summary>(&body)
            .map(|s| s.status == "failed")
            .unwrap_or(false)),
        Err(StoreError::NotFound(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Finds the stuck runs and collections of `store` (its folders listed by `folders`).
pub async fn check<S: ObjectStore, F: Folders>(
    store: &S,
    folders: &F,
    settings: &CheckerSettings,
    clock: &dyn Clock,
) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let runs: Vec<String> = folders
        .folders(RUNS_PREFIX)
        .await?
        .into_iter()
        .filter(|r| !RESERVED_RUN_IDS.contains(&r.as_str()) && !NOT_RUNS.contains(&r.as_str()))
        .collect();
    report.runs = runs.len();
    for run_id in window(&runs, settings.max_items, clock.now_unix()) {
        report.runs_examined += 1;
        let layout = RunLayout::new(&run_id);
        match finished(store, &layout).await {
            Ok(true) => {
                report.runs_finished += 1;
                continue;
            }
            Ok(false) => {}
            Err(e) => {
                warn!(run_id, error = %e, "could not read the run's completion");
                report.runs_unreadable += 1;
                continue;
            }
        }
        match run_status_at(store, &run_id, &settings.policy, clock).await {
            Ok(status) => {
                if let Some(stuck) = status.stuck {
                    report.stuck.push(StuckItem {
                        what: "run",
                        id: run_id,
                        stuck,
                    });
                }
            }
            Err(e) => {
                warn!(run_id, error = %e, "could not read the run's status");
                report.runs_unreadable += 1;
            }
        }
    }
    let collections = folders.folders(COLLECTIONS_PREFIX).await?;
    report.collections = collections.len();
    for name in window(&collections, settings.max_items, clock.now_unix()) {
        report.collections_examined += 1;
        match collection_status_at(store, &name, &settings.policy, clock).await {
            Ok(status) => {
                if let Some(stuck) = status.stuck {
                    report.stuck.push(StuckItem {
                        what: "collection",
                        id: name,
                        stuck,
                    });
                }
            }
            Err(e) => {
                warn!(collection = name, error = %e, "could not read the collection's status");
                report.collections_unreadable += 1;
            }
        }
    }
    Ok(report)
}

/// The Embedded Metric Format line of a report: CloudWatch Logs turns it into the metrics
/// `Featurize/StuckRuns` and `Featurize/StuckCollections` (dimension `Stack`).
pub fn emf_line(report: &CheckReport, stack: &str, now_ms: u64) -> String {
    serde_json::json!({
        "_aws": {
            "Timestamp": now_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["Stack"]],
                "Metrics": [
                    {"Name": "StuckRuns", "Unit": "Count"},
                    {"Name": "StuckCollections", "Unit": "Count"}
                ]
            }]
        },
        "Stack": stack,
        "StuckRuns": report.stuck_runs(),
        "StuckCollections": report.stuck_collections(),
        "RunsExamined": report.runs_examined,
        "CollectionsExamined": report.collections_examined,
    })
    .to_string()
}

/// Logs each stuck item (reason and remedy) and prints the metrics line (stdout: CloudWatch
/// Logs reads EMF from the function's log stream).
pub fn publish(report: &CheckReport, stack: &str, now_ms: u64) {
    for item in &report.stuck {
        warn!(
            what = item.what,
            id = %item.id,
            kind = ?item.stuck.kind,
            since = %item.stuck.since,
            reason = %item.stuck.reason,
            remedy = %item.stuck.remedy,
            "stuck"
        );
    }
    info!(
        runs = report.runs,
        runs_examined = report.runs_examined,
        runs_finished = report.runs_finished,
        runs_unreadable = report.runs_unreadable,
        collections = report.collections,
        collections_unreadable = report.collections_unreadable,
        stuck = report.stuck.len(),
        "check done"
    );
    println!("{}", emf_line(report, stack, now_ms));
}

/// What a scheduled event asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckerEvent {
    /// Find stuck runs and collections (the default, `CheckerSchedule`).
    Check,
    /// Reconcile every collection (`ReconcileSchedule`'s input `{"reconcile": true}`).
    Reconcile,
}

impl CheckerEvent {
    /// Reads the event: `{"reconcile": true}` reconciles; anything else (an EventBridge
    /// scheduled event, `{}`) checks.
    pub fn parse(event: &serde_json::Value) -> Self {
        if event.get("reconcile").and_then(|v| v.as_bool()) == Some(true) {
            CheckerEvent::Reconcile
        } else {
            CheckerEvent::Check
        }
    }
}

/// The reconcile schedule's hook: reconciles every collection found under `inbox` in
/// `store`, repairing through `repair` (on AWS the ingest and refit queues). A collection
/// that fails is logged and the others go on; the records are returned (each is also in
/// `collections/<c>/reconcile.json`, which `status --collection` shows).
pub async fn reconcile_collections<S: ObjectStore, R: Repair>(
    store: &S,
    inbox: &str,
    filter: &ImageFilter,
    repair: &R,
) -> Result<Vec<ReconcileRecord>> {
    let mut records = Vec::new();
    for collection in inbox_collections(store, inbox).await? {
        match reconcile(store, store, inbox, &collection, filter, repair).await {
            Ok(record) => {
                info!(
                    collection,
                    listed = record.listed,
                    repaired = record.repaired(),
                    missing = record.missing.count,
                    changed = record.changed.count,
                    stale = record.stale.count,
                    retried = record.retried.count,
                    "collection reconciled"
                );
                records.push(record);
            }
            Err(e) => warn!(collection, error = %e, "reconcile failed; the next one tries again"),
        }
    }
    Ok(records)
}

/// The checker function: its store, folder listing, bounds and, for the reconcile, the
/// ingest and refit queues.
pub struct CheckerFunction {
    store: crate::lambda::DeployedStore,
    folders: S3Folders,
    settings: CheckerSettings,
    stack: String,
    inbox: String,
    filter: ImageFilter,
    repair: QueueRepair<SqsQueue, SqsQueue>,
}

impl CheckerFunction {
    /// Builds the checker from the configuration (`BUCKET`, the stuck bounds,
    /// `CHECKER_MAX_ITEMS`, `STACK_NAME`, `INBOX_PREFIX`, `IMAGE_GLOB` and the ingest and
    /// refit queues).
    pub fn from_config(config: &Config, aws: &SdkConfig) -> Result<Self> {
        let sqs = sqs_client(aws);
        Ok(Self {
            store: crate::lambda::deployed_store(config, aws),
            folders: S3Folders::new(s3_client(aws), &config.bucket),
            settings: CheckerSettings {
                policy: config.stall,
                max_items: config.checker_max_items,
            },
            stack: config.stack_name.clone(),
            inbox: config.inbox_prefix.clone(),
            filter: ImageFilter::new(&config.run_defaults.image_glob)?,
            repair: QueueRepair {
                ingest_queue: SqsQueue::new(sqs.clone(), config.ingest_queue_url()?),
                refit_queue: Some(SqsQueue::new(sqs, config.refit_queue_url()?)),
            },
        })
    }

    /// One invocation: a check (publishing the metrics) or, for `{"reconcile": true}`, a
    /// reconcile of every collection. Answers what it found, as JSON.
    pub async fn handle(&self, event: serde_json::Value) -> Result<serde_json::Value> {
        match CheckerEvent::parse(&event) {
            CheckerEvent::Check => {
                let clock = SystemClock;
                let report = check(&self.store, &self.folders, &self.settings, &clock).await?;
                publish(&report, &self.stack, clock.now_ms());
                Ok(serde_json::to_value(&report)?)
            }
            CheckerEvent::Reconcile => {
                let records =
                    reconcile_collections(&self.store, &self.inbox, &self.filter, &self.repair)
                        .await?;
                Ok(serde_json::json!({ "reconciled": records }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::ports::store::FsStore;
    use pipeline::stuck::{FixedClock, StuckKind};

    #[test]
    fn the_window_covers_every_item_over_successive_steps() {
        let items: Vec<usize> = (0..7).collect();
        assert_eq!(window(&items, 10, 0), items);
        let mut seen = std::collections::BTreeSet::new();
        for step in 0..4 {
            let w = window(&items, 3, step * WINDOW_STEP_S);
            assert_eq!(w.len(), 3);
            seen.extend(w);
        }
        assert_eq!(seen.len(), 7);
    }

    #[test]
    fn events_and_the_metrics_line() {
        assert_eq!(
            CheckerEvent::parse(&serde_json::json!({"reconcile": true})),
            CheckerEvent::Reconcile
        );
        assert_eq!(
            CheckerEvent::parse(&serde_json::json!({"source": "aws.events"})),
            CheckerEvent::Check
        );
        let report = CheckReport {
            stuck: vec![StuckItem {
                what: "run",
                id: "r".into(),
                stuck: Stuck::new(StuckKind::NoClaim, 0, "x", "y"),
            }],
            ..Default::default()
        };
        let line: serde_json::Value =
            serde_json::from_str(&emf_line(&report, "st", 1_000)).unwrap();
        assert_eq!(line["StuckRuns"], 1);
        assert_eq!(line["StuckCollections"], 0);
        assert_eq!(line["Stack"], "st");
        let metrics = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(metrics["Namespace"], NAMESPACE);
        assert_eq!(metrics["Dimensions"][0][0], "Stack");
        assert_eq!(metrics["Metrics"][0]["Name"], "StuckRuns");
        assert_eq!(line["_aws"]["Timestamp"], 1_000);
    }

    #[test]
    fn listed_folders_are_the_first_segment_under_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for key in [
                "runs/a/manifest.json",
                "runs/a/done/shard-00000.json",
                "runs/b/manifest.json",
                "runs/requests/x.json",
                "collections/c/current.json",
            ] {
                store.put(key, "{}".into()).await.unwrap();
            }
            let folders = ListedFolders(&store);
            assert_eq!(
                folders.folders(RUNS_PREFIX).await.unwrap(),
                ["a", "b", "requests"]
            );
            let settings = CheckerSettings {
                policy: StallPolicy::default(),
                max_items: 10,
            };
            // "{}" is no manifest: both runs are unreadable, nothing is stuck.
            let report = check(&store, &folders, &settings, &FixedClock::at_unix(10))
                .await
                .unwrap();
            assert_eq!((report.runs, report.runs_unreadable), (2, 2));
            assert_eq!(report.collections, 1);
        });
    }
}

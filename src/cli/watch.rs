//! `featurize watch`: keep a folder's features and PCA current. The steps: set up the
//! collection and its ingestor, a first pass over what is already there, then an event loop
//! that ingests changed files and refits once quiet (or once the oldest change not yet
//! published reaches `--max-staleness`, under steady changes), and on Ctrl-C / SIGTERM a
//! last ingest, refit and publish.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Args;
use notify_debouncer_mini::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_mini::{new_debouncer, Debouncer};
use pipeline::continuous::collection::{refit, CollectionLayout, RefitOptions, RefitOutcome};
use pipeline::continuous::ingest::{IngestSettings, Ingestor};
use pipeline::ports::queue::InProcessQueue;
use pipeline::ports::store::{FsStore, ObjectStore};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc::UnboundedReceiver;

use super::common::{collection_root, terminal_safe, terminal_safe_lines, ModelArgs, PcaArgs};
use super::refit::print_refit;

#[derive(Args)]
pub struct WatchArgs {
    /// The folder to watch: the collection (its name); an image's label is its parent folder's name.
    #[arg(long)]
    input: PathBuf,
    /// Output folder: OUT/collections/<name>/ (the same layout as on S3).
    #[arg(long)]
    output: PathBuf,
    /// Refit the PCA once nothing changed for this many seconds.
    #[arg(long, default_value_t = 10.0)]
    quiet: f64,
    /// Under steady changes, refit anyway once the oldest change not yet published is this
    /// many seconds old, so that no change waits longer than that plus one refit (0: no
    /// bound).
    #[arg(long, default_value_t = 150.0)]
    max_staleness: f64,
    /// A file is read once no event touched it for this many milliseconds (half-written files wait).
    #[arg(long, default_value_t = 500)]
    debounce_ms: u64,
    /// Which files are images: a glob on the file name, case-insensitive.
    #[arg(long, default_value = "*.{jpg,jpeg,png}")]
    glob: String,
    /// Reject images with more pixels than this.
    #[arg(long, default_value_t = 50_000_000)]
    max_pixels: u64,
    #[command(flatten)]
    pca: PcaArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// Inference threads (default: all cores).
    #[arg(long, short = 'j', default_value_t = 0)]
    jobs: usize,
}

pub async fn watch(args: WatchArgs) -> Result<ExitCode> {
    if !(args.quiet >= 0.0 && args.quiet.is_finite()) {
        bail!("--quiet must be a number of seconds, got {}", args.quiet);
    }
    if !(args.max_staleness >= 0.0 && args.max_staleness.is_finite()) {
        bail!(
            "--max-staleness must be a number of seconds, got {}",
            args.max_staleness
        );
    }
    // One writer per output folder: a run, resume, refit or another watch on it waits.
    let _exclusive =
        pipeline::batch::output_lock::OutputLock::acquire(&args.output, "featurize watch")?;
    let queue = InProcessQueue::new();
    let watched = Watched::setup(&args, &queue)?;
    let known = watched.first_pass().await?;
    let (debouncer, mut events) = start_watcher(&watched.dir(), args.debounce_ms)?;
    eprintln!(
        "watching {} (collection {:?}); views under {}; Ctrl-C to finish",
        watched.dir().display(),
        watched.collection,
        watched.output.describe(&watched.layout.prefix())
    );
    let mut shutdown = Shutdown::new()?;
    let mut state = WatchState::new(known);
    let timing = RefitTiming {
        quiet: Duration::from_secs_f64(args.quiet),
        max_staleness: (args.max_staleness > 0.0)
            .then(|| Duration::from_secs_f64(args.max_staleness)),
    };
    watched
        .event_loop(&mut state, &mut events, &mut shutdown, timing)
        .await?;
    watched
        .finish(state, debouncer, events, args.debounce_ms)
        .await?;
    Ok(ExitCode::SUCCESS)
}

/// A changed path from the file watcher, and when it was noticed.
type Noticed = (PathBuf, Instant);

/// What a file was (size, modification time) when last ingested.
type Stamp = (u64, SystemTime);

/// The watched collection: its folder, the stores, the ingestor and the refit options.
struct Watched<'q> {
    /// The parent of the watched folder (the input store's root).
    root: PathBuf,
    /// The collection: the watched folder's name.
    collection: String,
    input: FsStore,
    output: FsStore,
    queue: &'q InProcessQueue,
    ingestor: Ingestor<FsStore, FsStore, &'q InProcessQueue>,
    options: RefitOptions,
    layout: CollectionLayout,
}

/// What the event loop knows between events.
struct WatchState {
    /// Every path seen: ingested, or in the published view.
    known: BTreeSet<String>,
    /// Paths to ingest on the next tick.
    pending: BTreeSet<String>,
    /// What each file was when last ingested: reading a file makes the watcher report it
    /// again (access events), which must not re-featurize it forever.
    stamps: HashMap<String, Stamp>,
    /// Whether something was ingested since the last refit.
    dirty: bool,
    last_change: Instant,
    /// When the oldest change not yet published was noticed.
    oldest_change: Option<Instant>,
}

/// When the event loop refits.
#[derive(Debug, Clone, Copy)]
struct RefitTiming {
    /// Once nothing changed for this long (the fast path when changes stop).
    quiet: Duration,
    /// Or once the oldest change not yet published is this old (steady changes).
    max_staleness: Option<Duration>,
}

/// Ctrl-C and SIGTERM.
struct Shutdown {
    sigint: Signal,
    sigterm: Signal,
}

impl Shutdown {
    fn new() -> Result<Self> {
        Ok(Self {
            sigint: signal(SignalKind::interrupt())?,
            sigterm: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for either signal.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.sigint.recv() => {}
            _ = self.sigterm.recv() => {}
        }
    }
}

impl<'q> Watched<'q> {
    /// The collection of the watched folder, its stores, and an ingestor with the model.
    fn setup(args: &WatchArgs, queue: &'q InProcessQueue) -> Result<Self> {
        let (root, collection) = collection_root(&args.input)?;
        let model = args.model.load()?;
        let input = FsStore::new(&root);
        let output = FsStore::new(&args.output);
        let settings = IngestSettings {
            inbox: String::new(),
            filter: pipeline::batch::listing::ImageFilter::new(&args.glob)?,
            max_pixels: args.max_pixels,
            threads: args.jobs,
            fetch_concurrency: 8,
            quiet_s: args.quiet.ceil() as u32,
        };
        let ingestor = Ingestor::new(
            input.clone(),
            output.clone(),
            queue,
            pipeline::batch::inference::Engine::Model(model),
            settings,
        );
        let options = args.pca.refit_options();
        let layout = CollectionLayout::new(&collection);
        Ok(Self {
            root,
            collection,
            input,
            output,
            queue,
            ingestor,
            options,
            layout,
        })
    }

    /// The watched folder.
    fn dir(&self) -> PathBuf {
        self.root.join(&self.collection)
    }

    /// Start from what is there: every file, and every path the published view still has
    /// (deleted while nobody watched).
    async fn first_pass(&self) -> Result<BTreeSet<String>> {
        let collection = &self.collection;
        let mut known: BTreeSet<String> = self
            .input
            .list(&format!("{collection}/"))
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        if let Some((pointer, _)) =
            pipeline::continuous::collection::read_current(&self.output, &self.layout).await?
        {
            let index = pipeline::continuous::collection::read_index(
                &self.output,
                &self.layout,
                &pointer.snapshot,
            )
            .await?;
            known.extend(index.entries.keys().map(|p| format!("{collection}/{p}")));
        }
        Ok(known)
    }

    /// Until Ctrl-C / SIGTERM: collect the changed paths, ingest them on the next tick, and
    /// refit once nothing changed for `quiet`, or once the oldest unpublished change is
    /// `max_staleness` old.
    async fn event_loop(
        &self,
        state: &mut WatchState,
        events: &mut UnboundedReceiver<Noticed>,
        shutdown: &mut Shutdown,
        timing: RefitTiming,
    ) -> Result<()> {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                Some((path, at)) = events.recv() => {
                    state.expand(&self.root, &self.collection, path, at);
                    continue;
                }
                _ = shutdown.recv() => break,
                _ = tick.tick() => {}
            }
            if !state.pending.is_empty() {
                self.ingest_step(state).await;
            }
            if state.refit_due(timing) {
                self.refit_step(state).await?;
            }
        }
        Ok(())
    }

    /// Ingests the pending paths, each on its own; those that failed transiently (a busy
    /// file, a full disk) stay pending, tried again next tick.
    async fn ingest_step(&self, state: &mut WatchState) {
        let keys: Vec<String> = std::mem::take(&mut state.pending).into_iter().collect();
        let before: Vec<(String, Option<Stamp>)> = keys
            .iter()
            .map(|k| (k.clone(), stamp(&self.root, k)))
            .collect();
        let report = self.ingestor.ingest_each(&keys).await;
        let outcome = &report.outcome;
        eprintln!(
            "ingested {} keys: {} featurized, {} failed, {} removed, {} ignored",
            outcome.keys, outcome.upserts, outcome.failed, outcome.removed, outcome.ignored
        );
        for (key, e) in &report.errors {
            eprintln!(
                "ingest of {} failed, retrying: {}",
                terminal_safe(key),
                terminal_safe_lines(&e.to_string())
            );
        }
        let retry: BTreeSet<String> = outcome.retry.iter().cloned().collect();
        for (key, s) in before {
            if retry.contains(&key) {
                continue;
            }
            match s {
                Some(s) => state.stamps.insert(key.clone(), s),
                None => state.stamps.remove(&key),
            };
            state.known.insert(key);
        }
        if !retry.is_empty() {
            state.pending.extend(retry);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        while self.queue.pop().is_some() {}
        state.dirty = true;
        state.last_change = Instant::now();
    }

    /// Refits (once quiet, or stale); prints the snapshot when one was published.
    async fn refit_step(&self, state: &mut WatchState) -> Result<()> {
        let outcome = self.refit_collection().await?;
        if matches!(outcome, RefitOutcome::Published(_)) {
            print_refit(&outcome, &|k| self.output.describe(k));
        }
        state.dirty = false;
        // What is still pending (noticed during the refit, or failed) starts a new wait.
        state.oldest_change = (!state.pending.is_empty()).then(Instant::now);
        Ok(())
    }

    /// Refits the collection (published when something changed).
    async fn refit_collection(&self) -> Result<RefitOutcome> {
        let outcome = refit(
            &self.output,
            &self.input,
            "",
            &self.collection,
            &self.options,
        )
        .await?;
        Ok(outcome)
    }

    /// Finish: what the debouncer still holds, then a last refit, and what is current.
    async fn finish(
        &self,
        mut state: WatchState,
        debouncer: Debouncer<RecommendedWatcher>,
        mut events: UnboundedReceiver<Noticed>,
        debounce_ms: u64,
    ) -> Result<()> {
        eprintln!("finishing: pending changes, refit, publish");
        tokio::time::sleep(Duration::from_millis(debounce_ms + 200)).await;
        drop(debouncer);
        while let Ok((path, at)) = events.try_recv() {
            state.expand(&self.root, &self.collection, path, at);
        }
        if !state.pending.is_empty() {
            let keys: Vec<String> = std::mem::take(&mut state.pending).into_iter().collect();
            self.ingestor.ingest(&keys).await?;
        }
        let outcome = self.refit_collection().await?;
        match &outcome {
            RefitOutcome::NothingToDo => self.print_current().await?,
            other => print_refit(other, &|k| self.output.describe(k)),
        }
        Ok(())
    }

    /// Prints the published snapshot (after a last refit that had nothing to do).
    async fn print_current(&self) -> Result<()> {
        let collection = &self.collection;
        let output = &self.output;
        let status =
            pipeline::continuous::collection::collection_status(output, collection).await?;
        match status.current {
            Some(p) => {
                println!(
                    "collection {collection}: snapshot {} (refit {}) is current",
                    p.snapshot, p.seq
                );
                println!("  Results      {}", output.describe(&p.results));
                println!("  Results_PCA  {}", output.describe(&p.results_pca));
                if let Some(m) = &p.pca_model {
                    println!("  pca_model    {}", output.describe(m));
                }
                println!("  current      {}", output.describe(&self.layout.current()));
            }
            None => println!("collection {collection}: nothing published"),
        }
        Ok(())
    }
}

impl WatchState {
    /// Everything known starts pending: the first ingest covers what is already there.
    fn new(known: BTreeSet<String>) -> Self {
        Self {
            pending: known.clone(),
            known,
            stamps: HashMap::new(),
            dirty: true,
            last_change: Instant::now(),
            oldest_change: Some(Instant::now()),
        }
    }

    /// Whether to refit now: something was ingested since the last refit, and either
    /// nothing changed for the quiet time, or the oldest change not yet published is
    /// `max_staleness` old (steady changes never leave a quiet time).
    fn refit_due(&self, timing: RefitTiming) -> bool {
        let quiet = self.pending.is_empty() && self.last_change.elapsed() >= timing.quiet;
        let stale = timing
            .max_staleness
            .zip(self.oldest_change)
            .is_some_and(|(bound, since)| since.elapsed() >= bound);
        self.dirty && (quiet || stale)
    }

    /// Adds what a watcher event (noticed at `at`) means to the pending paths, noting when
    /// the oldest change not yet published was noticed: an event that waited in the channel
    /// during a refit counts from when it arrived there.
    fn expand(&mut self, root: &Path, collection: &str, path: PathBuf, at: Instant) {
        self.expand_paths(root, collection, path);
        if !self.pending.is_empty() {
            self.oldest_change = Some(self.oldest_change.map_or(at, |t| t.min(at)));
        }
    }

    fn expand_paths(&mut self, root: &Path, collection: &str, path: PathBuf) {
        let Some(key) = key_of(root, &path) else {
            return;
        };
        if key == collection {
            return; // the watched folder itself
        }
        if path.is_dir() {
            // A folder moved in: its files (those already known have events of their own).
            for entry in walkdir_files(&path) {
                if let Some(k) = key_of(root, &entry) {
                    if !self.known.contains(&k) {
                        self.pending.insert(k);
                    }
                }
            }
        } else {
            // A file, or something gone: a folder removed takes what was known under it.
            let folder = format!("{key}/");
            self.pending.extend(
                self.known
                    .range(folder.clone()..)
                    .take_while(|k| k.starts_with(&folder))
                    .cloned(),
            );
            let unchanged = self
                .stamps
                .get(&key)
                .is_some_and(|s| Some(*s) == stamp(root, &key));
            if !unchanged {
                self.pending.insert(key);
            }
        }
    }
}

/// Starts the file watcher on `dir`: changed paths arrive on the receiver, each once no
/// event touched it for `debounce_ms`.
fn start_watcher(
    dir: &Path,
    debounce_ms: u64,
) -> Result<(Debouncer<RecommendedWatcher>, UnboundedReceiver<Noticed>)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Noticed>();
    let mut debouncer = new_debouncer(
        Duration::from_millis(debounce_ms),
        move |events: notify_debouncer_mini::DebounceEventResult| match events {
            Ok(events) => {
                for e in events {
                    let _ = tx.send((e.path, Instant::now()));
                }
            }
            Err(e) => eprintln!("watch error: {e}"),
        },
    )
    .context("starting the file watcher")?;
    debouncer
        .watcher()
        .watch(dir, RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    Ok((debouncer, rx))
}

/// A file's size and modification time, if it is a file.
fn stamp(root: &Path, key: &str) -> Option<Stamp> {
    std::fs::metadata(root.join(key))
        .ok()
        .filter(|m| m.is_file())
        .and_then(|m| Some((m.len(), m.modified().ok()?)))
}

fn key_of(root: &std::path::Path, path: &std::path::Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let key = rel.to_str()?.replace(std::path::MAIN_SEPARATOR, "/");
    (!key.is_empty()).then_some(key)
}

/// The files under `dir`, following symbolic links to folders; each real folder is walked
/// once (by its canonical path), so a link back to a folder above it (`a -> .`) ends the
/// walk instead of looping for ever.
fn walkdir_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut walked = std::collections::HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(real) = std::fs::canonicalize(&d) else {
            continue;
        };
        if !walked.insert(real) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_walk_ends_on_symbolic_link_loops() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("photos");
        std::fs::create_dir_all(folder.join("sub")).unwrap();
        std::fs::write(folder.join("a.jpg"), b"a").unwrap();
        std::fs::write(folder.join("sub/b.jpg"), b"b").unwrap();
        std::os::unix::fs::symlink(".", folder.join("loop1")).unwrap();
        std::os::unix::fs::symlink("..", folder.join("sub/up")).unwrap();
        let files = walkdir_files(&folder);
        let mut names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a.jpg", "b.jpg"], "each file once: {files:?}");
    }
}

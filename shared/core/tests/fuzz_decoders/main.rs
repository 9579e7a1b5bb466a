//! Fuzz tests of every internal format's decoder (issue 30): the shard statistics and a
//! collection's running sums (binary), and the JSON documents — the manifest, a shard's image
//! list, the shard and reduce messages, the run request (and the request ceilings' checks on
//! it), the done marker (with its checksums), the completion barrier's tree nodes, the
//! featurizer's model-health record, and a collection's deltas, pointer, index, summary,
//! refit message and refit status.
//!
//! Each decoder gets arbitrary bytes and structured mutations of the committed corpus
//! (`tests/corpus/<decoder>/`): truncation, byte flips, insertions and removals, 8-byte words
//! overwritten with NaN, infinities and huge counts or dimensions, JSON nodes replaced by
//! NaN-like strings, huge or negative numbers and deep nesting, nodes removed, unknown fields
//! added. Every input must give `Ok` or an `Err` — never a panic or an abort — within
//! [`CASE_TIME_LIMIT`]; an `Ok` must hold only finite numbers and survive what its readers do
//! next (a round trip, a merge, a PCA fit, the request's validation).
//!
//! The corpus doubles as the regression set: `ok-*` files must decode, `err-*` files must be
//! refused, `any-*` files are seeds only. A failure prints the minimal input: add it there.
//!
//! Stable Rust, in process (proptest without fork mode), with a fixed seed so that CI runs
//! the same [`DEFAULT_CASES`] cases per decoder every time. `FUZZ_CASES=100000` and
//! `FUZZ_SEED=<n>` explore further, e.g.
//! `FUZZ_CASES=20000 FUZZ_SEED=7 cargo test -p featurize-core --test fuzz_decoders`.

mod mutate;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};
use serde::de::DeserializeOwned;

use engine::pca::PcaOptions;
use engine::stats::{RunningSums, ShardStats, MAX_DIM};
use mutate::{mutate, mutation, pick, Pick};
use pipeline::batch::barrier::BarrierNode;
use pipeline::continuous::collection::{
    delta_time_ms, CollectionIndex, CurrentPointer, Delta, RefitFailure, RefitMessage, RefitStart,
    RefitSummary,
};
use pipeline::health::ModelHealth;
use pipeline::limits::RequestLimits;
use pipeline::manifest::{
    validate_run_id, DoneMarker, ImageRef, Manifest, ReduceMessage, RunOptions, RunRequest,
    ShardMessage,
};

/// Cases per decoder and run (CI): ~15 decoders, a few seconds in all.
const DEFAULT_CASES: u32 = 1000;
/// The fixed seed CI runs with.
const DEFAULT_SEED: u64 = 30;
/// The longest one decode (and its follow-up checks) may take. Inputs are at most ~100 kB,
/// which every decoder reads in well under a millisecond: the bound catches quadratic or
/// runaway work, with room for a loaded CI machine.
const CASE_TIME_LIMIT: Duration = Duration::from_secs(2);

/// What a decoder made of one input: `Ok` (accepted, the checks on the value passed) or the
/// refusal's message. A broken property on an accepted value panics (a test failure).
type Decoded = Result<(), String>;

/// One decoder under test.
struct Target {
    /// The corpus folder (`tests/corpus/<name>/`).
    name: &'static str,
    /// Binary (the statistics) or JSON.
    binary: bool,
    decode: fn(&[u8]) -> Decoded,
}

const TARGETS: &[Target] = &[
    Target {
        name: "stats",
        binary: true,
        decode: shard_stats,
    },
    Target {
        name: "running_sums",
        binary: true,
        decode: running_sums,
    },
    Target {
        name: "manifest",
        binary: false,
        decode: manifest,
    },
    Target {
        name: "shard_list",
        binary: false,
        decode: shard_list,
    },
    Target {
        name: "shard_message",
        binary: false,
        decode: json::<ShardMessage>,
    },
    Target {
        name: "reduce_message",
        binary: false,
        decode: json::<ReduceMessage>,
    },
    Target {
        name: "run_request",
        binary: false,
        decode: run_request,
    },
    Target {
        name: "done_marker",
        binary: false,
        decode: done_marker,
    },
    Target {
        name: "barrier_node",
        binary: false,
        decode: json::<BarrierNode>,
    },
    Target {
        name: "model_health",
        binary: false,
        decode: model_health,
    },
    Target {
        name: "delta",
        binary: false,
        decode: delta,
    },
    Target {
        name: "current_pointer",
        binary: false,
        decode: json::<CurrentPointer>,
    },
    Target {
        name: "collection_index",
        binary: false,
        decode: json::<CollectionIndex>,
    },
    Target {
        name: "refit_summary",
        binary: false,
        decode: refit_summary,
    },
    Target {
        name: "refit_message",
        binary: false,
        decode: json::<RefitMessage>,
    },
    Target {
        name: "refit_start",
        binary: false,
        decode: json::<RefitStart>,
    },
    Target {
        name: "refit_failure",
        binary: false,
        decode: json::<RefitFailure>,
    },
];

// ---------------------------------------------------------------------------------------
// The decoders, and what an accepted value must satisfy.

const STATS_KEY: &str = "runs/r/attempts/shard-0/a/stats.bin";

fn shard_stats(bytes: &[u8]) -> Decoded {
    let stats = ShardStats::from_bytes(bytes, STATS_KEY).map_err(|e| refusal(e, STATS_KEY))?;
    let dim = stats.dim();
    assert!(dim <= MAX_DIM);
    assert_eq!(stats.comoment.len(), dim * dim);
    assert!(stats
        .mean
        .iter()
        .chain(&stats.comoment)
        .all(|v| v.is_finite()));
    assert_eq!(
        stats.to_bytes(),
        bytes,
        "what was accepted is what is written back"
    );
    // What the reducer does next: merge, then fit.
    let mut merged = stats.clone();
    let _ = merged.merge(&stats);
    let pca = PcaOptions {
        k: 2.min(dim.max(1)),
        ..PcaOptions::default()
    };
    let _ = engine::pca::fit(&merged, &pca);
    Ok(())
}

fn running_sums(bytes: &[u8]) -> Decoded {
    let sums = RunningSums::from_bytes(bytes, STATS_KEY).map_err(|e| refusal(e, STATS_KEY))?;
    let dim = sums.dim();
    assert!(dim <= MAX_DIM);
    assert_eq!((sums.s1.len(), sums.s2.len()), (dim, dim * dim));
    assert!(sums
        .shift
        .iter()
        .chain(&sums.s1)
        .chain(&sums.s2)
        .all(|v| v.is_finite()));
    assert_eq!(
        sums.to_bytes(),
        bytes,
        "what was accepted is what is written back"
    );
    // What a refit does next: remove nothing, then fit.
    let mut next = sums.clone();
    next.remove(&[]).map_err(|e| e.to_string())?;
    let pca = PcaOptions {
        k: 2.min(dim.max(1)),
        ..PcaOptions::default()
    };
    let _ = engine::pca::fit(&next.to_stats(), &pca);
    Ok(())
}

/// A refusal's message: not empty, and naming the object when `key` is given.
fn refusal(error: impl std::fmt::Display, key: &str) -> String {
    let text = error.to_string();
    assert!(text.contains(key), "the error names the object: {text}");
    text
}

/// serde_json's decode of `T`; an accepted value is encoded and decoded again.
fn decode<T: DeserializeOwned + serde::Serialize>(bytes: &[u8]) -> Result<T, String> {
    let value: T = serde_json::from_slice(bytes).map_err(|e| {
        let text = e.to_string();
        assert!(!text.is_empty());
        text
    })?;
    let again = serde_json::to_vec(&value).expect("an accepted document encodes");
    serde_json::from_slice::<T>(&again)
        .unwrap_or_else(|e| panic!("an accepted document, encoded again, is refused: {e}"));
    Ok(value)
}

fn json<T: DeserializeOwned + serde::Serialize>(bytes: &[u8]) -> Decoded {
    decode::<T>(bytes).map(drop)
}

fn finite(values: &[f64], what: &str) {
    assert!(values.iter().all(|v| v.is_finite()), "{what}: {values:?}");
}

fn options_checked(options: &RunOptions, images: usize) {
    finite(&[options.max_error_rate], "max_error_rate");
    finite(
        &options.pca.variance.into_iter().collect::<Vec<_>>(),
        "variance",
    );
    // Validation refuses or accepts; it never panics, whatever the numbers.
    let _ = options.validate(1280, images);
}

fn manifest(bytes: &[u8]) -> Decoded {
    let manifest: Manifest = decode(bytes)?;
    options_checked(&manifest.options, manifest.total_images);
    if let Some(cost) = &manifest.splitter {
        finite(&[cost.duration_ms], "splitter.duration_ms");
    }
    let _ = manifest.header();
    let _ = validate_run_id(&manifest.run_id);
    let _ = pipeline::manifest::rfc3339_to_unix_ms(&manifest.created_at);
    for shard in &manifest.shards {
        for image in &shard.images {
            let _ = manifest.input.key_of(image);
        }
    }
    Ok(())
}

fn shard_list(bytes: &[u8]) -> Decoded {
    decode::<Vec<ImageRef>>(bytes).map(drop)
}

fn run_request(bytes: &[u8]) -> Decoded {
    let request: RunRequest = decode(bytes)?;
    finite(
        &request
            .variance
            .into_iter()
            .chain(request.max_error_rate)
            .collect::<Vec<_>>(),
        "variance, max_error_rate",
    );
    let options = request.options(&RunOptions::default());
    options_checked(&options, 100);
    // The ceilings refuse or accept, whatever the numbers (a shard count or size at the
    // integers' ends included).
    for limits in [RequestLimits::stack_defaults(), RequestLimits::local()] {
        let _ = limits.check_options(&options);
        let _ = limits.check_shards(usize::MAX, &options);
        let _ = limits.check_shards(0, &options);
        if let Ok(prefix) = pipeline::batch::splitter::normalize_prefix(&request.input_prefix) {
            let _ = limits.check_prefix(&prefix);
        }
    }
    let _ = pipeline::batch::splitter::normalize_prefix(&request.input_prefix);
    if let Some(id) = &request.run_id {
        let _ = validate_run_id(id);
    }
    Ok(())
}

fn done_marker(bytes: &[u8]) -> Decoded {
    let marker: DoneMarker = decode(bytes)?;
    let t = &marker.timings;
    finite(
        &[
            t.fetch_s,
            t.decode_s,
            t.resize_s,
            t.infer_s,
            t.write_s,
            t.wall_s,
            t.fetch_wait_s,
            marker.cost.duration_ms,
        ],
        "timings",
    );
    let mut sum = marker.timings;
    sum.add(&marker.timings);
    // What the reducer does with the checksums: compare them to its own (any string).
    let errors = serde_json::to_vec(&marker.error_list).expect("an error list encodes");
    let _ = marker.errors_sha256.as_deref() == Some(sha256_hex(&errors).as_str());
    let _ = marker.stats_sha256.as_deref().map(str::len);
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    pipeline::batch::featurizer::sha256_hex(bytes)
}

fn model_health(bytes: &[u8]) -> Decoded {
    let health: ModelHealth = decode(bytes)?;
    let _ = (health.message(), health.stuck());
    Ok(())
}

fn delta(bytes: &[u8]) -> Decoded {
    let delta: Delta = decode(bytes)?;
    let _ = delta_time_ms(&delta.id);
    for entry in &delta.entries {
        let _ = (entry.path(), entry.etag());
    }
    Ok(())
}

fn refit_summary(bytes: &[u8]) -> Decoded {
    let s: RefitSummary = decode(bytes)?;
    finite(
        &[
            s.cumulative_explained_variance,
            s.resolve_s,
            s.fit_s,
            s.publish_s,
            s.total_s,
        ],
        "summary",
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The runner.

fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(name)
}

/// The corpus of a decoder: (file name, bytes), sorted.
fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(name);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a corpus entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("a corpus file"))
        })
        .collect();
    files.sort();
    assert!(
        files.iter().any(|(n, _)| n.starts_with("ok-")),
        "{}: no valid seed",
        dir.display()
    );
    files
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How an input is shown in a failure: text when it is, else hex; cut if long.
fn show(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(4096)];
    let more = if bytes.len() > shown.len() {
        format!(" ... ({} bytes in all)", bytes.len())
    } else {
        String::new()
    };
    match std::str::from_utf8(shown) {
        Ok(text) => format!("{text:?}{more}"),
        Err(_) => {
            let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
            format!("hex {hex}{more}")
        }
    }
}

/// Runs one decoder on one input, timed; a panic is caught by proptest (a failure).
fn check(target: &Target, bytes: &[u8]) -> Result<Decoded, TestCaseError> {
    let start = Instant::now();
    let decoded = (target.decode)(bytes);
    let took = start.elapsed();
    prop_assert!(
        took < CASE_TIME_LIMIT,
        "{}: {took:?} for {} bytes",
        target.name,
        bytes.len()
    );
    Ok(decoded)
}

/// Fuzzes one decoder: the corpus as named, then arbitrary bytes and mutated seeds.
fn fuzz(name: &str) {
    let target = TARGETS
        .iter()
        .find(|t| t.name == name)
        .expect("a known target");
    let seeds = corpus(name);
    for (file, bytes) in &seeds {
        let decoded = check(target, bytes).unwrap_or_else(|e| panic!("{name}/{file}: {e}"));
        if file.starts_with("ok-") {
            assert!(decoded.is_ok(), "{name}/{file} is refused: {decoded:?}");
        } else if file.starts_with("err-") {
            assert!(decoded.is_err(), "{name}/{file} is accepted");
        }
    }
    let cases = env_or("FUZZ_CASES", DEFAULT_CASES);
    let seed = env_or("FUZZ_SEED", DEFAULT_SEED);
    let (accepted, refused) = run(target, seeds, cases, seed).unwrap_or_else(|e| panic!("{e}"));
    println!("{name}: {cases} cases (seed {seed}), {accepted} accepted, {refused} refused");
    assert_eq!(accepted + refused, cases as usize);
    // The mutations reach past the parser (some inputs decode) and hit its checks.
    assert!(
        accepted * 50 >= cases as usize,
        "{name}: only {accepted} of {cases} decoded"
    );
    assert!(
        refused * 50 >= cases as usize,
        "{name}: only {refused} of {cases} refused"
    );
}

/// Runs `cases` inputs through a decoder: (accepted, refused), or the failure with its
/// minimal input (a panic, a broken property, or a case over the time limit).
fn run(
    target: &Target,
    seeds: Vec<(String, Vec<u8>)>,
    cases: u32,
    seed: u64,
) -> Result<(usize, usize), String> {
    // Valid documents are the seeds three times out of four: edits of them reach furthest.
    let valid: Vec<Vec<u8>> = seeds
        .iter()
        .filter(|(file, _)| file.starts_with("ok-"))
        .map(|(_, b)| b.clone())
        .collect();
    let every: Vec<Vec<u8>> = seeds.into_iter().map(|(_, b)| b).collect();
    let binary = target.binary;
    let edits = move || proptest::collection::vec(mutation(binary), 1..4);
    let inputs = prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..512),
        1 => (any::<Pick>(), edits()).prop_map(move |(seed, mutations)| {
            mutate(&every[pick(seed, every.len())], &mutations, binary)
        }),
        3 => (any::<Pick>(), edits()).prop_map(move |(seed, mutations)| {
            mutate(&valid[pick(seed, valid.len())], &mutations, binary)
        }),
    ];
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    };
    let accepted = AtomicUsize::new(0);
    let refused = AtomicUsize::new(0);
    let mut runner = TestRunner::new(config);
    let result = runner.run(&inputs, |bytes| {
        let outcome = if check(target, &bytes)?.is_ok() {
            &accepted
        } else {
            &refused
        };
        outcome.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    let name = target.name;
    match result {
        Ok(()) => Ok((accepted.into_inner(), refused.into_inner())),
        Err(TestError::Fail(reason, bytes)) => Err(format!(
            "decoder {name}: {reason}\nminimal input ({} bytes): {}",
            bytes.len(),
            show(&bytes)
        )),
        Err(TestError::Abort(reason)) => Err(format!("decoder {name}: aborted: {reason}")),
    }
}

#[test]
fn fuzz_shard_statistics() {
    fuzz("stats");
}

#[test]
fn fuzz_running_sums() {
    fuzz("running_sums");
}

#[test]
fn fuzz_manifest() {
    fuzz("manifest");
}

#[test]
fn fuzz_shard_list() {
    fuzz("shard_list");
}

#[test]
fn fuzz_shard_message() {
    fuzz("shard_message");
}

#[test]
fn fuzz_reduce_message() {
    fuzz("reduce_message");
}

#[test]
fn fuzz_run_request() {
    fuzz("run_request");
}

#[test]
fn fuzz_done_marker() {
    fuzz("done_marker");
}

#[test]
fn fuzz_barrier_node() {
    fuzz("barrier_node");
}

#[test]
fn fuzz_model_health() {
    fuzz("model_health");
}

#[test]
fn fuzz_collection_delta() {
    fuzz("delta");
}

#[test]
fn fuzz_collection_pointer() {
    fuzz("current_pointer");
}

#[test]
fn fuzz_collection_index() {
    fuzz("collection_index");
}

#[test]
fn fuzz_collection_summary() {
    fuzz("refit_summary");
}

#[test]
fn fuzz_refit_message() {
    fuzz("refit_message");
}

#[test]
fn fuzz_refit_status() {
    fuzz("refit_start");
    fuzz("refit_failure");
}

/// Every corpus folder is fuzzed, and every decoder has a corpus.
#[test]
fn every_corpus_folder_is_a_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut folders: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            e.file_type()
                .unwrap()
                .is_dir()
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    folders.sort();
    let mut targets: Vec<String> = TARGETS.iter().map(|t| t.name.to_string()).collect();
    targets.sort();
    assert_eq!(folders, targets);
}

/// The harness itself: a decoder that panics on a NaN word is caught, and its input is
/// shrunk to one that shows it.
#[test]
fn a_panicking_decoder_is_caught_with_its_input() {
    fn fragile(bytes: &[u8]) -> Decoded {
        if bytes
            .chunks_exact(8)
            .any(|w| f64::from_le_bytes(w.try_into().unwrap()).is_nan())
        {
            panic!("fragile decoder met a NaN");
        }
        Err("refused".into())
    }
    let target = Target {
        name: "fragile",
        binary: true,
        decode: fragile,
    };
    let error = run(&target, corpus("stats"), 256, DEFAULT_SEED).unwrap_err();
    assert!(error.contains("fragile decoder met a NaN"), "{error}");
    assert!(error.contains("minimal input"), "{error}");
}

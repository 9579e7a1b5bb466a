//! What a run costs on AWS, every line of it: Lambda duration (including the time a
//! featurizer waits for its S3 GETs, which is billed like compute), Lambda requests, S3 GET
//! and PUT/LIST requests, SQS requests, and the storage of the run's own files. Pure
//! functions of a run's shape and measured durations; the cost section of docs/cost.md is computed
//! with them (and `readme_cost_table` below keeps it so).
//!
//! The request counts follow what the handlers call (one shard per message, a warm
//! container re-reading the manifest counted anyway, first deliveries only):
//!
//! | | S3 GET/HEAD | S3 PUT/LIST | SQS |
//! |---|---|---|---|
//! | splitter | request | LIST ⌈N/1000⌉, one image list per shard, manifest, request result | ⌈S/10⌉ SendMessageBatch |
//! | featurizer, per shard | manifest header, its shard's image list, done marker, its images | attempt's part, statistics and errors (staging), done marker (the commit), published part, LIST done/ | receive, delete |
//! | barrier (once) | | claim | send reduce |
//! | reducer | HEAD `_SUCCESS`, manifest; per shard: image list, done marker, errors, statistics, part (checked, then projected), a lock check before each write (shards + 5) | lock, errors.json, `Results/_SUCCESS`, model, summary, `_SUCCESS`, LIST staging/; per shard: PCA part (DELETEs of staging are free) | receive, delete |

use serde::{Deserialize, Serialize};

/// The Lambda architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arch {
    /// Graviton.
    Arm64,
    /// x86-64.
    X86_64,
}

/// On-demand prices (USD), us-east-1, as published by AWS (Lambda, S3 Standard, SQS
/// standard queues; free tiers ignored).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prices {
    /// Lambda duration per GB-second.
    pub lambda_gb_second: f64,
    /// Lambda per invocation.
    pub lambda_request: f64,
    /// S3 GET, HEAD (and other reads) per request.
    pub s3_get: f64,
    /// S3 PUT, COPY, POST, LIST per request.
    pub s3_put: f64,
    /// SQS per request (a batch of up to 10 messages is one request).
    pub sqs_request: f64,
    /// S3 Standard storage per GB-month.
    pub s3_gb_month: f64,
}

impl Prices {
    /// us-east-1 prices for `arch`.
    pub fn us_east_1(arch: Arch) -> Self {
        Self {
            lambda_gb_second: match arch {
                Arch::Arm64 => 0.000_013_333_4,
                Arch::X86_64 => 0.000_016_666_7,
            },
            lambda_request: 0.20 / 1e6,
            s3_get: 0.0004 / 1000.0,
            s3_put: 0.005 / 1000.0,
            sqs_request: 0.40 / 1e6,
            s3_gb_month: 0.023,
        }
    }
}

/// A run: its size and the measured (or estimated) billed durations of its invocations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RunShape {
    /// Images.
    pub images: u64,
    /// Shards (= shard messages = featurizer invocations with ShardBatchSize 1).
    pub shards: u64,
    /// Billed seconds of one featurizer invocation: fetch (the CPU waits, the GB-seconds run)
    /// + compute + writes.
    pub featurizer_s_per_shard: f64,
    /// Featurizer memory (MB).
    pub featurizer_mb: u64,
    /// Billed seconds of the splitter.
    pub splitter_s: f64,
    /// Splitter memory (MB).
    pub splitter_mb: u64,
    /// Billed seconds of the reducer.
    pub reducer_s: f64,
    /// Reducer memory (MB).
    pub reducer_mb: u64,
    /// Bytes the run stores besides its inputs (statistics, parts, reports).
    pub stored_bytes: u64,
}

/// Requests a run makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requests {
    /// Lambda invocations.
    pub lambda: u64,
    /// S3 GET and HEAD.
    pub s3_get: u64,
    /// S3 PUT and LIST.
    pub s3_put: u64,
    /// SQS requests (sends, the event-source mapping's receives and deletes).
    pub sqs: u64,
}

/// The requests of a run of `images` in `shards` (see the module's table).
pub fn requests(images: u64, shards: u64) -> Requests {
    let list_pages = |keys: u64| keys.div_ceil(1000).max(1);
    let splitter_get = 1;
    let splitter_put = list_pages(images) + 2 + shards;
    let splitter_sqs = shards.div_ceil(10);
    let featurizer_get = 3 * shards + images;
    let featurizer_put = shards * (5 + list_pages(shards)) + 1;
    let featurizer_sqs = 2 * shards + 1;
    let reducer_get = 2 + 6 * shards + (shards + 5);
    let reducer_put = 6 + shards + list_pages(3 * shards);
    let reducer_sqs = 2;
    Requests {
        lambda: 1 + shards + 1,
        s3_get: splitter_get + featurizer_get + reducer_get,
        s3_put: splitter_put + featurizer_put + reducer_put,
        sqs: splitter_sqs + featurizer_sqs + reducer_sqs,
    }
}

/// A run's cost, line by line (USD).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Breakdown {
    /// Featurizer GB-seconds.
    pub featurizer_gb_s: f64,
    /// Featurizer duration.
    pub featurizer: f64,
    /// Splitter and reducer duration.
    pub splitter_and_reducer: f64,
    /// Lambda invocations.
    pub lambda_requests: f64,
    /// S3 GET/HEAD.
    pub s3_get: f64,
    /// S3 PUT/LIST.
    pub s3_put: f64,
    /// SQS.
    pub sqs: f64,
    /// One month of the run's own files.
    pub storage_month: f64,
    /// Everything but the storage.
    pub total: f64,
    /// `total` per 1,000 images.
    pub per_1000_images: f64,
}

fn gb_seconds(seconds: f64, mb: u64) -> f64 {
    // Lambda bills duration rounded up to the millisecond.
    (seconds * 1000.0).ceil() / 1000.0 * mb as f64 / 1024.0
}

/// The cost of a run.
pub fn breakdown(run: &RunShape, prices: &Prices) -> Breakdown {
    let r = requests(run.images, run.shards);
    let featurizer_gb_s =
        run.shards as f64 * gb_seconds(run.featurizer_s_per_shard, run.featurizer_mb);
    let featurizer = featurizer_gb_s * prices.lambda_gb_second;
    let splitter_and_reducer = (gb_seconds(run.splitter_s, run.splitter_mb)
        + gb_seconds(run.reducer_s, run.reducer_mb))
        * prices.lambda_gb_second;
    let lambda_requests = r.lambda as f64 * prices.lambda_request;
    let s3_get = r.s3_get as f64 * prices.s3_get;
    let s3_put = r.s3_put as f64 * prices.s3_put;
    let sqs = r.sqs as f64 * prices.sqs_request;
    let total = featurizer + splitter_and_reducer + lambda_requests + s3_get + s3_put + sqs;
    Breakdown {
        featurizer_gb_s,
        featurizer,
        splitter_and_reducer,
        lambda_requests,
        s3_get,
        s3_put,
        sqs,
        storage_month: run.stored_bytes as f64 / 1e9 * prices.s3_gb_month,
        total,
        per_1000_images: if run.images == 0 {
            0.0
        } else {
            total * 1000.0 / run.images as f64
        },
    }
}

/// SQS requests per month of an event-source mapping's long polling while its queue is idle:
/// Lambda keeps `pollers` (5 at least) 20-second long polls open.
pub fn idle_polling_requests_per_month(pollers: u64) -> u64 {
    pollers * 30 * 24 * 3600 / 20
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counts_follow_the_handlers() {
        // 6 images in 3 shards: splitter 1 GET, 1 LIST + 3 shard lists + 2 PUT, 1 send
        // batch; featurizer 3 x (manifest header + shard list + done marker) + 6 images,
        // 3 x (5 PUT + 1 LIST) + 1, 3 x 2 + 1 SQS; reducer 2 + 3 x 6 + (3 + 5) GET,
        // 6 + 3 PUT + 1 LIST, 2 SQS. (`featurize simulate` counts the same per stage.)
        assert_eq!(
            requests(6, 3),
            Requests {
                lambda: 5,
                s3_get: 1 + 15 + 28,
                s3_put: 6 + 19 + 10,
                sqs: 1 + 7 + 2,
            }
        );
        // Listing pages: 1,000 keys each.
        assert_eq!(requests(2001, 1).s3_put - requests(1000, 1).s3_put, 2);
    }

    #[test]
    fn breakdown_adds_every_line() {
        let run = RunShape {
            images: 1000,
            shards: 4,
            featurizer_s_per_shard: 2.0,
            featurizer_mb: 1024,
            splitter_s: 0.5,
            splitter_mb: 1024,
            reducer_s: 1.5,
            reducer_mb: 1024,
            stored_bytes: 1_000_000_000,
        };
        let p = Prices::us_east_1(Arch::X86_64);
        let b = breakdown(&run, &p);
        assert!((b.featurizer_gb_s - 8.0).abs() < 1e-12);
        assert!((b.featurizer - 8.0 * 0.000_016_666_7).abs() < 1e-15);
        assert!((b.splitter_and_reducer - 2.0 * 0.000_016_666_7).abs() < 1e-15);
        let r = requests(1000, 4);
        let sum = b.featurizer
            + b.splitter_and_reducer
            + r.lambda as f64 * 0.2e-6
            + r.s3_get as f64 * 0.4e-6
            + r.s3_put as f64 * 5e-6
            + r.sqs as f64 * 0.4e-6;
        assert!((b.total - sum).abs() < 1e-15);
        assert!((b.per_1000_images - b.total).abs() < 1e-15);
        assert!((b.storage_month - 0.023).abs() < 1e-12);
        let arm = breakdown(&run, &Prices::us_east_1(Arch::Arm64));
        assert!(arm.featurizer < b.featurizer);
        assert_eq!(idle_polling_requests_per_month(5), 648_000);
    }

    /// The cost table of docs/cost.md: the Fruits-360 test set in 6 shards of up
    /// to 4,096, with the per-shard, splitter and reducer durations docs/cost.md derives.
    #[test]
    fn readme_cost_table() {
        let run = RunShape {
            images: 20_622,
            shards: 6,
            featurizer_s_per_shard: 17.3,
            featurizer_mb: 5308,
            splitter_s: 2.5,
            splitter_mb: 512,
            reducer_s: 5.0,
            reducer_mb: 4096,
            // After the run: the features and PCA parts (staging is deleted on success).
            stored_bytes: 109_350_000,
        };
        assert_eq!(
            requests(run.images, run.shards),
            Requests {
                lambda: 8,
                s3_get: 20_690,
                s3_put: 79,
                sqs: 16,
            }
        );
        let close = |got: f64, want: f64, what: &str| {
            assert!(
                (got - want).abs() <= 0.005 * want,
                "{what}: {got} (docs/cost.md says {want})"
            )
        };
        let x86 = breakdown(&run, &Prices::us_east_1(Arch::X86_64));
        let arm = breakdown(&run, &Prices::us_east_1(Arch::Arm64));
        close(x86.featurizer_gb_s, 538.1, "featurizer GB-s");
        close(x86.featurizer, 0.008968, "x86 featurizer");
        close(arm.featurizer, 0.007175, "arm64 featurizer");
        close(x86.splitter_and_reducer, 0.000354, "x86 splitter + reducer");
        close(
            arm.splitter_and_reducer,
            0.000283,
            "arm64 splitter + reducer",
        );
        close(x86.s3_get, 0.008276, "S3 GET");
        close(x86.s3_put, 0.000395, "S3 PUT");
        close(x86.total, 0.01800, "x86 total");
        close(arm.total, 0.01614, "arm64 total");
        close(x86.per_1000_images, 0.000873, "x86 per 1000");
        close(arm.per_1000_images, 0.000783, "arm64 per 1000");
        close(x86.storage_month, 0.00252, "storage");
    }
}

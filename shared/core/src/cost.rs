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

/// An AWS region whose prices the cost model knows. The stack deploys to one region
/// (samconfig.toml's `region`, Paris by default) and every piece of its data stays there.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Region {
    /// Europe (Paris), samconfig.toml's default.
    #[default]
    EuWest3,
    /// Europe (Frankfurt).
    EuCentral1,
    /// US East (N. Virginia).
    UsEast1,
}

impl Region {
    /// Every region the cost model knows, the default first.
    pub const ALL: [Region; 3] = [Region::EuWest3, Region::EuCentral1, Region::UsEast1];

    /// The region's code, as AWS writes it (`eu-west-3`).
    pub fn code(self) -> &'static str {
        match self {
            Region::EuWest3 => "eu-west-3",
            Region::EuCentral1 => "eu-central-1",
            Region::UsEast1 => "us-east-1",
        }
    }

    /// The region of a code (`eu-west-3`); `None` for a region the cost model has no prices for.
    pub fn parse(code: &str) -> Option<Region> {
        Region::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl std::fmt::Display for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl std::str::FromStr for Region {
    type Err = String;

    fn from_str(code: &str) -> Result<Self, Self::Err> {
        Region::parse(code).ok_or_else(|| {
            let known: Vec<&str> = Region::ALL.iter().map(|r| r.code()).collect();
            format!(
                "no prices for region {code:?} (known: {})",
                known.join(", ")
            )
        })
    }
}

/// On-demand prices (USD) of one region, as published by AWS (Lambda, S3 Standard, SQS
/// standard queues; first pricing tier, free tiers ignored).
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
    /// The prices of `region` for `arch`. Lambda's duration and request prices are the same
    /// in the three regions (x86_64 $0.0000166667 and arm64 $0.0000133334 per GB-s, $0.20 per
    /// million requests), and so is SQS ($0.40 per million); S3 costs more in Europe
    /// (docs/cost.md has the table and its date).
    pub fn for_region(region: Region, arch: Arch) -> Self {
        let lambda_gb_second = match arch {
            Arch::Arm64 => 0.000_013_333_4,
            Arch::X86_64 => 0.000_016_666_7,
        };
        // (GET per 1,000, PUT/LIST per 1,000, storage per GB-month)
        let (get_1000, put_1000, gb_month) = match region {
            Region::EuWest3 => (0.00042, 0.0053, 0.024),
            Region::EuCentral1 => (0.00043, 0.0054, 0.0245),
            Region::UsEast1 => (0.0004, 0.005, 0.023),
        };
        Self {
            lambda_gb_second,
            lambda_request: 0.20 / 1e6,
            s3_get: get_1000 / 1000.0,
            s3_put: put_1000 / 1000.0,
            sqs_request: 0.40 / 1e6,
            s3_gb_month: gb_month,
        }
    }

    /// us-east-1 prices for `arch` (`for_region(Region::UsEast1, arch)`).
    pub fn us_east_1(arch: Arch) -> Self {
        Self::for_region(Region::UsEast1, arch)
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

    /// The cost table of docs/cost.md: the Fruits-360 test set in 6 shards of up to 4,096, at
    /// the default 3,008 MB, with the per-shard (from the measured 12.7 ms of one core per
    /// image, AVX2), splitter and reducer durations docs/cost.md derives; arm64 with tract's
    /// 20.5 ms measured on the same x86 machine (Graviton not measured).
    #[test]
    fn readme_cost_table() {
        let x86_run = RunShape {
            images: 20_622,
            shards: 6,
            featurizer_s_per_shard: 26.2,
            featurizer_mb: 3008,
            splitter_s: 2.5,
            splitter_mb: 512,
            reducer_s: 5.0,
            reducer_mb: 3008,
            // After the run: the features and PCA parts (staging is deleted on success).
            stored_bytes: 109_350_000,
        };
        let arm_run = RunShape {
            featurizer_s_per_shard: 41.9,
            ..x86_run
        };
        assert_eq!(
            requests(x86_run.images, x86_run.shards),
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
        let paris = |arch| Prices::for_region(Region::EuWest3, arch);
        let x86 = breakdown(&x86_run, &paris(Arch::X86_64));
        let arm = breakdown(&arm_run, &paris(Arch::Arm64));
        close(x86.featurizer_gb_s, 461.8, "x86 featurizer GB-s");
        close(arm.featurizer_gb_s, 738.5, "arm64 featurizer GB-s");
        close(x86.featurizer, 0.007696, "x86 featurizer");
        close(arm.featurizer, 0.009847, "arm64 featurizer");
        close(x86.splitter_and_reducer, 0.000266, "x86 splitter + reducer");
        close(
            arm.splitter_and_reducer,
            0.000213,
            "arm64 splitter + reducer",
        );
        close(x86.s3_get, 0.008690, "S3 GET");
        close(x86.s3_put, 0.000419, "S3 PUT");
        close(x86.total, 0.01708, "x86 total");
        close(arm.total, 0.01918, "arm64 total");
        close(x86.per_1000_images, 0.000828, "x86 per 1000");
        close(arm.per_1000_images, 0.000930, "arm64 per 1000");
        close(x86.storage_month, 0.00262, "storage");
        // The other regions' totals (same durations).
        for (region, x86_total, arm_total) in [
            (Region::EuCentral1, 0.01729, 0.01939),
            (Region::UsEast1, 0.01664, 0.01874),
        ] {
            let x = breakdown(&x86_run, &Prices::for_region(region, Arch::X86_64));
            let a = breakdown(&arm_run, &Prices::for_region(region, Arch::Arm64));
            close(x.total, x86_total, region.code());
            close(a.total, arm_total, region.code());
        }
        // x86_64 is the cheaper architecture at the measured speeds.
        assert!(x86.total < arm.total);
    }

    #[test]
    fn regions_parse_and_price() {
        for region in Region::ALL {
            assert_eq!(region.code().parse::<Region>(), Ok(region));
            assert_eq!(region.to_string(), region.code());
        }
        assert_eq!(Region::default(), Region::EuWest3);
        assert!("ap-south-1"
            .parse::<Region>()
            .unwrap_err()
            .contains("eu-west-3"));
        // Lambda and SQS prices are the same in the three regions; S3 costs more in Europe.
        let us = Prices::us_east_1(Arch::X86_64);
        for region in [Region::EuWest3, Region::EuCentral1] {
            let eu = Prices::for_region(region, Arch::X86_64);
            assert_eq!(eu.lambda_gb_second, us.lambda_gb_second);
            assert_eq!(eu.sqs_request, us.sqs_request);
            assert!(eu.s3_get > us.s3_get && eu.s3_put > us.s3_put);
            assert!(eu.s3_gb_month > us.s3_gb_month);
        }
        assert_eq!(
            Prices::us_east_1(Arch::Arm64),
            Prices::for_region(Region::UsEast1, Arch::Arm64)
        );
    }
}

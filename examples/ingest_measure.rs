//! Measurements of continuous ingestion for the README (prints numbers; not a test):
//!
//! - `refit`: refit time of a collection as it grows (synthetic 1280-d features, a local
//!   store): the first refit of n images, then a refit after changing 10 of them; the fit
//!   (statistics update + eigendecomposition) and the publish (projecting and writing every
//!   part) separately.
//! - `burst`: the time from uploading a burst of distinct Fruits-360 images into the inbox of
//!   a moto bucket (real S3 → SQS notifications) to the published view, with the featurizer
//!   and reducer handlers pumped as Lambda's event-source mappings would (quiet time 0).
//!
//! ```sh
//! cargo run --release --example ingest_measure -- refit 1000 10000
//! MOTO_ENDPOINT=http://127.0.0.1:5000 cargo run --release --example ingest_measure -- burst 500
//! ```

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pipeline::batch::inference::Engine;
use pipeline::batch::listing::ImageFilter;
use pipeline::continuous::collection::{refit, RefitOptions, RefitOutcome};
use pipeline::continuous::ingest::{IngestSettings, Ingestor};
use pipeline::ports::queue::InProcessQueue;
use pipeline::ports::store::{Bytes, FsStore, ObjectStore};

fn settings(inbox: &str, quiet_s: u32) -> Result<IngestSettings> {
    Ok(IngestSettings {
        inbox: inbox.into(),
        filter: ImageFilter::new("*.{jpg,jpeg,png}")?,
        max_pixels: 50_000_000,
        threads: 0,
        fetch_concurrency: 32,
        quiet_s,
    })
}

fn published(outcome: RefitOutcome) -> Result<Box<pipeline::continuous::collection::RefitSummary>> {
    match outcome {
        RefitOutcome::Published(s) => Ok(s),
        other => bail!("expected a published refit, got {other:?}"),
    }
}

async fn refit_scaling(sizes: &[usize]) -> Result<()> {
    println!("| images | first refit: fit s | publish s | after 10 changed: fit s | publish s | total s |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for &n in sizes {
        let dir = tempfile::tempdir()?;
        let input = FsStore::new(dir.path().join("in"));
        let output = FsStore::new(dir.path().join("out"));
        let queue = InProcessQueue::new();
        let ingestor = Ingestor::new(
            input.clone(),
            output.clone(),
            &queue,
            Engine::Synthetic { dim: 1280 },
            settings("", 0)?,
        );
        let keys: Vec<String> = (0..n)
            .map(|i| format!("c/label-{}/img-{i:06}.jpg", i % 10))
            .collect();
        for key in &keys {
            // Distinct bytes per key (identical bytes in a batch are featurized once).
            input
                .put(key, Bytes::from(key.clone().into_bytes()))
                .await?;
        }
        for chunk in keys.chunks(1000) {
            ingestor.ingest(chunk).await?;
        }
        let options = RefitOptions::default();
        let first = published(refit(&output, &input, "", "c", &options).await?)?;
        let changed: Vec<String> = keys.iter().step_by(n / 10).take(10).cloned().collect();
        for key in &changed {
            input
                .put(key, Bytes::from(format!("{key} v2").into_bytes()))
                .await?;
        }
        ingestor.ingest(&changed).await?;
        let second = published(refit(&output, &input, "", "c", &options).await?)?;
        assert_eq!(second.replaced, 10);
        println!(
            "| {n} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            first.fit_s, first.publish_s, second.fit_s, second.publish_s, second.total_s
        );
    }
    Ok(())
}

/// A moto bucket whose inbox notifies an ingest queue (as the stack wires it), and a refit
/// queue: (S3, SQS, bucket, ingest queue URL, refit queue URL).
async fn moto_inbox() -> Result<(
    aws_sdk_s3::Client,
    aws_sdk_sqs::Client,
    String,
    String,
    String,
)> {
    use aws_sdk_s3::types::{
        Event, FilterRule, FilterRuleName, NotificationConfiguration,
        NotificationConfigurationFilter, QueueConfiguration, S3KeyFilter,
    };
    let endpoint = std::env::var("MOTO_ENDPOINT").context("set MOTO_ENDPOINT (a moto server)")?;
    let config = aws::sdk::config_loader()
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "moto",
        ))
        .load()
        .await;
    let s3 = aws::sdk::s3_client(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    let name = format!("measure-{}", std::process::id());
    s3.create_bucket().bucket(&name).send().await?;
    let ingest_url = sqs
        .create_queue()
        .queue_name(format!("{name}-ingest"))
        .send()
        .await?
        .queue_url()
        .unwrap()
        .to_string();
    let refit_url = sqs
        .create_queue()
        .queue_name(format!("{name}-refit"))
        .send()
        .await?
        .queue_url()
        .unwrap()
        .to_string();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&ingest_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await?
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    let filter = NotificationConfigurationFilter::builder()
        .key(
            S3KeyFilter::builder()
                .filter_rules(
                    FilterRule::builder()
                        .name(FilterRuleName::Prefix)
                        .value("inbox/")
                        .build(),
                )
                .build(),
        )
        .build();
    let qc = QueueConfiguration::builder()
        .queue_arn(arn)
        .events(Event::from("s3:ObjectCreated:*"))
        .events(Event::from("s3:ObjectRemoved:*"))
        .filter(filter)
        .build()?;
    s3.put_bucket_notification_configuration()
        .bucket(&name)
        .notification_configuration(
            NotificationConfiguration::builder()
                .queue_configurations(qc)
                .build(),
        )
        .send()
        .await?;
    // The test event S3 sends on configuration.
    drain(&sqs, &ingest_url).await?;

    Ok((s3, sqs, name, ingest_url, refit_url))
}

/// Up to `n` distinct Fruits-360 images, 25 per class, class by class.
fn fruit_files(n: usize) -> Result<Vec<std::path::PathBuf>> {
    let root = std::path::Path::new("../shared/data/fruits-360/Test");
    let mut files = Vec::new();
    let mut classes: Vec<_> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    classes.sort();
    'outer: for class in classes {
        let mut images: Vec<_> = std::fs::read_dir(&class)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        images.sort();
        for image in images.into_iter().take(25) {
            files.push(image);
            if files.len() == n {
                break 'outer;
            }
        }
    }
    Ok(files)
}

/// The featurizer's event-source mapping: batches of up to 100 records until the queue is
/// empty. Returns the number of batches.
async fn pump_ingest<I: ObjectStore, O: ObjectStore, Q: pipeline::ports::queue::Queue>(
    sqs: &aws_sdk_sqs::Client,
    ingest_url: &str,
    ingestor: &Ingestor<I, O, Q>,
) -> Result<usize> {
    let mut batches = 0;
    loop {
        let mut keys = Vec::new();
        let mut receipts = Vec::new();
        while receipts.len() < 100 {
            let got = sqs
                .receive_message()
                .queue_url(ingest_url)
                .max_number_of_messages(10)
                .send()
                .await?;
            let messages = got.messages();
            if messages.is_empty() {
                break;
            }
            for m in messages {
                if let Some(Ok(pipeline::continuous::ingest::IngestBody::S3(k))) =
                    pipeline::continuous::ingest::parse_ingest_body(m.body().unwrap_or(""))
                {
                    keys.extend(k);
                }
                receipts.push(m.receipt_handle().unwrap().to_string());
            }
        }
        if receipts.is_empty() {
            break;
        }
        ingestor.ingest(&keys).await?;
        batches += 1;
        for r in receipts {
            sqs.delete_message()
                .queue_url(ingest_url)
                .receipt_handle(r)
                .send()
                .await?;
        }
    }
    Ok(batches)
}

async fn burst(n: usize) -> Result<()> {
    let (s3, sqs, name, ingest_url, refit_url) = moto_inbox().await?;
    let store = aws::sdk::S3Store::new(s3.clone(), &name);
    let model_path = std::path::Path::new("../shared/models/mobilenet_v2_features.onnx");
    let model = engine::model::Model::load(model_path, engine::model::ModelSpec::mobilenet_v2())?;
    let ingestor = Ingestor::new(
        store.clone(),
        store.clone(),
        aws::sdk::SqsQueue::new(sqs.clone(), &refit_url),
        Engine::Model(model),
        settings("inbox/", 0)?,
    );
    let files = fruit_files(n)?;
    let started = Instant::now();
    use futures::stream::{self, StreamExt};
    let uploads: Vec<Result<()>> = stream::iter(files.iter().map(|path| {
        let store = store.clone();
        async move {
            let class = path
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string();
            let key = format!(
                "inbox/fruits/{class}/{}",
                path.file_name().unwrap().to_string_lossy()
            );
            store.put(&key, Bytes::from(std::fs::read(path)?)).await?;
            Ok(())
        }
    }))
    .buffer_unordered(32)
    .collect()
    .await;
    uploads.into_iter().collect::<Result<Vec<()>>>()?;
    let uploaded = started.elapsed();
    let batches = pump_ingest(&sqs, &ingest_url, &ingestor).await?;
    let ingested = started.elapsed();
    drain(&sqs, &refit_url).await?;
    let summary =
        published(refit(&store, &store, "inbox/", "fruits", &RefitOptions::default()).await?)?;
    let total = started.elapsed();
    println!("burst of {n} distinct images on moto ({batches} ingest invocations):");
    println!(
        "  uploaded after {:.1} s, all featurized after {:.1} s, view published after {:.1} s",
        uploaded.as_secs_f64(),
        ingested.as_secs_f64(),
        total.as_secs_f64()
    );
    println!(
        "  refit: {} rows, fit {:.2} s, publish {:.2} s",
        summary.rows, summary.fit_s, summary.publish_s
    );
    Ok(())
}

async fn drain(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<usize> {
    let mut n = 0;
    loop {
        let got = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await?;
        if got.messages().is_empty() {
            return Ok(n);
        }
        for m in got.messages() {
            n += 1;
            sqs.delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("refit") => {
            let sizes: Vec<usize> = args[1..]
                .iter()
                .map(|a| a.parse())
                .collect::<Result<_, _>>()?;
            refit_scaling(if sizes.is_empty() {
                &[1000, 10000]
            } else {
                &sizes
            })
            .await
        }
        Some("burst") => burst(args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(500)).await,
        _ => bail!("usage: ingest_measure refit [N...] | burst [N]"),
    }
}

//! The AWS SDK is opt-in (docs/architecture.md, "The AWS SDK is opt-in"): the CLI's default
//! build links none of it (the quick start's `featurize run` is local), its `aws` feature
//! and the four Lambdas do. Checked on `cargo tree`: dependency resolution only, no build.

use std::process::Command;

/// The crates of the AWS SDK (and its runtime) that the CLI's default build must not link.
const SDK_CRATES: &[&str] = &["aws-sdk-", "aws-config", "aws-smithy-", "aws-runtime"];

/// The packages of `cargo tree -p <package> -e normal <extra>`, one name per line.
fn normal_dependencies(package: &str, extra: &[&str]) -> Vec<String> {
    let output = Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "-p", package, "-e", "normal", "--prefix", "none"])
        .args(["--format", "{p}"])
        .args(extra)
        .output()
        .expect("running cargo tree");
    assert!(
        output.status.success(),
        "cargo tree -p {package} {extra:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("cargo tree prints UTF-8")
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn sdk_crates(dependencies: &[String]) -> Vec<&str> {
    let mut found: Vec<&str> = dependencies
        .iter()
        .filter(|d| SDK_CRATES.iter().any(|sdk| d.starts_with(sdk)))
        .map(String::as_str)
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

#[test]
fn the_cli_links_the_aws_sdk_only_with_its_aws_feature() {
    let default = normal_dependencies("featurize", &[]);
    // The tree is the CLI's, with the AWS layer (config, retries, telemetry, simulator).
    for krate in [
        "featurize",
        "featurize-aws",
        "featurize-core",
        "featurize-engine",
    ] {
        assert!(
            default.iter().any(|d| d == krate),
            "{krate} not in {default:?}"
        );
    }
    assert_eq!(
        sdk_crates(&default),
        Vec::<&str>::new(),
        "the CLI's default build links the AWS SDK"
    );
    let with_aws = normal_dependencies("featurize", &["--features", "aws"]);
    for krate in ["aws-sdk-s3", "aws-sdk-sqs", "aws-config"] {
        assert!(
            with_aws.iter().any(|d| d == krate),
            "`--features aws`: {krate} not in {:?}",
            sdk_crates(&with_aws)
        );
    }
}

#[test]
fn the_lambdas_link_the_aws_sdk() {
    for package in ["splitter", "featurizer", "reducer", "checker"] {
        let dependencies = normal_dependencies(package, &[]);
        for krate in ["aws-sdk-s3", "aws-sdk-sqs", "aws-config"] {
            assert!(
                dependencies.iter().any(|d| d == krate),
                "{package}: {krate} not in {:?}",
                sdk_crates(&dependencies)
            );
        }
    }
}

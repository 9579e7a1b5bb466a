//! Deploys anywhere on the first try, and every alarm reaches someone: the template's defaults
//! fit a new account, the data bucket does not block a retried create, the parameters refuse
//! what AWS would refuse later, every SQS mapping caps its concurrency (and
//! `infra/preflight.sh` checks the sum against the account), the alarm topic's key lets
//! CloudWatch publish, every alarm also says when it is OK, failed shards and ingest records
//! have a metric and an alarm, and samconfig.toml, the template, the build scripts and the
//! functions' `cargo lambda deploy` settings agree (region, architecture, model).

use std::path::Path;
use std::process::Command;

use super::*;

/// The largest memory a new account may give a function (Lambda's API does not report it).
const NEW_ACCOUNT_MAX_MB: f64 = 3008.0;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// samconfig.toml's `[default.global.parameters]`.
fn samconfig_global() -> toml::Table {
    let config: toml::Table = read("samconfig.toml")
        .parse()
        .expect("samconfig.toml parses");
    config["default"]["global"]["parameters"]
        .as_table()
        .expect("samconfig.toml has [default.global.parameters]")
        .clone()
}

/// `Name=Value` pairs of samconfig.toml's global `parameter_overrides`.
fn samconfig_overrides() -> BTreeMap<String, String> {
    samconfig_global()["parameter_overrides"]
        .as_str()
        .expect("parameter_overrides is one string")
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// Whether `value` matches a CloudFormation `AllowedPattern` (Java regex; Python's `re` reads
/// the same lookaheads and classes, and the Rust `regex` crate has no lookahead).
fn matches_pattern(pattern: &str, value: &str) -> bool {
    let out = Command::new("python3")
        .args([
            "-c",
            "import re, sys; sys.exit(0 if re.fullmatch(sys.argv[1], sys.argv[2]) else 1)",
            pattern,
            value,
        ])
        .output()
        .expect("python3");
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!(
            "pattern {pattern:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[test]
fn memory_defaults_fit_a_new_account_and_a_parameter_raises_them() {
    let t = template();
    for (role, id, f) in functions(t) {
        let memory = t.function_property(f, "MemorySize");
        let mb = number(t, memory);
        assert!(
            mb <= NEW_ACCOUNT_MAX_MB,
            "{id} ({role:?}): MemorySize defaults to {mb} MB; new accounts are capped at 3008 MB and \
             CreateFunction would fail"
        );
        if let Some(param) = ref_name(memory) {
            let max = number(t, &t["Parameters"][param]["MaxValue"]);
            assert!(max >= 10240.0, "{param}: MaxValue {max} cannot raise it");
        }
    }
    for param in ["FeaturizerMemory", "ReducerMemory"] {
        assert!(
            ref_name(
                &t["Resources"][param.replace("Memory", "Function").as_str()]["Properties"]
                    ["MemorySize"]
            ) == Some(param),
            "{param} sets its function's MemorySize"
        );
    }
}

#[test]
fn a_failed_first_create_leaves_no_bucket_behind_and_versions_expire() {
    let t = template();
    let (id, bucket) = t.of_type("AWS::S3::Bucket").next().expect("a bucket");
    assert_eq!(
        bucket["DeletionPolicy"].as_str(),
        Some("RetainExceptOnCreate"),
        "{id}: a failed first create must delete the bucket it made, or every retry fails with \
         'already exists'"
    );
    assert_eq!(
        bucket["UpdateReplacePolicy"].as_str(),
        Some("Retain"),
        "{id}"
    );
    let p = &bucket["Properties"];
    assert_eq!(
        p["VersioningConfiguration"]["Status"].as_str(),
        Some("Enabled")
    );
    let rules = p["LifecycleConfiguration"]["Rules"]
        .as_array()
        .expect("lifecycle rules");
    let noncurrent = rules
        .iter()
        .find(|r| !r["NoncurrentVersionExpiration"].is_null())
        .expect("a NoncurrentVersionExpiration rule");
    let days = &noncurrent["NoncurrentVersionExpiration"]["NoncurrentDays"];
    assert_eq!(ref_name(days), Some("NoncurrentVersionExpiryDays"));
    assert_eq!(number(t, days), 7.0);
    assert_eq!(noncurrent["Status"].as_str(), Some("Enabled"));
}

/// CloudWatch cannot use the AWS-managed `alias/aws/sns` key: the topic's key is the
/// template's own, and its policy lets `cloudwatch.amazonaws.com` encrypt for the topic, and
/// the account manage the key (no lock-out).
#[test]
fn the_alarm_topic_key_lets_cloudwatch_publish() {
    let t = template();
    let topics: Vec<(&str, &Value)> = t.of_type("AWS::SNS::Topic").collect();
    assert!(!topics.is_empty(), "no SNS topic");
    for (id, topic) in topics {
        let key = &topic["Properties"]["KmsMasterKeyId"];
        if key.is_null() {
            continue; // No SSE: nothing CloudWatch would need to use.
        }
        let key_id = ref_name(key)
            .or_else(|| getatt(key).map(|(k, _)| k))
            .unwrap_or_else(|| {
                panic!("{id}: KmsMasterKeyId {key:?} is not the template's own key (alias/aws/sns cannot be used by CloudWatch)")
            });
        let key = &t["Resources"][key_id];
        assert_eq!(key["Type"].as_str(), Some("AWS::KMS::Key"), "{key_id}");
        let mut found = Vec::new();
        statements(&key["Properties"]["KeyPolicy"], &mut found);
        let grants = |principal: &dyn Fn(&Value) -> bool, action: &str| {
            found.iter().any(|s| {
                s["Effect"].as_str() == Some("Allow")
                    && principal(&s["Principal"])
                    && items(&s["Action"]).contains(&action)
            })
        };
        let cloudwatch = |p: &Value| items(&p["Service"]).contains(&"cloudwatch.amazonaws.com");
        for action in ["kms:Decrypt", "kms:GenerateDataKey*"] {
            assert!(
                grants(&cloudwatch, action),
                "{key_id}: its key policy should allow cloudwatch.amazonaws.com {action}"
            );
        }
        let account = |p: &Value| {
            items(&p["AWS"])
                .iter()
                .any(|a| a.ends_with(":iam::${AWS::AccountId}:root"))
        };
        assert!(
            grants(&account, "kms:Put*") || grants(&account, "kms:PutKeyPolicy"),
            "{key_id}: the account must keep kms:PutKeyPolicy on its key (or it is locked out)"
        );
        assert_eq!(key["Properties"]["EnableKeyRotation"].as_bool(), Some(true));
    }
}

#[test]
fn every_alarm_notifies_on_alarm_and_on_ok() {
    let t = template();
    let mut count = 0;
    for (id, alarm) in t.of_type("AWS::CloudWatch::Alarm") {
        count += 1;
        for actions in ["AlarmActions", "OKActions"] {
            let list = alarm["Properties"][actions]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            assert!(
                list.iter().any(|a| ref_name(a) == Some("AlarmTopic")),
                "{id}: {actions} should be [!Ref AlarmTopic], got {list:?}"
            );
        }
    }
    assert!(count >= 18, "only {count} alarms");
}

/// A failed shard or ingest record is a partial batch failure, which Lambda counts as a
/// successful invocation: a log metric filter counts the featurizer's failure lines (the very
/// strings `aws::lambda` logs), and an alarm watches each metric.
#[test]
fn failed_shards_and_ingest_records_have_a_metric_and_an_alarm() {
    let t = template();
    let lambda_rs = read("shared/aws/src/lambda.rs");
    let (fid, featurizer) = function(t, Role::Featurizer);
    let log_group = ref_name(&featurizer["Properties"]["LoggingConfig"]["LogGroup"])
        .unwrap_or_else(|| panic!("{fid}: LoggingConfig.LogGroup: !Ref its log group"));
    for (metric, needles) in [
        (
            "FailedShards",
            &["shard message failed; it will be retried"][..],
        ),
        (
            "FailedIngestRecords",
            &["ingest batch processed", "failed_records"][..],
        ),
    ] {
        let (id, filter) = t
            .of_type("AWS::Logs::MetricFilter")
            .find(|(_, f)| {
                f["Properties"]["MetricTransformations"]
                    .as_array()
                    .is_some_and(|ts| ts.iter().any(|m| m["MetricName"].as_str() == Some(metric)))
            })
            .unwrap_or_else(|| panic!("no AWS::Logs::MetricFilter makes the metric {metric}"));
        let p = &filter["Properties"];
        assert_eq!(ref_name(&p["LogGroupName"]), Some(log_group), "{id}");
        let pattern = p["FilterPattern"].as_str().expect("FilterPattern");
        for needle in needles {
            assert!(
                pattern.contains(needle),
                "{id}: pattern {pattern:?} lacks {needle:?}"
            );
            assert!(
                lambda_rs.contains(needle),
                "{id} matches {needle:?}, which shared/aws/src/lambda.rs no longer logs"
            );
        }
        let transform = &p["MetricTransformations"][0];
        let namespace = text(&transform["MetricNamespace"]).expect("namespace");
        let alarm = t
            .of_type("AWS::CloudWatch::Alarm")
            .map(|(_, a)| &a["Properties"])
            .find(|a| {
                a["MetricName"].as_str() == Some(metric) && text(&a["Namespace"]) == Some(namespace)
            })
            .unwrap_or_else(|| panic!("no alarm on {namespace}/{metric}"));
        assert_eq!(number(t, &alarm["Threshold"]), 1.0, "{metric}");
        assert_eq!(
            alarm["ComparisonOperator"].as_str(),
            Some("GreaterThanOrEqualToThreshold")
        );
    }
    // The metrics are per stack (a metric filter cannot add a fixed dimension).
    let namespaces: Vec<&str> = t
        .of_type("AWS::Logs::MetricFilter")
        .filter_map(|(_, f)| text(&f["Properties"]["MetricTransformations"][0]["MetricNamespace"]))
        .collect();
    assert!(
        namespaces.iter().all(|n| n.contains("${AWS::StackName}")),
        "{namespaces:?}"
    );
}

/// Every SQS event-source mapping (the featurizer's two and the reducer's two) caps its
/// concurrency with a parameter within SQS's 2..=1000.
#[test]
fn every_sqs_mapping_caps_its_concurrency() {
    let t = template();
    let mut count = 0;
    for (id, mapping) in t.of_type("AWS::Lambda::EventSourceMapping") {
        count += 1;
        let max = &mapping["Properties"]["ScalingConfig"]["MaximumConcurrency"];
        let param = ref_name(max).unwrap_or_else(|| {
            panic!("{id}: ScalingConfig.MaximumConcurrency should be !Ref a parameter, got {max:?}")
        });
        let p = &t["Parameters"][param];
        let (min, default, top) = (
            number(t, &p["MinValue"]),
            number(t, &p["Default"]),
            number(t, &p["MaxValue"]),
        );
        assert!(
            min >= 2.0 && top <= 1000.0 && (min..=top).contains(&default),
            "{param}: SQS allows MaximumConcurrency 2..=1000 (MinValue {min}, Default {default}, MaxValue {top})"
        );
    }
    assert_eq!(
        count, 4,
        "the featurizer's and the reducer's two mappings each"
    );
}

/// Number parameters have bounds, string parameters a pattern or a list, and each default
/// satisfies its own constraints.
#[test]
fn every_parameter_is_constrained_and_its_default_fits() {
    let t = template();
    let params = t["Parameters"].as_object().expect("Parameters");
    let mut problems = Vec::new();
    for (name, p) in params {
        let name = name.as_str();
        match p["Type"].as_str() {
            Some("Number") if !p["AllowedValues"].is_null() => {
                let allowed: Vec<f64> = p["AllowedValues"]
                    .as_array()
                    .expect("AllowedValues is a list")
                    .iter()
                    .map(|v| number(t, v))
                    .collect();
                if !allowed.contains(&number(t, &p["Default"])) {
                    problems.push(format!("{name}: Default not in {allowed:?}"));
                }
            }
            Some("Number") => {
                if p["MinValue"].is_null() || p["MaxValue"].is_null() {
                    problems.push(format!("{name}: Number without MinValue and MaxValue"));
                    continue;
                }
                let (min, max) = (number(t, &p["MinValue"]), number(t, &p["MaxValue"]));
                if !p["Default"].is_null() {
                    let d = number(t, &p["Default"]);
                    if !(min..=max).contains(&d) {
                        problems.push(format!("{name}: Default {d} outside {min}..={max}"));
                    }
                }
            }
            Some("String") => {
                let allowed = items(&p["AllowedValues"]);
                let pattern = p["AllowedPattern"].as_str();
                let default = p["Default"].as_str();
                match (pattern, allowed.is_empty(), default) {
                    (None, true, _) => problems.push(format!(
                        "{name}: String without AllowedPattern or AllowedValues"
                    )),
                    (Some(re), _, Some(d)) if !matches_pattern(re, d) => {
                        problems.push(format!("{name}: Default {d:?} does not match {re:?}"))
                    }
                    (None, false, Some(d)) if !allowed.contains(&d) => {
                        problems.push(format!("{name}: Default {d:?} not in {allowed:?}"))
                    }
                    _ => {}
                }
            }
            Some("CommaDelimitedList") => {}
            other => problems.push(format!("{name}: unexpected Type {other:?}")),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The inbox must not lie under the pipeline's own prefixes (S3 refuses a notification
    // overlapping the splitter's runs/requests/, and the functions write the others).
    let inbox = t["Parameters"]["InboxPrefix"]["AllowedPattern"]
        .as_str()
        .expect("InboxPrefix AllowedPattern");
    for bad in [
        "runs/",
        "runs/requests/",
        "staging/",
        "Results/",
        "Results_PCA/",
        "collections/",
        "/inbox/",
        "inbox",
        "in*box/",
    ] {
        assert!(!matches_pattern(inbox, bad), "InboxPrefix accepts {bad:?}");
    }
    for good in ["inbox/", "uploads/fruits/", "run/", "results/"] {
        assert!(matches_pattern(inbox, good), "InboxPrefix refuses {good:?}");
    }
    let sha = t["Parameters"]["ModelSha256"]["AllowedPattern"]
        .as_str()
        .unwrap();
    assert!(!matches_pattern(sha, "F0558D"));
}

/// The value of a rule's condition or assertion for the given parameter values:
/// `Fn::Equals`, `Fn::Not`, `Fn::And`, `Fn::Or`, `Fn::Contains` over `Ref`s and literals.
fn rule_holds(v: &Value, values: &BTreeMap<&str, &str>) -> bool {
    let text = |x: &Value| -> String {
        match ref_name(x) {
            Some(p) => values
                .get(p)
                .map(|s| s.to_string())
                .unwrap_or_else(|| default_value(template(), x)),
            None => default_value(template(), x),
        }
    };
    let args = |f: &str| intrinsic(v, f).and_then(Value::as_array);
    if let Some(a) = args("Equals") {
        return text(&a[0]) == text(&a[1]);
    }
    if let Some(a) = args("Not") {
        return !rule_holds(&a[0], values);
    }
    if let Some(a) = args("And") {
        return a.iter().all(|x| rule_holds(x, values));
    }
    if let Some(a) = args("Or") {
        return a.iter().any(|x| rule_holds(x, values));
    }
    if let Some(a) = args("Contains") {
        let list: Vec<String> = a[0].as_array().expect("a list").iter().map(text).collect();
        return list.contains(&text(&a[1]));
    }
    panic!("unsupported rule function {v:?}")
}

/// Whether the template's Rules accept these parameter values (the others at their defaults).
fn rules_accept(values: &[(&str, &str)]) -> bool {
    let values: BTreeMap<&str, &str> = values.iter().copied().collect();
    let rules = template()["Rules"].as_object().expect("a Rules section");
    rules.values().all(|rule| {
        let applies = match &rule["RuleCondition"] {
            Value::Null => true,
            c => rule_holds(c, &values),
        };
        !applies
            || rule["Assertions"]
                .as_array()
                .expect("Assertions")
                .iter()
                .all(|a| rule_holds(&a["Assert"], &values))
    })
}

/// Lambda refuses an SQS mapping with a batch over 10 and no batching window: the template's
/// Rules refuse the parameters before anything is created.
#[test]
fn a_batch_over_ten_without_a_batching_window_is_refused() {
    let window = "IngestBatchingWindowSecs";
    let size = "IngestBatchSize";
    assert!(rules_accept(&[]), "the defaults");
    assert!(!rules_accept(&[(window, "0"), (size, "100")]));
    assert!(!rules_accept(&[(window, "0"), (size, "11")]));
    assert!(rules_accept(&[(window, "0"), (size, "10")]));
    assert!(rules_accept(&[(window, "1"), (size, "10000")]));
}

/// Region, architecture and model: set once in samconfig.toml, agreeing with the template,
/// the build scripts and the docs.
#[test]
fn samconfig_sets_the_region_the_architecture_and_the_model() {
    let t = template();
    let global = samconfig_global();
    assert_eq!(
        global.get("region").and_then(|r| r.as_str()),
        Some("eu-west-3"),
        "samconfig.toml should deploy to Paris by default (docs/deploy.md, Region)"
    );
    let overrides = samconfig_overrides();
    let arch = t["Parameters"]["Architecture"]["Default"].as_str().unwrap();
    assert_eq!(
        overrides.get("Architecture").map(String::as_str),
        Some(arch)
    );
    assert_eq!(arch, "x86_64");

    let sha = &t["Parameters"]["ModelSha256"];
    assert!(
        sha["Default"].is_null(),
        "ModelSha256 is required: no Default"
    );
    let pinned = read("models/mobilenet_v2_features.onnx.sha256");
    let pinned = pinned.split_whitespace().next().unwrap();
    assert_eq!(
        overrides.get("ModelSha256").map(String::as_str),
        Some(pinned),
        "samconfig.toml passes the pinned model's sha256 to sam deploy"
    );

    // The build scripts: build-lambdas.sh builds samconfig.toml's architecture by default,
    // sam-build.sh reads it there, neither hard-codes arm64 as a default.
    let build = read("infra/build-lambdas.sh");
    assert!(
        build.contains("samconfig.toml") && build.contains("Architecture="),
        "infra/build-lambdas.sh should default to samconfig.toml's Architecture"
    );
    assert!(read("infra/sam-build.sh").contains("samconfig.toml"));
    let deploy = read("docs/deploy.md");
    assert!(
        deploy.contains("Architecture=x86_64") && deploy.contains("region = \"eu-west-3\""),
        "docs/deploy.md should show samconfig.toml's architecture and region"
    );
    for doc in ["docs/deploy.md", "README.md"] {
        let text = read(doc);
        assert!(
            !text.contains("cargo lambda build --release --arm64"),
            "{doc} hard-codes --arm64"
        );
    }
}

/// The parameters another part of the code reads (size and request ceilings), with their
/// bounds, reach the functions that read them.
#[test]
fn the_ceilings_reach_the_functions() {
    let t = template();
    let params = &t["Parameters"];
    for (param, default, min, max) in [
        ("MaxImageBytes", 67_108_864.0, 1024.0, 1_073_741_824.0),
        ("MinShardSize", 16.0, 1.0, f64::INFINITY),
        ("MaxShardSize", 16_384.0, 1.0, f64::INFINITY),
        ("MaxShardsPerRun", 10_000.0, 1.0, f64::INFINITY),
        ("MaxPcaK", 1280.0, 1.0, f64::INFINITY),
        ("NoncurrentVersionExpiryDays", 7.0, 1.0, f64::INFINITY),
    ] {
        let p = &params[param];
        assert_eq!(p["Type"].as_str(), Some("Number"), "{param}");
        assert_eq!(number(t, &p["Default"]), default, "{param}");
        assert_eq!(number(t, &p["MinValue"]), min, "{param}");
        if max.is_finite() {
            assert_eq!(number(t, &p["MaxValue"]), max, "{param}");
        }
    }
    assert_eq!(
        params["InputPrefixes"]["Type"].as_str(),
        Some("CommaDelimitedList")
    );
    assert_eq!(params["InputPrefixes"]["Default"].as_str(), Some(""));

    let wired = [
        (Role::Splitter, "MAX_IMAGE_BYTES", "MaxImageBytes"),
        (Role::Featurizer, "MAX_IMAGE_BYTES", "MaxImageBytes"),
        (Role::Reducer, "MAX_IMAGE_BYTES", "MaxImageBytes"),
        (Role::Splitter, "MIN_SHARD_SIZE", "MinShardSize"),
        (Role::Splitter, "MAX_SHARD_SIZE", "MaxShardSize"),
        (Role::Splitter, "MAX_SHARDS_PER_RUN", "MaxShardsPerRun"),
        (Role::Splitter, "MAX_PCA_K", "MaxPcaK"),
        (Role::Splitter, "MAX_PIXELS", "MaxPixels"),
    ];
    for (role, var, param) in wired {
        let (id, f) = function(t, role);
        let env = t.environment(f);
        assert_eq!(
            env.get(var).and_then(|v| ref_name(v)),
            Some(param),
            "{id}: {var} should be !Ref {param}"
        );
    }
    let (id, splitter) = function(t, Role::Splitter);
    let joined = t
        .environment(splitter)
        .get("INPUT_PREFIXES")
        .and_then(|v| intrinsic(v, "Join"))
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{id}: INPUT_PREFIXES should be !Join [',', !Ref InputPrefixes]"))
        .clone();
    assert_eq!(joined[0].as_str(), Some(","));
    assert_eq!(ref_name(&joined[1]), Some("InputPrefixes"));
}

/// `cargo lambda deploy` onto a SAM stack's function replaces its code only: the functions'
/// `[package.metadata.lambda.deploy]` sets nothing the stack sets (memory, timeout, the
/// environment, layers, role, architecture, tracing, tags), and the docs' recipe takes every
/// ARN, URL and the architecture from the stack's Outputs.
#[test]
fn cargo_lambda_deploy_changes_code_only() {
    for dir in ["splitter", "featurizer", "reducer", "checker"] {
        let path = format!("functions/{dir}/Cargo.toml");
        let manifest: toml::Table = read(&path).parse().unwrap();
        let deploy = manifest
            .get("package")
            .and_then(|p| p.get("metadata"))
            .and_then(|m| m.get("lambda"))
            .and_then(|l| l.get("deploy"))
            .and_then(|d| d.as_table());
        if let Some(deploy) = deploy {
            let keys: Vec<&String> = deploy.keys().collect();
            assert!(
                keys.is_empty(),
                "{path}: [package.metadata.lambda.deploy] sets {keys:?}, which `cargo lambda deploy` \
                 would write over the stack's settings"
            );
        }
    }

    let t = template();
    let outputs: Vec<&str> = t["Outputs"]
        .as_object()
        .expect("Outputs")
        .keys()
        .map(String::as_str)
        .collect();
    let doc = read("docs/deploy.md");
    let section = doc
        .split("## The `cargo lambda` path")
        .nth(1)
        .expect("docs/deploy.md has a `cargo lambda` section")
        .split("\n## ")
        .next()
        .unwrap();
    let used: Vec<&str> = doc
        .match_indices("$(out ")
        .map(|(at, _)| {
            doc[at + 6..]
                .split(|c: char| !c.is_ascii_alphanumeric())
                .next()
                .unwrap()
        })
        .collect();
    assert!(
        used.len() >= 10,
        "docs/deploy.md reads only {used:?} from the Outputs"
    );
    for name in used.iter().filter(|n| !n.is_empty()) {
        // (`$(out "$m")` reads a variable's output name: the loop's names are checked below.)
        assert!(
            outputs.contains(name),
            "docs/deploy.md reads output {name}, which the stack lacks"
        );
    }
    for name in [
        "FeaturizerShardMappingId",
        "FeaturizerIngestMappingId",
        "ReducerReduceMappingId",
        "ReducerRefitMappingId",
        "SplitterRoleArn",
        "FeaturizerRoleArn",
        "ReducerRoleArn",
    ] {
        assert!(
            section.contains(name),
            "the cargo lambda recipe should use {name}"
        );
        assert!(outputs.contains(&name), "the stack lacks the output {name}");
    }
    for needed in [
        "Architecture",
        "IngestQueueArn",
        "RefitQueueArn",
        "ShardQueueArn",
        "ReduceQueueArn",
    ] {
        assert!(
            used.contains(&needed),
            "the cargo lambda recipe should read {needed} from the stack"
        );
    }
    for hard in ["--arm64 --package", "$SHARD_QUEUE_ARN", "$REDUCE_QUEUE_ARN"] {
        assert!(
            !section.contains(hard) || section.contains(&format!("{}=$(out", &hard[1..])),
            "docs/deploy.md's cargo lambda recipe uses {hard} without taking it from the stack"
        );
    }
}

/// `infra/preflight.sh` against a stub `aws` (GetAccountSettings' answer): it reads the
/// template's defaults and samconfig.toml's region, refuses when the mappings' caps do not fit
/// the unreserved concurrency, naming the parameters, and accepts lowered caps.
#[test]
fn preflight_refuses_when_the_mappings_do_not_fit_the_account() {
    let stub = tempfile::tempdir().unwrap();
    let calls = stub.path().join("calls");
    let aws = stub.path().join("aws");
    std::fs::write(
        &aws,
        format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\necho '{{\"AccountLimit\": {{\"ConcurrentExecutions\": '$STUB_QUOTA', \"UnreservedConcurrentExecutions\": '$STUB_UNRESERVED'}}, \"AccountUsage\": {{\"FunctionCount\": 0}}}}'\n",
            calls.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&aws, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        stub.path().display(),
        std::env::var("PATH").unwrap()
    );
    let run = |quota: &str, unreserved: &str, args: &[&str]| {
        let out = Command::new(repo().join("infra/preflight.sh"))
            .args(args)
            .env("PATH", &path)
            .env("STUB_QUOTA", quota)
            .env("STUB_UNRESERVED", unreserved)
            .output()
            .expect("infra/preflight.sh");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };

    // The defaults: 2 x 50 (featurizer) + 2 x 5 (reducer) + 2 = 112.
    let (code, text) = run("1000", "1000", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("needed") && text.contains("112"), "{text}");
    let (code, text) = run("100", "100", &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("refused")
            && text.contains("FeaturizerMaxConcurrency")
            && text.contains("L-B99A9384"),
        "{text}"
    );
    // A new account (quota 10) with a raised memory: refused on concurrency, warned on memory.
    let (code, text) = run("10", "10", &["FeaturizerMemory=5308"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("warning: FeaturizerMemory=5308"), "{text}");
    // Lowered caps fit: 2 x 10 + 2 x 2 + 2 = 26 <= 30.
    let (code, text) = run(
        "1000",
        "30",
        &[
            "--region",
            "eu-central-1",
            "FeaturizerMaxConcurrency=10",
            "ReducerMaxConcurrency=2",
        ],
    );
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = run("1000", "1000", &["NoSuchParameter=1"]);
    assert_eq!(code, Some(2), "{text}");

    let calls = std::fs::read_to_string(&calls).unwrap();
    let regions: Vec<&str> = calls
        .lines()
        .map(|l| {
            l.split("--region ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(
        regions,
        ["eu-west-3", "eu-west-3", "eu-west-3", "eu-central-1"],
        "{calls}"
    );
    assert!(calls
        .lines()
        .all(|l| l.starts_with("lambda get-account-settings")));
}

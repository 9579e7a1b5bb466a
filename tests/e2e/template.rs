//! The SAM template (`template.yaml`) against the code's contract: environment variables,
//! queues, IAM, event sources, the model layer and the runtime. No AWS needed.
//!
//! The template is read by [`testkit::template`]: CloudFormation's short forms (`!Ref X`,
//! `!GetAtt X.Arn`, `!Sub '...'`, `!If [...]`) arrive as their long forms (`{"Ref": "X"}`,
//! `{"Fn::GetAtt": "X.Arn"}`, ...), read with [`intrinsic`], [`ref_name`] and [`getatt`]. A
//! call is never a string: where a check reads a `!Sub`'s template as text (bucket names, ARN
//! patterns, metric namespaces) it says so with [`text`].

use std::collections::BTreeMap;

use aws::config::{env_vars, Role};
use serde_json::Value;
use testkit::template::{
    binary_of, getatt, intrinsic, names, ref_name, template, text, variables, Template,
};

mod deploy;
mod stuck;

const LAYER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/infra/build-layer.sh");
const ROLES: [Role; 4] = [
    Role::Splitter,
    Role::Featurizer,
    Role::Reducer,
    Role::Checker,
];

/// Variables a function may set beyond `env_vars(role)`: optional by design.
const OPTIONAL_VARS: &[(Role, &str)] = &[
    (Role::Splitter, "PCA_VARIANCE"),
    (Role::Reducer, "PCA_VARIANCE"),
];

// ---------------------------------------------------------------------------------------------
// Helpers: one per concept.
// ---------------------------------------------------------------------------------------------

/// A number: a literal, a numeric string, or `!Ref` to a parameter with a numeric `Default`.
fn number(t: &Template, v: &Value) -> f64 {
    if let Some(param) = ref_name(v) {
        let default = &t["Parameters"][param]["Default"];
        assert!(
            !default.is_null(),
            "!Ref {param}: there is no parameter {param} with a Default"
        );
        return number(t, default);
    }
    if let Some(x) = v.as_f64() {
        return x;
    }
    v.as_str()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!("expected a number (or !Ref to a parameter with a numeric Default), got {v:?}")
        })
}

/// The string items of a string-or-list field (`Action`, `Resource`, ...), as written: a
/// `!Sub 'arn:...'` gives its template (what the wildcard check wants), an `!If [c, a, b]` the
/// items of both branches.
fn items(v: &Value) -> Vec<&str> {
    if let Some(args) = intrinsic(v, "If").and_then(Value::as_array) {
        return args.iter().skip(1).flat_map(items).collect();
    }
    match v.as_array() {
        Some(list) => list.iter().flat_map(items).collect(),
        None => text(v).into_iter().collect(),
    }
}

/// Whether an environment variable's value is set in every case: not `!Ref AWS::NoValue`,
/// and not an `!If` with such a branch.
fn always_set(v: &Value) -> bool {
    if v.is_null() || ref_name(v) == Some("AWS::NoValue") {
        return false;
    }
    match intrinsic(v, "If").and_then(Value::as_array) {
        Some(args) => args.iter().skip(1).all(always_set),
        None => true,
    }
}

/// Which of the four functions a `AWS::Serverless::Function` is ([`binary_of`]).
fn role_of(function: &Value) -> Option<Role> {
    match binary_of(function)? {
        "splitter" => Some(Role::Splitter),
        "featurizer" => Some(Role::Featurizer),
        "reducer" => Some(Role::Reducer),
        "checker" => Some(Role::Checker),
        _ => None,
    }
}

/// The four functions: (role, logical id, resource). Asserts that each is there exactly once.
fn functions(t: &Template) -> Vec<(Role, &str, &Value)> {
    let found: Vec<(Role, &str, &Value)> = t
        .of_type("AWS::Serverless::Function")
        .filter_map(|(id, f)| Some((role_of(f)?, id, f)))
        .collect();
    for role in ROLES {
        let count = found.iter().filter(|(r, _, _)| *r == role).count();
        assert_eq!(
            count,
            1,
            "expected exactly one {role:?} function (found by Metadata.BuildProperties.Binary or CodeUri); found {:?}",
            found.iter().map(|(r, id, _)| (*r, *id)).collect::<Vec<_>>()
        );
    }
    found
}

/// One function: (logical id, resource).
fn function(t: &Template, role: Role) -> (&str, &Value) {
    functions(t)
        .into_iter()
        .find(|(r, _, _)| *r == role)
        .map(|(_, id, f)| (id, f))
        .expect("checked by functions()")
}

/// The `Properties` of the SQS event-source mappings (`AWS::Lambda::EventSourceMapping`)
/// that invoke function `id`.
fn sqs_mappings<'a>(t: &'a Template, id: &str) -> Vec<&'a Value> {
    t.of_type("AWS::Lambda::EventSourceMapping")
        .map(|(_, m)| &m["Properties"])
        .filter(|p| names(&p["FunctionName"], id))
        .collect()
}

/// SAM `Events` of type SQS on a function (SAM would attach AWSLambdaSQSQueueExecutionRole).
fn sam_sqs_events(f: &Value) -> Vec<&Value> {
    f["Properties"]["Events"]
        .as_object()
        .map(|events| {
            events
                .values()
                .filter(|e| e["Type"].as_str() == Some("SQS"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
}

/// Every IAM statement under `v`: the items of any `Statement` key, at any depth.
fn statements<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            for (key, child) in m {
                match (key.as_str(), child) {
                    ("Statement", Value::Array(list)) => out.extend(list.iter()),
                    ("Statement", single) => out.push(single),
                    _ => statements(child, out),
                }
            }
        }
        Value::Array(list) => {
            for child in list {
                statements(child, out);
            }
        }
        _ => {}
    }
}

/// `infra/build-layer.sh` without comment lines, with its simple top-level assignments
/// (`name=value` where the value has no `$` or `(`) substituted for `$name` and `${name}`.
fn expanded_layer_script() -> String {
    let text = std::fs::read_to_string(LAYER_SCRIPT)
        .unwrap_or_else(|e| panic!("read {LAYER_SCRIPT}: {e}"));
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let assignments: Vec<(&str, &str)> = lines
        .iter()
        .filter_map(|l| {
            let (name, value) = l.split_once('=')?;
            let value = value.trim_matches('"');
            let simple_name =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            (simple_name && !value.contains('$') && !value.contains('(')).then_some((name, value))
        })
        .collect();
    let mut script = lines.join("\n");
    for (name, value) in assignments {
        script = script.replace(&format!("${{{name}}}"), value);
        script = replace_shell_var(&script, name, value);
    }
    script
}

/// Replaces `$name` (not `$name_more`) with `value`.
fn replace_shell_var(text: &str, name: &str, value: &str) -> String {
    let pattern = format!("${name}");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(&pattern) {
        let after = &rest[at + pattern.len()..];
        let whole_name = !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
        out.push_str(&rest[..at]);
        out.push_str(if whole_name { value } else { pattern.as_str() });
        rest = after;
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn every_env_var_the_code_reads_is_set() {
    let t = template();
    for (role, id, f) in functions(t) {
        let vars = t.environment(f);
        let missing: Vec<String> = env_vars(role)
            .iter()
            .filter_map(|var| match vars.get(var) {
                Some(v) if always_set(v) => None,
                Some(_) => Some(format!("{var} (only conditionally)")),
                None => Some(var.to_string()),
            })
            .collect();
        assert!(
            missing.is_empty(),
            "{id} ({role:?}) does not set {missing:?}; aws::config::env_vars({role:?}) says the code \
             reads them: set them in its Environment.Variables or in Globals.Function.Environment.Variables"
        );
    }
}

#[test]
fn no_env_var_the_code_does_not_read() {
    let t = template();
    for (var, _) in variables(&t["Globals"]["Function"]) {
        let unread: Vec<Role> = ROLES
            .into_iter()
            .filter(|role| !env_vars(*role).contains(&var))
            .collect();
        assert!(
            unread.is_empty(),
            "Globals sets {var} for every function, but {unread:?} do not read it (aws::config::env_vars)"
        );
    }
    for (role, id, f) in functions(t) {
        for (var, _) in variables(&f["Properties"]) {
            let known = env_vars(role).contains(&var) || OPTIONAL_VARS.contains(&(role, var));
            assert!(
                known,
                "{id} ({role:?}) sets {var}, which the code does not read (not in aws::config::env_vars({role:?})): \
                 remove it from the template, or add it to env_vars if the code now reads it"
            );
        }
    }
}

#[test]
fn consumed_queues_have_a_dead_letter_queue_and_a_long_enough_visibility_timeout() {
    let t = template();
    let queues: Vec<&str> = t.of_type("AWS::SQS::Queue").map(|(id, _)| id).collect();
    let mut consumed = Vec::new();
    for (role, fid, f) in functions(t) {
        for event in sqs_mappings(t, fid) {
            let (queue, _) = getatt(&event["EventSourceArn"]).unwrap_or_else(|| {
                panic!(
                    "{fid}: its event-source mapping's EventSourceArn should be !GetAtt <queue>.Arn, got {:?}",
                    event["EventSourceArn"]
                )
            });
            assert!(
                queues.contains(&queue),
                "{fid} consumes {queue}, which is not an AWS::SQS::Queue of the template"
            );
            consumed.push(queue);
            let q = &t["Resources"][queue]["Properties"];

            let redrive = &q["RedrivePolicy"];
            let dlq = getatt(&redrive["deadLetterTargetArn"]);
            assert!(
                matches!(dlq, Some((d, "Arn")) if d != queue && queues.contains(&d)),
                "{queue} (consumed by {fid}) needs RedrivePolicy.deadLetterTargetArn: !GetAtt <another queue of \
                 the template>.Arn, got {dlq:?}"
            );
            assert!(
                number(t, &redrive["maxReceiveCount"]) >= 5.0,
                "{queue}: RedrivePolicy.maxReceiveCount must be >= 5 (transient failures get retried)"
            );

            // SQS defaults to 30 s, Lambda to 3 s. AWS asks for visibility >= 6 x function timeout.
            let visibility = match &q["VisibilityTimeout"] {
                Value::Null => 30.0,
                v => number(t, v),
            };
            let timeout = match t.function_property(f, "Timeout") {
                Value::Null => 3.0,
                v => number(t, v),
            };
            assert!(
                visibility >= 6.0 * timeout,
                "{queue}: VisibilityTimeout {visibility} s < 6 x {fid} ({role:?}) Timeout {timeout} s = {} s; \
                 a message would reappear while its first delivery is still being processed",
                6.0 * timeout
            );
        }
    }
    assert!(
        consumed.len() >= 2,
        "expected the shard and reduce queues to be consumed by functions, found {consumed:?}"
    );
}

/// The IAM rule enforced here:
/// - `Action`/`NotAction`: a bare `"*"` (every action of every service) is refused everywhere.
/// - `Resource`/`NotResource` `"*"`, and service-wide actions such as `"s3:*"`, are refused in
///   every statement except the `Deny` statements of an `AWS::S3::BucketPolicy`: a Deny only
///   takes permissions away, and a bucket policy is scoped to its bucket (the TLS-only Deny
///   rightly covers `s3:*`).
/// - The one other `Resource: "*"` allowed is in an `AWS::KMS::Key`'s `KeyPolicy`, where it
///   means the key itself (a key policy names no other resource); `"kms:*"` stays refused there.
/// - `NotAction`/`NotResource` are refused in `Allow` statements (they grant everything else).
/// - Function `Policies` must be inline statements, so that this test sees every grant (a
///   managed policy name or SAM policy template would hide what it allows).
#[test]
fn iam_statements_have_no_wildcards() {
    let t = template();
    for (_, id, f) in functions(t) {
        let policies = f["Properties"]["Policies"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(
            !policies.is_empty(),
            "{id} has no Policies: it needs its S3/SQS permissions"
        );
        for policy in policies {
            assert!(
                policy.get("Statement").is_some(),
                "{id}: every entry of Policies must be an inline {{Statement: [...]}} (so that it can be checked), got {policy:?}"
            );
        }
    }

    let mut problems = Vec::new();
    let mut checked = 0;
    for (id, resource) in t.resources() {
        let bucket_policy = resource["Type"].as_str() == Some("AWS::S3::BucketPolicy");
        let key_policy = resource["Type"].as_str() == Some("AWS::KMS::Key");
        let mut found = Vec::new();
        statements(resource, &mut found);
        for s in found {
            checked += 1;
            let at = format!("{id}/{}", s["Sid"].as_str().unwrap_or("<no Sid>"));
            let deny = s["Effect"].as_str() == Some("Deny");
            let actions = [items(&s["Action"]), items(&s["NotAction"])].concat();
            let targets = [items(&s["Resource"]), items(&s["NotResource"])].concat();
            if actions.contains(&"*") {
                problems.push(format!("{at}: Action \"*\""));
            }
            if !(deny && bucket_policy) {
                if targets.contains(&"*") && !key_policy {
                    problems.push(format!("{at}: Resource \"*\""));
                }
                for action in actions.iter().filter(|a| a.ends_with(":*")) {
                    problems.push(format!("{at}: service-wide action {action:?}"));
                }
            }
            let uses_not = !s["NotAction"].is_null() || !s["NotResource"].is_null();
            if uses_not && !deny {
                problems.push(format!("{at}: NotAction/NotResource in an Allow statement"));
            }
        }
    }
    assert!(
        checked > 0,
        "found no IAM statements at all in template.yaml"
    );
    assert!(
        problems.is_empty(),
        "IAM statements too broad:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn sqs_event_sources_report_batch_item_failures() {
    let t = template();
    for (role, id, f) in functions(t) {
        assert!(
            sam_sqs_events(f).is_empty(),
            "{id}: use an explicit AWS::Lambda::EventSourceMapping, not SAM `Events: Type: SQS` \
             (SAM attaches AWSLambdaSQSQueueExecutionRole, SQS access on every queue)"
        );
        let events = sqs_mappings(t, id);
        // Featurizer: shards and inbox notifications; reducer: reduces and refits; the
        // splitter (S3 events) and the checker (schedules) consume no queue.
        let expected = if matches!(role, Role::Splitter | Role::Checker) {
            0
        } else {
            2
        };
        assert_eq!(
            events.len(),
            expected,
            "{id} ({role:?}) should have {expected} SQS event source(s)"
        );
        for event in &events {
            assert!(
                items(&event["FunctionResponseTypes"]).contains(&"ReportBatchItemFailures"),
                "{id}: its SQS event needs FunctionResponseTypes: [ReportBatchItemFailures], or one failed \
                 message makes the whole batch retry"
            );
        }
        for event in events.iter().filter(|_| role == Role::Featurizer) {
            let max = &event["ScalingConfig"]["MaximumConcurrency"];
            assert!(
                !max.is_null(),
                "{id}: its SQS event needs ScalingConfig.MaximumConcurrency (bounds the fan-out)"
            );
            let n = number(t, max);
            assert!(
                (2.0..=1000.0).contains(&n),
                "{id}: MaximumConcurrency {n} is outside SQS's 2..=1000"
            );
        }
    }
}

#[test]
fn model_layer_puts_the_model_where_the_featurizer_looks() {
    let t = template();
    let (id, f) = function(t, Role::Featurizer);

    let layers = t
        .function_property(f, "Layers")
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let layer = layers
        .iter()
        .filter_map(ref_name)
        .map(|name| &t["Resources"][name])
        .find(|r| r["Type"].as_str() == Some("AWS::Serverless::LayerVersion"))
        .unwrap_or_else(|| {
            panic!("{id} has no !Ref to an AWS::Serverless::LayerVersion in Layers: {layers:?}")
        });
    let content_uri = layer["Properties"]["ContentUri"]
        .as_str()
        .expect("the model layer's ContentUri should be a local folder (what infra/build-layer.sh fills)")
        .trim_end_matches('/');

    let script = expanded_layer_script();
    let vars = t.environment(f);
    for var in ["MODEL_PATH", "MODEL_SPEC_PATH"] {
        let path = match vars.get(var) {
            Some(Value::String(path)) => path.as_str(),
            other => panic!("{id}: {var} should be a literal path, got {other:?}"),
        };
        let in_layer = path.strip_prefix("/opt/").unwrap_or_else(|| {
            panic!("{id}: {var}={path:?} should be under /opt/, where Lambda mounts layers")
        });
        assert!(
            in_layer.starts_with("model/") && !in_layer["model/".len()..].contains('/'),
            "{id}: {var}={path:?} should be /opt/model/<file> (infra/build-layer.sh stages the layer's model/ folder)"
        );
        let staged = format!("\"{content_uri}/{in_layer}\"");
        let copies: Vec<&str> = script
            .lines()
            .map(str::trim_start)
            .filter(|l| l.starts_with("stage ") || l.starts_with("cp "))
            .collect();
        assert!(
            copies.iter().any(|l| l.contains(&staged)),
            "infra/build-layer.sh should copy a file to {staged} (ContentUri {content_uri}/ + {in_layer}) so that \
             {var}={path} exists in Lambda; its copies (variables expanded) are:\n  {}",
            copies.join("\n  ")
        );
    }
}

#[test]
fn functions_are_rust_on_provided_al2023_for_the_architecture_parameter() {
    let t = template();
    let arch = &t["Parameters"]["Architecture"];
    assert_eq!(
        arch["Default"].as_str(),
        Some("x86_64"),
        "parameter Architecture should default to x86_64 until arm64 is measured faster per \
         dollar (docs/cost.md)"
    );
    for allowed in ["arm64", "x86_64"] {
        assert!(
            items(&arch["AllowedValues"]).contains(&allowed),
            "parameter Architecture should allow {allowed}"
        );
    }
    for (role, id, f) in functions(t) {
        let runtime = t.function_property(f, "Runtime");
        assert!(
            intrinsic(runtime, "Ref").is_none() && runtime.as_str() == Some("provided.al2023"),
            "{id} ({role:?}): Runtime should be provided.al2023, got {runtime:?}"
        );
        assert_eq!(
            t.function_property(f, "Handler").as_str(),
            Some("bootstrap"),
            "{id}: Handler should be bootstrap"
        );
        assert_eq!(
            f["Metadata"]["BuildMethod"].as_str(),
            Some("rust-cargolambda"),
            "{id}: Metadata.BuildMethod should be rust-cargolambda"
        );
        let archs = t
            .function_property(f, "Architectures")
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(
            archs.len() == 1 && ref_name(&archs[0]) == Some("Architecture"),
            "{id}: Architectures should be [!Ref Architecture], got {archs:?}"
        );
    }
}

#[test]
fn timeouts_and_margins_are_consistent() {
    let t = template();
    let (fid, featurizer) = function(t, Role::Featurizer);
    let margin = number(t, t.environment(featurizer)["DEADLINE_MARGIN_SECS"]);
    let timeout = number(t, t.function_property(featurizer, "Timeout"));
    assert!(
        margin < timeout / 2.0,
        "{fid}: DEADLINE_MARGIN_SECS {margin} s leaves too little of its {timeout} s timeout for work"
    );

    stuck::reducer_lock_stale_time_exceeds_its_timeout(t);
}

/// Alarms on each dead-letter queue's depth, on the age of the oldest message of each consumed
/// queue, on each function's errors and throttles, all to one SNS topic.
#[test]
fn alarms_watch_dlqs_queue_age_errors_and_throttles() {
    let t = template();
    let alarms: Vec<(&str, &Value)> = t
        .of_type("AWS::CloudWatch::Alarm")
        .map(|(id, a)| (id, &a["Properties"]))
        .collect();
    let watched = |metric: &str, dimension: &str, target: &str| {
        alarms.iter().any(|(_, a)| {
            a["MetricName"].as_str() == Some(metric)
                && a["Dimensions"].as_array().is_some_and(|ds| {
                    ds.iter().any(|d| {
                        d["Name"].as_str() == Some(dimension) && names(&d["Value"], target)
                    })
                })
                && a["AlarmActions"]
                    .as_array()
                    .is_some_and(|actions| !actions.is_empty())
        })
    };
    let mut missing = Vec::new();
    let queues: Vec<&str> = t.of_type("AWS::SQS::Queue").map(|(id, _)| id).collect();
    for (id, q) in t.of_type("AWS::SQS::Queue") {
        if let Some((dlq, _)) = getatt(&q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]) {
            if !watched("ApproximateNumberOfMessagesVisible", "QueueName", dlq) {
                missing.push(format!("depth of {dlq} (DLQ of {id})"));
            }
            if !watched("ApproximateAgeOfOldestMessage", "QueueName", id) {
                missing.push(format!("age of the oldest message of {id}"));
            }
        }
    }
    for (_, id, _) in functions(t) {
        for metric in ["Errors", "Throttles"] {
            if !watched(metric, "FunctionName", id) {
                missing.push(format!("{metric} of {id}"));
            }
        }
    }
    let (sid, _) = function(t, Role::Splitter);
    let invoke = t
        .of_type("AWS::Lambda::EventInvokeConfig")
        .find(|(_, c)| names(&c["Properties"]["FunctionName"], sid))
        .map(|(_, c)| &c["Properties"])
        .unwrap_or_else(|| {
            panic!("{sid} (invoked asynchronously by S3) needs an AWS::Lambda::EventInvokeConfig")
        });
    let (destination, _) = getatt(&invoke["DestinationConfig"]["OnFailure"]["Destination"])
        .expect("the splitter's OnFailure destination should be !GetAtt <queue>.Arn");
    assert!(
        queues.contains(&destination),
        "{destination} is not a queue of the template"
    );
    if !watched(
        "ApproximateNumberOfMessagesVisible",
        "QueueName",
        destination,
    ) {
        missing.push(format!(
            "depth of {destination} (the splitter's on-failure destination)"
        ));
    }
    assert!(
        missing.is_empty(),
        "no alarm (with AlarmActions) on:\n  {}",
        missing.join("\n  ")
    );
    assert!(
        !t["Parameters"]["AlarmEmail"].is_null() && !t["Conditions"]["HasAlarmEmail"].is_null(),
        "an optional AlarmEmail parameter (and HasAlarmEmail condition) subscribes an address"
    );
}

/// Operators find the dead-letter queues' ARNs in the Outputs, and the bucket name is unique
/// per region.
#[test]
fn outputs_and_names_for_operators() {
    let t = template();
    let outputs: Vec<&Value> = t["Outputs"]
        .as_object()
        .expect("Outputs")
        .values()
        .map(|o| &o["Value"])
        .collect();
    for (id, q) in t.of_type("AWS::SQS::Queue") {
        if getatt(&q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]).is_some() {
            let (dlq, _) =
                getatt(&q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]).unwrap();
            assert!(
                outputs.iter().any(|v| getatt(v) == Some((dlq, "Arn"))),
                "Outputs should give {dlq}'s ARN (the DLQ of {id})"
            );
        }
    }
    let (_, bucket) = t.of_type("AWS::S3::Bucket").next().expect("a bucket");
    let name = items(&bucket["Properties"]["BucketName"]);
    assert!(
        name.len() == 1
            && name[0].contains("${AWS::Region}")
            && name[0].contains("${AWS::AccountId}"),
        "the bucket name should include the region and the account id, got {name:?}"
    );
    let globals = variables(&t["Globals"]["Function"]);
    assert_eq!(
        items(globals["BUCKET"]),
        name,
        "Globals BUCKET should be the bucket's name"
    );
}

/// A value as the stack gets it with every parameter at its default: a literal, `!Ref` to a
/// parameter, or `!If` on a condition `!Equals [!Ref P, literal]`.
fn default_value(t: &Template, v: &Value) -> String {
    if let Some(param) = ref_name(v) {
        let default = &t["Parameters"][param]["Default"];
        assert!(
            !default.is_null(),
            "!Ref {param}: no parameter {param} with a Default"
        );
        return default_value(t, default);
    }
    if let Some(args) = intrinsic(v, "If").and_then(Value::as_array) {
        let condition = args[0].as_str().expect("!If names a condition");
        let equals = intrinsic(&t["Conditions"][condition], "Equals")
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("condition {condition} is not an !Equals"));
        let holds = default_value(t, &equals[0]) == default_value(t, &equals[1]);
        return default_value(t, &args[if holds { 1 } else { 2 }]);
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a literal, !Ref or !If, got {other:?}"),
    }
}

/// Two defaults are equal as numbers when both are numbers (`0.05` and `"0.05"`), else as text.
fn same_default(a: &str, b: &str) -> bool {
    match (a.trim().parse::<f64>(), b.trim().parse::<f64>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// One source for every default: the CLI's defaults equal the template's parameter defaults,
/// which are what users deploy. (The functions' `cargo lambda deploy` settings are checked to
/// be empty: `deploy::cargo_lambda_deploy_changes_code_only`.)
#[test]
fn cli_defaults_equal_the_template_defaults() {
    let t = template();
    let params = &t["Parameters"];
    let cli = [
        (
            "ShardSize",
            pipeline::manifest::DEFAULT_SHARD_SIZE.to_string(),
        ),
        ("PcaK", engine::pca::DEFAULT_K.to_string()),
        (
            "ImageGlob",
            pipeline::manifest::DEFAULT_IMAGE_GLOB.to_string(),
        ),
        (
            "MaxPixels",
            pipeline::manifest::DEFAULT_MAX_PIXELS.to_string(),
        ),
        (
            "MaxErrorRate",
            pipeline::manifest::DEFAULT_MAX_ERROR_RATE.to_string(),
        ),
    ];
    for (param, ours) in cli {
        let theirs = default_value(t, &params[param]["Default"]);
        assert!(
            same_default(&ours, &theirs),
            "the CLI's default for {param} is {ours}, the template's {theirs}"
        );
    }
}

//! The template's side of "no silent stall": the reducer's lock is stale only after its
//! timeout, the stuck checker runs on its schedules with the stack's own bounds, and alarms
//! on its metrics notify the alarm topic.

use super::*;

/// The reducer's lock is stale after REDUCER_TIMEOUT_SECS + REDUCE_LOCK_MARGIN_SECS
/// (`aws::config::lock_stale_after`), so it must get its own timeout (the same parameter as
/// its `Timeout`, never a copy that could drift) and a margin of at least 1 s, and no explicit
/// REDUCE_LOCK_STALE_SECS (which could be at or below the timeout).
pub(super) fn reducer_lock_stale_time_exceeds_its_timeout(t: &Template) {
    let (rid, reducer) = function(t, Role::Reducer);
    let env = t.environment(reducer);
    assert!(
        !env.contains_key("REDUCE_LOCK_STALE_SECS"),
        "{rid}: set REDUCER_TIMEOUT_SECS and REDUCE_LOCK_MARGIN_SECS, not REDUCE_LOCK_STALE_SECS \
         (CloudFormation cannot check that it exceeds the timeout)"
    );
    let timeout = t.function_property(reducer, "Timeout");
    let given = env
        .get("REDUCER_TIMEOUT_SECS")
        .unwrap_or_else(|| panic!("{rid}: REDUCER_TIMEOUT_SECS is not set"));
    assert!(
        ref_name(given).is_some() && ref_name(given) == ref_name(timeout),
        "{rid}: REDUCER_TIMEOUT_SECS ({given:?}) must be !Ref the parameter its Timeout is ({timeout:?})"
    );
    let margin = env
        .get("REDUCE_LOCK_MARGIN_SECS")
        .unwrap_or_else(|| panic!("{rid}: REDUCE_LOCK_MARGIN_SECS is not set"));
    let param = ref_name(margin).expect("REDUCE_LOCK_MARGIN_SECS should be !Ref a parameter");
    let min = number(t, &t["Parameters"][param]["MinValue"]);
    assert!(
        min >= 1.0,
        "{param}: MinValue {min} lets the lock's stale time equal the reducer's timeout"
    );
    // With the defaults, what the reducer computes.
    let stale = aws::config::lock_stale_after(
        None,
        Some(number(t, timeout) as u64),
        number(t, margin) as u64,
    )
    .unwrap();
    assert!(stale.as_secs_f64() > number(t, timeout), "{stale:?}");
    // And an explicit stale time at the timeout is refused by the configuration.
    assert!(aws::config::lock_stale_after(Some(300), Some(300), 60).is_err());
}

/// The stuck checker runs on two schedules (CheckerSchedule, ReconcileSchedule with
/// `{"reconcile": true}`), its bounds come from the stack's own timeouts and receive limit,
/// and alarms on its metrics (and on every DLQ, checked above) notify the alarm topic.
#[test]
fn the_stuck_checker_is_scheduled_and_alarmed() {
    let t = template();
    let (cid, checker) = function(t, Role::Checker);
    let events = checker["Properties"]["Events"]
        .as_object()
        .unwrap_or_else(|| panic!("{cid} has no Events"));
    let schedules: Vec<(&str, &str)> = events
        .values()
        .filter(|e| e["Type"].as_str() == Some("Schedule"))
        .map(|e| {
            let p = &e["Properties"];
            (
                ref_name(&p["Schedule"]).expect("Schedule: !Ref a parameter"),
                p["Input"].as_str().unwrap_or("{}"),
            )
        })
        .collect();
    let input_of = |param: &str| {
        schedules
            .iter()
            .find(|(p, _)| *p == param)
            .map(|(_, input)| serde_json::from_str::<serde_json::Value>(input).unwrap())
            .unwrap_or_else(|| panic!("{cid} has no Schedule event on !Ref {param}"))
    };
    assert_eq!(input_of("ReconcileSchedule")["reconcile"], true);
    assert_ne!(input_of("CheckerSchedule")["reconcile"], true);
    for (param, default) in [
        ("CheckerSchedule", "rate(5 minutes)"),
        ("ReconcileSchedule", "rate(1 day)"),
    ] {
        assert_eq!(
            t["Parameters"][param]["Default"].as_str(),
            Some(default),
            "{param}"
        );
    }

    // The bounds: the same parameters as the queues and functions they describe.
    let env = t.environment(checker);
    let (_, featurizer) = function(t, Role::Featurizer);
    let (_, reducer) = function(t, Role::Reducer);
    let shard_queue = &t["Resources"]["ShardQueue"]["Properties"];
    let reduce_queue = &t["Resources"]["ReduceQueue"]["Properties"];
    for (var, source) in [
        (
            "FEATURIZER_TIMEOUT_SECS",
            t.function_property(featurizer, "Timeout"),
        ),
        ("SHARD_VISIBILITY_SECS", &shard_queue["VisibilityTimeout"]),
        (
            "REDUCER_TIMEOUT_SECS",
            t.function_property(reducer, "Timeout"),
        ),
        ("REDUCE_VISIBILITY_SECS", &reduce_queue["VisibilityTimeout"]),
        (
            "MAX_RECEIVE_COUNT",
            &shard_queue["RedrivePolicy"]["maxReceiveCount"],
        ),
    ] {
        let given = env
            .get(var)
            .unwrap_or_else(|| panic!("{cid}: {var} is not set"));
        assert!(
            ref_name(given).is_some() && ref_name(given) == ref_name(source),
            "{cid}: {var} ({given:?}) should be !Ref the parameter that sets it ({source:?})"
        );
    }
    assert_eq!(
        ref_name(&t["Resources"]["RefitQueue"]["Properties"]["VisibilityTimeout"]),
        ref_name(&reduce_queue["VisibilityTimeout"]),
        "the refit rule uses the reduce queue's visibility timeout"
    );

    // The alarms on the checker's metrics, to the alarm topic.
    for metric in ["StuckRuns", "StuckCollections"] {
        let alarm = t
            .of_type("AWS::CloudWatch::Alarm")
            .map(|(_, a)| &a["Properties"])
            .find(|a| {
                a["Namespace"].as_str() == Some(aws::checker::NAMESPACE)
                    && a["MetricName"].as_str() == Some(metric)
            })
            .unwrap_or_else(|| panic!("no alarm on {}/{metric}", aws::checker::NAMESPACE));
        assert_eq!(number(t, &alarm["Threshold"]), 1.0, "{metric}");
        assert_eq!(
            alarm["ComparisonOperator"].as_str(),
            Some("GreaterThanOrEqualToThreshold")
        );
        let dims = alarm["Dimensions"].as_array().expect("Dimensions");
        assert!(
            dims.iter().any(|d| d["Name"].as_str() == Some("Stack")
                && ref_name(&d["Value"]) == Some("AWS::StackName")),
            "{metric}: the Stack dimension the checker emits"
        );
        assert!(
            alarm["AlarmActions"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| ref_name(x) == Some("AlarmTopic"))),
            "{metric}: AlarmActions [!Ref AlarmTopic]"
        );
    }
    let subscription = t
        .of_type("AWS::SNS::Subscription")
        .map(|(_, s)| s)
        .find(|s| ref_name(&s["Properties"]["Endpoint"]) == Some("AlarmEmail"))
        .expect("an e-mail subscription to AlarmEmail");
    assert_eq!(
        subscription["Condition"].as_str(),
        Some("HasAlarmEmail"),
        "subscribed only when AlarmEmail is set"
    );
}

/// The defaults of the stuck bounds (`pipeline::stuck::defaults`, what `featurize status`
/// uses) are the template's parameter defaults.
#[test]
fn stall_policy_defaults_are_the_template_defaults() {
    use pipeline::stuck::defaults::*;
    let t = template();
    let params = &t["Parameters"];
    for (param, ours) in [
        ("FeaturizerTimeout", FEATURIZER_TIMEOUT_S),
        ("ShardQueueVisibilityTimeout", SHARD_VISIBILITY_S),
        ("ReducerTimeout", REDUCER_TIMEOUT_S),
        ("ReduceQueueVisibilityTimeout", REDUCE_VISIBILITY_S),
        ("MaxReceiveCount", u64::from(MAX_RECEIVE_COUNT)),
        ("StuckGraceSecs", START_GRACE_S),
        ("StuckMarginSecs", MARGIN_S),
        ("MaxStalenessSecs", MAX_STALENESS_S),
    ] {
        assert_eq!(
            number(t, &params[param]["Default"]),
            ours as f64,
            "pipeline::stuck::defaults for {param}"
        );
    }
}

use super::*;
use pipeline::notification::decode_s3_key;

#[test]
fn a_layer_with_another_spec_fails_the_cold_start_naming_both() {
    let spec = ModelSpec::preset("torchvision").unwrap();
    let loaded = engine::model::ModelRecord {
        name: spec.name.clone(),
        sha256: "0".repeat(64),
        spec_sha256: spec.sha256(),
        spec,
    };
    let path = "/opt/model/model_spec.json";
    assert!(spec_matches(&loaded.spec_sha256, &loaded, path).is_ok());
    let builtin = ModelSpec::builtin_sha256();
    let e = spec_matches(&builtin, &loaded, path)
        .unwrap_err()
        .to_string();
    for part in [
        builtin.as_str(),
        loaded.spec_sha256.as_str(),
        path,
        "torchvision",
        "ModelSpecSha256",
        "infra/build-layer.sh",
    ] {
        assert!(e.contains(part), "{part} missing from: {e}");
    }
}

#[test]
fn an_early_refit_is_resent_only_when_the_staleness_bound_comes_first() {
    let not_quiet = |quiet_left_ms, staleness_left_ms| RefitOutcome::NotQuiet {
        since_change_ms: 1_000,
        quiet_left_ms,
        staleness_left_ms,
    };
    // The newest change's own message arrives first (in 59 s): nothing to re-send.
    assert_eq!(requeue_delay_s(&not_quiet(59_000, Some(600_000))), None);
    assert_eq!(requeue_delay_s(&not_quiet(59_000, None)), None);
    // The bound comes first: back when it is reached (rounded up, at least 1 s).
    assert_eq!(requeue_delay_s(&not_quiet(59_000, Some(12_300))), Some(13));
    assert_eq!(requeue_delay_s(&not_quiet(59_000, Some(0))), Some(1));
    assert_eq!(requeue_delay_s(&RefitOutcome::NothingToDo), None);
}

#[test]
fn deadlines_from_lambda_and_from_emulators() {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let remaining = |d: Option<Instant>| {
        d.unwrap()
            .saturating_duration_since(Instant::now())
            .as_secs()
    };
    assert!((29..=30).contains(&remaining(deadline_instant(now_ms + 30_000))));
    assert!((599..=600).contains(&remaining(deadline_instant(600_000))));
    assert_eq!(remaining(deadline_instant(now_ms - 5_000)), 0);
    assert!(deadline_instant(0).is_none());
}

#[test]
fn s3_keys_are_decoded() {
    assert_eq!(
        decode_s3_key("runs/requests/demo+run.json"),
        "runs/requests/demo run.json"
    );
    assert_eq!(
        decode_s3_key("images/Pomme%C3%A9+1/a%2Bb.jpg"),
        "images/Pommeé 1/a+b.jpg"
    );
    assert_eq!(
        request_result_key("runs/requests/a.json"),
        "runs/request-results/a.json"
    );
}

#[test]
fn sample_events_parse() {
    let s3: serde_json::Value =
        serde_json::from_str(include_str!("../../../../tests/events/s3-run-request.json")).unwrap();
    assert!(matches!(
        parse_splitter_event(s3).unwrap(),
        SplitterEvent::S3(_)
    ));
    let test: serde_json::Value =
        serde_json::from_str(include_str!("../../../../tests/events/s3-test-event.json")).unwrap();
    assert!(matches!(
        parse_splitter_event(test).unwrap(),
        SplitterEvent::S3Test
    ));
    let direct: serde_json::Value =
        serde_json::from_str(include_str!("../../../../tests/events/run-request.json")).unwrap();
    assert!(matches!(
        parse_splitter_event(direct).unwrap(),
        SplitterEvent::Direct(_)
    ));
    let bad = serde_json::json!({"input_prefx": "x"});
    assert!(parse_splitter_event(bad).is_err());
    let sqs: SqsEvent = serde_json::from_str(include_str!(
        "../../../../tests/events/sqs-shard-batch.json"
    ))
    .unwrap();
    let shard: ShardMessage = parse_body(&sqs.records[1]).unwrap();
    assert_eq!(shard.shard, 1);
    let sqs: SqsEvent =
        serde_json::from_str(include_str!("../../../../tests/events/sqs-reduce.json")).unwrap();
    let _: ReduceMessage = parse_body(&sqs.records[0]).unwrap();
}

use super::*;

fn images(n: usize) -> Vec<ImageRef> {
    (0..n)
        .map(|i| ImageRef {
            path: format!("c/{i:03}.jpg"),
            label: "c".into(),
            version: format!("etag-{i}"),
            size: 0,
        })
        .collect()
}

#[test]
fn shards_by_size_and_by_count() {
    let mut o = RunOptions {
        shard_size: 4,
        ..Default::default()
    };
    let s = make_shards(images(10), &o);
    assert_eq!(
        s.iter().map(|s| s.images.len()).collect::<Vec<_>>(),
        vec![4, 4, 2]
    );
    assert_eq!(s[2].id, 2);
    o.shard_count = Some(3);
    let s = make_shards(images(10), &o);
    assert_eq!(
        s.iter().map(|s| s.images.len()).collect::<Vec<_>>(),
        vec![4, 4, 2]
    );
    o.shard_count = Some(20);
    assert_eq!(make_shards(images(10), &o).len(), 10);
    assert!(make_shards(Vec::new(), &o).is_empty());
}

#[test]
fn run_id_is_stable_and_sensitive() {
    let o = RunOptions::default();
    let id = |uri: &str, o: &RunOptions, images: &[ImageRef], model: &str| {
        derive_run_id(&run_fingerprint(uri, o, images, model))
    };
    let a = id("/in", &o, &images(3), "m1");
    assert_eq!(a, id("/in", &o, &images(3), "m1"));
    assert_ne!(a, id("/in", &o, &images(4), "m1"));
    assert_ne!(
        a,
        id("/in", &o, &images(3), "m2"),
        "the model is part of it"
    );
    let mut overwritten = images(3);
    overwritten[1].version = "etag-new".into();
    assert_ne!(
        a,
        id("/in", &o, &overwritten, "m1"),
        "so is each image's version"
    );
    let bumped = derive_run_id(&fingerprint_with_code(
        "/in",
        &o,
        &images(3),
        "m1",
        engine::FEATURIZER_VERSION + 1,
    ));
    assert_ne!(a, bumped, "so is the featurizing code's version");
    assert!(validate_run_id("requests").is_err());
    assert!(validate_run_id("request-results").is_err());
    let o2 = RunOptions {
        pca: PcaOptions {
            k: 10,
            ..Default::default()
        },
        ..o.clone()
    };
    assert_ne!(a, id("/in", &o2, &images(3), "m1"));
    assert!(validate_run_id(&a).is_ok());
    assert!(validate_run_id("../x").is_err());
}

#[test]
fn run_ids_colliding_with_reserved_keys_are_rejected() {
    for reserved in RESERVED_RUN_IDS {
        let msg = validate_run_id(reserved).unwrap_err().to_string();
        assert!(msg.contains("is reserved"), "{msg}");
    }
    assert!(validate_run_id("requests-2").is_ok());
    assert!(
        validate_run_id("Requests").is_ok(),
        "S3 keys are case-sensitive"
    );
}

#[test]
fn request_rejects_unknown_fields_and_validates() {
    let err = serde_json::from_str::<RunRequest>(r#"{"input_prefix":"a/","kk":3}"#);
    assert!(err.is_err());
    let req: RunRequest = serde_json::from_str(r#"{"input_prefix":"a/","k":2000}"#).unwrap();
    let o = req.options(&RunOptions::default());
    let msg = o.validate(1280, 5000).unwrap_err().to_string();
    assert!(
        msg.contains("larger than the feature dimension 1280"),
        "{msg}"
    );
    let req: RunRequest = serde_json::from_str(r#"{"input_prefix":"a/","variance":0.95}"#).unwrap();
    assert!(req
        .options(&RunOptions::default())
        .validate(1280, 3)
        .is_ok());
}

#[test]
fn fewer_images_than_k_is_accepted_but_one_image_is_not() {
    let o = RunOptions::default();
    assert_eq!(o.pca.k, 50);
    assert!(o.validate(1280, 30).is_ok(), "the reducer clamps k instead");
    let msg = o.validate(1280, 1).unwrap_err().to_string();
    assert!(msg.contains("a PCA needs at least 2"), "{msg}");
}

#[test]
fn shard_lists_keep_versions_and_read_old_lists() {
    let listed = images(2);
    let json = serde_json::to_string(&listed).unwrap();
    assert!(json.contains("etag-1"), "{json}");
    let back: Vec<ImageRef> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, listed);
    let old: Vec<ImageRef> = serde_json::from_str(r#"[{"path":"c/000.jpg","label":"c"}]"#).unwrap();
    assert_eq!(
        old[0].version, "",
        "a list written before versions were kept"
    );
}

#[test]
fn done_markers_keep_the_error_list_and_read_old_markers() {
    let marker = DoneMarker {
        shard: 3,
        attempt: "a1".into(),
        part_sha256: "00".into(),
        images: 2,
        rows: 1,
        errors: 1,
        timings: StageTimings::default(),
        cost: InvocationCost {
            duration_ms: 1.0,
            memory_mb: None,
        },
        finished_at_ms: None,
        stats_sha256: Some("11".into()),
        errors_sha256: None,
        engine: Some("native (avx2)".into()),
        error_list: vec![ImageError {
            path: "c/1.jpg".into(),
            label: "c".into(),
            kind: ImageErrorKind::Archived,
            reason: "archived".into(),
        }],
    };
    let json = serde_json::to_value(&marker).unwrap();
    assert_eq!(json["error_list"][0]["kind"], "archived");
    let back: DoneMarker = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, marker);
    assert_eq!(json["stats_sha256"], "11");
    assert!(json.get("errors_sha256").is_none(), "None is left out");
    let mut old = json;
    old.as_object_mut().unwrap().remove("error_list");
    old.as_object_mut().unwrap().remove("stats_sha256");
    old.as_object_mut().unwrap().remove("engine");
    let old: DoneMarker = serde_json::from_value(old).unwrap();
    assert!(old.error_list.is_empty());
    assert_eq!(old.engine, None, "a marker from before the engine was kept");
    assert_eq!(old.stats_sha256, None, "a marker from before the checksums");
}

#[test]
fn the_image_size_limit_keeps_old_run_ids_and_reads_old_manifests() {
    let o = RunOptions::default();
    let json = serde_json::to_value(&o).unwrap();
    assert!(
        json.get("max_image_bytes").is_none(),
        "the default is left out, so run ids made before it existed stay the same"
    );
    let back: RunOptions = serde_json::from_value(json).unwrap();
    assert_eq!(back.max_image_bytes, DEFAULT_MAX_IMAGE_BYTES);
    let smaller = RunOptions {
        max_image_bytes: 1 << 20,
        ..o.clone()
    };
    assert_eq!(
        serde_json::to_value(&smaller).unwrap()["max_image_bytes"],
        1 << 20
    );
    assert_ne!(
        run_fingerprint("/in", &o, &images(3), "m"),
        run_fingerprint("/in", &smaller, &images(3), "m"),
        "another limit is another run"
    );
    let req: RunRequest =
        serde_json::from_str(r#"{"input_prefix":"a/","max_image_bytes":1000}"#).unwrap();
    assert_eq!(req.options(&o).max_image_bytes, 1000);
    let zero = RunOptions {
        max_image_bytes: 0,
        ..o
    };
    assert!(zero.validate(1280, 10).is_err());
}

#[test]
fn the_spec_is_recorded_without_moving_run_ids_and_old_manifests_read() {
    use engine::model::ModelSpec;
    let plain = RunOptions::default();
    let builtin = RunOptions {
        model_spec: Some(ModelSpecRecord::of_sha256(&ModelSpec::builtin_sha256())),
        ..plain.clone()
    };
    assert!(builtin.model_spec.as_ref().unwrap().builtin);
    assert_eq!(builtin.model_spec.as_ref().unwrap().custom_sha256(), None);
    assert_eq!(
        run_fingerprint("/in", &plain, &images(3), "m"),
        run_fingerprint("/in", &builtin, &images(3), "m"),
        "recording the spec leaves the run id alone (it enters through the model identity)"
    );
    let json = serde_json::to_value(&builtin).unwrap();
    assert_eq!(
        json["model_spec"]["sha256"].as_str(),
        Some(ModelSpec::builtin_sha256().as_str())
    );
    assert_eq!(serde_json::from_value::<RunOptions>(json).unwrap(), builtin);
    let mut old = serde_json::to_value(&plain).unwrap();
    assert!(old.get("model_spec").is_none(), "None is left out");
    old.as_object_mut().unwrap().remove("model_spec");
    assert_eq!(
        serde_json::from_value::<RunOptions>(old)
            .unwrap()
            .model_spec,
        None
    );
    // The same spec resumes; another is refused, naming both; an old manifest is not
    // checked.
    let custom = ModelSpecRecord {
        sha256: "ab".repeat(32),
        builtin: false,
        name: Some("torchvision".into()),
        spec: None,
    };
    let recorded = builtin.model_spec.clone().unwrap();
    assert!(ModelSpecRecord::check_same(Some(&recorded), &recorded, "r").is_ok());
    assert!(ModelSpecRecord::check_same(None, &custom, "r").is_ok());
    let e = ModelSpecRecord::check_same(Some(&recorded), &custom, "r")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&recorded.sha256) && e.contains(&custom.sha256) && e.contains("torchvision"),
        "{e}"
    );
    assert!(e.contains("built-in keras-mobilenet"), "{e}");
}

#[test]
fn rfc3339_round_trip() {
    let ms = rfc3339_to_unix_ms("2026-01-02T03:04:05.250Z").unwrap();
    assert_eq!(ms, 1_767_323_045_250);
    assert!(rfc3339_to_unix_ms("yesterday").is_none());
    let now = rfc3339_to_unix_ms(&now_rfc3339()).unwrap();
    assert!(now.abs_diff(unix_now_ms()) < 5_000);
}

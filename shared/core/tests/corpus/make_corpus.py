#!/usr/bin/env python3
"""Writes the fuzz corpus of tests/fuzz_decoders/main.rs: one folder per decoder.

File names say what the decoder must do with the file: `ok-*` decodes, `err-*` is refused,
`any-*` is only a seed. Run from this folder (python3 make_corpus.py) after a format changes;
inputs a fuzz run found are added by hand, under the same naming.
"""
import json
import os
import struct

H1 = "9f2c4e6a8b0d1f3e5a7c9b1d3f5e7a9c0b2d4f6e8a1c3e5b7d9f0a2c4e6b8d0f"
H2 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"


def w(folder, name, data):
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, (dict, list)):
        data = (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()
    elif isinstance(data, str):
        data = data.encode()
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def stats(count, dim, values, tri, magic=b"FSTATS01"):
    """magic, count, dim, then little-endian f64s."""
    return magic + struct.pack("<QQ", count, dim) + b"".join(struct.pack("<d", v) for v in values + tri)


def replace(doc, old, new):
    text = json.dumps(doc)
    assert old in text, old
    return text.replace(old, new)


NAN, INF = float("nan"), float("inf")

# --- shard statistics (FSTATS01): count, dim, mean, upper triangle of the co-moment
rows = [[1.0, 2.0, 0.5], [3.0, 5.0, -1.0], [0.0, 1.0, 2.5], [2.0, 2.0, 2.0], [4.0, 0.0, 1.0]]
n, d = len(rows), 3
mean = [sum(r[j] for r in rows) / n for j in range(d)]
tri = [sum((r[i] - mean[i]) * (r[j] - mean[j]) for r in rows) for i in range(d) for j in range(i, d)]
good = stats(n, d, mean, tri)
w("stats", "ok-five-rows-dim-3.bin", good)
w("stats", "ok-empty-dim-0.bin", stats(0, 0, [], []))
w("stats", "ok-empty-dim-2.bin", stats(0, 2, [0.0, 0.0], [0.0, 0.0, 0.0]))
w("stats", "ok-one-row-dim-2.bin", stats(1, 2, [0.25, -3.0], [0.0, 0.0, 0.0]))
w("stats", "err-24-bytes-huge-dim.bin", stats(1, 2**64 - 1, [], []))
w("stats", "err-24-bytes-dim-over-limit.bin", stats(1, 65537, [], []))
w("stats", "err-24-bytes-dim-at-limit.bin", stats(1, 65536, [], []))
w("stats", "err-nan-mean.bin", stats(n, d, [NAN] + mean[1:], tri))
w("stats", "err-infinite-comoment.bin", stats(n, d, mean, tri[:2] + [INF] + tri[3:]))
w("stats", "err-negative-variance.bin", stats(n, d, mean, [-1.0] + tri[1:]))
w("stats", "err-count-0-with-values.bin", stats(0, d, mean, tri))
w("stats", "err-rows-of-dim-0.bin", stats(7, 0, [], []))
w("stats", "err-truncated.bin", good[:-3])
w("stats", "err-one-word-too-many.bin", good + struct.pack("<d", 1.0))
w("stats", "err-bad-magic.bin", stats(n, d, mean, tri, b"FSTATS02"))
w("stats", "err-magic-only.bin", b"FSTATS01")
w("stats", "err-running-sums-magic.bin", stats(n, d, mean, tri, b"FSUMS001"))

# --- running sums (FSUMS001): count, dim, shift, s1, upper triangle of s2
shift = [1.0, 2.0, 1.0]
s1 = [sum(r[j] - shift[j] for r in rows) for j in range(d)]
s2 = [sum((r[i] - shift[i]) * (r[j] - shift[j]) for r in rows) for i in range(d) for j in range(i, d)]
sums = stats(n, d, shift + s1, s2, b"FSUMS001")
w("running_sums", "ok-five-rows-dim-3.bin", sums)
w("running_sums", "ok-new-dim-0.bin", stats(0, 0, [], [], b"FSUMS001"))
w("running_sums", "ok-new-dim-2.bin", stats(0, 2, [0.5, -0.5, 0.0, 0.0], [0.0, 0.0, 0.0], b"FSUMS001"))
w("running_sums", "err-24-bytes-huge-dim.bin", stats(1, 2**63, [], [], b"FSUMS001"))
w("running_sums", "err-nan-shift.bin", stats(n, d, [NAN] + shift[1:] + s1, s2, b"FSUMS001"))
w("running_sums", "err-infinite-s2.bin", stats(n, d, shift + s1, s2[:-1] + [-INF], b"FSUMS001"))
w("running_sums", "err-count-0-with-sums.bin", stats(0, d, shift + s1, s2, b"FSUMS001"))
w("running_sums", "err-truncated.bin", sums[:40])
w("running_sums", "err-statistics-magic.bin", stats(n, d, shift + s1, s2, b"FSTATS01"))

# --- the manifest
opts = {"image_glob": "*.{jpg,jpeg,png}", "shard_size": 4096, "pca": {"k": 50, "convention": "centered"},
        "max_pixels": 50000000, "max_error_rate": 0.05}
man = {"run_id": "run-0123456789abcdef", "created_at": "2026-01-02T03:04:05Z",
       "input": {"uri": "s3://data-bucket/images/", "bucket": "data-bucket", "prefix": "images/"},
       "options": opts, "total_images": 5000, "shards": [{"id": 0, "count": 4096}, {"id": 1, "count": 904}],
       "splitter": {"duration_ms": 812.5, "memory_mb": 1024}, "model_sha256": H1, "fingerprint": H2}
w("manifest", "ok-header.json", man)
local = dict(man)
local.update({
    "run_id": "my-run", "input": {"uri": "/data/in", "prefix": ""},
    "options": {"image_glob": "*.jpg", "shard_size": 2, "shard_count": 2,
                "pca": {"k": 2, "variance": 0.95, "convention": "uncentered"},
                "max_pixels": 1000, "max_error_rate": 0.0},
    "total_images": 3, "splitter": None,
    "shards": [{"id": 0, "count": 2, "images": [
        {"path": "apple/1.jpg", "label": "apple", "version": "10:1767323045"},
        {"path": "apple/2.jpg", "label": "apple", "version": "11:1767323046"}]},
        {"id": 1, "count": 1, "images": [{"path": "pear/\u00e9t\u00e9 1.jpg", "label": "pear"}]}]})
w("manifest", "ok-local-with-lists.json", local)
old = {k: v for k, v in man.items() if k not in ("model_sha256", "fingerprint", "splitter")}
w("manifest", "ok-before-fingerprints.json", old)
w("manifest", "err-nan-error-rate.json", replace(man, '"max_error_rate": 0.05', '"max_error_rate": NaN'))
w("manifest", "err-infinite-error-rate.json", replace(man, '"max_error_rate": 0.05', '"max_error_rate": 1e999'))
w("manifest", "err-string-nan-error-rate.json", replace(man, '"max_error_rate": 0.05', '"max_error_rate": "NaN"'))
w("manifest", "err-negative-total.json", replace(man, '"total_images": 5000', '"total_images": -1'))
w("manifest", "err-total-over-u64.json", replace(man, '"total_images": 5000', '"total_images": 18446744073709551616'))
w("manifest", "err-deep-nesting.json", '{"run_id":"r","shards":' + "[" * 1000 + "]" * 1000 + "}")
w("manifest", "err-truncated.json", json.dumps(man)[:200])
w("manifest", "err-empty.json", "")

# --- a shard's image list
w("shard_list", "ok-list.json", [
    {"path": "apple/1.jpg", "label": "apple", "version": "\"9b2cf535f27731c974343645a3985328\""},
    {"path": "a b/c%20d.png", "label": "a b", "version": "42:1767323045"}])
w("shard_list", "ok-before-versions.json", [{"path": "c/000.jpg", "label": "c"}])
w("shard_list", "ok-empty.json", [])
w("shard_list", "ok-control-characters.json", [{"path": "x/\u001b[31mred\u0007.jpg", "label": "x\r", "version": ""}])
w("shard_list", "err-missing-label.json", [{"path": "c/000.jpg"}])
w("shard_list", "err-invalid-utf8.json", b'[{"path":"c/\xff\xfe.jpg","label":"c"}]')
w("shard_list", "err-lone-surrogate.json", '[{"path":"c/\\ud800.jpg","label":"c"}]')
w("shard_list", "err-object-not-list.json", {"path": "c/000.jpg", "label": "c"})

# --- the queue messages
w("shard_message", "ok-basic.json", {"run_id": "run-0123456789abcdef", "shard": 0})
w("shard_message", "ok-largest-shard.json", {"run_id": "demo", "shard": 18446744073709551615})
w("shard_message", "err-unknown-field.json", {"run_id": "demo", "shard": 1, "extra": True})
w("shard_message", "err-negative-shard.json", '{"run_id":"demo","shard":-1}')
w("shard_message", "err-fractional-shard.json", '{"run_id":"demo","shard":1.5}')
w("shard_message", "err-string-shard.json", '{"run_id":"demo","shard":"1"}')
w("shard_message", "err-shard-over-u64.json", '{"run_id":"demo","shard":18446744073709551616}')
w("shard_message", "err-nan-shard.json", '{"run_id":"demo","shard":NaN}')
w("reduce_message", "ok-basic.json", {"run_id": "run-0123456789abcdef", "claimed_by_shard": 3})
w("reduce_message", "err-unknown-field.json", {"run_id": "demo", "claimed_by_shard": 1, "shard": 1})
w("reduce_message", "err-missing-claim.json", {"run_id": "demo"})
w("reduce_message", "err-infinite-claim.json", '{"run_id":"demo","claimed_by_shard":1e999}')

# --- the run request (its ceilings are checked after decoding, by the splitter)
w("run_request", "ok-minimal.json", {"input_prefix": "images/"})
w("run_request", "ok-every-field.json", {
    "input_prefix": "images/", "run_id": "my-run", "k": 20, "variance": 0.9, "convention": "uncentered",
    "shard_size": 512, "shard_count": 4, "image_glob": "*.png", "max_pixels": 1000000, "max_error_rate": 0.1})
w("run_request", "any-huge-max-pixels.json", {"input_prefix": "images/", "max_pixels": 1000000000000})
w("run_request", "any-zero-shard-size.json", {"input_prefix": "images/", "shard_size": 0})
w("run_request", "any-parent-prefix.json", {"input_prefix": "../runs/"})
w("run_request", "any-internal-prefix.json", {"input_prefix": "runs/"})
w("run_request", "err-unknown-field.json", {"input_prefix": "images/", "kk": 3})
w("run_request", "err-nan-variance.json", '{"input_prefix":"images/","variance":NaN}')
w("run_request", "err-infinite-variance.json", '{"input_prefix":"images/","variance":1e999}')
w("run_request", "err-string-nan-variance.json", '{"input_prefix":"images/","variance":"NaN"}')
w("run_request", "err-infinite-error-rate.json", '{"input_prefix":"images/","max_error_rate":-1e400}')
w("run_request", "err-float-max-pixels.json", '{"input_prefix":"images/","max_pixels":1e12}')
w("run_request", "err-negative-k.json", '{"input_prefix":"images/","k":-1}')
w("run_request", "err-unknown-convention.json", '{"input_prefix":"images/","convention":"sideways"}')
w("run_request", "err-deep-nesting.json", '{"input_prefix":' + "[" * 2000)
w("run_request", "err-no-prefix.json", {"k": 3})
w("run_request", "ok-image-bytes.json", {"input_prefix": "images/", "max_image_bytes": 1048576})
w("run_request", "any-huge-image-bytes.json", {"input_prefix": "images/", "max_image_bytes": 18446744073709551615})
w("run_request", "any-huge-shard-count.json", {"input_prefix": "images/", "shard_count": 18446744073709551615})
w("run_request", "err-negative-image-bytes.json", '{"input_prefix":"images/","max_image_bytes":-1}')

# --- the done marker
marker = {"shard": 3, "attempt": "a-1767323045000-5f0c", "part_sha256": H2, "images": 4, "rows": 3, "errors": 1,
          "timings": {"fetch_s": 0.5, "decode_s": 0.25, "resize_s": 0.125, "infer_s": 2.0, "write_s": 0.1,
                      "wall_s": 1.5, "fetch_wait_s": 0.01},
          "cost": {"duration_ms": 1500.0, "memory_mb": 3008}, "finished_at_ms": 1767323045250,
          "error_list": [{"path": "c/1.jpg", "label": "c", "kind": "decode", "reason": "not a JPEG"}]}
w("done_marker", "ok-basic.json", marker)
older = {k: v for k, v in marker.items() if k not in ("error_list", "finished_at_ms")}
older["timings"] = {k: v for k, v in marker["timings"].items() if k != "fetch_wait_s"}
older["cost"] = {"duration_ms": 3.5, "memory_mb": None}
w("done_marker", "ok-before-error-lists.json", older)
w("done_marker", "err-nan-timing.json", replace(marker, '"infer_s": 2.0', '"infer_s": NaN'))
w("done_marker", "err-infinite-cost.json", replace(marker, '"duration_ms": 1500.0', '"duration_ms": 1e309'))
w("done_marker", "err-unknown-error-kind.json", replace(marker, '"kind": "decode"', '"kind": "meltdown"'))
checked = dict(marker, stats_sha256=H1, errors_sha256=H2)
w("done_marker", "ok-with-checksums.json", checked)
w("done_marker", "err-checksum-not-a-string.json", dict(marker, stats_sha256=12))
w("done_marker", "any-checksum-not-hex.json", dict(marker, errors_sha256="../../etc"))

w("barrier_node", "ok-basic.json", {"level": 3, "index": 7, "by_shard": 58, "token": "shard-58-a1", "at_ms": 1767323045250})
w("barrier_node", "err-negative-level.json", {"level": -1, "index": 7, "by_shard": 58, "token": "t", "at_ms": 1})
w("barrier_node", "err-level-over-u32.json", {"level": 4294967296, "index": 0, "by_shard": 0, "token": "t", "at_ms": 1})
w("barrier_node", "err-missing-token.json", {"level": 1, "index": 0, "by_shard": 0, "at_ms": 1})

health = {"ok": False, "expected_sha256": H1, "loaded_sha256": H2, "model_path": "/opt/model/m.onnx",
          "at": "2026-01-02T03:04:05Z", "at_unix": 1767323045}
w("model_health", "ok-mismatch.json", health)
w("model_health", "ok-healthy.json", dict(health, ok=True, loaded_sha256=H1))
w("model_health", "err-ok-not-bool.json", dict(health, ok="no"))
w("model_health", "err-negative-time.json", dict(health, at_unix=-5))

# --- a collection's documents
delta = {"collection": "fruit", "id": "1767323045000-00000000deadbeef", "written_at_ms": 1767323045000, "entries": [
    {"op": "upsert", "path": "apple/1.jpg", "label": "apple", "etag": "\"abc\"", "row": 0},
    {"op": "failed", "path": "apple/2.jpg", "label": "apple", "etag": "\"def\"", "kind": "decode",
     "reason": "not a JPEG"},
    {"op": "removed", "path": "pear/3.jpg"}]}
w("delta", "ok-three-kinds.json", delta)
w("delta", "ok-empty.json", {"collection": "c", "id": "x", "written_at_ms": 0, "entries": []})
w("delta", "err-unknown-op.json", replace(delta, '"op": "removed"', '"op": "renamed"'))
w("delta", "err-missing-op.json", {"collection": "c", "id": "x", "written_at_ms": 0, "entries": [{"path": "a"}]})
w("delta", "err-negative-row.json", replace(delta, '"row": 0', '"row": -5'))
w("delta", "err-deep-nesting.json",
  '{"collection":"c","id":"x","written_at_ms":0,"entries":' + '[{"op":"upsert","path":' * 500)

ptr = {"collection": "fruit", "snapshot": "s-1767323045000-1a2b", "seq": 7,
       "results": "collections/fruit/snapshots/s/Results/", "results_pca": "collections/fruit/snapshots/s/Results_PCA/",
       "pca_model": "collections/fruit/snapshots/s/pca.json", "summary": "collections/fruit/snapshots/s/summary.json",
       "errors": "collections/fruit/snapshots/s/errors.json", "published_at": "2026-01-02T03:04:05Z",
       "published_at_ms": 1767323045000}
w("current_pointer", "ok-basic.json", ptr)
w("current_pointer", "ok-no-pca.json", dict(ptr, pca_model=None))
w("current_pointer", "err-missing-snapshot.json", {k: v for k, v in ptr.items() if k != "snapshot"})
w("current_pointer", "err-negative-seq.json", replace(ptr, '"seq": 7', '"seq": -7'))
w("current_pointer", "err-seq-float.json", replace(ptr, '"seq": 7', '"seq": 1e30'))

index = {"entries": {"apple/1.jpg": {"etag": "\"abc\"", "label": "apple", "part": "part-00000.parquet"},
                     "apple/2.jpg": {"etag": "\"def\"", "label": "apple", "error": ["decode", "not a JPEG"]}},
         "parts": {"part-00000.parquet": 1}}
w("collection_index", "ok-basic.json", index)
w("collection_index", "ok-empty.json", {"entries": {}, "parts": {}})
w("collection_index", "err-negative-rows.json", {"entries": {}, "parts": {"p": -1}})
w("collection_index", "err-error-not-a-pair.json",
  {"entries": {"a": {"etag": "e", "label": "l", "error": ["decode"]}}, "parts": {}})
w("collection_index", "err-unknown-error-kind.json",
  {"entries": {"a": {"etag": "e", "label": "l", "error": ["gremlins", "x"]}}, "parts": {}})

summary = {"collection": "fruit", "snapshot": "s-1", "seq": 2, "rows": 10, "errors": 1, "deltas": 3,
           "changed_paths": 4, "added": 2, "replaced": 1, "removed": 1, "pending": 0, "k": 5, "k_requested": 50,
           "cumulative_explained_variance": 0.87, "resolve_s": 0.1, "fit_s": 0.2, "publish_s": 0.3,
           "total_s": 0.7, "published_at": "2026-01-02T03:04:05Z", "published_at_ms": 1767323045000,
           "based_on": "s-0", "warnings": ["k clamped to 5"]}
w("refit_summary", "ok-basic.json", summary)
w("refit_summary", "ok-older.json",
  {k: v for k, v in summary.items() if k not in ("published_at_ms", "based_on", "warnings", "k_requested")})
w("refit_summary", "err-nan-variance.json",
  replace(summary, '"cumulative_explained_variance": 0.87', '"cumulative_explained_variance": NaN'))
w("refit_summary", "err-infinite-time.json", replace(summary, '"total_s": 0.7', '"total_s": -1e999'))

w("refit_message", "ok-basic.json", {"collection": "fruit", "force": True})
w("refit_message", "ok-without-force.json", {"collection": "fruit"})
w("refit_message", "any-hostile-name.json", {"collection": "../runs", "force": False})
w("refit_message", "err-force-not-bool.json", {"collection": "fruit", "force": "yes"})

w("refit_start", "ok-basic.json", {"receive_count": 2, "at_unix": 1767323045})
w("refit_start", "err-count-over-u32.json", {"receive_count": 4294967296, "at_unix": 1})
w("refit_failure", "ok-basic.json", {"receive_count": 3, "error": "pca: need at least 2 feature rows", "at_unix": 1767323045})
w("refit_failure", "err-missing-error.json", {"receive_count": 3, "at_unix": 1})

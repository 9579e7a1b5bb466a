//! The fuzz tests' inputs: edits of the corpus (see `tests/fuzz_decoders/main.rs`), byte-level
//! for every format, 8-byte words for the statistics, node-level for JSON.

use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::Value;

use engine::stats::MAX_DIM;

/// A position or a choice, scaled to what it picks from (as proptest's `sample::Index`, which
/// cannot be built by hand): shrinks towards the first.
pub type Pick = usize;

/// Scales `raw` to `0..len` (`len` > 0).
pub fn pick(raw: Pick, len: usize) -> usize {
    ((len as u128 * raw as u128) >> usize::BITS) as usize
}

/// One edit of a seed.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Cut the input at a position.
    Truncate(Pick),
    /// Set one byte.
    SetByte(Pick, u8),
    /// Remove up to n bytes from a position.
    Remove(Pick, u8),
    /// Insert a dictionary token at a position.
    Insert(Pick, Pick),
    /// Overwrite the 8-byte word at an aligned position with a dictionary word (binary).
    Word(Pick, Pick),
    /// Replace a JSON node with a raw token (NaN, 1e999, deep nesting, ...).
    Replace(Pick, Pick),
    /// Remove a JSON node (a field or an element).
    Delete(Pick),
    /// Add an unknown field, valued with a raw token, to a JSON object.
    AddField(Pick, Pick),
}

/// Edits weighted by format: 8-byte words for the statistics (so that most inputs keep
/// their length and reach the value checks), node edits for JSON (so that most stay JSON).
pub fn mutation(binary: bool) -> impl Strategy<Value = Mutation> {
    let (word, node) = if binary { (8, 0) } else { (0, 6) };
    prop_oneof![
        1 => any::<Pick>().prop_map(Mutation::Truncate),
        1 => (any::<Pick>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        1 => (any::<Pick>(), any::<u8>()).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => (any::<Pick>(), any::<Pick>()).prop_map(|(i, t)| Mutation::Insert(i, t)),
        word => (any::<Pick>(), any::<Pick>()).prop_map(|(i, t)| Mutation::Word(i, t)),
        node => (any::<Pick>(), any::<Pick>()).prop_map(|(i, t)| Mutation::Replace(i, t)),
        node / 2 => any::<Pick>().prop_map(Mutation::Delete),
        node / 3 => (any::<Pick>(), any::<Pick>()).prop_map(|(i, t)| Mutation::AddField(i, t)),
    ]
}

/// 8-byte words for the statistics: non-finite and extreme floats, and counts and
/// dimensions at and around every bound.
pub fn binary_words() -> Vec<[u8; 8]> {
    let floats = [
        f64::NAN,
        -f64::NAN,
        f64::from_bits(0x7ff0_0000_0000_0001), // a signalling NaN
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE / 2.0, // subnormal
        -0.0,
        -1.0,
        1e300,
    ];
    let words = [
        0u64,
        1,
        2,
        3,
        u64::MAX,
        u64::MAX / 8,
        1 << 32,
        1 << 61,
        1 << 63,
        MAX_DIM as u64,
        MAX_DIM as u64 + 1,
        3_037_000_500, // dim * dim overflows 63 bits
    ];
    floats
        .iter()
        .map(|f| f.to_le_bytes())
        .chain(words.iter().map(|w| w.to_le_bytes()))
        .collect()
}

/// Raw JSON tokens, by the kind of node they replace: numbers (what JSON cannot hold — NaN,
/// infinities — and numbers out of every integer type's range), strings (NaN-like, path
/// escapes, control characters, a lone surrogate, the formats' own tags), and anything
/// (other types, deep nesting, invalid UTF-8).
pub struct JsonTokens {
    /// Replace numbers.
    pub numbers: Vec<Vec<u8>>,
    /// Replace strings.
    pub strings: Vec<Vec<u8>>,
    /// Replace anything, or are inserted anywhere (numbers and strings included).
    pub all: Vec<Vec<u8>>,
}

pub fn json_tokens() -> &'static JsonTokens {
    static TOKENS: OnceLock<JsonTokens> = OnceLock::new();
    TOKENS.get_or_init(|| {
        let bytes = |list: &[&str]| -> Vec<Vec<u8>> {
            list.iter().map(|t| t.as_bytes().to_vec()).collect()
        };
        let numbers = bytes(&[
            "NaN",
            "-NaN",
            "Infinity",
            "-Infinity",
            "inf",
            "1e999",
            "-1e999",
            "1e308",
            "4.9e-324",
            "-0",
            "-0.0",
            "0",
            "1",
            "2",
            "-1",
            "1.5",
            "0.5",
            "1e12",
            "65536",
            "4294967295",
            "4294967296",
            "9007199254740993",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775809",
            "340282366920938463463374607431768211456",
        ]);
        let strings = bytes(&[
            "\"NaN\"",
            "\"Infinity\"",
            "\"\"",
            "\".\"",
            "\"..\"",
            "\"../../etc/passwd\"",
            "\"/abs\"",
            "\"runs/\"",
            "\"staging/\"",
            "\"collections/\"",
            "\"\\u0000\\u001b[31m\\r\"",
            "\"\\ud800\"",
            "\"\u{e9}t\u{e9} \u{1f600}\"",
            "\"upsert\"",
            "\"failed\"",
            "\"removed\"",
            "\"decode\"",
            "\"too_large\"",
            "\"centered\"",
            "\"uncentered\"",
            "\"2026-01-02T03:04:05Z\"",
            "\"9999-99-99T99:99:99Z\"",
            "\"1767323045000-00000000deadbeef\"",
            "\"-\"",
        ]);
        let mut all = bytes(&[
            "null",
            "true",
            "false",
            "[]",
            "{}",
            "[1,2,3]",
            "{\"a\":1}",
            "[\"decode\",\"x\"]",
        ]);
        all.push(format!("{}1{}", "[".repeat(200), "]".repeat(200)).into_bytes());
        all.push("[".repeat(100_000).into_bytes());
        all.push(format!("{}1{}", "{\"a\":".repeat(1_000), "}".repeat(1_000)).into_bytes());
        all.push(format!("\"{}\"", "a".repeat(20_000)).into_bytes());
        all.push(vec![0xff, 0xfe, 0x00]);
        all.extend(numbers.iter().cloned());
        all.extend(strings.iter().cloned());
        JsonTokens {
            numbers,
            strings,
            all,
        }
    })
}

/// A string no seed holds: a node replaced by it is then swapped for the raw token.
const MARK: &str = "\u{1}fuzz-token\u{1}";

/// Applies a node edit to a JSON document (unchanged if it does not parse).
/// A replaced number or string takes a token of its kind (so that most edits reach the
/// value checks rather than the type check); other nodes and added fields take any token.
fn edit_json(bytes: &[u8], node: Pick, edit: &Mutation, choice: Pick) -> Vec<u8> {
    let Ok(mut value) = serde_json::from_slice::<Value>(bytes) else {
        return bytes.to_vec();
    };
    let target = pick(node, count_nodes(&value));
    let mut counter = 0;
    let tokens = json_tokens();
    let mut kind = &tokens.all;
    edit_node(
        &mut value,
        target,
        &mut counter,
        edit,
        &mut |old: &Value| {
            if matches!(edit, Mutation::Replace(..)) {
                match old {
                    Value::Number(_) => kind = &tokens.numbers,
                    Value::String(_) => kind = &tokens.strings,
                    _ => {}
                }
            }
        },
    );
    let token = &kind[pick(choice, kind.len())];
    let text = serde_json::to_string(&value).expect("a Value encodes");
    let mark = serde_json::to_string(MARK).expect("a string encodes");
    let mut out = Vec::with_capacity(text.len() + token.len());
    let mut rest = text.as_bytes();
    while let Some(at) = rest.windows(mark.len()).position(|w| w == mark.as_bytes()) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(token);
        rest = &rest[at + mark.len()..];
    }
    out.extend_from_slice(rest);
    out
}

fn count_nodes(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        Value::Object(map) => map.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// Edits node number `target` (pre-order); true once done.
/// `seen` is shown the node before it is replaced.
fn edit_node(
    value: &mut Value,
    target: usize,
    counter: &mut usize,
    edit: &Mutation,
    seen: &mut dyn FnMut(&Value),
) -> bool {
    if *counter == target {
        seen(value);
        match (edit, &mut *value) {
            (Mutation::AddField(..), Value::Object(map)) => {
                map.insert("fuzz_unknown_field".into(), Value::String(MARK.into()));
            }
            (Mutation::Delete(_), _) => *value = Value::Null,
            _ => *value = Value::String(MARK.into()),
        }
        return true;
    }
    *counter += 1;
    let delete = matches!(edit, Mutation::Delete(_));
    match value {
        Value::Array(items) => {
            for i in 0..items.len() {
                if delete && *counter == target {
                    items.remove(i);
                    return true;
                }
                if edit_node(&mut items[i], target, counter, edit, seen) {
                    return true;
                }
            }
        }
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if delete && *counter == target {
                    map.remove(&key);
                    return true;
                }
                let child = map.get_mut(&key).expect("a listed key");
                if edit_node(child, target, counter, edit, seen) {
                    return true;
                }
            }
        }
        _ => {}
    }
    false
}

/// Applies the mutations to a seed.
pub fn mutate(seed: &[u8], mutations: &[Mutation], binary: bool) -> Vec<u8> {
    let words = binary_words();
    let tokens: Vec<Vec<u8>> = if binary {
        words
            .iter()
            .map(|w| w.to_vec())
            .chain([b"FSTATS01".to_vec(), b"FSUMS001".to_vec()])
            .collect()
    } else {
        json_tokens().all.clone()
    };
    let mut bytes = seed.to_vec();
    for m in mutations {
        // A position in 0..=len.
        let at = |raw: Pick, len: usize| pick(raw, len + 1);
        match *m {
            Mutation::Truncate(i) => bytes.truncate(at(i, bytes.len())),
            Mutation::SetByte(i, b) if !bytes.is_empty() => {
                let p = pick(i, bytes.len());
                bytes[p] = b;
            }
            Mutation::SetByte(..) => {}
            Mutation::Remove(i, n) => {
                let p = at(i, bytes.len());
                let end = (p + usize::from(n)).min(bytes.len());
                bytes.drain(p..end);
            }
            Mutation::Insert(i, t) => {
                let p = at(i, bytes.len());
                let token = &tokens[pick(t, tokens.len())];
                bytes.splice(p..p, token.iter().copied());
            }
            Mutation::Word(i, w) if bytes.len() >= 8 => {
                let p = 8 * pick(i, bytes.len() / 8);
                bytes[p..p + 8].copy_from_slice(&words[pick(w, words.len())]);
            }
            Mutation::Word(..) => {}
            Mutation::Replace(node, t) | Mutation::AddField(node, t) => {
                bytes = edit_json(&bytes, node, m, t);
            }
            Mutation::Delete(node) => bytes = edit_json(&bytes, node, m, 0),
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::stats::ShardStats;

    /// The mutators do what they say (so that the fuzzing above reaches past the parsers).
    #[test]
    fn mutations_reach_the_values() {
        let seed = br#"{"a":[1,{"b":2.5}],"c":"x"}"#;
        let numbers = &json_tokens().numbers;
        let nan = numbers.iter().position(|t| t == b"NaN").unwrap();
        // The raw value that picks `i` of `of`.
        let index = |i: usize, of: usize| {
            let raw = ((i as u128) << usize::BITS).div_ceil(of as u128) as usize;
            assert_eq!(pick(raw, of), i);
            raw
        };
        // Nodes in pre-order: root, a, 1, {b}, 2.5, c.
        let out = mutate(
            seed,
            &[Mutation::Replace(index(4, 6), index(nan, numbers.len()))],
            false,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":[1,{"b":NaN}],"c":"x"}"#
        );
        let out = mutate(seed, &[Mutation::Delete(index(2, 6))], false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":[{"b":2.5}],"c":"x"}"#
        );
        let stats = ShardStats::from_rows(&[&[1.0f32, 2.0][..], &[3.0, 5.0][..]], 2).to_bytes();
        let words = binary_words();
        let nan_word = words
            .iter()
            .position(|w| f64::from_le_bytes(*w).is_nan())
            .unwrap();
        let out = mutate(
            &stats,
            &[Mutation::Word(
                index(3, stats.len() / 8),
                index(nan_word, words.len()),
            )],
            true,
        );
        assert_eq!(out.len(), stats.len());
        assert!(f64::from_le_bytes(out[24..32].try_into().unwrap()).is_nan());
        assert!(crate::shard_stats(&out)
            .unwrap_err()
            .contains("mean[0] is not finite"));
    }
}

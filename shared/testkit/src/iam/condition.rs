//! The `Condition` blocks the IAM checker evaluates: `StringEquals` and `StringLike` on
//! `s3:prefix` (see the parent module); anything else is refused when the policy is read.

use serde_json::Value;

use super::wildcard_match;

/// The condition operators the checker evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionOp {
    /// Exact, case-sensitive.
    StringEquals,
    /// Case-sensitive, with `*` and `?`.
    StringLike,
}

/// The condition keys the checker models.
pub const CONDITION_KEYS: [&str; 1] = ["s3:prefix"];

/// One condition of a statement: `operator: {key: [values]}`; true when the request's
/// context has `key` and its value matches one of `values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// The operator.
    pub op: ConditionOp,
    /// The condition key (one of [`CONDITION_KEYS`]).
    pub key: String,
    /// The values (any may match).
    pub values: Vec<String>,
}

impl Condition {
    pub(super) fn holds(&self, context: &[(String, String)]) -> bool {
        let Some((_, value)) = context.iter().find(|(k, _)| *k == self.key) else {
            return false;
        };
        self.values.iter().any(|v| match self.op {
            ConditionOp::StringEquals => v == value,
            ConditionOp::StringLike => wildcard_match(v, value),
        })
    }

    /// Parses a statement's `Condition` block; `Err` says what the checker cannot evaluate.
    pub(super) fn parse_block(block: &Value) -> Result<Vec<Condition>, String> {
        let Some(ops) = block.as_object() else {
            return Err(format!("Condition must be an object, got {block}"));
        };
        let mut out = Vec::new();
        for (op, keys) in ops {
            let op = match op.as_str() {
                "StringEquals" => ConditionOp::StringEquals,
                "StringLike" => ConditionOp::StringLike,
                other => {
                    return Err(format!(
                        "condition operator {other} is not modelled by this checker (only \
                         StringEquals and StringLike); it would evaluate it wrongly"
                    ))
                }
            };
            let Some(keys) = keys.as_object().filter(|k| !k.is_empty()) else {
                return Err(format!(
                    "condition {op:?}: expected {{key: values}}, got {keys}"
                ));
            };
            for (key, values) in keys {
                if !CONDITION_KEYS.contains(&key.as_str()) {
                    return Err(format!(
                        "condition key {key} is not modelled by this checker (only {CONDITION_KEYS:?})"
                    ));
                }
                let values: Vec<String> = match values {
                    Value::String(v) => vec![v.clone()],
                    Value::Array(items) if !items.is_empty() => items
                        .iter()
                        .map(|i| {
                            i.as_str().map(str::to_string).ok_or_else(|| {
                                format!("condition {key}: values must be strings, got {i}")
                            })
                        })
                        .collect::<Result<_, _>>()?,
                    other => {
                        return Err(format!(
                            "condition {key}: expected a string or a non-empty list, got {other}"
                        ))
                    }
                };
                out.push(Condition {
                    op,
                    key: key.clone(),
                    values,
                });
            }
        }
        if out.is_empty() {
            return Err("an empty Condition block".into());
        }
        Ok(out)
    }
}

/// A request's context: condition keys and their values (e.g. `s3:prefix`).
pub type Context = Vec<(String, String)>;

#[cfg(test)]
mod tests {
    use super::super::{Decision, Policy, Statement};
    use serde_json::json;

    fn policy(statements: serde_json::Value) -> Policy {
        Policy {
            statements: statements
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(i, s)| Statement::from_json(s, i).unwrap())
                .collect(),
        }
    }

    #[test]
    fn prefix_conditions_are_evaluated() {
        let p = policy(json!([
            {"Sid": "List", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b",
                "Condition": {"StringLike": {"s3:prefix": ["images/*", "runs/*/done/*"]}}},
            {"Sid": "Exact", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b",
                "Condition": {"StringEquals": {"s3:prefix": "exact/"}}}
        ]));
        let ctx = |prefix: &str| vec![("s3:prefix".to_string(), prefix.to_string())];
        let list = |prefix: &str| p.evaluate_with("s3:ListBucket", "arn:aws:s3:::b", &ctx(prefix));
        assert_eq!(list("images/"), Decision::Allowed(vec!["List".into()]));
        assert!(list("images/cats/x.jpg").is_allowed());
        assert!(list("runs/r1/done/").is_allowed());
        assert_eq!(list("exact/"), Decision::Allowed(vec!["Exact".into()]));
        for outside in [
            "",
            "imagesX/",
            "runs/",
            "runs/r1/",
            "staging/",
            "exact/more/",
            "Images/",
        ] {
            assert_eq!(list(outside), Decision::ImplicitDeny, "{outside:?}");
        }
        // No s3:prefix in the request: the condition does not hold.
        assert_eq!(
            p.evaluate("s3:ListBucket", "arn:aws:s3:::b"),
            Decision::ImplicitDeny
        );
    }
}

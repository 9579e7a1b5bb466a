//! IAM as AWS enforces it, for the tests: identity policies evaluated with AWS's matching
//! rules, and wrappers of the two ports that check every call against a function's role
//! before making it.
//!
//! Evaluation follows the IAM policy evaluation logic for a single identity policy set: an
//! explicit `Deny` wins, else any matching `Allow` allows, else the request is implicitly
//! denied. `Action`/`NotAction` patterns match case-insensitively, `Resource`/`NotResource`
//! case-sensitively, both with the `*` and `?` wildcards; in an ARN a wildcard does not cross
//! the `:` between the first six segments. `Condition` blocks are evaluated in their simple
//! forms only: `StringEquals` and `StringLike` (case-sensitive, `*`/`?` in `StringLike`) on
//! `s3:prefix`, a key present in the request's context; any other operator, key, set
//! operator (`ForAnyValue:`/`ForAllValues:`) or `...IfExists` is refused when the policy is
//! read, so nothing is evaluated wrongly. A condition whose key the request does not carry
//! does not match (AWS: a missing key fails every operator but the negated and `IfExists`
//! ones).
//!
//! The request context: a ListObjectsV2 carries `s3:prefix` = its prefix (empty included).
//! S3's check of `s3:ListBucket` before it answers 404 for a missing key is evaluated with
//! `s3:prefix` = that key (Ceph RGW matched AWS on this: ceph/ceph#68577).
//!
//! What each port call needs comes from the adapters' own tables, [`aws::sdk::s3_access`]
//! and [`aws::sdk::sqs_access`], so a wrapped store asks for exactly the permissions the S3
//! adapter would need, including S3's rule that reading a missing key answers 403 instead of
//! 404 to a caller without `s3:ListBucket`.

use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::Value;
use thiserror::Error;

use aws::sdk::{s3_access, sqs_access, QueueCall, StoreCall};
use pipeline::ports::queue::{Queue, QueueError};
use pipeline::ports::store::{ObjectInfo, ObjectStore, StoreError, Versioned};

/// A policy that cannot be evaluated faithfully.
#[derive(Debug, Error, PartialEq)]
pub enum PolicyError {
    /// A statement is malformed.
    #[error("statement {sid}: {reason}")]
    Invalid {
        /// The statement's Sid (or its position).
        sid: String,
        /// What is wrong.
        reason: String,
    },
}

/// Allow or Deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Grants.
    Allow,
    /// Takes away, whatever else allows.
    Deny,
}

/// The patterns of `Action`/`Resource` (the listed ones match) or of `NotAction`/`NotResource`
/// (everything but the listed ones matches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Patterns {
    /// `Action` / `Resource`.
    Listed(Vec<String>),
    /// `NotAction` / `NotResource`.
    AllBut(Vec<String>),
}

impl Patterns {
    fn matches(&self, value: &str, one: fn(&str, &str) -> bool) -> bool {
        match self {
            Patterns::Listed(list) => list.iter().any(|p| one(p, value)),
            Patterns::AllBut(list) => !list.iter().any(|p| one(p, value)),
        }
    }

    /// The patterns, whichever kind.
    pub fn items(&self) -> &[String] {
        match self {
            Patterns::Listed(list) | Patterns::AllBut(list) => list,
        }
    }

    /// The same kind with other patterns.
    pub fn with_items(&self, items: Vec<String>) -> Self {
        match self {
            Patterns::Listed(_) => Patterns::Listed(items),
            Patterns::AllBut(_) => Patterns::AllBut(items),
        }
    }
}

mod condition;
pub use condition::{Condition, ConditionOp, Context, CONDITION_KEYS};

/// One statement of an identity policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Its `Sid` (or `#<position>` when it has none).
    pub sid: String,
    /// Allow or Deny.
    pub effect: Effect,
    /// `Action` or `NotAction`.
    pub actions: Patterns,
    /// `Resource` or `NotResource`.
    pub resources: Patterns,
    /// Its `Condition` block: all must hold (empty: none).
    pub conditions: Vec<Condition>,
}

impl Statement {
    /// Parses a statement (JSON, intrinsic functions already resolved). `position` names it
    /// when it has no `Sid`.
    pub fn from_json(value: &Value, position: usize) -> Result<Self, PolicyError> {
        let sid = value
            .get("Sid")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("#{position}"));
        let invalid = |reason: String| PolicyError::Invalid {
            sid: sid.clone(),
            reason,
        };
        let effect = match value.get("Effect").and_then(Value::as_str) {
            Some("Allow") => Effect::Allow,
            Some("Deny") => Effect::Deny,
            other => {
                return Err(invalid(format!(
                    "Effect must be Allow or Deny, got {other:?}"
                )))
            }
        };
        let conditions = match value.get("Condition") {
            Some(block) => Condition::parse_block(block).map_err(&invalid)?,
            None => Vec::new(),
        };
        if value.get("Principal").is_some() || value.get("NotPrincipal").is_some() {
            return Err(invalid(
                "Principal belongs in resource policies, not in a role's policy".into(),
            ));
        }
        let patterns = |plain: &str, not: &str| -> Result<Patterns, PolicyError> {
            let list = |v: &Value| -> Result<Vec<String>, PolicyError> {
                match v {
                    Value::String(s) => Ok(vec![s.clone()]),
                    Value::Array(items) => items
                        .iter()
                        .map(|i| {
                            i.as_str().map(str::to_string).ok_or_else(|| {
                                invalid(format!("{plain}: every item must be a string, got {i}"))
                            })
                        })
                        .collect(),
                    other => Err(invalid(format!(
                        "{plain}: expected a string or a list, got {other}"
                    ))),
                }
            };
            match (value.get(plain), value.get(not)) {
                (Some(v), None) => Ok(Patterns::Listed(list(v)?)),
                (None, Some(v)) => Ok(Patterns::AllBut(list(v)?)),
                _ => Err(invalid(format!("needs exactly one of {plain} and {not}"))),
            }
        };
        Ok(Self {
            effect,
            actions: patterns("Action", "NotAction")?,
            resources: patterns("Resource", "NotResource")?,
            conditions,
            sid,
        })
    }

    /// Whether the statement applies to `action` on `resource` (with no condition key).
    pub fn applies(&self, action: &str, resource: &str) -> bool {
        self.applies_with(action, resource, &[])
    }

    /// Whether the statement applies to `action` on `resource` in `context`.
    pub fn applies_with(&self, action: &str, resource: &str, context: &[(String, String)]) -> bool {
        self.actions.matches(action, action_matches)
            && self.resources.matches(resource, arn_matches)
            && self.conditions.iter().all(|c| c.holds(context))
    }
}

/// The identity policies of one role, as one list of statements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Every statement of every policy attached to the role.
    pub statements: Vec<Statement>,
}

/// The outcome of evaluating one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by these statements (Sids).
    Allowed(Vec<String>),
    /// No statement allows it.
    ImplicitDeny,
    /// Denied by this statement (Sid).
    ExplicitDeny(String),
}

impl Decision {
    /// Whether the request is allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed(_))
    }
}

impl Policy {
    /// AWS's evaluation for one identity: explicit Deny, else Allow, else implicit deny.
    pub fn evaluate(&self, action: &str, resource: &str) -> Decision {
        self.evaluate_with(action, resource, &[])
    }

    /// [`Self::evaluate`] for a request whose context carries condition keys.
    pub fn evaluate_with(
        &self,
        action: &str,
        resource: &str,
        context: &[(String, String)],
    ) -> Decision {
        let applying = || {
            self.statements
                .iter()
                .filter(|s| s.applies_with(action, resource, context))
        };
        if let Some(deny) = applying().find(|s| s.effect == Effect::Deny) {
            return Decision::ExplicitDeny(deny.sid.clone());
        }
        let allowed: Vec<String> = applying()
            .filter(|s| s.effect == Effect::Allow)
            .map(|s| s.sid.clone())
            .collect();
        if allowed.is_empty() {
            Decision::ImplicitDeny
        } else {
            Decision::Allowed(allowed)
        }
    }
}

/// `*` (any run of characters, including none) and `?` (one character) wildcards.
pub fn wildcard_match(pattern: &str, value: &str) -> bool {
    let (p, v): (Vec<char>, Vec<char>) = (pattern.chars().collect(), value.chars().collect());
    // Iterative matching with backtracking to the last `*`.
    let (mut pi, mut vi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, vi));
            pi += 1;
        } else if let Some((sp, sv)) = star {
            pi = sp + 1;
            vi = sv + 1;
            star = Some((sp, sv + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// An `Action` pattern against an action (`service:Name`): case-insensitive.
pub fn action_matches(pattern: &str, action: &str) -> bool {
    wildcard_match(&pattern.to_ascii_lowercase(), &action.to_ascii_lowercase())
}

/// A `Resource` pattern against an ARN: `*` alone matches everything; otherwise the six ARN
/// segments (`arn:partition:service:region:account:resource`) match one by one, so a
/// wildcard does not cross the colons between them (the resource part may hold colons).
pub fn arn_matches(pattern: &str, arn: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let p: Vec<&str> = pattern.splitn(6, ':').collect();
    let a: Vec<&str> = arn.splitn(6, ':').collect();
    p.len() == 6 && a.len() == 6 && p.iter().zip(&a).all(|(p, a)| wildcard_match(p, a))
}

/// A request that was refused.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("AccessDenied: {role} role lacks {action} on {resource}{}", explicit_note(.explicit))]
pub struct AccessDenied {
    /// The role (function) that asked.
    pub role: String,
    /// The IAM action.
    pub action: String,
    /// The resource ARN.
    pub resource: String,
    /// The Deny statement that refused it, if one did.
    pub explicit: Option<String>,
}

fn explicit_note(explicit: &Option<String>) -> String {
    explicit
        .as_ref()
        .map(|sid| format!(" (explicitly denied by statement {sid})"))
        .unwrap_or_default()
}

/// One checked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The IAM action.
    pub action: String,
    /// The resource ARN.
    pub resource: String,
    /// Its condition keys (`s3:prefix` of a listing).
    pub context: Context,
    /// What the role's policy said.
    pub decision: Decision,
}

/// A function's role: its policy, and the record of every request checked against it.
#[derive(Debug)]
pub struct Role {
    name: String,
    policy: Policy,
    log: Mutex<Vec<Request>>,
}

impl Role {
    /// A role named `name` (e.g. `reducer`) with `policy`.
    pub fn new(name: impl Into<String>, policy: Policy) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            policy,
            log: Mutex::new(Vec::new()),
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Evaluates and records one request.
    pub fn check(&self, action: &str, resource: &str) -> Result<(), AccessDenied> {
        self.check_with(action, resource, Vec::new())
    }

    /// Evaluates and records one request with its condition keys.
    pub fn check_with(
        &self,
        action: &str,
        resource: &str,
        context: Context,
    ) -> Result<(), AccessDenied> {
        let decision = self.policy.evaluate_with(action, resource, &context);
        let result = match &decision {
            Decision::Allowed(_) => Ok(()),
            Decision::ImplicitDeny | Decision::ExplicitDeny(_) => Err(AccessDenied {
                role: self.name.clone(),
                action: action.to_string(),
                resource: resource.to_string(),
                explicit: match &decision {
                    Decision::ExplicitDeny(sid) => Some(sid.clone()),
                    _ => None,
                },
            }),
        };
        self.log.lock().expect("iam log").push(Request {
            action: action.to_string(),
            resource: resource.to_string(),
            context,
            decision,
        });
        result
    }

    /// Every request checked so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().expect("iam log").clone()
    }

    /// The refused requests so far, each once, in order.
    pub fn denials(&self) -> Vec<AccessDenied> {
        let mut out: Vec<AccessDenied> = Vec::new();
        for r in self.requests() {
            if let Decision::ImplicitDeny | Decision::ExplicitDeny(_) = r.decision {
                let denied = AccessDenied {
                    role: self.name.clone(),
                    action: r.action,
                    resource: r.resource,
                    explicit: match r.decision {
                        Decision::ExplicitDeny(sid) => Some(sid),
                        _ => None,
                    },
                };
                if !out.contains(&denied) {
                    out.push(denied);
                }
            }
        }
        out
    }
}

/// An [`ObjectStore`] that checks every call against a role before making it, with the
/// permissions of [`aws::sdk::s3_access`].
#[derive(Debug, Clone)]
pub struct CheckedStore<S> {
    inner: S,
    role: Arc<Role>,
    bucket_arn: String,
}

impl<S: ObjectStore> CheckedStore<S> {
    /// `inner`, a store on the bucket `bucket_arn` (`arn:aws:s3:::name`), checked against `role`.
    pub fn new(inner: S, role: Arc<Role>, bucket_arn: impl Into<String>) -> Self {
        Self {
            inner,
            role,
            bucket_arn: bucket_arn.into(),
        }
    }

    /// The role it checks against.
    pub fn role(&self) -> &Arc<Role> {
        &self.role
    }

    fn denied(api: &'static str, key: &str, e: AccessDenied) -> StoreError {
        StoreError::Remote {
            op: api,
            key: key.to_string(),
            // Access denied is permanent: a retry cannot help.
            transient: false,
            source: Box::new(e),
        }
    }

    /// Checks `call` on `key` (the object, or the bucket for bucket-level calls), makes it,
    /// and, when `missing` says the key was not there, checks what S3 checks before it
    /// reveals that (s3:ListBucket), answering AccessDenied as S3 does.
    async fn call<T>(
        &self,
        call: StoreCall,
        key: &str,
        make: impl Future<Output = Result<T, StoreError>>,
        missing: impl Fn(&Result<T, StoreError>) -> bool,
    ) -> Result<T, StoreError> {
        let access = s3_access(call);
        let resource = if access.on_bucket {
            self.bucket_arn.clone()
        } else {
            format!("{}/{key}", self.bucket_arn)
        };
        // A listing carries its prefix; S3's check before it answers 404 for a missing key
        // carries the key as the prefix.
        let prefix = || vec![("s3:prefix".to_string(), key.to_string())];
        let context = if access.on_bucket {
            prefix()
        } else {
            Vec::new()
        };
        self.role
            .check_with(access.action, &resource, context)
            .map_err(|e| Self::denied(access.api, key, e))?;
        let result = make.await;
        if access.missing_key_needs_list && missing(&result) {
            self.role
                .check_with("s3:ListBucket", &self.bucket_arn, prefix())
                .map_err(|e| Self::denied(access.api, key, e))?;
        }
        result
    }
}

fn not_found<T>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::NotFound(_)))
}

fn never<T>(_: &Result<T, StoreError>) -> bool {
    false
}

impl<S: ObjectStore> ObjectStore for CheckedStore<S> {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.call(StoreCall::Get, key, self.inner.get(key), not_found)
            .await
    }
    async fn get_versioned(&self, key: &str) -> Result<Versioned, StoreError> {
        let read = self.inner.get_versioned(key);
        self.call(StoreCall::GetVersioned, key, read, not_found)
            .await
    }
    async fn get_bounded(
        &self,
        key: &str,
        version: &str,
        limit: u64,
    ) -> Result<Versioned, StoreError> {
        let read = self.inner.get_bounded(key, version, limit);
        self.call(StoreCall::Get, key, read, not_found).await
    }
    /// CopyObject: `s3:GetObject` on the source, then `s3:PutObject` on the target.
    async fn copy(&self, from: &str, to: &str) -> Result<u64, StoreError> {
        let source = async { Ok(()) };
        self.call(StoreCall::CopySource, from, source, never)
            .await?;
        let copy = self.inner.copy(from, to);
        self.call(StoreCall::Copy, to, copy, not_found).await
    }
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.call(StoreCall::Put, key, self.inner.put(key, body), never)
            .await
    }
    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> Result<bool, StoreError> {
        let write = self.inner.put_if_match(key, body, etag);
        self.call(StoreCall::PutIfMatch, key, write, never).await
    }
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, StoreError> {
        let make = self.inner.put_if_absent(key, body);
        self.call(StoreCall::PutIfAbsent, key, make, never).await
    }
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let missing = |r: &Result<bool, StoreError>| matches!(r, Ok(false));
        self.call(StoreCall::Exists, key, self.inner.exists(key), missing)
            .await
    }
    async fn head(&self, key: &str) -> Result<String, StoreError> {
        self.call(StoreCall::Head, key, self.inner.head(key), not_found)
            .await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.call(StoreCall::Delete, key, self.inner.delete(key), never)
            .await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.call(StoreCall::List, prefix, self.inner.list(prefix), never)
            .await
    }
    fn describe(&self, key: &str) -> String {
        self.inner.describe(key)
    }
}

/// A [`Queue`] that checks every send against a role, with the permissions of
/// [`aws::sdk::sqs_access`].
#[derive(Debug, Clone)]
pub struct CheckedQueue<Q> {
    inner: Q,
    role: Arc<Role>,
    queue_arn: String,
}

impl<Q: Queue> CheckedQueue<Q> {
    /// `inner`, the queue `queue_arn`, checked against `role`.
    pub fn new(inner: Q, role: Arc<Role>, queue_arn: impl Into<String>) -> Self {
        Self {
            inner,
            role,
            queue_arn: queue_arn.into(),
        }
    }

    fn check(&self, call: QueueCall) -> Result<(), QueueError> {
        let (api, action) = sqs_access(call);
        self.role
            .check(action, &self.queue_arn)
            .map_err(|e| QueueError::Remote {
                op: api,
                queue: self.queue_arn.clone(),
                source: Box::new(e),
            })
    }
}

impl<Q: Queue> Queue for CheckedQueue<Q> {
    async fn send_all(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        self.check(QueueCall::SendAll)?;
        self.inner.send_all(bodies).await
    }
    async fn send_delayed(&self, bodies: Vec<String>, delay_s: u32) -> Result<(), QueueError> {
        self.check(QueueCall::SendAll)?;
        self.inner.send_delayed(bodies, delay_s).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::ports::queue::InProcessQueue;
    use pipeline::ports::store::FsStore;
    use serde_json::json;

    fn policy(statements: Value) -> Policy {
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
    fn wildcards() {
        assert!(wildcard_match("runs/*", "runs/a/b/c.json"));
        assert!(wildcard_match(
            "runs/*/_reduce.lock",
            "runs/r1/_reduce.lock"
        ));
        assert!(!wildcard_match(
            "runs/*/_reduce.lock",
            "runs/r1/_reduce.claim"
        ));
        assert!(wildcard_match("a?c", "abc") && !wildcard_match("a?c", "ac"));
        assert!(wildcard_match("*", "") && wildcard_match("a**b", "ab"));
        assert!(wildcard_match("*a*b", "xxaxxbxb") && !wildcard_match("*a*b", "xxaxxbx"));
        assert!(!wildcard_match("Results/*", "Results_PCA/r/_SUCCESS"));
    }

    #[test]
    fn actions_are_case_insensitive_and_arns_segmented() {
        assert!(action_matches("s3:getobject", "s3:GetObject"));
        assert!(action_matches("sqs:*Message", "sqs:ReceiveMessage"));
        assert!(!action_matches("s3:Get*", "s3:PutObject"));
        assert!(arn_matches("arn:aws:s3:::b/*", "arn:aws:s3:::b/x/y"));
        assert!(!arn_matches("arn:aws:s3:::b/*", "arn:aws:s3:::b"));
        assert!(
            !arn_matches("arn:aws:s3:::B/*", "arn:aws:s3:::b/x"),
            "case-sensitive"
        );
        assert!(arn_matches(
            "arn:aws:sqs:*:123:q",
            "arn:aws:sqs:us-east-1:123:q"
        ));
        // A wildcard stays inside its segment.
        assert!(!arn_matches(
            "arn:aws:sqs:us-*",
            "arn:aws:sqs:us-east-1:123:q"
        ));
        assert!(arn_matches("*", "arn:aws:sqs:us-east-1:123:q"));
    }

    #[test]
    fn deny_wins_and_not_action_not_resource() {
        let p = policy(json!([
            {"Sid": "All", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": "arn:aws:s3:::b/*"},
            {"Sid": "NoSecrets", "Effect": "Deny", "Action": "s3:*", "Resource": ["arn:aws:s3:::b/secret/*"]},
            {"Sid": "AllButDelete", "Effect": "Allow", "NotAction": "s3:DeleteObject", "Resource": "arn:aws:s3:::c/*"},
            {"Effect": "Allow", "Action": "sqs:SendMessage", "NotResource": "arn:aws:sqs:us-east-1:1:private"}
        ]));
        assert_eq!(
            p.evaluate("s3:GetObject", "arn:aws:s3:::b/x"),
            Decision::Allowed(vec!["All".into()])
        );
        assert_eq!(
            p.evaluate("s3:GetObject", "arn:aws:s3:::b/secret/k"),
            Decision::ExplicitDeny("NoSecrets".into())
        );
        assert_eq!(
            p.evaluate("s3:DeleteObject", "arn:aws:s3:::b/x"),
            Decision::ImplicitDeny
        );
        assert!(p.evaluate("s3:PutObject", "arn:aws:s3:::c/x").is_allowed());
        assert!(!p
            .evaluate("s3:DeleteObject", "arn:aws:s3:::c/x")
            .is_allowed());
        assert_eq!(
            p.evaluate("sqs:SendMessage", "arn:aws:sqs:us-east-1:1:public"),
            Decision::Allowed(vec!["#3".into()])
        );
        assert!(!p
            .evaluate("sqs:SendMessage", "arn:aws:sqs:us-east-1:1:private")
            .is_allowed());
    }

    #[test]
    fn statements_that_cannot_be_evaluated_are_refused() {
        let bad = [
            json!({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*", "Condition": {}}),
            json!({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*",
                "Condition": {"StringNotLike": {"s3:prefix": "a/*"}}}),
            json!({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*",
                "Condition": {"StringLikeIfExists": {"s3:prefix": "a/*"}}}),
            json!({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*",
                "Condition": {"ForAnyValue:StringLike": {"s3:prefix": "a/*"}}}),
            json!({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*",
                "Condition": {"StringLike": {"aws:SourceIp": "1.2.3.4"}}}),
            json!({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*",
                "Condition": {"StringLike": {"s3:prefix": []}}}),
            json!({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*",
                "Condition": {"StringLike": {"s3:prefix": [3]}}}),
            json!({"Effect": "Permit", "Action": "s3:GetObject", "Resource": "*"}),
            json!({"Effect": "Allow", "Action": "s3:GetObject"}),
            json!({"Effect": "Allow", "Action": "s3:GetObject", "NotAction": "s3:PutObject", "Resource": "*"}),
        ];
        for s in bad {
            assert!(Statement::from_json(&s, 0).is_err(), "{s}");
        }
    }

    #[test]
    fn checked_store_asks_what_s3_asks_and_answers_403_for_missing_keys_without_list() {
        let dir = std::env::temp_dir().join(format!("iam-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let role = Role::new(
            "reducer",
            policy(json!([
                {"Sid": "Read", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/runs/*"},
                {"Sid": "Write", "Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::b/runs/*"}
            ])),
        );
        let store = CheckedStore::new(FsStore::new(&dir), role.clone(), "arn:aws:s3:::b");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            store
                .put("runs/r/a", Bytes::from_static(b"1"))
                .await
                .unwrap();
            assert!(store.exists("runs/r/a").await.unwrap());
            // Missing key, no s3:ListBucket: 403, not 404.
            let err = store.exists("runs/r/missing").await.unwrap_err();
            assert!(
                err.to_string()
                    .contains("AccessDenied: reducer role lacks s3:ListBucket on arn:aws:s3:::b"),
                "{err}"
            );
            let err = store.get("Results_PCA/r/_SUCCESS").await.unwrap_err();
            assert_eq!(
                err.to_string(),
                "s3 GetObject Results_PCA/r/_SUCCESS: AccessDenied: reducer role lacks \
                 s3:GetObject on arn:aws:s3:::b/Results_PCA/r/_SUCCESS"
            );
            assert!(store.list("runs/").await.is_err());
            assert!(store.delete("runs/r/a").await.is_err());
            let queue = CheckedQueue::new(
                InProcessQueue::new(),
                role.clone(),
                "arn:aws:sqs:us-east-1:1:q",
            );
            let err = queue.send_all(vec!["m".into()]).await.unwrap_err();
            assert!(
                err.to_string()
                    .contains("lacks sqs:SendMessage on arn:aws:sqs:us-east-1:1:q"),
                "{err}"
            );
        });
        let actions: Vec<(String, bool)> = role
            .requests()
            .into_iter()
            .map(|r| (r.action, r.decision.is_allowed()))
            .collect();
        let expect = |a: &str, ok| (a.to_string(), ok);
        assert_eq!(
            actions,
            vec![
                expect("s3:PutObject", true),
                expect("s3:GetObject", true),
                expect("s3:GetObject", true),
                expect("s3:ListBucket", false),
                expect("s3:GetObject", false),
                expect("s3:ListBucket", false),
                expect("s3:DeleteObject", false),
                expect("sqs:SendMessage", false),
            ]
        );
        assert_eq!(role.denials().len(), 4);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

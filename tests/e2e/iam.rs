//! IAM enforced: the three handlers run end to end on moto, each with its store and queues
//! wrapped by a checker ([`testkit::iam`]) that evaluates every S3 and SQS call against that
//! function's role as `template.yaml` declares it, with AWS's matching rules. The Lambda
//! service's own calls count too: the event-source-mapping loop checks ReceiveMessage,
//! GetQueueAttributes and DeleteMessage under the consuming function's role, and the
//! splitter's asynchronous-invocation harness sends to its on-failure destination under the
//! splitter's role.
//!
//! The template is read at run time ([`testkit::template`]: `FEATURIZE_TEMPLATE` overrides the
//! path) and its intrinsic functions are resolved for a test stack: a unique stack name,
//! moto's account (123456789012), us-east-1 and the `aws` partition. The bucket and the queues are created
//! with the names the template gives them, so the resolved ARNs are those of the test stack.
//! Only the queues' timings are shortened (visibility 2 s, 2 deliveries before the DLQ).
//!
//! `every_allow_statement_is_needed` replays the recorded requests of all scenarios against
//! the policy with each Allow statement, and each of its actions and resources, removed: each
//! removal must refuse at least one request a scenario made. Up to the first refused request
//! a run under the reduced policy makes the same calls, so that request would be refused in a
//! re-run too (`infra/iam-drop-statement.sh` re-runs the scenarios on edited templates).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws::lambda::{
    handle_featurizer_batch, handle_reduce_batch, handle_reducer_batch,
    handle_reducer_batch_requeuing, handle_shard_batch, handle_splitter_event,
    parse_splitter_event, Refitter,
};
use aws::sdk::{S3Store, SqsQueue, SQS_EVENT_SOURCE_ACTIONS};
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_s3::types::Event;
use pipeline::batch::featurizer::{FeaturizerSettings, ReduceClaim, ShardFeaturizer};
use pipeline::batch::inference::Engine;
use pipeline::batch::listing::ImageFilter;
use pipeline::batch::reducer::{ReduceLock, Reducer, ReducerSettings};
use pipeline::batch::splitter::{RequestBinding, SplitOutcome, Splitter};
use pipeline::continuous::collection::{collection_status, CollectionLayout, RefitOptions};
use pipeline::continuous::ingest::{IngestSettings, Ingestor};
use pipeline::layout::{request_binding, RunLayout};
use pipeline::manifest::{ReduceMessage, RunOptions, RunRequest, ShardMessage};
use pipeline::ports::queue::{Queue, QueueError};
use pipeline::ports::store::{Bytes, ObjectStore};
use serde_json::{json, Value};
use testkit::iam::{CheckedQueue, CheckedStore, Effect, Policy, Role, Statement};
use testkit::moto::{self, sqs_event, Moto, Notification, Redrive, ACCOUNT, REGION};
use testkit::template::{call, getatt, names, ref_name};

use crate::common::*;

mod checker;

const PARTITION: &str = "aws";
/// Test timings of the queues (the template's are minutes; the wiring is the template's).
const VISIBILITY_S: i32 = 3;
const MAX_RECEIVE_COUNT: u32 = 2;
/// Parameters a deployer would set: the featurizer reads images under `images/` only.
/// Requests may read only under `images/` too (the splitter's listing grant is conditioned on it).
const PARAMETER_OVERRIDES: &[(&str, &str)] =
    &[("InputPrefix", "images/"), ("InputPrefixes", "images/")];

// ---------------------------------------------------------------------------------------------
// The template, resolved for a test stack.
// ---------------------------------------------------------------------------------------------

/// What `!Ref`/`!GetAtt` of a created resource give.
#[derive(Debug, Clone)]
struct Created {
    reference: String,
    arn: String,
}

/// The template ([`testkit::template`]) with its intrinsic functions resolved for a test
/// stack.
struct Template {
    t: &'static testkit::template::Template,
    stack: String,
    params: BTreeMap<String, String>,
    /// Parameters of type `CommaDelimitedList`: `!Ref` gives a list.
    list_params: BTreeSet<String>,
    resources: HashMap<String, Created>,
}

/// `AWS::NoValue`, removed from lists and maps.
const NO_VALUE: &str = "\u{0}AWS::NoValue";

impl Template {
    fn load(stack: &str) -> Self {
        let t = testkit::template::template();
        let mut params = t.parameter_defaults();
        for (name, value) in PARAMETER_OVERRIDES {
            if params.contains_key(*name) {
                params.insert(name.to_string(), value.to_string());
            }
        }
        Self {
            t,
            stack: stack.to_string(),
            params,
            list_params: t.list_parameters(),
            resources: HashMap::new(),
        }
    }

    fn resource(&self, id: &str) -> &'static Value {
        self.t.resource(id)
    }

    fn of_type(&self, ty: &'static str) -> impl Iterator<Item = (&'static str, &'static Value)> {
        self.t.of_type(ty)
    }

    fn reference(&self, name: &str) -> String {
        match name {
            "AWS::StackName" => self.stack.clone(),
            "AWS::AccountId" => ACCOUNT.into(),
            "AWS::Region" => REGION.into(),
            "AWS::Partition" => PARTITION.into(),
            "AWS::URLSuffix" => "amazonaws.com".into(),
            "AWS::NoValue" => NO_VALUE.into(),
            _ => {
                if let Some(p) = self.params.get(name) {
                    return p.clone();
                }
                match self.resources.get(name) {
                    Some(c) => c.reference.clone(),
                    None => panic!("!Ref {name}: not a parameter with a default, a pseudo parameter, or a resource the test stack created"),
                }
            }
        }
    }

    fn getatt(&self, id: &str, attr: &str) -> String {
        assert_eq!(attr, "Arn", "!GetAtt {id}.{attr}: only Arn is modelled");
        match self.resources.get(id) {
            Some(c) => c.arn.clone(),
            None => panic!("!GetAtt {id}.Arn: not a resource the test stack created"),
        }
    }

    fn sub(&self, text: &str, vars: &HashMap<String, String>) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find("${") {
            out.push_str(&rest[..at]);
            let end = rest[at..].find('}').expect("unclosed ${ in !Sub") + at;
            let name = &rest[at + 2..end];
            if let Some(literal) = name.strip_prefix('!') {
                out.push_str(&format!("${{{literal}}}"));
            } else if let Some(v) = vars.get(name) {
                out.push_str(v);
            } else if let Some((id, attr)) = name.split_once('.') {
                out.push_str(&self.getatt(id, attr));
            } else {
                out.push_str(&self.reference(name));
            }
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        out
    }

    fn condition(&self, name: &str) -> bool {
        let c = &self.t["Conditions"][name];
        assert!(!c.is_null(), "no condition {name}");
        self.truth(c)
    }

    fn truth(&self, v: &Value) -> bool {
        let (name, arg) = call(v).unwrap_or_else(|| panic!("not a condition: {v:?}"));
        let args = || arg.as_array().expect("condition arguments").iter();
        match name {
            "Equals" => {
                let a: Vec<Value> = args().map(|x| self.resolve(x)).collect();
                a[0].to_string().trim_matches('"') == a[1].to_string().trim_matches('"')
            }
            "Not" => !self.truth(&arg.as_array().expect("!Not [cond]")[0]),
            "And" => args().all(|x| self.truth(x)),
            "Or" => args().any(|x| self.truth(x)),
            "Condition" => self.condition(arg.as_str().unwrap()),
            other => panic!("condition function {other} is not modelled"),
        }
    }

    /// The value with every intrinsic function resolved.
    fn resolve(&self, v: &Value) -> Value {
        if let Some((name, arg)) = call(v) {
            return self.resolve_call(name, arg);
        }
        match v {
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| self.resolve(i))
                    .filter(|i| i.as_str() != Some(NO_VALUE))
                    .collect(),
            ),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), self.resolve(v)))
                    .filter(|(_, v)| v.as_str() != Some(NO_VALUE))
                    .collect(),
            ),
            scalar => scalar.clone(),
        }
    }

    /// An intrinsic function's value: `name` (without `Fn::`) called on `arg`.
    fn resolve_call(&self, name: &str, arg: &Value) -> Value {
        let list = || arg.as_array().unwrap();
        match name {
            "Ref" => {
                let name = arg.as_str().expect("!Ref name");
                let value = self.reference(name);
                if self.list_params.contains(name) {
                    Value::Array(value.split(',').map(|v| Value::String(v.into())).collect())
                } else {
                    Value::String(value)
                }
            }
            "Split" => {
                let s = list();
                let text = match self.resolve(&s[1]) {
                    Value::String(t) => t,
                    other => panic!("!Split of {other}"),
                };
                Value::Array(
                    text.split(s[0].as_str().unwrap())
                        .map(|v| Value::String(v.into()))
                        .collect(),
                )
            }
            "GetAtt" => {
                let (id, attr) = match arg {
                    Value::Array(s) => (s[0].as_str().unwrap(), s[1].as_str().unwrap()),
                    other => other.as_str().unwrap().split_once('.').unwrap(),
                };
                Value::String(self.getatt(id, attr))
            }
            "Sub" => match arg {
                Value::Array(s) => {
                    let vars = s[1]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| {
                            let value = match self.resolve(v) {
                                Value::String(s) => s,
                                other => other.to_string(),
                            };
                            (k.clone(), value)
                        })
                        .collect();
                    Value::String(self.sub(s[0].as_str().unwrap(), &vars))
                }
                other => Value::String(self.sub(other.as_str().unwrap(), &HashMap::new())),
            },
            "If" => {
                let s = list();
                let pick = if self.condition(s[0].as_str().unwrap()) {
                    &s[1]
                } else {
                    &s[2]
                };
                self.resolve(pick)
            }
            "Join" => {
                let s = list();
                let parts: Vec<String> = match self.resolve(&s[1]) {
                    Value::Array(items) => items
                        .into_iter()
                        .map(|i| i.as_str().unwrap_or_default().to_string())
                        .collect(),
                    other => panic!("!Join of {other}"),
                };
                Value::String(parts.join(s[0].as_str().unwrap()))
            }
            other => panic!("intrinsic function {other} is not modelled by the IAM test"),
        }
    }

    fn resolve_str(&self, v: &Value) -> String {
        match self.resolve(v) {
            Value::String(s) => s,
            other => panic!("expected a string, got {other}"),
        }
    }

    /// The logical id of the function built from `binary` (Metadata.BuildProperties.Binary,
    /// else the last component of CodeUri).
    fn function(&self, binary: &str) -> String {
        let found: Vec<&str> = self
            .t
            .functions_built_from(binary)
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one {binary} function, found {found:?}"
        );
        found[0].to_string()
    }

    /// Every statement of the role of function `id`: its SAM `Policies` (inline statements
    /// only: a managed policy cannot be checked), or the policies of its explicit `Role`, plus
    /// what SAM attaches for SQS event sources (AWSLambdaSQSQueueExecutionRole).
    fn role_policy(&self, id: &str) -> Policy {
        let props = &self.resource(id)["Properties"];
        let mut documents: Vec<(String, Value)> = Vec::new();
        if !props["Role"].is_null() {
            let role_id = match call(&props["Role"]) {
                Some((_, Value::Array(s))) => s[0].as_str().unwrap(),
                Some((_, other)) => other.as_str().unwrap().split('.').next().unwrap(),
                None => panic!("{id}: Role must be !GetAtt <AWS::IAM::Role>.Arn"),
            };
            let role = &self.resource(role_id)["Properties"];
            assert!(
                role["ManagedPolicyArns"].is_null(),
                "{role_id}: managed policies cannot be checked"
            );
            for p in role["Policies"].as_array().into_iter().flatten() {
                documents.push((
                    format!("{role_id}/{}", p["PolicyName"].as_str().unwrap_or("?")),
                    self.resolve(&p["PolicyDocument"]),
                ));
            }
        }
        for (i, p) in props["Policies"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let doc = self.resolve(p);
            assert!(
                doc.get("Statement").is_some(),
                "{id}: Policies[{i}] is not an inline {{Statement: [...]}} (a managed policy or a SAM policy template cannot be checked): {doc}"
            );
            documents.push((format!("{id}/Policies[{i}]"), doc));
        }
        let mut statements = Vec::new();
        for (name, doc) in documents {
            let list = match &doc["Statement"] {
                Value::Array(items) => items.clone(),
                single => vec![single.clone()],
            };
            for (i, s) in list.iter().enumerate() {
                statements
                    .push(Statement::from_json(s, i).unwrap_or_else(|e| panic!("{name}: {e}")));
            }
        }
        for (event, e) in props["Events"].as_object().into_iter().flatten() {
            if e["Type"].as_str() == Some("SQS") {
                // SAM attaches the managed policy AWSLambdaSQSQueueExecutionRole.
                statements.push(
                    Statement::from_json(
                        &json!({
                            "Sid": format!("SAM-AWSLambdaSQSQueueExecutionRole({event})"),
                            "Effect": "Allow",
                            "Action": SQS_EVENT_SOURCE_ACTIONS,
                            "Resource": "*"
                        }),
                        0,
                    )
                    .unwrap(),
                );
            }
        }
        Policy { statements }
    }

    /// The ARNs of the queues function `id` consumes (its event-source mappings, or SAM SQS events).
    fn consumed_queues(&self, id: &str) -> Vec<String> {
        let mut found: Vec<String> = self
            .of_type("AWS::Lambda::EventSourceMapping")
            .filter(|(_, m)| names(&m["Properties"]["FunctionName"], id))
            .map(|(_, m)| self.resolve_str(&m["Properties"]["EventSourceArn"]))
            .collect();
        for (_, e) in self.resource(id)["Properties"]["Events"]
            .as_object()
            .into_iter()
            .flatten()
        {
            if e["Type"].as_str() == Some("SQS") {
                found.push(self.resolve_str(&e["Properties"]["Queue"]));
            }
        }
        assert!(!found.is_empty(), "{id} should consume a queue");
        found
    }

    /// The queue (logical id) the bucket notifies of inbox objects, and the inbox prefix.
    fn inbox_notification(&self) -> (String, String) {
        let (_, bucket) = self
            .of_type("AWS::S3::Bucket")
            .next()
            .expect("template.yaml has no AWS::S3::Bucket");
        let configs = bucket["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
            .as_array()
            .expect("the bucket notifies a queue of inbox objects (QueueConfigurations)");
        let events: Vec<String> = configs
            .iter()
            .map(|c| self.resolve_str(&c["Event"]))
            .collect();
        for wanted in ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"] {
            assert!(
                events.iter().any(|e| e == wanted),
                "no {wanted} notification: {events:?}"
            );
        }
        let queue = match getatt(&configs[0]["Queue"]) {
            Some((queue, _)) => queue.to_string(),
            None => panic!(
                "the inbox notification's Queue should be !GetAtt <queue>.Arn, got {:?}",
                configs[0]["Queue"]
            ),
        };
        let prefix = self.resolve_str(&configs[0]["Filter"]["S3Key"]["Rules"][0]["Value"]);
        (queue, prefix)
    }

    /// The on-failure destination of function `id`'s asynchronous invocations, and the
    /// retries before it (AWS::Lambda::EventInvokeConfig).
    fn on_failure(&self, id: &str) -> Option<(String, u32)> {
        self.of_type("AWS::Lambda::EventInvokeConfig")
            .find(|(_, c)| names(&c["Properties"]["FunctionName"], id))
            .and_then(|(_, c)| {
                let p = &c["Properties"];
                let destination = &p["DestinationConfig"]["OnFailure"]["Destination"];
                (!destination.is_null()).then(|| {
                    let retries = match self.resolve(&p["MaximumRetryAttempts"]) {
                        Value::Null => 2,
                        v => v.as_u64().or_else(|| v.as_str()?.parse().ok()).unwrap() as u32,
                    };
                    (self.resolve_str(destination), retries)
                })
            })
    }

    /// The queue (logical id) an environment variable of function `id` points at (`!Ref Q`).
    fn env_queue(&self, id: &str, var: &str) -> String {
        let v = &self.resource(id)["Properties"]["Environment"]["Variables"][var];
        match ref_name(v) {
            Some(queue) => queue.to_string(),
            None => panic!("{id}: {var} should be !Ref <queue>, got {v:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A test stack: the template's bucket and queues on moto, the three roles.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct QueueRef {
    url: String,
    arn: String,
}

struct Roles {
    splitter: Arc<Role>,
    featurizer: Arc<Role>,
    reducer: Arc<Role>,
}

impl Roles {
    fn all(&self) -> [&Arc<Role>; 3] {
        [&self.splitter, &self.featurizer, &self.reducer]
    }
}

struct Stack {
    moto: Moto,
    bucket: String,
    bucket_arn: String,
    shard_queue: QueueRef,
    reduce_queue: QueueRef,
    /// Test-only: receives the bucket's run-request notifications (S3 → Lambda async invoke).
    requests_queue: String,
    roles: Roles,
    /// The ARNs the featurizer's and reducer's event-source mappings consume.
    featurizer_sources: Vec<String>,
    reducer_sources: Vec<String>,
    /// Continuous ingestion: the queue the bucket notifies of inbox objects, the refit queue
    /// the featurizer sends to, and the inbox prefix.
    ingest_queue: QueueRef,
    refit_queue: QueueRef,
    inbox: String,
    /// The splitter's on-failure destination (queue) and its retries.
    splitter_on_failure: Option<(QueueRef, u32)>,
}

impl Stack {
    async fn new() -> Self {
        let stack_name = moto::unique("iam");
        let mut t = Template::load(&stack_name);
        let moto = Moto::connect().await;
        let queues = create_queues(&moto, &mut t, &stack_name).await;
        let (bucket, bucket_arn) = create_bucket(&moto, &mut t).await;
        let requests_queue = moto
            .create_queue(&format!("{stack_name}-test-requests"), None, None)
            .await;
        let (ingest_id, inbox) = t.inbox_notification();
        let ingest_queue = queues[&ingest_id].clone();
        notify_requests(
            &moto,
            &bucket,
            &moto.queue_arn(&requests_queue).await,
            (&ingest_queue.arn, &inbox),
        )
        .await;

        let splitter_id = t.function("splitter");
        let featurizer_id = t.function("featurizer");
        let reducer_id = t.function("reducer");
        let shard_queue = queues[&t.env_queue(&splitter_id, "SHARD_QUEUE_URL")].clone();
        let reduce_queue = queues[&t.env_queue(&featurizer_id, "REDUCE_QUEUE_URL")].clone();
        let refit_queue = queues[&t.env_queue(&featurizer_id, "REFIT_QUEUE_URL")].clone();
        assert_eq!(
            t.env_queue(&splitter_id, "REDUCE_QUEUE_URL"),
            t.env_queue(&featurizer_id, "REDUCE_QUEUE_URL"),
            "the splitter and the featurizer must send reduces to the same queue"
        );
        let splitter_on_failure = t.on_failure(&splitter_id).map(|(arn, retries)| {
            let queue = queues
                .values()
                .find(|q| q.arn == arn)
                .unwrap_or_else(|| panic!("the splitter's on-failure destination {arn} is not a queue of the template"))
                .clone();
            (queue, retries)
        });
        let roles = Roles {
            splitter: Role::new("splitter", t.role_policy(&splitter_id)),
            featurizer: Role::new("featurizer", t.role_policy(&featurizer_id)),
            reducer: Role::new("reducer", t.role_policy(&reducer_id)),
        };
        Stack {
            featurizer_sources: t.consumed_queues(&featurizer_id),
            reducer_sources: t.consumed_queues(&reducer_id),
            ingest_queue,
            refit_queue,
            inbox,
            moto,
            bucket,
            bucket_arn,
            shard_queue,
            reduce_queue,
            requests_queue,
            roles,
            splitter_on_failure,
        }
    }

    /// Panics, naming every refused permission, if any call so far was refused.
    fn assert_allowed(&self, step: &str) {
        let denials: Vec<String> = self
            .roles
            .all()
            .iter()
            .flat_map(|r| r.denials())
            .map(|d| d.to_string())
            .collect();
        assert!(
            denials.is_empty(),
            "{step}: the roles of template.yaml ({}) refuse calls the pipeline makes:\n  {}",
            testkit::template::template().path().display(),
            denials.join("\n  ")
        );
    }

    /// The three roles, with what they were asked.
    fn requests(&self) -> Recorded {
        self.roles.all().into_iter().cloned().collect()
    }

    fn store(&self) -> S3Store {
        S3Store::new(self.moto.s3.clone(), &self.bucket)
    }

    fn checked_store(&self, role: &Arc<Role>) -> CheckedStore<S3Store> {
        CheckedStore::new(self.store(), role.clone(), &self.bucket_arn)
    }

    fn checked_queue(&self, role: &Arc<Role>, queue: &QueueRef) -> CheckedQueue<SqsQueue> {
        CheckedQueue::new(
            SqsQueue::new(self.moto.sqs.clone(), &queue.url),
            role.clone(),
            &queue.arn,
        )
    }

    fn splitter<Q: Queue>(
        &self,
        shard_queue: Q,
    ) -> Splitter<CheckedStore<S3Store>, CheckedQueue<Q>, CheckedQueue<SqsQueue>> {
        let role = &self.roles.splitter;
        Splitter::new(
            self.checked_store(role),
            self.checked_store(role),
            CheckedQueue::new(shard_queue, role.clone(), &self.shard_queue.arn),
            self.checked_queue(role, &self.reduce_queue),
            RunOptions::default(),
            1280,
        )
        .with_input_bucket(&self.bucket)
    }

    /// Puts a run request and plays S3 → Lambda (asynchronous invoke) for the splitter: each
    /// notification runs the handler up to 1 + retries times; when every attempt failed,
    /// Lambda sends an invocation record to the on-failure destination with the splitter's role.
    async fn submit_with<Q: Queue>(
        &self,
        name: &str,
        request: &RunRequest,
        shard_queue: Q,
    ) -> Result<Vec<SplitOutcome>, String> {
        let key = format!("runs/requests/{name}.json");
        self.store()
            .put(&key, Bytes::from(serde_json::to_vec(request).unwrap()))
            .await
            .unwrap();
        let splitter = self.splitter(shard_queue);
        let store = self.checked_store(&self.roles.splitter);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "no S3 notification for {key}");
            for message in self.moto.receive(&self.requests_queue, 10).await {
                let body = message.body().unwrap().to_string();
                let event: Value = serde_json::from_str(&body).unwrap();
                let ours = body.contains(&format!("{name}.json"));
                self.moto
                    .delete(&self.requests_queue, message.receipt_handle().unwrap())
                    .await;
                let retries = self.splitter_on_failure.as_ref().map_or(2, |(_, r)| *r);
                let mut last_error = String::new();
                for _ in 0..=retries {
                    let parsed = parse_splitter_event(event.clone()).expect("an S3 event");
                    let request_id = message.message_id().unwrap_or("iam");
                    match handle_splitter_event(&splitter, &store, parsed, request_id).await {
                        Ok(outcomes) if ours => return Ok(outcomes),
                        Ok(_) => {
                            last_error.clear();
                            break;
                        }
                        Err(e) => last_error = e.to_string(),
                    }
                }
                if last_error.is_empty() {
                    continue;
                }
                // Every attempt failed: Lambda's on-failure destination. (A refused call
                // is reported as such first.)
                self.assert_allowed(&format!("splitter on request {name}"));
                let (destination, _) = self.splitter_on_failure.as_ref().unwrap_or_else(|| {
                    panic!("the splitter failed ({last_error}) and template.yaml gives it no on-failure destination (AWS::Lambda::EventInvokeConfig): the event is lost")
                });
                if self
                    .roles
                    .splitter
                    .check("sqs:SendMessage", &destination.arn)
                    .is_ok()
                {
                    let record = json!({
                        "requestContext": {"condition": "RetriesExhausted", "approximateInvokeCount": retries + 1},
                        "requestPayload": event,
                        "responsePayload": {"errorMessage": last_error},
                    });
                    self.moto
                        .sqs
                        .send_message()
                        .queue_url(&destination.url)
                        .message_body(record.to_string())
                        .send()
                        .await
                        .unwrap();
                }
                return Err(last_error);
            }
        }
    }

    async fn submit(&self, name: &str, request: &RunRequest) -> SplitOutcome {
        let shard_queue = SqsQueue::new(self.moto.sqs.clone(), &self.shard_queue.url);
        let result = self.submit_with(name, request, shard_queue).await;
        self.assert_allowed(&format!("splitter on request {name}"));
        let mut outcomes = result.unwrap_or_else(|e| panic!("splitter failed on {name}: {e}"));
        assert_eq!(outcomes.len(), 1);
        outcomes.remove(0)
    }

    /// Lambda's SQS event-source mapping for a function with `role`, consuming `source` (the
    /// ARN its mapping names): polls `queue`, hands batches to the handler, deletes what it did
    /// not report as failed, until the queue is empty. Its SQS calls are checked against the
    /// role; a refused one stops the mapping (as AWS disables it).
    async fn pump<F, Fut>(
        &self,
        role: &Role,
        sources: &[String],
        queue: &QueueRef,
        batch: i32,
        mut handler: F,
    ) -> usize
    where
        F: FnMut(SqsEvent) -> Fut,
        Fut: std::future::Future<Output = SqsBatchResponse>,
    {
        assert!(
            sources.contains(&queue.arn),
            "the {} function's event-source mappings consume {sources:?}, but the pipeline sends its messages to {}",
            role.name(), queue.arn
        );
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut delivered = 0;
        if role.check("sqs:GetQueueAttributes", &queue.arn).is_err() {
            return 0;
        }
        let mut failures = 0;
        loop {
            assert!(
                Instant::now() < deadline,
                "queue {} did not drain: {delivered} deliveries, {failures} reported failed, depth {:?}",
                queue.url,
                self.moto.depth(&queue.url).await
            );
            if role.check("sqs:ReceiveMessage", &queue.arn).is_err() {
                return delivered;
            }
            let messages = self.moto.receive(&queue.url, batch).await;
            if messages.is_empty() {
                if self.moto.depth(&queue.url).await == (0, 0) {
                    return delivered;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            delivered += messages.len();
            let response = handler(sqs_event(&messages, &queue.arn)).await;
            failures += response.batch_item_failures.len();
            let failed: BTreeSet<String> = response
                .batch_item_failures
                .iter()
                .map(|f| f.item_identifier.clone())
                .collect();
            for message in &messages {
                if !failed.contains(message.message_id().unwrap()) {
                    if role.check("sqs:DeleteMessage", &queue.arn).is_err() {
                        return delivered;
                    }
                    self.moto
                        .delete(&queue.url, message.receipt_handle().unwrap())
                        .await;
                }
            }
        }
    }

    async fn pump_shards(&self) -> usize {
        let role = &self.roles.featurizer;
        let store = self.checked_store(role);
        let featurizer = ShardFeaturizer::new(
            store.clone(),
            store,
            self.checked_queue(role, &self.reduce_queue),
            model(),
            FeaturizerSettings {
                worker_threads: 2,
                fetch_concurrency: 4,
                ..Default::default()
            },
        );
        let n = self
            .pump(
                role,
                &self.featurizer_sources,
                &self.shard_queue,
                1,
                |event| {
                    let featurizer = &featurizer;
                    async move { handle_shard_batch(featurizer, event, "iam-test", None).await }
                },
            )
            .await;
        self.assert_allowed("featurizer");
        n
    }

    async fn pump_reduce(&self) -> usize {
        let role = &self.roles.reducer;
        let reducer = Reducer::new(
            self.checked_store(role),
            ReducerSettings {
                lock_stale_after: Duration::from_secs(60),
                ..Default::default()
            },
        )
        // As the reducer Lambda: the report's thumbnails come from the data bucket.
        .with_input(self.checked_store(role));
        let n = self
            .pump(
                role,
                &self.reducer_sources,
                &self.reduce_queue,
                1,
                |event| {
                    let reducer = &reducer;
                    async move { handle_reduce_batch(reducer, event, "iam-test").await }
                },
            )
            .await;
        self.assert_allowed("reducer");
        n
    }

    /// The featurizer on the ingest queue (S3 notifications, batches of up to 10 records).
    async fn pump_ingest(&self) -> usize {
        let role = &self.roles.featurizer;
        let store = self.checked_store(role);
        let featurizer = ShardFeaturizer::new(
            store.clone(),
            store.clone(),
            self.checked_queue(role, &self.reduce_queue),
            model(),
            FeaturizerSettings::default(),
        );
        let ingestor = Ingestor::new(
            store.clone(),
            store,
            self.checked_queue(role, &self.refit_queue),
            Engine::Model(model()),
            IngestSettings {
                inbox: self.inbox.clone(),
                filter: ImageFilter::new("*.{jpg,jpeg,png}").unwrap(),
                max_pixels: 50_000_000,
                threads: 2,
                fetch_concurrency: 4,
                quiet_s: 0,
            },
        );
        let n = self
            .pump(
                role,
                &self.featurizer_sources,
                &self.ingest_queue,
                10,
                |event| {
                    let (featurizer, ingestor) = (&featurizer, &ingestor);
                    async move {
                        handle_featurizer_batch(featurizer, Some(ingestor), event, "iam-test", None)
                            .await
                    }
                },
            )
            .await;
        self.assert_allowed("featurizer (ingest)");
        n
    }

    /// The reducer on the refit queue.
    async fn pump_refits(&self) -> usize {
        let role = &self.roles.reducer;
        let store = self.checked_store(role);
        let reducer = Reducer::new(store.clone(), ReducerSettings::default());
        let refitter = Refitter {
            store,
            inbox: self.inbox.clone(),
            quiet_ms: 0,
            options: RefitOptions {
                pca: engine::pca::PcaOptions {
                    k: 2,
                    ..Default::default()
                },
                ..Default::default()
            },
        };
        let n = self
            .pump(role, &self.reducer_sources, &self.refit_queue, 1, |event| {
                let (reducer, refitter) = (&reducer, &refitter);
                async move { handle_reducer_batch(reducer, Some(refitter), event, "iam-test").await }
            })
            .await;
        self.assert_allowed("reducer (refit)");
        n
    }

    /// The reducer on the refit queue, with a quiet time far off and a staleness bound
    /// nearer: a refit that is not due yet is sent back to the refit queue, delayed.
    async fn pump_refits_not_due(&self) -> usize {
        let role = &self.roles.reducer;
        let store = self.checked_store(role);
        let reducer = Reducer::new(store.clone(), ReducerSettings::default());
        let refitter = Refitter {
            store,
            inbox: self.inbox.clone(),
            quiet_ms: 3_600_000,
            options: RefitOptions {
                max_staleness_ms: Some(1_800_000),
                ..Default::default()
            },
        };
        let requeue = self.checked_queue(role, &self.refit_queue);
        let n = self
            .pump(role, &self.reducer_sources, &self.refit_queue, 1, |event| {
                let (reducer, refitter, requeue) = (&reducer, &refitter, &requeue);
                async move {
                    handle_reducer_batch_requeuing(
                        reducer,
                        Some(refitter),
                        Some(requeue),
                        event,
                        "iam-test",
                    )
                    .await
                }
            })
            .await;
        self.assert_allowed("reducer (refit not due, re-sent)");
        n
    }

    /// Takes every message off a queue unprocessed (a lost message, as far as the run knows).
    async fn lose_messages(&self, queue: &QueueRef) -> usize {
        self.moto.drain(&queue.url).await
    }

    async fn send(&self, queue: &QueueRef, body: String) {
        SqsQueue::new(self.moto.sqs.clone(), &queue.url)
            .send_all(vec![body])
            .await
            .unwrap();
    }

    async fn upload_images(&self) -> usize {
        let files = fruit_images(2, 3);
        for (path, bytes) in &files {
            self.store()
                .put(&format!("images/{path}"), Bytes::from(bytes.clone()))
                .await
                .unwrap();
        }
        files.len()
    }

    async fn exists(&self, key: &str) -> bool {
        self.store().exists(key).await.unwrap()
    }

    async fn summary_status(&self, run_id: &str) -> String {
        let bytes = self
            .store()
            .get(&RunLayout::new(run_id).summary())
            .await
            .unwrap();
        let summary: Value = serde_json::from_slice(&bytes).unwrap();
        summary["status"].as_str().unwrap().to_string()
    }
}

/// The template's queues, named as the template names them (their timings the test's), then
/// their redrive policies; each registered in `t` for `!Ref`/`!GetAtt`. By logical id.
async fn create_queues(
    moto: &Moto,
    t: &mut Template,
    stack_name: &str,
) -> BTreeMap<String, QueueRef> {
    let mut queues = BTreeMap::new();
    let queue_ids: Vec<&str> = t.of_type("AWS::SQS::Queue").map(|(id, _)| id).collect();
    for id in &queue_ids {
        let props = &t.resource(id)["Properties"];
        let name = match &props["QueueName"] {
            Value::Null => format!("{stack_name}-{id}"),
            v => t.resolve_str(v),
        };
        let url = moto.create_queue(&name, Some(VISIBILITY_S), None).await;
        let arn = moto.queue_arn(&url).await;
        t.resources.insert(
            id.to_string(),
            Created {
                reference: url.clone(),
                arn: arn.clone(),
            },
        );
        queues.insert(id.to_string(), QueueRef { url, arn });
    }
    for id in &queue_ids {
        let redrive = &t.resource(id)["Properties"]["RedrivePolicy"];
        if redrive.is_null() {
            continue;
        }
        let redrive = Redrive {
            dlq_arn: t.resolve_str(&redrive["deadLetterTargetArn"]),
            max_receive_count: MAX_RECEIVE_COUNT,
        };
        moto.set_redrive(&queues[*id].url, &redrive).await;
    }
    queues
}

/// The data bucket, named as the template names it, registered in `t`: (name, ARN).
async fn create_bucket(moto: &Moto, t: &mut Template) -> (String, String) {
    let (bucket_id, bucket) = t
        .of_type("AWS::S3::Bucket")
        .next()
        .map(|(id, b)| (id, t.resolve_str(&b["Properties"]["BucketName"])))
        .expect("template.yaml has no AWS::S3::Bucket");
    let bucket_arn = format!("arn:{PARTITION}:s3:::{bucket}");
    t.resources.insert(
        bucket_id.to_string(),
        Created {
            reference: bucket.clone(),
            arn: bucket_arn.clone(),
        },
    );
    moto.create_bucket(&bucket).await;
    (bucket, bucket_arn)
}

/// The bucket's notifications: run requests to the test's queue (S3 → the splitter's
/// asynchronous invoke), and the template's inbox notifications (created and removed
/// objects → the ingest queue).
async fn notify_requests(
    moto: &Moto,
    bucket: &str,
    queue_arn: &str,
    (ingest_arn, inbox): (&str, &str),
) {
    let requests = Notification {
        queue_arn: queue_arn.to_string(),
        events: vec![Event::S3ObjectCreated],
        prefix: "runs/requests/".into(),
        suffix: Some(".json".into()),
    };
    let ingest = Notification {
        queue_arn: ingest_arn.to_string(),
        events: vec![
            Event::from("s3:ObjectCreated:*"),
            Event::from("s3:ObjectRemoved:*"),
        ],
        prefix: inbox.to_string(),
        suffix: None,
    };
    moto.notify(bucket, &[requests, ingest]).await;
}

/// A shard queue that cannot be reached (the splitter's call to it fails after the IAM check).
struct Unreachable;

impl Queue for Unreachable {
    async fn send_all(&self, _bodies: Vec<String>) -> Result<(), QueueError> {
        Err(QueueError::Remote {
            op: "SendMessageBatch",
            queue: "shard queue".into(),
            source: "connection refused (injected)".into(),
        })
    }
}

fn request(k: usize) -> RunRequest {
    RunRequest {
        input_prefix: "images/".into(),
        shard_size: Some(2),
        k: Some(k),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios: each on a fresh stack; each returns the requests its roles were asked.
// ---------------------------------------------------------------------------------------------

/// The stack's three roles, with the requests each was asked.
type Recorded = Vec<Arc<Role>>;

/// S3 event → splitter → featurizers (event-source mapping) → reducer; then the winning
/// shard's message delivered again after the run is complete.
async fn scenario_run() -> Recorded {
    let stack = Stack::new().await;
    let images = stack.upload_images().await;
    let run = stack.submit("first", &request(2)).await;
    assert!(
        run.created && run.images == images && run.shards == 3,
        "{run:?}"
    );
    assert_eq!(stack.pump_shards().await, 3);
    assert_eq!(stack.pump_reduce().await, 1, "one reduce message");
    let layout = RunLayout::new(&run.run_id);
    assert!(
        stack.exists(&layout.pca_success()).await,
        "the run completed"
    );
    assert_eq!(stack.summary_status(&run.run_id).await, "succeeded");

    // The claim winner's message again, after the reduce: it checks the run is complete.
    let claim: ReduceClaim =
        serde_json::from_slice(&stack.store().get(&layout.reduce_claim()).await.unwrap()).unwrap();
    let again = ShardMessage {
        run_id: run.run_id.clone(),
        shard: claim.claimed_by_shard,
    };
    stack
        .send(&stack.shard_queue, serde_json::to_string(&again).unwrap())
        .await;
    assert_eq!(stack.pump_shards().await, 1);
    assert_eq!(
        stack.moto.depth(&stack.reduce_queue.url).await,
        (0, 0),
        "no second reduce for a complete run"
    );
    stack.requests()
}

/// Re-submitting runs: one whose shard messages were lost (resumes the shards), one whose
/// reduce message was lost (resumes the reduce), one that is complete (nothing to do).
async fn scenario_resume() -> Recorded {
    let stack = Stack::new().await;
    stack.upload_images().await;
    let run = stack.submit("lost-shards", &request(3)).await;
    assert_eq!(stack.lose_messages(&stack.shard_queue).await, run.shards);

    let resumed = stack.submit("lost-shards-again", &request(3)).await;
    assert_eq!(resumed.run_id, run.run_id);
    assert!(
        !resumed.created && resumed.shards_sent == run.shards,
        "{resumed:?}"
    );
    assert_eq!(stack.pump_shards().await, run.shards);
    assert_eq!(stack.lose_messages(&stack.reduce_queue).await, 1);

    let resumed = stack.submit("lost-reduce", &request(3)).await;
    assert!(
        resumed.reduce_sent && resumed.shards_sent == 0,
        "{resumed:?}"
    );
    assert_eq!(stack.pump_reduce().await, 1);
    assert_eq!(stack.summary_status(&run.run_id).await, "succeeded");

    let complete = stack.submit("complete", &request(3)).await;
    assert!(complete.already_complete, "{complete:?}");

    // A retry of a request whose first attempt bound it to its run, then died before the
    // manifest: it asks whether that run's manifest exists (a 404 needs s3:ListBucket with
    // s3:prefix = the manifest's key), then creates the run.
    let identity = "s3:runs/requests/crashed.json#0001";
    let binding = RequestBinding {
        identity: identity.into(),
        run_id: "run-crashed-before-manifest".into(),
        fingerprint: String::new(),
        bound_at: String::new(),
    };
    stack
        .store()
        .put(
            &request_binding(identity),
            Bytes::from(serde_json::to_vec(&binding).unwrap()),
        )
        .await
        .unwrap();
    let splitter = stack.splitter(SqsQueue::new(
        stack.moto.sqs.clone(),
        &stack.shard_queue.url,
    ));
    let retried = splitter
        .handle_bound(&request(3), Some(identity))
        .await
        .unwrap();
    assert_eq!(retried.run_id, binding.run_id);
    assert!(retried.created, "{retried:?}");
    stack.assert_allowed("the splitter retrying a request bound before its manifest");
    stack.requests()
}

/// Failure paths: a shard message that keeps failing (failure records, then the DLQ); a
/// reducer taking over a stale lock; a reduce that fails and releases its lock; a splitter
/// whose every attempt fails (its on-failure destination).
async fn scenario_failures() -> Recorded {
    let stack = Stack::new().await;
    stack.upload_images().await;
    let run = stack.submit("with-bad-shard", &request(2)).await;
    let layout = RunLayout::new(&run.run_id);
    let bogus = ShardMessage {
        run_id: run.run_id.clone(),
        shard: 99,
    };
    stack
        .send(&stack.shard_queue, serde_json::to_string(&bogus).unwrap())
        .await;
    stack.pump_shards().await;
    let failure: pipeline::batch::featurizer::ShardFailure = serde_json::from_slice(
        &stack
            .store()
            .get(&format!("{}failures/shard-00099.json", layout.run_prefix()))
            .await
            .expect("the failing shard left a failure record"),
    )
    .unwrap();
    assert_eq!(failure.shard, 99);
    assert!(failure.error.contains("no shard 99"), "{}", failure.error);

    // A reducer that died holding the lock an hour ago: the next one takes it over.
    let stale = ReduceLock {
        owner: "a-reducer-that-died".into(),
        generation: 1,
        acquired_at: 0,
        released: false,
        committed: None,
    };
    stack
        .store()
        .put(
            &layout.reduce_lock(),
            serde_json::to_vec(&stale).unwrap().into(),
        )
        .await
        .unwrap();
    assert_eq!(stack.pump_reduce().await, 1);
    assert_eq!(stack.summary_status(&run.run_id).await, "succeeded");

    // A reduce message for a run whose shards never ran: the reducer fails and releases its
    // lock, each delivery, until the message is dead-lettered.
    let unfinished = stack.submit("unfinished", &request(4)).await;
    stack.lose_messages(&stack.shard_queue).await;
    let reduce = ReduceMessage {
        run_id: unfinished.run_id.clone(),
        claimed_by_shard: 0,
    };
    stack
        .send(&stack.reduce_queue, serde_json::to_string(&reduce).unwrap())
        .await;
    assert_eq!(stack.pump_reduce().await as u32, MAX_RECEIVE_COUNT);
    let unfinished_layout = RunLayout::new(&unfinished.run_id);
    let lock: ReduceLock = serde_json::from_slice(
        &stack
            .store()
            .get(&unfinished_layout.reduce_lock())
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(
        lock.released,
        "the failed reduce released its lock: {lock:?}"
    );
    assert!(
        stack.exists(&unfinished_layout.reduce_failure()).await,
        "and recorded why, for status"
    );
    assert!(!stack.exists(&unfinished_layout.pca_success()).await);

    // The shard queue unreachable: every attempt of the splitter fails, and Lambda sends the
    // event to the splitter's on-failure destination.
    let failed = stack
        .submit_with("unreachable", &request(5), Unreachable)
        .await;
    assert!(failed.is_err(), "{failed:?}");
    stack.assert_allowed("splitter failing into its on-failure destination");
    let (destination, _) = stack.splitter_on_failure.as_ref().unwrap();
    assert_eq!(
        stack.moto.depth(&destination.url).await.0,
        1,
        "the failed invocation's record is in the on-failure destination"
    );
    let result: Value = serde_json::from_slice(
        &stack
            .store()
            .get("runs/request-results/unreachable.json")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(result["ok"], false, "{result}");
    stack.requests()
}

/// Continuous ingestion: images dropped into the inbox (real S3 → SQS notifications) are
/// ingested by the featurizer, refitted by the reducer; then a delete, a new image and a
/// `_refit` request object (three snapshots: the oldest expires).
async fn scenario_ingest() -> Recorded {
    let stack = Stack::new().await;
    let files = fruit_images(2, 2);
    let key = |p: &str| format!("{}c/{p}", stack.inbox);
    for (path, bytes) in &files[..3] {
        stack
            .store()
            .put(&key(path), Bytes::from(bytes.clone()))
            .await
            .unwrap();
    }
    assert!(stack.pump_ingest().await >= 1);
    assert!(stack.pump_refits().await >= 1);
    let layout = CollectionLayout::new("c");
    assert!(
        stack.exists(&layout.current()).await,
        "the collection is published"
    );
    stack.store().delete(&key(&files[0].0)).await.unwrap();
    stack.pump_ingest().await;
    stack.pump_refits().await;
    stack
        .store()
        .put(&key(&files[3].0), Bytes::from(files[3].1.clone()))
        .await
        .unwrap();
    stack.pump_ingest().await;
    stack.pump_refits().await;
    stack
        .store()
        .put(&key("_refit"), Bytes::from_static(b"{}"))
        .await
        .unwrap();
    stack.pump_ingest().await;
    stack.pump_refits().await;
    let status = collection_status(&stack.store(), "c").await.unwrap();
    assert_eq!(status.summary.unwrap().rows, 3);
    assert!(status.current.unwrap().seq >= 3);
    // Under steady uploads: a refit not due yet goes back to the refit queue, delayed until
    // the staleness bound (MaxStalenessSecs).
    stack
        .store()
        .put(&key(&files[0].0), Bytes::from(files[0].1.clone()))
        .await
        .unwrap();
    stack.pump_ingest().await;
    assert!(stack.pump_refits_not_due().await >= 1);
    stack.requests()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn a_run_from_s3_event_to_pca_is_allowed() {
    runtime().block_on(scenario_run());
}

#[test]
fn resuming_runs_is_allowed() {
    runtime().block_on(scenario_resume());
}

#[test]
fn ingestion_and_refits_are_allowed() {
    runtime().block_on(scenario_ingest());
}

#[test]
fn failure_paths_are_allowed() {
    runtime().block_on(scenario_failures());
}

/// The splitter's listing grant carries the `s3:prefix` condition (issue 30): it may list
/// the allowed input prefixes (`InputPrefixes`, here `images/`) and its own done markers,
/// nothing else — not the whole bucket, not the pipeline's other prefixes.
#[test]
fn the_splitter_cannot_list_outside_the_allowed_prefixes() {
    runtime().block_on(async {
        let stack = Stack::new().await;
        let store = stack.checked_store(&stack.roles.splitter);
        store.list("images/").await.unwrap();
        store.list("images/apples/").await.unwrap();
        store.list("runs/run-1/done/").await.unwrap();
        for outside in [
            "",
            "other/",
            "imagesX/",
            "runs/",
            "runs/run-1/",
            "staging/",
            "collections/",
            "Results/",
            "Results_PCA/",
        ] {
            let err = store.list(outside).await.unwrap_err().to_string();
            assert!(
                err.contains("AccessDenied") && err.contains("lacks s3:ListBucket"),
                "{outside:?}: {err}"
            );
        }
    });
}

/// Each Allow statement of each function's role, and each action and resource in it, is
/// needed: without it, some request a scenario made is refused.
#[test]
fn every_allow_statement_is_needed() {
    let rt = runtime();
    let scenarios: Vec<(&str, Vec<Arc<Role>>)> = vec![
        ("run", rt.block_on(scenario_run())),
        ("resume", rt.block_on(scenario_resume())),
        ("failures", rt.block_on(scenario_failures())),
        ("ingest", rt.block_on(scenario_ingest())),
    ];
    let mut report = Vec::new();
    let mut unneeded = Vec::new();
    for role in ["splitter", "featurizer", "reducer"] {
        // Each scenario's stack resolved the same statements for its own names.
        let stacks: Vec<(&str, &Role)> = scenarios
            .iter()
            .map(|(name, roles)| (*name, &**roles.iter().find(|r| r.name() == role).unwrap()))
            .collect();
        for (scenario, r) in &stacks {
            for q in r.requests() {
                assert!(
                    q.decision.is_allowed(),
                    "scenario {scenario}: {role} was refused {} on {}",
                    q.action,
                    q.resource
                );
            }
        }
        // The first request any scenario made that `reduce` (applied to each stack's
        // policy) refuses.
        let first_refused = |reduce: &dyn Fn(&mut Policy)| -> Option<String> {
            stacks.iter().find_map(|(scenario, r)| {
                let mut policy = r.policy().clone();
                reduce(&mut policy);
                r.requests().into_iter().find_map(|q| {
                    (!policy
                        .evaluate_with(&q.action, &q.resource, &q.context)
                        .is_allowed())
                    .then(|| format!("scenario {scenario}: {} on {}", q.action, q.resource))
                })
            })
        };
        let statements = stacks[0].1.policy().statements.clone();
        for (i, s) in statements.iter().enumerate() {
            if s.effect != Effect::Allow {
                continue;
            }
            let at = format!("{role}/{}", s.sid);
            match first_refused(&|p: &mut Policy| {
                p.statements.remove(i);
            }) {
                Some(refused) => report.push(format!("{at} removed -> refused {refused}")),
                None => unneeded.push(format!("{at}: no scenario needs it")),
            }
            for (c, condition) in s.conditions.iter().enumerate() {
                for (j, value) in condition.values.iter().enumerate() {
                    let drop_value = |p: &mut Policy| {
                        let values = &mut p.statements[i].conditions[c].values;
                        values.remove(j);
                        if values.is_empty() {
                            // No value left: the condition can never hold.
                            values.push("\u{0}never".into());
                        }
                    };
                    let what = format!("{} value {value}", condition.key);
                    match first_refused(&drop_value) {
                        Some(refused) => {
                            report.push(format!("{at} without {what} -> refused {refused}"))
                        }
                        None => unneeded.push(format!("{at} {what}: no scenario needs it")),
                    }
                }
            }
            for kind in ["action", "resource"] {
                let count = match kind {
                    "action" => s.actions.items().len(),
                    _ => s.resources.items().len(),
                };
                if count < 2 {
                    continue;
                }
                for j in 0..count {
                    let item = match kind {
                        "action" => s.actions.items()[j].clone(),
                        _ => s.resources.items()[j].clone(),
                    };
                    let drop_item = |p: &mut Policy| {
                        let st = &mut p.statements[i];
                        let patterns = if kind == "action" {
                            &mut st.actions
                        } else {
                            &mut st.resources
                        };
                        let mut items = patterns.items().to_vec();
                        items.remove(j);
                        *patterns = patterns.with_items(items);
                    };
                    match first_refused(&drop_item) {
                        Some(refused) => {
                            report.push(format!("{at} without {kind} {item} -> refused {refused}"))
                        }
                        None => unneeded.push(format!("{at} {kind} {item}: no scenario needs it")),
                    }
                }
            }
        }
    }
    println!(
        "Each Allow statement (and each action/resource of a multi-item one) removed in turn:\n  {}",
        report.join("\n  ")
    );
    assert!(
        unneeded.is_empty(),
        "grants no scenario needs (remove them, or add the scenario that needs them):\n  {}",
        unneeded.join("\n  ")
    );
}

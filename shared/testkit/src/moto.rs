//! The tests' S3 + SQS emulator (moto, started by `infra/test.sh`, its URL in
//! `$MOTO_ENDPOINT`): the SDK configured for it (through [`aws::sdk::config_loader`], the
//! pipeline's own HTTPS client), its clients, and what the tests do on it over and over:
//! unique names, buckets, queues with their dead-letter queues, queue ARNs and depths,
//! receiving and deleting messages, bucket notifications to queues, and the `SqsEvent`
//! Lambda's event-source mapping would deliver.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws::sdk::SdkConfig;
use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_s3::types::{
    Event, FilterRule, FilterRuleName, NotificationConfiguration, NotificationConfigurationFilter,
    QueueConfiguration, S3KeyFilter,
};
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName, QueueAttributeName};

/// The environment variable holding moto's URL.
pub const ENDPOINT_VAR: &str = "MOTO_ENDPOINT";
/// moto's default account.
pub const ACCOUNT: &str = "123456789012";
/// The region the tests use.
pub const REGION: &str = "us-east-1";

/// moto's URL. Panics, saying how to start it, when `$MOTO_ENDPOINT` is not set.
pub fn endpoint() -> String {
    std::env::var(ENDPOINT_VAR)
        .expect("MOTO_ENDPOINT is not set: run the tests with ./infra/test.sh, which starts moto")
}

/// The SDK's configuration for moto: its endpoint, [`REGION`], test credentials.
pub async fn sdk_config() -> SdkConfig {
    aws::sdk::config_loader()
        .region(aws_sdk_s3::config::Region::new(REGION))
        .endpoint_url(endpoint())
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "moto",
        ))
        .load()
        .await
}

/// The clients of moto (the S3 one path-style, as [`aws::sdk::s3_client`] makes it).
#[derive(Clone, Debug)]
pub struct Moto {
    pub config: SdkConfig,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
}

impl Moto {
    /// Connects to moto ([`sdk_config`]).
    pub async fn connect() -> Self {
        let config = sdk_config().await;
        Self {
            s3: aws::sdk::s3_client(&config),
            sqs: aws::sdk::sqs_client(&config),
            config,
        }
    }

    /// Creates bucket `name`.
    pub async fn create_bucket(&self, name: &str) {
        self.s3
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .expect("create bucket");
    }

    /// Creates queue `name` (visibility timeout `visibility_s` when given, dead-lettering
    /// as `redrive` says) and answers its URL.
    pub async fn create_queue(
        &self,
        name: &str,
        visibility_s: Option<i32>,
        redrive: Option<&Redrive>,
    ) -> String {
        let mut request = self.sqs.create_queue().queue_name(name);
        if let Some(visibility_s) = visibility_s {
            request = request.attributes(
                QueueAttributeName::VisibilityTimeout,
                visibility_s.to_string(),
            );
        }
        if let Some(redrive) = redrive {
            request = request.attributes(QueueAttributeName::RedrivePolicy, redrive.policy());
        }
        request
            .send()
            .await
            .expect("create queue")
            .queue_url()
            .expect("a queue URL")
            .to_string()
    }

    /// Sets the dead-letter queue of an existing queue.
    pub async fn set_redrive(&self, url: &str, redrive: &Redrive) {
        self.set_attribute(url, QueueAttributeName::RedrivePolicy, &redrive.policy())
            .await;
    }

    /// Sets one attribute of a queue.
    pub async fn set_attribute(&self, url: &str, name: QueueAttributeName, value: &str) {
        self.sqs
            .set_queue_attributes()
            .queue_url(url)
            .attributes(name.clone(), value)
            .send()
            .await
            .unwrap_or_else(|e| panic!("set {name:?} of {url}: {e}"));
    }

    /// A queue's ARN.
    pub async fn queue_arn(&self, url: &str) -> String {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap();
        attributes.attributes().unwrap()[&QueueAttributeName::QueueArn].clone()
    }

    /// A queue's (visible, in flight) message counts.
    pub async fn depth(&self, url: &str) -> (usize, usize) {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .unwrap();
        let attributes = attributes.attributes().unwrap();
        let count = |name| {
            attributes
                .get(&name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (
            count(QueueAttributeName::ApproximateNumberOfMessages),
            count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )
    }

    /// Up to `max` messages of a queue, with their system attributes, without waiting.
    pub async fn receive(&self, url: &str, max: i32) -> Vec<Message> {
        self.sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max)
            .wait_time_seconds(0)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap()
            .messages()
            .to_vec()
    }

    /// Deletes a received message.
    pub async fn delete(&self, url: &str, receipt: &str) {
        self.sqs
            .delete_message()
            .queue_url(url)
            .receipt_handle(receipt)
            .send()
            .await
            .unwrap();
    }

    /// Takes every message off a queue unprocessed (lost, as far as the pipeline knows) and
    /// answers how many there were.
    pub async fn drain(&self, url: &str) -> usize {
        let mut n = 0;
        loop {
            let messages = self.receive(url, 10).await;
            if messages.is_empty() {
                return n;
            }
            for m in messages {
                n += 1;
                self.delete(url, m.receipt_handle().unwrap()).await;
            }
        }
    }

    /// Has `bucket` notify queues of its objects' events. It replaces the bucket's
    /// notification configuration.
    pub async fn notify(&self, bucket: &str, notifications: &[Notification]) {
        let mut configuration = NotificationConfiguration::builder();
        for n in notifications {
            configuration = configuration.queue_configurations(n.configuration());
        }
        self.s3
            .put_bucket_notification_configuration()
            .bucket(bucket)
            .notification_configuration(configuration.build())
            .send()
            .await
            .expect("bucket notification");
    }
}

/// A queue's dead-letter queue and the deliveries before a message moves there.
#[derive(Clone, Debug)]
pub struct Redrive {
    pub dlq_arn: String,
    pub max_receive_count: u32,
}

impl Redrive {
    /// The `RedrivePolicy` attribute.
    pub fn policy(&self) -> String {
        serde_json::json!({
            "deadLetterTargetArn": self.dlq_arn,
            "maxReceiveCount": self.max_receive_count,
        })
        .to_string()
    }
}

/// S3 event notifications of `events` on keys under `prefix` (and ending with `suffix`) to
/// the queue `queue_arn`.
#[derive(Clone, Debug)]
pub struct Notification {
    pub queue_arn: String,
    pub events: Vec<Event>,
    pub prefix: String,
    pub suffix: Option<String>,
}

impl Notification {
    fn configuration(&self) -> QueueConfiguration {
        let rule = |name, value: &str| FilterRule::builder().name(name).value(value).build();
        let mut key =
            S3KeyFilter::builder().filter_rules(rule(FilterRuleName::Prefix, &self.prefix));
        if let Some(suffix) = &self.suffix {
            key = key.filter_rules(rule(FilterRuleName::Suffix, suffix));
        }
        let mut configuration = QueueConfiguration::builder()
            .queue_arn(&self.queue_arn)
            .filter(
                NotificationConfigurationFilter::builder()
                    .key(key.build())
                    .build(),
            );
        for event in &self.events {
            configuration = configuration.events(event.clone());
        }
        configuration.build().expect("a queue configuration")
    }
}

/// `{name}-{process id}-{n}`: a name no other test of this run, nor a run before it on the
/// same moto, has used.
pub fn unique(name: &str) -> String {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `SqsEvent` Lambda's event-source mapping delivers for these messages of the queue
/// `arn`.
pub fn sqs_event(messages: &[Message], arn: &str) -> SqsEvent {
    let records: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| {
            let attributes: HashMap<String, String> = m
                .attributes()
                .map(|a| {
                    a.iter()
                        .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            serde_json::json!({
                "messageId": m.message_id(),
                "receiptHandle": m.receipt_handle(),
                "body": m.body(),
                "attributes": attributes,
                "messageAttributes": {},
                "md5OfBody": m.md5_of_body(),
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": REGION,
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({ "Records": records })).expect("SqsEvent")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_carry_the_process() {
        let (a, b) = (unique("t"), unique("t"));
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("t-{}-", std::process::id())), "{a}");
    }

    #[test]
    fn the_redrive_policy_names_the_dlq_and_the_count() {
        let policy: serde_json::Value = serde_json::from_str(
            &Redrive {
                dlq_arn: "arn:aws:sqs:us-east-1:123456789012:dlq".into(),
                max_receive_count: 3,
            }
            .policy(),
        )
        .unwrap();
        assert_eq!(
            policy,
            serde_json::json!({"deadLetterTargetArn": "arn:aws:sqs:us-east-1:123456789012:dlq", "maxReceiveCount": 3})
        );
    }

    #[test]
    fn an_sqs_event_carries_each_message_and_the_queue() {
        let message = Message::builder()
            .message_id("m1")
            .receipt_handle("r1")
            .body("{}")
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "2")
            .build();
        let event = sqs_event(&[message], "arn:q");
        assert_eq!(event.records.len(), 1);
        let r = &event.records[0];
        assert_eq!(r.message_id.as_deref(), Some("m1"));
        assert_eq!(r.receipt_handle.as_deref(), Some("r1"));
        assert_eq!(r.body.as_deref(), Some("{}"));
        assert_eq!(r.event_source_arn.as_deref(), Some("arn:q"));
        assert_eq!(r.attributes["ApproximateReceiveCount"], "2");
    }
}

//! Field commands (a serial line's `.../send`, a GPIO output's `.../set`): the
//! subscription that receives them with their retain flag as published (a retained
//! command is a replay, and refused, whether it arrives live or at subscribe time), where
//! the answer goes, taken from the command as it arrived, and its publication: a JSON
//! document on `<command topic>/result`, and on the MQTT 5 response topic with the
//! command's correlation data when it carried one. It must never publish an answer as
//! anyone but the adapter that received the command (the ACL decides where it may go).

use bytes::Bytes;
use tracing::warn;

use crate::broker::codec::{v5, QoS};
use crate::broker::{BrokerError, InternalClient};

/// Subscribe `client` to the command topic `topic` (QoS 1) with Retain As Published:
/// without it the broker clears the retain flag of a command forwarded live, and a
/// retained command would run once live, then be refused only when replayed.
pub async fn subscribe_commands(
    client: &InternalClient,
    topic: &str,
) -> Result<v5::SubscribeReasonCode, BrokerError> {
    client
        .subscribe_filter(v5::Filter {
            path: topic.to_string(),
            qos: QoS::AtLeastOnce,
            nolocal: false,
            preserve_retain: true,
            retain_forward_rule: v5::RetainForwardRule::OnEverySubscribe,
        })
        .await
}

/// Where one command's answer goes.
#[derive(Debug, Clone)]
pub struct Address {
    /// `<command topic>/result`.
    pub result_topic: String,
    /// MQTT 5 response topic of the command.
    pub response_topic: Option<String>,
    /// MQTT 5 correlation data of the command.
    pub correlation: Option<Bytes>,
}

impl Address {
    /// The answer address of a command received on `topic` with `properties`.
    pub fn of(topic: &str, properties: Option<&v5::PublishProperties>) -> Self {
        Address {
            result_topic: format!("{topic}/result"),
            response_topic: properties.and_then(|p| p.response_topic.clone()),
            correlation: properties.and_then(|p| p.correlation_data.clone()),
        }
    }
}

/// Publish `doc` (JSON) on the result topic and the response topic, as `client`, at
/// QoS 0 and not retained (an answer is for whoever waits for it now). `what` names
/// the adapter in log lines ("Serial send", "GPIO set").
pub async fn publish(client: &InternalClient, to: &Address, doc: String, what: &str) {
    if let Err(e) = client
        .publish(&to.result_topic, doc.clone(), QoS::AtMostOnce, false)
        .await
    {
        warn!(topic = %to.result_topic, reason = %e, "{what} result not published.");
    }
    if let Some(response) = &to.response_topic {
        let properties = v5::PublishProperties {
            correlation_data: to.correlation.clone(),
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        if let Err(e) = client
            .publish_with(response, doc, QoS::AtMostOnce, false, Some(properties))
            .await
        {
            warn!(topic = %response, reason = %e, "{what} response not published.");
        }
    }
}

//! The one wait limit, polling waits that fail loudly, and the trailing marker that
//! proves a message did not arrive (absence is never shown by a quiet window).

use std::time::Duration;

use tollgate::broker::{Delivery, InternalClient};

/// Generous limit for awaiting events (2 shared cores under a parallel test run);
/// tests normally finish far sooner, and only a failing test waits this long.
pub const WAIT: Duration = Duration::from_secs(10);

/// Payload of the trailing marker message that proves nothing arrived before it.
pub const MARKER: &str = "marker";

/// Poll `condition` until it holds; fails loudly after `WAIT` naming `what`.
pub async fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    wait_until_within(what, WAIT, condition).await;
}

/// [`wait_until`] with an explicit limit, for bulk work (an upper bound that only a
/// broken broker reaches, never a performance assertion).
pub async fn wait_until_within(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client that can publish the trailing marker (QoS 1, not retained).
pub trait MarkerPublisher {
    fn publish_marker(&self, topic: &str) -> impl std::future::Future<Output = ()>;
}

impl MarkerPublisher for rumqttc::AsyncClient {
    async fn publish_marker(&self, topic: &str) {
        self.publish(topic, rumqttc::QoS::AtLeastOnce, false, MARKER)
            .await
            .expect("marker queued");
    }
}

impl MarkerPublisher for rumqttc::v5::AsyncClient {
    async fn publish_marker(&self, topic: &str) {
        self.publish(
            topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            MARKER,
        )
        .await
        .expect("marker queued");
    }
}

impl MarkerPublisher for InternalClient {
    async fn publish_marker(&self, topic: &str) {
        self.publish(
            topic,
            MARKER,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
        )
        .await
        .expect("marker published");
    }
}

/// Fails unless the message that arrived is the marker on `marker_topic`; `what` names
/// the kind of message (publish, delivery) in the failure.
pub fn assert_is_marker(what: &str, topic: &str, payload: &[u8], marker_topic: &str) {
    assert!(
        topic == marker_topic && payload == MARKER.as_bytes(),
        "unexpected {what} on {topic} ({:?}) before the marker on {marker_topic}",
        bytes::Bytes::copy_from_slice(payload)
    );
}

/// The next delivery to an in-process client, failing when none comes within `WAIT`
/// or the client was detached.
pub async fn internal_recv(client: &mut InternalClient) -> Delivery {
    tokio::time::timeout(WAIT, client.recv())
        .await
        .expect("delivery within the limit")
        .expect("in-process client still attached")
}

/// The next delivery to an in-process client must be the marker on `marker_topic`.
pub async fn internal_expect_marker(client: &mut InternalClient, marker_topic: &str) {
    let d = internal_recv(client).await;
    assert_is_marker("delivery", &d.topic, &d.payload, marker_topic);
}

//! What a client asks of the router once attached: PUBLISH (with QoS 2 and durable
//! hold-back bookkeeping), the acknowledgements of deliveries, SUBSCRIBE (quota,
//! trie, retained messages on subscribe) and UNSUBSCRIBE. Validation and
//! authorization happened on the endpoint; this applies the requests to routing
//! state and answers them.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::warn;

use super::deliver::{deliver, pubrec};
use super::*;

impl Router {
    pub(super) fn inbound(&mut self, key: SessionKey, item: Inbound) {
        match item {
            Inbound::Publish {
                publish,
                expires_at,
                reply,
            } => self.inbound_publish(key, publish, expires_at, reply),
            Inbound::PubAck(pkid) => self.ack(key, pkid, InflightState::AwaitAck),
            Inbound::PubRec { pkid, failed } => {
                if failed {
                    self.ack(key, pkid, InflightState::AwaitAck);
                    return;
                }
                let Some(session) = self.sessions.get_mut(&key) else {
                    return;
                };
                if let Some(f) = session.inflight.iter_mut().find(|f| f.pkid == pkid) {
                    if f.state != InflightState::AwaitComp {
                        f.state = InflightState::AwaitComp;
                        let id = session.stored.as_ref().map_or(0, |s| s.id);
                        self.ctx.store_released(id, &mut f.queued, pkid);
                    }
                }
                let found = session.inflight.iter().any(|f| f.pkid == pkid);
                if let Some(link) = session.link.as_mut() {
                    let reason = if found {
                        v5::PubRelReason::Success
                    } else {
                        v5::PubRelReason::PacketIdentifierNotFound
                    };
                    self.ctx.push_out(
                        key,
                        link,
                        v5::Packet::PubRel(v5::PubRel {
                            pkid,
                            reason,
                            properties: None,
                        }),
                    );
                }
            }
            Inbound::PubComp(pkid) => self.ack(key, pkid, InflightState::AwaitComp),
            Inbound::InternalAck(pkid) => {
                self.ack(key, pkid, InflightState::AwaitAck);
                self.ack(key, pkid, InflightState::AwaitComp);
            }
            Inbound::InternalRefuse(pkid) => {
                self.settle(key, pkid, InflightState::AwaitAck, true);
                self.settle(key, pkid, InflightState::AwaitComp, true);
            }
            Inbound::PubRel(pkid) => {
                let Some(session) = self.sessions.get_mut(&key) else {
                    return;
                };
                let known = self.ctx.qos2_done(&mut session.incoming_qos2, pkid);
                if let Some(link) = session.link.as_mut() {
                    let reason = if known {
                        v5::PubCompReason::Success
                    } else {
                        v5::PubCompReason::PacketIdentifierNotFound
                    };
                    self.ctx.push_out(
                        key,
                        link,
                        v5::Packet::PubComp(v5::PubComp {
                            pkid,
                            reason,
                            properties: None,
                        }),
                    );
                }
            }
            Inbound::Subscribe {
                pkid,
                id,
                filters,
                reply,
            } => self.subscribe(key, pkid, id, filters, reply),
            Inbound::Unsubscribe {
                pkid,
                filters,
                reply,
            } => self.unsubscribe(key, pkid, filters, reply),
            Inbound::Reauthenticated(identity) => {
                // Only a new grant of the same principal and client id replaces it.
                if let Some(session) = self.sessions.get_mut(&key) {
                    if session.identity.same_principal(&identity)
                        && session.identity.client_id == identity.client_id
                    {
                        session.identity = identity;
                    }
                }
            }
        }
    }

    pub(super) fn inbound_publish(
        &mut self,
        key: SessionKey,

        publish: v5::Publish,
        expires_at: Option<Instant>,
        reply: Option<PublishReply>,
    ) {
        stats(&self.ctx)
            .messages_received
            .fetch_add(1, Ordering::Relaxed);
        let qos = publish.qos;
        let pkid = publish.pkid;
        if qos != QoS::AtMostOnce && reply.is_none() {
            let Some(session) = self.sessions.get_mut(&key) else {
                return;
            };
            if let Some(id) = session.held.get(&pkid) {
                if self.ctx.holds.contains_key(id) {
                    // A resend of a message still held for a durable subscriber.
                    return;
                }
                session.held.remove(&pkid);
            }
        }
        if qos == QoS::ExactlyOnce && reply.is_none() {
            let Some(session) = self.sessions.get_mut(&key) else {
                return;
            };
            if session.stale_restored_qos2(pkid, publish.dup) {
                // Not a resend: the id was released before the stop (see StoredRef).
                self.ctx.qos2_done(&mut session.incoming_qos2, pkid);
            }
            if session.incoming_qos2.contains_key(&pkid) {
                // Duplicate before PUBREL: acknowledge again, deliver nothing.
                if let Some(link) = session.link.as_mut() {
                    self.ctx.push_out(key, link, pubrec(pkid));
                }
                return;
            }
            // Its `received` record is written after the deliveries (stored.rs).
            session.incoming_qos2.insert(pkid, 0);
            if let Some(stored) = session.stored.as_mut() {
                stored.restored_qos2.remove(&pkid);
            }
        }
        let origin = self.sessions.get(&key).map(|s| s.identity.clone());
        let message = Arc::new(Message {
            topic: publish.topic,
            payload: publish.payload,
            qos,
            retain: publish.retain,
            properties: publish.properties,
            expires_at,
            publisher: Some(key),
            origin,
        });
        let target = match (qos, reply) {
            (QoS::AtMostOnce, Some(reply)) => {
                let _ = reply.send(Ok(()));
                None
            }
            (QoS::AtMostOnce, None) => None,
            (_, Some(reply)) => Some(HoldTarget::Internal(reply)),
            (qos, None) => Some(HoldTarget::Network { key, pkid, qos }),
        };
        if let Some(hold) = self.route(message, target) {
            if qos != QoS::AtMostOnce {
                if let Some(session) = self.sessions.get_mut(&key) {
                    session.held.insert(pkid, hold);
                }
            }
        }
    }

    pub(super) fn subscribe(
        &mut self,
        key: SessionKey,
        pkid: u16,
        id: Option<usize>,
        filters: Vec<(v5::Filter, Option<v5::SubscribeReasonCode>)>,
        reply: Option<oneshot::Sender<Vec<v5::SubscribeReasonCode>>>,
    ) {
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let mut codes = Vec::with_capacity(filters.len());
        let mut send_retained: Vec<(String, SubOptions)> = Vec::new();
        let max_subscriptions = settings(&self.ctx).max_subscriptions_per_client;
        for (filter, refused) in filters {
            if let Some(code) = refused {
                codes.push(code);
                continue;
            }
            if session.subscriptions.len() >= max_subscriptions
                && !session.subscriptions.contains_key(&filter.path)
            {
                stats(&self.ctx)
                    .refused_subscription_quota
                    .fetch_add(1, Ordering::Relaxed);
                warn!(client_id = %LogStr(&session.identity.client_id), subscriptions = session.subscriptions.len(), max = max_subscriptions, "Subscription refused: the client has the most subscriptions allowed (broker.max_subscriptions_per_client).");
                codes.push(v5::SubscribeReasonCode::QuotaExceeded);
                continue;
            }
            let (group, plain) = split_shared(&filter.path);
            let options = SubOptions {
                qos: filter.qos,
                no_local: filter.nolocal,
                retain_as_published: filter.preserve_retain,
                id,
                share: group.map(|g| {
                    Arc::new(SharedRef {
                        group: g.into(),
                        filter: plain.into(),
                    })
                }),
            };
            let is_new = self.trie.insert(plain, group, key, options.clone());
            if session
                .subscriptions
                .insert(filter.path.clone(), options.clone())
                .is_none()
            {
                self.subscription_count += 1;
            }
            codes.push(v5::SubscribeReasonCode::Success(filter.qos));
            let wanted = match filter.retain_forward_rule {
                v5::RetainForwardRule::OnEverySubscribe => true,
                v5::RetainForwardRule::OnNewSubscribe => is_new,
                v5::RetainForwardRule::Never => false,
            };
            if group.is_none() && wanted {
                send_retained.push((plain.to_string(), options));
            }
        }
        match reply {
            Some(reply) => {
                let _ = reply.send(codes);
            }
            None => {
                if let Some(link) = session.link.as_mut() {
                    self.ctx.push_out(
                        key,
                        link,
                        v5::Packet::SubAck(v5::SubAck {
                            pkid,
                            return_codes: codes,
                            properties: None,
                        }),
                    );
                }
            }
        }
        let mut expired = Vec::new();
        for (filter, options) in send_retained {
            let mut found: Vec<Arc<Message>> = Vec::new();
            self.retained.matching(&filter, &mut found);
            for msg in found {
                let topic = msg.topic_str();
                if msg.expires_at.is_some_and(|e| e <= self.ctx.now) {
                    expired.push(topic.to_string());
                    continue;
                }
                if !self
                    .ctx
                    .authorizer
                    .allows(&session.identity, Access::Read, topic)
                {
                    continue;
                }
                let q = Queued {
                    qos: min_qos(msg.qos, options.qos),
                    retain: true,
                    sub_ids: options.id.into_iter().collect(),
                    hold: None,
                    release_on_send: false,
                    share: None,
                    msg,
                    record: 0,
                    order: 0,
                    pkid_record: 0,
                };
                deliver(&mut self.ctx, key, session, q);
            }
        }
        for topic in expired {
            self.retain_clear(&topic);
        }
        self.store_session(key);
    }

    pub(super) fn unsubscribe(
        &mut self,
        key: SessionKey,
        pkid: u16,
        filters: Vec<String>,
        reply: Option<oneshot::Sender<Vec<v5::UnsubAckReason>>>,
    ) {
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let mut reasons = Vec::with_capacity(filters.len());
        let max_levels = settings(&self.ctx).max_topic_levels;
        for path in filters {
            if !valid_unsubscribe_filter(&path, max_levels) {
                reasons.push(v5::UnsubAckReason::TopicFilterInvalid);
                continue;
            }
            let (group, plain) = split_shared(&path);
            self.trie.remove(plain, group, key);
            if session.subscriptions.remove(&path).is_some() {
                self.subscription_count -= 1;
                reasons.push(v5::UnsubAckReason::Success);
            } else {
                reasons.push(v5::UnsubAckReason::NoSubscriptionExisted);
            }
        }
        match reply {
            Some(reply) => {
                let _ = reply.send(reasons);
            }
            None => {
                if let Some(link) = session.link.as_mut() {
                    self.ctx.push_out(
                        key,
                        link,
                        v5::Packet::UnsubAck(v5::UnsubAck {
                            pkid,
                            reasons,
                            properties: None,
                        }),
                    );
                }
            }
        }
        self.store_session(key);
    }
}

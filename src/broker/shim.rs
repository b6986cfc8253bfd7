//! Temporary stand-in for `crate::broker::codec` and `crate::topic` (written by the
//! `codec` helper in parallel) with the same API, so the broker core can be built and
//! tested before that branch lands. Deleted when it is merged.
#![allow(dead_code)]

pub mod codec {
    use bytes::BytesMut;
    use rumqttc::mqttbytes as m4;
    use rumqttc::mqttbytes::v4;
    pub use rumqttc::v5::mqttbytes::v5;
    pub use rumqttc::v5::mqttbytes::QoS;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ProtocolVersion {
        V311,
        V5,
    }

    pub struct ConnectPacket {
        pub version: ProtocolVersion,
        pub connect: v5::Connect,
        pub will: Option<v5::LastWill>,
        pub username: Option<String>,
        pub password: Option<bytes::Bytes>,
    }

    #[derive(Debug, thiserror::Error)]
    pub enum CodecError {
        #[error("malformed packet: {0}")]
        Malformed(String),
        #[error("packet too large")]
        TooLarge,
        #[error("unsupported protocol level {0}")]
        Protocol(u8),
        #[error("protocol error: {0}")]
        ProtocolError(String),
    }

    impl CodecError {
        pub fn reason_code(&self) -> u8 {
            match self {
                CodecError::Malformed(_) => 0x81,
                CodecError::TooLarge => 0x95,
                CodecError::Protocol(_) => 0x84,
                CodecError::ProtocolError(_) => 0x82,
            }
        }
        pub fn connack_v311_code(&self) -> Option<u8> {
            match self {
                CodecError::Protocol(_) => Some(1),
                _ => None,
            }
        }
    }

    fn q5(q: m4::QoS) -> QoS {
        match q {
            m4::QoS::AtMostOnce => QoS::AtMostOnce,
            m4::QoS::AtLeastOnce => QoS::AtLeastOnce,
            m4::QoS::ExactlyOnce => QoS::ExactlyOnce,
        }
    }
    fn q4(q: QoS) -> m4::QoS {
        match q {
            QoS::AtMostOnce => m4::QoS::AtMostOnce,
            QoS::AtLeastOnce => m4::QoS::AtLeastOnce,
            QoS::ExactlyOnce => m4::QoS::ExactlyOnce,
        }
    }

    pub fn decode_connect(
        buf: &mut BytesMut,
        max_packet_size: usize,
    ) -> Result<Option<ConnectPacket>, CodecError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        if buf[0] != 0x10 {
            return Err(CodecError::ProtocolError(
                "first packet is not CONNECT".into(),
            ));
        }
        // find protocol level
        let mut i = 1;
        let mut len: usize = 0;
        let mut shift = 0;
        loop {
            if i >= buf.len() {
                return Ok(None);
            }
            let b = buf[i];
            len += ((b & 0x7f) as usize) << shift;
            shift += 7;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            if shift > 21 {
                return Err(CodecError::Malformed("remaining length".into()));
            }
        }
        if len + i > max_packet_size {
            return Err(CodecError::TooLarge);
        }
        if buf.len() < len + i {
            return Ok(None);
        }
        if len < 7 {
            return Err(CodecError::Malformed("short connect".into()));
        }
        let level = buf[i + 6];
        if buf[i + 7] & 1 != 0 {
            return Err(CodecError::Malformed("reserved flag".into()));
        }
        match level {
            4 => {
                let p = v4::Packet::read(buf, max_packet_size)
                    .map_err(|e| CodecError::Malformed(e.to_string()))?;
                let v4::Packet::Connect(c) = p else {
                    return Err(CodecError::Malformed("not connect".into()));
                };
                Ok(Some(ConnectPacket {
                    version: ProtocolVersion::V311,
                    connect: v5::Connect {
                        keep_alive: c.keep_alive,
                        client_id: c.client_id,
                        clean_start: c.clean_session,
                        properties: None,
                    },
                    will: c.last_will.map(|w| v5::LastWill {
                        topic: bytes::Bytes::from(w.topic),
                        message: w.message,
                        qos: q5(w.qos),
                        retain: w.retain,
                        properties: None,
                    }),
                    username: c.login.as_ref().map(|l| l.username.clone()),
                    password: c.login.map(|l| bytes::Bytes::from(l.password)),
                }))
            }
            5 => {
                let p = v5::Packet::read(buf, Some(max_packet_size as u32))
                    .map_err(|e| CodecError::Malformed(e.to_string()))?;
                let v5::Packet::Connect(c, will, login) = p else {
                    return Err(CodecError::Malformed("not connect".into()));
                };
                Ok(Some(ConnectPacket {
                    version: ProtocolVersion::V5,
                    connect: c,
                    will,
                    username: login.as_ref().map(|l| l.username.clone()),
                    password: login.map(|l| bytes::Bytes::from(l.password)),
                }))
            }
            l => Err(CodecError::Protocol(l)),
        }
    }

    pub struct Codec {
        pub version: ProtocolVersion,
        pub max_incoming: usize,
    }

    impl Codec {
        pub fn new(version: ProtocolVersion, max_incoming: usize) -> Codec {
            Codec {
                version,
                max_incoming,
            }
        }

        pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<v5::Packet>, CodecError> {
            match self.version {
                ProtocolVersion::V5 if buf.len() >= 2 && buf[0] == 0xE0 && buf[1] == 0 => {
                    let _ = buf.split_to(2);
                    Ok(Some(v5::Packet::Disconnect(v5::Disconnect::new(
                        v5::DisconnectReasonCode::NormalDisconnection,
                    ))))
                }
                ProtocolVersion::V5 => {
                    match v5::Packet::read(buf, Some(self.max_incoming as u32)) {
                        Ok(p) => Ok(Some(p)),
                        Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                        Err(rumqttc::v5::mqttbytes::Error::PayloadSizeLimitExceeded { .. }) => {
                            Err(CodecError::TooLarge)
                        }
                        Err(e) => Err(CodecError::Malformed(e.to_string())),
                    }
                }
                ProtocolVersion::V311 => {
                    let p = match v4::Packet::read(buf, self.max_incoming) {
                        Ok(p) => p,
                        Err(m4::Error::InsufficientBytes(_)) => return Ok(None),
                        Err(m4::Error::PayloadSizeLimitExceeded(_)) => {
                            return Err(CodecError::TooLarge)
                        }
                        Err(e) => return Err(CodecError::Malformed(e.to_string())),
                    };
                    Ok(Some(match p {
                        v4::Packet::Connect(c) => v5::Packet::Connect(
                            v5::Connect {
                                keep_alive: c.keep_alive,
                                client_id: c.client_id,
                                clean_start: c.clean_session,
                                properties: None,
                            },
                            None,
                            None,
                        ),
                        v4::Packet::Publish(p) => v5::Packet::Publish(v5::Publish {
                            dup: p.dup,
                            qos: q5(p.qos),
                            retain: p.retain,
                            topic: bytes::Bytes::from(p.topic),
                            pkid: p.pkid,
                            payload: p.payload,
                            properties: None,
                        }),
                        v4::Packet::PubAck(a) => v5::Packet::PubAck(v5::PubAck {
                            pkid: a.pkid,
                            reason: v5::PubAckReason::Success,
                            properties: None,
                        }),
                        v4::Packet::PubRec(a) => v5::Packet::PubRec(v5::PubRec {
                            pkid: a.pkid,
                            reason: v5::PubRecReason::Success,
                            properties: None,
                        }),
                        v4::Packet::PubRel(a) => v5::Packet::PubRel(v5::PubRel {
                            pkid: a.pkid,
                            reason: v5::PubRelReason::Success,
                            properties: None,
                        }),
                        v4::Packet::PubComp(a) => v5::Packet::PubComp(v5::PubComp {
                            pkid: a.pkid,
                            reason: v5::PubCompReason::Success,
                            properties: None,
                        }),
                        v4::Packet::Subscribe(s) => v5::Packet::Subscribe(v5::Subscribe {
                            pkid: s.pkid,
                            filters: s
                                .filters
                                .into_iter()
                                .map(|f| v5::Filter {
                                    path: f.path,
                                    qos: q5(f.qos),
                                    nolocal: false,
                                    preserve_retain: false,
                                    retain_forward_rule: v5::RetainForwardRule::OnEverySubscribe,
                                })
                                .collect(),
                            properties: None,
                        }),
                        v4::Packet::Unsubscribe(u) => v5::Packet::Unsubscribe(v5::Unsubscribe {
                            pkid: u.pkid,
                            filters: u.topics,
                            properties: None,
                        }),
                        v4::Packet::PingReq => v5::Packet::PingReq(v5::PingReq),
                        v4::Packet::Disconnect => v5::Packet::Disconnect(v5::Disconnect {
                            reason_code: v5::DisconnectReasonCode::NormalDisconnection,
                            properties: None,
                        }),
                        _ => return Err(CodecError::ProtocolError("server packet".into())),
                    }))
                }
            }
        }

        pub fn encode(&self, packet: &v5::Packet, buf: &mut BytesMut) -> Result<usize, CodecError> {
            match self.version {
                ProtocolVersion::V5 => packet
                    .write(buf, None)
                    .map_err(|e| CodecError::Malformed(e.to_string())),
                ProtocolVersion::V311 => {
                    let p = match packet {
                        v5::Packet::ConnAck(c) => v4::Packet::ConnAck(v4::ConnAck {
                            session_present: c.session_present,
                            code: match c.code {
                                v5::ConnectReturnCode::Success => v4::ConnectReturnCode::Success,
                                v5::ConnectReturnCode::RefusedProtocolVersion => {
                                    v4::ConnectReturnCode::RefusedProtocolVersion
                                }
                                v5::ConnectReturnCode::BadClientId
                                | v5::ConnectReturnCode::ClientIdentifierNotValid => {
                                    v4::ConnectReturnCode::BadClientId
                                }
                                v5::ConnectReturnCode::BadUserNamePassword => {
                                    v4::ConnectReturnCode::BadUserNamePassword
                                }
                                v5::ConnectReturnCode::NotAuthorized
                                | v5::ConnectReturnCode::ConnectionRateExceeded => {
                                    v4::ConnectReturnCode::NotAuthorized
                                }
                                _ => v4::ConnectReturnCode::ServiceUnavailable,
                            },
                        }),
                        v5::Packet::Publish(p) => v4::Packet::Publish(v4::Publish {
                            dup: p.dup,
                            qos: q4(p.qos),
                            retain: p.retain,
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            pkid: p.pkid,
                            payload: p.payload.clone(),
                        }),
                        v5::Packet::PubAck(a) => v4::Packet::PubAck(v4::PubAck::new(a.pkid)),
                        v5::Packet::PubRec(a) => v4::Packet::PubRec(v4::PubRec::new(a.pkid)),
                        v5::Packet::PubRel(a) => v4::Packet::PubRel(v4::PubRel::new(a.pkid)),
                        v5::Packet::PubComp(a) => v4::Packet::PubComp(v4::PubComp::new(a.pkid)),
                        v5::Packet::SubAck(s) => v4::Packet::SubAck(v4::SubAck::new(
                            s.pkid,
                            s.return_codes
                                .iter()
                                .map(|c| match c {
                                    v5::SubscribeReasonCode::Success(q) => {
                                        v4::SubscribeReasonCode::Success(q4(*q))
                                    }
                                    _ => v4::SubscribeReasonCode::Failure,
                                })
                                .collect(),
                        )),
                        v5::Packet::UnsubAck(u) => v4::Packet::UnsubAck(v4::UnsubAck::new(u.pkid)),
                        v5::Packet::PingResp(_) => v4::Packet::PingResp,
                        v5::Packet::Disconnect(_) => return Ok(0),
                        _ => return Err(CodecError::ProtocolError("cannot encode".into())),
                    };
                    p.write(buf, usize::MAX)
                        .map_err(|e| CodecError::Malformed(e.to_string()))
                }
            }
        }
    }
}

pub mod topic {
    #[derive(Debug, thiserror::Error, PartialEq, Eq)]
    pub enum TopicError {
        #[error("invalid topic")]
        Invalid,
    }
    pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
        if topic.is_empty() || topic.contains(['+', '#', '\0']) || topic.len() > 65535 {
            return Err(TopicError::Invalid);
        }
        Ok(())
    }
    pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
        if filter.is_empty() || filter.contains('\0') {
            return Err(TopicError::Invalid);
        }
        let levels: Vec<&str> = filter.split('/').collect();
        for (i, l) in levels.iter().enumerate() {
            if l.contains('#') && (*l != "#" || i != levels.len() - 1) {
                return Err(TopicError::Invalid);
            }
            if l.contains('+') && *l != "+" {
                return Err(TopicError::Invalid);
            }
        }
        Ok(())
    }
    pub fn topic_from_bytes(raw: &[u8]) -> Result<&str, TopicError> {
        let s = std::str::from_utf8(raw).map_err(|_| TopicError::Invalid)?;
        if s.contains('\0') {
            return Err(TopicError::Invalid);
        }
        Ok(s)
    }
    pub fn matches(filter: &str, topic: &str) -> bool {
        if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let mut f = filter.split('/');
        let mut t = topic.split('/');
        loop {
            match (f.next(), t.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
    pub fn filter_covers(outer: &str, inner: &str) -> bool {
        matches(outer, inner)
    }
    pub struct SharedFilter<'a> {
        pub group: &'a str,
        pub filter: &'a str,
    }
    pub fn parse_shared(filter: &str) -> Result<Option<SharedFilter<'_>>, TopicError> {
        let Some(rest) = filter.strip_prefix("$share/") else {
            return Ok(None);
        };
        let Some((group, f)) = rest.split_once('/') else {
            return Err(TopicError::Invalid);
        };
        if group.is_empty() || group.contains(['+', '#']) || f.is_empty() {
            return Err(TopicError::Invalid);
        }
        Ok(Some(SharedFilter { group, filter: f }))
    }
}

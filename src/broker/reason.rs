//! MQTT v5 reason codes by name, and the one place where they map onto MQTT 3.1.1
//! (CONNACK return codes, SUBACK failure) and onto the codec's packet types. Code
//! that refuses, disconnects or acknowledges names a `ReasonCode` instead of writing
//! a number. It holds no state and must never choose which code applies: the caller
//! decides, this only names and translates.

// The codec's packet types, named from rumqttc directly: the codec uses this module.
use rumqttc::v5::mqttbytes::v5;

/// An MQTT v5 reason code (MQTT 5 §2.4). 0x00 has three names in the specification
/// (Success, Normal disconnection, Granted QoS 0): the variant is `Success`, the
/// other two are associated constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReasonCode {
    Success = 0x00,
    GrantedQoS1 = 0x01,
    GrantedQoS2 = 0x02,
    DisconnectWithWillMessage = 0x04,
    NoMatchingSubscribers = 0x10,
    NoSubscriptionExisted = 0x11,
    ContinueAuthentication = 0x18,
    ReAuthenticate = 0x19,
    UnspecifiedError = 0x80,
    MalformedPacket = 0x81,
    ProtocolError = 0x82,
    ImplementationSpecificError = 0x83,
    UnsupportedProtocolVersion = 0x84,
    ClientIdentifierNotValid = 0x85,
    BadUserNameOrPassword = 0x86,
    NotAuthorized = 0x87,
    ServerUnavailable = 0x88,
    ServerBusy = 0x89,
    Banned = 0x8A,
    ServerShuttingDown = 0x8B,
    BadAuthenticationMethod = 0x8C,
    KeepAliveTimeout = 0x8D,
    SessionTakenOver = 0x8E,
    TopicFilterInvalid = 0x8F,
    TopicNameInvalid = 0x90,
    PacketIdentifierInUse = 0x91,
    PacketIdentifierNotFound = 0x92,
    ReceiveMaximumExceeded = 0x93,
    TopicAliasInvalid = 0x94,
    PacketTooLarge = 0x95,
    MessageRateTooHigh = 0x96,
    QuotaExceeded = 0x97,
    AdministrativeAction = 0x98,
    PayloadFormatInvalid = 0x99,
    RetainNotSupported = 0x9A,
    QoSNotSupported = 0x9B,
    UseAnotherServer = 0x9C,
    ServerMoved = 0x9D,
    SharedSubscriptionsNotSupported = 0x9E,
    ConnectionRateExceeded = 0x9F,
    MaximumConnectTime = 0xA0,
    SubscriptionIdentifiersNotSupported = 0xA1,
    WildcardSubscriptionsNotSupported = 0xA2,
}

/// MQTT 3.1.1 SUBACK return code of a refused subscription.
pub const SUBACK_FAILURE_V311: u8 = 0x80;

impl ReasonCode {
    /// 0x00 in a DISCONNECT.
    pub const NORMAL_DISCONNECTION: ReasonCode = ReasonCode::Success;
    /// 0x00 in a SUBACK.
    pub const GRANTED_QOS0: ReasonCode = ReasonCode::Success;

    /// Every defined code, in numeric order.
    pub const ALL: [ReasonCode; 43] = {
        use ReasonCode::*;
        [
            Success,
            GrantedQoS1,
            GrantedQoS2,
            DisconnectWithWillMessage,
            NoMatchingSubscribers,
            NoSubscriptionExisted,
            ContinueAuthentication,
            ReAuthenticate,
            UnspecifiedError,
            MalformedPacket,
            ProtocolError,
            ImplementationSpecificError,
            UnsupportedProtocolVersion,
            ClientIdentifierNotValid,
            BadUserNameOrPassword,
            NotAuthorized,
            ServerUnavailable,
            ServerBusy,
            Banned,
            ServerShuttingDown,
            BadAuthenticationMethod,
            KeepAliveTimeout,
            SessionTakenOver,
            TopicFilterInvalid,
            TopicNameInvalid,
            PacketIdentifierInUse,
            PacketIdentifierNotFound,
            ReceiveMaximumExceeded,
            TopicAliasInvalid,
            PacketTooLarge,
            MessageRateTooHigh,
            QuotaExceeded,
            AdministrativeAction,
            PayloadFormatInvalid,
            RetainNotSupported,
            QoSNotSupported,
            UseAnotherServer,
            ServerMoved,
            SharedSubscriptionsNotSupported,
            ConnectionRateExceeded,
            MaximumConnectTime,
            SubscriptionIdentifiersNotSupported,
            WildcardSubscriptionsNotSupported,
        ]
    };

    /// The code on the wire.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The code named by `value`; `None` for a value MQTT 5 does not define.
    pub fn from_u8(value: u8) -> Option<ReasonCode> {
        ReasonCode::ALL.into_iter().find(|c| c.as_u8() == value)
    }

    /// The MQTT 3.1.1 CONNACK return code for a CONNACK with this code: 0 accepted,
    /// 1 unacceptable protocol version, 2 identifier rejected, 4 bad user name or
    /// password (also a bad authentication method), 5 not authorized (also a
    /// connection rate exceeded), 3 server unavailable for every other refusal.
    pub const fn connack_v311(self) -> u8 {
        match self {
            ReasonCode::Success => 0,
            ReasonCode::UnsupportedProtocolVersion => 1,
            ReasonCode::ClientIdentifierNotValid => 2,
            ReasonCode::BadUserNameOrPassword | ReasonCode::BadAuthenticationMethod => 4,
            ReasonCode::NotAuthorized | ReasonCode::ConnectionRateExceeded => 5,
            _ => 3,
        }
    }

    /// The MQTT 3.1.1 SUBACK return code for a SUBACK with this code: the granted
    /// QoS, or 0x80 for every refusal.
    pub const fn suback_v311(self) -> u8 {
        match self {
            ReasonCode::Success => 0,
            ReasonCode::GrantedQoS1 => 1,
            ReasonCode::GrantedQoS2 => 2,
            _ => SUBACK_FAILURE_V311,
        }
    }

    /// The code of a CONNACK as the codec holds it. The three 3.1.1-only return
    /// codes map to their v5 equivalents (1 → 0x84, 2 → 0x85, 3 → 0x88).
    pub fn from_connect_return_code(code: v5::ConnectReturnCode) -> ReasonCode {
        use v5::ConnectReturnCode as C;
        match code {
            C::Success => ReasonCode::Success,
            C::RefusedProtocolVersion | C::UnsupportedProtocolVersion => {
                ReasonCode::UnsupportedProtocolVersion
            }
            C::BadClientId | C::ClientIdentifierNotValid => ReasonCode::ClientIdentifierNotValid,
            C::ServiceUnavailable | C::ServerUnavailable => ReasonCode::ServerUnavailable,
            C::UnspecifiedError => ReasonCode::UnspecifiedError,
            C::MalformedPacket => ReasonCode::MalformedPacket,
            C::ProtocolError => ReasonCode::ProtocolError,
            C::ImplementationSpecificError => ReasonCode::ImplementationSpecificError,
            C::BadUserNamePassword => ReasonCode::BadUserNameOrPassword,
            C::NotAuthorized => ReasonCode::NotAuthorized,
            C::ServerBusy => ReasonCode::ServerBusy,
            C::Banned => ReasonCode::Banned,
            C::BadAuthenticationMethod => ReasonCode::BadAuthenticationMethod,
            C::TopicNameInvalid => ReasonCode::TopicNameInvalid,
            C::PacketTooLarge => ReasonCode::PacketTooLarge,
            C::QuotaExceeded => ReasonCode::QuotaExceeded,
            C::PayloadFormatInvalid => ReasonCode::PayloadFormatInvalid,
            C::RetainNotSupported => ReasonCode::RetainNotSupported,
            C::QoSNotSupported => ReasonCode::QoSNotSupported,
            C::UseAnotherServer => ReasonCode::UseAnotherServer,
            C::ServerMoved => ReasonCode::ServerMoved,
            C::ConnectionRateExceeded => ReasonCode::ConnectionRateExceeded,
        }
    }

    /// This code in a CONNACK as the codec holds it; a code MQTT 5 does not allow in
    /// a CONNACK becomes 0x80 Unspecified error.
    pub fn connect_return_code(self) -> v5::ConnectReturnCode {
        use v5::ConnectReturnCode as C;
        match self {
            ReasonCode::Success => C::Success,
            ReasonCode::MalformedPacket => C::MalformedPacket,
            ReasonCode::ProtocolError => C::ProtocolError,
            ReasonCode::ImplementationSpecificError => C::ImplementationSpecificError,
            ReasonCode::UnsupportedProtocolVersion => C::UnsupportedProtocolVersion,
            ReasonCode::ClientIdentifierNotValid => C::ClientIdentifierNotValid,
            ReasonCode::BadUserNameOrPassword => C::BadUserNamePassword,
            ReasonCode::NotAuthorized => C::NotAuthorized,
            ReasonCode::ServerUnavailable => C::ServerUnavailable,
            ReasonCode::ServerBusy => C::ServerBusy,
            ReasonCode::Banned => C::Banned,
            ReasonCode::BadAuthenticationMethod => C::BadAuthenticationMethod,
            ReasonCode::TopicNameInvalid => C::TopicNameInvalid,
            ReasonCode::PacketTooLarge => C::PacketTooLarge,
            ReasonCode::QuotaExceeded => C::QuotaExceeded,
            ReasonCode::PayloadFormatInvalid => C::PayloadFormatInvalid,
            ReasonCode::RetainNotSupported => C::RetainNotSupported,
            ReasonCode::QoSNotSupported => C::QoSNotSupported,
            ReasonCode::UseAnotherServer => C::UseAnotherServer,
            ReasonCode::ServerMoved => C::ServerMoved,
            ReasonCode::ConnectionRateExceeded => C::ConnectionRateExceeded,
            _ => C::UnspecifiedError,
        }
    }

    /// This code in a DISCONNECT as the codec holds it; one the codec cannot carry
    /// becomes 0x80 Unspecified error.
    pub fn disconnect_reason_code(self) -> v5::DisconnectReasonCode {
        v5::DisconnectReasonCode::try_from(self.as_u8())
            .unwrap_or(v5::DisconnectReasonCode::UnspecifiedError)
    }
}

impl std::fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?} (0x{:02X})", self.as_u8())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_byte() {
        for code in ReasonCode::ALL {
            assert_eq!(ReasonCode::from_u8(code.as_u8()), Some(code));
        }
        let mut bytes: Vec<u8> = ReasonCode::ALL.iter().map(|c| c.as_u8()).collect();
        bytes.dedup();
        assert_eq!(
            bytes.len(),
            ReasonCode::ALL.len(),
            "in order, no duplicates"
        );
        assert!(bytes.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn undefined_values_are_rejected() {
        let defined = ReasonCode::ALL.len();
        let known = (0..=u8::MAX)
            .filter(|&v| ReasonCode::from_u8(v).is_some())
            .count();
        assert_eq!(known, defined);
        for v in [0x03, 0x05, 0x12, 0x7F, 0xA3, 0xFF] {
            assert_eq!(ReasonCode::from_u8(v), None, "0x{v:02X}");
        }
    }

    #[test]
    fn v5_connack_codes_map_to_their_v311_return_codes() {
        use ReasonCode::*;
        let table = [
            (Success, 0),
            (UnspecifiedError, 3),
            (MalformedPacket, 3),
            (ProtocolError, 3),
            (ImplementationSpecificError, 3),
            (UnsupportedProtocolVersion, 1),
            (ClientIdentifierNotValid, 2),
            (BadUserNameOrPassword, 4),
            (NotAuthorized, 5),
            (ServerUnavailable, 3),
            (ServerBusy, 3),
            (Banned, 3),
            (BadAuthenticationMethod, 4),
            (TopicNameInvalid, 3),
            (PacketTooLarge, 3),
            (QuotaExceeded, 3),
            (PayloadFormatInvalid, 3),
            (RetainNotSupported, 3),
            (QoSNotSupported, 3),
            (UseAnotherServer, 3),
            (ServerMoved, 3),
            (ConnectionRateExceeded, 5),
        ];
        for (code, v311) in table {
            assert_eq!(code.connack_v311(), v311, "{code}");
            // Every v5 CONNACK code survives the codec's type unchanged.
            assert_eq!(
                ReasonCode::from_connect_return_code(code.connect_return_code()),
                code
            );
        }
    }

    #[test]
    fn v311_only_connack_codes_map_to_their_v5_equivalents() {
        use v5::ConnectReturnCode as C;
        for (code, v311) in [
            (C::RefusedProtocolVersion, 1),
            (C::BadClientId, 2),
            (C::ServiceUnavailable, 3),
        ] {
            assert_eq!(
                ReasonCode::from_connect_return_code(code).connack_v311(),
                v311
            );
        }
    }

    #[test]
    fn codes_a_connack_cannot_carry_become_unspecified() {
        for code in [ReasonCode::TopicFilterInvalid, ReasonCode::KeepAliveTimeout] {
            assert_eq!(
                code.connect_return_code(),
                v5::ConnectReturnCode::UnspecifiedError
            );
        }
    }

    #[test]
    fn suback_failures_are_0x80_in_v311() {
        assert_eq!(ReasonCode::GRANTED_QOS0.suback_v311(), 0);
        assert_eq!(ReasonCode::GrantedQoS1.suback_v311(), 1);
        assert_eq!(ReasonCode::GrantedQoS2.suback_v311(), 2);
        for code in [
            ReasonCode::UnspecifiedError,
            ReasonCode::NotAuthorized,
            ReasonCode::TopicFilterInvalid,
            ReasonCode::QuotaExceeded,
        ] {
            assert_eq!(code.suback_v311(), SUBACK_FAILURE_V311);
        }
    }
}

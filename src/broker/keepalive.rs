//! The keep alive a CONNECT is granted: the client's request checked against the
//! listener's policy (`min_keepalive`, `allow_zero_keepalive`) and `[broker]
//! max_keepalive`. It only decides; the connection task sends the CONNACK.
//!
//! MQTT 5 lets the server override the client (Server Keep Alive in the CONNACK, MQTT 5
//! section 3.2.2.3.14), so a v5 request outside the policy is corrected. MQTT 3.1.1 has
//! no way to tell the client, so such a request is refused with CONNACK 0x02 "identifier
//! rejected", which is what Mosquitto sends a 3.1.1 client whose keep alive breaks its
//! `max_keepalive` (a familiar code for operators moving from Mosquitto).

/// What a listener demands of the MQTT keep alive in CONNECT. The default (zero
/// allowed, no minimum) accepts every request up to `[broker] max_keepalive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlivePolicy {
    /// Whether keep alive 0 ("never check") is accepted as it is.
    pub allow_zero: bool,
    /// Smallest keep alive accepted, in seconds (0: no minimum).
    pub min: u16,
}

impl Default for KeepAlivePolicy {
    fn default() -> Self {
        KeepAlivePolicy {
            allow_zero: true,
            min: 0,
        }
    }
}

/// The keep alive a connection runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAliveGrant {
    /// Seconds the server enforces (at 1.5x); 0 means not checked.
    pub keep_alive: u16,
    /// Sent to a v5 client as Server Keep Alive when it differs from its request.
    pub server_keep_alive: Option<u16>,
}

impl KeepAlivePolicy {
    /// Grant `requested` (from CONNECT) or say why a 3.1.1 client is refused.
    /// `max` is `[broker] max_keepalive`; validation keeps `min <= max`.
    pub fn grant(&self, requested: u16, max: u16, v5: bool) -> Result<KeepAliveGrant, String> {
        let wanted = if requested == 0 && !self.allow_zero {
            // A v5 client that asked for "never" is told the listener's minimum (the
            // keep alive this listener asks for), or the largest one without a minimum.
            Some(if self.min > 0 { self.min } else { max })
        } else if requested > 0 && requested < self.min {
            Some(self.min)
        } else if requested > max || (requested == 0 && max < u16::MAX) {
            // Keep alive 0 means "never", which is more than any maximum below 65535.
            // A 3.1.1 client above the maximum keeps its value, as before this policy.
            v5.then_some(max)
        } else {
            None
        };
        match wanted {
            None => Ok(KeepAliveGrant {
                keep_alive: requested,
                server_keep_alive: None,
            }),
            Some(granted) if v5 => Ok(KeepAliveGrant {
                keep_alive: granted,
                server_keep_alive: Some(granted),
            }),
            Some(_) if requested == 0 => {
                Err("keep alive 0 is not allowed on this listener; set a keep alive".to_string())
            }
            Some(min) => Err(format!(
                "keep alive {requested} s is below this listener's minimum of {min} s"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u16 = u16::MAX;

    fn granted(keep_alive: u16, server: Option<u16>) -> Result<KeepAliveGrant, String> {
        Ok(KeepAliveGrant {
            keep_alive,
            server_keep_alive: server,
        })
    }

    #[test]
    fn default_policy_keeps_every_request_including_zero() {
        let p = KeepAlivePolicy::default();
        for v5 in [false, true] {
            assert_eq!(p.grant(0, MAX, v5), granted(0, None));
            assert_eq!(p.grant(1, MAX, v5), granted(1, None));
            assert_eq!(p.grant(MAX, MAX, v5), granted(MAX, None));
        }
    }

    #[test]
    fn broker_maximum_still_caps_v5_and_replaces_zero() {
        let p = KeepAlivePolicy::default();
        assert_eq!(p.grant(600, 300, true), granted(300, Some(300)));
        assert_eq!(p.grant(0, 300, true), granted(300, Some(300)));
        assert_eq!(p.grant(600, 300, false), granted(600, None));
        assert_eq!(p.grant(0, 300, false), granted(0, None));
    }

    #[test]
    fn zero_not_allowed_gives_v5_the_minimum_and_refuses_v311() {
        let p = KeepAlivePolicy {
            allow_zero: false,
            min: 30,
        };
        assert_eq!(p.grant(0, MAX, true), granted(30, Some(30)));
        let refused = p.grant(0, MAX, false).expect_err("3.1.1 refused");
        assert!(refused.contains("keep alive 0 is not allowed"), "{refused}");
    }

    #[test]
    fn zero_not_allowed_without_minimum_gives_v5_the_maximum() {
        let p = KeepAlivePolicy {
            allow_zero: false,
            min: 0,
        };
        assert_eq!(p.grant(0, 120, true), granted(120, Some(120)));
        assert_eq!(p.grant(0, MAX, true), granted(MAX, Some(MAX)));
        assert_eq!(p.grant(5, MAX, true), granted(5, None));
        assert!(p.grant(0, MAX, false).is_err());
    }

    #[test]
    fn below_minimum_is_raised_for_v5_and_refused_for_v311() {
        let p = KeepAlivePolicy {
            allow_zero: true,
            min: 30,
        };
        assert_eq!(p.grant(10, MAX, true), granted(30, Some(30)));
        let refused = p.grant(10, MAX, false).expect_err("3.1.1 refused");
        assert!(
            refused.contains("below") && refused.contains("30 s"),
            "{refused}"
        );
        assert_eq!(p.grant(30, MAX, false), granted(30, None));
        assert_eq!(p.grant(45, MAX, true), granted(45, None));
        // Zero is allowed here, so it is not "below the minimum".
        assert_eq!(p.grant(0, MAX, false), granted(0, None));
    }
}

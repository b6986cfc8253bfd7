//! Packet codec: rumqttc's mqttbytes (v4 and v5) wrapped so that no input can panic,
//! with v3.1.1 packets mapped onto the v5 types the rest of the broker speaks.

//! Edge access beyond plain MQTT sockets: MQTT over WebSocket (`ws.rs`, used by the
//! listeners of `transport = "ws" | "wss"`) and the Prometheus metrics endpoint
//! (`metrics.rs`, the `[metrics]` section), and the listeners' rate controls (`rate.rs`:
//! token buckets for connection attempts and PUBLISH rates). They are front doors only:
//! they must never hold broker state or decide who may do what (auth and ACL stay in the
//! broker core).

pub mod metrics;
pub mod rate;
pub mod ws;

//! The one test-support module of the integration tests. Each `tests/*.rs` that needs
//! helpers declares `mod support;` and uses what it needs; every test binary compiles
//! all of it and uses only part, hence the `allow` below.
//!
//! - [`wait`]: the one `WAIT` limit, polling waits that fail loudly, and absence proven by
//!   a trailing marker (never by a quiet window).
//! - [`net`]: free loopback ports.
//! - [`broker`]: the broker started in-process on 127.0.0.1:0 behind a plain TCP accept loop.
//! - [`clients`]: rumqttc v3.1.1/v5 clients whose events can be awaited, and a raw v5 socket.
//! - [`raw`]: a byte-level MQTT 3.1.1/5 client (packet encoders, a bounded packet
//!   reader, v5 property readers) that sees AUTH, DISCONNECT and bare closes.
//! - [`dial`]: rumqttc clients of a whole gateway over TCP or TLS, with credentials, whose
//!   refusals are results (for the security tests).
//! - [`cloud`]: the bridge's cloud (mosquitto over mTLS), its clients and the bridge config.
//! - [`gateway`]: the gateway in-process (`App`) from a written configuration, the
//!   `tollgate` binary as an operator runs it, and a fake systemd notify socket.
//! - [`process`]: the `tollgate` binary as a child process (SIGKILL, SIGTERM, its log).
//! - [`pki`]: certificates: a `tollgate::pki` directory and rcgen CAs and leaves.
//! - [`peers`]: external programs (Debian's mosquitto, mosquitto_pub/sub/passwd, openssl,
//!   socat, ...) that may be skipped only without `TOLLGATE_REQUIRE_PEERS=1`.
//! - [`logs`]: what tracing writes, captured for assertions.
//! - [`auth`]: authentication requests and a password file for the `auth_*` tests.
//! - [`fixtures`]: shared test data (the seed ACL).
#![allow(dead_code, unused_imports)]

pub mod auth;
pub mod broker;
pub mod clients;
pub mod cloud;
pub mod dial;
pub mod fixtures;
pub mod gateway;
pub mod jwt;
pub mod logs;
pub mod modbus;
pub mod net;
pub mod peers;
pub mod pki;
pub mod process;
pub mod raw;
pub mod wait;

// The helpers most tests use, at `support::` directly. `dial` is left out: its `V4`/`V5`
// clients differ from those of `clients` (use `support::dial::*`).
pub use broker::*;
pub use clients::*;
pub use net::*;
pub use peers::*;
pub use wait::*;

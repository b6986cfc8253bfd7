//! tollgate: a secure MQTT edge gateway for Raspberry Pi class hardware.
//!
//! The library holds every component; `main.rs` is a thin CLI shell over it so
//! integration tests can start a real gateway in-process.
#![forbid(unsafe_code)]

pub mod acl;
pub mod app;
pub mod auth;
pub mod bridge;
pub mod broker;
pub mod cli;
pub mod component;
pub mod config;
pub mod duration;
pub mod edge;
pub mod findings;
pub mod fsutil;
pub mod gpio;
pub mod journal;
pub mod modbus;
pub mod pki;
pub mod reply;
pub mod serial;
pub mod telemetry;
pub mod timestamp;
pub mod tls;
pub mod topic;
pub mod uart;

//! ws-relay-server library: the WebSocket relay of the RELAYWS environment (token check,
//! pairing, bounded forwarding, control API, health and metrics), used by the thin `main.rs`.

pub mod budget;
pub mod client;
pub mod config;
pub mod conn;
pub mod control;
pub mod http;
pub mod log;
pub mod metrics;
pub mod relay;
pub mod server;
pub mod spill;
pub mod state;
pub mod tls;
pub mod token;

//! reemo-standin: a small stand-in for each Reemo Infra service, for tests and demos of the
//! Infra appliance where the vendor's images cannot be shipped. One binary, configured per
//! service by environment variables: `config` (parse, then read files) → `serve` (health
//! JSON over mutual TLS, database and peer checks) or `db` (the `mysql` role's row store).

pub mod config;
pub mod db;
pub mod health;
pub mod http;
pub mod serve;
pub mod tls;

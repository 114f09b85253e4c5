//! The presence service: online status and typing, kept in Redis, fed by the
//! gateways over RabbitMQ (the presence queue), announced to the people
//! concerned through the fan-out exchange (`chat_shared::amqp::Announcer`).
//!
//! - [`online`]: sessions, gateway heartbeats, expiry and the offline grace;
//! - [`typing`]: relay, throttle and lapse of typing;
//! - `chat_shared::directory`: conversation members and who shares one, from Postgres;
//! - [`service`]: one event or one sweep at a time; [`startup`]: wiring.

pub mod notify;
pub mod online;
pub mod service;
pub mod startup;
pub mod typing;

pub use startup::Presence;

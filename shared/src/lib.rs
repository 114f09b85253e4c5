//! What every mapmo-chat service shares, and nothing service-specific:
//!
//! - [`protocol`]: the client contract (frames, objects, HTTP bodies) as types;
//! - [`ids`]: typed ids and validated values (`UserId`, `MessageBody`, ...);
//! - [`bus`]: the events services exchange over RabbitMQ;
//! - [`amqp`]: topology names, connecting, declaring, confirmed publishing;
//! - [`cache`]: Redis connection and key layout (presence);
//! - [`schema`]: the Postgres schema as sea-orm migrations, and connecting;
//! - [`config`]: typed layered settings; [`telemetry`]: logging;
//!   [`shutdown`]: the stop signal; [`time`]: wire timestamps;
//!   [`metrics`]: `/metrics` for services without an HTTP server;
//!   [`runtime`]: the Tokio runtime, sized by the settings.

pub mod amqp;
pub mod bus;
pub mod cache;
pub mod config;
pub mod ids;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod runtime;
pub mod schema;
pub mod shutdown;
pub mod telemetry;
pub mod time;

//! What every mapmo-chat service shares, and nothing service-specific:
//!
//! - [`protocol`]: the client contract (frames, objects, HTTP bodies) as types;
//! - [`ids`]: typed ids and validated values (`UserId`, `MessageBody`, ...);
//! - [`profile`]: people (the User object, display names);
//! - [`bus`]: the events services exchange over RabbitMQ;
//! - [`amqp`]: topology names, connecting, declaring, confirmed publishing,
//!   the fan-out to the gateways, consuming;
//! - [`batch`]: take what is waiting, then linger (persister, gateway);
//! - [`presence_state`]: Redis connection and the key layout of presence state;
//! - [`schema`]: the Postgres schema as sea-orm migrations, and connecting;
//! - [`directory`]: who shares a conversation with whom (Postgres);
//! - [`config`]: typed layered settings; [`telemetry`]: logging;
//!   [`shutdown`]: the stop signal; [`time`]: wire timestamps;
//!   [`metrics`]: `/metrics` for services without an HTTP server;
//!   [`service`]: the broker watch, internal endpoint and background tasks;
//!   [`http_server`]: HTTP/1.1 with a deadline on each request head;
//!   [`runtime`]: the Tokio runtime, sized by the settings.

pub mod amqp;
pub mod batch;
pub mod bus;
pub mod card;
pub mod config;
pub mod directory;
pub mod http_server;
pub mod ids;
pub mod metrics;
pub mod net;
pub mod presence_state;
pub mod privacy;
pub mod profile;
pub mod protocol;
pub mod runtime;
pub mod schema;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod tls;

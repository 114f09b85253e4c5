//! mapmo-chat end to end, on real Postgres and RabbitMQ, from a client's
//! point of view. Run through `deploy/test.sh`, which starts the servers.

mod auth;
mod conformance;
mod consent;
mod durability;
mod failures;
mod groups;
mod history;
mod http_api;
mod idempotency;
mod limits;
mod load;
mod messaging;
mod observability;
mod ordering;
mod people;
mod poison;
mod presence;
mod read_markers;
mod redis_down;
mod server_api;
mod sessions;
mod tls;
mod typing;
mod web;
mod webhook;

//! The gateway: the only public entry point, stateless, any number behind a
//! load balancer. One message's way through it:
//!
//! 1. [`ws`] upgrades `/ws` and authenticates ([`auth`]); [`ws::session`]
//!    reads a `send` frame and parses it at the boundary;
//! 2. [`sender`] publishes it to the persist exchange (confirmed, persistent);
//! 3. the persister stores it and publishes it back on the fan-out exchange;
//! 4. [`fanout`] consumes this gateway's queue and [`hub`] hands the frame to
//!    every local session of every member (the sender's own gets the `ack`).
//!
//! [`listener`] counts connections per client address from the accept and
//! [`server`] serves HTTP/1.1 on them; [`limits`] holds every per-client
//! limit. [`http`] is the HTTP API (conversations, history, presence, dev
//! login, health, readiness; metrics on their own port) over [`store`] and
//! Redis. [`presence_feed`]
//! tells the presence service who is here and who is typing. [`startup`] builds and runs it all.

pub mod auth;
pub mod fanout;
pub mod http;
pub mod hub;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod presence_feed;
pub mod sender;
pub mod server;
pub mod startup;
pub mod state;
pub mod store;
pub mod ws;

pub use startup::Gateway;

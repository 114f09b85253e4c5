//! The gateway: the only public entry point, stateless, any number behind a
//! load balancer. One message's way through it:
//!
//! 1. [`ws`] upgrades `/ws` and authenticates ([`auth`]); [`ws::session`]
//!    reads a `send` frame and [`ws::frames`] checks it (body, rates,
//!    pending sends) and makes it a command;
//! 2. [`sender`] publishes it to the persist exchange (confirmed; persistent
//!    only if `amqp.persistent_sends`), and the session's ledger
//!    ([`ws::ledger`]) waits for its answer;
//! 3. the persister stores it and publishes it back on the fan-out exchange;
//! 4. [`inbox`] consumes this gateway's queue and [`hub`] hands the frame to
//!    every local session of every member (the sender's own gets the `ack`),
//!    through [`outbound`].
//!
//! [`listener`] counts connections per client address from the accept and
//! `chat_shared::http_server` serves HTTP/1.1 on them; [`limits`] holds every per-client
//! limit. [`http`] is the HTTP API (conversations, history, presence, dev
//! login, health, readiness; metrics on their own port) over [`store`] and
//! Redis. [`presence_feed`] tells the presence service who is here and who
//! is typing; [`profiles`] stores the names tokens carry. [`startup`] builds and runs it all.

pub mod auth;
pub mod drain;
pub mod http;
pub mod hub;
pub mod inbox;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod outbound;
pub mod presence_feed;
pub mod profiles;
pub mod sender;
pub mod server_sends;
pub mod startup;
pub mod state;
pub mod store;
pub mod ws;

pub use startup::Gateway;

//! The persister: consumes sends from the persist partitions and stores them
//! in Postgres in group commits, then fans them out. The pipeline, one file
//! per stage:
//!
//! [`consumer`] (partition queues, single active consumer) -> the batcher
//! ([`chat_shared::batch`]: take what has arrived; linger a little when
//! there is company) ->
//! [`writer`] (one transaction: dedupe, membership, seq, insert; its plan,
//! SQL and outcomes in files of their own) -> [`announcer`] (fan-out and
//! replies, confirmed) -> [`acker`] (only after all of that). [`pipeline`]
//! runs them one batch at a time, with the retries; [`startup`] wires it; [`queues`] watches the depth of the partitions
//! and of the dead-letter queue.

pub mod acker;
pub mod announcer;
pub mod consumer;
pub mod metrics;
pub mod notices;
pub mod pipeline;
pub mod queues;
pub mod startup;
pub mod writer;

pub use startup::Persister;

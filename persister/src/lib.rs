//! The persister: consumes sends from the persist partitions and stores them
//! in Postgres in group commits, then fans them out. The pipeline, one file
//! per stage:
//!
//! [`consumer`] (partition queues, single active consumer) -> [`batcher`]
//! (take what has arrived; linger a little when there is company) ->
//! [`writer`] (one transaction: dedupe, membership, seq, insert; its plan,
//! SQL and outcomes in files of their own) -> [`announcer`] (fan-out and
//! replies, confirmed) -> [`acker`] (only after all of that). [`startup`]
//! wires them and retries; [`queues`] watches the depth of the partitions
//! and of the dead-letter queue.

pub mod acker;
pub mod announcer;
pub mod batcher;
pub mod consumer;
pub mod metrics;
pub mod queues;
pub mod startup;
pub mod writer;

pub use startup::Persister;

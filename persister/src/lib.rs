//! The persister: consumes sends from the persist partitions and stores them
//! in Postgres in group commits, then fans them out. The pipeline, one file
//! per stage:
//!
//! [`consumer`] (partition queues, single active consumer) -> [`batcher`]
//! (take what has arrived, no timer) -> [`writer`] (one transaction: dedupe,
//! membership, seq, insert) -> [`announcer`] (fan-out and replies, confirmed)
//! -> ack (in [`startup`], only after all of that). [`queues`] watches the
//! depth of the partitions and of the dead-letter queue.

pub mod announcer;
pub mod batcher;
pub mod consumer;
pub mod metrics;
pub mod queues;
pub mod startup;
pub mod writer;

pub use startup::Persister;

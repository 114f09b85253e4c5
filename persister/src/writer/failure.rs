//! What a failed group commit means, by its SQLSTATE (docs/reliability.md,
//! "Postgres errors by class"): whether to try the same batch again, how
//! often, and, for a command that still fails alone, what its sender is
//! answered. A condition an operator can fix (a failover, a full disk, too
//! many connections, a timeout) never refuses a send for good: the batch
//! waits, or the send is answered `unavailable` and its client sends it
//! again (same `client_msg_id`, so it is stored once).

use chat_shared::protocol::ErrorCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Postgres cannot take writes now, whatever the batch: the connection
    /// is lost (08, I/O, the pool), it is shutting down or restarting
    /// (57P01-57P03), it is read-only (25006: a demoted primary during a
    /// failover), or out of resources (class 53: connections, disk,
    /// memory). Retried for as long as it takes, the batch whole.
    Outage,
    /// A lost race on the idempotency key with another persister (23505),
    /// a serialization failure (40001) or a deadlock (40P01): the same
    /// batch may pass next time. Retried a few times, then stored one by
    /// one. A command that still conflicts alone, with nothing else in its
    /// transaction, is refused `internal`: a race on its own key would
    /// have found it stored, so something else (a constraint, a trigger)
    /// refuses it every time, and sending it again cannot help.
    Conflict,
    /// A statement timed out or was cancelled (57014): retried a few times,
    /// then stored one by one; a command that still times out alone is
    /// answered `unavailable`.
    Slow,
    /// Anything else (bad data, a broken invariant): the batch is stored
    /// one by one at once and the command that fails alone is refused
    /// `internal`, for good: sending it again cannot help.
    Broken,
}

impl Failure {
    /// The failure a SQLSTATE names (`None`: no answer from Postgres at
    /// all, i.e. the connection or the pool failed).
    pub fn of_sqlstate(code: Option<&str>) -> Self {
        let Some(code) = code else {
            return Self::Outage;
        };
        match code {
            "23505" | "40001" | "40P01" => Self::Conflict,
            "57014" => Self::Slow,
            "25006" | "57P01" | "57P02" | "57P03" => Self::Outage,
            _ if code.starts_with("08") || code.starts_with("53") => Self::Outage,
            _ => Self::Broken,
        }
    }

    /// Whether the same batch is worth trying again (for how often, see
    /// [`Self::is_bounded`]).
    pub fn is_retried(self) -> bool {
        self != Self::Broken
    }

    /// Retried only a bounded number of times before the batch is split.
    pub fn is_bounded(self) -> bool {
        matches!(self, Self::Conflict | Self::Slow)
    }

    /// What the sender of a command that fails alone with this is answered.
    pub fn refusal(self) -> ErrorCode {
        match self {
            Self::Broken | Self::Conflict => ErrorCode::Internal,
            Self::Outage | Self::Slow => ErrorCode::Unavailable,
        }
    }

    /// A connection that answered this is closed rather than used again:
    /// a read-only session stays read-only (it was opened on a standby or
    /// a demoted primary), and the next one may reach the new primary.
    pub fn needs_new_connection(code: Option<&str>) -> bool {
        code == Some("25006")
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outage => "outage",
            Self::Conflict => "conflict",
            Self::Slow => "slow",
            Self::Broken => "broken",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Failure::{self, *};

    #[test]
    fn the_table_of_docs_reliability() {
        let table = [
            (None, Outage),
            (Some("08006"), Outage),
            (Some("08001"), Outage),
            (Some("25006"), Outage),
            (Some("57P01"), Outage),
            (Some("57P02"), Outage),
            (Some("57P03"), Outage),
            (Some("53300"), Outage),
            (Some("53100"), Outage),
            (Some("53200"), Outage),
            (Some("23505"), Conflict),
            (Some("40001"), Conflict),
            (Some("40P01"), Conflict),
            (Some("57014"), Slow),
            (Some("22P02"), Broken),
            (Some("23503"), Broken),
            (Some("42P01"), Broken),
            (Some("XX000"), Broken),
        ];
        for (code, expected) in table {
            assert_eq!(Failure::of_sqlstate(code), expected, "{code:?}");
        }
    }

    #[test]
    fn only_what_sending_again_cannot_fix_is_refused_internal() {
        use chat_shared::protocol::ErrorCode;
        for failure in [Broken, Conflict] {
            assert_eq!(failure.refusal(), ErrorCode::Internal, "{failure:?}");
        }
        for failure in [Outage, Slow] {
            assert_eq!(failure.refusal(), ErrorCode::Unavailable, "{failure:?}");
        }
        assert!(Outage.is_retried() && Conflict.is_retried() && Slow.is_retried());
        assert!(!Broken.is_retried());
        assert!(Conflict.is_bounded() && Slow.is_bounded());
        assert!(!Outage.is_bounded());
    }

    #[test]
    fn a_read_only_connection_is_replaced() {
        assert!(Failure::needs_new_connection(Some("25006")));
        assert!(!Failure::needs_new_connection(Some("57P01")));
        assert!(!Failure::needs_new_connection(None));
    }
}

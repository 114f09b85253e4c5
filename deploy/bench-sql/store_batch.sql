-- One group commit in one statement, one round trip: what the persister
-- ran for a few hours of 2026-11-30 instead of persister/src/writer.rs's
-- seven statements, set aside (docs/benchmarks.md, "Cost per message": its
-- generic plan is quadratic in the batch, its custom plan costs 1-3 ms to
-- make, and even planned for its size it cost Postgres more per message at
-- 10,000 msg/s). Kept for deploy/bench-sql.sh.
-- A statement is its own transaction: all of it is stored, or none.
--
-- $1..$4  the batch's sends, one per (sender, client_msg_id), in order:
--         sender ids, client_msg_ids, conversation ids, bodies
-- $5      the time stamp of every message of the batch
-- $6..$8  read markers, one per (conversation, user), sorted:
--         conversation ids, user ids, seqs
--
-- One row per send (`i` = its place in $1, from 1) saying what became of
-- it, then one row per read marker that moved.
WITH req AS (
    SELECT t.i, t.sender_id, t.client_msg_id, t.conversation_id, t.body
      FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[])
           WITH ORDINALITY AS t (sender_id, client_msg_id, conversation_id, body, i)
),
-- 1. Sent before (the unique (sender_id, client_msg_id) is the idempotency key).
existing AS (
    SELECT r.i, m.id, m.conversation_id, m.seq, m.body, m.created_at
      FROM req r
      JOIN messages m ON m.sender_id = r.sender_id AND m.client_msg_id = r.client_msg_id
),
-- 2. The members of every conversation involved: who may send, whom to tell.
roster AS (
    SELECT conversation_id, array_agg(user_id ORDER BY user_id) AS members
      FROM members
     WHERE conversation_id IN (SELECT conversation_id FROM req
                               UNION SELECT conversation_id FROM existing
                               UNION SELECT unnest($6::bigint[]))
     GROUP BY conversation_id
),
-- 3. What is new, numbered within its conversation in batch order.
fresh AS (
    SELECT r.i, r.conversation_id,
           row_number() OVER (PARTITION BY r.conversation_id ORDER BY r.i) AS ordinal
      FROM req r
      JOIN roster ro ON ro.conversation_id = r.conversation_id
                    AND r.sender_id = ANY (ro.members)
     WHERE NOT EXISTS (SELECT FROM existing e WHERE e.i = r.i)
),
-- 4. A run of seq per conversation. The row lock orders writers; seq has no
--    gaps since nothing is reserved that is not inserted in this statement.
reserved AS (
    UPDATE conversations c
       SET last_seq = c.last_seq + n.count, last_activity_at = $5
      FROM (SELECT conversation_id, count(*) AS count FROM fresh GROUP BY conversation_id) n
     WHERE c.id = n.conversation_id
 RETURNING c.id, c.last_seq - n.count AS base, c.last_seq
),
-- 5. The new messages.
inserted AS (
    INSERT INTO messages (conversation_id, seq, sender_id, client_msg_id, body, created_at)
    SELECT f.conversation_id, v.base + f.ordinal, r.sender_id, r.client_msg_id, r.body, $5
      FROM fresh f
      JOIN req r ON r.i = f.i
      JOIN reserved v ON v.id = f.conversation_id
 RETURNING id, conversation_id, seq
),
-- 6. Read markers move forward only, never past the last seq (this batch's
--    messages included), and only for members.
moved AS (
    UPDATE members m
       SET last_read_seq = LEAST(d.seq, COALESCE(v.last_seq, c.last_seq))
      FROM unnest($6::bigint[], $7::bigint[], $8::bigint[]) AS d (conversation_id, user_id, seq)
      JOIN conversations c ON c.id = d.conversation_id
      LEFT JOIN reserved v ON v.id = d.conversation_id
     WHERE m.conversation_id = d.conversation_id AND m.user_id = d.user_id
       AND LEAST(d.seq, COALESCE(v.last_seq, c.last_seq)) > m.last_read_seq
 RETURNING m.conversation_id, m.user_id, m.last_read_seq
)
SELECT r.i,
       CASE WHEN e.i IS NOT NULL THEN 'existing'
            WHEN ro.conversation_id IS NULL THEN 'not_found'
            WHEN f.i IS NULL THEN 'forbidden'
            ELSE 'new' END AS outcome,
       COALESCE(e.id, ins.id) AS id,
       COALESCE(e.conversation_id, r.conversation_id) AS conversation_id,
       COALESCE(e.seq, ins.seq) AS seq,
       NULL::bigint AS user_id,
       e.body,
       e.created_at,
       COALESCE(er.members, ro.members) AS members
  FROM req r
  LEFT JOIN existing e ON e.i = r.i
  LEFT JOIN roster ro ON ro.conversation_id = r.conversation_id
  LEFT JOIN roster er ON er.conversation_id = e.conversation_id
  LEFT JOIN fresh f ON f.i = r.i
  LEFT JOIN reserved v ON v.id = f.conversation_id
  LEFT JOIN inserted ins ON ins.conversation_id = f.conversation_id AND ins.seq = v.base + f.ordinal
UNION ALL
SELECT NULL, 'read', NULL, mv.conversation_id, mv.last_read_seq, mv.user_id, NULL, NULL, ro.members
  FROM moved mv
  JOIN roster ro ON ro.conversation_id = mv.conversation_id

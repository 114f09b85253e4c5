-- A group commit as the persister sends it (persister/src/writer.rs):
-- BEGIN, sends already stored, members, seq runs, INSERT, COMMIT. Four sends, two in each of two direct conversations.
\set c1 random(1, 1000)
\set c2 random(1001, 2000)
\set k random(1, 1000000000000)
BEGIN;
SELECT m.id, m.conversation_id, m.seq, m.sender_id, m.client_msg_id, m.body, m.created_at
  FROM messages m
  JOIN unnest(ARRAY[2 * :c1, 2 * :c1 - 1, 2 * :c2, 2 * :c2 - 1]::bigint[],
              ARRAY['a' || :k, 'b' || :k, 'c' || :k, 'd' || :k]::text[]) AS k (sender_id, client_msg_id)
    ON m.sender_id = k.sender_id AND m.client_msg_id = k.client_msg_id;
SELECT conversation_id, array_agg(user_id ORDER BY user_id)
  FROM members WHERE conversation_id = ANY (ARRAY[:c1, :c2]::bigint[]) GROUP BY conversation_id;
-- (the seq runs come back as two rows; pgbench keeps them with \gset)
WITH runs AS (
    UPDATE conversations c
       SET last_seq = c.last_seq + d.n, last_activity_at = now()
      FROM unnest(ARRAY[:c1, :c2]::bigint[], ARRAY[2, 2]::bigint[]) AS d (id, n)
     WHERE c.id = d.id
    RETURNING c.id, c.last_seq)
SELECT max(last_seq) FILTER (WHERE id = :c1) AS l1, max(last_seq) FILTER (WHERE id = :c2) AS l2 FROM runs
\gset
INSERT INTO messages (conversation_id, seq, sender_id, client_msg_id, body, created_at)
SELECT c, s, u, k, b, now()
  FROM unnest(ARRAY[:c1, :c1, :c2, :c2]::bigint[],
              ARRAY[:l1 - 1, :l1, :l2 - 1, :l2]::bigint[],
              ARRAY[2 * :c1, 2 * :c1 - 1, 2 * :c2, 2 * :c2 - 1]::bigint[],
              ARRAY['a' || :k, 'b' || :k, 'c' || :k, 'd' || :k]::text[],
              ARRAY['xin chào', 'chào bạn', 'hẹn gặp lại', 'cảm ơn']::text[]) AS t (c, s, u, k, b)
RETURNING conversation_id, seq, id;
COMMIT;

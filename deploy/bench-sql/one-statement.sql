-- The same group commit as seven-statements.sql, as the persister sends it
-- now: persister/src/writer/store_batch.sql, one statement (run-bench.sh
-- puts it after these lines).
\set c1 random(1, 1000)
\set c2 random(1001, 2000)
\set k random(1, 1000000000000)

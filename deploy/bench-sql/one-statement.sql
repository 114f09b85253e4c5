-- The same group commit as seven-statements.sql as one statement:
-- store_batch.sql (deploy/bench-sql.sh puts it after these lines).
\set c1 random(1, 1000)
\set c2 random(1001, 2000)
\set k random(1, 1000000000000)

#!/usr/bin/env bash
# Postgres's own cost of one group commit, in two shapes, in one run:
# pgbench replays a batch of four sends (two in each of two direct
# conversations) as the seven statements the persister sends
# (persister/src/writer.rs: BEGIN, lookups, seq runs, INSERT, COMMIT) and as
# one statement built from CTEs (deploy/bench-sql/store_batch.sql, tried and
# set aside: docs/benchmarks.md, "Cost per message"), planned once
# (plan_cache_mode = force_generic_plan), alternating, ROUNDS times. Reports batches per second and Postgres CPU
# (all processes of the local instance) per batch. Needs deploy/up.sh's
# local Postgres; works in a scratch database `bench_sql`.
#
#   deploy/bench-sql.sh                     (DURATION=20 ROUNDS=3 RATE=500 CLIENTS=1)
#
# RATE is the batches per second offered (pgbench -R); RATE=0 runs flat out.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-20} ROUNDS=${ROUNDS:-3} RATE=${RATE:-500} CLIENTS=${CLIENTS:-1}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mapmo-chat/target}"
PG_BIN=/usr/lib/postgresql/15/bin
eval "$(deploy/services.sh env local)"
OUT=".data/local/bench/sql-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"

base=${CHAT_DATABASE__URL%/*}
url="$base/bench_sql"
psql -q "$CHAT_DATABASE__URL" -c 'DROP DATABASE IF EXISTS bench_sql' -c 'CREATE DATABASE bench_sql'
CHAT_PROFILE=local CHAT_DATABASE__URL=$url CHAT_LOG__FILTER=warn \
  "${CHAT_BIN_DIR:-$CARGO_TARGET_DIR/release}/chat-persister" migrate
# 2,000 direct conversations; conversation c has the users 2c-1 and 2c.
psql -q "$url" <<'SQL'
INSERT INTO conversations (kind, direct_key)
SELECT 'direct', (2 * c - 1) || ':' || (2 * c) FROM generate_series(1, 2000) c;
INSERT INTO members (conversation_id, user_id)
SELECT c, 2 * c - u FROM generate_series(1, 2000) c, generate_series(0, 1) u;
VACUUM ANALYZE conversations, members;
SQL

# The one statement, with the batch as pgbench variables.
{
  cat deploy/bench-sql/one-statement.sql
  grep -v '^ *--' deploy/bench-sql/store_batch.sql |
    sed -e 's/\$1::bigint\[\]/ARRAY[2 * :c1, 2 * :c1 - 1, 2 * :c2, 2 * :c2 - 1]::bigint[]/' \
      -e "s/\\\$2::text\\[\\]/ARRAY['a' || :k, 'b' || :k, 'c' || :k, 'd' || :k]::text[]/" \
      -e 's/\$3::bigint\[\]/ARRAY[:c1, :c1, :c2, :c2]::bigint[]/' \
      -e "s/\\\$4::text\\[\\]/ARRAY['xin chào', 'chào bạn', 'hẹn gặp lại', 'cảm ơn']::text[]/" \
      -e 's/\$5/now()/g' -e 's/\$[678]::bigint\[\]/ARRAY[]::bigint[]/g'
  echo ';'
} >"$OUT/one-statement.sql"
grep -q '\$[0-9]' "$OUT/one-statement.sql" && { echo "unsubstituted parameter in $OUT/one-statement.sql" >&2; exit 1; }
cp deploy/bench-sql/seven-statements.sql "$OUT/"

# CPU ticks of the local instance: the postmaster, its live children, and
# the children it has reaped (pgbench's backend exits with its run).
pg_ticks() {
  local postmaster
  postmaster=$(head -1 .data/local/pg/postmaster.pid)
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } |
    awk -v pm="$postmaster" '$1 == pm { t += $16 + $17 } $1 == pm || $4 == pm { t += $14 + $15 } END { print t + 0 }'
}
TICKS=$(getconf CLK_TCK)
rate_args=()
[ "$RATE" != 0 ] && rate_args=(-R "$RATE")

for round in $(seq 1 "$ROUNDS"); do
  for variant in seven-statements one-statement; do
    before=$(pg_ticks)
    # The one statement as it was tried (generic plans); the seven
    # statements with Postgres's default, as the persister runs them.
    plans=auto
    [ "$variant" = one-statement ] && plans=force_generic_plan
    PGOPTIONS="-c client_min_messages=warning -c plan_cache_mode=$plans" "$PG_BIN/pgbench" -n -M prepared -c "$CLIENTS" -T "$DURATION" \
      "${rate_args[@]}" -f "$OUT/$variant.sql" "$url" >"$OUT/$round-$variant.txt" 2>&1
    sleep 1 # until the postmaster has reaped the run's backend
    after=$(pg_ticks)
    stored=$(psql -Atq "$url" -c 'SELECT count(*) FROM messages')
    echo "messages in bench_sql after $round $variant: $stored" >>"$OUT/stored.txt"
    batches=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$OUT/$round-$variant.txt")
    latency=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$OUT/$round-$variant.txt")
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$OUT/$round-$variant.txt")
    awk -v v="$variant" -v r="$round" -v n="$batches" -v l="$latency" -v f="${failed:-0}" -v t=$((after - before)) -v hz="$TICKS" -v d="$DURATION" \
      'BEGIN { printf "%s %d %.0f %.0f %s %d\n", v, r, n / d, (n ? t / hz * 1e6 / n : 0), l, f }'
  done
done | tee "$OUT/runs.txt" | awk '{ printf "round %d %-17s %5d batches/s, Postgres CPU %4d us per batch, latency %s ms, %d failed\n", $2, $1, $3, $4, $5, $6 }' >&2

awk '
  { cpu[$1] = cpu[$1] " " $4; lat[$1] = lat[$1] " " $5; if ($6 > 0) bad[$1] += $6 }
  function stat(list,   n, v, i, j, t) {
    n = split(list, v, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
    return sprintf("%s (%s-%s)", v[int((n + 1) / 2)], v[1], v[n])
  }
  END {
    printf "%-17s %-28s %-26s %s\n", "shape", "Postgres CPU us per batch", "latency ms per batch", "failed"
    for (k in cpu) printf "%-17s %-28s %-26s %d\n", k, stat(cpu[k]), stat(lat[k]), bad[k]
  }' "$OUT/runs.txt" | tee "$OUT/summary.txt"
echo "median (min-max) of $ROUNDS rounds, $DURATION s each, $RATE batches/s offered, $CLIENTS client(s); in $OUT" | tee -a "$OUT/summary.txt"

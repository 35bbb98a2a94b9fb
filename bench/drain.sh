#!/usr/bin/env bash
# Job drain benchmarks, sourced by scripts/bench.sh (needs its variables).
#
#   drain    N small no-op jobs pre-filled into the maintenance queue (outbox,
#            relayed under the Redis bound); time until the worker finished
#            all of them, jobs/s, and the worker's peak memory. Beside it, raw
#            Redis LPUSH/RPOP throughput measured in the same run.
#            Run with the benchmark's tuned settings and with the worker's
#            defaults; the Redis memory the finished jobs hold at the end is
#            recorded (retention by count lifted for the run). Beside them,
#            in each run, BullMQ (bench/peers) drains the same number of
#            no-op jobs on the same Redis with its default concurrency (1)
#            and with PEER_CONCURRENCY (50).
#   idle     a worker with default settings left idle: its CPU use over
#            IDLE_SECONDS (10), then the pickup latency of one job at a time
#            (outbox insert to finished), IDLE_JOBS (5) times.
#   cluster  the drain (tuned settings) on a real 3-primary Redis Cluster
#            started from the installed redis-server, beside the single-Redis
#            drain of the same run.
#   backlog  a backlog of BACKLOG_JOBS due jobs plus BURST_JOBS jobs that fail
#            once and whose retries fall due together: everything drains.

fill_noop() { # count fail_times
  psql "$DB_URL" -qc "INSERT INTO outbox (queue, task_id, payload, run_at)
    SELECT 'maintenance', 'canary:$RANDOM-$1-$2-' || g,
           jsonb_build_object('job', 'Canary', 'data', jsonb_build_object('key', 'b' || g, 'noop', true, 'fail_times', $2)),
           now()
      FROM generate_series(1, $1) g" >/dev/null
}

# redis-cli for the Redis under test: REDIS_CLI_ARGS ("-c -p PORT" on a cluster).
rcli() { redis-cli ${REDIS_CLI_ARGS:--p "$REDIS_PORT"} "$@"; }

# A queue's keys carry the hash tag of core/src/queues.rs (QUEUE_HASH_TAG).
done_count() { rcli scard "$(done_key "$1")"; }
done_key() { echo "$1:maintenance{core:apalis:queues:list}:done"; }

# Runs a worker until the maintenance queue's done set reaches $2; prints
# "seconds peak_kib", timed from the first finished job (process start-up
# excluded) to the last.
used_memory() { rcli info memory | awk -F: '/^used_memory:/ {print $2+0}'; }

# The benchmark's tuned worker settings; `default` runs with none of them.
TUNED=(QUEUE_CONCURRENCY_MAINTENANCE="${DRAIN_CONCURRENCY:-64}" JOB_FETCH_BATCH="${DRAIN_BATCH:-100}"
  JOB_POLL_INTERVAL_MS=50 OUTBOX_POLL_INTERVAL_MS=20)

# Prints "seconds peak_kib redis_bytes" (redis_bytes: what Redis holds at the
# end beyond what it held before the worker started).
run_worker_until() { # namespace target [tuned|default]
  local ns="$1" target="$2" start end pid peak n first mem0 mem1
  local settings=("${TUNED[@]}") unset=()
  # Defaults: none of the tuned settings, and the worker's own pool size.
  [ "${3:-tuned}" = default ] && settings=() && unset=(-u DATABASE_POOL_SIZE)
  mem0=$(used_memory)
  env "${unset[@]}" "${settings[@]}" REDIS_NAMESPACE="$ns" RUST_LOG=error JOB_RETENTION_COUNT=10000000 \
    JOB_RETRY_CANARY="attempts=3,base=1s,cap=2s,jitter=0" WORKER_ADDR="127.0.0.1:0" \
    "$BIN/clicknback-worker" run >"$WORK/worker.log" 2>&1 &
  pid=$!
  # This runs in a subshell: stop the worker here too when interrupted.
  trap "kill -TERM $pid 2>/dev/null" EXIT
  trap "kill -TERM $pid 2>/dev/null; exit 130" INT TERM
  # One redis-cli repeating SCARD every 20 ms, read by bash builtins: the
  # watching costs no process per look, as BullMQ's in-process count costs
  # none, and the worker's peak (VmHWM) is read once at the end.
  start="" first=0
  while read -r n; do
    [[ "$n" =~ ^[0-9]+$ ]] || continue
    [ -z "$start" ] && [ "$n" -gt 0 ] && start=$EPOCHREALTIME && first=$n
    [ "$n" -ge "$target" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$WORK/worker.log" >&2; die "worker exited"; }
  done < <(rcli -r -1 -i 0.02 scard "$(done_key "$ns")")
  end=$EPOCHREALTIME
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge "$target" ] || die "the count of finished jobs stopped at ${n:-nothing} of $target (Redis unreachable?)"
  peak=$(awk '/VmHWM/ {print $2}' /proc/$pid/status 2>/dev/null || echo 0)
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  mem1=$(used_memory)
  [ -z "${REDIS_CLI_ARGS:-}" ] &&
    redis-cli -p "$REDIS_PORT" --scan --pattern "$ns:*" | xargs -r -n 500 redis-cli -p "$REDIS_PORT" del >/dev/null
  # The jobs finished before the first observation are credited at the same rate.
  echo "$(python3 -c "d=$end-$start; print(round(d * $target / ($target - $first), 3))") $peak $(( mem1 - mem0 ))"
}

# BullMQ of bench/peers/package-lock.json, installed once into bench/peers.
ensure_peers() {
  ensure_node
  if [ ! -d "$ROOT/bench/peers/node_modules/bullmq" ]; then
    log "installing BullMQ (the drain's peer)"
    (cd "$ROOT/bench/peers" && npm ci --no-audit --no-fund --silent)
  fi
}

# BullMQ's drain of N no-op jobs with concurrency C: prints its jobs/s.
peer_drain() { # jobs concurrency
  node "$ROOT/bench/peers/bullmq-drain.mjs" "$1" "$2" "$REDIS_PORT" |
    python3 -c 'import json, sys; print(json.loads(sys.stdin.readlines()[-1])["per_second"])'
}

bench_drain() {
  local n="${DRAIN_JOBS:-20000}" peer_c="${PEER_CONCURRENCY:-50}"
  ensure_peers
  for i in $(seq 1 "$RUNS"); do
    log "drain: run $i/$RUNS ($n no-op jobs)"
    psql "$DB_URL" -qc "TRUNCATE outbox" >/dev/null
    fill_noop "$n" 0
    read -r secs peak redis_bytes < <(run_worker_until "drain$$-$i" "$n")
    psql "$DB_URL" -qc "TRUNCATE outbox" >/dev/null
    fill_noop "$n" 0
    read -r dsecs dpeak _ < <(run_worker_until "drain$$-$i-default" "$n" default)
    local bull1 bulln
    bull1=$(peer_drain "$n" 1)
    bulln=$(peer_drain "$n" "$peer_c")
    local raw
    raw=$(redis-benchmark -p "$REDIS_PORT" -n 100000 -t lpush,rpop --csv 2>/dev/null \
      | awk -F'","' '/^"LPUSH/ {p=$2} /^"RPOP/ {q=$2} END {print p, q}')
    echo "{\"jobs\": $n, \"seconds\": $secs, \"per_second\": $(python3 -c "print(round($n / $secs, 1))"), \"peak_kib\": $peak, \"redis_lpush\": ${raw% *}, \"redis_rpop\": ${raw#* }, \"redis_bytes_finished\": $redis_bytes, \"default_seconds\": $dsecs, \"default_per_second\": $(python3 -c "print(round($n / $dsecs, 1))"), \"default_peak_kib\": $dpeak, \"bullmq_default_per_second\": $bull1, \"bullmq_per_second\": $bulln, \"bullmq_concurrency\": $peer_c}" >>"$WORK/drain.jsonl"
  done
}

bench_drain_cluster() {
  local n="${DRAIN_JOBS:-20000}" port="${BENCH_CLUSTER_PORT:-7350}"
  start_redis_cluster "$port"
  for i in $(seq 1 "$RUNS"); do
    log "drain on a Redis Cluster: run $i/$RUNS ($n no-op jobs)"
    psql "$DB_URL" -qc "TRUNCATE outbox" >/dev/null
    fill_noop "$n" 0
    read -r secs peak _ < <(REDIS_CLI_ARGS="-c -p $port" REDIS_URL="$REDIS_CLUSTER_URL" \
      run_worker_until "cdrain$$-$i" "$n")
    echo "{\"jobs\": $n, \"seconds\": $secs, \"per_second\": $(python3 -c "print(round($n / $secs, 1))"), \"peak_kib\": $peak}" >>"$WORK/drain_cluster.jsonl"
  done
  stop_redis_cluster
}

bench_backlog() {
  local n="${BACKLOG_JOBS:-100000}" burst="${BURST_JOBS:-20000}"
  log "backlog: $n due jobs + $burst jobs failing once, retries due together"
  psql "$DB_URL" -qc "TRUNCATE outbox; TRUNCATE dead_jobs" >/dev/null
  fill_noop "$n" 0
  fill_noop "$burst" 1
  # Every run of every job ends in the done set: n + 2 × burst.
  read -r secs peak _ < <(run_worker_until "backlog$$" $(( n + 2 * burst )))
  local dead unsent
  dead=$(psql "$DB_URL" -tAc "SELECT count(*) FROM dead_jobs")
  unsent=$(psql "$DB_URL" -tAc "SELECT count(*) FROM outbox WHERE sent_at IS NULL")
  echo "{\"jobs\": $n, \"burst\": $burst, \"runs\": $(( n + 2 * burst )), \"seconds\": $secs, \"per_second\": $(python3 -c "print(round(($n + 2 * $burst) / $secs, 1))"), \"peak_kib\": $peak, \"dead\": $dead, \"left_in_outbox\": $unsent}" >"$WORK/backlog.json"
}

bench_idle() {
  local ns="idle$$" secs="${IDLE_SECONDS:-10}" jobs="${IDLE_JOBS:-5}" pid t0 t1 hz
  psql "$DB_URL" -qc "TRUNCATE outbox" >/dev/null
  REDIS_NAMESPACE="$ns" RUST_LOG=error WORKER_ADDR="127.0.0.1:0" \
    "$BIN/clicknback-worker" run >"$WORK/worker-idle.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  sleep 3
  hz=$(getconf CLK_TCK)
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  sleep "$secs"
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  local cpu
  cpu=$(python3 -c "print(round(100 * ($t1 - $t0) / $hz / $secs, 2))")
  local lat=()
  for i in $(seq 1 "$jobs"); do
    local start end
    start=$(date +%s.%N)
    psql "$DB_URL" -qc "INSERT INTO outbox (queue, task_id, payload, run_at)
      VALUES ('maintenance', 'canary:lone-$$-$i', jsonb_build_object('job', 'Canary', 'data',
              jsonb_build_object('key', 'lone$i', 'noop', true, 'fail_times', 0)), now())" >/dev/null
    while [ "$(done_count "$ns")" -lt "$i" ]; do sleep 0.005; done
    end=$(date +%s.%N)
    lat+=("$(python3 -c "print(round(($end - $start) * 1000, 1))")")
    sleep 1
  done
  stop_recording "$pid" "worker, idle"
  [ -z "${REDIS_CLI_ARGS:-}" ] &&
    redis-cli -p "$REDIS_PORT" --scan --pattern "$ns:*" | xargs -r -n 500 redis-cli -p "$REDIS_PORT" del >/dev/null
  echo "{\"idle_seconds\": $secs, \"idle_cpu_percent\": $cpu, \"pickup_ms\": [$(IFS=,; echo "${lat[*]}")]}" >"$WORK/idle.json"
}

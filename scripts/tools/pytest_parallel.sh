#!/usr/bin/env bash
# Runs pytest selections side by side on the device, one process each, logs under $OUT.
# When to use: GPU test files that are each mostly waiting on compiles fit one device command together.
# usage: scripts/tools/pytest_parallel.sh LIMIT_S "name|pytest args" ...
limit=$1; shift
pids=()
for spec in "$@"; do
  name=${spec%%|*}; args=${spec#*|}
  # eval: args may quote a -k expression
  eval "timeout $limit python3 -m pytest -q -s -p no:cacheprovider $args" >"$OUT/$name.log" 2>&1 &
  pids+=($!)
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"; echo "rc=$? $(tail -1 "$OUT/$(cut -d'|' -f1 <<<"${@:$((i+1)):1}").log")"
done

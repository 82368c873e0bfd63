#!/bin/bash
# mdfr bench sweep (8 trials x 30 s, concurrency 2) under a fixed CPU load, for the checkout's
# code ("after") and then for mdfr/ as of BEFORE ("before"), each with two busy loops on the
# machine. Run from a clean checkout whose .venv has mdfr installed editable:
#   bash results/bench/ab-overhead-under-load.sh 2a64cce
# It checks mdfr/ out of BEFORE for the second run and back out of HEAD at the end.
set -u
BEFORE=${1:?usage: ab-overhead-under-load.sh BEFORE_REV}
cd "$(git rev-parse --show-toplevel)"
OUT=results/bench
DAY=$(date +%F)
burn() { python3 -c "while True: pass" >/dev/null 2>&1 & echo $!; }
run() {  # $1: label
  P1=$(burn); P2=$(burn)
  timeout 900 .venv/bin/mdfr bench sweep --device cpu --trials 8 --trial-seconds 30 \
    --concurrency 2 --json "$OUT/sweep-overhead-cpu-30s-n8-c2-$DAY-load2-$1.json"
  echo "$1: exit $?"
  kill "$P1" "$P2"
  sleep 20
}
run after
git checkout "$BEFORE" -- mdfr
run before
git checkout HEAD -- mdfr

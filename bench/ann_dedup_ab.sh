#!/bin/bash
# One timed `neardup dedup --index ann` of a source tree on a catalog, its ANN cache deleted first
# (issue 14, session 7). Alternate two trees under the same load:
#   for i in 1 2 3; do bench/ann_dedup_ab.sh main /work/main/src c.duckdb; bench/ann_dedup_ab.sh new src c.duckdb; done
# Prints: label, exit status, wall / user / sys seconds and peak RSS (KB) from /usr/bin/time, the
# load average before and after, the recall line and the summary line.
label=$1; src=$2; db=$3; py=${PYTHON:-python}
out=$(mktemp); tm=$(mktemp)
rm -f "$db.d/forests/"*-ann-*
l0=$(cut -d' ' -f1-3 /proc/loadavg)
PYTHONPATH=$src /usr/bin/time -f "%e %U %S %M" -o "$tm" "$py" -m neardup dedup --threshold 0.98 --index ann --db "$db" > "$out" 2>&1
rc=$?
l1=$(cut -d' ' -f1-3 /proc/loadavg)
echo "$label rc=$rc wall/user/sys/maxrssKB=$(cat "$tm") load_before=[$l0] load_after=[$l1] $(date -u +%H:%M:%S)" \
     "| $(grep -A2 'recall' "$out" | tr '\n' ' ' | cut -c1-330) | $(grep 'suppressed' "$out" | head -1)"
rm -f "$out" "$tm"

#!/bin/sh
# The measured scenarios behind benchmarks/README.md. Each writes benchmarks/results/<name>.json; then
# `python benchmarks/summarise.py` prints the tables. About 45 minutes on 2 cores (pg-1m-100k alone takes about half of it and needs 20 GB of memory).
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
run() { name=$1; shift; echo "== $name"; $PY benchmarks/run.py "$@" --out "benchmarks/results/$name.json"; }
run pg-100k-2k        --employees 100000 --mappings 2000 --latency-ms 10
run pg-50k-2k         --employees 50000  --mappings 2000
run pg-200k-2k        --employees 200000 --mappings 2000
run pg-400k-2k        --employees 400000 --mappings 2000
run pg-100k-1k        --employees 100000 --mappings 1000
run pg-100k-1k-ghost99k --employees 100000 --mappings 1000 --ghost-mappings 99000
run pg-200k-20k       --employees 200000 --mappings 20000
run pg-1m-100k        --employees 1000000 --mappings 100000
run pg-10m-row-scan   --employees 100000 --mappings 100 --audit-rows 10000000
run ddb-3k            --employees 5000   --mappings 100 --dynamodb --profiles 3000

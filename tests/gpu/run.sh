#!/bin/bash
# GPU checks, run on a lent CUDA machine (see DESIGN.md section 7) with the
# build/ directory carried from a machine that built it with CUDA:
#
#   run(command="tests/gpu/run.sh", carry=["build"])
#
# Writes its report to $OUT/gpu-report.md (or ./gpu-report.md) and exits
# non-zero when a check fails. Today it checks device discovery and the
# self-test kernel (fatbinary has code for this card, launches, copies and
# synchronisation work); the CUDA engine's correctness and benchmark table
# join it with the CUDA backend.
set -u
cd "$(dirname "$0")/../.."
out=${OUT:-.}
report=$out/gpu-report.md
run=build/tools/mixtral-run/mixtral-run
status=0
{
        echo "# GPU report"
        echo
        echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
        echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
        echo "- card: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not available')"
        echo
        echo '## mixtral-run --devices'
        echo
        echo '```'
        "$run" --devices 2>&1
        echo '```'
} >"$report"
"$run" --devices | grep -q '^cuda:0: .*self-test passed' || status=1
echo "- result: $([ $status -eq 0 ] && echo PASS || echo FAIL)" >>"$report"
cat "$report"
exit $status

#!/bin/bash
# VNN-COMP harness hook, called once per instance:
#   run_instance.sh v1 CATEGORY ONNX_FILE VNNLIB_FILE RESULTS_FILE TIMEOUT
# Writes RESULTS_FILE in the competition format: first line sat, unsat, unknown or timeout, and after
# sat the counterexample ((X_0 v) ... (Y_0 v) ...). TIMEOUT (seconds) covers the whole process, start-up
# included; verify-model stops itself within about a second of it. CATEGORY does not change anything.
# If the tool cannot handle the input (unsupported operator, unreadable property) the file says
# unknown and the exit status is non-zero. See common.sh for where the tool is looked up.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
check_usage 6 "$0 v1 CATEGORY ONNX_FILE VNNLIB_FILE RESULTS_FILE TIMEOUT" "$@"

"$TOOL" "$3" "$4" --timeout "$6" --out "$5" > /dev/null
status=$?
if [ "$status" -ne 0 ]; then
    echo "unknown" > "$5"
fi
exit "$status"

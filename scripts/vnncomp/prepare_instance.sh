#!/bin/bash
# VNN-COMP harness hook, called before each instance:
#   prepare_instance.sh v1 CATEGORY ONNX_FILE VNNLIB_FILE
# Nothing to precompute: verify-model reads the ONNX and VNN-LIB files itself at run time, whatever the
# category. This checks the arguments, the files and that the tool is installed (see common.sh).
set -u
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
check_usage 4 "$0 v1 CATEGORY ONNX_FILE VNNLIB_FILE" "$@"

for file in "$3" "$4"; do
    if [ ! -f "$file" ]; then
        echo "prepare_instance.sh: no such file: $file" >&2
        exit 1
    fi
done
if [ ! -x "$TOOL" ]; then
    echo "prepare_instance.sh: $TOOL is not executable (install the project into $REPO/.venv)" >&2
    exit 1
fi
exit 0

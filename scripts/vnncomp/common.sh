# Shared by prepare_instance.sh and run_instance.sh (sourced, not run).
# Assumptions: the project is installed in its virtualenv at <repo>/.venv (pip install -e .), or
# VERIFY_MODEL names the verify-model executable to use.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TOOL=${VERIFY_MODEL:-$REPO/.venv/bin/verify-model}

# check_usage WANTED_COUNT USAGE "$@": the harness passes "v1" first and a fixed number of arguments.
check_usage() {
    local wanted=$1 usage=$2
    shift 2
    if [ "$#" -ne "$wanted" ] || [ "$1" != "v1" ]; then
        echo "usage: $usage (got: $*)" >&2
        exit 1
    fi
}

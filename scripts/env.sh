# Sourced by scripts/demo and scripts/test: make sure .venv exists and holds the pinned environment.
# Installs only when pyproject.toml or constraints.txt changed since the last install (stamp file).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv" >&2
  python3 -m venv "$venv"
fi
stamp="$venv/.verifier-install-stamp"
# VERIFIER_DISTRIBUTED=1 (set by .ci/run) adds the pinned Ray extra of constraints-distributed.txt
lists=("$root/constraints.txt")
if [ "${VERIFIER_DISTRIBUTED:-0}" = 1 ]; then lists+=("$root/constraints-distributed.txt"); fi
want="$(cat "$root/pyproject.toml" "${lists[@]}" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing verifier and its pinned dependencies into $venv (first run: a few minutes)" >&2
  pip=("$venv/bin/python" -m pip --disable-pip-version-check)
  # constraints.txt is the complete environment, installed without resolution (it says why)
  "${pip[@]}" install --quiet --no-deps "${lists[@]/#/-r}" -e "$root" 2> >(grep -v "^WARNING: Location" >&2)
  # ... and nothing else: what they do not list is removed (a torchvision left by an earlier environment
  # fails to import beside this torch, and the CUDA libraries that came with it weigh 4 GB)
  "$venv/bin/python" - "${lists[@]}" <<'PY'
import re, subprocess, sys
from importlib import metadata
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
keep = {norm(line.split("==")[0]) for path in sys.argv[1:] for line in open(path) if "==" in line}
keep |= {"pip", "verifier"}
extra = sorted({norm(dist.metadata["Name"]) for dist in metadata.distributions()} - keep)
if extra:
    print("removing what constraints.txt does not list:", *extra, file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "-y", *extra], check=True)
PY
  # The list must be complete: torchvision is the one requirement pip check may find missing
  broken="$("${pip[@]}" check | grep -v -e "requires torchvision, which is not installed" -e "^No broken" || true)"
  if [ -n "$broken" ]; then
    echo "constraints.txt misses packages (add them with their versions):" >&2
    echo "$broken" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"

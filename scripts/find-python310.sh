#!/usr/bin/env bash
# Print the path of a Python 3.10 interpreter (Lava runs on 3.10 only).
# Order: $PYTHON310, python3.10 on PATH (a pyenv shim counts only if it works), pyenv's versions.
set -u
for cand in "${PYTHON310:-}" python3.10 "$(pyenv root 2>/dev/null)"/versions/3.10*/bin/python3.10 \
            "$HOME"/.pyenv/versions/3.10*/bin/python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10; do
  [ -n "$cand" ] || continue
  if "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1; then
    command -v "$cand" 2>/dev/null || echo "$cand"
    exit 0
  fi
done
echo "error: Python 3.10 not found (Lava needs exactly 3.10); install it or set PYTHON310=/path/to/python3.10" >&2
exit 1

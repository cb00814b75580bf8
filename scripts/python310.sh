# Sourced by the setup scripts: find_py310 prints a CPython 3.10 interpreter
# (python3.10 on PATH, else the newest pyenv 3.10.x) or returns 1.
find_py310() {
  if command -v python3.10 >/dev/null 2>&1 && python3.10 -c 'import sys; assert sys.version_info[:2]==(3,10)' 2>/dev/null; then
    command -v python3.10; return
  fi
  if command -v pyenv >/dev/null 2>&1; then
    local root; root=$(pyenv root)
    for p in "$root"/versions/3.10.*/bin/python3.10; do
      [[ -x $p ]] && { echo "$p"; return; }
    done
  fi
  return 1
}

#!/usr/bin/env bash
# Real text for the CPU demo, by domain, from Debian packages (see shared DATA.md):
#   general (replay): the King James Bible          (bible-kjv)
#   man:              system man pages, rendered    (manpages, manpages-dev)
#   pydocs:           the Python 3.11 documentation (python3.11-doc)
#   code:             the Python standard library   (the interpreter's own)
# Usage: get_text.sh OUT_DIR   (idempotent: a domain already rendered is kept)
set -euo pipefail
source "$(dirname "$0")/install_packages.sh"
out=${1:?usage: get_text.sh OUT_DIR}
mkdir -p "$out" && out=$(cd "$out" && pwd)
need=()
command -v bible >/dev/null || need+=(bible-kjv bible-kjv-text)
[ -d /usr/share/doc/python3.11/html/_sources ] || need+=(python3.11-doc)
[ -d /usr/share/man/man2 ] || need+=(manpages manpages-dev)
command -v man >/dev/null || need+=(man-db)
command -v col >/dev/null || need+=(bsdextrautils)
install_packages "the demo" ${need[@]+"${need[@]}"}
if [ ! -d "$out/general" ]; then
  # One document per 300 verses (about a chapter group), so the held-out split has documents.
  mkdir -p "$out/general.tmp"
  bible 'gen1:1-rev22:21' | split -l 300 -d -a 4 --additional-suffix=.txt - "$out/general.tmp/kjv_"
  mv "$out/general.tmp" "$out/general"
fi
if [ ! -d "$out/man" ]; then
  mkdir -p "$out/man.tmp"
  for f in /usr/share/man/man2/*.2*; do
    MANWIDTH=80 man -l "$f" 2>/dev/null | col -bx > "$out/man.tmp/$(basename "$f").txt" || true
  done
  mv "$out/man.tmp" "$out/man"
fi
if [ ! -d "$out/pydocs" ]; then
  cp -r /usr/share/doc/python3.11/html/_sources "$out/pydocs.tmp" && mv "$out/pydocs.tmp" "$out/pydocs"
fi
if [ ! -d "$out/code" ]; then
  # The standard library's own modules (not its tests, not site-packages).
  stdlib=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])")
  mkdir -p "$out/code.tmp"
  (cd "$stdlib" && find . -name '*.py' -not -path '*/site-packages/*' -not -path '*/test*' \
     -not -path '*/idlelib/*' -not -path '*/lib2to3/*' | sort | head -n 1200 \
     | while read -r f; do cp "$f" "$out/code.tmp/$(echo "${f#./}" | tr / _)"; done)
  mv "$out/code.tmp" "$out/code"
fi
du -shL "$out"/* | sed 's/^/  /'

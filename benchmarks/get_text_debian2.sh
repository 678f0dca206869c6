#!/usr/bin/env bash
# A second corpus of real text by domain, from Debian packages (none shared with the demo's):
#   fortunes (replay): short prose, the fortune cookies     (fortunes)
#   man1:              command man pages, rendered           (the image's own, man-db)
#   perl:              Perl's library modules (code)         (perl-modules, in the image)
#   changelog:         Debian package changelogs             (/usr/share/doc/*/changelog.Debian.gz)
# Usage: get_text_debian2.sh OUT_DIR   (idempotent: a domain already rendered is kept)
set -euo pipefail
source "$(dirname "$0")/../examples/cpu_demo/install_packages.sh"
out=${1:?usage: get_text_debian2.sh OUT_DIR}
mkdir -p "$out" && out=$(cd "$out" && pwd)
need=()
[ -d /usr/share/games/fortunes ] || need+=(fortunes)
command -v man >/dev/null || need+=(man-db)
command -v col >/dev/null || need+=(bsdextrautils)
install_packages "the second corpus" ${need[@]+"${need[@]}"}
if [ ! -d "$out/fortunes" ]; then
  # One document per 40 fortunes, so the held-out split has documents.
  mkdir -p "$out/fortunes.tmp"
  for f in /usr/share/games/fortunes/*; do
    case "$f" in *.dat|*.u8) continue;; esac
    [ -f "$f" ] || continue
    awk -v base="$out/fortunes.tmp/$(basename "$f")" '
      /^%$/ { n++; if (n % 40 == 0) part++; next }
      { print > (base "_" sprintf("%04d", part) ".txt") }' "$f"
  done
  mv "$out/fortunes.tmp" "$out/fortunes"
fi
if [ ! -d "$out/man1" ]; then
  mkdir -p "$out/man1.tmp"
  for f in $(ls /usr/share/man/man1/*.1*.gz | sort | head -n 900); do
    MANWIDTH=80 man -l "$f" 2>/dev/null | col -bx > "$out/man1.tmp/$(basename "$f").txt" || true
  done
  mv "$out/man1.tmp" "$out/man1"
fi
if [ ! -d "$out/perl" ]; then
  mkdir -p "$out/perl.tmp"
  find /usr/share/perl -name '*.pm' | sort | while read -r f; do
    cp "$f" "$out/perl.tmp/$(echo "${f#/usr/share/perl/}" | tr / _)"
  done
  mv "$out/perl.tmp" "$out/perl"
fi
if [ ! -d "$out/changelog" ]; then
  mkdir -p "$out/changelog.tmp"
  for f in /usr/share/doc/*/changelog.Debian.gz; do
    zcat "$f" > "$out/changelog.tmp/$(basename "$(dirname "$f")").txt" || true
  done
  mv "$out/changelog.tmp" "$out/changelog"
fi
du -shL "$out"/* | sed 's/^/  /'

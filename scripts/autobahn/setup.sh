#!/usr/bin/env bash
# Installs Autobahn|Testsuite (`wstest`, Python 2.7 only) without touching the system:
# Debian 11's Python 2.7 packages unpacked into a private prefix, pip 20.3.4 (the last for
# Python 2), then autobahntestsuite with its pinned dependencies. Everything lives in
# ${AUTOBAHN_HOME:-$HOME/.cache/herald-autobahn} (outside the clone); run again, it does
# nothing once `wstest --help` works. Needs apt-get and dpkg (Debian), a C compiler, and
# python3 with pip (to download pip's wheel from PyPI). Prints the wstest path last.
#
# Layout:  $AUTOBAHN_HOME/apt     apt's own sources list, lists and cache (never /etc/apt)
#          $AUTOBAHN_HOME/py27    the unpacked packages (python2.7 at py27/usr/bin)
#          $AUTOBAHN_HOME/site    what pip installs (read through sitecustomize.py)
#          $AUTOBAHN_HOME/bin     python2.7 and wstest wrappers
set -euo pipefail

home="${AUTOBAHN_HOME:-${HOME:-/root}/.cache/herald-autobahn}"
prefix="$home/py27"
site="$home/site"
bin="$home/bin"
suite_version="25.10.1"
pip_version="20.3.4"
packages=(python2.7-minimal libpython2.7-minimal libpython2.7-stdlib python2.7 libpython2.7
  libssl1.1 libffi7 python2.7-dev libpython2.7-dev)

log() { echo "autobahn setup: $*" >&2; }

if [ -x "$bin/wstest" ] && "$bin/wstest" --help >/dev/null 2>&1 \
  && [ -f "$site/.autobahntestsuite-$suite_version" ]; then
  log "already installed in $home"
  echo "$bin/wstest"
  exit 0
fi

mkdir -p "$home" "$bin"

# 1. Debian 11's Python 2.7, fetched with apt-get download under a sources list, lists and
#    cache of our own, unpacked with dpkg -x.
if [ ! -x "$prefix/usr/bin/python2.7" ]; then
  apt_dir="$home/apt"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
  cat >"$apt_dir/sources.list" <<SOURCES
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
SOURCES
  apt_opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
    -o "APT::Get::List-Cleanup=0")
  # As root, apt would drop to the _apt user, who cannot write into $HOME: stay root.
  [ "$(id -u)" = 0 ] && apt_opts+=(-o "APT::Sandbox::User=root")
  log "apt-get update (bullseye, private lists)"
  apt-get "${apt_opts[@]}" -qq update
  log "apt-get download ${packages[*]}"
  (cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" -qq download "${packages[@]}")
  rm -rf "$prefix.tmp"
  mkdir -p "$prefix.tmp"
  for deb in "$apt_dir"/debs/*.deb; do
    dpkg -x "$deb" "$prefix.tmp"
  done
  rm -rf "$prefix"
  mv "$prefix.tmp" "$prefix"
fi

# 2. A wrapper running the unpacked interpreter with its home and libraries in the prefix.
#    Debian's sitecustomize.py is a link into /etc: ours reads $site (with its .pth files,
#    which namespace packages such as zope need).
multiarch="$(cd "$prefix/usr/lib" && ls -d ./*-linux-gnu* | head -n1)"
multiarch="${multiarch#./}"
cat >"$bin/python2.7" <<WRAPPER
#!/bin/sh
PYTHONHOME="$prefix/usr" \\
LD_LIBRARY_PATH="$prefix/usr/lib/$multiarch:$prefix/lib/$multiarch\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" \\
  exec "$prefix/usr/bin/python2.7" "\$@"
WRAPPER
chmod +x "$bin/python2.7"
mkdir -p "$site"
rm -f "$prefix/usr/lib/python2.7/sitecustomize.py" "$prefix/usr/lib/python2.7/sitecustomize.pyc"
cat >"$prefix/usr/lib/python2.7/sitecustomize.py" <<SITE
import site
site.addsitedir("$site")
SITE
"$bin/python2.7" -c 'import ssl, ctypes, zlib, sys; assert sys.version_info[:2] == (2, 7)'

# 3. pip 20.3.4 (its wheel, downloaded with python3's pip, runs as a zip) installs itself,
#    setuptools and wheel into $site, then autobahntestsuite and its pinned dependencies.
pip_opts=(-q --disable-pip-version-check --no-python-version-warning --no-warn-script-location
  --upgrade --target "$site")
if ! "$bin/python2.7" -m pip --version 2>/dev/null | grep -q "^pip $pip_version"; then
  wheels="$home/wheels"
  mkdir -p "$wheels"
  whl="$wheels/pip-$pip_version-py2.py3-none-any.whl"
  if [ ! -f "$whl" ]; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
      log "python3 has no pip: installing Debian's python3-pip"
      apt-get update -qq && apt-get install -y -qq python3-pip
    fi
    log "downloading pip $pip_version"
    python3 -m pip download -q "pip==$pip_version" --no-deps --only-binary=:all: \
      --python-version 2.7 -d "$wheels"
  fi
  log "pip $pip_version, setuptools 44.0.0, wheel into $site"
  "$bin/python2.7" "$whl/pip" install "${pip_opts[@]}" \
    "pip==$pip_version" "setuptools==44.0.0" wheel
fi
log "autobahntestsuite $suite_version and its dependencies (C extensions are built)"
CFLAGS="-I$prefix/usr/include/python2.7 -I$prefix/usr/include" \
  "$bin/python2.7" -m pip install "${pip_opts[@]}" "autobahntestsuite==$suite_version"
cat >"$bin/wstest" <<WSTEST
#!/bin/sh
exec "$bin/python2.7" -c '
import sys
from autobahntestsuite.wstest import run
sys.argv[0] = "wstest"
sys.exit(run())' "\$@"
WSTEST
chmod +x "$bin/wstest"
if ! "$bin/wstest" --help >/dev/null; then
  log "wstest does not run"
  "$bin/wstest" --help || true
  exit 1
fi
touch "$site/.autobahntestsuite-$suite_version"
log "installed in $home"
echo "$bin/wstest"

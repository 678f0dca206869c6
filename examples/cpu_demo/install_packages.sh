# Sourced by the text scripts: install_packages WHAT PKG... installs the Debian packages given
# (none: nothing to do), or stops with one line naming them when not root.
install_packages() {
  local what=$1
  shift
  [ $# -gt 0 ] || return 0
  if [ "$(id -u)" != 0 ]; then
    echo "error: $what needs Debian packages $*: run as root or apt-get install them" >&2
    exit 2
  fi
  echo "installing $* ..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

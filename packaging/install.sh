#!/usr/bin/env bash
# Installs Skiff's node package and joins this box to a control plane in one step, as AWS's
# ecs-anywhere-install.sh does for ECS Anywhere. As root, on Debian 12 or later (amd64, arm64):
#
#   install.sh --endpoint https://apid.example:8461 --ca-cert ca.pem \
#              --activation-id ID --activation-code CODE [--cluster NAME] \
#              [--attribute NAME=VALUE]... [--deb skiff_VERSION_ARCH.deb]
#
#   --endpoint         apid's node channel (its node_listen), https://HOST:PORT
#   --ca-cert          the cluster CA (`skiff control ca-cert > ca.pem`): apid is verified
#                      with it at first contact, never trusted blindly
#   --activation-id    an activation (`skiff control activations create --cluster NAME`)
#   --activation-code  its code
#   --cluster          refuse the activation unless it is for this cluster
#   --attribute        a custom attribute of the container instance (repeatable)
#   --deb              the skiff package; default: the newest skiff_*_<arch>.deb next to this
#                      script, else one downloaded from $SKIFF_DEB_URL (@ARCH@ in it is
#                      replaced by amd64 or arm64)
#
# Then skiffd runs: enabled and started with systemd, else (no systemd running) in the
# background with its log in /var/log/skiff/skiffd.log. Running it again is safe: the package
# is upgraded in place if it is newer (tasks keep running), and a box registered already
# (/var/lib/skiff/node.json) is not registered again.
set -euo pipefail

die() { echo "install.sh: $*" >&2; exit 2; }
usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }

endpoint='' ca='' id='' code='' cluster='' deb=''
attrs=()
need() { [ $# -ge 2 ] && [ -n "$2" ] && [[ $2 != --* ]] || die "$1 needs a value (see --help)"; }
while (($#)); do
  case "$1" in
    --endpoint) need "$@"; endpoint=$2; shift 2 ;;
    --ca-cert) need "$@"; ca=$2; shift 2 ;;
    --activation-id) need "$@"; id=$2; shift 2 ;;
    --activation-code) need "$@"; code=$2; shift 2 ;;
    --cluster) need "$@"; cluster=$2; shift 2 ;;
    --attribute)
      need "$@"
      [[ $2 =~ ^[A-Za-z0-9_.:/-]+=.+$ ]] || die "--attribute $2: expected NAME=VALUE"
      attrs+=(--attribute "$2"); shift 2 ;;
    --deb) need "$@"; deb=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

[ "$(id -u)" = 0 ] || die "run as root (sudo $0 ...)"
[ -n "$endpoint" ] || die "--endpoint is required: apid's node channel, https://HOST:PORT"
[[ $endpoint =~ ^https://[^/:]+:[0-9]+/?$ || $endpoint =~ ^https://\[[0-9a-fA-F:]+\]:[0-9]+/?$ ]] \
  || die "--endpoint $endpoint: expected https://HOST:PORT (apid's node_listen, 8461 by default)"
[ -n "$ca" ] || die "--ca-cert is required: the cluster CA (skiff control ca-cert > ca.pem)"
[ -f "$ca" ] && [ -r "$ca" ] || die "--ca-cert $ca: not a readable file"
grep -q -- '-----BEGIN CERTIFICATE-----' "$ca" || die "--ca-cert $ca: no PEM certificate in it"
[ -n "$id" ] || die "--activation-id is required (skiff control activations create prints it)"
[ -n "$code" ] || die "--activation-code is required (shown once, when the activation is made)"
ca=$(readlink -f "$ca")

# Debian's tools, and an architecture a package is built for.
[ -f /etc/debian_version ] && command -v apt-get > /dev/null && command -v dpkg > /dev/null \
  || die "this installer needs Debian (or a derivative) with apt and dpkg"
arch=$(dpkg --print-architecture)
case "$arch" in amd64 | arm64) ;; *) die "architecture $arch is not supported: Skiff's packages are amd64 and arm64" ;; esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -z "$deb" ]; then
  deb=$(find "$(dirname "$(readlink -f "$0")")" -maxdepth 1 -name "skiff_*_$arch.deb" | sort -V | tail -n 1)
  if [ -z "$deb" ] && [ -n "${SKIFF_DEB_URL:-}" ]; then
    url=${SKIFF_DEB_URL//@ARCH@/$arch}
    echo "== downloading $url"
    command -v curl > /dev/null || die "SKIFF_DEB_URL needs curl (apt-get install curl), or give the package with --deb"
    curl -fsSL --retry 3 -o "$tmp/skiff_$arch.deb" "$url" || die "SKIFF_DEB_URL $url: download failed"
    deb=$tmp/skiff_$arch.deb
  fi
  [ -n "$deb" ] || die "no skiff_*_$arch.deb next to this script and no SKIFF_DEB_URL: give the package with --deb FILE"
fi
[ -f "$deb" ] && [ -r "$deb" ] || die "--deb $deb: not a readable file"
deb=$(readlink -f "$deb")
pkg=$(dpkg-deb -f "$deb" Package 2> /dev/null) || die "--deb $deb: not a Debian package"
[ "$pkg" = skiff ] || die "--deb $deb: is package $pkg, not skiff"
deb_arch=$(dpkg-deb -f "$deb" Architecture)
[ "$deb_arch" = "$arch" ] || die "--deb $deb: is for $deb_arch, this box is $arch"
version=$(dpkg-deb -f "$deb" Version)

echo "== installing skiff $version ($arch)"
# A newer version upgrades in place (skiffd restarts, tasks keep running); the same version is
# left as it is. Changed conffiles are kept without a question.
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$deb"
}
if ! apt_install > "$tmp/apt.log" 2>&1; then
  echo "(apt-get install failed; updating the package lists and trying again)"
  apt-get update -q > "$tmp/apt-update.log" 2>&1 || { cat "$tmp/apt-update.log" >&2; die "apt-get update failed"; }
  apt_install > "$tmp/apt.log" 2>&1 || { cat "$tmp/apt.log" >&2; die "installing $deb failed (above: apt-get's output)"; }
fi
installed=$(dpkg-query -W -f '${Version}' skiff)
echo "skiff $installed installed"

config=/etc/skiff/skiffd.toml
if [ ! -f "$config" ]; then
  mkdir -p /etc/skiff
  cat > "$config" << 'TOML'
# skiffd's configuration, written by install.sh. Every key is optional and has a default:
# runtime/src/config.rs (or the file the skiff package ships, packaging/skiffd.toml) lists them.
TOML
  echo "wrote $config (defaults)"
fi
# The state root, if the configuration moves it (`root = "..."`): node.json lives there.
root=$(sed -n 's/^[[:space:]]*root[[:space:]]*=[[:space:]]*"\(.*\)"[[:space:]]*\(#.*\)\{0,1\}$/\1/p' "$config" | tail -n 1)
identity=${root:-/var/lib/skiff}/node.json

echo "== registering with $endpoint"
registered_now=0
if [ -f "$identity" ]; then
  echo "registered already ($identity): $(tr -d '\n' < "$identity")"
  echo "(to join another cluster: deregister the node, remove $identity, run this again)"
else
  skiffd --config "$config" register --endpoint "$endpoint" --ca-cert "$ca" \
    --activation-id "$id" --activation-code "$code" ${cluster:+--cluster "$cluster"} "${attrs[@]}" \
    || die "skiffd register failed (its error is above); nothing was registered"
  registered_now=1
fi

# skiffd processes running the packaged binary.
skiffd_pids() {
  local p
  for p in $(pidof skiffd || true); do
    case "$(readlink "/proc/$p/exe" || true)" in
      /usr/bin/skiffd | "/usr/bin/skiffd (deleted)") echo "$p" ;;
    esac
  done
}

echo "== starting skiffd"
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --quiet skiffd.service
  if ((registered_now)); then
    # A skiffd running standalone (the package starts it) reads node.json at start only.
    systemctl restart skiffd.service
  else
    systemctl start skiffd.service
  fi
  systemctl is-active --quiet skiffd.service || die "skiffd did not start: journalctl -u skiffd"
  echo "skiffd runs (systemctl status skiffd; journalctl -u skiffd)"
else
  echo "systemd is not running here: skiffd runs in the background, not restarted if it dies or at boot (log: /var/log/skiff/skiffd.log)"
  pids=$(skiffd_pids)
  if [ -n "$pids" ] && ((registered_now)); then
    echo "restarting the standalone skiffd (pid $pids) so that it joins the cluster; its tasks keep running"
    for p in $pids; do
      kill -TERM "$p" || true
      for _ in $(seq 100); do kill -0 "$p" 2> /dev/null || break; sleep 0.1; done
    done
    pids=''
  fi
  if [ -z "$pids" ]; then
    mkdir -p /var/log/skiff
    setsid -f /usr/bin/skiffd --config "$config" < /dev/null >> /var/log/skiff/skiffd.log 2>&1
  fi
  for _ in $(seq 100); do
    [ -n "$(skiffd_pids)" ] && skiff task ls > /dev/null 2>&1 && break
    sleep 0.1
  done
  [ -n "$(skiffd_pids)" ] || die "skiffd did not start: see /var/log/skiff/skiffd.log"
  echo "skiffd runs (pid $(skiffd_pids | tr '\n' ' '| sed 's/ $//'))"
fi
echo "done: this box appears in 'aws ecs list-container-instances' once skiffd has connected"

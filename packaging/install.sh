#!/usr/bin/env bash
# Installs Skiff's node package and registers this box with a control plane in one step, as
# AWS's ecs-anywhere-install.sh does for ECS Anywhere. As root, on Debian 12 (amd64 or arm64):
#
#   install.sh --endpoint https://apid.example:8461 --ca-cert ca.pem \
#              --activation-id ID --activation-code CODE [--cluster NAME] \
#              [--attribute NAME=VALUE]... [--deb skiff_VERSION_ARCH.deb]
#
# --ca-cert is the cluster CA (`skiff control ca-cert`): the box verifies apid with it at first
# contact. Without --deb, the package is taken from the directory of this script
# (skiff_*_<arch>.deb). Running it again is safe: the package is reinstalled (an upgrade in
# place, tasks kept) and a box registered already is not registered again.
set -euo pipefail
die() { echo "install.sh: $*" >&2; exit 2; }
endpoint='' ca='' id='' code='' cluster='' deb=''
attrs=()
while (($#)); do
  case "$1" in
    --endpoint) endpoint=${2:-}; shift 2 ;;
    --ca-cert) ca=${2:-}; shift 2 ;;
    --activation-id) id=${2:-}; shift 2 ;;
    --activation-code) code=${2:-}; shift 2 ;;
    --cluster) cluster=${2:-}; shift 2 ;;
    --attribute) [[ ${2:-} == ?*=* ]] || die "--attribute ${2:-}: expected NAME=VALUE"; attrs+=(--attribute "$2"); shift 2 ;;
    --deb) deb=${2:-}; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ "$(id -u)" = 0 ] || die "run as root"
[[ $endpoint == https://*:* ]] || die "--endpoint ${endpoint:-(missing)}: expected https://HOST:PORT (apid's node channel)"
[ -n "$ca" ] || die "--ca-cert is required (the cluster CA: skiff control ca-cert > ca.pem)"
[ -r "$ca" ] || die "--ca-cert $ca: not a readable file"
grep -q 'BEGIN CERTIFICATE' "$ca" || die "--ca-cert $ca: no PEM certificate in it"
[ -n "$id" ] || die "--activation-id is required"
[ -n "$code" ] || die "--activation-code is required"
if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
  die "this installer needs Debian's apt and dpkg"
fi
arch=$(dpkg --print-architecture)
case "$arch" in amd64|arm64) ;; *) die "architecture $arch is not supported (amd64, arm64)" ;; esac
if [ -z "$deb" ]; then
  deb=$(find "$(dirname "$0")" -maxdepth 1 -name "skiff_*_$arch.deb" | sort -V | tail -1)
  [ -n "$deb" ] || die "no skiff_*_$arch.deb next to this script; give one with --deb"
fi
[ -r "$deb" ] || die "--deb $deb: not a readable file"
[ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || die "--deb $deb is for $(dpkg-deb -f "$deb" Architecture), this box is $arch"

echo "== installing $(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version) ($arch)"
apt-get install -y -qq "$(readlink -f "$deb")" >/dev/null

echo "== registering with $endpoint"
if [ -f /var/lib/skiff/node.json ]; then
  echo "registered already: $(grep -o '"containerInstanceArn": *"[^"]*"' /var/lib/skiff/node.json)"
else
  skiffd register --endpoint "$endpoint" --ca-cert "$ca" --activation-id "$id" \
    --activation-code "$code" ${cluster:+--cluster "$cluster"} "${attrs[@]}"
fi

echo "== starting skiffd"
if [ -d /run/systemd/system ]; then
  systemctl enable skiffd.service >/dev/null 2>&1
  systemctl restart skiffd.service
  systemctl --no-pager --lines=0 status skiffd.service || true
else
  echo "systemd is not running here: starting skiffd in the background (log: /var/log/skiff/skiffd.log)"
  if pkill -x skiffd; then sleep 1; fi
  mkdir -p /var/log/skiff
  setsid nohup /usr/bin/skiffd --config /etc/skiff/skiffd.toml >> /var/log/skiff/skiffd.log 2>&1 < /dev/null &
fi
echo "done: this box appears in 'aws ecs list-container-instances' once skiffd has connected"

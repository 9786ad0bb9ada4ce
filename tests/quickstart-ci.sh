#!/usr/bin/env bash
# Runs the README's first command, packaging/quickstart.sh, as CI must: for real (release
# build, registry, apid, skiffd, tasks through the aws CLI), but inside private PID, mount and
# network namespaces with empty /etc/skiff, /var/lib/skiff*, /run/skiff, /var/log/skiff and
# /usr/local/bin, so that it neither sees nor leaves anything on the machine: when the script
# ends, the PID namespace's end kills every process it started, the mount and network
# namespaces take their mounts, bridge and addresses with them, and the one thing on the host
# it can touch, its cgroup parent, is removed here. It runs the quick start twice (running it
# again must work) and checks what the first run printed.
set -euo pipefail
cd "$(dirname "$0")/.."
parent="skiff-ci-quickstart-$$"
log=$(mktemp)
cleanup() {
  for h in /sys/fs/cgroup/*/"$parent" /sys/fs/cgroup/unified/"$parent" /sys/fs/cgroup/"$parent"; do
    if [ -d "$h" ]; then find "$h" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
  done
  rm -f "$log"
}
trap cleanup EXIT
export QS_PARENT="$parent"
# shellcheck disable=SC2016 # expanded by the inner shell
unshare --pid --fork --mount-proc --mount --net bash -euo pipefail -c '
  ip link set lo up
  for d in /etc/skiff /var/lib/skiff /var/lib/skiff-apid /var/lib/skiff-quickstart /run/skiff /var/log/skiff /usr/local/bin; do
    mkdir -p "$d"; mount -t tmpfs tmpfs "$d"
  done
  mkdir -p /etc/skiff
  printf "cgroup_parent = \"%s\"\n" "$QS_PARENT" > /etc/skiff/skiffd.toml
  ./packaging/quickstart.sh
  echo "== second run"
  ./packaging/quickstart.sh
' 2>&1 | tee "$log"
for want in "Hello from a Skiff task at" "Hello from a Skiff awsvpc task at its own address" "== second run" "Done. The control plane"; do
  grep -q "$want" "$log" || { echo "quickstart-ci: the quick start did not print: $want" >&2; exit 1; }
done
[ "$(grep -c 'Hello from a Skiff awsvpc task' "$log")" -ge 2 ] || { echo "quickstart-ci: the second run did not serve the awsvpc task" >&2; exit 1; }
echo "quickstart-ci: both runs worked"

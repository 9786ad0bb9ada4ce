#!/usr/bin/env bash
# Builds the .deb packages for amd64 and arm64 and checks them: contents, control fields and
# conffiles (dpkg-deb); the amd64 binaries run from the extracted package; the arm64 binaries
# run under qemu-user (Debian's qemu-user-static) doing real work: apid's SQLite store and key
# (aws-lc) with `skiff-apid keys create`, the image store with `skiff image load` and `ls` (of
# an image without layers: qemu-user lacks openat2, which unpacking needs); containers cannot
# run under qemu-user: arm64 tasks need an arm64 box or VM. Then both packages are installed for
# real and skiff upgraded in place with a task running, in private namespaces over overlays
# (below): nothing on the machine changes.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/skiff/target}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "test-packages: $*" >&2; exit 1; }

./packaging/build-debs.sh all --out "$work/debs" >/dev/null
version=$(cargo metadata --no-deps --format-version 1 | jq -r '.packages[] | select(.name == "skiff-runtime") | .version')
for arch in amd64 arm64; do
  for pkg in skiff skiff-apid; do
    deb="$work/debs/${pkg}_${version}-1_${arch}.deb"
    [ -f "$deb" ] || fail "no $deb (have: $(ls "$work/debs"))"
    [ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || fail "$deb: Architecture $(dpkg-deb -f "$deb" Architecture)"
    case "$pkg" in
      skiff) files=(./usr/bin/skiffd ./usr/bin/skiff-shim ./usr/bin/skiff ./lib/systemd/system/skiffd.service ./etc/skiff/skiffd.toml ./etc/skiff/images.toml)
             conf=(/etc/skiff/skiffd.toml /etc/skiff/images.toml) deps=(libseccomp2 tini nftables) ;;
      skiff-apid) files=(./usr/bin/skiff-apid ./lib/systemd/system/skiff-apid.service ./etc/skiff/apid.toml)
             conf=(/etc/skiff/apid.toml) deps=(adduser) ;;
    esac
    listing=$(dpkg-deb -c "$deb")
    for f in "${files[@]}"; do grep -q " $f\$" <<<"$listing" || fail "$deb lacks $f"; done
    dpkg-deb -e "$deb" "$work/ctl-$pkg-$arch"
    for c in "${conf[@]}"; do grep -qx "$c" "$work/ctl-$pkg-$arch/conffiles" || fail "$deb: $c is not a conffile"; done
    for d in "${deps[@]}"; do dpkg-deb -f "$deb" Depends | grep -q "$d" || fail "$deb: does not depend on $d"; done
    [ -x "$work/ctl-$pkg-$arch/postinst" ] || fail "$deb: no postinst"
    mkdir -p "$work/$arch"
    dpkg-deb -x "$deb" "$work/$arch"
  done
  file "$work/$arch/usr/bin/skiffd" | grep -q "$( [ "$arch" = arm64 ] && echo aarch64 || echo x86-64)" || fail "$arch skiffd is $(file -b "$work/$arch/usr/bin/skiffd")"
done
grep -q '^KillMode=process' "$work/amd64/lib/systemd/system/skiffd.service" || fail "skiffd.service must leave tasks running (KillMode=process)"
echo "packages: contents, conffiles, dependencies and architectures as expected"

# The binaries do real work: on amd64 natively, on arm64 under qemu-user.
smoke() {
  local arch=$1 run=$2 root="$work/$1" d="$work/smoke-$1"
  mkdir -p "$d"
  $run "$root/usr/bin/skiffd" --version | grep -q skiffd || fail "$arch skiffd --version"
  $run "$root/usr/bin/skiff" --help >/dev/null || fail "$arch skiff --help"
  printf 'database = "%s/apid.db"\n' "$d" > "$d/apid.toml"
  $run "$root/usr/bin/skiff-apid" --config "$d/apid.toml" keys create | jq -e '.AccessKey.AccessKeyId | startswith("AKIA")' >/dev/null \
    || fail "$arch skiff-apid keys create"
  $run "$root/usr/bin/skiff-apid" --config "$d/apid.toml" keys list | grep -q AKIA || fail "$arch skiff-apid keys list"
  : > "$d/images.toml"
  $run "$root/usr/bin/skiff" image load --platform linux/amd64 --name local/empty "$work/empty" --root "$d/store" --config "$d/images.toml" >/dev/null \
    || fail "$arch skiff image load"
  $run "$root/usr/bin/skiff" image ls --root "$d/store" --config "$d/images.toml" | grep -q local/empty || fail "$arch skiff image ls"
  echo "$arch binaries: skiffd, skiff (image load, ls) and skiff-apid (SQLite store, keys) work"
}
./packaging/sample-image.sh "$work/layout" 1.0 >/dev/null
# The smoke's image has no layer: qemu-user (Debian 12's 7.2) lacks openat2, which the unpacker
# resolves every path with.
umoci init --layout "$work/empty" && umoci new --image "$work/empty:1"
smoke amd64 ""
smoke arm64 qemu-aarch64-static

# Installed for real, then upgraded in place with a task running, as on a box without systemd
# (like this machine): in private PID, mount and network namespaces whose /usr, /etc and /var
# are overlays (dpkg, adduser and skiffd write there; the machine's own stay untouched), with a
# cgroup parent of its own. skiff-apid is installed with dpkg and runs as its packaged user;
# install.sh installs skiff 1 (version -1) and registers the box with an activation; a bridge
# task with a port mapping runs through the ECS API; install.sh again with skiff -2 (the same
# package rebuilt) is the upgrade: skiffd must restart on the new binary while the task's
# process stays the same one, still serving, and the node reconnects. The namespaces' end takes
# every process, mount and link with it; the cgroups are removed below.
dpkg-deb -R "$work/debs/skiff_${version}-1_amd64.deb" "$work/repack"
sed -i "s/^Version: .*/Version: ${version}-2/" "$work/repack/DEBIAN/control"
dpkg-deb -b --root-owner-group "$work/repack" "$work/debs/skiff_${version}-2_amd64.deb" >/dev/null
parent="skiff-ci-packages-$$"
remove_cgroups() {
  for h in /sys/fs/cgroup/*/"$parent" /sys/fs/cgroup/"$parent"; do
    if [ -d "$h" ]; then find "$h" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
  done
}
trap 'remove_cgroups; rm -rf "$work"' EXIT
before=$(sha256sum /etc/passwd /etc/group /var/lib/dpkg/status)
# shellcheck disable=SC2016 # expanded by the inner shell
W="$work" V="$version" P="$parent" unshare --pid --fork --mount-proc --mount --net bash -euo pipefail -c '
  fail() { echo "test-packages (install, upgrade): $*" >&2; tail -n 30 /var/log/skiff/skiffd.log "$W/apid.log" >&2 || true; exit 1; }
  ip link set lo up
  for d in usr etc var; do
    mkdir -p "$W/overlay/$d" "$W/overlay/$d.work"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$W/overlay/$d,workdir=$W/overlay/$d.work" "/$d"
  done
  mkdir -p /run/skiff && mount -t tmpfs tmpfs /run/skiff
  # The node state on a real filesystem: container overlay mounts cannot stack on the /var overlay.
  mkdir -p "$W/state" /var/lib/skiff && mount --bind "$W/state" /var/lib/skiff
  mkdir -p /etc/skiff
  printf "cgroup_parent = \"%s\"\nimage_pull_behavior = \"prefer-cached\"\n" "$P" > /etc/skiff/skiffd.toml

  dpkg -i "$W/debs/skiff-apid_${V}-1_amd64.deb" >/dev/null
  [ "$(stat -c %U:%a /var/lib/skiff-apid)" = skiff-apid:700 ] || fail "/var/lib/skiff-apid is $(stat -c %U:%a /var/lib/skiff-apid)"
  as_apid() { runuser -u skiff-apid -- skiff-apid --config /etc/skiff/apid.toml "$@"; }
  as_apid serve > "$W/apid.log" 2>&1 &
  for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:8460/ && break; sleep 0.1; done
  key=$(as_apid keys create)
  export AWS_ACCESS_KEY_ID=$(jq -r .AccessKey.AccessKeyId <<<"$key") AWS_SECRET_ACCESS_KEY=$(jq -r .AccessKey.SecretAccessKey <<<"$key")
  export AWS_DEFAULT_REGION=us-east-1 AWS_PAGER=""
  ecs() { aws ecs --endpoint-url http://127.0.0.1:8460 --output json "$@"; }
  ecs create-cluster --cluster-name pkg >/dev/null
  act=$(as_apid activations create --cluster pkg --count 1 --expires 1h)
  as_apid ca-cert > "$W/ca.pem"
  install_skiff() {
    ./packaging/install.sh --endpoint https://127.0.0.1:8461 --ca-cert "$W/ca.pem" \
      --activation-id "$(jq -r .ActivationId <<<"$act")" --activation-code "$(jq -r .ActivationCode <<<"$act")" \
      --cluster pkg --attribute site=packages --deb "$1" > "$W/install.log" 2>&1 || { cat "$W/install.log" >&2; fail "install.sh --deb $1"; }
  }
  install_skiff "$W/debs/skiff_${V}-1_amd64.deb"
  [ "$(stat -c %a /etc/skiff/node)" = 700 ] || fail "/etc/skiff/node is not 0700"
  connected() { ecs list-container-instances --cluster pkg --filter "agentConnected == true" | jq ".containerInstanceArns | length"; }
  for _ in $(seq 100); do [ "$(connected)" = 1 ] && break; sleep 0.2; done
  [ "$(connected)" = 1 ] || fail "the node did not connect after install.sh"

  # Polls until task $1 is $2 (RUNNING, STOPPED; or STOPPED instead), then the aws CLI waiter
  # (tasks-running, tasks-stopped) must agree at once: its own retries come 6 s apart.
  wait_task() {
    for _ in $(seq 100); do
      case "$(ecs describe-tasks --cluster pkg --tasks "$1" | jq -r ".tasks[0].lastStatus")" in "$2" | STOPPED) break ;; esac
      sleep 0.2
    done
    ecs wait "tasks-${2,,}" --cluster pkg --tasks "$1"
  }

  skiff image load --name 127.0.0.1:5055/samples/busybox "$W/layout" >/dev/null
  td=$(ecs register-task-definition --cli-input-json file://packaging/examples/web-task.json | jq -r .taskDefinition.taskDefinitionArn)
  task=$(ecs run-task --cluster pkg --task-definition "$td" | jq -r ".tasks[0].taskArn")
  wait_task "$task" RUNNING ||
    fail "the task did not run: $(ecs describe-tasks --cluster pkg --tasks "$task" | jq -c ".tasks[0] | {stoppedReason, containers: [.containers[] | {reason, exitCode}]}")"
  curl -fsS --retry 20 --retry-connrefused --retry-delay 0 http://127.0.0.1:8080/ | grep -q "Hello from a Skiff task" || fail "the task does not serve"
  old_skiffd=$(pidof skiffd) old_httpd=$(pidof httpd)

  install_skiff "$W/debs/skiff_${V}-2_amd64.deb"
  [ "$(dpkg-query -W -f "\${Version}" skiff)" = "${V}-2" ] || fail "skiff was not upgraded"
  grep -q "registered already" "$W/install.log" || fail "install.sh registered the box again"
  new_skiffd=$(pidof skiffd)
  [ -n "$new_skiffd" ] && [ "$new_skiffd" != "$old_skiffd" ] || fail "skiffd was not restarted (pid $old_skiffd, now $new_skiffd)"
  [ "$(readlink /proc/"$new_skiffd"/exe)" = /usr/bin/skiffd ] || fail "skiffd runs $(readlink /proc/"$new_skiffd"/exe)"
  [ "$(pidof httpd)" = "$old_httpd" ] || fail "the task was restarted (httpd pid $old_httpd, now $(pidof httpd))"
  curl -fsS http://127.0.0.1:8080/ | grep -q "Hello from a Skiff task" || fail "the task does not serve after the upgrade"
  for _ in $(seq 100); do [ "$(connected)" = 1 ] && break; sleep 0.2; done
  [ "$(connected)" = 1 ] || fail "the node did not reconnect after the upgrade"
  [ "$(skiff task ls --json | jq -r ".[0].lastStatus")" = RUNNING ] || fail "the new skiffd does not hold the task"
  [ "$(ecs describe-tasks --cluster pkg --tasks "$task" | jq -r ".tasks[0].lastStatus")" = RUNNING ] || fail "apid lost the task"
  ecs stop-task --cluster pkg --task "$task" >/dev/null
  wait_task "$task" STOPPED
'
[ "$(sha256sum /etc/passwd /etc/group /var/lib/dpkg/status)" = "$before" ] || fail "the machine's /etc/passwd, /etc/group or dpkg status changed"
echo "install and upgrade: skiff-apid installed with dpkg runs as its user; install.sh installs skiff and registers the box; an upgrade in place restarts skiffd on the new binary and the task keeps its process and keeps serving"

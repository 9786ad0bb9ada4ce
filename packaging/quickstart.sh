#!/usr/bin/env bash
# Skiff quick start on a fresh Debian 12 machine, as root. Safe to run again.
#
# What it does, as far as Skiff exists today (images/, runtime/):
#   1. installs build and runtime dependencies, builds Skiff (release) and installs `skiff`,
#      `skiffd` and `skiff-shim` in /usr/local/bin;
#   2. starts a local registry (Debian's docker-registry) on 127.0.0.1:5055;
#   3. builds a sample image from Debian's busybox-static (GNU tar + umoci), pushes it with skopeo;
#   4. pulls it with `skiff image pull` into /var/lib/skiff and lists it;
#   5. starts skiffd (standalone: no control plane yet) unless it runs (a skiffd whose binary was
#      replaced by step 1 is restarted: its tasks keep running and are adopted), and runs the
#      sample tasks packaging/examples/hello-task.json (a one-shot setup container, then an app
#      container with a health check, sharing a scratch volume) and web-task.json (bridge network,
#      host port 8080 mapped to the task's port 80), replacing those a previous run started.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "quickstart: run as root (sudo $0)" >&2; exit 1; }

REG=127.0.0.1:5055
STATE=/var/lib/skiff-quickstart
IMAGE=$REG/samples/busybox:1.0
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/skiff/target}"

echo "== dependencies"
./packaging/deps.sh

echo "== build"
cargo build --release --workspace --quiet
for b in skiff skiffd skiff-shim; do install -m 0755 "$CARGO_TARGET_DIR/release/$b" "/usr/local/bin/$b"; done

echo "== configuration"
mkdir -p /etc/skiff
[ -f /etc/skiff/images.toml ] || install -m 0644 packaging/images.toml /etc/skiff/images.toml
if ! grep -q "\"$REG\"" /etc/skiff/images.toml; then
  printf '\n# Added by packaging/quickstart.sh: the local sample registry speaks plain HTTP.\n[registries."%s"]\ninsecure = true\n' "$REG" >> /etc/skiff/images.toml
fi

echo "== local registry on $REG"
mkdir -p "$STATE/registry"
if ! curl -fsS "http://$REG/v2/" >/dev/null 2>&1; then
  cat > "$STATE/registry.yml" <<YML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $STATE/registry}, delete: {enabled: true}}
http: {addr: $REG}
YML
  nohup docker-registry serve "$STATE/registry.yml" > "$STATE/registry.log" 2>&1 &
  echo $! > "$STATE/registry.pid"
  for _ in $(seq 50); do curl -fsS "http://$REG/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
fi

echo "== sample image from busybox-static"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin" "$work/rootfs/etc"
cp /bin/busybox "$work/rootfs/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$work/rootfs/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$work/rootfs/etc/passwd"
echo 'Hello from a Skiff sample image' > "$work/rootfs/etc/motd"
umoci init --layout "$work/layout"
umoci new --image "$work/layout:1.0"
# (umoci 0.4's `insert` writes a truncated tar; a layer made by GNU tar is added instead)
tar -C "$work/rootfs" --numeric-owner -cf "$work/layer.tar" .
umoci raw add-layer --image "$work/layout:1.0" "$work/layer.tar"
umoci config --image "$work/layout:1.0" --config.cmd /bin/sh --config.env PATH=/bin
skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:1.0" "docker://$IMAGE"

echo "== skiff image pull $IMAGE"
skiff image pull "$IMAGE"
echo "== skiff image ls"
skiff image ls
echo "== skiffd"
old=$(pgrep -x skiffd || true)
if [ -n "$old" ] && readlink "/proc/$old/exe" | grep -q '(deleted)'; then
  echo "restarting skiffd on the new binary (tasks keep running)"
  kill "$old"; for _ in $(seq 100); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
fi
if ! skiff task ls >/dev/null 2>&1; then
  mkdir -p /var/log/skiff
  setsid nohup skiffd >> /var/log/skiff/skiffd.log 2>&1 < /dev/null &
  for _ in $(seq 100); do skiff task ls >/dev/null 2>&1 && break; sleep 0.1; done
fi
for old in $(skiff task ls | awk '$2 == "hello" || $2 == "web" {print $1}'); do skiff task stop "$old" >/dev/null; done
echo "== skiff task run -f packaging/examples/web-task.json"
web=$(skiff task run -f packaging/examples/web-task.json)
skiff task describe "$web" | grep -E '"(hostPort|containerPort|privateIpv4Address)"' | tr -d ' ,' | sort -u
echo "== curl http://127.0.0.1:8080/"
curl -fsS --retry 20 --retry-connrefused --retry-delay 0 http://127.0.0.1:8080/
echo "== skiff task run -f packaging/examples/hello-task.json"
task=$(skiff task run -f packaging/examples/hello-task.json)
sleep 6
skiff task ls
echo "== skiff logs $task app"
skiff logs "$task" app
echo "== skiff exec $task app -- cat /data/state"
skiff exec "$task" app -- cat /data/state

cat <<TXT

Done. The sample image is in Skiff's store (/var/lib/skiff), served by the registry at $REG;
skiffd runs (log: /var/log/skiff/skiffd.log) and so do tasks $task (hello) and $web (web, on the
skiff0 bridge, reachable at http://<this machine>:8080/ from the LAN and http://127.0.0.1:8080/ here).
Try next:
  skiff task describe $task
  skiff logs -f $task app
  skiff stats $task
  skiff exec -t $task app -- sh
  skiff task stop $task
  skiff image inspect $IMAGE
TXT

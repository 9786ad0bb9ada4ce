#!/usr/bin/env bash
# Skiff quick start on a fresh Debian 12 machine, as root. Safe to run again.
#
#   1. installs build and runtime dependencies, builds Skiff (release) and installs `skiff`,
#      `skiffd`, `skiff-shim` and `skiff-apid` in /usr/local/bin;
#   2. starts a local registry (Debian's docker-registry) on 127.0.0.1:5055 and pushes a sample
#      image built from Debian's busybox-static (GNU tar + umoci, then skopeo);
#   3. starts the control plane, skiff-apid, on its embedded SQLite store (ECS API on
#      127.0.0.1:8460, node channel on 127.0.0.1:8461), with an access key for this machine's
#      root (/etc/skiff/quickstart-credentials, 0600) and a cluster `quickstart`;
#   4. registers this machine as a node of that cluster with an activation (`skiffd register`),
#      and starts skiffd (a skiffd or apid whose binary step 1 replaced is restarted: tasks keep
#      running and are adopted);
#   5. registers the sample task definitions and runs them through the ECS API with the aws CLI:
#      packaging/examples/web-task.json (bridge mode, host port 8080 mapped to the task's 80)
#      and awsvpc-task.json (a task with its own address, routed by the node), replacing those a
#      previous run started, and fetches both pages; hello-task.json (dependsOn, a health check,
#      a shared volume) runs too.
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
for b in skiff skiffd skiff-shim skiff-apid; do install -C -m 0755 "$CARGO_TARGET_DIR/release/$b" "/usr/local/bin/$b"; done

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
./packaging/sample-image.sh "$work/layout" 1.0
skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:1.0" "docker://$IMAGE"

echo "== skiff image pull $IMAGE"
skiff image pull "$IMAGE"
echo "== skiff image ls"
skiff image ls
echo "== skiff-apid (the control plane) on its embedded SQLite store"
[ -f /etc/skiff/apid.toml ] || cat > /etc/skiff/apid.toml <<'TOML'
# Written by packaging/quickstart.sh; apid/src/config.rs documents every key.
listen = "127.0.0.1:8460"
node_listen = "127.0.0.1:8461"
database = "/var/lib/skiff-apid/apid.db"
TOML
restart_if_replaced() {
  local pid
  pid=$(pgrep -x "$1" || true)
  if [ -n "$pid" ] && readlink "/proc/$pid/exe" | grep -q '(deleted)'; then
    echo "restarting $1 on the new binary"
    kill "$pid"; for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
}
restart_if_replaced skiff-apid
mkdir -p /var/log/skiff
if ! curl -s -o /dev/null http://127.0.0.1:8460/; then
  setsid nohup skiff-apid --config /etc/skiff/apid.toml serve >> /var/log/skiff/apid.log 2>&1 < /dev/null &
  for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:8460/ && break; sleep 0.1; done
fi
CREDS=/etc/skiff/quickstart-credentials
if [ ! -s "$CREDS" ]; then
  key=$(skiff-apid --config /etc/skiff/apid.toml keys create)
  umask 077
  printf 'export AWS_ACCESS_KEY_ID=%s\nexport AWS_SECRET_ACCESS_KEY=%s\n' \
    "$(jq -r .AccessKey.AccessKeyId <<<"$key")" "$(jq -r .AccessKey.SecretAccessKey <<<"$key")" > "$CREDS"
  umask 022
fi
# shellcheck disable=SC1090
. "$CREDS"
export AWS_DEFAULT_REGION=us-east-1 AWS_PAGER=""
ECS=(aws ecs --endpoint-url http://127.0.0.1:8460 --output json)
"${ECS[@]}" create-cluster --cluster-name quickstart >/dev/null

echo "== skiffd: this machine as a node of cluster quickstart"
if ! grep -q '^\[network.awsvpc\]' /etc/skiff/skiffd.toml 2>/dev/null; then
  printf '\n# Added by packaging/quickstart.sh: awsvpc tasks get their own address from this subnet,\n# routed by this node (a LAN router would send the subnet to it).\n[network.awsvpc]\nmode = "routed"\nsubnet = "172.31.250.0/24"\n' >> /etc/skiff/skiffd.toml
fi
if [ ! -f /var/lib/skiff/node.json ]; then
  skiff-apid --config /etc/skiff/apid.toml ca-cert > /etc/skiff/apid-ca.pem
  act=$(skiff-apid --config /etc/skiff/apid.toml activations create --cluster quickstart --count 1 --expires 1h)
  skiffd register --endpoint https://127.0.0.1:8461 --ca-cert /etc/skiff/apid-ca.pem \
    --activation-id "$(jq -r .ActivationId <<<"$act")" \
    --activation-code "$(jq -r .ActivationCode <<<"$act")" \
    --cluster quickstart --attribute site=quickstart
  # A skiffd already running standalone starts syncing once restarted (its tasks keep running).
  if pkill -x skiffd; then sleep 1; fi
fi
restart_if_replaced skiffd
if ! skiff task ls >/dev/null 2>&1; then
  setsid nohup skiffd >> /var/log/skiff/skiffd.log 2>&1 < /dev/null &
  for _ in $(seq 100); do skiff task ls >/dev/null 2>&1 && break; sleep 0.1; done
fi
for _ in $(seq 100); do
  [ "$("${ECS[@]}" list-container-instances --cluster quickstart --filter 'agentConnected == true' | jq '.containerInstanceArns | length')" -ge 1 ] && break
  sleep 0.2
done
"${ECS[@]}" list-container-instances --cluster quickstart

echo "== the sample tasks, through the ECS API"
# Stopped together, awaited together: the waiter polls every 6 s.
replaced=()
for family in web vpcweb hello; do
  for arn in $("${ECS[@]}" list-tasks --cluster quickstart --family "$family" | jq -r '.taskArns[]'); do
    "${ECS[@]}" stop-task --cluster quickstart --task "$arn" --reason "replaced by a new quick start" >/dev/null
    replaced+=("$arn")
  done
done
if [ ${#replaced[@]} -gt 0 ]; then
  "${ECS[@]}" wait tasks-stopped --cluster quickstart --tasks "${replaced[@]}"
fi
# Tasks a standalone skiffd ran in an earlier quick start.
for old in $(skiff task ls --json | jq -r '.[] | select(.origin == null and (.taskDefinition.family == "web" or .taskDefinition.family == "hello")) | .taskId'); do
  skiff task stop "$old" >/dev/null
done
run() {
  local td
  td=$("${ECS[@]}" register-task-definition --cli-input-json "file://packaging/examples/$1" | jq -r .taskDefinition.taskDefinitionArn)
  "${ECS[@]}" run-task --cluster quickstart --task-definition "$td" | jq -r '.tasks[0].taskArn'
}
web=$(run web-task.json)
vpc=$(run awsvpc-task.json)
hello=$(run hello-task.json)
"${ECS[@]}" wait tasks-running --cluster quickstart --tasks "$web" "$vpc" "$hello"
"${ECS[@]}" describe-tasks --cluster quickstart --tasks "$web" "$vpc" "$hello" | jq -r '.tasks[] |
  "\(.group | sub("family:"; ""))\t\(.lastStatus)\t\(.taskArn | split("/") | last)\taddress \([.attachments[]?.details[]? | select(.name == "privateIPv4Address") | .value] | first // "-")\tports \([.containers[].networkBindings[]? | "\(.hostPort)->\(.containerPort)"] | join(",") | if . == "" then "-" else . end)"' | column -t -s $'\t'
vpc_ip=$("${ECS[@]}" describe-tasks --cluster quickstart --tasks "$vpc" | jq -r '[.tasks[0].attachments[].details[] | select(.name == "privateIPv4Address") | .value][0]')
echo "== curl http://127.0.0.1:8080/ (bridge, port mapping)"
curl -fsS --retry 20 --retry-connrefused --retry-delay 0 http://127.0.0.1:8080/
echo "== curl http://$vpc_ip/ (awsvpc, the task's own address)"
curl -fsS --retry 20 --retry-connrefused --retry-delay 0 "http://$vpc_ip/"
echo "== skiff control logs (through apid and the node's channel)"
sleep 3
skiff control logs --cluster quickstart "$hello" app --tail 3

cat <<TXT

Done. The control plane (skiff-apid, SQLite at /var/lib/skiff-apid/apid.db, log
/var/log/skiff/apid.log) runs the cluster quickstart; this machine is its node (skiffd, log
/var/log/skiff/skiffd.log); the sample image is served by the registry at $REG.
Tasks: web ${web##*/} (bridge: http://<this machine>:8080/ from the LAN, http://127.0.0.1:8080/
here), vpcweb ${vpc##*/} (awsvpc: http://$vpc_ip/ from this node), hello ${hello##*/}.
Try next (the access key is in $CREDS):
  . $CREDS; export AWS_DEFAULT_REGION=us-east-1
  aws ecs list-tasks --cluster quickstart --endpoint-url http://127.0.0.1:8460
  aws ecs describe-tasks --cluster quickstart --tasks ${web##*/} --endpoint-url http://127.0.0.1:8460
  aws ecs stop-task --cluster quickstart --task ${hello##*/} --endpoint-url http://127.0.0.1:8460
  skiff control nodes; skiff control tasks --cluster quickstart
  skiff control exec --cluster quickstart ${hello##*/} app -- cat /data/state
  skiff task ls; skiff logs -f ${hello##*/} app
TXT

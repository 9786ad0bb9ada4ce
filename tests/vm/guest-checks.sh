#!/bin/busybox sh
# The checks run inside the cgroup v2 test VM (see run-cgroup2.sh), by busybox sh. Each check
# prints `SKIFF-V2 PASS <name>` or `SKIFF-V2 FAIL <name>: <why>`; the host asserts the set.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
CG=/sys/fs/cgroup
PARENT=skiff
IMAGE=local/bb:1

pass() { echo "SKIFF-V2 PASS $1"; }
fail() { echo "SKIFF-V2 FAIL $1: $2"; }
# expect NAME ACTUAL WANTED
expect() {
  if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "got '$2', want '$3'"; fi
}
# A field of the first container in `skiff task describe` (pretty JSON, one container).
field() { grep -o "\"$2\": [^,]*" "/tmp/describe-$1.json" | head -1 | sed "s/\"$2\": //; s/\"//g"; }
describe() { timeout 60 skiff task describe "$1" > "/tmp/describe-$1.json"; }
# Runs a task definition (waits until RUNNING, or STOPPED); prints the task id.
run_task() {
  echo "$1" > /tmp/def.json
  timeout 120 skiff task run -f /tmp/def.json 2>/tmp/run.err | head -1
}
show_log() { echo "--- skiffd log (tail)"; tail -n 30 /tmp/skiffd.log; echo "---"; }

mkdir -p /etc/skiff /var/lib/skiff /run/skiff
: > /etc/skiff/images.toml
cat > /etc/skiff/skiffd.toml <<EOF
root = "/var/lib/skiff"
run_dir = "/run/skiff"
images_config = "/etc/skiff/images.toml"
image_pull_behavior = "prefer-cached"
cgroup_parent = "$PARENT"
metrics_address = "127.0.0.1:9464"
EOF
# A per-container pids limit.
PIDS_LIMIT=100
echo "container_pids_limit = $PIDS_LIMIT" >> /etc/skiff/skiffd.toml

if skiff image load --name local/bb /image --root /var/lib/skiff --config /etc/skiff/images.toml \
    > /tmp/load.out 2>&1; then
  pass image-load
else
  fail image-load "$(tail -n 3 /tmp/load.out | tr '\n' ' ')"
fi

# start_skiffd CHECK-NAME: starts skiffd and waits for its socket.
start_skiffd() {
  rm -f /run/skiff/skiffd.sock
  RUST_LOG=${RUST_LOG:-info,libcgroups=error} skiffd --config /etc/skiff/skiffd.toml \
    >> /tmp/skiffd.log 2>&1 &
  SKIFFD=$!
  n=0
  while [ ! -S /run/skiff/skiffd.sock ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
  if [ -S /run/skiff/skiffd.sock ]; then pass "$1"; else fail "$1" "no socket"; show_log; fi
}
start_skiffd skiffd-start

# --- 1. task-level limits in the task cgroup; the container's cgroup nested under it ----------
# 512 cpu units = half a core: quota 50000 of 100000; cpu.weight 20 (runc's shares conversion).
id=$(run_task '{"family":"limits","networkMode":"none","cpu":"512","memory":"64","containerDefinitions":[{"name":"main","image":"'$IMAGE'","memory":48,"command":["sh","-c","trap \"exit 0\" TERM; sleep 600 & wait"]}]}')
echo "SKIFF-V2 INFO limits task $id"
T=$CG/$PARENT/$id
if [ -n "$id" ] && [ -d "$T" ]; then pass task-cgroup; else fail task-cgroup "no $T: $(cat /tmp/run.err)"; show_log; fi
expect memory-max "$(cat "$T/memory.max" 2>&1)" 67108864
expect cpu-max "$(cat "$T/cpu.max" 2>&1)" "50000 100000"
expect cpu-weight "$(cat "$T/cpu.weight" 2>&1)" 20
# The node's task_pids_limit (default 8192; ECS has no such setting).
expect pids-max "$(cat "$T/pids.max" 2>&1)" 8192
# skiffd enables cpu, memory and pids on the way down (libcontainer may add the others).
sc=" $(cat "$T/cgroup.subtree_control" 2>&1) "
case $sc in
  *" cpu "*" memory "*" pids "*) pass subtree-control ;;
  *) fail subtree-control "task cgroup.subtree_control is '$sc'" ;;
esac
describe "$id"
pid=$(field "$id" pid)
expect container-nested "$(cat "/proc/$pid/cgroup" 2>&1)" "0::/$PARENT/$id/main"
# An exec'd process joins the container's cgroup (libcontainer's tenant, on v2) and its cgroup
# namespace: it is listed in the cgroup.procs of the container's /sys/fs/cgroup, whose
# memory.max is the container's limit, and its /proc/self/cgroup says it is at that root.
out=$(timeout 60 skiff exec "$id" main -- sh -c 'while read p; do [ "$p" = $$ ] && echo in; done < /sys/fs/cgroup/cgroup.procs; cat /proc/self/cgroup /sys/fs/cgroup/memory.max' 2>&1)
expect exec-cgroup "$(echo $out)" "in 0::/ 50331648"
timeout 60 skiff exec "$id" main -- sh -c 'exit 3' > /dev/null 2>&1
expect exec-exit-code "$?" 3
expect container-memory-max "$(cat "$T/main/memory.max" 2>&1)" 50331648
expect container-pids-max "$(cat "$T/main/pids.max" 2>&1)" "$PIDS_LIMIT"
# Nothing but the container's processes in the task's cgroup tree (v2's no-internal-process rule).
expect task-cgroup-no-procs "$(cat "$T/cgroup.procs" 2>&1)" ""
# What runtime/src/stats.rs reads on v2 is there in the container's cgroup.
C=$T/main
missing=""
for k in "cpu.stat usage_usec" "cpu.stat user_usec" "cpu.stat system_usec" "cpu.stat nr_periods" \
    "cpu.stat nr_throttled" "cpu.stat throttled_usec" "memory.stat inactive_file"; do
  set -- $k
  grep -q "^$2 [0-9]" "$C/$1" 2>/dev/null || missing="$missing $1:$2"
done
for f in memory.current memory.max memory.peak pids.current pids.max; do
  [ -n "$(cat "$C/$f" 2>/dev/null)" ] || missing="$missing $f"
done
expect stats-files "$missing" ""
# The Prometheus endpoint renders the task's v2 limit.
# (busybox-static's wget segfaults here: plain HTTP/1.0 through nc; 9464 = 0x24F8.)
if grep -q ':24F8 00000000:0000 0A' /proc/net/tcp; then
  # nc's stdin stays open (a FIFO with a writer in the background): hyper drops a connection
  # whose client half-closes before the answer.
  mkfifo /tmp/req
  (printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n'; sleep 60) > /tmp/req &
  metrics=$(nc -w 20 127.0.0.1 9464 < /tmp/req 2>&1)
  limit=$(echo "$metrics" | grep "^skiff_task_memory_limit_bytes{task_id=\"$id\"" | sed 's/.* //')
  expect stats-endpoint "$limit" 67108864
else
  echo "SKIFF-V2 FAIL stats-endpoint: nothing listens on 127.0.0.1:9464"
fi
timeout 120 skiff task stop "$id" > /dev/null 2>&1
describe "$id"
expect stop-exit "$(field "$id" lastStatus)/$(field "$id" exitCode)" STOPPED/0

# --- 2. an exit code and the logs ------------------------------------------------------------
id7=$(run_task '{"family":"exit7","networkMode":"none","memory":"64","containerDefinitions":[{"name":"main","image":"'$IMAGE'","command":["sh","-c","echo out; echo err >&2; exit 7"]}]}')
timeout 120 skiff task wait "$id7" > /dev/null 2>&1
expect exit-code-wait "$?" 7
describe "$id7"
expect exit-code-describe "$(field "$id7" exitCode)" 7
expect logs-stdout "$(timeout 60 skiff logs "$id7" 2>/dev/null)" out
expect logs-stderr "$(timeout 60 skiff logs "$id7" 2>&1 >/dev/null)" err

# --- 3. the task memory limit OOM-kills; ECS's report: exit 137, OutOfMemoryError --------------
idm=$(run_task '{"family":"oom","networkMode":"none","memory":"32","containerDefinitions":[{"name":"hog","image":"'$IMAGE'","command":["sh","-c","x=a; while true; do x=$x$x; done"]}]}')
timeout 180 skiff task wait "$idm" > /dev/null 2>&1
describe "$idm"
expect oom-exit-code "$(field "$idm" exitCode)" 137
reason=$(field "$idm" reason)
case $reason in
  *OutOfMemoryError*) pass oom-reason ;;
  *) fail oom-reason "reason '$reason'; $(tr '\n' ' ' < "/tmp/describe-$idm.json" | head -c 600)" ;;
esac

# --- 4. skiffd killed and restarted: the running task is adopted, an orphan cgroup removed -----
idr=$(run_task '{"family":"restart","networkMode":"none","memory":"64","containerDefinitions":[{"name":"main","image":"'$IMAGE'","command":["sh","-c","trap \"exit 0\" TERM; sleep 600 & wait"]}]}')
describe "$idr"
pid_before=$(field "$idr" pid)
kill -9 "$SKIFFD"
wait "$SKIFFD" 2>/dev/null
orphan=$CG/$PARENT/0123456789abcdef0123456789abcdef
mkdir -p "$orphan/main"
start_skiffd restart-skiffd
n=0
while [ -d "$orphan" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
expect restart-orphan-cgroup-removed "$(ls -d "$orphan" 2>/dev/null)" ""
describe "$idr"
expect restart-task-adopted "$(field "$idr" lastStatus)/$(field "$idr" pid)" "RUNNING/$pid_before"
expect restart-task-cgroup "$(cat "/proc/$pid_before/cgroup" 2>&1)" "0::/$PARENT/$idr/main"
timeout 120 skiff task stop "$idr" > /dev/null 2>&1
describe "$idr"
expect restart-task-stop "$(field "$idr" lastStatus)/$(field "$idr" exitCode)" STOPPED/0

# --- 5. stop + rm leave nothing -------------------------------------------------------------
timeout 120 skiff task rm "$id" "$id7" "$idm" "$idr" > /tmp/rm.out 2>&1 || fail task-rm "$(cat /tmp/rm.out)"
left=$(find "$CG/$PARENT" -mindepth 1 -type d 2>&1)
expect cgroups-removed "$left" ""
left=$(ls /run/skiff/containers 2>/dev/null; grep " /var/lib/skiff/" /proc/mounts)
expect nothing-left "$left" ""
expect tasks-forgotten "$(timeout 60 skiff task ls -a -q 2>&1)" ""

if grep -qi "panic" /tmp/skiffd.log; then fail no-panic "$(grep -i -m3 panic /tmp/skiffd.log)"; else pass no-panic; fi

#!/bin/busybox sh
# /init of the cgroup v2 test VM (tests/vm/run-cgroup2.sh builds the initramfs around it).
# Stage 1 (PID 1 on the initramfs): copies itself into a tmpfs and switch_roots there, since
# containers pivot_root and the kernel refuses to pivot away from the initramfs (rootfs).
# Stage 2: mounts, a pure cgroup2 hierarchy, modules, skiffd, then /checks.sh; powers off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
if [ "$1" != stage2 ]; then
  /bin/busybox --install -s /bin
  mount -t tmpfs -o mode=0755 root /newroot
  for e in /*; do
    case $e in /newroot|/proc|/sys|/dev) ;; *) cp -a "$e" /newroot/ ;; esac
  done
  mkdir -p /newroot/proc /newroot/sys /newroot/dev
  exec switch_root /newroot /init stage2
  echo "SKIFF-V2 FAIL boot: switch_root failed"
  poweroff -f
fi

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /var/lib
mount -t tmpfs tmpfs /var/lib
# Pure v2: one unified hierarchy, nothing of v1 mounted.
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
ip link set lo up 2>/dev/null
for m in $(cat /lib/modules/load-order); do
  insmod "/lib/modules/$m" || echo "SKIFF-V2 FAIL boot: insmod $m"
done
echo "SKIFF-V2 INFO kernel $(uname -r), cgroup controllers: $(cat /sys/fs/cgroup/cgroup.controllers), nproc $(nproc), uptime $(cut -d' ' -f1 /proc/uptime)s"

sh /checks.sh
echo "SKIFF-V2 INFO checks took until uptime $(cut -d' ' -f1 /proc/uptime)s"
echo "SKIFF-V2 DONE"
sync
poweroff -f

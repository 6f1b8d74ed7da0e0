#!/bin/busybox sh
# /init of the nested test host ("L1"), written by nutshell-tests' ground runner.
#
# It mounts the host's root filesystem (9p, read-only) at /host with its own proc, sysfs, devtmpfs,
# cgroup2 and writable tmpfs scratch, mounts the run's shared scratch export (kernel parameter
# nutshell.scratch=) at the same absolute path it has on the host, then chroots into /host and
# runs $SCRATCH/ctl/cmd.sh there with stdout and stderr on two virtio-serial ports. The exit status
# goes to $SCRATCH/ctl/status. Then it writes the run's end marker on both output ports, reports
# "exit N" on the control port and waits for the runner's "ack" (it has read everything) before
# powering off: port data still queued would die with L1.
# Its own messages go to the kernel console (ttyS0), which the runner keeps in a log file.

/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s

say() { echo "l1-init: $*" > /dev/console; }
CTL_OPEN=
fail() {
    say "FAILED: $*"
    [ -n "$CTL_OPEN" ] && echo "setup-failed $*" >&5
    sync
    reboot -f
    sleep 1000
}

mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
uptime() { cut -d' ' -f1 /proc/uptime; }
say "init started at $(uptime) s"

SCRATCH=
for word in $(cat /proc/cmdline); do
    case "$word" in
        nutshell.scratch=*) SCRATCH=${word#nutshell.scratch=} ;;
    esac
done
# The end marker is in the initramfs only: the chrooted command cannot print it by accident.
MARK=$(cat /etc/nutshell-end)

# The virtio-serial ports appear asynchronously after the driver probes; find them by name.
port() {
    for dir in /sys/class/virtio-ports/*; do
        [ "$(cat "$dir/name" 2>/dev/null)" = "$1" ] && { echo "/dev/${dir##*/}"; return 0; }
    done
    return 1
}
CTL= OUT= ERR=
tries=0
while :; do
    CTL=$(port nutshell.ctl) && OUT=$(port nutshell.stdout) && ERR=$(port nutshell.stderr) && break
    tries=$((tries + 1))
    [ "$tries" -lt 1000 ] || fail "virtio-serial ports nutshell.{ctl,stdout,stderr} did not appear"
    usleep 10000
done
for dev in "$CTL" "$OUT" "$ERR"; do
    n=0
    while [ ! -c "$dev" ] && [ "$n" -lt 500 ]; do usleep 10000; n=$((n + 1)); done
done
# Each port is opened once: a second open of a busy port fails (EBUSY).
exec 5<>"$CTL" || fail "open $CTL"
CTL_OPEN=1
exec 3>"$OUT" 4>"$ERR" || fail "open $OUT and $ERR"
[ -n "$SCRATCH" ] || fail "no nutshell.scratch= on the kernel command line"
[ -n "$MARK" ] || fail "no end marker in /etc/nutshell-end"

H=/host
NINEP="trans=virtio,version=9p2000.L,msize=524288"
mount -t 9p -o "$NINEP,ro,cache=loose" hostroot "$H" || fail "mount 9p hostroot at $H"
mount -t proc proc "$H/proc" || fail "mount $H/proc"
mount -t sysfs sysfs "$H/sys" || fail "mount $H/sys"
mount -t cgroup2 cgroup2 "$H/sys/fs/cgroup" || fail "mount cgroup2 at $H/sys/fs/cgroup"
mount -t devtmpfs devtmpfs "$H/dev" || fail "mount $H/dev"
mkdir -p "$H/dev/pts" "$H/dev/shm"
# What udev would add: programs open /dev/stdout, /dev/fd/N and friends.
ln -sf /proc/self/fd "$H/dev/fd"
ln -sf /proc/self/fd/0 "$H/dev/stdin"
ln -sf /proc/self/fd/1 "$H/dev/stdout"
ln -sf /proc/self/fd/2 "$H/dev/stderr"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$H/dev/pts" 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs "$H/dev/shm" 2>/dev/null
# Host directories the command needs below the tmpfs mounts (a checkout under /tmp, say): hold
# them aside before the tmpfs shadows them, then put them back in place.
n=0
KEPT=
if [ -f "$H$SCRATCH/ctl/keep" ]; then
    while read -r keep; do
        [ -n "$keep" ] || continue
        mkdir -p "/keep/$n" && mount --bind "$H$keep" "/keep/$n" || fail "hold $keep aside"
        KEPT="$KEPT $n:$keep"
        n=$((n + 1))
    done < "$H$SCRATCH/ctl/keep"
fi
for dir in /tmp /var/tmp; do
    mount -t tmpfs -o mode=1777 tmpfs "$H$dir" || fail "mount tmpfs at $H$dir"
done
for dir in /run /var/lib; do
    mount -t tmpfs -o mode=0755 tmpfs "$H$dir" || fail "mount tmpfs at $H$dir"
done
for entry in $KEPT; do
    mkdir -p "$H${entry#*:}" && mount --bind "/keep/${entry%%:*}" "$H${entry#*:}" \
        || fail "keep ${entry#*:} visible"
done
mkdir -p "$H$SCRATCH" || fail "create $H$SCRATCH"
mount -t 9p -o "$NINEP" scratch "$H$SCRATCH" || fail "mount 9p scratch at $H$SCRATCH"
[ -f "$H$SCRATCH/ctl/cmd.sh" ] || fail "$SCRATCH/ctl/cmd.sh is missing"

# Best effort: what a host normally has, for later containerd and network tests.
for controller in cpuset cpu io memory pids; do
    echo "+$controller" > "$H/sys/fs/cgroup/cgroup.subtree_control" 2>/dev/null
done
ip link set lo up 2>/dev/null
hostname nutshell-l1

say "running the command at $(uptime) s"
echo ready >&5
chroot "$H" /bin/sh "$SCRATCH/ctl/cmd.sh" < /dev/null >&3 2>&4 3>&- 4>&- 5>&-
rc=$?
echo "$rc" > "$H$SCRATCH/ctl/status.tmp" && mv "$H$SCRATCH/ctl/status.tmp" "$H$SCRATCH/ctl/status" \
    || say "cannot write $SCRATCH/ctl/status"
printf '%s' "$MARK" >&3
printf '%s' "$MARK" >&4
echo "exit $rc" >&5
read -t 60 ack <&5 || say "no ack from the runner within 60 s; the output may be cut short"
sync
reboot -f
sleep 1000

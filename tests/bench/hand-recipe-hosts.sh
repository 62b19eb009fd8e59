#!/bin/bash
# Baseline for `apiary-bench lab`: the hand recipe's host steps
# (../shared/lab/reference-recipe.sh: network, engines, busybox image
# import + save + load) for N hosts, timed per phase, then cleaned up.
# No checks, no certificates, no agents: what apiary's lab does by hand.
# Prints "phase seconds" lines. Uses only the lab's ranges, ends only the
# dockerd processes it started (by PID).
set -euo pipefail
N=${1:-4}
W=$(mktemp -d /tmp/hand-recipe.XXXXXX)
DK() { docker -H unix:///run/hr$1/docker.sock "${@:2}"; }
now() { date +%s%N; }
phase() { local ms=$(( ($(now) - $2) / 1000000 )); printf '%s %d.%03d\n' "$1" $((ms / 1000)) $((ms % 1000)); }
cleanup() {
  for n in $(seq 1 "$N"); do [ -f "$W/h$n.pid" ] && kill "$(cat "$W/h$n.pid")" 2>/dev/null || true; done
  for n in $(seq 1 "$N"); do
    [ -f "$W/h$n.pid" ] || continue
    for _ in $(seq 1 100); do kill -0 "$(cat "$W/h$n.pid")" 2>/dev/null || break; sleep 0.1; done
  done
  for n in $(seq 1 "$N"); do ip netns del hr$n 2>/dev/null || true; done
  ip link del hrpriv 2>/dev/null || true; ip link del hrpub 2>/dev/null || true
  for n in $(seq 1 "$N"); do rm -rf /run/hr$n; done
  rm -rf "$W"
}
trap cleanup EXIT

t=$(now)
ip link add hrpriv type bridge; ip addr add 10.231.0.1/24 dev hrpriv; ip link set hrpriv up
ip link add hrpub type bridge; ip addr add 198.18.0.1/24 dev hrpub; ip link set hrpub up
for n in $(seq 1 "$N"); do
  ip netns add hr$n
  ip link add hr$n-priv type veth peer name eth0 netns hr$n
  ip link add hr$n-pub type veth peer name eth1 netns hr$n
  ip link set hr$n-priv master hrpriv up; ip link set hr$n-pub master hrpub up
  ip -n hr$n addr add 10.231.0.$((10 + n))/24 dev eth0; ip -n hr$n link set eth0 up
  ip -n hr$n addr add 198.18.0.$((10 + n))/24 dev eth1; ip -n hr$n link set eth1 up
  ip -n hr$n link set lo up
done
phase network "$t"

cat > "$W/dockerd-in-ns.sh" <<EOS
#!/bin/sh
n=\$1; hostname h\$n
mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
for c in cpu cpuacct cpuset memory devices freezer blkio pids none,name=systemd; do
  d=\${c#none,name=}; mkdir -p /sys/fs/cgroup/\$d; mount -t cgroup -o \$c cgroup /sys/fs/cgroup/\$d
done
export DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1
exec dockerd --data-root $W/data/h\$n --exec-root /run/hr\$n/exec --pidfile /run/hr\$n/docker.pid -H unix:///run/hr\$n/docker.sock
EOS
chmod +x "$W/dockerd-in-ns.sh"
t=$(now)
for n in $(seq 1 "$N"); do
  mkdir -p /run/hr$n
  ip netns exec hr$n unshare --uts "$W/dockerd-in-ns.sh" $n >"$W/h$n.log" 2>&1 &
  echo $! > "$W/h$n.pid"
done
for n in $(seq 1 "$N"); do until DK $n version >/dev/null 2>&1; do sleep 0.1; done; done
phase engines "$t"

t=$(now)
B=$W/bb; mkdir -p $B/bin $B/sbin $B/usr/bin $B/usr/sbin $B/etc $B/tmp $B/proc $B/sys $B/dev
cp /bin/busybox $B/bin/busybox
for a in $($B/bin/busybox --list-full); do [ "$a" = bin/busybox ] || ln -sf /bin/busybox $B/$a; done
echo 'root:x:0:0:root:/root:/bin/sh' > $B/etc/passwd; echo 'root:x:0:' > $B/etc/group
tar -C $B -c . | DK 1 import -c 'CMD ["/bin/sh"]' - lab/busybox:1 >/dev/null
DK 1 save lab/busybox:1 -o "$W/busybox.tar"
for n in $(seq 2 "$N"); do DK $n load -i "$W/busybox.tar" >/dev/null; done
phase images "$t"

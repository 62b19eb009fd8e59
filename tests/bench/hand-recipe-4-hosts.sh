# Sourced by the database hand recipes (hand-recipe-etcd.sh, hand-recipe-rethinkdb.sh):
# the reference recipe's 4 hosts (../shared/lab/reference-recipe.sh): two
# bridges, 4 network namespaces, a Docker engine in each; torn down on exit.
# Expects t() (phase timer) from the sourcing script.
W=/tmp/hand/w; mkdir -p $W/logs
DK() { docker -H unix:///run/hlab$1/docker.sock "${@:2}"; }
cleanup() {
  set +e
  for n in 1 2 3 4; do [ -f $W/h$n.pid ] && kill $(cat $W/h$n.pid) 2>/dev/null; done
  for n in 1 2 3 4; do [ -f $W/h$n.pid ] && while kill -0 $(cat $W/h$n.pid) 2>/dev/null; do sleep 0.5; done; done
  for n in 1 2 3 4; do ip netns del h$n 2>/dev/null; done
  ip link del labpriv 2>/dev/null; ip link del labpub 2>/dev/null
  rm -rf /var/lib/hlab /run/hlab1 /run/hlab2 /run/hlab3 /run/hlab4
}
trap cleanup EXIT
ip link add labpriv type bridge; ip addr add 10.231.0.1/24 dev labpriv; ip link set labpriv up
ip link add labpub  type bridge; ip addr add 198.18.0.1/24 dev labpub;  ip link set labpub up
for n in 1 2 3 4; do
  ip netns add h$n
  ip link add h$n-priv type veth peer name eth0 netns h$n
  ip link add h$n-pub  type veth peer name eth1 netns h$n
  ip link set h$n-priv master labpriv up; ip link set h$n-pub master labpub up
  ip -n h$n addr add 10.231.0.1$n/24 dev eth0; ip -n h$n link set eth0 up
  ip -n h$n addr add 198.18.0.1$n/24 dev eth1; ip -n h$n link set eth1 up
  ip -n h$n link set lo up
done
cat > $W/dockerd-in-ns.sh <<'EOS'
#!/bin/sh
n=$1; hostname h$n
mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
for c in cpu cpuacct cpuset memory devices freezer blkio pids none,name=systemd; do
  d=${c#none,name=}; mkdir -p /sys/fs/cgroup/$d; mount -t cgroup -o $c cgroup /sys/fs/cgroup/$d
done
export DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1
exec dockerd --data-root /var/lib/hlab/h$n --exec-root /run/hlab$n/exec \
  --pidfile /run/hlab$n/docker.pid -H unix:///run/hlab$n/docker.sock
EOS
chmod +x $W/dockerd-in-ns.sh
for n in 1 2 3 4; do
  mkdir -p /run/hlab$n
  ip netns exec h$n unshare --uts $W/dockerd-in-ns.sh $n >$W/logs/h$n.log 2>&1 &
  echo $! > $W/h$n.pid
done
for n in 1 2 3 4; do until DK $n version >/dev/null 2>&1; do sleep 0.5; done; done
t "engines"

#!/bin/bash
# The reference recipe (../shared/lab/reference-recipe.sh) for 4 hosts, with the
# recipe's own database: RethinkDB from the image archive ($1, a docker save of
# rethinkdb:2.4), server 1 binding all and the others joining it, as the
# recipe's services do; no checks, no certificates, no password. "Healthy" is
# what the recipe's user looks for on the admin UI: server 1 lists 4 connected
# servers (asked with RethinkDB's Python driver inside its container's network
# namespace). Prints the time of each phase since start. Run under flock of the
# lab lock.
set -e; ARCHIVE=$1; [ -f "$ARCHIVE" ] || { echo "usage: $0 RETHINKDB_ARCHIVE" >&2; exit 64; }
mkdir -p /tmp/hand; exec 2>/tmp/hand/trace.log; set -x
T0=$(date +%s.%N); t() { echo "HAND $(echo "$(date +%s.%N) - $T0" | bc) s: $*"; }
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
P=""; for n in 1 2 3 4; do DK $n load -i "$ARCHIVE" >/dev/null & P="$P $!"; done; wait $P
t "image rethinkdb:2.4 in 4 engines"
DK 1 swarm init --advertise-addr 10.231.0.11 --default-addr-pool 10.232.0.0/16 >/dev/null
TOK=$(DK 1 swarm join-token -q manager); WTOK=$(DK 1 swarm join-token -q worker)
for n in 2 3; do DK $n swarm join --advertise-addr 10.231.0.1$n --token $TOK 10.231.0.11:2377 >/dev/null; done
DK 4 swarm join --advertise-addr 10.231.0.14 --token $WTOK 10.231.0.11:2377 >/dev/null
t "swarm (3 managers, 1 worker)"
DK 1 network create -d overlay --attachable labnet >/dev/null
t "overlay"
for n in 1 2 3 4; do
  JOIN=""; [ $n -gt 1 ] && JOIN="--join rethinkdb-1:29015"
  DK 1 service create --detach --no-resolve-image --name rethinkdb-$n --hostname rethinkdb-$n \
    --endpoint-mode dnsrr --network labnet --constraint node.hostname==h$n --restart-delay 10s \
    --limit-memory 450m --mount type=volume,source=rethinkdb-$n-data,target=/data \
    rethinkdb:2.4 rethinkdb --bind all --server-name rethinkdb_$n --canonical-address rethinkdb-$n \
    --directory /data/rethinkdb_data $JOIN >/dev/null
done
t "4 rethinkdb services created"
until c=$(DK 1 ps -q --filter label=com.docker.swarm.service.name=rethinkdb-1) && [ -n "$c" ] && \
  pid=$(DK 1 inspect -f '{{.State.Pid}}' $c) && \
  nsenter -t $pid -n python3 -c 'from rethinkdb import r; import sys; c = r.connect("127.0.0.1", 28015, timeout=2); sys.exit(r.db("rethinkdb").table("server_status").count().run(c) != 4)' 2>/dev/null; do sleep 0.25; done
t "rethinkdb 4/4 connected"

#!/bin/bash
# The reference recipe (../shared/lab/reference-recipe.sh) for 4 hosts, extended
# with the etcd services of baselines.md Part 2; no checks, no certificates.
# Prints the time of each phase since start. Run under flock of the lab lock.
set -e; mkdir -p /tmp/hand; exec 2>/tmp/hand/trace.log; set -x
T0=$(date +%s.%N); t() { echo "HAND $(echo "$(date +%s.%N) - $T0" | bc) s: $*"; }
. "$(dirname "$0")/hand-recipe-4-hosts.sh"
B=$W/bb; rm -rf $B; mkdir -p $B/bin $B/sbin $B/usr/bin $B/usr/sbin $B/etc $B/tmp $B/var/www $B/var/lib/etcd $B/proc $B/sys $B/dev $B/lib/x86_64-linux-gnu $B/lib64
cp /bin/busybox $B/bin/busybox
for a in $($B/bin/busybox --list-full); do [ "$a" = bin/busybox ] || ln -sf /bin/busybox $B/$a; done
echo 'root:x:0:0:root:/root:/bin/sh' > $B/etc/passwd; echo 'root:x:0:' > $B/etc/group
cp /usr/bin/etcd /usr/bin/etcdctl $B/usr/bin/
cp /lib/x86_64-linux-gnu/libc.so.6 $B/lib/x86_64-linux-gnu/; cp /lib64/ld-linux-x86-64.so.2 $B/lib64/
tar -C $B -c . | DK 1 import -c 'CMD ["/usr/bin/etcd"]' - lab/etcd:1 >/dev/null
DK 1 save lab/etcd:1 -o $W/etcd.tar
P=""; for n in 2 3 4; do DK $n load -i $W/etcd.tar >/dev/null & P="$P $!"; done; wait $P
t "image lab/etcd:1 in 4 engines"
DK 1 swarm init --advertise-addr 10.231.0.11 --default-addr-pool 10.232.0.0/16 >/dev/null
TOK=$(DK 1 swarm join-token -q manager); WTOK=$(DK 1 swarm join-token -q worker)
for n in 2 3; do DK $n swarm join --advertise-addr 10.231.0.1$n --token $TOK 10.231.0.11:2377 >/dev/null; done
DK 4 swarm join --advertise-addr 10.231.0.14 --token $WTOK 10.231.0.11:2377 >/dev/null
t "swarm (3 managers, 1 worker)"
DK 1 network create -d overlay --attachable labnet >/dev/null
t "overlay"
IC=etcd-1=http://etcd-1:2380,etcd-2=http://etcd-2:2380,etcd-3=http://etcd-3:2380,etcd-4=http://etcd-4:2380
for n in 1 2 3 4; do
  DK 1 service create --detach --no-resolve-image --name etcd-$n --hostname etcd-$n \
    --endpoint-mode dnsrr --network labnet --constraint node.hostname==h$n --restart-delay 20s \
    --limit-memory 450m --mount type=volume,source=etcd-$n-data,target=/var/lib/etcd \
    lab/etcd:1 /usr/bin/etcd --name etcd-$n --data-dir /var/lib/etcd \
    --listen-peer-urls http://0.0.0.0:2380 --listen-client-urls http://0.0.0.0:2379 \
    --advertise-client-urls http://etcd-$n:2379 --initial-advertise-peer-urls http://etcd-$n:2380 \
    --initial-cluster $IC --initial-cluster-token lab-etcd --initial-cluster-state new >/dev/null
done
t "4 etcd services created"
until c=$(DK 1 ps -q --filter label=com.docker.swarm.service.name=etcd-1) && [ -n "$c" ] && \
  DK 1 exec $c etcdctl --endpoints=http://etcd-1:2379,http://etcd-2:2379,http://etcd-3:2379,http://etcd-4:2379 endpoint health >/dev/null 2>&1; do sleep 0.5; done
t "etcd 4/4 healthy"

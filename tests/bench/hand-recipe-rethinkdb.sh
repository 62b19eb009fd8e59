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
. "$(dirname "$0")/hand-recipe-4-hosts.sh"
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

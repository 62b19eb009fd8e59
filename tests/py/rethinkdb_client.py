#!/usr/bin/env python3
"""The lab tests' RethinkDB client, with RethinkDB's official Python driver
(the `rethinkdb` package on PyPI, installed by scripts/setup-host when the
RethinkDB image archive is there).

    rethinkdb_client.py HOST PORT PASSWORD COMMAND [ARGS]

Commands:
    connect              print "ok SERVER" (the server answering)
    setup TABLE SHARDS REPLICAS DOCS
                         create test.TABLE and insert DOCS documents, wait ready
    count TABLE          print the document count (majority read)
    drop TABLE           drop test.TABLE
    replicas TABLE       print the servers holding test.TABLE's replicas
    read-until STOPFILE TABLE
                         majority-read the count every 200 ms until STOPFILE
                         exists, retrying a failed read every 100 ms as an
                         application would; print "reads N failures F
                         longest-gap-ms G last-error E" (G: the longest time
                         from a failed read to the next good one)
Exit 1 with the driver's error on stderr when a command fails.
"""
import os
import sys
import time

from rethinkdb import r


def connect(host, port, password):
    return r.connect(host, int(port), user="admin", password=password, timeout=10)


def main():
    host, port, password, command, *args = sys.argv[1:]
    if command == "read-until":
        stop, table = args
        reads = failures = 0
        longest = 0.0
        failing_since = None
        last = ""
        conn = None
        while not os.path.exists(stop) or failing_since is not None:
            try:
                if conn is None:
                    conn = connect(host, port, password)
                n = r.db("test").table(table, read_mode="majority").count().run(conn)
                if n < 1:
                    raise RuntimeError(f"count {n}")
                reads += 1
                if failing_since is not None:
                    longest = max(longest, time.monotonic() - failing_since)
                    failing_since = None
                time.sleep(0.2)
            except Exception as e:  # noqa: BLE001 - every failure counts
                failures += 1
                last = str(e).splitlines()[0] if str(e) else type(e).__name__
                if failing_since is None:
                    failing_since = time.monotonic()
                elif time.monotonic() - failing_since > 60:
                    break
                conn = None
                time.sleep(0.1)
        print(f"reads {reads} failures {failures} longest-gap-ms {int(longest * 1000)} last-error {last}")
        return
    conn = connect(host, port, password)
    if command == "connect":
        print("ok", conn.server()["name"])
    elif command == "setup":
        table, shards, replicas, docs = args
        r.db("test").table_create(table, shards=int(shards), replicas=int(replicas)).run(conn)
        r.db("test").table(table).wait(wait_for="all_replicas_ready", timeout=120).run(conn)
        batch = [{"n": i} for i in range(int(docs))]
        res = r.db("test").table(table).insert(batch).run(conn)
        assert res["inserted"] == int(docs), res
        print("ok")
    elif command == "count":
        (table,) = args
        print(r.db("test").table(table, read_mode="majority").count().run(conn))
    elif command == "replicas":
        (table,) = args
        config = r.db("test").table(table).config().run(conn)
        print(" ".join(sorted({s for shard in config["shards"] for s in shard["replicas"]})))
    elif command == "drop":
        (table,) = args
        r.db("test").table_drop(table).run(conn)
        print("ok")
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - the test reads the reason
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)

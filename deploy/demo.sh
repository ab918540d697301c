#!/bin/bash
# The demo: a lab cluster (1 manager, 3 workers), the example stack deployed
# and scaled, and DNS answering `web` from inside a container, rotating.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
P="$root/.venv/bin/pyswarm"
on_manager() { "$P" lab exec manager1 -- "$P" "$@"; }

wait_replicas() {  # SERVICE WANT: wait until running == WANT (60 s)
    local svc=$1 want=$2 deadline=$((SECONDS + 60)) got=""
    while (( SECONDS < deadline )); do
        got=$(on_manager service ls --format json | "$root/.venv/bin/python" -c \
            "import json,sys; print(next((s['replicas'] for s in json.load(sys.stdin) if s['name']=='$svc'), '-'))")
        [[ "$got" == "$want/$want" ]] && return 0
        sleep 0.2
    done
    echo "demo: $svc has $got replicas running after 60 s, wanted $want" >&2
    on_manager service ps "$svc" >&2
    return 1
}

echo "== bringing up the lab: 1 manager, 3 workers"
"$P" lab up --managers 1 --workers 3
"$P" lab status
echo; echo "== the cluster"
on_manager node ls

echo; echo "== pyswarm stack deploy -c deploy/examples/demo.yml demo"
start=$EPOCHREALTIME
on_manager stack deploy -c "$root/deploy/examples/demo.yml" demo
wait_replicas demo_web 3
echo "3 replicas running $("$root/.venv/bin/python" -c "print(f'{$EPOCHREALTIME - $start:.2f}')") s after the deploy"

echo; echo "== pyswarm service scale demo_web=5"
on_manager service scale demo_web=5
wait_replicas demo_web 5
on_manager service ls
echo; on_manager service ps demo_web

echo; echo "== DNS, from a container on worker1: nslookup web (three times: the order rotates)"
cid=$("$P" lab exec worker1 -- docker ps -q --filter label=com.docker.stack.namespace=demo | head -n 1)
for _ in 1 2 3; do
    "$P" lab exec worker1 -- docker exec "$cid" nslookup web | grep -A20 '^Name' | grep Address || true
    echo "--"
done
echo; echo "== HTTP by name from worker1's container: printf 'GET /' | nc web 80"
echo "(the C library prefers the replica on its own node, as with Docker Swarm's dnsrr)"
"$P" lab exec worker1 -- docker exec "$cid" sh -c 'printf "GET / HTTP/1.0\r\n\r\n" | nc -w 2 web 80 | tail -n 1'
echo; echo "== every replica, across the hosts, by the addresses DNS gave for web"
"$P" lab exec worker1 -- docker exec "$cid" sh -c \
    'for ip in $(nslookup web | sed -n "/^Name/,\$ s/^Address: //p"); do printf "%-12s answers: " $ip; printf "GET / HTTP/1.0\r\n\r\n" | nc -w 2 $ip 80 | tail -n 1; done'
echo
echo "The lab stays up: try '$P lab exec manager1 -- $P stack ps demo'."
echo "Remove it with '$P lab down'."

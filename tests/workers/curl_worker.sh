#!/usr/bin/env bash
# A flowmetal task worker in bash and curl only (the protocol: docs/integrations.md).
# usage: curl_worker.sh URL TOKEN QUEUE NAME [MAX_TASKS]   (MAX_TASKS 0: forever)
# Each task's result is {"worker", "attempt", "input": <the payload>}.
# WORK_SECONDS: how long each task takes, heartbeating every second meanwhile.
# MARKS: a file to append "<task_id> <attempt> <name>" to when work starts.
set -u
url=$1 token=$2 queue=$3 name=$4 max=${5:-0} n=0

post() {  # post PATH JSON -> the body, a newline, the HTTP status; fails if no answer
  curl -sS --max-time 30 -w '\n%{http_code}' -H "Authorization: token $token" \
    -H 'Content-Type: application/json' -d "$2" "$url$1" 2>/dev/null
}
field() { sed -n "s/.*\"$1\": \"\{0,1\}\([^\",}]*\).*/\1/p" <<<"$2"; }

while [ "$max" -eq 0 ] || [ "$n" -lt "$max" ]; do
  out=$(post "/queues/$queue/claim" "{\"worker\": \"$name\", \"wait\": 5}") || { sleep 0.5; continue; }
  status=${out##*$'\n'} body=${out%$'\n'*}
  if [ "$status" != 200 ]; then [ "$status" = 204 ] || sleep 0.5; continue; fi
  id=$(field task_id "$body") lease=$(field lease "$body") attempt=$(field attempt "$body")
  payload=$(sed 's/.*"payload": \(.*\)}$/\1/' <<<"$body")  # the server puts payload last
  [ -n "${MARKS:-}" ] && echo "$id $attempt $name" >>"$MARKS"
  end=$((SECONDS + ${WORK_SECONDS:-0}))
  while [ "$SECONDS" -lt "$end" ]; do
    sleep 1
    post "/tasks/$id/heartbeat" "{\"lease\": \"$lease\"}" >/dev/null
  done
  result="{\"worker\": \"$name\", \"attempt\": $attempt, \"input\": $payload}"
  until out=$(post "/tasks/$id/complete" "{\"lease\": \"$lease\", \"result\": $result}"); do
    sleep 0.5  # the kernel is away (restarting): its address stays the same
  done
  n=$((n + 1))
done

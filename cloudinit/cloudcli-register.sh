#!/bin/bash
# CloudCLI in platform mode (VITE_IS_PLATFORM=true) skips its own login and serves every
# request as its first user, so one user must exist. This registers a placeholder user
# once, with a random password nobody needs: Caddy's basic auth is the real login.
# Run as ExecStartPost of agentspaces-cloudcli.service (SERVER_PORT comes from the unit).
set -euo pipefail

api="http://127.0.0.1:${SERVER_PORT:?set by agentspaces-cloudcli.service}/api/auth"

up=false
for _ in $(seq 1 60); do
  if curl -sS --max-time 2 -o /dev/null "$api/status" 2>/dev/null; then
    up=true
    break
  fi
  sleep 1
done
if [[ $up != true ]]; then
  echo "cloudcli-register: CloudCLI did not answer on $api within 60s" >&2
  exit 1
fi

password=$(head -c 30 /dev/urandom | base64 | tr -d '/+=\n')
# The body goes through stdin so the password never shows up in a process listing.
code=$(printf '{"username":"workspace","password":"%s"}' "$password" |
  curl -sS --max-time 10 -o /dev/null -w '%{http_code}' \
    -H 'Content-Type: application/json' --data-binary @- "$api/register") || code=000
case $code in
  2??) echo "cloudcli-register: placeholder user created" ;;
  4??) echo "cloudcli-register: a user exists already (HTTP $code)" ;;
  *)
    echo "cloudcli-register: registration failed (HTTP $code)" >&2
    exit 1
    ;;
esac

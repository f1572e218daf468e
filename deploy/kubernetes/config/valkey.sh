#!/bin/sh
# Starts one Valkey server of the sllm-valkey StatefulSet. The primary is whichever server the
# Sentinels name; with none known yet (a new cluster), sllm-valkey-0. Every other server starts
# as its replica, so a primary that failed over and came back rejoins as a replica.
set -eu
me="$POD_NAME.sllm-valkey"
password=$(cat /run/sllm/redis-password)
primary=""
for i in 0 1 2; do
  primary=$(valkey-cli --no-auth-warning -h "sllm-valkey-sentinel-$i.sllm-valkey-sentinel" \
    -p 26379 sentinel get-master-addr-by-name sllm 2>/dev/null | head -n 1) || primary=""
  [ -n "$primary" ] && break
done
[ -n "$primary" ] || primary="sllm-valkey-0.sllm-valkey"

umask 077
{
  # The ACL users of `sllm credentials` (the admin is `default`): the configuration file holds
  # the passwords, never the command line. The Sentinels log in as the admin and find each
  # other through its channel __sentinel__:hello, which the admin is given (Valkey refuses a
  # second `user default` line, so the line itself is amended).
  sed '/^user default /s/ resetchannels / resetchannels \&__sentinel__:* /' \
    /run/sllm/redis-acl.conf
  # The state of record: append-only file, fsync every second (as in compose.yaml).
  echo "dir /data"
  echo "appendonly yes"
  echo "appendfsync everysec"
  echo 'save ""'
  echo "replica-announce-ip $me"
  echo "replica-announce-port 6379"
  echo "masteruser default"
  echo "masterauth $password"
  if [ "$primary" != "$me" ] && [ "$primary" != "${POD_IP:-}" ]; then
    echo "replicaof $primary 6379"
  fi
} >/etc/valkey/valkey.conf
exec valkey-server /etc/valkey/valkey.conf

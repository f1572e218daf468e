#!/bin/sh
# Starts one Sentinel of sllm-valkey-sentinel. It watches the primary the other Sentinels name
# (a restarted Sentinel must not go back to a primary that failed over), else sllm-valkey-0.
set -eu
me="$POD_NAME.sllm-valkey-sentinel"
password=$(cat /run/sllm/redis-password)
primary=""
for i in 0 1 2; do
  peer="sllm-valkey-sentinel-$i.sllm-valkey-sentinel"
  [ "$peer" = "$me" ] && continue
  primary=$(valkey-cli -h "$peer" -p 26379 sentinel get-master-addr-by-name sllm \
    2>/dev/null | head -n 1) || primary=""
  [ -n "$primary" ] && break
done
[ -n "$primary" ] || primary="sllm-valkey-0.sllm-valkey"
# Sentinel refuses a primary whose name does not resolve yet: wait for its pod (at most ~2 min).
tries=0
until valkey-cli --no-auth-warning -a "$password" -h "$primary" -p 6379 ping 2>/dev/null \
  | grep -q PONG || [ "$tries" -ge 60 ]; do
  tries=$((tries + 1))
  sleep 2
done

umask 077
# Sentinel rewrites its configuration (the known replicas and peers): it lives in an emptyDir.
cat >/etc/valkey/sentinel.conf <<CONF
port 26379
dir /tmp
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $me
sentinel announce-port 26379
sentinel monitor sllm $primary 6379 2
sentinel auth-user sllm default
sentinel auth-pass sllm $password
sentinel down-after-milliseconds sllm 5000
sentinel failover-timeout sllm 60000
sentinel parallel-syncs sllm 1
CONF
exec valkey-server /etc/valkey/sentinel.conf --sentinel

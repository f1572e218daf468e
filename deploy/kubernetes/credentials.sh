#!/bin/sh
# Writes the credentials the kustomization's secretGenerator reads into secrets/ (or DIR):
# `sllm credentials` makes one NATS user and one Valkey ACL user per role, then each role's
# URLs are rewritten for the in-cluster servers: every NATS server of the StatefulSet, and
# Valkey through its Sentinels. A second run keeps the passwords already there.
#
#   deploy/kubernetes/credentials.sh [DIR]     (needs `sllm` on PATH: pip install ., or the image)
#
# Under another namespace or other names, set SLLM_K8S_NATS / SLLM_K8S_SENTINELS first.
set -eu

dir=${1:-$(dirname "$0")/secrets}
nats=${SLLM_K8S_NATS:-sllm-nats-0.sllm-nats:4222 sllm-nats-1.sllm-nats:4222 sllm-nats-2.sllm-nats:4222}
sentinels=${SLLM_K8S_SENTINELS:-sllm-valkey-sentinel-0.sllm-valkey-sentinel:26379,sllm-valkey-sentinel-1.sllm-valkey-sentinel:26379,sllm-valkey-sentinel-2.sllm-valkey-sentinel:26379}
master=${SLLM_K8S_SENTINEL_MASTER:-sllm}

umask 077
sllm credentials "$dir" --nats sllm-nats:4222 --redis sllm-valkey:6379 >/dev/null

# "scheme://user:password@rest" -> "user:password" (either form: rerunning is harmless).
userinfo() { sed -E 's#^[a-z+]+://([^@]*)@.*#\1#' "$1"; }

for role in router scheduler storage worker admin; do
  auth=$(userinfo "$dir/$role.nats-url")
  urls=""
  for server in $nats; do
    urls="${urls:+$urls,}nats://$auth@$server"
  done
  printf '%s\n' "$urls" >"$dir/$role.nats-url"
  auth=$(userinfo "$dir/$role.redis-url")
  printf 'redis+sentinel://%s@%s/%s/0\n' "$auth" "$sentinels" "$master" >"$dir/$role.redis-url"
done
printf 'SLLM_NATS_URL=%s\nSLLM_REDIS_URL=%s\n' \
  "$(cat "$dir/admin.nats-url")" "$(cat "$dir/admin.redis-url")" >"$dir/credentials.env"
echo "credentials in $dir (admin: $dir/credentials.env)"

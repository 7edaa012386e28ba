#!/bin/sh
# Installs sluice's systemd units and an example configuration in /etc/sluice.
#
#   make install                       # the programs, into /usr/local/bin
#   deploy/systemd/install.sh [GPUS]   # units, and worker-N.env for GPUs 0..GPUS-1
#
# GPUS defaults to the GPUs nvidia-smi lists. Files already in /etc/sluice are kept.
# WORKER_HOST=gpu-1.example.internal makes each worker-N.env register the worker as
# http://WORKER_HOST:PORT (workers on their own machines; deploy/README.md). DESTDIR installs
# into another root (the tests do), and then nothing is started or reloaded.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=${DESTDIR:-}
gpus=${1:-$(nvidia-smi -L 2>/dev/null | wc -l)}
case $gpus in
  ''|*[!0-9]*) echo "install.sh: GPUS must be a number, not '$gpus'" >&2; exit 2 ;;
esac

install -d -m 755 "$root/etc/systemd/system" "$root/usr/lib/sysusers.d"
install -d -m 750 "$root/etc/sluice"
for unit in sluice.target sluice-controller.service sluice-gateway.service sluice-worker@.service; do
  install -m 644 "$here/$unit" "$root/etc/systemd/system/$unit"
done
install -m 644 "$here/sluice.sysusers.conf" "$root/usr/lib/sysusers.d/sluice.conf"

# Settings the administrator has edited stay as they are.
keep_or_install() {
  if [ ! -e "$root/etc/sluice/$2" ]; then install -m 600 "$1" "$root/etc/sluice/$2"; fi
}
for f in sluice.env controller.env gateway.env worker.env; do keep_or_install "$here/$f" "$f"; done
i=0
while [ "$i" -lt "$gpus" ]; do
  port=$((21002 + i))
  tmp=$(mktemp)
  {
    echo "# sluice-worker@$i: GPU $i (deploy/systemd/worker-0.env explains the settings)"
    echo "SLUICE_WORKER_PORT=$port"
    if [ -n "${WORKER_HOST:-}" ]; then
      echo "SLUICE_WORKER_INSTANCE_ARGS=--worker-address http://$WORKER_HOST:$port"
    fi
  } >"$tmp"
  keep_or_install "$tmp" "worker-$i.env"
  rm -f "$tmp"
  i=$((i + 1))
done
# A key file that holds no key refuses every client (the gateway fails closed), so a new one
# starts with one random key, which the administrator hands out or replaces.
new_key=
if [ ! -e "$root/etc/sluice/api-keys" ]; then
  new_key="sk-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
  tmp=$(mktemp)
  printf '# API keys, one a line (sluice-gateway --api-key-file); lines starting with # are skipped.\n%s\n' \
    "$new_key" >"$tmp"
  install -m 640 "$tmp" "$root/etc/sluice/api-keys"
  rm -f "$tmp"
fi

if [ -z "$root" ]; then
  systemd-sysusers /usr/lib/sysusers.d/sluice.conf
  chgrp sluice /etc/sluice/api-keys
  systemctl daemon-reload
  echo "installed. Edit /etc/sluice/*.env, then:"
  if [ -n "$new_key" ]; then echo "  (clients' API key, in /etc/sluice/api-keys: $new_key)"; fi
  echo "  systemctl enable --now sluice-controller sluice-gateway$(i=0; while [ "$i" -lt "$gpus" ]; do printf ' sluice-worker@%d' "$i"; i=$((i + 1)); done)"
fi

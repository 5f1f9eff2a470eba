#!/usr/bin/env bash
# Certificates for the compose demo's TLS profile (docker-compose.tls.yml):
# a demo CA, and a certificate for each of node1..node3 and the demo client,
# each valid for its compose name, localhost and 127.0.0.1, for server and
# client use (mutual TLS). Written to docker/tls/ (or the directory given).
#   docker/make-tls-certs.sh
#   docker-compose -f docker-compose.yml -f docker-compose.tls.yml up --build
# These are demo certificates, valid 30 days: make your own for a real cluster.
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  echo "usage: $0 [DIR]   (default: docker/tls next to this script)"
  exit 0
fi
command -v openssl >/dev/null || { echo "$0: needs the openssl command" >&2; exit 2; }
dir=${1:-"$(cd "$(dirname "$0")" && pwd)/tls"}
mkdir -p "$dir"
cd "$dir"
quiet() { "$@" >/dev/null 2>&1 || { echo "$0: failed: $*" >&2; "$@"; exit 1; }; }
quiet openssl req -x509 -newkey rsa:2048 -nodes -days 30 -keyout ca.key -out ca.pem \
  -subj "/CN=gobucket demo CA"
for name in node1 node2 node3 demo; do
  quiet openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" \
    -subj "/CN=$name"
  printf 'subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' \
    "$name" > "$name.ext"
  quiet openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
    -out "$name.pem" -extfile "$name.ext"
  rm -f "$name.csr" "$name.ext"
done
rm -f ca.srl
chmod 644 ./*.pem ./*.key  # read by the containers' user
echo "certificates for node1 node2 node3 demo, signed by $dir/ca.pem"

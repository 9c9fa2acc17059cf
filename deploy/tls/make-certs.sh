#!/usr/bin/env bash
# Make a private certificate authority and certificates for a Dask cluster over TLS.
#
#   deploy/tls/make-certs.sh DIR [HOSTNAME ...]
#
# writes into DIR (created, mode 700):
#   ca.pem ca.key            the cluster's own CA (keep ca.key offline after signing)
#   scheduler.pem .key       scheduler certificate; SAN: the HOSTNAMEs + localhost + 127.0.0.1
#   worker.pem .key          worker certificate
#   client.pem .key          client certificate for `cnnpipe run` / `cnnpipe nightly`
# Every party trusts only ca.pem and must show a certificate signed by it (mutual TLS), so
# a worker without a certificate from this CA is refused by the scheduler.
# Certificates are valid for DAYS days (environment, default 825). Needs openssl >= 1.1.1.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 DIR [HOSTNAME ...]" >&2
  exit 2
fi
dir=$1; shift
days=${DAYS:-825}
mkdir -p "$dir"; chmod 700 "$dir"
cd "$dir"
san="DNS:localhost,IP:127.0.0.1"
for h in "$@"; do
  if [[ $h =~ ^[0-9.]+$ ]]; then san="$san,IP:$h"; else san="$san,DNS:$h"; fi
done
openssl req -x509 -newkey rsa:3072 -nodes -days "$days" -subj "/CN=cnnpipe-dask-ca" \
  -keyout ca.key -out ca.pem -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
for who in scheduler worker client; do
  openssl req -newkey rsa:3072 -nodes -subj "/CN=cnnpipe-$who" \
    -keyout "$who.key" -out "$who.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' \
    "$san" > "$who.ext"
  openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
    -days "$days" -extfile "$who.ext" -out "$who.pem" 2>/dev/null
  rm -f "$who.csr" "$who.ext"
done
rm -f ca.srl
chmod 600 ./*.key
echo "certificates in $dir: ca.pem, scheduler/worker/client .pem + .key"

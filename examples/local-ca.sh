#!/bin/sh
# Makes a local certificate authority and the certificates the HTTPS quick start serves
# (examples/berth.https.yaml), with openssl. `npm run start:https` runs it before berth starts.
#
#   sh examples/local-ca.sh [DIR]      DIR defaults to examples/.berth/local-ca (git ignores it)
#
# Writes, in DIR (mode 0700):
#   ca.crt  ca.key       the CA: trust ca.crt in your client (curl --cacert DIR/ca.crt)
#   demo.crt demo.key    node-demo: localhost, node.localhost and 127.0.0.1; also the default certificate
#   py.crt  py.key       py-demo: py.localhost
# Keys are 0600. Run it again at will: the CA is kept (so a client that trusts it keeps trusting it),
# and a certificate is made again only when it is missing, expires within 30 days, or was signed by
# another CA. Needs openssl 1.1.1 or later (-addext). EC P-256 keys throughout.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-"$here/.berth/local-ca"}
mkdir -p "$dir"
chmod 700 "$dir"
umask 077

if [ ! -s "$dir/ca.crt" ] || [ ! -s "$dir/ca.key" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=berth local CA $(uname -n) $(date +%Y%m%d%H%M%S)" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
  chmod 644 "$dir/ca.crt"
  echo "local-ca: made a CA in $dir/ca.crt"
fi

# issue NAME CN SAN: a certificate NAME.crt (key NAME.key) for the subjectAltName list SAN.
issue() {
  name=$1
  cn=$2
  san=$3
  crt="$dir/$name.crt"
  key="$dir/$name.key"
  if [ -s "$crt" ] && [ -s "$key" ] \
    && openssl x509 -in "$crt" -noout -checkend 2592000 >/dev/null 2>&1 \
    && openssl verify -CAfile "$dir/ca.crt" "$crt" >/dev/null 2>&1; then
    return 0
  fi
  ext="$dir/$name.ext"
  printf '%s\n' "subjectAltName=$san" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" > "$ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=$cn" -keyout "$key" -out "$dir/$name.csr" 2>/dev/null
  # 397 days: the longest validity browsers accept for a server certificate.
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -set_serial "0x$(openssl rand -hex 8)" -days 397 -extfile "$ext" -out "$crt" 2>/dev/null
  rm -f "$dir/$name.csr" "$ext"
  chmod 644 "$crt"
  chmod 600 "$key"
  echo "local-ca: made $crt ($san)"
}

issue demo localhost "DNS:localhost,DNS:node.localhost,IP:127.0.0.1"
issue py py.localhost "DNS:py.localhost"

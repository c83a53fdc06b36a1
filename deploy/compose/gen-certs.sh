#!/bin/sh
# Generates the demo PKI for docker-compose.yml (and for test/unit/deploy.test.ts):
# a throw-away CA, a server certificate for `payments` and a client certificate
# for legate. Nothing secret is committed; everything lives in named volumes.
#
# Layout, one directory per consumer so each container mounts only its own key
# (the same file names cert-manager writes into a kubernetes.io/tls Secret):
#   $CA_DIR/ca.crt ca.key                 the CA; its key never leaves this directory
#   $LEGATE_DIR/ca.crt tls.crt tls.key    legate's client identity (CN=legate)
#   $PAYMENTS_DIR/ca.crt tls.crt tls.key  payments' server identity (DNS:payments)
#
# Idempotent: certificates that still verify and are valid for another day are
# kept, so `docker-compose up` twice does not rotate them (delete the volumes to
# start over, or set FORCE=1).
set -eu

CA_DIR=${CA_DIR:-/certs/ca}
LEGATE_DIR=${LEGATE_DIR:-/certs/legate}
PAYMENTS_DIR=${PAYMENTS_DIR:-/certs/payments}
# The uid:gid that runs legate and payments (the node images' `node` user).
OWNER=${OWNER:-1000:1000}
DAYS=${DAYS:-30}

mkdir -p "$CA_DIR" "$LEGATE_DIR" "$PAYMENTS_DIR"
umask 077

fresh() { # fresh DIR: the leaf in DIR is valid for a day more and chains to the current CA
  [ -s "$1/tls.crt" ] && [ -s "$1/tls.key" ] && [ -s "$1/ca.crt" ] &&
    cmp -s "$1/ca.crt" "$CA_DIR/ca.crt" &&
    openssl x509 -checkend 86400 -noout -in "$1/tls.crt" >/dev/null 2>&1 &&
    openssl verify -CAfile "$CA_DIR/ca.crt" "$1/tls.crt" >/dev/null 2>&1
}

if [ "${FORCE:-0}" = 1 ] || [ ! -s "$CA_DIR/ca.key" ] ||
  ! openssl x509 -checkend 86400 -noout -in "$CA_DIR/ca.crt" >/dev/null 2>&1; then
  echo "certs: new CA"
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout "$CA_DIR/ca.key" -out "$CA_DIR/ca.crt" -days $((DAYS * 4)) \
    -subj "/CN=legate demo CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  FORCE=1
fi

issue() { # issue DIR CN EXTENSIONS
  dir=$1 cn=$2 ext=$3
  if [ "${FORCE:-0}" != 1 ] && fresh "$dir"; then
    echo "certs: $cn: kept (valid until $(openssl x509 -enddate -noout -in "$dir/tls.crt" | cut -d= -f2))"
    return
  fi
  work=$(mktemp -d)
  printf '%s\n' "$ext" >"$work/ext"
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout "$work/tls.key" -out "$work/tls.csr" -subj "/CN=$cn" 2>/dev/null
  openssl x509 -req -in "$work/tls.csr" -CA "$CA_DIR/ca.crt" -CAkey "$CA_DIR/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days "$DAYS" -extfile "$work/ext" \
    -out "$work/tls.crt" 2>/dev/null
  cp "$CA_DIR/ca.crt" "$work/ca.crt"
  # Move into place file by file; readers that re-read on change see whole files.
  for f in ca.crt tls.crt tls.key; do mv -f "$work/$f" "$dir/$f"; done
  rm -rf "$work"
  echo "certs: $cn: issued, valid for $DAYS days"
}

issue "$LEGATE_DIR" legate "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectAltName=DNS:legate"

issue "$PAYMENTS_DIR" payments "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:payments,DNS:localhost,IP:127.0.0.1"

# Readable by the unprivileged consumer only; certificates are public.
chmod 0400 "$LEGATE_DIR/tls.key" "$PAYMENTS_DIR/tls.key"
chmod 0444 "$LEGATE_DIR/tls.crt" "$LEGATE_DIR/ca.crt" "$PAYMENTS_DIR/tls.crt" "$PAYMENTS_DIR/ca.crt"
chmod 0755 "$LEGATE_DIR" "$PAYMENTS_DIR"
if [ "$(id -u)" = 0 ]; then
  chown -R "$OWNER" "$LEGATE_DIR" "$PAYMENTS_DIR"
fi

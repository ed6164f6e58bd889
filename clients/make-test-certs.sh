#!/usr/bin/env bash
# Makes a throw-away certificate authority, a server certificate it signed for `localhost` and
# 127.0.0.1, and a client certificate it signed (subject `CN=llmr-test-client`, for trying mutual
# TLS), in DIR, for running the server over TLS by hand or in the journeys:
#
#   clients/make-test-certs.sh DIR
#   # writes DIR/ca.pem, DIR/server.crt, DIR/server.key, DIR/client.crt, DIR/client.key
#
# Generated at run time; the certificates are valid for one day (the CA for two); the CA's key is
# deleted once they are signed. Never commit them.
set -euo pipefail
DIR=${1:?usage: make-test-certs.sh DIR}
mkdir -p "$DIR"
cd "$DIR"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout ca.key -out ca.pem -subj "/CN=llm-registry run-time CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
    -extfile server.ext -out server.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout client.key -out client.csr -subj "/CN=llmr-test-client" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
    -extfile client.ext -out client.crt 2>/dev/null
rm -f server.csr server.ext client.csr client.ext ca.srl ca.key
chmod 600 server.key client.key

#!/usr/bin/env bash
# Makes what a sagaflow deployment needs for TLS, mTLS and operator tokens (docs/operations.md,
# "Security"), with the openssl command line:
#
#   <dir>/ca.pem, ca.key              the deployment's CA (keep ca.key offline)
#   <dir>/<service>.pem, <service>.key one certificate per service, for server and client
#                                      authentication: DNS SANs <service> (its host name and its
#                                      identity for internal RPCs) and localhost, IP SAN 127.0.0.1
#   <dir>/operator.token              a random operator token (SAGAFLOW_TOKEN for the CLI)
#   <dir>/admin-tokens                its line for --admin-tokens-file: `<id> <sha256 hex>`
#
# Usage: scripts/gen-certs.sh [DIR] [OPERATOR_ID]   (default ./certs, operator id `operator`)
# Extra host names for every service certificate: SAGAFLOW_CERT_HOSTS="sagaflow.example.com,…";
# for one service's: SAGAFLOW_CERT_HOSTS_<SERVICE>, e.g. SAGAFLOW_CERT_HOSTS_ORCHESTRATOR=
# "orchestrator-1,orchestrator-2" (replicas called by their own host names, as in compose.yaml).
# An existing CA in DIR is reused, so new service certificates stay trusted by the running ones.
set -euo pipefail

dir=${1:-certs}
operator=${2:-operator}
days=${SAGAFLOW_CERT_DAYS:-825}
services="order coupon inventory payment point ranking orchestrator"
mkdir -p "$dir"
umask 077

if [ ! -f "$dir/ca.key" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" -days "$days" -subj "/CN=sagaflow deployment CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  echo "made the CA: $dir/ca.pem"
fi

for s in $services; do
  sans="DNS:$s,DNS:localhost,IP:127.0.0.1"
  own="SAGAFLOW_CERT_HOSTS_${s^^}"
  IFS=',' read -ra extra <<< "${SAGAFLOW_CERT_HOSTS:-},${!own:-}"
  for h in "${extra[@]}"; do [ -n "$h" ] && sans="$sans,DNS:$h"; done
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$dir/$s.key" -out "$dir/$s.csr" -subj "/CN=$s" 2>/dev/null
  openssl x509 -req -in "$dir/$s.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -out "$dir/$s.pem" -days "$days" -extfile <(printf '%s\n' \
      "subjectAltName=$sans" \
      "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth,clientAuth") 2>/dev/null
  # PKCS#8, which rustls reads whatever the key type.
  openssl pkcs8 -topk8 -nocrypt -in "$dir/$s.key" -out "$dir/$s.key.pk8"
  mv "$dir/$s.key.pk8" "$dir/$s.key"
  rm -f "$dir/$s.csr"
done
rm -f "$dir/ca.srl"
echo "made certificates for: $services"

token=$(openssl rand -hex 32)
printf '%s\n' "$token" > "$dir/operator.token"
hash=$(printf '%s' "$token" | openssl dgst -sha256 -r | cut -d' ' -f1)
{
  echo "# sagaflow admin tokens: <token id> <sha256 hex of the token> (docs/operations.md, \"Security\")"
  echo "$operator $hash"
} > "$dir/admin-tokens"
# The certificates and the tokens file hold nothing a reader could use. The service keys are
# left readable (644) because compose.yaml mounts them into containers that run as user 10001;
# on a real host give each key to its service's user only (chown, chmod 600). The CA key and the
# operator token stay the owner's alone.
chmod 644 "$dir"/*.pem "$dir/admin-tokens"
for s in $services; do chmod 644 "$dir/$s.key"; done
chmod 600 "$dir/ca.key" "$dir/operator.token"
echo "made the operator token $dir/operator.token (id $operator) and $dir/admin-tokens"

# deploy/services/tls.sh — the instance's throw-away certificate authority, for the
# servers' TLS listeners (Postgres on its own port, RabbitMQ's amqps listener, Redis's
# tls-port), so that the services can be tested, and measured, over TLS exactly as they
# would reach a managed database or broker. Sourced by deploy/services.sh.
#
# .data/<instance>/tls/ (made on `start` when missing or about to expire; kept otherwise):
#   ca.pem, ca.key             the instance's CA (what the services' *_ca_file name)
#   server.pem, server.key     the servers' certificate: localhost and 127.0.0.1
#   client.pem, client.key     a client certificate from the same CA (amqp.client_cert_file)
#   other-ca.pem               a CA that signed nothing here: a client that trusts only it
#                              must refuse the servers (the tests of that refusal)
# Each server gets its own copy of the certificate and key, owned by its OS user (Postgres
# refuses a key that others can read).
# shellcheck shell=bash

tls_vars() {
    TLS_DIR="$DATA_DIR/tls"
    TLS_CA="$TLS_DIR/ca.pem"
    TLS_OTHER_CA="$TLS_DIR/other-ca.pem"
    TLS_CERT="$TLS_DIR/server.pem"
    TLS_KEY="$TLS_DIR/server.key"
    TLS_CLIENT_CERT="$TLS_DIR/client.pem"
    TLS_CLIENT_KEY="$TLS_DIR/client.key"
}

# tls_ok: every file is there and no certificate expires within a day
tls_ok() {
    local f
    for f in "$TLS_CA" "$TLS_OTHER_CA" "$TLS_CERT" "$TLS_KEY" "$TLS_CLIENT_CERT" "$TLS_CLIENT_KEY"; do
        [ -s "$f" ] || return 1
    done
    for f in "$TLS_CA" "$TLS_OTHER_CA" "$TLS_CERT" "$TLS_CLIENT_CERT"; do
        openssl x509 -checkend 86400 -noout -in "$f" >/dev/null 2>&1 || return 1
    done
}

# tls_sign NAME CN EXT: a key and a certificate NAME.{key,pem} signed by the CA
tls_sign() {
    local name="$1" cn="$2" ext="$3"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$TLS_DIR/$name.key" -subj "/CN=$cn" -out "$TLS_DIR/$name.csr" 2>/dev/null
    printf '%s\n' "$ext" >"$TLS_DIR/$name.ext"
    openssl x509 -req -in "$TLS_DIR/$name.csr" -CA "$TLS_CA" -CAkey "$TLS_DIR/ca.key" \
        -CAcreateserial -days 365 -sha256 -extfile "$TLS_DIR/$name.ext" \
        -out "$TLS_DIR/$name.pem" 2>/dev/null
    rm -f "$TLS_DIR/$name.csr" "$TLS_DIR/$name.ext"
}

# tls_ca NAME CN: a self-signed CA NAME.{key,pem}
tls_ca() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 -sha256 \
        -keyout "$TLS_DIR/$1.key" -subj "/CN=$2" -out "$TLS_DIR/$1.pem" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        2>/dev/null
}

# tls_make: the CA and the certificates, unless they are there and valid for another day
tls_make() {
    tls_ok && return 0
    command -v openssl >/dev/null 2>&1 || die "openssl not found (apt-get install openssl)"
    rm -rf "$TLS_DIR"
    (umask 077; mkdir -p "$TLS_DIR")
    chmod 755 "$TLS_DIR"   # the certificates are public; the keys stay 600
    (
        umask 077
        tls_ca ca "mapmo-chat $INSTANCE CA"
        tls_ca other-ca "mapmo-chat $INSTANCE other CA"
        rm -f "$TLS_DIR/other-ca.key"
        tls_sign server "mapmo-chat $INSTANCE servers" \
            "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth
keyUsage=critical,digitalSignature"
        tls_sign client "chat" \
            "extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature"
    ) || die "making the instance's TLS certificates in $TLS_DIR failed"
    chmod 644 "$TLS_CA" "$TLS_OTHER_CA" "$TLS_CERT" "$TLS_CLIENT_CERT"
    [ -s "$TLS_CERT" ] && [ -s "$TLS_CLIENT_CERT" ] || die "openssl made no certificate in $TLS_DIR"
    log "made a throw-away CA and the servers' certificate in $TLS_DIR"
}

# tls_install USER DIR: copies the CA, the servers' certificate and key into DIR (which
# USER owns) as ca.pem, server.pem, server.key (600), owned by USER
tls_install() {
    local user="$1" dir="$2"
    svc_write "$user" "$dir/ca.pem" 644 <"$TLS_CA"
    svc_write "$user" "$dir/server.pem" 644 <"$TLS_CERT"
    svc_write "$user" "$dir/server.key" 600 <"$TLS_KEY"
}

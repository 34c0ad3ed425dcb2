/* Private to protocol/: the peer-name check of TLS links (SPEC.md 4.1). */
#ifndef PROTOCOL_PROTO_TLS_NAME_H
#define PROTOCOL_PROTO_TLS_NAME_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>

/* 0 if cert names node sid: a SAN DNS name "starling-node-SID", or a SAN
 * matching host (a DNS name, or an IP address when host is one; NULL or ""
 * for none).  Otherwise -1 with one line in why naming what the
 * certificate does name. */
int proto_tls_name_check(X509 *cert, uint32_t sid, const char *host, char *why, size_t why_size);

#endif

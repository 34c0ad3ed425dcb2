/* HMAC-SHA256 proofs of the peer authentication (SPEC.md "Authentication").
 *
 * The proof binds everything that identifies this one handshake: both
 * nonces, both SIDs, the direction, and with TLS the channel itself, so a
 * proof cannot be replayed on another connection, reflected back to its
 * sender, or relayed into another TLS session. */
#include "protocol/protocol.h"

#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#define AUTH_CONTEXT "STARLING-AUTH-1"

int proto_auth_proof(const unsigned char *secret, size_t secret_len, const char *label,
		     const unsigned char init_nonce[PROTO_NONCE_SIZE],
		     const unsigned char acc_nonce[PROTO_NONCE_SIZE],
		     uint32_t init_sid, uint32_t acc_sid, const unsigned char *channel,
		     unsigned char out[PROTO_HMAC_SIZE])
{
	unsigned char msg[64 + 2 * PROTO_NONCE_SIZE + 8 + 32];
	size_t n = 0;
	size_t ctx_len = strlen(AUTH_CONTEXT) + 1, label_len = strlen(label) + 1;
	if (ctx_len + label_len > 64)
		return -1;
	memcpy(msg + n, AUTH_CONTEXT, ctx_len);
	n += ctx_len;
	memcpy(msg + n, label, label_len);
	n += label_len;
	memcpy(msg + n, init_nonce, PROTO_NONCE_SIZE);
	n += PROTO_NONCE_SIZE;
	memcpy(msg + n, acc_nonce, PROTO_NONCE_SIZE);
	n += PROTO_NONCE_SIZE;
	for (int i = 3; i >= 0; i--)
		msg[n++] = (unsigned char)(init_sid >> (8 * i));
	for (int i = 3; i >= 0; i--)
		msg[n++] = (unsigned char)(acc_sid >> (8 * i));
	if (channel != NULL) {
		memcpy(msg + n, channel, 32);
		n += 32;
	}
	unsigned int out_len = 0;
	if (HMAC(EVP_sha256(), secret, (int)secret_len, msg, n, out, &out_len) == NULL ||
	    out_len != PROTO_HMAC_SIZE)
		return -1;
	return 0;
}

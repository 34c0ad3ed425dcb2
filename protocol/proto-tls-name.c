/* Peer identity under TLS (SPEC.md 4.1): a chain signed by tls_ca only
 * says "some node of this cluster"; the certificate must also name the
 * node it claims to be, or any node's key could stand in for any other. */
#include "protocol/proto-tls-name.h"

#include <arpa/inet.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* Wildcards would let one certificate name many nodes; the subject CN is
 * not a name here (RFC 6125 left it behind), so a CN-only certificate,
 * which is what the old instructions produced, names nobody. */
#define NAME_FLAGS (X509_CHECK_FLAG_NEVER_CHECK_SUBJECT | X509_CHECK_FLAG_NO_WILDCARDS)

static bool is_ip_literal(const char *host)
{
	unsigned char tmp[16];
	return inet_pton(AF_INET, host, tmp) == 1 || inet_pton(AF_INET6, host, tmp) == 1;
}

static void append(char *out, size_t size, size_t *len, const char *what, const char *name)
{
	if (*len >= size)
		return;
	int n = snprintf(out + *len, size - *len, "%s%s%s", *len > 0 ? " " : "", what, name);
	if (n < 0)
		return;
	*len = *len + (size_t)n < size ? *len + (size_t)n : size;
}

/* What the certificate names, for the log: SAN DNS and IP entries and the
 * CN.  The text comes from a peer: only printable ASCII is copied. */
static void describe_names(X509 *cert, char *out, size_t size)
{
	size_t len = 0;
	out[0] = '\0';
	GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
	int count = sans != NULL ? sk_GENERAL_NAME_num(sans) : 0;
	for (int i = 0; i < count && i < 8; i++) {
		const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);
		char name[80];
		if (gn->type == GEN_DNS) {
			const unsigned char *s = ASN1_STRING_get0_data(gn->d.dNSName);
			int n = ASN1_STRING_length(gn->d.dNSName);
			size_t j = 0;
			for (int k = 0; k < n && j + 1 < sizeof(name); k++)
				name[j++] = s[k] > 0x20 && s[k] < 0x7f ? (char)s[k] : '?';
			name[j] = '\0';
			append(out, size, &len, "DNS:", name);
		} else if (gn->type == GEN_IPADD) {
			const unsigned char *s = ASN1_STRING_get0_data(gn->d.iPAddress);
			int n = ASN1_STRING_length(gn->d.iPAddress);
			if ((n == 4 && inet_ntop(AF_INET, s, name, sizeof(name)) != NULL) ||
			    (n == 16 && inet_ntop(AF_INET6, s, name, sizeof(name)) != NULL))
				append(out, size, &len, "IP:", name);
		}
	}
	if (count > 8)
		append(out, size, &len, "", "...");
	GENERAL_NAMES_free(sans);
	char cn[64];
	int n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn,
					  sizeof(cn));
	if (n > 0) {
		for (int k = 0; k < n && cn[k] != '\0'; k++)
			if ((unsigned char)cn[k] <= 0x20 || (unsigned char)cn[k] >= 0x7f)
				cn[k] = '?';
		append(out, size, &len, "CN=", cn);
	}
	if (len == 0)
		snprintf(out, size, "no names");
}

int proto_tls_name_check(X509 *cert, uint32_t sid, const char *host, char *why, size_t why_size)
{
	char node_name[32];
	snprintf(node_name, sizeof(node_name), "starling-node-%u", sid);
	if (cert == NULL) {
		snprintf(why, why_size, "node %u presented no TLS certificate", sid);
		return -1;
	}
	if (X509_check_host(cert, node_name, 0, NAME_FLAGS, NULL) == 1)
		return 0;
	if (host != NULL && host[0] != '\0') {
		int r = is_ip_literal(host) ? X509_check_ip_asc(cert, host, 0)
					    : X509_check_host(cert, host, 0, NAME_FLAGS, NULL);
		if (r == 1)
			return 0;
	}
	char names[100];
	describe_names(cert, names, sizeof(names));
	snprintf(why, why_size,
		 "TLS certificate does not name node %u (wanted SAN %s%s%s); it names: %s", sid,
		 node_name, host != NULL && host[0] != '\0' ? " or " : "",
		 host != NULL ? host : "", names);
	return -1;
}

/* 128-bit random identifiers (mailbox GUIDs, message global UIDs). */
#ifndef LIB_GUID_H
#define LIB_GUID_H

#include <stdbool.h>

#define GUID_SIZE 16
#define GUID_HEX_SIZE (GUID_SIZE * 2 + 1)

struct guid {
	unsigned char b[GUID_SIZE];
};

/* Fills g from OpenSSL's RAND_bytes; ends the process if the random
 * generator fails, since duplicate GUIDs would silently merge mail.  For the
 * main thread only (it keeps a pool of random bytes). */
void guid_generate(struct guid *g);
/* Lowercase hex, 32 digits plus NUL. */
void guid_to_hex(const struct guid *g, char out[GUID_HEX_SIZE]);
/* Parses exactly 32 hex digits.  Returns 0 or -1. */
int guid_from_hex(const char *s, struct guid *g);
bool guid_is_zero(const struct guid *g);
int guid_cmp(const struct guid *a, const struct guid *b);
static inline bool guid_equal(const struct guid *a, const struct guid *b)
{
	return guid_cmp(a, b) == 0;
}

#endif

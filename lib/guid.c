/* Random GUIDs: see guid.h. */
#include "lib/guid.h"

#include <openssl/rand.h>
#include <string.h>

#include "lib/log.h"
#include "lib/str.h"

void guid_generate(struct guid *g)
{
	if (RAND_bytes(g->b, GUID_SIZE) != 1)
		fatalx("RAND_bytes failed: cannot generate a GUID");
}

void guid_to_hex(const struct guid *g, char out[GUID_HEX_SIZE])
{
	hex_encode(g->b, GUID_SIZE, out);
}

int guid_from_hex(const char *s, struct guid *g)
{
	return hex_decode(s, strlen(s), g->b, GUID_SIZE);
}

bool guid_is_zero(const struct guid *g)
{
	static const struct guid zero;
	return memcmp(g->b, zero.b, GUID_SIZE) == 0;
}

int guid_cmp(const struct guid *a, const struct guid *b)
{
	return memcmp(a->b, b->b, GUID_SIZE);
}

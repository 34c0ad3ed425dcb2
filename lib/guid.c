/* Random GUIDs: see guid.h. */
#include "lib/guid.h"

#include <openssl/rand.h>
#include <pthread.h>
#include <string.h>

#include "lib/log.h"
#include "lib/str.h"

/* RAND_bytes() checks for a fork with getpid(), a system call, at every
 * call: a message store makes a GUID per message, so they come from a pool
 * refilled 256 at a time.  A child process starts with an empty pool, so
 * parent and child never hand out the same bytes. */
#define GUID_POOL 256
static unsigned char pool[GUID_POOL * GUID_SIZE];
static size_t pool_left;
static bool pool_atfork_set;

static void pool_forget(void)
{
	pool_left = 0;
}

void guid_generate(struct guid *g)
{
	if (!pool_atfork_set) {
		if (pthread_atfork(NULL, NULL, pool_forget) != 0)
			fatalx("pthread_atfork failed");
		pool_atfork_set = true;
	}
	if (pool_left == 0) {
		if (RAND_bytes(pool, sizeof(pool)) != 1)
			fatalx("RAND_bytes failed: cannot generate a GUID");
		pool_left = GUID_POOL;
	}
	unsigned char *p = pool + --pool_left * GUID_SIZE;
	memcpy(g->b, p, GUID_SIZE);
	memset(p, 0, GUID_SIZE);
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

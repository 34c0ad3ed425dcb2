/* The in-memory transport: a client and a server in one process, joined by
 * two byte queues with no sockets.  Bytes are delivered in pseudo-random
 * splits so that the parsers on both ends see every kind of partial line. */
#include "sync/sync-private.h"

#include <stdlib.h>

#include "lib/xalloc.h"

struct sync_pipe {
	struct buf to_server, to_client;
	struct sync_transport client_t, server_t;
	uint32_t rnd;
	size_t max_chunk;
	uint64_t bytes_to_server, bytes_to_client;
};

static void pipe_send_to_server(void *ctx, const void *data, size_t len)
{
	struct sync_pipe *p = ctx;
	buf_append(&p->to_server, data, len);
	p->bytes_to_server += len;
}

static void pipe_send_to_client(void *ctx, const void *data, size_t len)
{
	struct sync_pipe *p = ctx;
	buf_append(&p->to_client, data, len);
	p->bytes_to_client += len;
}

struct sync_pipe *sync_pipe_create(uint32_t seed, size_t max_chunk)
{
	struct sync_pipe *p = xcalloc(1, sizeof(*p));
	buf_init(&p->to_server);
	buf_init(&p->to_client);
	p->client_t.send = pipe_send_to_server;
	p->client_t.ctx = p;
	p->server_t.send = pipe_send_to_client;
	p->server_t.ctx = p;
	p->rnd = seed != 0 ? seed : 1;
	p->max_chunk = max_chunk;
	return p;
}

void sync_pipe_destroy(struct sync_pipe **pp)
{
	struct sync_pipe *p = *pp;
	if (p == NULL)
		return;
	*pp = NULL;
	buf_free(&p->to_server);
	buf_free(&p->to_client);
	free(p);
}

const struct sync_transport *sync_pipe_client_transport(struct sync_pipe *p)
{
	return &p->client_t;
}

const struct sync_transport *sync_pipe_server_transport(struct sync_pipe *p)
{
	return &p->server_t;
}

static size_t pipe_chunk(struct sync_pipe *p, size_t avail)
{
	if (p->max_chunk == 0 || avail <= 1)
		return avail;
	/* xorshift32 */
	p->rnd ^= p->rnd << 13;
	p->rnd ^= p->rnd >> 17;
	p->rnd ^= p->rnd << 5;
	size_t n = 1 + p->rnd % p->max_chunk;
	return n < avail ? n : avail;
}

/* Moves everything queued in b into the receiver, in random splits.  The
 * receiver may queue more output meanwhile (to the other buffer). */
static int pipe_deliver(struct sync_pipe *p, struct buf *b, bool to_server,
			struct sync_client *c, struct sync_server *s)
{
	while (buf_avail(b) > 0) {
		size_t n = pipe_chunk(p, buf_avail(b));
		/* Copy first: the receiver's answer may grow another buffer, never
		 * this one, but keep the bytes stable regardless. */
		unsigned char *chunk = xmemdup(buf_rptr(b), n);
		buf_consume(b, n);
		int r = to_server ? sync_server_feed(s, chunk, n) : sync_client_feed(c, chunk, n);
		free(chunk);
		if (r < 0)
			return -1;
	}
	buf_reset(b);
	return 0;
}

enum sync_step_result sync_pipe_run(struct sync_pipe *p, struct sync_client *c,
				    struct sync_server *s, unsigned max_steps)
{
	enum sync_step_result res = SYNC_STEP_WAIT;
	for (unsigned i = 0; i < max_steps; i++) {
		res = sync_client_step(c);
		if (res == SYNC_STEP_DONE || res == SYNC_STEP_ERROR)
			return res;
		bool moved = buf_avail(&p->to_server) > 0 || buf_avail(&p->to_client) > 0 ||
			     sync_server_busy(s);
		if (pipe_deliver(p, &p->to_server, true, c, s) < 0)
			return SYNC_STEP_ERROR;
		/* One server step per round, so the client sees a long answer
		 * arrive in parts, as over a link. */
		if (sync_server_busy(s) && sync_server_step(s) < 0)
			return SYNC_STEP_ERROR;
		if (pipe_deliver(p, &p->to_client, false, c, s) < 0)
			return SYNC_STEP_ERROR;
		if (res == SYNC_STEP_WAIT && !moved)
			return SYNC_STEP_WAIT; /* stuck: nothing in flight */
	}
	return SYNC_STEP_WAIT;
}

void sync_pipe_bytes(const struct sync_pipe *p, uint64_t *to_server_r, uint64_t *to_client_r)
{
	*to_server_r = p->bytes_to_server;
	*to_client_r = p->bytes_to_client;
}

/* The metrics endpoint (see repl-metrics.h): a small HTTP/1.x server that
 * answers GET /metrics and nothing else.
 *
 * Whoever connects is untrusted: a request may be at most
 * METRICS_MAX_REQUEST bytes and must be complete within
 * METRICS_TIMEOUT_S; at most METRICS_MAX_CONNS connections are open at a
 * time (a new one closes the oldest).  Every connection carries one request
 * and is closed after the answer (`Connection: close`), so a slow reader
 * costs one buffer until the timeout, never the loop. */
#include "replicator/repl-metrics.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/listen.h"
#include "lib/log.h"
#include "lib/xalloc.h"

#define METRICS_MAX_REQUEST 8192
#define METRICS_MAX_CONNS 16
#define METRICS_TIMEOUT_S 10.0
#define METRICS_ACCEPTS_PER_EVENT 16

struct mconn {
	struct repl_metrics *m;
	struct mconn *prev, *next;
	int fd;
	ev_io io;
	ev_timer timer;
	char req[METRICS_MAX_REQUEST];
	size_t req_len;
	struct buf out;  /* the answer, once the request is read */
	size_t out_pos;
	bool answering;
};

struct repl_metrics {
	struct ev_loop *loop;
	repl_metrics_cb *cb;
	void *ctx;
	int fd;
	ev_io io;
	struct mconn *conns;
	unsigned nconns;
	uint64_t requests;
};

static void mconn_free(struct mconn *c)
{
	struct repl_metrics *m = c->m;
	ev_io_stop(m->loop, &c->io);
	ev_timer_stop(m->loop, &c->timer);
	close(c->fd);
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		m->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	m->nconns--;
	buf_free(&c->out);
	free(c);
}

static void mconn_write(struct mconn *c)
{
	while (c->out_pos < c->out.len) {
		ssize_t n = send(c->fd, c->out.data + c->out_pos, c->out.len - c->out_pos,
				 MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0) {
			mconn_free(c);
			return;
		}
		c->out_pos += (size_t)n;
	}
	/* One request per connection: done. */
	shutdown(c->fd, SHUT_WR);
	mconn_free(c);
}

static void mconn_answer(struct mconn *c, const char *status, const char *ctype,
			 const struct buf *body, bool head)
{
	buf_appendf(&c->out,
		    "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
		    "Connection: close\r\n\r\n",
		    status, ctype, body->len);
	if (!head)
		buf_append(&c->out, body->data, body->len);
	c->answering = true;
	ev_io_stop(c->m->loop, &c->io);
	ev_io_set(&c->io, c->fd, EV_WRITE);
	ev_io_start(c->m->loop, &c->io);
	mconn_write(c);
}

static void mconn_error(struct mconn *c, const char *status)
{
	struct buf body = BUF_INIT;
	buf_appendf(&body, "%s\n", status);
	mconn_answer(c, status, "text/plain; charset=utf-8", &body, false);
	buf_free(&body);
}

/* The request line and headers are all in c->req: answer them. */
static void mconn_request(struct mconn *c, size_t head_len)
{
	struct repl_metrics *m = c->m;
	char *line = c->req;
	c->req[head_len] = '\0';
	char *eol = strpbrk(line, "\r\n");
	if (eol != NULL)
		*eol = '\0';
	/* "METHOD SP TARGET SP HTTP/1.x": anything else is a bad request. */
	char *sp1 = strchr(line, ' ');
	char *sp2 = sp1 != NULL ? strchr(sp1 + 1, ' ') : NULL;
	if (sp1 == NULL || sp2 == NULL || strchr(sp2 + 1, ' ') != NULL ||
	    strncmp(sp2 + 1, "HTTP/1.", 7) != 0 || strlen(sp2 + 1) != 8) {
		mconn_error(c, "400 Bad Request");
		return;
	}
	*sp1 = '\0';
	*sp2 = '\0';
	const char *method = line, *target = sp1 + 1;
	bool head = strcmp(method, "HEAD") == 0;
	if (!head && strcmp(method, "GET") != 0) {
		mconn_error(c, "405 Method Not Allowed");
		return;
	}
	size_t plen = strcspn(target, "?");
	if (plen != strlen("/metrics") || strncmp(target, "/metrics", plen) != 0) {
		mconn_error(c, "404 Not Found");
		return;
	}
	m->requests++;
	struct buf body = BUF_INIT;
	m->cb(m->ctx, &body);
	mconn_answer(c, "200 OK", "text/plain; version=0.0.4; charset=utf-8", &body, head);
	buf_free(&body);
}

static void mconn_read(struct mconn *c)
{
	for (;;) {
		size_t room = sizeof(c->req) - 1 - c->req_len;
		if (room == 0) {
			mconn_error(c, "431 Request Header Fields Too Large");
			return;
		}
		ssize_t n = recv(c->fd, c->req + c->req_len, room, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0) {
			mconn_free(c);
			return;
		}
		/* A NUL has no place in a request; it would also cut the
		 * parsing below short. */
		if (memchr(c->req + c->req_len, '\0', (size_t)n) != NULL) {
			mconn_error(c, "400 Bad Request");
			return;
		}
		size_t from = c->req_len >= 3 ? c->req_len - 3 : 0;
		c->req_len += (size_t)n;
		c->req[c->req_len] = '\0';
		char *end = strstr(c->req + from, "\r\n\r\n");
		if (end != NULL) {
			mconn_request(c, (size_t)(end - c->req));
			return;
		}
		end = strstr(c->req + from, "\n\n");
		if (end != NULL) {
			mconn_request(c, (size_t)(end - c->req));
			return;
		}
	}
}

static void mconn_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct mconn *c = w->data;
	if (c->answering)
		mconn_write(c);
	else
		mconn_read(c);
}

static void mconn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	mconn_free(w->data);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct repl_metrics *m = w->data;
	for (int i = 0; i < METRICS_ACCEPTS_PER_EVENT; i++) {
		struct sockaddr_storage ss;
		int fd = listen_accept(m->fd, &ss);
		if (fd < 0) {
			if (fd == LISTEN_PAUSE)
				log_warn("metrics: accept");
			return;
		}
		if (m->nconns >= METRICS_MAX_CONNS) {
			/* Full: the oldest goes, so that idle connections can
			 * delay a scrape but never lock it out. */
			struct mconn *old = m->conns;
			while (old->next != NULL)
				old = old->next;
			mconn_free(old);
		}
		struct mconn *c = xcalloc(1, sizeof(*c));
		c->m = m;
		c->fd = fd;
		buf_init(&c->out);
		ev_io_init(&c->io, mconn_io_cb, fd, EV_READ);
		c->io.data = c;
		ev_timer_init(&c->timer, mconn_timer_cb, METRICS_TIMEOUT_S, 0.);
		c->timer.data = c;
		ev_io_start(loop, &c->io);
		ev_timer_start(loop, &c->timer);
		c->next = m->conns;
		if (m->conns != NULL)
			m->conns->prev = c;
		m->conns = c;
		m->nconns++;
	}
}

int repl_metrics_create(struct ev_loop *loop, const struct config_addr *addr, repl_metrics_cb *cb,
			void *ctx, struct repl_metrics **m_r, char **error_r)
{
	*m_r = NULL;
	if (addr->host == NULL)
		return 0;
	char *err = NULL;
	int fd = listen_tcp(addr, &err);
	if (fd < 0) {
		*error_r = xasprintf("metrics_listen %s", err);
		free(err);
		return -1;
	}
	struct repl_metrics *m = xcalloc(1, sizeof(*m));
	m->loop = loop;
	m->cb = cb;
	m->ctx = ctx;
	m->fd = fd;
	ev_io_init(&m->io, accept_cb, fd, EV_READ);
	m->io.data = m;
	ev_io_start(loop, &m->io);
	log_info("metrics: listening on %s:%u", addr->host, addr->port);
	*m_r = m;
	return 0;
}

void repl_metrics_destroy(struct repl_metrics **mp)
{
	struct repl_metrics *m = *mp;
	if (m == NULL)
		return;
	*mp = NULL;
	while (m->conns != NULL)
		mconn_free(m->conns);
	ev_io_stop(m->loop, &m->io);
	close(m->fd);
	free(m);
}

/* ------------------------------------------------------------------ */
/* From `starling status` lines to the Prometheus text format */

struct metric_def {
	const char *key;    /* status key; "peer.*" keys: the part after the SID */
	bool per_peer;
	const char *name;
	const char *type;
	const char *help;
	double scale;
};

static const struct metric_def metric_defs[] = {
	{ "sessions", false, "starling_imap_sessions", "gauge", "IMAP sessions open", 1 },
	{ "uptime_s", false, "starling_uptime_seconds", "gauge", "seconds since starlingd started", 1 },
	{ "store.journal_bytes", false, "starling_store_journal_bytes", "gauge",
	  "bytes of the store's journal on disk", 1 },
	{ "store.text_bytes_live", false, "starling_store_text_live_bytes", "gauge",
	  "bytes of message texts still referenced", 1 },
	{ "store.journal_segments", false, "starling_store_journal_segments", "gauge",
	  "journal segment files", 1 },
	{ "peers", false, "starling_peers", "gauge", "configured peers", 1 },
	{ "peers_up", false, "starling_peers_up", "gauge", "peers whose link is up", 1 },
	{ "", true, "starling_peer_up", "gauge", "1 when the link to the peer is up", 1 },
	{ "link_ups", true, "starling_peer_link_ups_total", "counter",
	  "times the link to the peer came up", 1 },
	{ "backlog", true, "starling_peer_backlog", "gauge",
	  "replication log entries the peer has not acknowledged", 1 },
	{ "lag_ms", true, "starling_peer_lag_seconds", "gauge",
	  "age of the oldest entry the peer has not acknowledged", 0.001 },
	{ "under_replicated", true, "starling_peer_under_replicated", "gauge",
	  "under-replicated changes this peer lacks", 1 },
	{ "healthy", true, "starling_peer_healthy", "gauge",
	  "1 when the peer can count as a replica now", 1 },
	{ "full_sync", true, "starling_peer_full_sync", "gauge",
	  "1 when the peer fell off the log and gets a full resync", 1 },
	{ "under_replicated", false, "starling_under_replicated_changes", "gauge",
	  "changes answered with fewer replicas than sync_replicas", 1 },
	{ "replicas_available", false, "starling_replicas_available", "gauge",
	  "healthy replicas now", 1 },
	{ "forwarded_changes", false, "starling_forwarded_changes_total", "counter",
	  "changes sent to a mailbox master", 1 },
	{ "forwarded_held", false, "starling_forwarded_held_total", "counter",
	  "forwarded SAVEs the master answered counting this node as a copy", 1 },
	{ "autonomous_changes", false, "starling_autonomous_changes_total", "counter",
	  "changes made here because no master could be reached", 1 },
	{ "relayed_commands", false, "starling_relayed_commands_total", "counter",
	  "requests passed on toward a master", 1 },
	{ "relayed_changes", false, "starling_relayed_changes_total", "counter",
	  "changes passed on toward peers with no link to their origin", 1 },
	{ "resyncs_queued", false, "starling_resyncs_queued", "gauge",
	  "user resyncs waiting", 1 },
	{ "syncs_run", false, "starling_syncs_total", "counter",
	  "user syncs with a peer this node ran", 1 },
	{ "uids_renumbered", false, "starling_uidfix_renumbered_total", "counter",
	  "messages given new UIDs by syncs this node ran (UIDFIX)", 1 },
};

/* The value of a status line as a number: yes/no and up/other states as
 * 1/0.  Returns false for a value that is neither. */
static bool status_value(const char *key_suffix, const char *v, double *out)
{
	if (*key_suffix == '\0') {
		*out = strcmp(v, "up") == 0;
		return true;
	}
	if (strcmp(v, "yes") == 0 || strcmp(v, "no") == 0) {
		*out = strcmp(v, "yes") == 0;
		return true;
	}
	char *end;
	errno = 0;
	double d = strtod(v, &end);
	if (end == v || *end != '\0' || errno != 0)
		return false;
	*out = d;
	return true;
}

/* "peer.SID.rest" -> SID and rest ("" for "peer.SID"). */
static bool peer_key(const char *key, unsigned *sid, const char **rest)
{
	if (strncmp(key, "peer.", 5) != 0)
		return false;
	char *end;
	unsigned long v = strtoul(key + 5, &end, 10);
	if (end == key + 5 || v == 0 || v > UINT32_MAX || (*end != '\0' && *end != '.'))
		return false;
	*sid = (unsigned)v;
	*rest = *end == '.' ? end + 1 : end;
	return true;
}

void repl_metrics_from_status(const char *status, struct buf *out)
{
	for (size_t d = 0; d < sizeof(metric_defs) / sizeof(metric_defs[0]); d++) {
		const struct metric_def *def = &metric_defs[d];
		bool header = false;
		const char *p = status;
		while (*p != '\0') {
			const char *nl = strchr(p, '\n');
			size_t len = nl != NULL ? (size_t)(nl - p) : strlen(p);
			char line[512];
			if (len < sizeof(line)) {
				memcpy(line, p, len);
				line[len] = '\0';
			} else {
				line[0] = '\0';
			}
			p += len + (nl != NULL);
			char *colon = strstr(line, ": ");
			if (colon == NULL)
				continue;
			*colon = '\0';
			const char *key = line, *val = colon + 2, *rest = NULL;
			unsigned sid = 0;
			bool is_peer = peer_key(key, &sid, &rest);
			if (is_peer != def->per_peer)
				continue;
			if (is_peer ? strcmp(rest, def->key) != 0 : strcmp(key, def->key) != 0)
				continue;
			double v;
			if (!status_value(is_peer ? rest : key, val, &v))
				continue;
			if (!header) {
				buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n", def->name, def->help,
					    def->name, def->type);
				header = true;
			}
			if (is_peer)
				buf_appendf(out, "%s{peer=\"%u\"} %.17g\n", def->name, sid, v * def->scale);
			else
				buf_appendf(out, "%s %.17g\n", def->name, v * def->scale);
		}
	}
}

/* Load client for the FETCH phase of bench/imap-bench.py: N connections,
 * each LOGIN, EXAMINE, then `UID FETCH lo:hi ITEMS` in chunks over its own
 * UID range, ROUNDS times, with up to PIPELINE commands in flight.
 *
 *   imap-fetch-load --port P --user U --password PW --mailbox M
 *                   [--host 127.0.0.1] [--rounds 1] [--chunk 50] [--pipeline 1]
 *                   [--items "(BODY.PEEK[])"] [--timeout 60] [--deadline 1800]
 *                   LO:HI...                (one connection per range)
 *
 * Prints one line, "bodies N bytes B seconds S": the FETCH responses counted,
 * their bytes (literals included, final CRLF not, as imap-bench.py counts
 * them) and the time from the moment every connection was ready to the end
 * of the last one.  Any NO, BAD, BYE, continuation or malformed response is
 * a failure: one line on stderr, exit status 1.
 *
 * Why C: on a 2-core machine the Python clients spent about as much CPU per
 * fetched body as the server they measured, so the throughput ratio against
 * Dovecot measured the clients' share of the cores as much as the servers.
 * This client reads into one buffer and skips literals by their size; it
 * checks what it reads but builds nothing from it.
 *
 * One thread per connection with blocking sockets: a receive that waits
 * longer than --timeout seconds fails, and every connection gives up at
 * --deadline seconds after the start, so a silent or endless server cannot
 * hang it.  Lines are capped at LINE_MAX bytes and literals at LIT_MAX. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* A response line other than a literal's bytes: FETCH lines before their
 * literal are short; 64 KiB leaves room for a long header-field list. */
#define LINE_MAX_BYTES (64 * 1024)
/* One literal; RFC 3501 sets no limit, the benchmark's messages are under
 * 1 MB, and anything near this means a broken length. */
#define LIT_MAX ((uint64_t)1 << 30)
#define BUF_SIZE (256 * 1024)
#define ERR_SIZE 256
#define MAX_CONNS 500

struct opts {
	const char *host, *port, *user, *password, *mailbox, *items;
	unsigned rounds, chunk, pipeline, timeout, deadline;
};

struct conn {
	const struct opts *o;
	uint32_t lo, hi;
	int fd;
	char *buf;
	size_t pos, end;
	double deadline; /* CLOCK_MONOTONIC seconds */
	uint64_t bodies, bytes;
	double t_end;
	bool failed;
	char err[ERR_SIZE];
	pthread_t thread;
};

/* What one response was: its first bytes, its length with its literals and
 * final CRLF. */
struct resp {
	char head[64];
	size_t head_len;
	uint64_t len;
};

static pthread_barrier_t ready;
static bool any_failed; /* written before the barrier, read after it */
static pthread_mutex_t fail_lock = PTHREAD_MUTEX_INITIALIZER;
static double t_start;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int fail(struct conn *c, const char *fmt, ...)
{
	if (!c->failed) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(c->err, sizeof(c->err), fmt, ap);
		va_end(ap);
		c->failed = true;
	}
	return -1;
}

/* The printable start of a line, for an error message. */
static const char *show(const char *p, size_t n, char *out, size_t outsz)
{
	size_t j = 0;
	for (size_t i = 0; i < n && j + 1 < outsz && i < 60; i++)
		out[j++] = (p[i] >= 0x20 && p[i] < 0x7f) ? p[i] : '?';
	out[j] = 0;
	return out;
}

static int fill(struct conn *c, char *dst, size_t room, size_t *got)
{
	if (now() > c->deadline)
		return fail(c, "deadline of %us passed", c->o->deadline);
	for (;;) {
		ssize_t k = recv(c->fd, dst, room, 0);
		if (k > 0) {
			*got = (size_t)k;
			return 0;
		}
		if (k == 0)
			return fail(c, "server closed the connection");
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return fail(c, "no answer within %us", c->o->timeout);
		return fail(c, "recv: %s", strerror(errno));
	}
}

static int send_all(struct conn *c, const char *p, size_t n)
{
	while (n) {
		ssize_t k = send(c->fd, p, n, MSG_NOSIGNAL);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return fail(c, "send blocked for %us", c->o->timeout);
			return fail(c, "send: %s", strerror(errno));
		}
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

/* A literal's length when the line (CRLF excluded) ends in {n}, {n+} or
 * ~{n}; -1 when it ends otherwise; -2 when it ends in a malformed or
 * oversized one. */
static int64_t literal_len(const char *line, size_t n)
{
	if (n < 3 || line[n - 1] != '}')
		return -1;
	size_t i = n - 1;
	if (i > 0 && line[i - 1] == '+')
		i--;
	size_t digits_end = i, digits = 0;
	while (i > 0 && line[i - 1] >= '0' && line[i - 1] <= '9' && digits < 20) {
		i--;
		digits++;
	}
	if (i == 0 || line[i - 1] != '{' || digits == 0 || digits > 10)
		return -2;
	uint64_t v = 0;
	for (size_t j = i; j < digits_end; j++)
		v = v * 10 + (uint64_t)(line[j] - '0');
	return v > LIT_MAX ? -2 : (int64_t)v;
}

/* Reads one whole response: its lines and the literals between them. */
static int read_response(struct conn *c, struct resp *r)
{
	bool first = true;
	size_t scan = c->pos;
	r->len = 0;
	r->head_len = 0;
	for (;;) {
		char *nl = memchr(c->buf + scan, '\n', c->end - scan);
		if (!nl) {
			if (c->end - c->pos >= LINE_MAX_BYTES)
				return fail(c, "a response line longer than %d bytes", LINE_MAX_BYTES);
			if (c->end == BUF_SIZE) {
				size_t n = c->end - c->pos;
				memmove(c->buf, c->buf + c->pos, n);
				scan -= c->pos;
				c->pos = 0;
				c->end = n;
			}
			size_t got;
			if (fill(c, c->buf + c->end, BUF_SIZE - c->end, &got) < 0)
				return -1;
			scan = c->end;
			c->end += got;
			continue;
		}
		const char *line = c->buf + c->pos;
		size_t n = (size_t)(nl - line);
		char tmp[64];
		if (n == 0 || line[n - 1] != '\r')
			return fail(c, "a line not ended by CRLF: %s", show(line, n, tmp, sizeof(tmp)));
		n--;
		if (first) {
			r->head_len = n < sizeof(r->head) ? n : sizeof(r->head);
			memcpy(r->head, line, r->head_len);
			first = false;
		}
		r->len += n + 2;
		int64_t lit = literal_len(line, n);
		c->pos = scan = (size_t)(nl + 1 - c->buf);
		if (lit == -1)
			return 0;
		if (lit == -2)
			return fail(c, "a malformed or oversized literal length: %s", show(line, n, tmp, sizeof(tmp)));
		uint64_t left = (uint64_t)lit;
		r->len += left;
		if (c->end - c->pos >= left) {
			c->pos += left;
		} else {
			/* Received and dropped: the buffer is reused from its start,
			 * and whatever follows the literal stays in it. */
			left -= c->end - c->pos;
			c->pos = c->end = 0;
			for (;;) {
				size_t got;
				if (fill(c, c->buf, BUF_SIZE, &got) < 0)
					return -1;
				if (got > left) {
					c->pos = left;
					c->end = got;
					break;
				}
				left -= got;
				if (!left)
					break;
			}
		}
		scan = c->pos;
	}
}

static bool starts(const struct resp *r, const char *s)
{
	size_t n = strlen(s);
	return r->head_len >= n && memcmp(r->head, s, n) == 0;
}

/* "* 123 FETCH " */
static bool is_fetch(const struct resp *r)
{
	size_t i = 2;
	if (!starts(r, "* "))
		return false;
	while (i < r->head_len && r->head[i] >= '0' && r->head[i] <= '9')
		i++;
	return i > 2 && r->head_len - i >= 7 && memcmp(r->head + i, " FETCH ", 7) == 0;
}

/* Reads responses up to the tagged one for tag, which must be OK.  Untagged
 * responses may be anything but BYE; FETCHes are counted when count. */
static int await_tagged(struct conn *c, const char *tag, bool count)
{
	size_t tl = strlen(tag);
	char tmp[64];
	for (;;) {
		struct resp r;
		if (read_response(c, &r) < 0)
			return -1;
		if (starts(&r, "* ")) {
			if (starts(&r, "* BYE"))
				return fail(c, "server said: %s", show(r.head, r.head_len, tmp, sizeof(tmp)));
			if (count && is_fetch(&r)) {
				c->bodies++;
				c->bytes += r.len - 2;
			}
			continue;
		}
		if (r.head_len > tl && memcmp(r.head, tag, tl) == 0 && r.head[tl] == ' ') {
			if (r.head_len >= tl + 3 && memcmp(r.head + tl + 1, "OK", 2) == 0 &&
			    (r.head_len == tl + 3 || r.head[tl + 3] == ' '))
				return 0;
			return fail(c, "%s", show(r.head, r.head_len, tmp, sizeof(tmp)));
		}
		return fail(c, "unexpected response (waiting for %s): %s", tag,
			    show(r.head, r.head_len, tmp, sizeof(tmp)));
	}
}

/* A quoted string, or -1 when s does not fit or holds CR, LF or NUL. */
static int quote(char *out, size_t outsz, const char *s)
{
	size_t j = 0;
	if (outsz < 3)
		return -1;
	out[j++] = '"';
	for (; *s; s++) {
		if (*s == '\r' || *s == '\n' || j + 4 > outsz)
			return -1;
		if (*s == '"' || *s == '\\')
			out[j++] = '\\';
		out[j++] = *s;
	}
	out[j++] = '"';
	out[j] = 0;
	return 0;
}

static int dial(struct conn *c)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai;
	int e = getaddrinfo(c->o->host, c->o->port, &hints, &ai);
	if (e)
		return fail(c, "%s: %s", c->o->host, gai_strerror(e));
	c->fd = -1;
	for (struct addrinfo *p = ai; p; p = p->ai_next) {
		int fd = socket(p->ai_family, p->ai_socktype | SOCK_CLOEXEC, p->ai_protocol);
		if (fd < 0)
			continue;
		struct timeval tv = { .tv_sec = (time_t)c->o->timeout };
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (connect(fd, p->ai_addr, p->ai_addrlen) == 0) {
			c->fd = fd;
			break;
		}
		close(fd);
	}
	freeaddrinfo(ai);
	if (c->fd < 0)
		return fail(c, "cannot connect to %s port %s", c->o->host, c->o->port);
	return 0;
}

static int setup(struct conn *c)
{
	const struct opts *o = c->o;
	char u[512], p[512], m[512], cmd[1700], tmp[64];
	if (quote(u, sizeof(u), o->user) < 0 || quote(p, sizeof(p), o->password) < 0 ||
	    quote(m, sizeof(m), o->mailbox) < 0)
		return fail(c, "user, password or mailbox too long or with CR/LF");
	if (dial(c) < 0)
		return -1;
	struct resp r;
	if (read_response(c, &r) < 0)
		return -1;
	if (!starts(&r, "* OK"))
		return fail(c, "greeting: %s", show(r.head, r.head_len, tmp, sizeof(tmp)));
	snprintf(cmd, sizeof(cmd), "l LOGIN %s %s\r\n", u, p);
	if (send_all(c, cmd, strlen(cmd)) < 0 || await_tagged(c, "l", false) < 0)
		return -1;
	/* EXAMINE, as imap-bench.py's Python clients do: fetches that set no
	 * \Seen and no write to the server. */
	snprintf(cmd, sizeof(cmd), "e EXAMINE %s\r\n", m);
	if (send_all(c, cmd, strlen(cmd)) < 0 || await_tagged(c, "e", false) < 0)
		return -1;
	return 0;
}

static int fetch_all(struct conn *c)
{
	const struct opts *o = c->o;
	uint64_t span = (uint64_t)c->hi - c->lo + 1;
	uint64_t per_round = (span + o->chunk - 1) / o->chunk;
	uint64_t total = per_round * o->rounds, sent = 0, done = 0;
	char cmd[256], tag[32];
	while (done < total) {
		while (sent < total && sent - done < o->pipeline) {
			uint64_t k = sent % per_round;
			uint64_t lo = c->lo + k * o->chunk;
			uint64_t hi = lo + o->chunk - 1 > c->hi ? c->hi : lo + o->chunk - 1;
			int n = snprintf(cmd, sizeof(cmd), "f%" PRIu64 " UID FETCH %" PRIu64 ":%" PRIu64
				" %s\r\n", sent, lo, hi, o->items);
			if (send_all(c, cmd, (size_t)n) < 0)
				return -1;
			sent++;
		}
		snprintf(tag, sizeof(tag), "f%" PRIu64, done);
		if (await_tagged(c, tag, true) < 0)
			return -1;
		done++;
	}
	return 0;
}

static void *worker(void *arg)
{
	struct conn *c = arg;
	c->buf = malloc(BUF_SIZE);
	c->fd = -1;
	c->deadline = now() + c->o->deadline;
	if (!c->buf)
		fail(c, "out of memory");
	else
		setup(c);
	if (c->failed) {
		pthread_mutex_lock(&fail_lock);
		any_failed = true;
		pthread_mutex_unlock(&fail_lock);
	}
	/* Every connection is logged in before the clock starts: the figure is
	 * FETCH throughput, not connection set-up. */
	if (pthread_barrier_wait(&ready) == PTHREAD_BARRIER_SERIAL_THREAD)
		t_start = now();
	pthread_barrier_wait(&ready);
	pthread_mutex_lock(&fail_lock);
	bool stop = any_failed;
	pthread_mutex_unlock(&fail_lock);
	if (!stop && fetch_all(c) == 0) {
		c->t_end = now();
		/* Not timed: LOGOUT's answer is not waited for beyond its BYE. */
		send_all(c, "z LOGOUT\r\n", 10);
	}
	if (c->fd >= 0)
		close(c->fd);
	free(c->buf);
	c->buf = NULL;
	return NULL;
}

static int parse_uint(const char *s, unsigned long max, unsigned *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || end == s || *end || v > max || s[0] == '-')
		return -1;
	*out = (unsigned)v;
	return 0;
}

static int parse_range(const char *s, uint32_t *lo, uint32_t *hi)
{
	char *end;
	if (s[0] < '0' || s[0] > '9')
		return -1;
	errno = 0;
	unsigned long a = strtoul(s, &end, 10);
	if (errno || *end != ':' || end[1] < '0' || end[1] > '9')
		return -1;
	unsigned long b = strtoul(end + 1, &end, 10);
	if (errno || *end || a == 0 || a > UINT32_MAX || b > UINT32_MAX || b < a)
		return -1;
	*lo = (uint32_t)a;
	*hi = (uint32_t)b;
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: imap-fetch-load --port P --user U --password PW --mailbox M "
		"[--host H] [--rounds R] [--chunk C] [--pipeline K] [--items ITEMS] "
		"[--timeout S] [--deadline S] LO:HI...\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct opts o = { .host = "127.0.0.1", .items = "(BODY.PEEK[])", .rounds = 1, .chunk = 50,
			  .pipeline = 1, .timeout = 60, .deadline = 1800 };
	int i = 1;
	for (; i < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
		const char *k = argv[i] + 2, *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v)
			usage();
		unsigned *num = NULL;
		unsigned long max = 0;
		if (!strcmp(k, "host"))
			o.host = v;
		else if (!strcmp(k, "port"))
			o.port = v;
		else if (!strcmp(k, "user"))
			o.user = v;
		else if (!strcmp(k, "password"))
			o.password = v;
		else if (!strcmp(k, "mailbox"))
			o.mailbox = v;
		else if (!strcmp(k, "items"))
			o.items = v;
		else if (!strcmp(k, "rounds"))
			num = &o.rounds, max = 1000000;
		else if (!strcmp(k, "chunk"))
			num = &o.chunk, max = 100000;
		else if (!strcmp(k, "pipeline"))
			num = &o.pipeline, max = 1000;
		else if (!strcmp(k, "timeout"))
			num = &o.timeout, max = 3600;
		else if (!strcmp(k, "deadline"))
			num = &o.deadline, max = 86400;
		else
			usage();
		if (num && (parse_uint(v, max, num) < 0 || *num == 0)) {
			fprintf(stderr, "imap-fetch-load: --%s wants 1..%lu\n", k, max);
			return 2;
		}
	}
	if (!o.port || !o.user || !o.password || !o.mailbox || i >= argc)
		usage();
	if (strlen(o.items) > 128 || strpbrk(o.items, "\r\n")) {
		fprintf(stderr, "imap-fetch-load: --items too long or with CR/LF\n");
		return 2;
	}
	size_t n = (size_t)(argc - i);
	if (n > MAX_CONNS) {
		fprintf(stderr, "imap-fetch-load: at most %d connections\n", MAX_CONNS);
		return 2;
	}
	struct conn *cs = calloc(n, sizeof(*cs));
	if (!cs) {
		fprintf(stderr, "imap-fetch-load: out of memory\n");
		return 1;
	}
	for (size_t j = 0; j < n; j++) {
		cs[j].o = &o;
		if (parse_range(argv[i + (int)j], &cs[j].lo, &cs[j].hi) < 0) {
			fprintf(stderr, "imap-fetch-load: bad range %s (want LO:HI, 1 <= LO <= HI)\n",
				argv[i + (int)j]);
			free(cs);
			return 2;
		}
	}
	pthread_barrier_init(&ready, NULL, (unsigned)n);
	size_t started = 0;
	for (; started < n; started++) {
		if (pthread_create(&cs[started].thread, NULL, worker, &cs[started]) != 0)
			break;
	}
	if (started < n) {
		/* The barrier counts n threads: those started would wait for ever. */
		fprintf(stderr, "imap-fetch-load: cannot start thread %zu of %zu\n", started + 1, n);
		_exit(1);
	}
	int rc = 0;
	uint64_t bodies = 0, bytes = 0;
	double t_end = 0;
	for (size_t j = 0; j < n; j++) {
		pthread_join(cs[j].thread, NULL);
		if (cs[j].failed && !rc) {
			fprintf(stderr, "imap-fetch-load: connection %zu (%" PRIu32 ":%" PRIu32 "): %s\n",
				j + 1, cs[j].lo, cs[j].hi, cs[j].err);
			rc = 1;
		}
		bodies += cs[j].bodies;
		bytes += cs[j].bytes;
		if (cs[j].t_end > t_end)
			t_end = cs[j].t_end;
	}
	pthread_barrier_destroy(&ready);
	free(cs);
	if (rc)
		return rc;
	printf("bodies %" PRIu64 " bytes %" PRIu64 " seconds %.6f\n", bodies, bytes, t_end - t_start);
	return 0;
}

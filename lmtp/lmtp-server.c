/* The LMTP server: listener, connections, commands and deliveries through
 * the seam (see lmtp-server.h; parsing is in lmtp-parse.c). */
#include "lmtp/lmtp-server.h"

#include <errno.h>
#include <ev.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/clock.h"
#include "lib/config.h"
#include "lib/listen.h"
#include "lib/log.h"
#include "lib/passwd.h"
#include "storage/storage-users.h"
#include "lib/xalloc.h"
#include "lmtp/lmtp-parse.h"
#include "replicator/repl.h"
#include "storage/storage.h"

/* Replies queued beyond this stop the reading of further commands until
 * the client reads them (a pipelining client that never reads). */
#define OUT_HIGH (64 * 1024)
#define READ_CHUNK 16384
/* Bad commands in a row before the connection is closed. */
#define MAX_ERRORS 20

struct lmtp_rcpt {
	char *addr;
	char *user;
	char *detail;
};

enum conn_state {
	ST_CMD,
	ST_DATA,
	ST_DELIVER,  /* the seam has the recipients' copies; input waits */
	ST_CLOSE,    /* flush the replies, then close */
};

struct lmtp_conn {
	struct lmtp_server *srv;  /* NULL once the server is gone */
	struct lmtp_conn *prev, *next;
	int fd;
	ev_io rio, wio;
	ev_timer idle;
	char peer[80];
	struct buf in, out;
	enum conn_state state;
	bool skipping;  /* discarding an overlong command line */
	bool dead;      /* closed; freed when the seam call returns */
	bool in_flight; /* a seam call has this connection as context */
	unsigned errors;
	bool lhlo, have_mail;
	char *sender;
	struct lmtp_rcpt rcpts[LMTP_MAX_RCPTS];
	size_t rcpt_count;
	struct buf msg;
	struct lmtp_data data;
	size_t cur;     /* recipient being delivered */
	struct guid mailbox_guid;
	struct repl_append req;
};

struct lmtp_server {
	struct ev_loop *loop;
	const struct config *cfg;
	struct repl *repl;
	int listen_fd;
	ev_io listen_io;
	ev_timer accept_retry;
	char *socket_path;  /* unlinked at the end */
	char hostname[256];
	double idle_timeout;
	struct lmtp_conn *conns;
	unsigned conn_count;
};

static void conn_process(struct lmtp_conn *c);
static void conn_update_io(struct lmtp_conn *c);

static void reply(struct lmtp_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply(struct lmtp_conn *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	buf_vappendf(&c->out, fmt, ap);
	va_end(ap);
	buf_append(&c->out, "\r\n", 2);
}

/* Text from elsewhere (the seam's error messages) on one reply line. */
static void reply_text_clean(char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
			*s = ' ';
}

static void txn_reset(struct lmtp_conn *c)
{
	free(c->sender);
	c->sender = NULL;
	for (size_t i = 0; i < c->rcpt_count; i++) {
		free(c->rcpts[i].addr);
		free(c->rcpts[i].user);
		free(c->rcpts[i].detail);
	}
	c->rcpt_count = 0;
	c->have_mail = false;
	buf_free(&c->msg);
}

static void conn_free_final(struct lmtp_conn *c)
{
	txn_reset(c);
	buf_free(&c->in);
	buf_free(&c->out);
	free(c);
}

/* Closes the connection; the memory goes now, or when the seam call in
 * flight comes back. */
static void conn_close(struct lmtp_conn *c)
{
	if (c->dead)
		return;
	c->dead = true;
	struct lmtp_server *srv = c->srv;
	if (srv != NULL) {
		ev_io_stop(srv->loop, &c->rio);
		ev_io_stop(srv->loop, &c->wio);
		ev_timer_stop(srv->loop, &c->idle);
		if (c->prev != NULL)
			c->prev->next = c->next;
		else
			srv->conns = c->next;
		if (c->next != NULL)
			c->next->prev = c->prev;
		srv->conn_count--;
		c->srv = NULL;
	}
	close(c->fd);
	c->fd = -1;
	if (!c->in_flight)
		conn_free_final(c);
}

/* Writes what it can; returns false when the connection was closed. */
static bool conn_flush(struct lmtp_conn *c)
{
	while (buf_avail(&c->out) > 0) {
		ssize_t n = write(c->fd, buf_rptr(&c->out), buf_avail(&c->out));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			log_debug("lmtp %s: write: %s", c->peer, strerror(errno));
			conn_close(c);
			return false;
		}
		buf_consume(&c->out, (size_t)n);
	}
	if (buf_avail(&c->out) == 0 && c->state == ST_CLOSE) {
		conn_close(c);
		return false;
	}
	conn_update_io(c);
	return true;
}

static void conn_update_io(struct lmtp_conn *c)
{
	struct ev_loop *loop = c->srv->loop;
	bool want_read = (c->state == ST_CMD || c->state == ST_DATA) &&
			 buf_avail(&c->out) < OUT_HIGH;
	if (want_read && !ev_is_active(&c->rio))
		ev_io_start(loop, &c->rio);
	else if (!want_read && ev_is_active(&c->rio))
		ev_io_stop(loop, &c->rio);
	bool want_write = buf_avail(&c->out) > 0;
	if (want_write && !ev_is_active(&c->wio))
		ev_io_start(loop, &c->wio);
	else if (!want_write && ev_is_active(&c->wio))
		ev_io_stop(loop, &c->wio);
	/* No idle limit while the seam works for us. */
	if (c->state == ST_DELIVER)
		ev_timer_stop(loop, &c->idle);
	else if (!ev_is_active(&c->idle))
		ev_timer_again(loop, &c->idle);
}

/* ---- users ---- */

struct user_find {
	const char *want[2];  /* user@domain (or NULL), user */
	/* The file's spelling of each: an exact match, else the first one
	 * equal but for case (MTAs change the case of addresses). */
	char *found[2];
	bool exact[2];
};

static void user_find_cb(void *ctx, const char *name)
{
	struct user_find *f = ctx;
	for (int i = 0; i < 2; i++) {
		if (f->want[i] == NULL || f->exact[i] || strcasecmp(name, f->want[i]) != 0)
			continue;
		bool exact = strcmp(name, f->want[i]) == 0;
		if (f->found[i] != NULL && !exact)
			continue;
		free(f->found[i]);
		f->found[i] = xstrdup(name);
		f->exact[i] = exact;
	}
}

/* The user a recipient names: "user@domain" when the users file has that
 * name, else "user" (the domain ignored) when it has that.  1 with
 * *name_r (caller frees), 0 unknown, -1 the file cannot be read. */
static int user_lookup(const struct config *cfg, struct stor_db *db, const char *user,
		       const char *domain, char **name_r)
{
	char *full = domain[0] != '\0' ? xasprintf("%s@%s", user, domain) : NULL;
	struct user_find f = { { full, user }, { NULL, NULL }, { false, false } };
	char *err = NULL;
	int r = 0;
	if (passwd_list(cfg->users_file, user_find_cb, &f, &err) < 0) {
		log_errorx("lmtp: %s", err);
		free(err);
		r = -1;
	} else {
		for (int i = 0; i < 2 && r == 0; i++) {
			if (f.found[i] != NULL && passwd_user_name_valid(f.found[i])) {
				*name_r = f.found[i];
				f.found[i] = NULL;
				r = 1;
			}
			/* Then the cluster's users (SPEC.md 7.5), by exact name. */
			if (r == 0 && f.want[i] != NULL && f.found[i] == NULL) {
				struct stor_cuser cu;
				const char *serr;
				int cr = stor_cuser_get(db, f.want[i], &cu, &serr);
				if (cr < 0) {
					log_errorx("lmtp: user table: %s", serr);
					r = -1;
				} else if (cr > 0) {
					if (cu.hash != NULL) {
						*name_r = xstrdup(f.want[i]);
						r = 1;
					}
					stor_cuser_free(&cu);
				}
			}
		}
	}
	free(f.found[0]);
	free(f.found[1]);
	free(full);
	return r;
}

/* ---- delivery ---- */

static void deliver_next(struct lmtp_conn *c);

static void rcpt_result(struct lmtp_conn *c, const struct repl_result *res)
{
	struct lmtp_rcpt *r = &c->rcpts[c->cur];
	char *msg = xstrdup(res->error_msg != NULL ? res->error_msg : "");
	reply_text_clean(msg);
	switch (res->error) {
	case REPL_OK:
		reply(c, "250 2.0.0 <%s> delivered", r->addr);
		break;
	case REPL_ERR_TOOBIG:
		reply(c, "552 5.3.4 <%s> message too large", r->addr);
		break;
	case REPL_ERR_LIMIT:
		reply(c, "552 5.2.2 <%s> mailbox full: %s", r->addr, msg);
		break;
	case REPL_ERR_UNAVAILABLE:
		/* Not as replicated as promised: the MTA keeps it queued. */
		reply(c, "451 4.3.0 <%s> not enough replicas: %s", r->addr, msg);
		break;
	default:
		reply(c, "451 4.3.0 <%s> temporary failure: %s", r->addr, msg);
		break;
	}
	if (res->error == REPL_OK)
		log_info("lmtp: delivered %zu bytes to %s uid %u", c->msg.len, r->user, res->uid);
	else
		log_warnx("lmtp: delivery to %s failed: %s", r->user, msg);
	free(msg);
}

static void appended(void *ctx, const struct repl_result *res)
{
	struct lmtp_conn *c = ctx;
	c->in_flight = false;
	if (c->dead) {
		conn_free_final(c);
		return;
	}
	rcpt_result(c, res);
	c->cur++;
	deliver_next(c);
}

static void defaults_done(void *ctx, const struct repl_result *res)
{
	struct lmtp_conn *c = ctx;
	c->in_flight = false;
	if (c->dead) {
		conn_free_final(c);
		return;
	}
	if (res->error != REPL_OK) {
		rcpt_result(c, res);
		c->cur++;
		deliver_next(c);
		return;
	}
	struct lmtp_server *srv = c->srv;
	struct lmtp_rcpt *r = &c->rcpts[c->cur];
	struct stor_db *db = repl_db(srv->repl);
	struct stor_mailbox mb;
	const char *err = NULL;
	int found = 0;
	if (srv->cfg->lmtp_detail_mailbox && r->detail[0] != '\0' &&
	    strcasecmp(r->detail, "INBOX") != 0)
		found = stor_mailbox_get(db, r->user, r->detail, &mb, &err);
	if (found == 0)
		found = stor_mailbox_get(db, r->user, "INBOX", &mb, &err);
	if (found <= 0) {
		struct repl_result fail = { .error = REPL_ERR_INTERNAL,
					    .error_msg = found < 0 ? err : "no INBOX" };
		rcpt_result(c, &fail);
		c->cur++;
		deliver_next(c);
		return;
	}
	c->mailbox_guid = mb.guid;
	stor_mailbox_free(&mb);
	memset(&c->req, 0, sizeof(c->req));
	c->req.internaldate = clock_wall_s();
	c->req.text = c->msg.data != NULL ? (const void *)c->msg.data : "";
	c->req.text_len = c->msg.len;
	c->in_flight = true;
	repl_append(srv->repl, r->user, &c->mailbox_guid, &c->req, appended, c);
}

/* One recipient at a time, in order: the replies go out in RCPT order
 * (RFC 2033 4.2), and a new user's default mailboxes are created once. */
static void deliver_next(struct lmtp_conn *c)
{
	if (c->cur < c->rcpt_count) {
		c->in_flight = true;
		repl_user_ensure_defaults(c->srv->repl, c->rcpts[c->cur].user, defaults_done, c);
		return;
	}
	txn_reset(c);
	c->state = ST_CMD;
	if (conn_flush(c))
		conn_process(c);
}

static void data_done(struct lmtp_conn *c)
{
	if (c->data.too_big) {
		for (size_t i = 0; i < c->rcpt_count; i++)
			reply(c, "552 5.3.4 <%s> message too large", c->rcpts[i].addr);
		txn_reset(c);
		c->state = ST_CMD;
		return;
	}
	c->state = ST_DELIVER;
	c->cur = 0;
	conn_update_io(c);
	deliver_next(c);
}

/* ---- commands ---- */

static void cmd_lhlo(struct lmtp_conn *c, const char *args)
{
	if (args[0] == '\0') {
		reply(c, "501 5.5.4 LHLO needs a host name");
		return;
	}
	txn_reset(c);
	c->lhlo = true;
	reply(c, "250-%s", c->srv->hostname);
	reply(c, "250-PIPELINING");
	reply(c, "250-ENHANCEDSTATUSCODES");
	reply(c, "250-8BITMIME");
	reply(c, "250 SIZE %llu", (unsigned long long)c->srv->cfg->max_message_size);
}

static void cmd_mail(struct lmtp_conn *c, const char *args)
{
	char addr[LMTP_MAX_ADDR + 1];
	const char *params, *bad;
	uint64_t size;
	if (!c->lhlo) {
		reply(c, "503 5.5.1 Send LHLO first");
		return;
	}
	if (c->have_mail) {
		reply(c, "503 5.5.1 MAIL already given");
		return;
	}
	if (lmtp_parse_path(args, addr, sizeof(addr), &params) < 0) {
		reply(c, "501 5.5.4 Syntax: MAIL FROM:<address>");
		return;
	}
	if (lmtp_parse_mail_params(params, &size, &bad) < 0) {
		reply(c, "555 5.5.4 Unsupported parameter");
		return;
	}
	if (size > c->srv->cfg->max_message_size) {
		reply(c, "552 5.3.4 Message size exceeds fixed maximum message size");
		return;
	}
	c->sender = xstrdup(addr);
	c->have_mail = true;
	reply(c, "250 2.1.0 Sender OK");
}

static void cmd_rcpt(struct lmtp_conn *c, const char *args)
{
	char addr[LMTP_MAX_ADDR + 1];
	char user[LMTP_MAX_ADDR + 1], detail[LMTP_MAX_ADDR + 1], domain[LMTP_MAX_ADDR + 1];
	const char *params;
	if (!c->have_mail) {
		reply(c, "503 5.5.1 Need MAIL first");
		return;
	}
	if (c->rcpt_count >= LMTP_MAX_RCPTS) {
		reply(c, "452 4.5.3 Too many recipients");
		return;
	}
	if (lmtp_parse_path(args, addr, sizeof(addr), &params) < 0 || addr[0] == '\0') {
		reply(c, "501 5.5.4 Syntax: RCPT TO:<address>");
		return;
	}
	if (params[0] != '\0') {
		reply(c, "555 5.5.4 Unsupported parameter");
		return;
	}
	if (lmtp_split_rcpt(addr, user, detail, domain, sizeof(user)) < 0) {
		reply(c, "550 5.1.3 <%s> Bad recipient address syntax", addr);
		return;
	}
	char *name = NULL;
	int r = user_lookup(c->srv->cfg, repl_db(c->srv->repl), user, domain, &name);
	if (r < 0) {
		reply(c, "451 4.3.0 <%s> cannot read the users file", addr);
		return;
	}
	if (r == 0) {
		reply(c, "550 5.1.1 <%s> User unknown", addr);
		return;
	}
	struct lmtp_rcpt *rc = &c->rcpts[c->rcpt_count++];
	rc->addr = xstrdup(addr);
	rc->user = name;
	rc->detail = xstrdup(detail);
	reply(c, "250 2.1.5 <%s> OK", addr);
}

static void cmd_data(struct lmtp_conn *c, const char *args)
{
	if (args[0] != '\0') {
		reply(c, "501 5.5.4 DATA takes no arguments");
		return;
	}
	if (!c->have_mail) {
		reply(c, "503 5.5.1 Need MAIL first");
		return;
	}
	if (c->rcpt_count == 0) {
		/* RFC 2033 4.2 */
		reply(c, "503 5.5.1 No valid recipients");
		return;
	}
	buf_free(&c->msg);
	buf_appendf(&c->msg, "Return-Path: <%s>\r\n", c->sender);
	uint64_t max = c->srv->cfg->max_message_size;
	lmtp_data_init(&c->data, &c->msg, max > c->msg.len ? max - c->msg.len : 0);
	c->state = ST_DATA;
	reply(c, "354 Start mail input; end with <CRLF>.<CRLF>");
}

static void handle_line(struct lmtp_conn *c, const char *line, size_t len)
{
	const char *args;
	if (len > LMTP_MAX_LINE) {
		reply(c, "500 5.5.2 Line too long");
		c->errors++;
		return;
	}
	if (strlen(line) != len) {
		reply(c, "500 5.5.2 NUL in command");
		c->errors++;
		return;
	}
	enum lmtp_cmd cmd = lmtp_cmd_parse(line, &args);
	size_t out_before = c->out.len;
	switch (cmd) {
	case LMTP_CMD_LHLO: cmd_lhlo(c, args); break;
	case LMTP_CMD_MAIL: cmd_mail(c, args); break;
	case LMTP_CMD_RCPT: cmd_rcpt(c, args); break;
	case LMTP_CMD_DATA: cmd_data(c, args); break;
	case LMTP_CMD_RSET:
		txn_reset(c);
		reply(c, "250 2.0.0 OK");
		break;
	case LMTP_CMD_NOOP: reply(c, "250 2.0.0 OK"); break;
	case LMTP_CMD_QUIT:
		reply(c, "221 2.0.0 Bye");
		c->state = ST_CLOSE;
		break;
	case LMTP_CMD_VRFY: reply(c, "252 2.5.0 Cannot VRFY user"); break;
	case LMTP_CMD_HELO: reply(c, "500 5.5.1 This is LMTP: use LHLO"); break;
	case LMTP_CMD_BDAT: reply(c, "502 5.5.1 Command not implemented"); break;
	case LMTP_CMD_UNKNOWN: reply(c, "500 5.5.2 Command unrecognized"); break;
	}
	/* A reply starting with 5 to a command is the client's fault. */
	if (c->out.len > out_before && c->out.data[out_before] == '5')
		c->errors++;
	else
		c->errors = 0;
}

static void conn_process(struct lmtp_conn *c)
{
	while (!c->dead && buf_avail(&c->out) < OUT_HIGH) {
		if (c->state == ST_DATA) {
			size_t used;
			int done = lmtp_data_feed(&c->data, buf_rptr(&c->in), buf_avail(&c->in), &used);
			buf_consume(&c->in, used);
			if (!done)
				break;
			data_done(c);
			continue;
		}
		if (c->state != ST_CMD)
			break;
		if (c->errors >= MAX_ERRORS) {
			reply(c, "421 4.7.0 Too many errors, closing");
			c->state = ST_CLOSE;
			break;
		}
		if (c->skipping) {
			const unsigned char *lf = memchr(buf_rptr(&c->in), '\n', buf_avail(&c->in));
			if (lf == NULL) {
				buf_consume(&c->in, buf_avail(&c->in));
				break;
			}
			buf_consume(&c->in, (size_t)(lf - buf_rptr(&c->in)) + 1);
			c->skipping = false;
			reply(c, "500 5.5.2 Line too long");
			c->errors++;
			continue;
		}
		size_t len;
		char *line = buf_getline(&c->in, &len);
		if (line == NULL) {
			if (buf_avail(&c->in) > LMTP_MAX_LINE) {
				buf_consume(&c->in, buf_avail(&c->in));
				c->skipping = true;
			}
			break;
		}
		handle_line(c, line, len);
	}
	if (!c->dead)
		conn_flush(c);
}

static void read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct lmtp_conn *c = w->data;
	unsigned char *p = buf_reserve(&c->in, READ_CHUNK);
	ssize_t n = read(c->fd, p, READ_CHUNK);
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return;
		log_debug("lmtp %s: read: %s", c->peer, strerror(errno));
		conn_close(c);
		return;
	}
	if (n == 0) {
		/* Whatever was not finished (a DATA without its end) is not
		 * delivered; the MTA saw no reply and retries. */
		conn_close(c);
		return;
	}
	buf_commit(&c->in, (size_t)n);
	ev_timer_again(loop, &c->idle);
	conn_process(c);
}

static void write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct lmtp_conn *c = w->data;
	bool was_full = buf_avail(&c->out) >= OUT_HIGH;
	if (conn_flush(c) && was_full)
		conn_process(c);
}

static void idle_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct lmtp_conn *c = w->data;
	if (c->state == ST_DELIVER)
		return;
	log_info("lmtp %s: idle timeout", c->peer);
	/* Best effort: the client may not read at all. */
	static const char msg[] = "421 4.4.2 Idle timeout, closing\r\n";
	if (write(c->fd, msg, sizeof(msg) - 1) < 0) {
		/* closing anyway */
	}
	conn_close(c);
}

static void conn_create(struct lmtp_server *srv, int fd, const char *peer)
{
	if (srv->conn_count >= LMTP_MAX_CONNS) {
		static const char msg[] = "421 4.3.2 Too many connections\r\n";
		if (write(fd, msg, sizeof(msg) - 1) < 0) {
			/* closing anyway */
		}
		close(fd);
		return;
	}
	struct lmtp_conn *c = xcalloc(1, sizeof(*c));
	c->srv = srv;
	c->fd = fd;
	snprintf(c->peer, sizeof(c->peer), "%s", peer);
	buf_init(&c->in);
	buf_init(&c->out);
	buf_init(&c->msg);
	ev_io_init(&c->rio, read_cb, fd, EV_READ);
	ev_io_init(&c->wio, write_cb, fd, EV_WRITE);
	ev_init(&c->idle, idle_cb);
	c->idle.repeat = srv->idle_timeout;
	c->rio.data = c->wio.data = c->idle.data = c;
	c->next = srv->conns;
	if (srv->conns != NULL)
		srv->conns->prev = c;
	srv->conns = c;
	srv->conn_count++;
	reply(c, "220 %s LMTP Starling ready", srv->hostname);
	conn_flush(c);
}

/* ---- listener ---- */

static void accept_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct lmtp_server *srv = w->data;
	ev_io_start(loop, &srv->listen_io);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct lmtp_server *srv = w->data;
	for (int n = 0; n < 32; n++) {
		struct sockaddr_storage ss;
		int fd = listen_accept(w->fd, &ss);
		if (fd == LISTEN_DRAINED)
			return;
		if (fd < 0) {
			/* EMFILE and friends: pause instead of spinning. */
			log_warn("lmtp: accept");
			ev_io_stop(loop, &srv->listen_io);
			ev_timer_set(&srv->accept_retry, 0.5, 0.);
			ev_timer_start(loop, &srv->accept_retry);
			return;
		}
		char peer[80] = "local";
		if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
			int one = 1;
			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			char host[64], port[16];
			if (getnameinfo((struct sockaddr *)&ss, sizeof(ss), host, sizeof(host), port,
					sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV) == 0)
				snprintf(peer, sizeof(peer), "%s:%s", host, port);
		}
		conn_create(srv, fd, peer);
	}
}

/* The shared listener, with lmtp_listen named in its error. */
static int listen_lmtp_tcp(const struct config_addr *addr, char **error_r)
{
	char *err;
	int fd = listen_tcp(addr, &err);
	if (fd < 0) {
		*error_r = xasprintf("lmtp_listen %s", err);
		free(err);
	}
	return fd;
}

static int listen_unix(const char *path, char **error_r)
{
	struct sockaddr_un sun;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		*error_r = xasprintf("lmtp_listen %s: path too long", path);
		return -1;
	}
	memcpy(sun.sun_path, path, strlen(path) + 1);
	/* A socket left by a node that did not stop cleanly; anything else
	 * at that path is not ours to remove. */
	struct stat st;
	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
		unlink(path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		*error_r = xasprintf("lmtp_listen: socket: %s", strerror(errno));
		return -1;
	}
	/* The MTA runs as another user; who may connect is decided by the
	 * permissions of the directory holding the socket. */
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || chmod(path, 0666) < 0 ||
	    listen(fd, 128) < 0) {
		*error_r = xasprintf("lmtp_listen %s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

int lmtp_server_create(struct ev_loop *loop, const struct config *cfg, struct repl *repl,
		       struct lmtp_server **srv_r, char **error_r)
{
	*srv_r = NULL;
	if (cfg->lmtp_listen.host == NULL && cfg->lmtp_socket == NULL)
		return 0;
	if (cfg->users_file == NULL) {
		*error_r = xstrdup("lmtp_listen needs users_file");
		return -1;
	}
	int fd = cfg->lmtp_socket != NULL ? listen_unix(cfg->lmtp_socket, error_r) :
					    listen_lmtp_tcp(&cfg->lmtp_listen, error_r);
	if (fd < 0)
		return -1;
	struct lmtp_server *srv = xcalloc(1, sizeof(*srv));
	srv->loop = loop;
	srv->cfg = cfg;
	srv->repl = repl;
	srv->listen_fd = fd;
	srv->idle_timeout = LMTP_IDLE_TIMEOUT;
	if (cfg->lmtp_socket != NULL)
		srv->socket_path = xstrdup(cfg->lmtp_socket);
	if (gethostname(srv->hostname, sizeof(srv->hostname) - 1) < 0 || srv->hostname[0] == '\0')
		snprintf(srv->hostname, sizeof(srv->hostname), "localhost");
	ev_io_init(&srv->listen_io, accept_cb, fd, EV_READ);
	srv->listen_io.data = srv;
	ev_init(&srv->accept_retry, accept_retry_cb);
	srv->accept_retry.data = srv;
	ev_io_start(loop, &srv->listen_io);
	*srv_r = srv;
	return 0;
}

void lmtp_server_set_idle_timeout(struct lmtp_server *srv, double seconds)
{
	srv->idle_timeout = seconds;
}

void lmtp_server_destroy(struct lmtp_server **srvp)
{
	struct lmtp_server *srv = *srvp;
	if (srv == NULL)
		return;
	*srvp = NULL;
	ev_io_stop(srv->loop, &srv->listen_io);
	ev_timer_stop(srv->loop, &srv->accept_retry);
	close(srv->listen_fd);
	if (srv->socket_path != NULL) {
		unlink(srv->socket_path);
		free(srv->socket_path);
	}
	while (srv->conns != NULL) {
		struct lmtp_conn *c = srv->conns;
		if (c->state != ST_DELIVER) {
			static const char msg[] = "421 4.3.2 Server shutting down\r\n";
			if (write(c->fd, msg, sizeof(msg) - 1) < 0) {
				/* closing anyway */
			}
		}
		conn_close(c);
	}
	free(srv);
}

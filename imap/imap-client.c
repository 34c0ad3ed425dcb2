/* One IMAP connection: socket and TLS I/O, input and output buffers with
 * back-pressure, the command loop, IDLE/AUTHENTICATE line modes, timeouts,
 * and deferred destruction.
 *
 * All work is driven from three watchers embedded in the client: the socket
 * (read and write readiness), a timer (inactivity) and an idle watcher
 * ("work") that runs the next step of the command loop.  Handlers never
 * call back into the loop directly; they write output and kick the work
 * watcher, so nothing recurses and a client is never freed while one of
 * its own callbacks is still on the stack. */
#include "imap/imap-private.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "lib/str.h"
#include "lib/xalloc.h"

/* An ID at RFC 2971's limits must fit before login: 30 pairs of 30-octet
 * names and 1024-octet values, quoted with every octet escaped (about 62 KB
 * of line), or sent as literals (about 32 KB in all). */
static const struct imap_parser_limits limits_preauth = {
	.max_line = 65536,
	.max_literal = 8192,
	.max_total = 98304,
	.max_args = 80,
	.max_depth = 2,
};

static void client_limits(const struct imap_client *c, struct imap_parser_limits *l)
{
	l->max_line = 65536;
	l->max_literal = c->server->cfg->max_message_size;
	l->max_total = c->server->cfg->max_message_size + 262144;
	l->max_args = 100000;
	l->max_depth = 16;
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void work_cb(struct ev_loop *loop, ev_idle *w, int revents);
static void client_update_io(struct imap_client *c);
static void client_free(struct imap_client *c);

#define CLIENT_OF(w, member) \
	((struct imap_client *)((char *)(w) - offsetof(struct imap_client, member)))

struct imap_client *imap_client_create(struct imap_server *srv, int fd, bool implicit_tls,
				       const char *peer, bool loopback)
{
	struct imap_client *c = xcalloc(1, sizeof(*c));
	c->server = srv;
	c->id = srv->next_id++;
	c->fd = fd;
	snprintf(c->peer, sizeof(c->peer), "%s", peer);
	c->loopback = loopback;
	buf_init(&c->in);
	buf_init(&c->out);
	c->parser = imap_parser_create(&limits_preauth);
	ev_io_init(&c->io, io_cb, fd, EV_READ);
	ev_init(&c->timer, timer_cb);
	ev_idle_init(&c->work, work_cb);
	c->next = srv->clients;
	if (srv->clients != NULL)
		srv->clients->prev = c;
	srv->clients = c;
	srv->client_count++;
	log_debug("imap[%016llx]: connection from %s%s", (unsigned long long)c->id, peer,
		  implicit_tls ? " (TLS)" : "");
	imap_client_reset_timer(c);
	if (implicit_tls) {
		c->greet_after_tls = true;
		if (imap_client_start_tls(c) < 0) {
			imap_client_destroy(c);
			return NULL;
		}
	} else {
		struct buf caps = BUF_INIT;
		imap_capabilities(c, &caps);
		imap_client_printf(c, "* OK [CAPABILITY %s] Starling ready\r\n", buf_cstr(&caps));
		buf_free(&caps);
	}
	client_update_io(c);
	return c;
}

bool imap_client_is_secure(const struct imap_client *c)
{
	return c->ssl != NULL && !c->tls_handshake;
}

bool imap_client_plaintext_ok(const struct imap_client *c)
{
	if (imap_client_is_secure(c))
		return true;
	switch (c->server->cfg->plaintext_auth) {
	case CONFIG_PLAINTEXT_ALWAYS:
		return true;
	case CONFIG_PLAINTEXT_LOOPBACK:
		return c->loopback;
	case CONFIG_PLAINTEXT_NEVER:
		return false;
	}
	return false;
}

void imap_client_reset_timer(struct imap_client *c)
{
	c->timer.repeat = c->state == IMAP_STATE_NOAUTH ? IMAP_TIMEOUT_PREAUTH : IMAP_TIMEOUT_AUTH;
	ev_timer_again(c->server->loop, &c->timer);
	if (c->state != IMAP_STATE_NOAUTH) {
		struct imap_parser_limits l;
		client_limits(c, &l);
		imap_parser_set_limits(c->parser, &l);
	}
}

/* Output not yet sent: out's bytes and the texts queued between them. */
static size_t out_avail(const struct imap_client *c)
{
	return buf_avail(&c->out) + (size_t)c->pieces_bytes;
}

size_t imap_client_out_pending(const struct imap_client *c)
{
	return out_avail(c);
}

static void pieces_release(struct imap_client *c, size_t from)
{
	for (size_t i = from; i < c->pieces.count; i++) {
		struct imap_out_piece *op = &c->pieces.items[i];
		c->pieces_bytes -= op->p.len - op->sent;
		stor_text_piece_release(&op->p);
	}
	c->pieces.count = from;
	if (c->pieces_next >= c->pieces.count) {
		c->pieces.count = 0;
		c->pieces_next = 0;
	}
}

bool imap_client_can_send_pieces(const struct imap_client *c)
{
	return c->ssl == NULL && !c->tls_handshake && !c->starttls_pending && !c->dead;
}

void imap_client_write_text(struct imap_client *c, struct stor_text_piece *p)
{
	if (!imap_client_can_send_pieces(c) || p->len == 0) {
		stor_text_piece_release(p);
		return;
	}
	struct imap_out_piece op = { c->out_sent + buf_avail(&c->out), *p, 0 };
	p->map = NULL;
	ARRAY_PUSH(&c->pieces, op);
	c->pieces_bytes += op.p.len;
	client_update_io(c);
}

struct imap_out_mark imap_client_out_mark(const struct imap_client *c)
{
	struct imap_out_mark m = { buf_avail(&c->out), c->pieces.count };
	return m;
}

void imap_client_out_truncate(struct imap_client *c, struct imap_out_mark mark)
{
	/* Nothing is sent between taking a mark and this: both are in one
	 * FETCH step. */
	buf_truncate(&c->out, mark.avail);
	if (mark.pieces < c->pieces.count)
		pieces_release(c, mark.pieces);
}

void imap_client_write(struct imap_client *c, const void *data, size_t len)
{
	if (c->dead)
		return;
	buf_append(&c->out, data, len);
	client_update_io(c);
}

void imap_client_printf(struct imap_client *c, const char *fmt, ...)
{
	if (c->dead)
		return;
	va_list ap;
	va_start(ap, fmt);
	buf_vappendf(&c->out, fmt, ap);
	va_end(ap);
	client_update_io(c);
}

void imap_client_kick(struct imap_client *c)
{
	if (!c->dead && !ev_is_active(&c->work))
		ev_idle_start(c->server->loop, &c->work);
}

void imap_client_close_after_output(struct imap_client *c)
{
	c->closing = true;
	client_update_io(c);
	imap_client_kick(c);
}

static bool want_read(const struct imap_client *c)
{
	if (c->closing || c->dead || c->input_eof)
		return false;
	if (c->tls_handshake)
		return true;
	return buf_avail(&c->in) < IMAP_IN_MAX && out_avail(c) < IMAP_OUT_HIGHWATER;
}

static void client_update_io(struct imap_client *c)
{
	if (c->dead)
		return;
	int events = 0;
	if (want_read(c))
		events |= EV_READ;
	if (out_avail(c) > 0 || c->tls_want_write)
		events |= EV_WRITE;
	if (events == 0) {
		ev_io_stop(c->server->loop, &c->io);
		return;
	}
	if (ev_is_active(&c->io) && (c->io.events & (EV_READ | EV_WRITE)) == events)
		return;
	ev_io_stop(c->server->loop, &c->io);
	ev_io_set(&c->io, c->fd, events);
	ev_io_start(c->server->loop, &c->io);
}

int imap_client_start_tls(struct imap_client *c)
{
	if (c->server->ssl_ctx == NULL)
		return -1;
	c->ssl = SSL_new(c->server->ssl_ctx);
	if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1)
		return -1;
	SSL_set_accept_state(c->ssl);
	c->tls_handshake = true;
	/* Anything pipelined after STARTTLS was sent in the clear: drop it so
	 * it can't be taken as coming over TLS. */
	buf_reset(&c->in);
	imap_parser_reset(c->parser);
	return 0;
}

static void log_tls_error(struct imap_client *c, const char *what)
{
	unsigned long e = ERR_get_error();
	char buf[200] = "";
	if (e != 0)
		ERR_error_string_n(e, buf, sizeof(buf));
	log_info("imap[%016llx]: %s: TLS %s failed %s", (unsigned long long)c->id, c->peer, what,
		 buf);
	ERR_clear_error();
}

/* True when a TLS call failed because the client went away: an EOF
 * without close_notify, or a reset (SSL_ERROR_SYSCALL with nothing on the
 * error queue).  That is how a port check or a client quitting ends; it is
 * logged at debug, and the error queue is cleared. */
static bool tls_client_gone(struct imap_client *c, int e, const char *what)
{
	unsigned long err = ERR_peek_error();
	bool gone = (e == SSL_ERROR_SYSCALL && err == 0) ||
		    (e == SSL_ERROR_SSL && ERR_GET_REASON(err) == SSL_R_UNEXPECTED_EOF_WHILE_READING);
	if (!gone)
		return false;
	log_debug("imap[%016llx]: %s: client gone during TLS %s", (unsigned long long)c->id,
		  c->peer, what);
	ERR_clear_error();
	return true;
}

/* Advances the TLS handshake.  Returns 1 done, 0 in progress, -1 failed. */
static int tls_handshake_step(struct imap_client *c)
{
	c->tls_want_write = false;
	int r = SSL_accept(c->ssl);
	if (r == 1) {
		c->tls_handshake = false;
		struct buf caps = BUF_INIT;
		if (c->greet_after_tls) {
			c->greet_after_tls = false;
			/* Implicit TLS: the greeting comes after the handshake. */
			imap_capabilities(c, &caps);
			imap_client_printf(c, "* OK [CAPABILITY %s] Starling ready\r\n",
					   buf_cstr(&caps));
		}
		buf_free(&caps);
		return 1;
	}
	int e = SSL_get_error(c->ssl, r);
	if (e == SSL_ERROR_WANT_READ)
		return 0;
	if (e == SSL_ERROR_WANT_WRITE) {
		c->tls_want_write = true;
		return 0;
	}
	if (!tls_client_gone(c, e, "handshake"))
		log_tls_error(c, "handshake");
	return -1;
}

/* Many clients (Python's imaplib among them) send the CRLF that ends an
 * APPEND literal as a separate small segment, which their Nagle algorithm
 * holds back until our ACK of the literal; delayed ACK would make every
 * APPEND wait ~40 ms for nothing.  Linux leaves quick-ACK mode by itself, so
 * it is set again after each read. */
static void ack_now(struct imap_client *c)
{
	int one = 1;
	(void)setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
}

/* Reads what is available.  Returns 0, or -1 when the connection is gone. */
static int client_read(struct imap_client *c)
{
	for (int rounds = 0; rounds < 16 && buf_avail(&c->in) < IMAP_IN_MAX; rounds++) {
		size_t room = IMAP_IN_MAX - buf_avail(&c->in);
		if (room > 16384)
			room = 16384;
		unsigned char *dst = buf_reserve(&c->in, room);
		ssize_t n;
		if (c->ssl != NULL) {
			int r = SSL_read(c->ssl, dst, (int)room);
			if (r > 0) {
				n = r;
			} else {
				int e = SSL_get_error(c->ssl, r);
				if (e == SSL_ERROR_WANT_READ)
					return 0;
				if (e == SSL_ERROR_WANT_WRITE) {
					c->tls_want_write = true;
					return 0;
				}
				/* A client that just closes its socket without a TLS
				 * close_notify (most do) is not an error worth info. */
				if (e != SSL_ERROR_ZERO_RETURN && !tls_client_gone(c, e, "read"))
					log_tls_error(c, "read");
				return -1;
			}
		} else {
			n = read(c->fd, dst, room);
			if (n < 0) {
				if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
					return 0;
				return -1;
			}
			if (n == 0)
				return -1;
		}
		buf_commit(&c->in, (size_t)n);
		ack_now(c);
		if ((size_t)n < room && (c->ssl == NULL || SSL_pending(c->ssl) == 0))
			return 0;
	}
	return 0;
}

/* Sends out's bytes and the queued texts in stream order with one
 * sendmsg() (plain connections only).  Returns 0, or -1 when the
 * connection is gone. */
static int flush_pieces(struct imap_client *c)
{
	for (int rounds = 0; rounds < 16 && out_avail(c) > 0; rounds++) {
		struct iovec iov[16];
		int n = 0;
		size_t total = 0, taken = 0;
		size_t k = c->pieces_next;
		while (n < 16 && total < 1048576) {
			/* out's bytes before piece k (all of them after the last) */
			size_t upto = buf_avail(&c->out);
			if (k < c->pieces.count)
				upto = (size_t)(c->pieces.items[k].at - c->out_sent);
			if (upto > taken) {
				iov[n].iov_base = (void *)(buf_rptr(&c->out) + taken);
				iov[n].iov_len = upto - taken;
				total += upto - taken;
				taken = upto;
				n++;
				continue;
			}
			if (k >= c->pieces.count)
				break;
			const struct imap_out_piece *op = &c->pieces.items[k++];
			iov[n].iov_base = (void *)(op->p.data + op->sent);
			iov[n].iov_len = op->p.len - op->sent;
			total += iov[n].iov_len;
			n++;
		}
		struct msghdr msg;
		memset(&msg, 0, sizeof(msg));
		msg.msg_iov = iov;
		msg.msg_iovlen = (size_t)n;
		ssize_t sent = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
		if (sent < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
				return 0;
			return -1;
		}
		/* Take what went out off the front, in the same order. */
		size_t left = (size_t)sent;
		while (left > 0) {
			size_t upto = buf_avail(&c->out);
			struct imap_out_piece *op = NULL;
			if (c->pieces_next < c->pieces.count) {
				op = &c->pieces.items[c->pieces_next];
				upto = (size_t)(op->at - c->out_sent);
			}
			if (upto > 0) {
				size_t m = upto < left ? upto : left;
				buf_consume(&c->out, m);
				c->out_sent += m;
				left -= m;
				continue;
			}
			if (op == NULL)
				break; /* cannot be: sent <= what was offered */
			size_t m = op->p.len - op->sent < left ? op->p.len - op->sent : left;
			op->sent += m;
			c->pieces_bytes -= m;
			left -= m;
			if (op->sent == op->p.len) {
				stor_text_piece_release(&op->p);
				if (++c->pieces_next == c->pieces.count) {
					c->pieces.count = 0;
					c->pieces_next = 0;
				}
			}
		}
		if ((size_t)sent < total)
			return 0;
	}
	return 0;
}

/* Writes queued output.  Returns 0, or -1 when the connection is gone. */
static int client_flush(struct imap_client *c)
{
	c->tls_want_write = false;
	if (c->pieces.count > 0) {
		if (flush_pieces(c) < 0)
			return -1;
	}
	for (int rounds = 0; rounds < 16 && buf_avail(&c->out) > 0 && c->pieces.count == 0;
	     rounds++) {
		size_t len = buf_avail(&c->out);
		if (len > 262144)
			len = 262144;
		ssize_t n;
		if (c->ssl != NULL) {
			int r = SSL_write(c->ssl, buf_rptr(&c->out), (int)len);
			if (r <= 0) {
				int e = SSL_get_error(c->ssl, r);
				if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
					return 0;
				if (!tls_client_gone(c, e, "write"))
					log_tls_error(c, "write");
				return -1;
			}
			n = r;
		} else {
			n = send(c->fd, buf_rptr(&c->out), len, MSG_NOSIGNAL);
			if (n < 0) {
				if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
					return 0;
				return -1;
			}
		}
		buf_consume(&c->out, (size_t)n);
		c->out_sent += (uint64_t)n;
	}
	/* One big FETCH literal must not pin its buffer for the rest of a
	 * long session. */
	if (buf_avail(&c->out) == 0 && c->out.cap > 4 * IMAP_OUT_HIGHWATER) {
		buf_free(&c->out);
		buf_init(&c->out);
	}
	if (c->starttls_pending && out_avail(c) == 0) {
		c->starttls_pending = false;
		if (imap_client_start_tls(c) < 0)
			return -1;
		return tls_handshake_step(c) < 0 ? -1 : 0;
	}
	return 0;
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct imap_client *c = CLIENT_OF(w, io);
	if (c->tls_handshake) {
		int r = tls_handshake_step(c);
		if (r < 0) {
			imap_client_destroy(c);
			return;
		}
		if (r == 0) {
			client_update_io(c);
			return;
		}
	}
	if ((revents & EV_WRITE) || c->tls_want_write) {
		if (client_flush(c) < 0) {
			imap_client_destroy(c);
			return;
		}
	}
	if ((revents & EV_READ) && want_read(c)) {
		size_t before = buf_avail(&c->in);
		if (client_read(c) < 0) {
			if (buf_avail(&c->in) == 0 && c->cmd == NULL) {
				if (c->user != NULL)
					log_info("imap[%016llx]: %s: %s disconnected",
						 (unsigned long long)c->id, c->peer, c->user);
				imap_client_destroy(c);
				return;
			}
			/* Process what arrived before the EOF, then go. */
			c->input_eof = true;
		}
		if (buf_avail(&c->in) > before)
			imap_client_reset_timer(c);
	}
	if (c->closing && out_avail(c) == 0 && c->cmd == NULL) {
		imap_client_destroy(c);
		return;
	}
	client_update_io(c);
	imap_client_kick(c);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct imap_client *c = CLIENT_OF(w, timer);
	if (c->cmd != NULL) {
		/* A command is still producing output or waiting for a change:
		 * not idle. */
		imap_client_reset_timer(c);
		return;
	}
	log_info("imap[%016llx]: %s: inactivity timeout", (unsigned long long)c->id, c->peer);
	imap_client_printf(c, "* BYE Autologout; idle for too long\r\n");
	imap_client_close_after_output(c);
	ev_timer_stop(loop, &c->timer);
}

/* ---- The command loop ---- */

static void cmd_free(struct imap_cmd *cmd)
{
	if (cmd->ctx_free != NULL)
		cmd->ctx_free(cmd->ctx);
	free(cmd);
}

static void reply_bad(struct imap_client *c, const char *tag, const char *reason)
{
	imap_client_printf(c, "%s BAD %s\r\n", tag, reason);
	if (++c->bad_in_a_row >= IMAP_MAX_BAD_IN_A_ROW) {
		log_info("imap[%016llx]: %s: too many bad commands, disconnecting",
			 (unsigned long long)c->id, c->peer);
		imap_client_printf(c, "* BYE Too many invalid commands\r\n");
		imap_client_close_after_output(c);
	}
}

static void handle_idle_input(struct imap_client *c)
{
	size_t len;
	char *line = buf_getline(&c->in, &len);
	if (line == NULL) {
		if (c->input_eof)
			c->closing = true;
		if (buf_avail(&c->in) > 1024) {
			reply_bad(c, c->idle_tag, "Expected DONE");
			free(c->idle_tag);
			c->idle_tag = NULL;
			buf_reset(&c->in);
		}
		return;
	}
	if (strcasecmp(line, "DONE") == 0) {
		imap_client_printf(c, "%s OK Idle completed\r\n", c->idle_tag);
		c->bad_in_a_row = 0;
	} else {
		reply_bad(c, c->idle_tag, "Expected DONE");
	}
	free(c->idle_tag);
	c->idle_tag = NULL;
}

void imap_auth_continue(struct imap_client *c, const char *line);

static void process_input(struct imap_client *c)
{
	/* Bounded work per turn: the work watcher brings us back. */
	for (int n = 0; n < 64; n++) {
		if (c->cmd != NULL || c->dead || (c->closing && buf_avail(&c->in) == 0) ||
		    c->tls_handshake || c->starttls_pending || out_avail(c) >= IMAP_OUT_HIGHWATER)
			return;
		if (c->closing && c->bad_in_a_row >= IMAP_MAX_BAD_IN_A_ROW)
			return;
		if (c->idle_tag != NULL) {
			handle_idle_input(c);
			if (c->idle_tag != NULL)
				return;
			continue;
		}
		if (c->auth_tag != NULL) {
			size_t len;
			char *line = buf_getline(&c->in, &len);
			if (line == NULL) {
				if (c->input_eof)
					c->closing = true;
				if (buf_avail(&c->in) > 16384) {
					reply_bad(c, c->auth_tag, "Authentication line too long");
					free(c->auth_tag);
					c->auth_tag = NULL;
					buf_reset(&c->in);
				}
				return;
			}
			imap_auth_continue(c, line);
			continue;
		}
		if (buf_avail(&c->in) == 0) {
			if (c->input_eof)
				c->closing = true;
			return;
		}
		size_t used = 0;
		enum imap_parse_result r = imap_parser_feed(c->parser, buf_rptr(&c->in),
							    buf_avail(&c->in), &used);
		buf_consume(&c->in, used);
		switch (r) {
		case IMAP_PARSE_MORE:
			/* After EOF a partial command can never complete. */
			if (c->input_eof)
				c->closing = true;
			return;
		case IMAP_PARSE_CONTINUE:
			imap_client_printf(c, "+ OK\r\n");
			break;
		case IMAP_PARSE_BAD:
			reply_bad(c, imap_parser_tag(c->parser), imap_parser_error(c->parser));
			break;
		case IMAP_PARSE_FATAL:
			log_info("imap[%016llx]: %s: %s", (unsigned long long)c->id, c->peer,
				 imap_parser_error(c->parser));
			/* RFC 7888 4: a non-synchronizing literal we cannot take
			 * gets a tagged BAD [TOOBIG]; its octets are already on
			 * the way and cannot be told apart from commands, so the
			 * connection closes after it. */
			imap_client_printf(c, "%s BAD [TOOBIG] %s\r\n* BYE %s\r\n",
					   imap_parser_tag(c->parser), imap_parser_error(c->parser),
					   imap_parser_error(c->parser));
			imap_client_close_after_output(c);
			buf_reset(&c->in);
			return;
		case IMAP_PARSE_DONE:
			imap_commands_dispatch(c, imap_parser_command(c->parser));
			break;
		}
	}
	imap_client_kick(c);
}

static void work_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
	struct imap_client *c = CLIENT_OF(w, work);
	ev_idle_stop(loop, w);
	if (c->dead)
		return;
	struct imap_cmd *cmd = c->cmd;
	if (cmd != NULL && cmd->cont != NULL && !cmd->waiting &&
	    out_avail(c) < IMAP_OUT_LOWWATER) {
		cmd->cont(cmd);
		if (c->cmd == cmd && cmd->cont != NULL && !cmd->waiting &&
		    out_avail(c) < IMAP_OUT_LOWWATER)
			imap_client_kick(c);
	}
	if (c->cmd == NULL)
		process_input(c);
	/* TLS may hold decrypted bytes we did not take when the input buffer
	 * was full; the socket will not become readable for them again. */
	if (c->ssl != NULL && !c->tls_handshake && want_read(c) && SSL_pending(c->ssl) > 0) {
		if (client_read(c) < 0) {
			imap_client_destroy(c);
			return;
		}
		imap_client_kick(c);
	}
	if (c->closing && c->cmd == NULL && out_avail(c) == 0) {
		imap_client_destroy(c);
		return;
	}
	client_update_io(c);
}

bool imap_cmd_done_str(struct imap_cmd *cmd, const char *status, const char *text)
{
	struct imap_client *c = cmd->client;
	if (c->sel != NULL && !c->dead)
		imap_sync(c, !cmd->no_expunge);
	if (strcmp(status, "NO") == 0 && strncmp(text, "[SERVERBUG]", 11) == 0)
		log_errorx("imap[%016llx]: %s%s %s failed: %s", (unsigned long long)c->id,
			   c->user != NULL ? c->user : "", c->user != NULL ? ":" : "", cmd->name, text);
	else if (strcmp(status, "OK") != 0)
		log_debug("imap[%016llx]: %s %s %s", (unsigned long long)c->id, cmd->name, status, text);
	if (strcmp(status, "BAD") == 0) {
		reply_bad(c, cmd->tag, text);
	} else {
		imap_client_printf(c, "%s %s %s\r\n", cmd->tag, status, text);
		c->bad_in_a_row = 0;
	}
	if (cmd->started_us != 0)
		imap_latency_add(&c->server->latency, clock_mono_us() - cmd->started_us);
	c->cmd = NULL;
	cmd_free(cmd);
	imap_parser_reset(c->parser);
	if (c->state != IMAP_STATE_NOAUTH) {
		struct imap_parser_limits l;
		client_limits(c, &l);
		imap_parser_set_limits(c->parser, &l);
	}
	if (c->dead) {
		client_free(c);
		return true;
	}
	imap_client_kick(c);
	return true;
}

void imap_cmd_detach(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	c->cmd = NULL;
	cmd_free(cmd);
	imap_parser_reset(c->parser);
	imap_client_kick(c);
}

bool imap_cmd_done(struct imap_cmd *cmd, const char *status, const char *fmt, ...)
{
	char text[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	return imap_cmd_done_str(cmd, status, text);
}

/* ---- Teardown ---- */

static void client_free(struct imap_client *c)
{
	struct imap_server *srv = c->server;
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		srv->clients = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	srv->client_count--;
	if (c->cmd != NULL)
		cmd_free(c->cmd);
	imap_sel_close(c);
	imap_parser_destroy(&c->parser);
	buf_free(&c->in);
	buf_free(&c->out);
	pieces_release(c, 0);
	ARRAY_FREE(&c->pieces);
	free(c->user);
	free(c->idle_tag);
	free(c->auth_tag);
	free(c);
}

void imap_client_destroy(struct imap_client *c)
{
	if (!c->dead) {
		struct ev_loop *loop = c->server->loop;
		ev_io_stop(loop, &c->io);
		ev_timer_stop(loop, &c->timer);
		ev_idle_stop(loop, &c->work);
		if (c->ssl != NULL) {
			SSL_shutdown(c->ssl);
			SSL_free(c->ssl);
			c->ssl = NULL;
		}
		close(c->fd);
		c->fd = -1;
		c->dead = true;
		log_debug("imap[%016llx]: %s: closed", (unsigned long long)c->id, c->peer);
	}
	/* A change in flight calls back into the command: free after it
	 * completes (imap_cmd_done sees c->dead), unless the server is going
	 * away and the seam has been flushed already. */
	if (c->cmd != NULL && c->cmd->waiting && !c->server->stopping)
		return;
	client_free(c);
}

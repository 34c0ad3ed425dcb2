/* One peer link on a libev loop (SPEC.md "Connection").
 *
 * Layers, from the socket inwards:
 *
 *   fd  <->  out_net / read()  <->  TLS (memory BIOs)  <->  DEFLATE  <->  parser / writer
 *
 * Lines are written into out_plain by the writer at any time; the write
 * watcher later pushes everything written during the loop iteration
 * through compression and TLS in one go, so small lines share one deflate
 * flush and one TLS record.  At the two layer switches (STARTTLS,
 * COMPRESS) the pending plain text is encoded with the old layers first,
 * and input left over after the switching line goes to the new layers.
 *
 * Lifetime: every libev callback raises cb_depth while it runs; closing or
 * destroying only marks the connection, and the memory is released when
 * the outermost callback unwinds (or at once when nothing is running). */
#include "protocol/protocol.h"
#include "protocol/proto-tls-name.h"

#include <errno.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <zlib.h>

#include "lib/str.h"
#include "lib/xalloc.h"

#define READ_CHUNK 65536
#define MAX_READS_PER_EVENT 16
#define PENDING_BUCKETS 256
#define CLOSE_FLUSH_MS 2000
#define TLS_EXPORTER_LABEL "EXPORTER-starling-auth"

enum conn_state {
	CS_TLS_HANDSHAKE, /* TLS running, HELLO not yet sent */
	CS_HELLO,         /* waiting for the peer's HELLO */
	CS_STARTTLS,      /* initiator: STARTTLS sent */
	CS_AUTH,          /* initiator: AUTH sent; acceptor: waiting for AUTH */
	CS_READY,
	CS_CLOSING,       /* flushing output, then close */
	CS_DEAD,
};

struct pending {
	struct proto_conn *conn;
	struct pending *next, *prev;
	unsigned long num;
	char tag[24];
	proto_reply_cb *cb;
	void *ctx;
	ev_timer timer;
	bool has_timer;
};

struct proto_conn {
	struct ev_loop *loop;
	int fd;
	ev_io rio, wio;
	ev_timer tick;
	struct proto_conn_settings set;
	unsigned char *secret;
	struct proto_conn_callbacks cb;
	void *ctx;

	enum conn_state state;
	bool authenticated, reading, congested, hold_output;
	bool destroyed, closed_notified, freed_pending;
	int cb_depth;
	char my_prefix, peer_prefix;
	ev_tstamp created, last_rx, closing_since;
	/* Last write that made progress after the socket had been full: the
	 * peer is reading what we send.  With a long output (a peer busy
	 * reading it, a congested link that reads nothing on purpose) its
	 * answers to PING wait behind it, so this is the sign that it lives.
	 * write_blocked is set by EAGAIN and cleared when all is written. */
	ev_tstamp last_drain;
	uint64_t drains;  /* times last_drain was set */
	bool write_blocked;
	bool ping_outstanding;

	struct proto_parser *parser;
	struct buf out_plain, out_net, zbuf;
	struct proto_wr wr;
	bool wr_active, wr_scratch;
	struct buf scratch; /* lines written while they cannot be sent */
	char wr_tag[24];

	/* Handshake. */
	unsigned char my_nonce[PROTO_NONCE_SIZE], peer_nonce[PROTO_NONCE_SIZE];
	uint32_t peer_sid;
	unsigned minor;
	bool peer_starttls, peer_deflate;

	/* TLS. */
	SSL_CTX *ssl_ctx;
	SSL *ssl;
	BIO *rbio, *wbio;
	bool tls_active, tls_done;
	bool got_input; /* the first bytes from the peer have been seen */

	/* Compression. */
	z_stream zin, zout;
	bool comp_in, comp_out, zin_init, zout_init;

	struct pending *buckets[PENDING_BUCKETS];
	unsigned long next_tag;
	size_t pending_count;
	char peer_bye[200];
};

static void conn_fail(struct proto_conn *conn, const char *reason);
static void schedule_output(struct proto_conn *conn);
static void handle_line(struct proto_conn *conn, const struct proto_cmd *cmd);
static int send_hello(struct proto_conn *conn);

/* ------------------------------------------------------------------ */
/* Lifetime */

static void conn_free(struct proto_conn *conn)
{
	proto_parser_destroy(&conn->parser);
	buf_free(&conn->out_plain);
	buf_free(&conn->out_net);
	buf_free(&conn->zbuf);
	buf_free(&conn->scratch);
	if (conn->ssl != NULL)
		SSL_free(conn->ssl); /* frees the BIOs */
	if (conn->ssl_ctx != NULL)
		SSL_CTX_free(conn->ssl_ctx);
	if (conn->zin_init)
		inflateEnd(&conn->zin);
	if (conn->zout_init)
		deflateEnd(&conn->zout);
	if (conn->secret != NULL) {
		OPENSSL_cleanse(conn->secret, conn->set.secret_len);
		free(conn->secret);
	}
	free(conn);
}

static void enter(struct proto_conn *conn)
{
	conn->cb_depth++;
}

/* Returns true if the connection was freed. */
static bool leave(struct proto_conn *conn)
{
	if (--conn->cb_depth == 0 && conn->state == CS_DEAD &&
	    (conn->destroyed || conn->closed_notified)) {
		conn_free(conn);
		return true;
	}
	return false;
}

static bool is_dead(const struct proto_conn *conn)
{
	return conn->state == CS_DEAD;
}

/* ------------------------------------------------------------------ */
/* Pending tags */

static struct pending *pending_find(struct proto_conn *conn, const char *tag)
{
	uint64_t num;
	if (tag[0] != conn->my_prefix || str_to_u64(tag + 1, UINT64_MAX, &num) < 0)
		return NULL;
	for (struct pending *p = conn->buckets[num % PENDING_BUCKETS]; p != NULL; p = p->next) {
		if (p->num == num)
			return p;
	}
	return NULL;
}

static void pending_unlink(struct proto_conn *conn, struct pending *p)
{
	if (p->prev != NULL)
		p->prev->next = p->next;
	else
		conn->buckets[p->num % PENDING_BUCKETS] = p->next;
	if (p->next != NULL)
		p->next->prev = p->prev;
	if (p->has_timer)
		ev_timer_stop(conn->loop, &p->timer);
	conn->pending_count--;
}

static void pending_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct pending *p = (struct pending *)((char *)w - offsetof(struct pending, timer));
	struct proto_conn *conn = p->conn;
	enter(conn);
	pending_unlink(conn, p);
	p->cb(conn, PROTO_REPLY_TIMEOUT, NULL, p->ctx);
	free(p);
	leave(conn);
}

static void pending_fail_all(struct proto_conn *conn)
{
	for (size_t b = 0; b < PENDING_BUCKETS; b++) {
		struct pending *p;
		while ((p = conn->buckets[b]) != NULL) {
			pending_unlink(conn, p);
			p->cb(conn, PROTO_REPLY_CLOSED, NULL, p->ctx);
			free(p);
		}
	}
}

/* ------------------------------------------------------------------ */
/* Closing */

static void close_fd(struct proto_conn *conn)
{
	ev_io_stop(conn->loop, &conn->rio);
	ev_io_stop(conn->loop, &conn->wio);
	ev_timer_stop(conn->loop, &conn->tick);
	if (conn->fd >= 0) {
		close(conn->fd);
		conn->fd = -1;
	}
}

/* Immediate close: callbacks learn it, the memory goes when unwound. */
static void conn_fail(struct proto_conn *conn, const char *reason)
{
	if (is_dead(conn))
		return;
	conn->state = CS_DEAD;
	close_fd(conn);
	enter(conn);
	pending_fail_all(conn);
	if (!conn->destroyed && conn->cb.closed != NULL) {
		conn->closed_notified = true;
		conn->cb.closed(conn, reason, conn->ctx);
	}
	conn->closed_notified = true;
	leave(conn);
}

/* Orderly close: stop reading, flush, then conn_fail(reason). */
static void conn_close_after_flush(struct proto_conn *conn)
{
	if (conn->state == CS_CLOSING || is_dead(conn))
		return;
	conn->state = CS_CLOSING;
	conn->closing_since = ev_now(conn->loop);
	ev_io_stop(conn->loop, &conn->rio);
	conn->reading = false;
	conn->hold_output = false;
	schedule_output(conn);
}

void proto_conn_destroy(struct proto_conn **connp)
{
	struct proto_conn *conn = *connp;
	if (conn == NULL)
		return;
	*connp = NULL;
	conn->destroyed = true;
	if (!is_dead(conn)) {
		conn->state = CS_DEAD;
		close_fd(conn);
		enter(conn);
		pending_fail_all(conn);
		leave(conn);
		/* leave() freed it if nothing was running. */
		return;
	}
	if (conn->cb_depth == 0)
		conn_free(conn);
}

/* ------------------------------------------------------------------ */
/* Output */

static size_t output_size(const struct proto_conn *conn)
{
	return conn->out_plain.len + buf_avail(&conn->out_net);
}

static void check_congestion(struct proto_conn *conn)
{
	size_t size = output_size(conn);
	if (!conn->congested && size > conn->set.out_high_water) {
		conn->congested = true;
		ev_io_stop(conn->loop, &conn->rio);
	} else if (conn->congested && size < conn->set.out_low_water) {
		conn->congested = false;
		if (conn->reading)
			ev_io_start(conn->loop, &conn->rio);
		if (conn->cb.drained != NULL && conn->state == CS_READY)
			conn->cb.drained(conn, conn->ctx);
	}
}

static void tls_flush_wbio(struct proto_conn *conn)
{
	size_t n = (size_t)BIO_ctrl_pending(conn->wbio);
	if (n == 0)
		return;
	unsigned char *dst = buf_reserve(&conn->out_net, n);
	int r = BIO_read(conn->wbio, dst, (int)n);
	buf_commit(&conn->out_net, r > 0 ? (size_t)r : 0);
}

/* Deflates src into dst with a sync flush so the peer can parse it now. */
static int deflate_into(struct proto_conn *conn, const unsigned char *src, size_t len,
			struct buf *dst)
{
	z_stream *z = &conn->zout;
	z->next_in = (unsigned char *)src;
	z->avail_in = (uInt)len;
	do {
		size_t room = len / 2 + 1024;
		unsigned char *out = buf_reserve(dst, room);
		z->next_out = out;
		z->avail_out = (uInt)room;
		int r = deflate(z, Z_SYNC_FLUSH);
		if (r != Z_OK && r != Z_BUF_ERROR)
			return -1;
		buf_commit(dst, room - z->avail_out);
	} while (z->avail_in > 0 || z->avail_out == 0);
	return 0;
}

/* Moves out_plain through compression and TLS into out_net. */
static int encode_pending(struct proto_conn *conn)
{
	if (conn->out_plain.len == 0 || conn->hold_output)
		return 0;
	if (conn->tls_active && !conn->tls_done)
		return 0;
	struct buf *stage = &conn->out_plain;
	if (conn->comp_out) {
		struct buf *dst = conn->tls_active ? &conn->zbuf : &conn->out_net;
		if (deflate_into(conn, conn->out_plain.data, conn->out_plain.len, dst) < 0)
			return -1;
		buf_reset(&conn->out_plain);
		stage = dst;
	}
	if (conn->tls_active) {
		size_t off = stage->rpos;
		while (off < stage->len) {
			size_t n = stage->len - off;
			if (n > 16384)
				n = 16384;
			int r = SSL_write(conn->ssl, stage->data + off, (int)n);
			if (r <= 0)
				return -1;
			off += (size_t)r;
			tls_flush_wbio(conn);
		}
		buf_reset(stage);
	} else if (stage == &conn->out_plain) {
		if (buf_avail(&conn->out_net) == 0) {
			/* Nothing queued: hand the buffer over instead of copying. */
			struct buf tmp = conn->out_net;
			conn->out_net = conn->out_plain;
			conn->out_plain = tmp;
		} else {
			buf_append(&conn->out_net, conn->out_plain.data, conn->out_plain.len);
		}
		buf_reset(&conn->out_plain);
	}
	return 0;
}

static void schedule_output(struct proto_conn *conn)
{
	if (conn->fd >= 0)
		ev_io_start(conn->loop, &conn->wio);
	check_congestion(conn);
}

static void pump_output(struct proto_conn *conn)
{
	if (encode_pending(conn) < 0) {
		conn_fail(conn, "output encoding failed");
		return;
	}
	while (buf_avail(&conn->out_net) > 0) {
		ssize_t n = write(conn->fd, buf_rptr(&conn->out_net), buf_avail(&conn->out_net));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				conn->write_blocked = true;
				break;
			}
			char reason[128];
			snprintf(reason, sizeof(reason), "write failed: %s", strerror(errno));
			conn_fail(conn, reason);
			return;
		}
		buf_consume(&conn->out_net, (size_t)n);
		if (conn->write_blocked && n > 0) {
			conn->last_drain = ev_now(conn->loop);
			conn->drains++;
		}
	}
	if (buf_avail(&conn->out_net) == 0)
		conn->write_blocked = false;
	if (buf_avail(&conn->out_net) == 0 &&
	    (conn->out_plain.len == 0 || conn->hold_output ||
	     (conn->tls_active && !conn->tls_done))) {
		ev_io_stop(conn->loop, &conn->wio);
		if (conn->state == CS_CLOSING) {
			conn_fail(conn, conn->peer_bye[0] != '\0' ? conn->peer_bye : "closed");
			return;
		}
	}
	check_congestion(conn);
}

static void wio_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct proto_conn *conn = (struct proto_conn *)((char *)w - offsetof(struct proto_conn, wio));
	enter(conn);
	pump_output(conn);
	leave(conn);
}

/* Writes a status line now (internal replies). */
static void send_status(struct proto_conn *conn, const char *tag, const char *status,
			const char *code, const char *text)
{
	proto_wr_status(&conn->out_plain, tag, status, code, text);
	schedule_output(conn);
}

static const char *new_tag(struct proto_conn *conn, unsigned long *num_r)
{
	*num_r = ++conn->next_tag;
	snprintf(conn->wr_tag, sizeof(conn->wr_tag), "%c%lu", conn->my_prefix, *num_r);
	return conn->wr_tag;
}

static void add_pending(struct proto_conn *conn, unsigned long num, unsigned timeout_ms,
			proto_reply_cb *cb, void *ctx)
{
	struct pending *p = xcalloc(1, sizeof(*p));
	p->conn = conn;
	p->num = num;
	snprintf(p->tag, sizeof(p->tag), "%c%lu", conn->my_prefix, num);
	p->cb = cb;
	p->ctx = ctx;
	struct pending **head = &conn->buckets[num % PENDING_BUCKETS];
	p->next = *head;
	if (*head != NULL)
		(*head)->prev = p;
	*head = p;
	conn->pending_count++;
	if (timeout_ms > 0) {
		ev_timer_init(&p->timer, pending_timeout_cb, timeout_ms / 1000.0, 0.);
		ev_timer_start(conn->loop, &p->timer);
		p->has_timer = true;
	}
}

/* An internal command with a fixed argument string. */
static void send_internal(struct proto_conn *conn, const char *name, const char *args,
			  proto_reply_cb *cb, unsigned timeout_ms)
{
	unsigned long num;
	const char *tag = new_tag(conn, &num);
	buf_appendf(&conn->out_plain, "%s %s%s%s\r\n", tag, name, args != NULL ? " " : "",
		    args != NULL ? args : "");
	add_pending(conn, num, timeout_ms, cb, NULL);
	schedule_output(conn);
}

/* ------------------------------------------------------------------ */
/* Public output API */

struct proto_wr *proto_conn_cmd_begin(struct proto_conn *conn, const char *name)
{
	unsigned long num;
	if (conn->wr_active)
		abort(); /* our own bug: two lines at once */
	conn->wr_active = true;
	new_tag(conn, &num);
	/* Before ready or after close a command cannot go out: build it
	 * aside, to be dropped by proto_conn_cmd_send(). */
	conn->wr_scratch = conn->state != CS_READY;
	buf_reset(&conn->scratch);
	proto_wr_init(&conn->wr, conn->wr_scratch ? &conn->scratch : &conn->out_plain);
	proto_wr_begin(&conn->wr, conn->wr_tag, name);
	return &conn->wr;
}

const char *proto_conn_cmd_send(struct proto_conn *conn, unsigned timeout_ms,
				proto_reply_cb *cb, void *ctx)
{
	proto_wr_end(&conn->wr);
	conn->wr_active = false;
	if (conn->wr_scratch || conn->state != CS_READY) {
		buf_reset(&conn->scratch);
		cb(conn, PROTO_REPLY_CLOSED, NULL, ctx);
		return NULL;
	}
	add_pending(conn, conn->next_tag, timeout_ms, cb, ctx);
	schedule_output(conn);
	return pending_find(conn, conn->wr_tag)->tag;
}

struct proto_wr *proto_conn_line_begin(struct proto_conn *conn, const char *tag,
				       const char *name)
{
	if (conn->wr_active)
		abort();
	conn->wr_active = true;
	conn->wr_scratch = !conn->authenticated || is_dead(conn) || conn->state == CS_CLOSING;
	buf_reset(&conn->scratch);
	proto_wr_init(&conn->wr, conn->wr_scratch ? &conn->scratch : &conn->out_plain);
	proto_wr_begin(&conn->wr, tag, name);
	return &conn->wr;
}

void proto_conn_line_end(struct proto_conn *conn)
{
	proto_wr_end(&conn->wr);
	conn->wr_active = false;
	if (conn->wr_scratch) {
		buf_reset(&conn->scratch);
		return;
	}
	schedule_output(conn);
}

void proto_conn_reply(struct proto_conn *conn, const char *tag, const char *status,
		      const char *code, const char *text)
{
	if (is_dead(conn) || conn->state == CS_CLOSING || !conn->authenticated)
		return;
	send_status(conn, tag, status, code, text);
}

void proto_conn_bye(struct proto_conn *conn, const char *code, const char *text)
{
	if (is_dead(conn) || conn->state == CS_CLOSING)
		return;
	send_status(conn, "*", "BYE", code, text);
	conn_close_after_flush(conn);
}

static void logout_reply_cb(struct proto_conn *conn, enum proto_reply_kind kind,
			    const struct proto_cmd *line, void *ctx)
{
	if (kind == PROTO_REPLY_DONE || kind == PROTO_REPLY_TIMEOUT)
		conn_close_after_flush(conn);
}

void proto_conn_logout(struct proto_conn *conn)
{
	if (is_dead(conn) || conn->state == CS_CLOSING)
		return;
	snprintf(conn->peer_bye, sizeof(conn->peer_bye), "logged out");
	send_internal(conn, "LOGOUT", NULL, logout_reply_cb, CLOSE_FLUSH_MS);
}

bool proto_conn_is_ready(const struct proto_conn *conn)
{
	return conn->state == CS_READY;
}

uint32_t proto_conn_peer_sid(const struct proto_conn *conn)
{
	return conn->authenticated ? conn->peer_sid : 0;
}

unsigned proto_conn_minor(const struct proto_conn *conn)
{
	return conn->minor;
}

bool proto_conn_is_tls(const struct proto_conn *conn)
{
	return conn->tls_active && conn->tls_done;
}

bool proto_conn_is_compressed(const struct proto_conn *conn)
{
	return conn->comp_in && conn->comp_out;
}

size_t proto_conn_output_size(const struct proto_conn *conn)
{
	return output_size(conn);
}

bool proto_conn_is_congested(const struct proto_conn *conn)
{
	return conn->congested;
}

struct proto_parser *proto_conn_parser(struct proto_conn *conn)
{
	return conn->parser;
}

/* ------------------------------------------------------------------ */
/* TLS */

static const char *ssl_error_string(void)
{
	static char msg[160];
	unsigned long e = ERR_get_error();
	if (e == 0)
		return "unknown TLS error";
	ERR_error_string_n(e, msg, sizeof(msg));
	ERR_clear_error();
	return msg;
}

static int tls_ctx_create(struct proto_conn *conn, const char **error_r)
{
	const struct proto_conn_settings *set = &conn->set;
	if (set->tls_cert == NULL || set->tls_key == NULL || set->tls_ca == NULL) {
		*error_r = "TLS needs tls_cert, tls_key and tls_ca";
		return -1;
	}
	SSL_CTX *ctx = SSL_CTX_new(set->initiator ? TLS_client_method() : TLS_server_method());
	if (ctx == NULL)
		goto fail;
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	if (SSL_CTX_use_certificate_chain_file(ctx, set->tls_cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, set->tls_key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1 ||
	    SSL_CTX_load_verify_locations(ctx, set->tls_ca, NULL) != 1) {
		SSL_CTX_free(ctx);
		goto fail;
	}
	/* Both sides present and verify certificates of the cluster CA. */
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	/* Links are long-lived: resumption tickets only add traffic. */
	SSL_CTX_set_num_tickets(ctx, 0);
	conn->ssl_ctx = ctx;
	return 0;
fail:
	*error_r = ssl_error_string();
	return -1;
}

/* Returns -1 if the session cannot be created (the caller closes). */
static int tls_start(struct proto_conn *conn)
{
	conn->ssl = SSL_new(conn->ssl_ctx);
	conn->rbio = BIO_new(BIO_s_mem());
	conn->wbio = BIO_new(BIO_s_mem());
	if (conn->ssl == NULL || conn->rbio == NULL || conn->wbio == NULL) {
		if (conn->ssl == NULL) {
			BIO_free(conn->rbio);
			BIO_free(conn->wbio);
		} else {
			SSL_set_bio(conn->ssl, conn->rbio, conn->wbio);
		}
		conn->rbio = conn->wbio = NULL;
		return -1;
	}
	SSL_set_bio(conn->ssl, conn->rbio, conn->wbio);
	if (conn->set.initiator)
		SSL_set_connect_state(conn->ssl);
	else
		SSL_set_accept_state(conn->ssl);
	conn->tls_active = true;
	conn->tls_done = false;
	conn->state = CS_TLS_HANDSHAKE;
	if (conn->set.initiator) {
		SSL_do_handshake(conn->ssl);
		tls_flush_wbio(conn);
		schedule_output(conn);
	}
	return 0;
}

static void on_plain_input(struct proto_conn *conn, const unsigned char *data, size_t len);

static void tls_input(struct proto_conn *conn, const unsigned char *data, size_t len)
{
	if (BIO_write(conn->rbio, data, (int)len) != (int)len) {
		conn_fail(conn, "TLS buffer failure");
		return;
	}
	if (!conn->tls_done) {
		int r = SSL_do_handshake(conn->ssl);
		tls_flush_wbio(conn);
		schedule_output(conn);
		if (r != 1) {
			int e = SSL_get_error(conn->ssl, r);
			if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
				return;
			char reason[200];
			long v = SSL_get_verify_result(conn->ssl);
			if (v != X509_V_OK)
				snprintf(reason, sizeof(reason), "TLS handshake failed: %s",
					 X509_verify_cert_error_string(v));
			else
				snprintf(reason, sizeof(reason), "TLS handshake failed: %s",
					 ssl_error_string());
			conn_fail(conn, reason);
			return;
		}
		if (SSL_get_verify_result(conn->ssl) != X509_V_OK ||
		    SSL_get0_peer_certificate(conn->ssl) == NULL) {
			conn_fail(conn, "TLS peer certificate not verified");
			return;
		}
		conn->tls_done = true;
		if (send_hello(conn) < 0) {
			conn_fail(conn, "no random numbers");
			return;
		}
	}
	unsigned char tmp[16384];
	for (;;) {
		int n = SSL_read(conn->ssl, tmp, sizeof(tmp));
		if (n <= 0) {
			int e = SSL_get_error(conn->ssl, n);
			tls_flush_wbio(conn);
			if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
				return;
			if (e == SSL_ERROR_ZERO_RETURN) {
				conn_fail(conn, conn->peer_bye[0] != '\0' ? conn->peer_bye :
					  "peer closed TLS");
				return;
			}
			conn_fail(conn, "TLS read failed");
			return;
		}
		on_plain_input(conn, tmp, (size_t)n);
		if (is_dead(conn) || conn->state == CS_CLOSING)
			return;
	}
}

/* ------------------------------------------------------------------ */
/* Input */

/* Feeds the parser until the bytes are used up or a line switched layers
 * (STARTTLS, COMPRESS) or closed the link.  Returns bytes used. */
static size_t parse_bytes(struct proto_conn *conn, const unsigned char *data, size_t len)
{
	size_t pos = 0;
	bool tls_before = conn->tls_active, comp_before = conn->comp_in;
	while (pos < len) {
		size_t used;
		const struct proto_cmd *cmd;
		int r = proto_parser_parse(conn->parser, data + pos, len - pos, &used, &cmd);
		pos += used;
		if (r < 0) {
			const char *code, *text;
			proto_parser_get_error(conn->parser, &code, &text);
			send_status(conn, "*", "BYE", code, text);
			char reason[160];
			snprintf(reason, sizeof(reason), "protocol error from peer: %s", text);
			snprintf(conn->peer_bye, sizeof(conn->peer_bye), "%s", reason);
			conn_close_after_flush(conn);
			return len;
		}
		if (r == 0)
			break;
		handle_line(conn, cmd);
		if (is_dead(conn) || conn->state == CS_CLOSING)
			return len;
		if (conn->tls_active != tls_before || conn->comp_in != comp_before)
			break;
	}
	return pos;
}

static void inflate_input(struct proto_conn *conn, const unsigned char *data, size_t len)
{
	z_stream *z = &conn->zin;
	unsigned char tmp[65536];
	z->next_in = (unsigned char *)data;
	z->avail_in = (uInt)len;
	while (z->avail_in > 0 || z->avail_out == 0) {
		z->next_out = tmp;
		z->avail_out = sizeof(tmp);
		int r = inflate(z, Z_SYNC_FLUSH);
		if (r != Z_OK && r != Z_BUF_ERROR) {
			conn_fail(conn, "bad compressed data from peer");
			return;
		}
		size_t n = sizeof(tmp) - z->avail_out;
		if (n > 0)
			parse_bytes(conn, tmp, n);
		if (is_dead(conn) || conn->state == CS_CLOSING)
			return;
		if (n == 0 && r == Z_BUF_ERROR)
			break;
	}
}

static void on_plain_input(struct proto_conn *conn, const unsigned char *data, size_t len)
{
	while (len > 0 && !is_dead(conn) && conn->state != CS_CLOSING) {
		if (conn->comp_in) {
			inflate_input(conn, data, len);
			return;
		}
		bool tls_before = conn->tls_active;
		size_t used = parse_bytes(conn, data, len);
		data += used;
		len -= used;
		if (conn->tls_active != tls_before && len > 0) {
			/* Bytes sent before the TLS switch could have been
			 * injected by anyone on the path: refuse them. */
			conn_fail(conn, "plain text after STARTTLS");
			return;
		}
	}
}

/* The first octet tells TLS (a handshake record, 0x16) from this protocol
 * (a tag: "* HELLO").  A node with TLS facing one without would otherwise
 * feed a HELLO to OpenSSL ("wrong version number") or a ClientHello to the
 * parser ("Bad tag"): say in one line what is wrong.  Returns true if it
 * closed the link. */
static bool tls_mismatch(struct proto_conn *conn, const unsigned char *data, size_t len)
{
	if (conn->got_input || len == 0)
		return false;
	conn->got_input = true;
	/* What this side sent first (its HELLO, or its ClientHello) still
	 * goes out before the close, so the peer can say its own line. */
	if (conn->set.tls == PROTO_TLS_NONE && data[0] == 0x16) {
		snprintf(conn->peer_bye, sizeof(conn->peer_bye), "%s",
			 conn->set.initiator ? "it speaks TLS but tls is off here" :
			 "the peer speaks TLS but tls is off here");
		conn_close_after_flush(conn);
		return true;
	}
	if (conn->set.tls != PROTO_TLS_IMPLICIT || data[0] != '*')
		return false;
	if (conn->set.initiator) {
		snprintf(conn->peer_bye, sizeof(conn->peer_bye),
			 "it did not start TLS but tls is on here");
		conn_close_after_flush(conn);
		return true;
	}
	/* Its HELLO names it; the peer reads plain text, so it gets a plain
	 * BYE and can say the reverse on its side. */
	char line[64];
	unsigned major, minor, sid;
	size_t n = len < sizeof(line) - 1 ? len : sizeof(line) - 1;
	memcpy(line, data, n);
	line[n] = '\0';
	if (sscanf(line, "* HELLO %u.%u %u ", &major, &minor, &sid) == 3 && sid != 0)
		snprintf(conn->peer_bye, sizeof(conn->peer_bye),
			 "peer %u did not start TLS but tls is on here", sid);
	else
		snprintf(conn->peer_bye, sizeof(conn->peer_bye),
			 "the peer did not start TLS but tls is on here");
	buf_appendf(&conn->out_net, "* BYE [PRIVACYREQUIRED] TLS only on this node\r\n");
	conn_close_after_flush(conn);
	return true;
}

static void on_net_input(struct proto_conn *conn, const unsigned char *data, size_t len)
{
	if (tls_mismatch(conn, data, len))
		return;
	if (conn->tls_active)
		tls_input(conn, data, len);
	else
		on_plain_input(conn, data, len);
}

/* Reads and handles what the socket holds, a bounded number of chunks.
 * The caller holds a callback depth (enter()). */
static void read_input(struct proto_conn *conn)
{
	struct ev_loop *loop = conn->loop;
	unsigned char tmp[READ_CHUNK];
	for (int i = 0; i < MAX_READS_PER_EVENT; i++) {
		ssize_t n = read(conn->fd, tmp, sizeof(tmp));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				char reason[128];
				snprintf(reason, sizeof(reason), "read failed: %s", strerror(errno));
				conn_fail(conn, reason);
			}
			break;
		}
		if (n == 0) {
			conn_fail(conn, conn->peer_bye[0] != '\0' ? conn->peer_bye :
				  "connection closed by peer");
			break;
		}
		conn->last_rx = ev_now(loop);
		on_net_input(conn, tmp, (size_t)n);
		if (is_dead(conn) || conn->state == CS_CLOSING || conn->congested)
			break;
	}
}

static void rio_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct proto_conn *conn = (struct proto_conn *)((char *)w - offsetof(struct proto_conn, rio));
	(void)loop;
	enter(conn);
	read_input(conn);
	leave(conn);
}

/* ------------------------------------------------------------------ */
/* Handshake */

/* Returns -1 if no nonce can be made (the caller closes). */
static int send_hello(struct proto_conn *conn)
{
	char hex[2 * PROTO_NONCE_SIZE + 1];
	if (RAND_bytes(conn->my_nonce, sizeof(conn->my_nonce)) != 1)
		return -1;
	hex_encode(conn->my_nonce, sizeof(conn->my_nonce), hex);
	bool offer_tls = conn->set.tls == PROTO_TLS_STARTTLS && !conn->tls_active;
	buf_appendf(&conn->out_plain, "* HELLO %d.%d %u %s (%sCOMPRESS=DEFLATE AUTH=HMAC-SHA256)\r\n",
		    PROTO_VERSION_MAJOR, PROTO_VERSION_MINOR, conn->set.my_sid, hex,
		    offer_tls ? "STARTTLS " : "");
	conn->state = CS_HELLO;
	schedule_output(conn);
	return 0;
}

/* The exporter value binds the proofs to this TLS session. */
static const unsigned char *channel_binding(struct proto_conn *conn, unsigned char out[32])
{
	if (!conn->tls_active)
		return NULL;
	if (SSL_export_keying_material(conn->ssl, out, 32, TLS_EXPORTER_LABEL,
				       strlen(TLS_EXPORTER_LABEL), NULL, 0, 0) != 1)
		return NULL;
	return out;
}

static int make_proof(struct proto_conn *conn, bool initiator_side, unsigned char out[PROTO_HMAC_SIZE])
{
	unsigned char chan[32];
	const unsigned char *cb = channel_binding(conn, chan);
	if (conn->tls_active && cb == NULL)
		return -1;
	const unsigned char *init_nonce = conn->set.initiator ? conn->my_nonce : conn->peer_nonce;
	const unsigned char *acc_nonce = conn->set.initiator ? conn->peer_nonce : conn->my_nonce;
	uint32_t init_sid = conn->set.initiator ? conn->set.my_sid : conn->peer_sid;
	uint32_t acc_sid = conn->set.initiator ? conn->peer_sid : conn->set.my_sid;
	return proto_auth_proof(conn->secret, conn->set.secret_len,
				initiator_side ? "initiator" : "acceptor", init_nonce, acc_nonce,
				init_sid, acc_sid, cb, out);
}

static bool proof_matches(struct proto_conn *conn, bool initiator_side, const struct proto_arg *a)
{
	unsigned char want[PROTO_HMAC_SIZE], got[PROTO_HMAC_SIZE];
	if (a->type != PROTO_ARG_ATOM || hex_decode(a->str, a->len, got, sizeof(got)) < 0)
		return false;
	if (make_proof(conn, initiator_side, want) < 0)
		return false;
	bool ok = mem_equal_ct(want, got, sizeof(want));
	OPENSSL_cleanse(want, sizeof(want));
	return ok;
}

static void become_ready(struct proto_conn *conn)
{
	struct proto_parser_settings lim = conn->set.limits, def;
	proto_parser_settings_default(&def);
	/* Each zero field takes its default. */
	if (lim.max_line == 0)
		lim.max_line = def.max_line;
	if (lim.max_literal == 0)
		lim.max_literal = def.max_literal;
	if (lim.max_args == 0)
		lim.max_args = def.max_args;
	if (lim.max_depth == 0)
		lim.max_depth = def.max_depth;
	proto_parser_set_limits(conn->parser, &lim);
	conn->authenticated = true;
	conn->state = CS_READY;
	if (conn->cb.ready != NULL)
		conn->cb.ready(conn, conn->ctx);
}

static void compress_enable(struct proto_conn *conn)
{
	if (deflateInit2(&conn->zout, 1, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK ||
	    inflateInit2(&conn->zin, -15) != Z_OK) {
		conn_fail(conn, "zlib initialisation failed");
		return;
	}
	conn->zout_init = conn->zin_init = true;
	conn->comp_in = conn->comp_out = true;
}

static void compress_reply_cb(struct proto_conn *conn, enum proto_reply_kind kind,
			      const struct proto_cmd *line, void *ctx)
{
	if (kind == PROTO_REPLY_TIMEOUT) {
		/* Output is held until the answer: without one the link is stuck. */
		conn_fail(conn, "COMPRESS timed out");
		return;
	}
	if (kind != PROTO_REPLY_DONE)
		return;
	conn->hold_output = false;
	if (proto_cmd_is(line, "OK"))
		compress_enable(conn);
	/* NO: the link simply stays uncompressed. */
	if (!is_dead(conn))
		schedule_output(conn);
}

static void auth_reply_cb(struct proto_conn *conn, enum proto_reply_kind kind,
			  const struct proto_cmd *line, void *ctx)
{
	if (kind != PROTO_REPLY_DONE)
		return; /* timeout: the tick closes the link */
	if (!proto_cmd_is(line, "OK") || !line->has_code || line->arg_count != 2 ||
	    strcasecmp(line->args[0].str, "AUTH") != 0) {
		snprintf(conn->peer_bye, sizeof(conn->peer_bye), "authentication refused by peer: %s",
			 line->text);
		conn_close_after_flush(conn);
		return;
	}
	if (!proof_matches(conn, false, &line->args[1])) {
		send_status(conn, "*", "BYE", "AUTHFAILED", "peer failed authentication");
		snprintf(conn->peer_bye, sizeof(conn->peer_bye), "peer failed authentication");
		conn_close_after_flush(conn);
		return;
	}
	if (conn->set.compress && conn->peer_deflate) {
		send_internal(conn, "COMPRESS", "DEFLATE", compress_reply_cb,
			      conn->set.handshake_timeout_ms);
		/* Nothing may follow COMPRESS until its completion (SPEC). */
		encode_pending(conn);
		conn->hold_output = true;
	}
	become_ready(conn);
}

static void initiator_send_auth(struct proto_conn *conn)
{
	unsigned char proof[PROTO_HMAC_SIZE];
	char args[16 + 2 * PROTO_HMAC_SIZE + 1];
	if (make_proof(conn, true, proof) < 0) {
		conn_fail(conn, "cannot compute authentication proof");
		return;
	}
	memcpy(args, "HMAC-SHA256 ", 12);
	hex_encode(proof, sizeof(proof), args + 12);
	conn->state = CS_AUTH;
	send_internal(conn, "AUTH", args, auth_reply_cb, 0);
}

static void starttls_reply_cb(struct proto_conn *conn, enum proto_reply_kind kind,
			      const struct proto_cmd *line, void *ctx)
{
	if (kind != PROTO_REPLY_DONE)
		return;
	if (!proto_cmd_is(line, "OK")) {
		conn_fail(conn, "peer refused STARTTLS");
		return;
	}
	if (tls_start(conn) < 0)
		conn_fail(conn, "cannot create TLS session");
}

static void handle_hello(struct proto_conn *conn, const struct proto_cmd *cmd)
{
	unsigned major, minor;
	uint32_t sid;
	char extra;
	if (conn->state != CS_HELLO) {
		send_status(conn, "*", "BYE", "PROTOCOL", "unexpected HELLO");
		conn_close_after_flush(conn);
		return;
	}
	if (cmd->arg_count != 4 || cmd->args[0].type != PROTO_ARG_ATOM ||
	    sscanf(cmd->args[0].str, "%u.%u%c", &major, &minor, &extra) != 2 ||
	    proto_arg_u32(&cmd->args[1], &sid) < 0 || sid == 0 ||
	    cmd->args[2].type != PROTO_ARG_ATOM ||
	    hex_decode(cmd->args[2].str, cmd->args[2].len, conn->peer_nonce,
		       sizeof(conn->peer_nonce)) < 0 ||
	    cmd->args[3].type != PROTO_ARG_LIST) {
		send_status(conn, "*", "BYE", "PARSE", "malformed HELLO");
		conn_close_after_flush(conn);
		return;
	}
	if (major != PROTO_VERSION_MAJOR) {
		char code[32];
		snprintf(code, sizeof(code), "VERSION %d.%d", PROTO_VERSION_MAJOR, PROTO_VERSION_MINOR);
		send_status(conn, "*", "BYE", code, "unsupported protocol version");
		snprintf(conn->peer_bye, sizeof(conn->peer_bye), "peer speaks version %u.%u",
			 major, minor);
		conn_close_after_flush(conn);
		return;
	}
	if ((conn->set.expected_peer_sid != 0 && sid != conn->set.expected_peer_sid) ||
	    sid == conn->set.my_sid) {
		send_status(conn, "*", "BYE", "SID", "unexpected node id");
		snprintf(conn->peer_bye, sizeof(conn->peer_bye), "peer greeted with SID %u", sid);
		conn_close_after_flush(conn);
		return;
	}
	if (conn->tls_active) {
		/* The chain only says "a node of this cluster" (SPEC.md 4.1). */
		const char *host = conn->cb.peer_host != NULL ?
				   conn->cb.peer_host(conn, sid, conn->ctx) : NULL;
		char why[sizeof(conn->peer_bye)];
		if (proto_tls_name_check(SSL_get0_peer_certificate(conn->ssl), sid, host, why,
					 sizeof(why)) < 0) {
			send_status(conn, "*", "BYE", "AUTHFAILED",
				    "TLS certificate does not name the node you claim");
			snprintf(conn->peer_bye, sizeof(conn->peer_bye), "%s", why);
			conn_close_after_flush(conn);
			return;
		}
	}
	conn->peer_sid = sid;
	unsigned my_minor = PROTO_VERSION_MINOR;
	conn->minor = minor < my_minor ? minor : my_minor;
	conn->peer_starttls = conn->peer_deflate = false;
	for (size_t i = 0; i < cmd->args[3].count; i++) {
		const struct proto_arg *c = &cmd->args[3].list[i];
		if (c->type != PROTO_ARG_ATOM)
			continue;
		if (strcasecmp(c->str, "STARTTLS") == 0)
			conn->peer_starttls = true;
		else if (strcasecmp(c->str, "COMPRESS=DEFLATE") == 0)
			conn->peer_deflate = true;
	}
	conn->state = CS_AUTH;
	if (!conn->set.initiator)
		return;
	if (conn->set.tls == PROTO_TLS_STARTTLS && !conn->tls_active) {
		if (!conn->peer_starttls) {
			send_status(conn, "*", "BYE", "PRIVACYREQUIRED", "TLS required");
			snprintf(conn->peer_bye, sizeof(conn->peer_bye), "peer does not offer STARTTLS");
			conn_close_after_flush(conn);
			return;
		}
		conn->state = CS_STARTTLS;
		send_internal(conn, "STARTTLS", NULL, starttls_reply_cb, 0);
		return;
	}
	initiator_send_auth(conn);
}

/* Handshake commands an acceptor answers itself. */
static bool acceptor_handshake_cmd(struct proto_conn *conn, const struct proto_cmd *cmd)
{
	if (proto_cmd_is(cmd, "STARTTLS")) {
		if (conn->set.initiator || conn->set.tls != PROTO_TLS_STARTTLS || conn->tls_active ||
		    conn->state != CS_AUTH || cmd->arg_count != 0) {
			send_status(conn, cmd->tag, "BAD", "PROTOCOL", "STARTTLS not possible now");
			return true;
		}
		send_status(conn, cmd->tag, "OK", NULL, "begin TLS");
		encode_pending(conn);
		if (tls_start(conn) < 0)
			conn_fail(conn, "cannot create TLS session");
		return true;
	}
	if (proto_cmd_is(cmd, "AUTH")) {
		if (conn->set.initiator || conn->authenticated || conn->state != CS_AUTH) {
			send_status(conn, cmd->tag, "BAD", "PROTOCOL", "AUTH not possible now");
			conn_close_after_flush(conn);
			return true;
		}
		if (conn->set.tls != PROTO_TLS_NONE && !conn->tls_active) {
			send_status(conn, cmd->tag, "NO", "PRIVACYREQUIRED", "TLS required");
			conn_close_after_flush(conn);
			return true;
		}
		if (cmd->arg_count != 2 || strcasecmp(cmd->args[0].str, "HMAC-SHA256") != 0 ||
		    !proof_matches(conn, true, &cmd->args[1])) {
			send_status(conn, cmd->tag, "NO", "AUTHFAILED", "authentication failed");
			snprintf(conn->peer_bye, sizeof(conn->peer_bye), "peer failed authentication");
			conn_close_after_flush(conn);
			return true;
		}
		unsigned char proof[PROTO_HMAC_SIZE];
		char code[8 + 2 * PROTO_HMAC_SIZE + 1];
		if (make_proof(conn, false, proof) < 0) {
			conn_fail(conn, "cannot compute authentication proof");
			return true;
		}
		memcpy(code, "AUTH ", 5);
		hex_encode(proof, sizeof(proof), code + 5);
		send_status(conn, cmd->tag, "OK", code, "authenticated");
		become_ready(conn);
		return true;
	}
	if (proto_cmd_is(cmd, "COMPRESS")) {
		if (!conn->authenticated) {
			send_status(conn, cmd->tag, "NO", "NOAUTH", "authenticate first");
			conn_close_after_flush(conn);
			return true;
		}
		if (conn->set.initiator || conn->comp_in ||
		    cmd->arg_count != 1 || strcasecmp(cmd->args[0].str, "DEFLATE") != 0) {
			send_status(conn, cmd->tag, "BAD", "PROTOCOL", "COMPRESS not possible");
			return true;
		}
		send_status(conn, cmd->tag, "OK", "COMPRESSIONACTIVE", "DEFLATE active");
		if (encode_pending(conn) < 0) {
			conn_fail(conn, "output encoding failed");
			return true;
		}
		compress_enable(conn);
		return true;
	}
	return false;
}

static void handle_line(struct proto_conn *conn, const struct proto_cmd *cmd)
{
	if (strcmp(cmd->tag, "*") == 0) {
		if (proto_cmd_is(cmd, "HELLO")) {
			handle_hello(conn, cmd);
		} else if (proto_cmd_is(cmd, "BYE")) {
			bool privacy = cmd->has_code && cmd->arg_count > 0 &&
				       strcasecmp(cmd->args[0].str, "PRIVACYREQUIRED") == 0;
			if (privacy && conn->set.tls == PROTO_TLS_NONE && !conn->authenticated)
				snprintf(conn->peer_bye, sizeof(conn->peer_bye), "%s",
					 conn->set.initiator ? "it speaks TLS but tls is off here" :
					 "the peer speaks TLS but tls is off here");
			else
				snprintf(conn->peer_bye, sizeof(conn->peer_bye),
					 "peer said BYE: %s%s%s",
					 cmd->has_code && cmd->arg_count > 0 ? cmd->args[0].str : "",
					 cmd->has_code ? " " : "", cmd->text);
		} else if (!conn->authenticated) {
			send_status(conn, "*", "BYE", "NOAUTH", "authenticate first");
			conn_close_after_flush(conn);
		} else if (conn->cb.untagged != NULL) {
			conn->cb.untagged(conn, cmd, conn->ctx);
		}
		return;
	}
	if (cmd->tag[0] == conn->my_prefix) {
		struct pending *p = pending_find(conn, cmd->tag);
		if (p == NULL)
			return; /* late answer to a command that timed out */
		if (proto_cmd_is_status(cmd)) {
			pending_unlink(conn, p);
			p->cb(conn, PROTO_REPLY_DONE, cmd, p->ctx);
			free(p);
		} else if (conn->authenticated) {
			p->cb(conn, PROTO_REPLY_DATA, cmd, p->ctx);
		}
		return;
	}
	if (cmd->tag[0] != conn->peer_prefix || proto_cmd_is_status(cmd)) {
		send_status(conn, "*", "BYE", "PROTOCOL", "tag of the wrong side");
		conn_close_after_flush(conn);
		return;
	}
	if (acceptor_handshake_cmd(conn, cmd))
		return;
	if (proto_cmd_is(cmd, "LOGOUT")) {
		send_status(conn, "*", "BYE", "LOGOUT", "closing");
		send_status(conn, cmd->tag, "OK", NULL, "LOGOUT completed");
		snprintf(conn->peer_bye, sizeof(conn->peer_bye), "peer logged out");
		conn_close_after_flush(conn);
		return;
	}
	if (!conn->authenticated) {
		send_status(conn, cmd->tag, "NO", "NOAUTH", "authenticate first");
		conn_close_after_flush(conn);
		return;
	}
	if (proto_cmd_is(cmd, "PING")) {
		send_status(conn, cmd->tag, "OK", NULL, "PONG");
		return;
	}
	if (conn->cb.command != NULL)
		conn->cb.command(conn, cmd, conn->ctx);
	else
		send_status(conn, cmd->tag, "BAD", "UNKNOWN-COMMAND", "no handler");
}

/* ------------------------------------------------------------------ */
/* Timers: handshake deadline, keepalive, closing deadline */

static void ping_reply_cb(struct proto_conn *conn, enum proto_reply_kind kind,
			  const struct proto_cmd *line, void *ctx)
{
	conn->ping_outstanding = false;
}

/* Before a silent peer is declared dead: bytes may be waiting in the
 * socket that the loop has not read yet, because this node was busy in a
 * long callback and libev runs expired timers before the read watcher of
 * the same wakeup.  Reads them first (when reading is on: a congested link
 * reads nothing, on purpose).  True if the peer turned out to be alive. */
static bool input_waiting_alive(struct proto_conn *conn)
{
	if (!conn->reading || conn->congested || conn->fd < 0)
		return false;
	ev_tstamp before = conn->last_rx;
	read_input(conn);
	return !is_dead(conn) && conn->last_rx != before;
}

/* The same for output: the peer may have taken bytes since the socket was
 * full, and the write watcher of this wakeup has not run yet (expired
 * timers run first).  Tries to write; true if the socket took bytes. */
static bool output_taken_alive(struct proto_conn *conn)
{
	if (conn->fd < 0 || !conn->write_blocked || buf_avail(&conn->out_net) == 0)
		return false;
	uint64_t before = conn->drains;
	pump_output(conn);
	return !is_dead(conn) && conn->drains != before;
}

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct proto_conn *conn = (struct proto_conn *)((char *)w - offsetof(struct proto_conn, tick));
	ev_tstamp now = ev_now(loop);
	enter(conn);
	if (conn->state == CS_CLOSING) {
		if (now - conn->closing_since >= CLOSE_FLUSH_MS / 1000.0)
			conn_fail(conn, conn->peer_bye[0] != '\0' ? conn->peer_bye : "closed");
	} else if (!conn->authenticated) {
		if (now - conn->created >= conn->set.handshake_timeout_ms / 1000.0)
			conn_fail(conn, "handshake timed out");
	} else if (now - conn->last_rx >= conn->set.dead_timeout_ms / 1000.0 &&
		   now - conn->last_drain >= conn->set.dead_timeout_ms / 1000.0 &&
		   !input_waiting_alive(conn) && !output_taken_alive(conn)) {
		conn_fail(conn, "peer timed out");
	} else if (now - conn->last_rx >= conn->set.ping_interval_ms / 1000.0 &&
		   !conn->ping_outstanding && !conn->hold_output) {
		conn->ping_outstanding = true;
		send_internal(conn, "PING", NULL, ping_reply_cb, 0);
	}
	leave(conn);
}

/* ------------------------------------------------------------------ */

struct proto_conn *proto_conn_create(struct ev_loop *loop, int fd,
				     const struct proto_conn_settings *set,
				     const struct proto_conn_callbacks *cb, void *ctx,
				     const char **error_r)
{
	struct proto_conn *conn = xcalloc(1, sizeof(*conn));
	conn->loop = loop;
	conn->fd = fd;
	conn->set = *set;
	conn->cb = *cb;
	conn->ctx = ctx;
	conn->secret = xmemdup(set->secret, set->secret_len);
	if (conn->set.handshake_timeout_ms == 0)
		conn->set.handshake_timeout_ms = 10000;
	if (conn->set.ping_interval_ms == 0)
		conn->set.ping_interval_ms = 30000;
	if (conn->set.dead_timeout_ms == 0)
		conn->set.dead_timeout_ms = 90000;
	if (conn->set.out_high_water == 0)
		conn->set.out_high_water = 4u << 20;
	if (conn->set.out_low_water == 0 || conn->set.out_low_water > conn->set.out_high_water)
		conn->set.out_low_water = conn->set.out_high_water / 4;
	conn->my_prefix = set->initiator ? 'C' : 'S';
	conn->peer_prefix = set->initiator ? 'S' : 'C';
	if (set->tls != PROTO_TLS_NONE && tls_ctx_create(conn, error_r) < 0) {
		conn->fd = -1; /* the caller keeps fd on failure */
		conn_free(conn);
		return NULL;
	}
	struct proto_parser_settings pre;
	proto_parser_settings_preauth(&pre);
	conn->parser = proto_parser_create(&pre);

	ev_io_init(&conn->rio, rio_cb, fd, EV_READ);
	ev_io_init(&conn->wio, wio_cb, fd, EV_WRITE);
	double tick = conn->set.ping_interval_ms / 4000.0;
	if (tick > 1.0)
		tick = 1.0;
	if (tick < 0.01)
		tick = 0.01;
	ev_timer_init(&conn->tick, tick_cb, tick, tick);
	ev_timer_start(loop, &conn->tick);
	ev_io_start(loop, &conn->rio);
	conn->reading = true;
	conn->created = conn->last_rx = ev_now(loop);

	int r = set->tls == PROTO_TLS_IMPLICIT ? tls_start(conn) : send_hello(conn);
	if (r < 0) {
		*error_r = "cannot start the connection (TLS session or random numbers)";
		conn->fd = -1; /* the caller keeps fd on failure, as above */
		close_fd(conn);
		conn_free(conn);
		return NULL;
	}
	return conn;
}

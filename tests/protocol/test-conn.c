/* Unit tests of the protocol connection: two ends over a socketpair in one
 * libev loop, or one end against a hand-driven raw socket.  TLS
 * certificates are made at suite start with the openssl command. */
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/str.h"
#include "lib/xalloc.h"
#include "protocol/protocol.h"
#include "tests/protocol/tests.h"

static char *steal_str(struct buf *b)
{
	size_t len;
	return (char *)buf_steal(b, &len);
}


static char *certdir;
static char *path_ca, *path_n1_cert, *path_n1_key, *path_n2_cert, *path_n2_key;
static char *path_rogue_cert, *path_rogue_key;
/* n3 names starling-node-3; hostb names node-b.example.test and 127.0.0.2;
 * cnonly has CN=n2 and no SAN. */
static char *path_n3_cert, *path_n3_key, *path_hostb_cert, *path_hostb_key;
static char *path_cnonly_cert, *path_cnonly_key;

static const unsigned char secret[] = "0123456789abcdef0123456789abcdef";
static const unsigned char wrong_secret[] = "0123456789abcdef0123456789abcdeX";

int proto_conn_suite_init(void)
{
	certdir = test_mkdtemp();
	char *cmd = xasprintf(
		"cd '%s' && ("
		"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
		"-keyout ca.key -out ca.pem -days 2 -subj /CN=starling-test-ca && "
		"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
		"-keyout rogue-ca.key -out rogue-ca.pem -days 2 -subj /CN=rogue-ca && "
		"printf 'subjectAltName=DNS:starling-node-1\\n' >n1.ext && "
		"printf 'subjectAltName=DNS:starling-node-2\\n' >n2.ext && "
		"printf 'subjectAltName=DNS:starling-node-3\\n' >n3.ext && "
		"printf 'subjectAltName=DNS:node-b.example.test,IP:127.0.0.2\\n' >hostb.ext && "
		"printf 'basicConstraints=CA:FALSE\\n' >cnonly.ext && "
		"for n in n1 n2 n3 hostb cnonly; do "
		"openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
		"-keyout $n.key -out $n.csr -subj /CN=$n && "
		"openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
		"-extfile $n.ext -out $n.pem -days 2 || exit 1; done && "
		"openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
		"-keyout rogue.key -out rogue.csr -subj /CN=n1 && "
		"openssl x509 -req -in rogue.csr -CA rogue-ca.pem -CAkey rogue-ca.key "
		"-CAcreateserial -out rogue.pem -days 2"
		") >/dev/null 2>&1",
		certdir);
	int r = system(cmd);
	free(cmd);
	if (r != 0) {
		fprintf(stderr, "cannot create test certificates with openssl\n");
		return -1;
	}
	path_ca = xasprintf("%s/ca.pem", certdir);
	path_n1_cert = xasprintf("%s/n1.pem", certdir);
	path_n1_key = xasprintf("%s/n1.key", certdir);
	path_n2_cert = xasprintf("%s/n2.pem", certdir);
	path_n2_key = xasprintf("%s/n2.key", certdir);
	path_rogue_cert = xasprintf("%s/rogue.pem", certdir);
	path_rogue_key = xasprintf("%s/rogue.key", certdir);
	path_n3_cert = xasprintf("%s/n3.pem", certdir);
	path_n3_key = xasprintf("%s/n3.key", certdir);
	path_hostb_cert = xasprintf("%s/hostb.pem", certdir);
	path_hostb_key = xasprintf("%s/hostb.key", certdir);
	path_cnonly_cert = xasprintf("%s/cnonly.pem", certdir);
	path_cnonly_key = xasprintf("%s/cnonly.key", certdir);
	return 0;
}

int proto_conn_suite_cleanup(void)
{
	test_rmtree(certdir);
	free(certdir);
	free(path_ca);
	free(path_n1_cert);
	free(path_n1_key);
	free(path_n2_cert);
	free(path_n2_key);
	free(path_rogue_cert);
	free(path_rogue_key);
	free(path_n3_cert);
	free(path_n3_key);
	free(path_hostb_cert);
	free(path_hostb_key);
	free(path_cnonly_cert);
	free(path_cnonly_key);
	return 0;
}

/* One end of a link and what happened to it. */
struct side {
	struct proto_conn *conn;
	int ready, closed, commands, drained, untagged;
	char reason[200];
	struct buf received;   /* dumps of received commands */
	bool reply_to_commands;
	bool destroy_on_command;
	int replies_done, replies_data, replies_timeout, replies_closed;
	struct buf reply_codes;
	const char *peer_host; /* what the peer_host callback answers */
	uint32_t host_asked;   /* the SID it was asked about */
};

static void dump_arg(struct buf *b, const struct proto_arg *a)
{
	switch (a->type) {
	case PROTO_ARG_LIST:
		buf_append_byte(b, '(');
		for (size_t i = 0; i < a->count; i++) {
			if (i > 0)
				buf_append_byte(b, ' ');
			dump_arg(b, &a->list[i]);
		}
		buf_append_byte(b, ')');
		break;
	case PROTO_ARG_LITERAL:
		buf_appendf(b, "{%zu}", a->len);
		/* fall through */
	default:
		buf_append(b, a->str, a->len);
	}
}

static void on_ready(struct proto_conn *conn, void *ctx)
{
	struct side *s = ctx;
	s->ready++;
}

static void on_command(struct proto_conn *conn, const struct proto_cmd *cmd, void *ctx)
{
	struct side *s = ctx;
	s->commands++;
	buf_appendf(&s->received, "%s", cmd->name);
	for (size_t i = 0; i < cmd->arg_count; i++) {
		buf_append_byte(&s->received, ' ');
		dump_arg(&s->received, &cmd->args[i]);
	}
	buf_append_byte(&s->received, '\n');
	if (s->destroy_on_command) {
		proto_conn_reply(conn, cmd->tag, "OK", NULL, "bye");
		proto_conn_destroy(&s->conn);
		return;
	}
	if (s->reply_to_commands) {
		struct proto_wr *w = proto_conn_line_begin(conn, cmd->tag, "ECHO");
		proto_wr_cstr(w, cmd->name);
		proto_conn_line_end(conn);
		proto_conn_reply(conn, cmd->tag, "OK", "UID 17 MASTER 3 EPOCH 7", "done");
	}
}

static void on_untagged(struct proto_conn *conn, const struct proto_cmd *line, void *ctx)
{
	struct side *s = ctx;
	s->untagged++;
}

static void on_closed(struct proto_conn *conn, const char *reason, void *ctx)
{
	struct side *s = ctx;
	s->closed++;
	snprintf(s->reason, sizeof(s->reason), "%s", reason);
	s->conn = NULL;
}

static void on_drained(struct proto_conn *conn, void *ctx)
{
	struct side *s = ctx;
	s->drained++;
}

static const char *on_peer_host(struct proto_conn *conn, uint32_t sid, void *ctx)
{
	struct side *s = ctx;
	s->host_asked = sid;
	return s->peer_host;
}

static const struct proto_conn_callbacks side_cb = {
	.peer_host = on_peer_host,
	.ready = on_ready,
	.command = on_command,
	.untagged = on_untagged,
	.drained = on_drained,
	.closed = on_closed,
};

static void on_reply(struct proto_conn *conn, enum proto_reply_kind kind,
		     const struct proto_cmd *line, void *ctx)
{
	struct side *s = ctx;
	switch (kind) {
	case PROTO_REPLY_DATA:
		s->replies_data++;
		break;
	case PROTO_REPLY_DONE:
		s->replies_done++;
		buf_appendf(&s->reply_codes, "%s", line->name);
		for (size_t i = 0; i < line->arg_count; i++)
			buf_appendf(&s->reply_codes, " %s", line->args[i].str);
		buf_append_byte(&s->reply_codes, '\n');
		break;
	case PROTO_REPLY_TIMEOUT:
		s->replies_timeout++;
		break;
	case PROTO_REPLY_CLOSED:
		s->replies_closed++;
		break;
	}
}

static void side_free(struct side *s)
{
	proto_conn_destroy(&s->conn);
	buf_free(&s->received);
	buf_free(&s->reply_codes);
}

static void make_pair(int fds[2])
{
	CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
	for (int i = 0; i < 2; i++)
		fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
}

static void base_settings(struct proto_conn_settings *set, uint32_t sid, bool initiator)
{
	memset(set, 0, sizeof(*set));
	set->my_sid = sid;
	set->initiator = initiator;
	set->secret = secret;
	set->secret_len = sizeof(secret) - 1;
	set->handshake_timeout_ms = 3000;
}

static void tls_settings(struct proto_conn_settings *set, enum proto_tls_mode mode, bool n1)
{
	set->tls = mode;
	set->tls_ca = path_ca;
	set->tls_cert = n1 ? path_n1_cert : path_n2_cert;
	set->tls_key = n1 ? path_n1_key : path_n2_key;
}

static void timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
}

/* Runs the loop until cond(arg) holds or `seconds` pass.  Returns cond. */
static bool run_until(struct ev_loop *loop, bool (*cond)(void *), void *arg, double seconds)
{
	ev_timer t;
	ev_timer_init(&t, timeout_cb, 0.01, 0.01);
	ev_timer_start(loop, &t);
	ev_now_update(loop);
	ev_tstamp end = ev_now(loop) + seconds;
	bool ok;
	while (!(ok = cond(arg)) && ev_now(loop) < end)
		ev_run(loop, EVRUN_ONCE);
	ev_timer_stop(loop, &t);
	return ok;
}

struct two {
	struct side *a, *b;
};

static bool both_ready(void *arg)
{
	struct two *t = arg;
	return (t->a->ready && t->b->ready) || t->a->closed || t->b->closed;
}

static bool both_closed(void *arg)
{
	struct two *t = arg;
	return t->a->closed && t->b->closed;
}

static bool side_closed(void *arg)
{
	return ((struct side *)arg)->closed > 0;
}

/* A hand-driven peer on a raw socket (see raw_open()). */
struct raw {
	int fd;
	struct buf in;
};

static void raw_close(struct raw *r)
{
	close(r->fd);
	buf_free(&r->in);
}

/* One link in a loop of its own: a the initiator (SID 1) and b the
 * acceptor (SID 2) over a socketpair once link_connect() runs, or b
 * against the raw peer r once raw_open() does.  sa and sb start as
 * base_settings(); a test changes them before it connects. */
struct link {
	struct ev_loop *loop;
	struct side a, b;
	struct proto_conn_settings sa, sb;
	struct two t; /* a and b, for both_ready() and both_closed() */
	struct raw r;
};

static void link_init(struct link *l)
{
	memset(l, 0, sizeof(*l));
	l->loop = ev_loop_new(EVFLAG_AUTO);
	base_settings(&l->sa, 1, true);
	base_settings(&l->sb, 2, false);
	l->t.a = &l->a;
	l->t.b = &l->b;
	l->r.fd = -1;
}

static void link_connect(struct link *l)
{
	int fds[2];
	make_pair(fds);
	const char *error = NULL;
	l->a.conn = proto_conn_create(l->loop, fds[0], &l->sa, &side_cb, &l->a, &error);
	CU_ASSERT_PTR_NOT_NULL_FATAL(l->a.conn);
	l->b.conn = proto_conn_create(l->loop, fds[1], &l->sb, &side_cb, &l->b, &error);
	CU_ASSERT_PTR_NOT_NULL_FATAL(l->b.conn);
}

static void link_free(struct link *l)
{
	if (l->r.fd >= 0)
		raw_close(&l->r);
	side_free(&l->a);
	side_free(&l->b);
	ev_loop_destroy(l->loop);
}

static void exchange_commands(struct ev_loop *loop, struct side *a, struct side *b)
{
	b->reply_to_commands = true;
	struct proto_wr *w = proto_conn_cmd_begin(a->conn, "SAVE");
	proto_wr_date(w, 1700000000, 60);
	proto_wr_u64(w, 0);
	proto_wr_literal(w, "hello\r\n", 7);
	proto_conn_cmd_send(a->conn, 2000, on_reply, a);
	a->reply_to_commands = true;
	w = proto_conn_cmd_begin(b->conn, "SELECT");
	proto_wr_u64(w, 4);
	proto_conn_cmd_send(b->conn, 2000, on_reply, b);
	w = proto_conn_line_begin(b->conn, "*", "X-NOTE");
	proto_wr_cstr(w, "announcement");
	proto_conn_line_end(b->conn);
	bool ok = false;
	for (int i = 0; i < 500 && !ok; i++) {
		ev_run(loop, EVRUN_ONCE);
		ok = a->replies_done == 1 && b->replies_done == 1 && a->untagged == 1;
	}
	CU_ASSERT(ok);
	CU_ASSERT_EQUAL(b->commands, 1);
	CU_ASSERT_EQUAL(a->commands, 1);
	CU_ASSERT_STRING_EQUAL(buf_cstr(&b->received), "SAVE 1700000000+0100 0 {7}hello\r\n\n");
	CU_ASSERT_STRING_EQUAL(buf_cstr(&a->received), "SELECT 4\n");
	CU_ASSERT_EQUAL(a->replies_data, 1);
	CU_ASSERT_STRING_EQUAL(buf_cstr(&a->reply_codes), "OK UID 17 MASTER 3 EPOCH 7\n");
}

static void test_handshake_with_same_secret_gives_ready_links(void)
{
	struct link l;
	link_init(&l);
	l.sa.expected_peer_sid = 2;
	link_connect(&l);
	CU_ASSERT(run_until(l.loop, both_ready, &l.t, 5));
	CU_ASSERT_EQUAL(l.a.ready, 1);
	CU_ASSERT_EQUAL(l.b.ready, 1);
	CU_ASSERT_EQUAL_FATAL(l.a.closed + l.b.closed, 0);
	CU_ASSERT_EQUAL(proto_conn_peer_sid(l.a.conn), 2);
	CU_ASSERT_EQUAL(proto_conn_peer_sid(l.b.conn), 1);
	CU_ASSERT_FALSE(proto_conn_is_tls(l.a.conn));
	CU_ASSERT_FALSE(proto_conn_is_compressed(l.a.conn));
	exchange_commands(l.loop, &l.a, &l.b);
	/* Orderly close: both learn it, pending callbacks are not lost. */
	proto_conn_logout(l.a.conn);
	CU_ASSERT(run_until(l.loop, both_closed, &l.t, 5));
	CU_ASSERT(strstr(l.b.reason, "logged out") != NULL);
	link_free(&l);
}

static void test_wrong_secret_is_refused_on_both_sides(void)
{
	struct link l;
	link_init(&l);
	l.sa.secret = wrong_secret;
	link_connect(&l);
	CU_ASSERT(run_until(l.loop, both_closed, &l.t, 5));
	CU_ASSERT_EQUAL(l.a.ready + l.b.ready, 0);
	CU_ASSERT_EQUAL(l.a.commands + l.b.commands, 0);
	CU_ASSERT(strstr(l.a.reason, "authentication") != NULL);
	CU_ASSERT(strstr(l.b.reason, "authentication") != NULL);
	link_free(&l);
}

/* ---- a hand-driven peer on a raw socket ---- */

static void raw_send(struct raw *r, const char *s)
{
	size_t len = strlen(s), off = 0;
	while (off < len) {
		ssize_t n = write(r->fd, s + off, len - off);
		if (n > 0)
			off += (size_t)n;
		else if (errno != EAGAIN && errno != EINTR)
			break;
	}
}

static void raw_read(struct raw *r)
{
	char tmp[65536];
	ssize_t n;
	while ((n = read(r->fd, tmp, sizeof(tmp))) > 0)
		buf_append(&r->in, tmp, (size_t)n);
}

struct raw_wait {
	struct ev_loop *loop;
	struct raw *raw;
	const char *want;
	struct side *side;
};

static bool raw_has(void *arg)
{
	struct raw_wait *w = arg;
	raw_read(w->raw);
	return strstr(buf_cstr(&w->raw->in), w->want) != NULL || (w->side && w->side->closed);
}

/* Plays initiator with SID 5 against acceptor b: reads b's HELLO and
 * answers with HELLO and a correct AUTH. */
static void raw_handshake(struct ev_loop *loop, struct raw *r, struct side *b)
{
	struct raw_wait w = { loop, r, "* HELLO", b };
	CU_ASSERT_FATAL(run_until(loop, raw_has, &w, 5));
	w.want = ")\r\n";
	CU_ASSERT_FATAL(run_until(loop, raw_has, &w, 5));
	const char *hello = strstr(buf_cstr(&r->in), "* HELLO 1.2 2 ");
	CU_ASSERT_PTR_NOT_NULL_FATAL(hello);
	unsigned char acc_nonce[PROTO_NONCE_SIZE], init_nonce[PROTO_NONCE_SIZE] = { 9, 9, 9 };
	CU_ASSERT_FATAL(hex_decode(hello + 14, 64, acc_nonce, sizeof(acc_nonce)) == 0);
	unsigned char proof[PROTO_HMAC_SIZE];
	proto_auth_proof(secret, sizeof(secret) - 1, "initiator", init_nonce, acc_nonce, 5, 2, NULL,
			 proof);
	char nhex[65], phex[65], line[300];
	hex_encode(init_nonce, sizeof(init_nonce), nhex);
	hex_encode(proof, sizeof(proof), phex);
	snprintf(line, sizeof(line), "* HELLO 1.0 5 %s ()\r\nC1 AUTH HMAC-SHA256 %s\r\n", nhex, phex);
	raw_send(r, line);
	w.want = "C1 OK [AUTH ";
	CU_ASSERT_FATAL(run_until(loop, raw_has, &w, 5));
	CU_ASSERT_EQUAL(b->ready, 1);
}

static void raw_open(struct ev_loop *loop, struct raw *r, struct side *b,
		     const struct proto_conn_settings *sb)
{
	int fds[2];
	make_pair(fds);
	r->fd = fds[0];
	buf_init(&r->in);
	const char *error;
	b->conn = proto_conn_create(loop, fds[1], sb, &side_cb, b, &error);
	CU_ASSERT_PTR_NOT_NULL_FATAL(b->conn);
}

/* Opens b against the raw peer r and plays the peer's handshake. */
static void link_raw_ready(struct link *l)
{
	raw_open(l->loop, &l->r, &l->b, &l->sb);
	raw_handshake(l->loop, &l->r, &l->b);
}

static void test_wrong_proof_gets_no_and_pipelined_command_is_not_seen(void)
{
	struct link l;
	link_init(&l);
	raw_open(l.loop, &l.r, &l.b, &l.sb);
	char line[400];
	snprintf(line, sizeof(line),
		 "* HELLO 1.0 5 %064d ()\r\nC1 AUTH HMAC-SHA256 %064d\r\nC2 SELECT 1\r\n", 0, 0);
	raw_send(&l.r, line);
	CU_ASSERT(run_until(l.loop, side_closed, &l.b, 5));
	raw_read(&l.r);
	CU_ASSERT_EQUAL(l.b.ready, 0);
	CU_ASSERT_EQUAL(l.b.commands, 0);
	CU_ASSERT(strstr(buf_cstr(&l.r.in), "C1 NO [AUTHFAILED]") != NULL);
	/* The refused peer learns no proof made with the real secret. */
	CU_ASSERT(strstr(buf_cstr(&l.r.in), "[AUTH ") == NULL);
	link_free(&l);
}

static void test_command_before_auth_is_refused(void)
{
	static const char *const cmds[] = { "C1 SELECT 1", "C1 COMPRESS DEFLATE", "C1 PING" };
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		struct link l;
		link_init(&l);
		raw_open(l.loop, &l.r, &l.b, &l.sb);
		char line[300];
		snprintf(line, sizeof(line), "* HELLO 1.0 5 %064d ()\r\n%s\r\n", 0, cmds[i]);
		raw_send(&l.r, line);
		CU_ASSERT(run_until(l.loop, side_closed, &l.b, 5));
		raw_read(&l.r);
		CU_ASSERT_EQUAL(l.b.commands, 0);
		CU_ASSERT(strstr(buf_cstr(&l.r.in), "C1 NO [NOAUTH]") != NULL);
		link_free(&l);
	}
}

static void test_command_written_before_ready_is_dropped(void)
{
	struct link l;
	link_init(&l);
	link_connect(&l);
	/* Not ready yet: the command must not reach the wire before AUTH. */
	struct proto_wr *w = proto_conn_cmd_begin(l.a.conn, "SELECT");
	proto_wr_u64(w, 1);
	CU_ASSERT_PTR_NULL(proto_conn_cmd_send(l.a.conn, 0, on_reply, &l.a));
	CU_ASSERT_EQUAL(l.a.replies_closed, 1);
	CU_ASSERT(run_until(l.loop, both_ready, &l.t, 5));
	CU_ASSERT_EQUAL(l.a.closed + l.b.closed, 0);
	CU_ASSERT_EQUAL(l.b.commands, 0);
	link_free(&l);
}

static void test_truncated_handshake_is_refused(void)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct side b = { 0 }, c = { 0 };
	struct raw r, r2;
	struct proto_conn_settings sb;
	base_settings(&sb, 2, false);
	/* The peer hangs up in the middle of its greeting. */
	raw_open(loop, &r, &b, &sb);
	raw_send(&r, "* HELLO 1.0 5 0000");
	shutdown(r.fd, SHUT_WR);
	CU_ASSERT(run_until(loop, side_closed, &b, 5));
	CU_ASSERT_EQUAL(b.ready, 0);
	/* The peer stops in the middle of its greeting and stays silent. */
	sb.handshake_timeout_ms = 200;
	raw_open(loop, &r2, &c, &sb);
	raw_send(&r2, "* HELLO 1.0 5 0000");
	CU_ASSERT(run_until(loop, side_closed, &c, 5));
	CU_ASSERT_EQUAL(c.ready, 0);
	CU_ASSERT(strstr(c.reason, "handshake timed out") != NULL);
	/* A greeting with another major version is refused with its code. */
	raw_close(&r);
	side_free(&b);
	memset(&b, 0, sizeof(b));
	raw_open(loop, &r, &b, &sb);
	char line[200];
	snprintf(line, sizeof(line), "* HELLO 2.0 5 %064d ()\r\n", 0);
	raw_send(&r, line);
	CU_ASSERT(run_until(loop, side_closed, &b, 5));
	raw_read(&r);
	CU_ASSERT(strstr(buf_cstr(&r.in), "* BYE [VERSION 1.2]") != NULL);
	raw_close(&r);
	raw_close(&r2);
	side_free(&b);
	side_free(&c);
	ev_loop_destroy(loop);
}

static void test_tls_links_work_with_cluster_certificates(void)
{
	for (int mode = 0; mode < 2; mode++) {
		struct link l;
		link_init(&l);
		enum proto_tls_mode m = mode == 0 ? PROTO_TLS_STARTTLS : PROTO_TLS_IMPLICIT;
		tls_settings(&l.sa, m, true);
		tls_settings(&l.sb, m, false);
		l.sa.compress = mode == 1;
		link_connect(&l);
		CU_ASSERT(run_until(l.loop, both_ready, &l.t, 5));
		CU_ASSERT_EQUAL_FATAL(l.a.closed + l.b.closed, 0);
		CU_ASSERT(proto_conn_is_tls(l.a.conn));
		CU_ASSERT(proto_conn_is_tls(l.b.conn));
		exchange_commands(l.loop, &l.a, &l.b);
		CU_ASSERT_EQUAL(proto_conn_is_compressed(l.a.conn), mode == 1);
		link_free(&l);
	}
}

static void test_tls_with_untrusted_certificate_is_refused(void)
{
	for (int which = 0; which < 2; which++) {
		struct link l;
		link_init(&l);
		tls_settings(&l.sa, PROTO_TLS_STARTTLS, true);
		tls_settings(&l.sb, PROTO_TLS_STARTTLS, false);
		/* Either side presents a certificate of another CA. */
		struct proto_conn_settings *bad = which == 0 ? &l.sa : &l.sb;
		bad->tls_cert = path_rogue_cert;
		bad->tls_key = path_rogue_key;
		link_connect(&l);
		CU_ASSERT(run_until(l.loop, both_closed, &l.t, 5));
		CU_ASSERT_EQUAL(l.a.ready + l.b.ready, 0);
		CU_ASSERT_EQUAL(l.a.commands + l.b.commands, 0);
		link_free(&l);
	}
}

/* A certificate of the cluster CA is not enough: it must name the node
 * (SAN DNS starling-node-SID, or the host of its peer line). */
static void test_tls_certificate_must_name_the_peer(void)
{
	for (int which = 0; which < 4; which++) {
		struct link l;
		link_init(&l);
		enum proto_tls_mode m = which % 2 == 0 ? PROTO_TLS_IMPLICIT : PROTO_TLS_STARTTLS;
		tls_settings(&l.sa, m, true);
		tls_settings(&l.sb, m, false);
		/* 0, 1: node 1 shows node 3's certificate; 2, 3: node 2 does. */
		struct side *liar = which < 2 ? &l.a : &l.b, *judge = which < 2 ? &l.b : &l.a;
		struct proto_conn_settings *bad = which < 2 ? &l.sa : &l.sb;
		bad->tls_cert = path_n3_cert;
		bad->tls_key = path_n3_key;
		link_connect(&l);
		CU_ASSERT(run_until(l.loop, both_closed, &l.t, 5));
		CU_ASSERT_EQUAL(l.a.ready + l.b.ready, 0);
		char want[64];
		snprintf(want, sizeof(want), "TLS certificate does not name node %d", which < 2 ? 1 : 2);
		CU_ASSERT_PTR_NOT_NULL(strstr(judge->reason, want));
		CU_ASSERT_PTR_NOT_NULL(strstr(judge->reason, "it names: DNS:starling-node-3 CN=n3"));
		CU_ASSERT_PTR_NOT_NULL(strstr(liar->reason, "does not name the node you claim"));
		link_free(&l);
	}
}

/* The host of the peer line, DNS or IP, names the peer too; a certificate
 * without SAN (CN only) names nobody. */
static void test_tls_certificate_may_name_the_peer_host(void)
{
	static const struct {
		const char *cert, *key, *host;
		bool ok;
	} cases[] = {
		{ NULL, NULL, "node-b.example.test", true },
		{ NULL, NULL, "NODE-B.example.test", true },
		{ NULL, NULL, "127.0.0.2", true },
		{ NULL, NULL, "node-c.example.test", false },
		{ NULL, NULL, "127.0.0.3", false },
		{ NULL, NULL, NULL, false },
		{ "cnonly", NULL, "cnonly", false }, /* the CN is no name */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct link l;
		link_init(&l);
		tls_settings(&l.sa, PROTO_TLS_IMPLICIT, true);
		tls_settings(&l.sb, PROTO_TLS_IMPLICIT, false);
		bool cnonly = cases[i].cert != NULL;
		l.sb.tls_cert = cnonly ? path_cnonly_cert : path_hostb_cert;
		l.sb.tls_key = cnonly ? path_cnonly_key : path_hostb_key;
		l.a.peer_host = cases[i].host;
		link_connect(&l);
		if (cases[i].ok) {
			CU_ASSERT(run_until(l.loop, both_ready, &l.t, 5));
			CU_ASSERT(l.a.ready == 1 && l.b.ready == 1);
		} else {
			CU_ASSERT(run_until(l.loop, both_closed, &l.t, 5));
			CU_ASSERT_EQUAL(l.a.ready + l.b.ready, 0);
			CU_ASSERT_PTR_NOT_NULL(
				strstr(l.a.reason, "TLS certificate does not name node 2"));
		}
		CU_ASSERT_EQUAL(l.a.host_asked, 2);
		CU_ASSERT_EQUAL(l.b.host_asked, 1);
		link_free(&l);
	}
}

/* TLS on one side only: one clear reason on each, not OpenSSL's "wrong
 * version number" or the parser's "Bad tag". */
static void test_half_tls_says_so_on_both_sides(void)
{
	for (int tls_side = 0; tls_side < 2; tls_side++) {
		struct link l;
		link_init(&l);
		tls_settings(tls_side == 0 ? &l.sa : &l.sb, PROTO_TLS_IMPLICIT, tls_side == 0);
		link_connect(&l);
		CU_ASSERT(run_until(l.loop, both_closed, &l.t, 5));
		CU_ASSERT_EQUAL(l.a.ready + l.b.ready, 0);
		struct side *tls = tls_side == 0 ? &l.a : &l.b;
		struct side *plain = tls_side == 0 ? &l.b : &l.a;
		CU_ASSERT_PTR_NOT_NULL(strstr(plain->reason, "speaks TLS but tls is off here"));
		CU_ASSERT_PTR_NOT_NULL(strstr(tls->reason, "did not start TLS but tls is on here"));
		if (tls_side == 1) /* the acceptor names the peer from its HELLO */
			CU_ASSERT_PTR_NOT_NULL(strstr(tls->reason, "peer 1 did not start TLS"));
		link_free(&l);
	}
}

/* What a node sent first still reaches the peer when it closes on a
 * half-TLS mismatch (the peer's own line depends on it), even when the
 * peer's bytes are read before this side ever wrote. */
static void test_half_tls_close_flushes_what_was_sent(void)
{
	for (int variant = 0; variant < 2; variant++) {
		struct link l;
		link_init(&l);
		/* 0: a TLS-only initiator gets a plain HELLO; 1: a plain
		 * acceptor gets a TLS ClientHello. */
		base_settings(&l.sb, variant == 0 ? 1 : 2, variant == 0);
		if (variant == 0)
			tls_settings(&l.sb, PROTO_TLS_IMPLICIT, true);
		raw_open(l.loop, &l.r, &l.b, &l.sb);
		if (variant == 0) {
			char line[200];
			snprintf(line, sizeof(line), "* HELLO 1.0 2 %064d ()\r\n", 0);
			raw_send(&l.r, line);
		} else {
			raw_send(&l.r, "\x16\x03\x01\x01\x05hello");
		}
		CU_ASSERT(run_until(l.loop, side_closed, &l.b, 5));
		raw_read(&l.r);
		CU_ASSERT(l.r.in.len > 0);
		if (variant == 0) {
			CU_ASSERT(l.r.in.len > 0 && ((unsigned char *)l.r.in.data)[0] == 0x16);
			CU_ASSERT_PTR_NOT_NULL(
				strstr(l.b.reason, "did not start TLS but tls is on here"));
		} else {
			CU_ASSERT(strncmp(buf_cstr(&l.r.in), "* HELLO ", 8) == 0);
			CU_ASSERT_PTR_NOT_NULL(
				strstr(l.b.reason, "speaks TLS but tls is off here"));
		}
		link_free(&l);
	}
}

static void test_starttls_acceptor_refuses_plain_auth_and_injected_bytes(void)
{
	for (int variant = 0; variant < 2; variant++) {
		struct link l;
		link_init(&l);
		tls_settings(&l.sb, PROTO_TLS_STARTTLS, false);
		raw_open(l.loop, &l.r, &l.b, &l.sb);
		char line[400];
		/* 0: AUTH in plain text; 1: a command smuggled after STARTTLS. */
		snprintf(line, sizeof(line), "* HELLO 1.0 5 %064d ()\r\n%s", 0,
			 variant == 0 ? "C1 AUTH HMAC-SHA256 00\r\n" : "C1 STARTTLS\r\nC2 SELECT 1\r\n");
		raw_send(&l.r, line);
		CU_ASSERT(run_until(l.loop, side_closed, &l.b, 5));
		raw_read(&l.r);
		CU_ASSERT_EQUAL(l.b.ready, 0);
		CU_ASSERT_EQUAL(l.b.commands, 0);
		if (variant == 0) {
			CU_ASSERT(strstr(buf_cstr(&l.r.in), "C1 NO [PRIVACYREQUIRED]") != NULL);
		} else {
			CU_ASSERT(strstr(l.b.reason, "plain text after STARTTLS") != NULL);
		}
		link_free(&l);
	}
}

static void test_plain_initiator_cannot_skip_required_tls(void)
{
	struct link l;
	link_init(&l);
	tls_settings(&l.sb, PROTO_TLS_STARTTLS, false);
	link_connect(&l);
	CU_ASSERT(run_until(l.loop, both_closed, &l.t, 5));
	CU_ASSERT_EQUAL(l.a.ready + l.b.ready, 0);
	link_free(&l);
}

/* Sends the same commands over a link and returns what the acceptor got. */
static char *carry_commands(bool compress, bool tls, bool *was_compressed)
{
	struct link l;
	link_init(&l);
	if (tls) {
		tls_settings(&l.sa, PROTO_TLS_STARTTLS, true);
		tls_settings(&l.sb, PROTO_TLS_STARTTLS, false);
	}
	l.sa.compress = compress;
	link_connect(&l);
	CU_ASSERT(run_until(l.loop, both_ready, &l.t, 5));
	size_t big_len = 1u << 20;
	unsigned char *big = xmalloc(big_len);
	for (size_t i = 0; i < big_len; i++)
		big[i] = (unsigned char)((i * 7919) >> 3);
	l.b.reply_to_commands = true;
	for (int i = 0; i < 50; i++) {
		struct proto_wr *w = proto_conn_cmd_begin(l.a.conn, i % 10 == 0 ? "SAVE" : "STORE");
		proto_wr_u64(w, (uint64_t)i);
		proto_wr_cstr(w, "Sent Items");
		if (i == 25)
			proto_wr_literal(w, big, big_len);
		else
			proto_wr_literal(w, big + i, (size_t)i * 10);
		proto_wr_list_begin(w);
		proto_wr_atom(w, "\\Seen");
		proto_wr_list_end(w);
		proto_conn_cmd_send(l.a.conn, 5000, on_reply, &l.a);
	}
	for (int i = 0; i < 2000 && l.a.replies_done < 50 && !l.a.closed; i++)
		ev_run(l.loop, EVRUN_ONCE);
	CU_ASSERT_EQUAL(l.a.replies_done, 50);
	CU_ASSERT_EQUAL(l.b.commands, 50);
	*was_compressed = l.a.conn != NULL && proto_conn_is_compressed(l.a.conn) &&
			  proto_conn_is_compressed(l.b.conn);
	/* Literal bytes are summarised by a checksum to keep the text small. */
	struct buf sum = BUF_INIT;
	const char *p = buf_cstr(&l.b.received);
	unsigned long h = 5381;
	for (size_t i = 0; i < l.b.received.len; i++)
		h = h * 33 + (unsigned char)p[i];
	buf_appendf(&sum, "%zu %lx", l.b.received.len, h);
	free(big);
	link_free(&l);
	return steal_str(&sum);
}

static void test_compressed_and_plain_links_carry_identical_commands(void)
{
	bool comp_plain, comp_deflate, comp_tls;
	char *plain = carry_commands(false, false, &comp_plain);
	char *deflated = carry_commands(true, false, &comp_deflate);
	char *tls_deflated = carry_commands(true, true, &comp_tls);
	CU_ASSERT_FALSE(comp_plain);
	CU_ASSERT(comp_deflate);
	CU_ASSERT(comp_tls);
	CU_ASSERT_STRING_EQUAL(plain, deflated);
	CU_ASSERT_STRING_EQUAL(plain, tls_deflated);
	free(tls_deflated);
	/* 1 MiB literal plus the rest made it through. */
	CU_ASSERT(strtoul(plain, NULL, 10) > (1u << 20));
	free(plain);
	free(deflated);
}

/* A raw acceptor (SID 2) that authenticates the initiator correctly but
 * never answers COMPRESS: the initiator, whose output is held until that
 * answer, must give up instead of hanging. */
static void test_unanswered_compress_closes_the_link(void)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct side a = { 0 };
	struct raw r;
	int fds[2];
	make_pair(fds);
	r.fd = fds[1];
	buf_init(&r.in);
	struct proto_conn_settings sa;
	base_settings(&sa, 1, true);
	sa.compress = true;
	sa.handshake_timeout_ms = 300;
	const char *error;
	a.conn = proto_conn_create(loop, fds[0], &sa, &side_cb, &a, &error);
	CU_ASSERT_PTR_NOT_NULL_FATAL(a.conn);
	struct raw_wait w = { loop, &r, ")\r\n", &a };
	CU_ASSERT_FATAL(run_until(loop, raw_has, &w, 5));
	const char *hello = strstr(buf_cstr(&r.in), "* HELLO 1.2 1 ");
	CU_ASSERT_PTR_NOT_NULL_FATAL(hello);
	unsigned char init_nonce[PROTO_NONCE_SIZE], acc_nonce[PROTO_NONCE_SIZE] = { 7 };
	CU_ASSERT_FATAL(hex_decode(hello + 14, 64, init_nonce, sizeof(init_nonce)) == 0);
	char nhex[65], phex[65], line[300];
	hex_encode(acc_nonce, sizeof(acc_nonce), nhex);
	snprintf(line, sizeof(line), "* HELLO 1.0 2 %s (COMPRESS=DEFLATE)\r\n", nhex);
	raw_send(&r, line);
	w.want = "C1 AUTH HMAC-SHA256 ";
	CU_ASSERT_FATAL(run_until(loop, raw_has, &w, 5));
	unsigned char proof[PROTO_HMAC_SIZE];
	proto_auth_proof(secret, sizeof(secret) - 1, "acceptor", init_nonce, acc_nonce, 1, 2, NULL,
			 proof);
	hex_encode(proof, sizeof(proof), phex);
	snprintf(line, sizeof(line), "C1 OK [AUTH %s] authenticated\r\n", phex);
	raw_send(&r, line);
	w.want = "C2 COMPRESS DEFLATE\r\n";
	CU_ASSERT(run_until(loop, raw_has, &w, 5));
	CU_ASSERT_EQUAL(a.ready, 1);
	CU_ASSERT(run_until(loop, side_closed, &a, 5));
	CU_ASSERT(strstr(a.reason, "COMPRESS timed out") != NULL);
	raw_close(&r);
	side_free(&a);
	ev_loop_destroy(loop);
}

static void test_literal_over_the_message_limit_closes_with_toobig(void)
{
	struct link l;
	link_init(&l);
	l.sb.limits.max_literal = 1000;
	link_connect(&l);
	CU_ASSERT(run_until(l.loop, both_ready, &l.t, 5));
	l.b.reply_to_commands = true;
	static char text[1001];
	struct proto_wr *w = proto_conn_cmd_begin(l.a.conn, "SAVE");
	proto_wr_literal(w, text, 1000);
	proto_conn_cmd_send(l.a.conn, 0, on_reply, &l.a);
	w = proto_conn_cmd_begin(l.a.conn, "SAVE");
	proto_wr_literal(w, text, 1001);
	proto_conn_cmd_send(l.a.conn, 0, on_reply, &l.a);
	CU_ASSERT(run_until(l.loop, both_closed, &l.t, 5));
	/* The first fits and is handled; the second closes the link. */
	CU_ASSERT_EQUAL(l.b.commands, 1);
	CU_ASSERT_EQUAL(l.a.replies_done, 1);
	CU_ASSERT_EQUAL(l.a.replies_closed, 1);
	CU_ASSERT(strstr(l.a.reason, "TOOBIG") != NULL);
	link_free(&l);
}

static void test_pending_tag_timeout_fires(void)
{
	struct link l;
	link_init(&l);
	link_connect(&l);
	CU_ASSERT(run_until(l.loop, both_ready, &l.t, 5));
	/* b never answers. */
	struct proto_wr *w = proto_conn_cmd_begin(l.a.conn, "FETCH");
	proto_wr_atom(w, "1:*");
	proto_conn_cmd_send(l.a.conn, 100, on_reply, &l.a);
	proto_conn_cmd_begin(l.a.conn, "FETCH");
	proto_conn_cmd_send(l.a.conn, 0, on_reply, &l.a);
	for (int i = 0; i < 500 && l.a.replies_timeout == 0; i++)
		ev_run(l.loop, EVRUN_ONCE);
	CU_ASSERT_EQUAL(l.a.replies_timeout, 1);
	CU_ASSERT_EQUAL(l.a.replies_done, 0);
	CU_ASSERT_EQUAL(l.b.commands, 2);
	/* The command without a timeout learns about the close instead. */
	proto_conn_destroy(&l.a.conn);
	CU_ASSERT_EQUAL(l.a.replies_closed, 1);
	link_free(&l);
}

static void test_silent_peer_gets_ping_then_is_declared_dead(void)
{
	struct link l;
	link_init(&l);
	l.sb.ping_interval_ms = 100;
	l.sb.dead_timeout_ms = 400;
	link_raw_ready(&l);
	struct raw_wait w = { l.loop, &l.r, " PING\r\n", &l.b };
	CU_ASSERT(run_until(l.loop, raw_has, &w, 5));
	CU_ASSERT_EQUAL(l.b.closed, 0);
	CU_ASSERT(run_until(l.loop, side_closed, &l.b, 5));
	CU_ASSERT(strstr(l.b.reason, "timed out") != NULL);
	link_free(&l);
}

/* A node stuck in a long callback wakes up with the keepalive timer expired
 * and the peer's line waiting in the socket: the line proves the peer is
 * alive, so the link stays up and the line is handled. */
static void test_waiting_input_after_a_long_stall_keeps_the_link_up(void)
{
	struct link l;
	link_init(&l);
	l.sb.ping_interval_ms = 100;
	l.sb.dead_timeout_ms = 400;
	link_raw_ready(&l);
	raw_send(&l.r, "C2 X-NOTE waiting\r\n");
	/* The loop does not run for longer than the dead timeout. */
	usleep(600 * 1000);
	for (int i = 0; i < 5; i++)
		ev_run(l.loop, EVRUN_NOWAIT);
	CU_ASSERT_EQUAL(l.b.closed, 0);
	CU_ASSERT_EQUAL(l.b.commands, 1);
	CU_ASSERT_STRING_EQUAL(buf_cstr(&l.b.received), "X-NOTE waiting\n");
	/* Silence after that is still noticed. */
	CU_ASSERT(run_until(l.loop, side_closed, &l.b, 5));
	CU_ASSERT(strstr(l.b.reason, "timed out") != NULL);
	link_free(&l);
}

/* A congested link reads nothing (back-pressure), so a peer that is slowly
 * taking a long output sends nothing we see: its reading keeps the link up.
 * Once it stops reading, the link is declared dead. */
static void test_slow_but_reading_peer_stays_up_while_congested(void)
{
	struct link l;
	link_init(&l);
	l.sb.ping_interval_ms = 100;
	l.sb.dead_timeout_ms = 400;
	l.sb.out_high_water = 256 * 1024;
	l.sb.out_low_water = 64 * 1024;
	link_raw_ready(&l);
	static char chunk[64 * 1024];
	memset(chunk, 'x', sizeof(chunk));
	for (int i = 0; i < 160; i++) {
		struct proto_wr *w = proto_conn_line_begin(l.b.conn, "*", "X-DATA");
		proto_wr_literal(w, chunk, sizeof(chunk));
		proto_conn_line_end(l.b.conn);
	}
	/* About 1.2 s of slow reading, 3 dead timeouts: 8 KB every 10 ms. */
	char tmp[8192];
	size_t got = 0;
	for (int i = 0; i < 120 && l.b.closed == 0; i++) {
		ssize_t n = read(l.r.fd, tmp, sizeof(tmp));
		if (n > 0)
			got += (size_t)n;
		ev_run(l.loop, EVRUN_NOWAIT);
		usleep(10 * 1000);
	}
	CU_ASSERT_EQUAL_FATAL(l.b.closed, 0);
	CU_ASSERT(got > 512 * 1024);
	CU_ASSERT(proto_conn_is_congested(l.b.conn));
	/* It stops reading: dead once the socket buffers are full. */
	CU_ASSERT(run_until(l.loop, side_closed, &l.b, 10));
	CU_ASSERT(strstr(l.b.reason, "timed out") != NULL);
	link_free(&l);
}

static void test_slow_reader_stops_reading_and_drains(void)
{
	struct link l;
	link_init(&l);
	l.sb.out_high_water = 256 * 1024;
	l.sb.out_low_water = 64 * 1024;
	link_raw_ready(&l);
	static char chunk[64 * 1024];
	memset(chunk, 'x', sizeof(chunk));
	for (int i = 0; i < 32; i++) {
		struct proto_wr *w = proto_conn_line_begin(l.b.conn, "*", "X-DATA");
		proto_wr_literal(w, chunk, sizeof(chunk));
		proto_conn_line_end(l.b.conn);
	}
	for (int i = 0; i < 20; i++)
		ev_run(l.loop, EVRUN_NOWAIT);
	/* The raw peer has not read: the output is stuck above high water. */
	CU_ASSERT(proto_conn_is_congested(l.b.conn));
	CU_ASSERT(proto_conn_output_size(l.b.conn) > l.sb.out_high_water);
	CU_ASSERT_EQUAL(l.b.drained, 0);
	/* Reading everything lets it drain. */
	for (int i = 0; i < 2000 && l.b.drained == 0; i++) {
		raw_read(&l.r);
		ev_run(l.loop, EVRUN_NOWAIT);
	}
	CU_ASSERT_EQUAL(l.b.drained, 1);
	CU_ASSERT_FALSE(proto_conn_is_congested(l.b.conn));
	link_free(&l);
}

static void test_destroy_inside_command_callback_is_safe(void)
{
	struct link l;
	link_init(&l);
	link_connect(&l);
	CU_ASSERT(run_until(l.loop, both_ready, &l.t, 5));
	l.b.destroy_on_command = true;
	/* Two commands in one read: the second must not touch freed memory. */
	proto_conn_cmd_begin(l.a.conn, "SELECT");
	proto_conn_cmd_send(l.a.conn, 0, on_reply, &l.a);
	proto_conn_cmd_begin(l.a.conn, "SELECT");
	proto_conn_cmd_send(l.a.conn, 0, on_reply, &l.a);
	CU_ASSERT(run_until(l.loop, side_closed, &l.a, 5));
	CU_ASSERT_EQUAL(l.b.commands, 1);
	CU_ASSERT_PTR_NULL(l.b.conn);
	CU_ASSERT_EQUAL(l.b.closed, 0);
	CU_ASSERT_EQUAL(l.a.replies_closed, 2);
	link_free(&l);
}

const struct test_case proto_conn_cases[] = {
	{ "handshake with the same secret gives ready links", test_handshake_with_same_secret_gives_ready_links },
	{ "wrong secret is refused on both sides", test_wrong_secret_is_refused_on_both_sides },
	{ "wrong proof gets NO and a pipelined command is not seen", test_wrong_proof_gets_no_and_pipelined_command_is_not_seen },
	{ "command before auth is refused", test_command_before_auth_is_refused },
	{ "command written before ready is dropped", test_command_written_before_ready_is_dropped },
	{ "truncated handshake is refused", test_truncated_handshake_is_refused },
	{ "TLS links work with cluster certificates", test_tls_links_work_with_cluster_certificates },
	{ "TLS with an untrusted certificate is refused", test_tls_with_untrusted_certificate_is_refused },
	{ "plain initiator cannot skip required TLS", test_plain_initiator_cannot_skip_required_tls },
	{ "TLS certificate must name the peer", test_tls_certificate_must_name_the_peer },
	{ "TLS certificate may name the peer host", test_tls_certificate_may_name_the_peer_host },
	{ "half TLS says so on both sides", test_half_tls_says_so_on_both_sides },
	{ "half TLS close flushes what was sent", test_half_tls_close_flushes_what_was_sent },
	{ "STARTTLS acceptor refuses plain AUTH and injected bytes", test_starttls_acceptor_refuses_plain_auth_and_injected_bytes },
	{ "compressed and plain links carry identical commands", test_compressed_and_plain_links_carry_identical_commands },
	{ "pending tag timeout fires", test_pending_tag_timeout_fires },
	{ "literal over the message limit closes with TOOBIG", test_literal_over_the_message_limit_closes_with_toobig },
	{ "unanswered COMPRESS closes the link", test_unanswered_compress_closes_the_link },
	{ "silent peer gets PING then is declared dead", test_silent_peer_gets_ping_then_is_declared_dead },
	{ "waiting input after a long stall keeps the link up", test_waiting_input_after_a_long_stall_keeps_the_link_up },
	{ "slow but reading peer stays up while congested", test_slow_but_reading_peer_stays_up_while_congested },
	{ "slow reader stops reading and drains", test_slow_reader_stops_reading_and_drains },
	{ "destroy inside a command callback is safe", test_destroy_inside_command_callback_is_safe },
	{ NULL, NULL },
};

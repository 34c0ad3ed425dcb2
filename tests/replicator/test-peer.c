/* Tests of replicator/repl-peer.c: the backoff schedule, the checks of the
 * cluster secret file, and two peer managers in one process linked over
 * 127.0.0.1 (link up/down callbacks, command dispatch, the API getters,
 * STATUS lines, reconnect after the peer comes back). */
#include "tests/replicator/tests.h"

#include <ev.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/config.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include "replicator/repl-peer.h"

static char *tmpdir;

int repl_peer_suite_init(void)
{
	tmpdir = test_mkdtemp();
	log_init(0, LOG_LEVEL_ERROR);
	return tmpdir == NULL ? -1 : 0;
}

int repl_peer_suite_cleanup(void)
{
	test_rmtree(tmpdir);
	free(tmpdir);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Backoff */

static void test_backoff_starts_at_min_and_doubles(void)
{
	/* rnd chosen so the jitter factor is exactly 1: base - base/2. */
	unsigned want[] = { 100, 200, 400, 800, 1600, 3200, 5000, 5000 };
	for (unsigned i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		unsigned base = want[i];
		CU_ASSERT_EQUAL(repl_peer_backoff_ms(i, base - base / 2), base);
		CU_ASSERT_EQUAL(repl_peer_backoff_ms(i, 0), base / 2);
	}
}

static void test_backoff_jitter_stays_between_half_and_full(void)
{
	uint32_t rnd = 12345;
	unsigned base = REPL_PEER_BACKOFF_MIN_MS;
	for (unsigned failures = 0; failures < 40; failures++) {
		unsigned lo = base, hi = 0;
		for (int k = 0; k < 500; k++) {
			rnd = rnd * 1103515245u + 12345u;
			unsigned d = repl_peer_backoff_ms(failures, rnd);
			CU_ASSERT(d >= base / 2 && d <= base);
			lo = d < lo ? d : lo;
			hi = d > hi ? d : hi;
		}
		/* The jitter really spreads the delays. */
		CU_ASSERT(hi - lo >= base / 4);
		base = base * 2 > REPL_PEER_BACKOFF_MAX_MS ? REPL_PEER_BACKOFF_MAX_MS : base * 2;
	}
}

static void test_backoff_huge_failure_count_is_capped(void)
{
	CU_ASSERT_EQUAL(repl_peer_backoff_ms(1000000, 0), REPL_PEER_BACKOFF_MAX_MS / 2);
	CU_ASSERT_EQUAL(repl_peer_backoff_ms(~0u, REPL_PEER_BACKOFF_MAX_MS / 2),
			REPL_PEER_BACKOFF_MAX_MS);
	CU_ASSERT(repl_peer_backoff_ms(~0u, 0xffffffffu) <= REPL_PEER_BACKOFF_MAX_MS);
}

/* ------------------------------------------------------------------ */
/* Fixtures */

static uint16_t free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	CU_ASSERT_FATAL(bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
	CU_ASSERT_FATAL(getsockname(fd, (struct sockaddr *)&sin, &len) == 0);
	close(fd);
	return ntohs(sin.sin_port);
}

static char *write_file(const char *name, const char *content, mode_t mode)
{
	char *path = xasprintf("%s/%s", tmpdir, name);
	FILE *f = fopen(path, "w");
	CU_ASSERT_FATAL(f != NULL);
	fputs(content, f);
	fclose(f);
	chmod(path, mode);
	return path;
}

static struct config *make_config_host(uint32_t sid, uint16_t port, uint32_t peer_sid,
				       const char *peer_host, uint16_t peer_port,
				       const char *secret_path)
{
	char *err = NULL;
	char *text = xasprintf("node_id = %u\ndata_dir = %s/d%u\nrepl_listen = 127.0.0.1:%u\n"
			       "peer = %u %s:%u\ncluster_secret_file = %s\n",
			       sid, tmpdir, sid, port, peer_sid, peer_host, peer_port, secret_path);
	struct config *cfg = config_parse("test.conf", text, &err);
	if (cfg == NULL)
		fprintf(stderr, "config: %s\n", err);
	free(err);
	free(text);
	CU_ASSERT_FATAL(cfg != NULL);
	return cfg;
}

static struct config *make_config(uint32_t sid, uint16_t port, uint32_t peer_sid,
				  uint16_t peer_port, const char *secret_path)
{
	return make_config_host(sid, port, peer_sid, "127.0.0.1", peer_port, secret_path);
}

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
}

static bool run_until(struct ev_loop *loop, bool (*cond)(void *), void *arg, double seconds)
{
	ev_timer t;
	ev_timer_init(&t, tick_cb, 0.01, 0.01);
	ev_timer_start(loop, &t);
	ev_now_update(loop);
	ev_tstamp end = ev_now(loop) + seconds;
	bool ok;
	while (!(ok = cond(arg)) && ev_now(loop) < end)
		ev_run(loop, EVRUN_ONCE);
	ev_timer_stop(loop, &t);
	return ok;
}

/* ------------------------------------------------------------------ */
/* Secret file */

static void expect_create_error(const char *secret_path, const char *want)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct config *cfg = make_config(1, free_port(), 2, free_port(), secret_path);
	struct repl_peers *peers = (struct repl_peers *)1;
	char *err = NULL;
	CU_ASSERT_EQUAL(repl_peers_create(loop, cfg, NULL, NULL, &peers, &err), -1);
	CU_ASSERT_PTR_NULL(peers);
	CU_ASSERT_PTR_NOT_NULL_FATAL(err);
	if (strstr(err, want) == NULL)
		fprintf(stderr, "\nerror '%s' lacks '%s'\n", err, want);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, want));
	CU_ASSERT_PTR_NULL(strchr(err, '\n'));
	free(err);
	config_free(&cfg);
	ev_loop_destroy(loop);
}

static void test_secret_missing_empty_short_or_public_is_refused(void)
{
	char *missing = xasprintf("%s/no-such-secret", tmpdir);
	char *empty = write_file("empty", "", 0600);
	char *newline = write_file("newline", "\n", 0600);
	char *shrt = write_file("short", "0123456789abcdef0123456789abcde\n", 0600); /* 31 */
	char *pub = write_file("public", "0123456789abcdef0123456789abcdef0123456789\n", 0644);
	expect_create_error(missing, "No such file");
	expect_create_error(empty, "is empty");
	expect_create_error(newline, "is empty");
	expect_create_error(shrt, "at least 32");
	expect_create_error(pub, "accessible by everyone");
	free(missing);
	free(empty);
	free(newline);
	free(shrt);
	free(pub);
}

static void test_no_peers_needs_no_secret_and_listens_nowhere(void)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char *err = NULL;
	char *text = xasprintf("node_id = 1\ndata_dir = %s/d\n", tmpdir);
	struct config *cfg = config_parse("test.conf", text, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
	struct repl_peers *peers = NULL;
	CU_ASSERT_EQUAL(repl_peers_create(loop, cfg, NULL, NULL, &peers, &err), 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(peers);
	CU_ASSERT_EQUAL(repl_peers_count(peers), 0);
	CU_ASSERT_EQUAL(repl_peers_up_count(peers), 0);
	struct buf out;
	buf_init(&out);
	repl_peers_status(peers, &out);
	CU_ASSERT_STRING_EQUAL(buf_cstr(&out), "peers: 0\npeers_up: 0\n");
	buf_free(&out);
	repl_peers_destroy(&peers);
	CU_ASSERT_PTR_NULL(peers);
	repl_peers_destroy(&peers);
	config_free(&cfg);
	free(text);
	ev_loop_destroy(loop);
}

/* ------------------------------------------------------------------ */
/* Two managers on one loop */

struct side {
	uint32_t sid;
	struct config *cfg;
	struct repl_peers *peers;
	int ups, downs;
	uint32_t last_up, last_down;
	char down_reason[200];
	int echo_calls;
};

struct pair {
	struct ev_loop *loop;
	struct side a, b; /* a = SID 1 (connects), b = SID 2 (accepts) */
	char *secret;
	/* The answer to the last command a sent. */
	bool answered;
	enum proto_reply_kind kind;
	char status[8];
	char code[64];
	char text[128];
};

static void on_up(struct repl_peers *peers, uint32_t sid, struct proto_conn *conn, void *ctx)
{
	struct side *s = ctx;
	s->ups++;
	s->last_up = sid;
	CU_ASSERT_PTR_EQUAL(repl_peers_conn(peers, sid), conn);
	CU_ASSERT_EQUAL(repl_peers_state(peers, sid, NULL), REPL_PEER_UP);
}

static void on_down(struct repl_peers *peers, uint32_t sid, const char *reason, void *ctx)
{
	struct side *s = ctx;
	s->downs++;
	s->last_down = sid;
	snprintf(s->down_reason, sizeof(s->down_reason), "%s", reason);
	CU_ASSERT_PTR_NULL(repl_peers_conn(peers, sid));
}

static const struct repl_peers_callbacks side_callbacks = {
	.link_up = on_up,
	.link_down = on_down,
};

/* ECHO <word>: answers OK [ECHOED word] from <sid>. */
static void echo_handler(struct repl_peers *peers, uint32_t sid, struct proto_conn *conn,
			 const struct proto_cmd *cmd, void *ctx)
{
	struct side *s = ctx;
	char code[80], text[40];
	s->echo_calls++;
	if (cmd->arg_count != 1 || cmd->args[0].type != PROTO_ARG_ATOM) {
		proto_conn_reply(conn, cmd->tag, "BAD", "ARGS", "one atom");
		return;
	}
	snprintf(code, sizeof(code), "ECHOED %s", cmd->args[0].str);
	snprintf(text, sizeof(text), "from %u", sid);
	proto_conn_reply(conn, cmd->tag, "OK", code, text);
}

static void reply_cb(struct proto_conn *conn, enum proto_reply_kind kind,
		     const struct proto_cmd *line, void *ctx)
{
	struct pair *p = ctx;
	if (kind == PROTO_REPLY_DATA)
		return;
	p->answered = true;
	p->kind = kind;
	p->status[0] = p->code[0] = p->text[0] = '\0';
	if (line == NULL)
		return;
	snprintf(p->status, sizeof(p->status), "%s", line->name);
	if (line->has_code && line->arg_count > 0) {
		size_t off = 0;
		for (size_t i = 0; i < line->arg_count && off < sizeof(p->code); i++)
			off += (size_t)snprintf(p->code + off, sizeof(p->code) - off, "%s%s",
						i > 0 ? " " : "", line->args[i].str);
	}
	snprintf(p->text, sizeof(p->text), "%s", line->text);
}

static bool both_up(void *arg)
{
	struct pair *p = arg;
	return p->a.peers != NULL && p->b.peers != NULL &&
	       repl_peers_state(p->a.peers, 2, NULL) == REPL_PEER_UP &&
	       repl_peers_state(p->b.peers, 1, NULL) == REPL_PEER_UP;
}

static bool answered(void *arg)
{
	return ((struct pair *)arg)->answered;
}

static bool a_saw_down(void *arg)
{
	return ((struct pair *)arg)->a.downs > 0;
}

static void side_start(struct pair *p, struct side *s)
{
	char *err = NULL;
	int r = repl_peers_create(p->loop, s->cfg, &side_callbacks, s, &s->peers, &err);
	if (r < 0)
		fprintf(stderr, "\nrepl_peers_create: %s\n", err);
	free(err);
	CU_ASSERT_EQUAL_FATAL(r, 0);
}

static void pair_init(struct pair *p)
{
	memset(p, 0, sizeof(*p));
	p->loop = ev_loop_new(EVFLAG_AUTO);
	p->secret = write_file("secret", "the cluster secret of this test, long enough\n", 0600);
	uint16_t pa = free_port(), pb = free_port();
	p->a.sid = 1;
	p->b.sid = 2;
	p->a.cfg = make_config(1, pa, 2, pb, p->secret);
	p->b.cfg = make_config(2, pb, 1, pa, p->secret);
}

static void pair_deinit(struct pair *p)
{
	repl_peers_destroy(&p->a.peers);
	repl_peers_destroy(&p->b.peers);
	config_free(&p->a.cfg);
	config_free(&p->b.cfg);
	free(p->secret);
	ev_loop_destroy(p->loop);
}

static void send_cmd(struct pair *p, const char *name, const char *arg)
{
	struct proto_conn *conn = repl_peers_conn(p->a.peers, 2);
	CU_ASSERT_PTR_NOT_NULL_FATAL(conn);
	p->answered = false;
	struct proto_wr *w = proto_conn_cmd_begin(conn, name);
	if (arg != NULL)
		proto_wr_atom(w, arg);
	CU_ASSERT_PTR_NOT_NULL(proto_conn_cmd_send(conn, 5000, reply_cb, p));
	CU_ASSERT_TRUE(run_until(p->loop, answered, p, 5.0));
}

static void test_two_nodes_link_up_and_dispatch_commands(void)
{
	struct pair p;
	pair_init(&p);
	side_start(&p, &p.b);
	side_start(&p, &p.a);
	repl_peers_register(p.b.peers, "echo", echo_handler, &p.b);

	CU_ASSERT_EQUAL(repl_peers_count(p.a.peers), 1);
	CU_ASSERT_EQUAL(repl_peers_sid(p.a.peers, 0), 2);
	CU_ASSERT_EQUAL(repl_peers_sid(p.a.peers, 1), 0);
	CU_ASSERT_TRUE_FATAL(run_until(p.loop, both_up, &p, 10.0));
	CU_ASSERT_EQUAL(p.a.ups, 1);
	CU_ASSERT_EQUAL(p.b.ups, 1);
	CU_ASSERT_EQUAL(p.a.last_up, 2);
	CU_ASSERT_EQUAL(p.b.last_up, 1);
	CU_ASSERT_EQUAL(repl_peers_up_count(p.a.peers), 1);
	CU_ASSERT_PTR_NULL(repl_peers_conn(p.a.peers, 3));
	CU_ASSERT_EQUAL(repl_peers_state(p.a.peers, 3, NULL), REPL_PEER_DOWN);

	/* A registered handler (names are case-insensitive) answers. */
	send_cmd(&p, "ECHO", "hello");
	CU_ASSERT_EQUAL(p.kind, PROTO_REPLY_DONE);
	CU_ASSERT_STRING_EQUAL(p.status, "OK");
	CU_ASSERT_STRING_EQUAL(p.code, "ECHOED hello");
	CU_ASSERT_STRING_EQUAL(p.text, "from 1");
	CU_ASSERT_EQUAL(p.b.echo_calls, 1);

	/* A command of SPEC section 12 that nobody handles yet. */
	send_cmd(&p, "EXPUNGE", "1:5");
	CU_ASSERT_STRING_EQUAL(p.status, "BAD");
	CU_ASSERT_STRING_EQUAL(p.code, "UNKNOWN-COMMAND");
	CU_ASSERT_STRING_EQUAL(p.text, "command not implemented by this node");

	/* A name the protocol does not know. */
	send_cmd(&p, "FROBNICATE", NULL);
	CU_ASSERT_STRING_EQUAL(p.status, "BAD");
	CU_ASSERT_STRING_EQUAL(p.code, "UNKNOWN-COMMAND");
	CU_ASSERT_STRING_EQUAL(p.text, "unknown command");

	/* Status lines of an up link. */
	struct buf out;
	buf_init(&out);
	repl_peers_status(p.a.peers, &out);
	const char *st = buf_cstr(&out);
	CU_ASSERT_PTR_NOT_NULL(strstr(st, "peers: 1\npeers_up: 1\npeer.2: up\npeer.2.since_ms: "));
	CU_ASSERT_PTR_NOT_NULL(strstr(st, "\npeer.2.role: connect\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(st, "\npeer.2.compress: yes\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(st, "\npeer.2.tls: no\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(st, "\npeer.2.link_ups: 1\n"));
	CU_ASSERT_PTR_NULL(strstr(st, "reason"));
	buf_reset(&out);
	repl_peers_status(p.b.peers, &out);
	CU_ASSERT_PTR_NOT_NULL(strstr(buf_cstr(&out), "\npeer.1.role: accept\n"));

	/* Node 2 goes away: node 1 sees the link down and keeps retrying. */
	repl_peers_destroy(&p.b.peers);
	CU_ASSERT_TRUE(run_until(p.loop, a_saw_down, &p, 5.0));
	CU_ASSERT_EQUAL(p.a.downs, 1);
	CU_ASSERT_EQUAL(p.a.last_down, 2);
	CU_ASSERT_STRING_EQUAL(p.a.down_reason, "connection closed by peer");
	CU_ASSERT_NOT_EQUAL(repl_peers_state(p.a.peers, 2, NULL), REPL_PEER_UP);
	buf_reset(&out);
	repl_peers_status(p.a.peers, &out);
	CU_ASSERT_PTR_NOT_NULL(strstr(buf_cstr(&out), "peers_up: 0\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(buf_cstr(&out), "\npeer.2.reason: "));

	/* Node 2 comes back on the same port: the link returns by itself. */
	side_start(&p, &p.b);
	CU_ASSERT_TRUE(run_until(p.loop, both_up, &p, 10.0));
	CU_ASSERT_EQUAL(p.a.ups, 2);
	buf_reset(&out);
	repl_peers_status(p.a.peers, &out);
	CU_ASSERT_PTR_NOT_NULL(strstr(buf_cstr(&out), "\npeer.2.link_ups: 2\n"));
	buf_free(&out);
	pair_deinit(&p);
}

static bool b_saw_attempt_fail(void *arg)
{
	struct pair *p = arg;
	/* Node 1 refused node 2's proof or vice versa: its status has a reason. */
	struct buf out;
	buf_init(&out);
	repl_peers_status(p->a.peers, &out);
	bool yes = strstr(buf_cstr(&out), "authentication") != NULL;
	buf_free(&out);
	return yes;
}

static void test_different_secrets_never_link(void)
{
	struct pair p;
	pair_init(&p);
	char *other = write_file("other", "another secret, also long enough for the check\n",
				 0600);
	config_free(&p.b.cfg);
	p.b.cfg = make_config(2, p.a.cfg->peers.items[0].addr.port, 1, p.a.cfg->repl_listen.port,
			      other);
	side_start(&p, &p.b);
	side_start(&p, &p.a);
	CU_ASSERT_TRUE(run_until(p.loop, b_saw_attempt_fail, &p, 5.0));
	CU_ASSERT_FALSE(run_until(p.loop, both_up, &p, 1.0));
	CU_ASSERT_EQUAL(p.a.ups, 0);
	CU_ASSERT_EQUAL(p.b.ups, 0);
	pair_deinit(&p);
	free(other);
}

/* A peer given by name: localhost may resolve to ::1 first while the peer
 * listens on 127.0.0.1 only; the attempts go through the addresses. */
static void test_peer_by_host_name_links_up(void)
{
	struct pair p;
	pair_init(&p);
	uint16_t pb = p.a.cfg->peers.items[0].addr.port, pa = p.a.cfg->repl_listen.port;
	config_free(&p.a.cfg);
	p.a.cfg = make_config_host(1, pa, 2, "localhost", pb, p.secret);
	side_start(&p, &p.b);
	side_start(&p, &p.a);
	CU_ASSERT_TRUE(run_until(p.loop, both_up, &p, 10.0));
	pair_deinit(&p);
}

const struct test_case repl_peer_cases[] = {
	{ "backoff starts at min and doubles", test_backoff_starts_at_min_and_doubles },
	{ "backoff jitter stays between half and full", test_backoff_jitter_stays_between_half_and_full },
	{ "backoff huge failure count is capped", test_backoff_huge_failure_count_is_capped },
	{ "secret missing, empty, short or public is refused",
	  test_secret_missing_empty_short_or_public_is_refused },
	{ "no peers needs no secret and listens nowhere",
	  test_no_peers_needs_no_secret_and_listens_nowhere },
	{ "two nodes link up and dispatch commands", test_two_nodes_link_up_and_dispatch_commands },
	{ "different secrets never link", test_different_secrets_never_link },
	{ "peer by host name links up", test_peer_by_host_name_links_up },
	{ NULL, NULL },
};

/* The LMTP server's idle timeout, with a private loop, the single-node seam
 * and a UNIX socket in a temporary directory (the python tests cannot wait
 * LMTP_IDLE_TIMEOUT seconds). */
#include <ev.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/clock.h"
#include "lib/config.h"
#include "lib/xalloc.h"
#include "lmtp/lmtp-server.h"
#include "replicator/repl.h"
#include "tests/lmtp/tests-lmtp.h"

static double now_s(void)
{
	return (double)clock_mono_us() / 1e6;
}

/* Runs the loop until the client has read a whole line containing want,
 * or EOF, or 10 s.  Returns what was read. */
static void pump(struct ev_loop *loop, int fd, struct buf *got, const char *want, bool *eof_r)
{
	double deadline = now_s() + 10.0;
	*eof_r = false;
	while (now_s() < deadline) {
		ev_run(loop, EVRUN_NOWAIT);
		struct pollfd p = { fd, POLLIN, 0 };
		if (poll(&p, 1, 10) > 0) {
			unsigned char *dst = buf_reserve(got, 4096);
			ssize_t n = read(fd, dst, 4096);
			if (n <= 0) {
				*eof_r = true;
				return;
			}
			buf_commit(got, (size_t)n);
		}
		if (want != NULL && strstr(buf_cstr(got), want) != NULL &&
		    buf_cstr(got)[got->len - 1] == '\n')
			return;
	}
}

static void test_idle_timeout(void)
{
	char *dir = test_mkdtemp();
	char *users = xasprintf("%s/users", dir);
	FILE *f = fopen(users, "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fputs("alice:{PLAIN}x\n", f);
	fclose(f);
	char *text = xasprintf("node_id = 1\ndata_dir = %s\nusers_file = %s\n"
			       "lmtp_listen = %s/lmtp.sock\n", dir, users, dir);
	char *err = NULL;
	struct config *cfg = config_parse("t.conf", text, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
	struct stor_settings set = { .dir = dir };
	struct stor_db *db;
	CU_ASSERT_EQUAL_FATAL(stor_open(&set, &db, &err), 0);
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct repl_settings rs = { 1, 1024 * 1024 };
	struct repl *repl = repl_local_create(loop, db, &rs);
	struct lmtp_server *srv = NULL;
	CU_ASSERT_EQUAL_FATAL(lmtp_server_create(loop, cfg, repl, &srv, &err), 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(srv);
	lmtp_server_set_idle_timeout(srv, 0.3);

	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", cfg->lmtp_socket);
	CU_ASSERT_EQUAL_FATAL(connect(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	struct buf got = BUF_INIT;
	bool eof;
	pump(loop, fd, &got, "220 ", &eof);
	CU_ASSERT(strncmp(buf_cstr(&got), "220 ", 4) == 0);
	/* Input resets the timer: a NOOP after 0.2 s is answered. */
	double t0 = now_s();
	while (now_s() - t0 < 0.2)
		ev_run(loop, EVRUN_NOWAIT);
	CU_ASSERT_EQUAL(write(fd, "NOOP\r\n", 6), 6);
	pump(loop, fd, &got, "250 ", &eof);
	CU_ASSERT_PTR_NOT_NULL(strstr(buf_cstr(&got), "250 2.0.0"));
	CU_ASSERT_FALSE(eof);
	/* Then silence: 421 and the connection is closed. */
	double t1 = now_s();
	pump(loop, fd, &got, NULL, &eof);
	CU_ASSERT_TRUE(eof);
	CU_ASSERT_PTR_NOT_NULL(strstr(buf_cstr(&got), "421 4.4.2"));
	CU_ASSERT(now_s() - t1 >= 0.25);
	CU_ASSERT(now_s() - t1 < 5.0);
	close(fd);
	buf_free(&got);

	lmtp_server_destroy(&srv);
	CU_ASSERT_PTR_NULL(srv);
	CU_ASSERT_NOT_EQUAL(access(cfg->lmtp_socket, F_OK), 0);
	repl_destroy(&repl);
	stor_close(&db);
	ev_loop_destroy(loop);
	config_free(&cfg);
	free(text);
	free(users);
	test_rmtree(dir);
	free(dir);
}

const struct test_case lmtp_server_cases[] = {
	{ "idle timeout", test_idle_timeout },
	{ NULL, NULL },
};

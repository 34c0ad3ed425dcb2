/* Unit tests of the configuration parser. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/config.h"
#include "lib/xalloc.h"
#include "tests/lib/tests.h"

static const char *full =
	"# a full node\n"
	"node_id = 2\n"
	"data_dir = /var/lib/starling\n"
	"imap_listen = 127.0.0.1:1143\n"
	"imaps_listen = [::1]:1993\n"
	"repl_listen = 0.0.0.0:7001   # comment after value\n"
	"peer = 1 10.0.0.1:7001\n"
	"peer = 3 node3.example:7001\n"
	"cluster_secret_file = /etc/starling/secret\n"
	"users_file = /etc/starling/users\n"
	"sync_replicas = 2\n"
	"master_granularity = user\n"
	"tls_cert = /c.pem\n"
	"tls_key = /k.pem\n"
	"tls_ca = /ca.pem\n"
	"log_level = debug\n"
	"max_message_size = 32M\n"
	"degraded_writes = refuse\n"
	"read_consistency = local\n"
	"shared_seen = shared\n"
	"acl_owner_rights = lrswipkte\n"
	"metrics_listen = 127.0.0.1:9143\n";

static void test_config_full_file_parses_every_key(void)
{
	char *err = NULL;
	struct config *c = config_parse("t.conf", full, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	CU_ASSERT_EQUAL(c->node_id, 2);
	CU_ASSERT_STRING_EQUAL(c->data_dir, "/var/lib/starling");
	CU_ASSERT_STRING_EQUAL(c->imap_listen.host, "127.0.0.1");
	CU_ASSERT_EQUAL(c->imap_listen.port, 1143);
	CU_ASSERT_STRING_EQUAL(c->imaps_listen.host, "::1");
	CU_ASSERT_EQUAL(c->repl_listen.port, 7001);
	CU_ASSERT_EQUAL_FATAL(c->peers.count, 2);
	CU_ASSERT_EQUAL(c->peers.items[0].sid, 1);
	CU_ASSERT_STRING_EQUAL(c->peers.items[1].addr.host, "node3.example");
	CU_ASSERT_EQUAL(c->sync_replicas, 2);
	CU_ASSERT_EQUAL(c->master_granularity, CONFIG_GRAN_USER);
	CU_ASSERT_EQUAL(c->log_level, LOG_LEVEL_DEBUG);
	CU_ASSERT_EQUAL(c->max_message_size, 32u * 1024 * 1024);
	CU_ASSERT_STRING_EQUAL(c->tls_ca, "/ca.pem");
	CU_ASSERT_EQUAL(c->degraded_writes, CONFIG_DEGRADED_REFUSE);
	CU_ASSERT_EQUAL(c->read_consistency, CONFIG_READ_LOCAL);
	CU_ASSERT_FALSE(c->shared_seen_private);
	CU_ASSERT_STRING_EQUAL(c->metrics_listen.host, "127.0.0.1");
	CU_ASSERT_EQUAL(c->metrics_listen.port, 9143);
	config_free(&c);
	CU_ASSERT_PTR_NULL(c);
}

static void expect_error(const char *text, const char *want)
{
	char *err = NULL;
	struct config *c = config_parse("t.conf", text, &err);
	CU_ASSERT_PTR_NULL(c);
	CU_ASSERT_PTR_NOT_NULL_FATAL(err);
	if (strcmp(err, want) != 0)
		fprintf(stderr, "\n  got '%s'\n want '%s'\n", err, want);
	CU_ASSERT_STRING_EQUAL(err, want);
	free(err);
	config_free(&c);
}

static void test_config_errors_name_file_and_line(void)
{
	expect_error("node_id = 1\ndata_dir = /x\nnodeid = 3\n", "t.conf:3: unknown key 'nodeid'");
	expect_error("node_id = zero\n", "t.conf:1: node_id must be a positive integer, not 'zero'");
	expect_error("node_id = 1\nnode_id = 2\n", "t.conf:2: 'node_id' given twice");
	expect_error("node_id = 1\njust words\n", "t.conf:2: expected 'key = value'");
	expect_error("imap_listen = nohostport\n",
		     "t.conf:1: bad address 'nohostport' (expected HOST:PORT)");
	expect_error("imap_listen = h:70000\n", "t.conf:1: bad address 'h:70000' (expected HOST:PORT)");
	expect_error("peer = 1\n", "t.conf:1: peer must be 'SID HOST:PORT', not '1'");
	expect_error("master_granularity = planet\n",
		     "t.conf:1: master_granularity must be mailbox, user, domain or global, not 'planet'");
	expect_error("log_level = loud\n",
		     "t.conf:1: log_level must be error, warn, info or debug, not 'loud'");
	expect_error("data_dir =\n", "t.conf:1: empty value for 'data_dir'");
	expect_error("degraded_writes = maybe\n",
		     "t.conf:1: degraded_writes must be accept or refuse, not 'maybe'");
	expect_error("read_consistency = strong\n",
		     "t.conf:1: read_consistency must be master or local, not 'strong'");
	expect_error("shared_seen = mine\n",
		     "t.conf:1: shared_seen must be private or shared, not 'mine'");
	expect_error("metrics_listen = 9143\n",
		     "t.conf:1: bad address '9143' (expected HOST:PORT)");
	expect_error("degraded_writes = accept\ndegraded_writes = refuse\n",
		     "t.conf:2: 'degraded_writes' given twice");
}

static void test_config_missing_required_keys(void)
{
	expect_error("data_dir = /x\n", "t.conf: missing required key 'node_id'");
	expect_error("node_id = 1\n", "t.conf: missing required key 'data_dir'");
	expect_error("node_id = 1\ndata_dir = /x\npeer = 2 h:1\n",
		     "t.conf: peers are configured but 'repl_listen' is missing");
	expect_error("node_id = 1\ndata_dir = /x\nrepl_listen = h:2\npeer = 1 h:1\ncluster_secret_file = /s\n",
		     "t.conf: peer 1 has this node's own node_id");
	expect_error("node_id = 1\ndata_dir = /x\nsync_replicas = 1\n",
		     "t.conf: sync_replicas = 1 but only 0 peers are configured");
}

static void test_config_lone_node_defaults(void)
{
	char *err = NULL;
	struct config *c = config_parse("t.conf", "node_id = 7\ndata_dir = d\n", &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	CU_ASSERT_EQUAL(c->sync_replicas, 0);
	CU_ASSERT_EQUAL(c->master_granularity, CONFIG_GRAN_MAILBOX);
	CU_ASSERT_EQUAL(c->log_level, LOG_LEVEL_INFO);
	CU_ASSERT_EQUAL(c->max_message_size, CONFIG_DEFAULT_MAX_MESSAGE_SIZE);
	CU_ASSERT_PTR_NULL(c->imap_listen.host);
	CU_ASSERT_EQUAL(c->degraded_writes, CONFIG_DEGRADED_ACCEPT);
	CU_ASSERT_EQUAL(c->read_consistency, CONFIG_READ_MASTER);
	/* SPEC.md 7.7: private \Seen unless shared_seen = shared. */
	CU_ASSERT_TRUE(c->shared_seen_private);
	CU_ASSERT_PTR_NULL(c->acl_owner_rights);
	config_free(&c);
	c = config_parse("t.conf", "node_id = 7\ndata_dir = d\nshared_seen = private\n", &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	CU_ASSERT_TRUE(c->shared_seen_private);
	config_free(&c);
}

/* starlingd -n: every key with its effective value, parsed back alike. */
static void test_config_print_round_trips(void)
{
	char *err = NULL;
	struct config *c = config_parse("t.conf", full, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	config_print(c, f);
	fclose(f);
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "degraded_writes = refuse\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "read_consistency = local\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "shared_seen = shared\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "acl_owner_rights = lrswipkte\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "sync_replicas = 2\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "repl_log_max = 100000\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "imaps_listen = [::1]:1993\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, "metrics_listen = 127.0.0.1:9143\n"));
	struct config *back = config_parse("p.conf", text, &err);
	if (back == NULL)
		fprintf(stderr, "\n  %s\n", err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(back);
	CU_ASSERT_EQUAL(back->degraded_writes, CONFIG_DEGRADED_REFUSE);
	CU_ASSERT_EQUAL(back->read_consistency, CONFIG_READ_LOCAL);
	CU_ASSERT_FALSE(back->shared_seen_private);
	CU_ASSERT_STRING_EQUAL(back->acl_owner_rights, "lrswipkte");
	CU_ASSERT_EQUAL(back->sync_replicas, 2);
	CU_ASSERT_EQUAL(back->peers.count, 2);
	CU_ASSERT_EQUAL(back->max_message_size, c->max_message_size);
	CU_ASSERT_EQUAL(back->log_level, LOG_LEVEL_DEBUG);
	config_free(&back);
	config_free(&c);
	free(text);
}

/* Writes a config of exactly size bytes (two keys, then comment lines). */
static void put_sized(const char *path, size_t size)
{
	static const char keys[] = "node_id = 1\ndata_dir = /x\n";
	FILE *f = fopen(path, "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fputs(keys, f);
	for (size_t left = size - strlen(keys); left > 0;) {
		size_t line = left > 100 ? 100 : left;
		for (size_t k = 0; k + 1 < line; k++)
			fputc('#', f);
		fputc('\n', f);
		left -= line;
	}
	fclose(f);
}

static void test_config_load_is_bounded(void)
{
	char *dir = test_mkdtemp();
	char *path = xasprintf("%s/c.conf", dir);
	char *err = NULL;
	put_sized(path, 1024 * 1024);
	struct config *c = config_load(path, &err);
	CU_ASSERT_PTR_NOT_NULL(c);
	CU_ASSERT_PTR_NULL(err);
	config_free(&c);
	put_sized(path, 1024 * 1024 + 1);
	CU_ASSERT_PTR_NULL(config_load(path, &err));
	CU_ASSERT_PTR_NOT_NULL_FATAL(err);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, path));
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "larger than 1048576 bytes"));
	free(err);
	free(path);
	test_rmtree(dir);
	free(dir);
}

/* starling -c <(generate-config): the config is a pipe, not a file. */
static void test_config_load_reads_a_fifo(void)
{
	char *dir = test_mkdtemp();
	char *path = xasprintf("%s/fifo", dir);
	CU_ASSERT_EQUAL_FATAL(mkfifo(path, 0600), 0);
	pid_t pid = fork();
	CU_ASSERT_NOT_EQUAL_FATAL(pid, -1);
	if (pid == 0) {
		/* The open waits for the reader; alarm() bounds it should
		 * the reader never come. */
		alarm(10);
		int fd = open(path, O_WRONLY);
		static const char text[] = "node_id = 7\ndata_dir = /fifo\n";
		_exit(fd >= 0 && write(fd, text, sizeof(text) - 1) == (ssize_t)sizeof(text) - 1 ? 0
											  : 1);
	}
	char *err = NULL;
	struct config *c = config_load(path, &err);
	int status = -1;
	CU_ASSERT_EQUAL(waitpid(pid, &status, 0), pid);
	CU_ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	CU_ASSERT_EQUAL(c->node_id, 7);
	CU_ASSERT_STRING_EQUAL(c->data_dir, "/fifo");
	config_free(&c);
	free(err);
	free(path);
	test_rmtree(dir);
	free(dir);
}

static void test_config_load_missing_file(void)
{
	char *err = NULL;
	CU_ASSERT_PTR_NULL(config_load("/nonexistent/starling.conf", &err));
	CU_ASSERT_PTR_NOT_NULL_FATAL(err);
	CU_ASSERT_STRING_EQUAL(err, "/nonexistent/starling.conf: No such file or directory");
	free(err);
}

const struct test_case lib_config_cases[] = {
	{ "full file parses every key", test_config_full_file_parses_every_key },
	{ "errors name file and line", test_config_errors_name_file_and_line },
	{ "missing required keys", test_config_missing_required_keys },
	{ "lone node defaults", test_config_lone_node_defaults },
	{ "load of a missing file", test_config_load_missing_file },
	{ "load is bounded at 1 MiB", test_config_load_is_bounded },
	{ "load reads a FIFO", test_config_load_reads_a_fifo },
	{ "print round-trips (starlingd -n)", test_config_print_round_trips },
	{ NULL, NULL },
};

/* starlingd: one Starling node in one process.
 *
 *   starlingd -c FILE [-f] [-n] | --help | --version
 *
 * Reads the configuration, opens the store in data_dir (creating it),
 * serves IMAP on imap_listen (and imaps_listen), and the admin socket
 * DATA_DIR/admin.sock, all on one libev loop.  starlingd never forks, so
 * a service manager (systemd Type=simple) or '&' runs it; -f (foreground)
 * changes nothing and is kept so existing scripts and units that pass it
 * keep working.  SIGTERM and SIGINT shut it down in order: stop accepting,
 * finish and sync pending changes, close the store. */
#include <errno.h>
#include <ev.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "imap/imap-server.h"
#include "lib/clock.h"
#include "lib/config.h"
#include "lib/file.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include "lmtp/lmtp-server.h"
#include "replicator/repl-admin.h"
#include "replicator/repl-cluster.h"
#include "replicator/repl-mm.h"
#include "replicator/repl-sync.h"
#include "replicator/repl-peer.h"
#include "replicator/repl.h"
#include "storage/storage.h"

struct node {
	struct config *cfg;
	struct ev_loop *loop;
	struct stor_db *db;
	struct repl *repl;
	struct imap_server *imap;
	struct lmtp_server *lmtp;  /* NULL without lmtp_listen */
	struct repl_admin *admin;
	struct repl_peers *peers;
	struct repl_mm *mm;
	struct repl_sync *sync;
	bool clustered;  /* peers configured: the replicating seam */
	int64_t started;
	ev_signal sigterm, sigint;
	ev_signal sighup;
};

static const char usage_text[] =
	"usage: starlingd -c FILE [-f] [-n]\n"
	"       starlingd --help | --version\n"
	"  -c FILE    the configuration file (required)\n"
	"  -n         print the effective configuration, defaults included, and exit\n"
	"  -f         stay in the foreground; starlingd never forks, so this changes\n"
	"             nothing and is accepted for scripts and units that pass it\n"
	"  -h, --help print this help and exit\n"
	"  --version  print the version and exit\n";

static void usage(void)
{
	fputs(usage_text, stderr);
	exit(2);
}

static void status_cb(void *ctx, struct buf *out)
{
	struct node *n = ctx;
	buf_appendf(out, "node_id: %u\n", n->cfg->node_id);
	if (n->cfg->imap_listen.host != NULL)
		buf_appendf(out, "imap: %s:%u\n", n->cfg->imap_listen.host, n->cfg->imap_listen.port);
	if (n->cfg->imaps_listen.host != NULL)
		buf_appendf(out, "imaps: %s:%u\n", n->cfg->imaps_listen.host,
			    n->cfg->imaps_listen.port);
	buf_appendf(out, "sessions: %u\n", n->imap != NULL ? imap_server_session_count(n->imap) : 0);
	buf_appendf(out, "uptime_s: %lld\n", (long long)(clock_wall_s() - n->started));
	stor_status(n->db, out);
	if (n->peers != NULL)
		repl_peers_status(n->peers, out);
	if (n->mm != NULL)
		repl_mm_status(n->mm, out);
	if (n->clustered)
		repl_cluster_status(n->repl, out);
}

static int master_granule_key(void *ctx, const char *user, const struct guid *mailbox, char *out,
			      size_t size)
{
	return repl_mm_granule_key(ctx, user, mailbox, out, size);
}

static int master_request(void *ctx, const char *gkey, unsigned timeout_ms,
			  repl_mm_answer_cb *cb, void *cb_ctx)
{
	return repl_mm_request_master(ctx, gkey, timeout_ms, cb, cb_ctx);
}

static const struct repl_admin_master_ops master_ops = {
	master_granule_key,
	master_request,
};

static int resync_start(void *ctx, const char *user, uint32_t peer, bool full,
			repl_sync_done_cb *cb, void *cb_ctx, const char **error_r)
{
	return repl_sync_start(ctx, user, peer, full, cb, cb_ctx, error_r);
}

static const struct repl_admin_resync_ops resync_ops = { resync_start };

/* The link events go to the mailbox masters and to the sync. */
static void link_up_cb(struct repl_peers *peers, uint32_t sid, struct proto_conn *conn, void *ctx)
{
	struct node *n = ctx;
	repl_sync_link_up(n->sync, sid);
	repl_mm_peer_callbacks()->link_up(peers, sid, conn, n->mm);
	if (n->clustered)
		repl_cluster_link_up(n->repl, sid, conn);
}

static void link_down_cb(struct repl_peers *peers, uint32_t sid, const char *reason, void *ctx)
{
	struct node *n = ctx;
	if (n->clustered)
		repl_cluster_link_down(n->repl, sid);
	repl_sync_link_down(n->sync, sid);
	repl_mm_peer_callbacks()->link_down(peers, sid, reason, n->mm);
}

static void link_untagged_cb(struct repl_peers *peers, uint32_t sid, struct proto_conn *conn,
			     const struct proto_cmd *line, void *ctx)
{
	struct node *n = ctx;
	if (repl_mm_peer_callbacks()->untagged != NULL)
		repl_mm_peer_callbacks()->untagged(peers, sid, conn, line, n->mm);
}

static void link_drained_cb(struct repl_peers *peers, uint32_t sid, struct proto_conn *conn,
			    void *ctx)
{
	struct node *n = ctx;
	repl_sync_link_drained(n->sync, sid);
	if (repl_mm_peer_callbacks()->drained != NULL)
		repl_mm_peer_callbacks()->drained(peers, sid, conn, n->mm);
}

static const struct repl_peers_callbacks link_callbacks = {
	link_up_cb,
	link_down_cb,
	link_untagged_cb,
	link_drained_cb,
};

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	log_info("received signal %d, shutting down", w->signum);
	ev_break(loop, EVBREAK_ALL);
}

static void sighup_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	log_info("SIGHUP ignored: restart starlingd to reload the configuration");
}

int main(int argc, char **argv)
{
	const char *conf = NULL;
	int opt;
	bool print_only = false;
	/* Long options by hand: getopt_long is a GNU extension and these two
	 * only make sense alone. */
	if (argc == 2 && strcmp(argv[1], "--help") == 0) {
		fputs(usage_text, stdout);
		return 0;
	}
	if (argc == 2 && strcmp(argv[1], "--version") == 0) {
		printf("starlingd %s\n", PACKAGE_VERSION);
		return 0;
	}
	while ((opt = getopt(argc, argv, "c:fhn")) != -1) {
		switch (opt) {
		case 'c':
			conf = optarg;
			break;
		case 'f':
			break;
		case 'n':
			print_only = true;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		default:
			usage();
		}
	}
	if (conf == NULL || optind != argc)
		usage();
	signal(SIGPIPE, SIG_IGN);
	log_init("starlingd", LOG_LEVEL_INFO);
	char *err = NULL;
	struct node n;
	memset(&n, 0, sizeof(n));
	n.cfg = config_load(conf, &err);
	if (n.cfg == NULL)
		fatalx("%s", err);
	if (print_only) {
		config_print(n.cfg, stdout);
		config_free(&n.cfg);
		return 0;
	}
	char ident[32];
	snprintf(ident, sizeof(ident), "starlingd[%u]", n.cfg->node_id);
	log_init(ident, n.cfg->log_level);
	if (n.cfg->data_dir == NULL)
		fatalx("%s: data_dir is not set", conf);
	if (n.cfg->users_file == NULL)
		fatalx("%s: users_file is not set", conf);
	if (n.cfg->imap_listen.host == NULL && n.cfg->imaps_listen.host == NULL)
		fatalx("%s: neither imap_listen nor imaps_listen is set", conf);
	if (file_mkdir_p(n.cfg->data_dir, 0700) < 0)
		fatal("cannot create %s", n.cfg->data_dir);
	char *store_dir = xasprintf("%s/store", n.cfg->data_dir);
	struct stor_settings sset;
	memset(&sset, 0, sizeof(sset));
	sset.dir = store_dir;
	sset.max_message_size = n.cfg->max_message_size;
	if (stor_open(&sset, &n.db, &err) < 0)
		fatalx("%s", err);
	n.loop = ev_default_loop(EVFLAG_AUTO);
	struct repl_settings rset = { n.cfg->node_id, n.cfg->max_message_size };
	/* With peers, changes go through the masters and are replicated;
	 * alone, the node applies them itself. */
	n.clustered = n.cfg->peers.count > 0;
	if (n.clustered)
		n.repl = repl_cluster_create(n.loop, n.db, &rset, n.cfg);
	else
		n.repl = repl_local_create(n.loop, n.db, &rset);
	/* Peers first: a bad secret or TLS file stops the node before it
	 * serves anything. */
	n.mm = repl_mm_create(n.loop, n.cfg);
	n.sync = repl_sync_create(n.loop, n.repl);
	if (repl_peers_create(n.loop, n.cfg, &link_callbacks, &n, &n.peers, &err) < 0)
		fatalx("%s", err);
	repl_mm_attach(n.mm, n.peers);
	repl_sync_attach(n.sync, n.peers);
	if (n.clustered)
		repl_cluster_attach(n.repl, n.peers, n.mm, n.sync);
	if (imap_server_create(n.loop, n.cfg, n.repl, &n.imap, &err) < 0)
		fatalx("%s", err);
	if (lmtp_server_create(n.loop, n.cfg, n.repl, &n.lmtp, &err) < 0)
		fatalx("%s", err);
	if (repl_admin_create(n.loop, n.cfg, n.repl, status_cb, &n, &n.admin, &err) < 0)
		fatalx("%s", err);
	repl_admin_set_master(n.admin, &master_ops, n.mm);
	repl_admin_set_resync(n.admin, &resync_ops, n.sync);
	n.started = clock_wall_s();
	ev_signal_init(&n.sigterm, signal_cb, SIGTERM);
	ev_signal_init(&n.sigint, signal_cb, SIGINT);
	ev_signal_init(&n.sighup, sighup_cb, SIGHUP);
	ev_signal_start(n.loop, &n.sigterm);
	ev_signal_start(n.loop, &n.sigint);
	ev_signal_start(n.loop, &n.sighup);
	log_info("node %u started: imap %s:%u%s, data %s", n.cfg->node_id,
		 n.cfg->imap_listen.host ? n.cfg->imap_listen.host : "-", n.cfg->imap_listen.port,
		 n.cfg->imaps_listen.host ? " (+imaps)" : "", n.cfg->data_dir);

	ev_run(n.loop, 0);

	/* Finish what is in flight (clients get their answers), then close. */
	repl_flush(n.repl);
	if (n.clustered)
		repl_cluster_detach(n.repl);
	repl_sync_destroy(&n.sync);
	repl_mm_destroy(&n.mm);
	repl_peers_destroy(&n.peers);
	/* Closing the links and the master machine ended the forwards still
	 * waiting on them (as with no master); their clients are answered
	 * now, before the IMAP server and the admin socket go. */
	repl_flush(n.repl);
	repl_admin_destroy(&n.admin);
	imap_server_destroy(&n.imap);
	lmtp_server_destroy(&n.lmtp);
	repl_destroy(&n.repl);
	const char *serr;
	if (stor_sync(n.db, &serr) < 0)
		log_errorx("final sync failed: %s", serr);
	stor_close(&n.db);
	ev_signal_stop(n.loop, &n.sigterm);
	ev_signal_stop(n.loop, &n.sigint);
	ev_signal_stop(n.loop, &n.sighup);
	ev_loop_destroy(n.loop);
	log_info("stopped");
	free(store_dir);
	config_free(&n.cfg);
	return 0;
}

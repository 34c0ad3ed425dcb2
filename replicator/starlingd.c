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
#include "lib/arr.h"
#include "lib/clock.h"
#include "lib/config.h"
#include "lib/file.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include "lmtp/lmtp-server.h"
#include "replicator/repl-admin.h"
#include "replicator/repl-cluster.h"
#include "replicator/repl-metrics.h"
#include "replicator/repl-mm.h"
#include "replicator/repl-sync.h"
#include "replicator/repl-peer.h"
#include "replicator/repl-users.h"
#include "replicator/repl.h"
#include "storage/acl-rights.h"
#include "storage/storage.h"

/* A `starling` command that finds no node opens the store itself (an
 * export of a large user takes seconds): a start waits this long for it
 * before it gives up as "in use". */
#define STORE_LOCK_WAIT_MS 30000

struct node {
	struct config *cfg;
	struct ev_loop *loop;
	struct stor_db *db;
	struct repl *repl;
	struct imap_server *imap;
	struct lmtp_server *lmtp;  /* NULL without lmtp_listen */
	struct repl_admin *admin;
	struct repl_metrics *metrics; /* NULL without metrics_listen */
	struct repl_peers *peers;
	struct repl_mm *mm;
	struct repl_sync *sync;
	struct repl_users *users;
	bool clustered;  /* peers configured: the replicating seam */
	int64_t started;
	/* Configurations replaced by SIGHUP: kept until exit, since the
	 * layers may still hold strings of them. */
	ARRAY(struct config *) retired;
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
	"  --version  print the version and exit\n"
	"SIGTERM/SIGINT stop in order; SIGHUP reloads peers, users_file and TLS files\n";

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
	if (n->sync != NULL)
		repl_sync_status(n->sync, out);
	if (n->clustered)
		repl_cluster_status(n->repl, out);
}

/* GET /metrics: what status shows, and the IMAP latency histogram. */
static void metrics_cb(void *ctx, struct buf *out)
{
	struct node *n = ctx;
	struct buf st = BUF_INIT;
	status_cb(n, &st);
	repl_metrics_from_status(buf_cstr(&st), out);
	buf_free(&st);
	if (n->imap == NULL)
		return;
	const struct imap_latency *l = imap_server_latency(n->imap);
	const char *name = "starling_imap_command_duration_seconds";
	buf_appendf(out, "# HELP %s IMAP command time from dispatch to the tagged reply (IDLE not counted)\n"
		    "# TYPE %s histogram\n", name, name);
	for (size_t i = 0; i < IMAP_LATENCY_BUCKETS; i++)
		buf_appendf(out, "%s_bucket{le=\"%g\"} %llu\n", name,
			    (double)imap_latency_bounds_us[i] / 1e6, (unsigned long long)l->le[i]);
	buf_appendf(out, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)l->count);
	buf_appendf(out, "%s_sum %.6f\n", name, (double)l->sum_us / 1e6);
	buf_appendf(out, "%s_count %llu\n", name, (unsigned long long)l->count);
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

static bool resync_progress(void *ctx, const void *cb_ctx, char *out, size_t size)
{
	return repl_sync_progress(ctx, cb_ctx, out, size);
}

static const struct repl_admin_resync_ops resync_ops = { resync_start, resync_progress };

/* The link events go to the mailbox masters and to the sync. */
static void link_up_cb(struct repl_peers *peers, uint32_t sid, struct proto_conn *conn, void *ctx)
{
	struct node *n = ctx;
	repl_sync_link_up(n->sync, sid);
	repl_users_link_up(n->users, sid, conn);
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

#define SWAP(a, b) do { __typeof__(a) swap_tmp_ = (a); (a) = (b); (b) = swap_tmp_; } while (0)

static bool addr_same(const struct config_addr *a, const struct config_addr *b)
{
	if (a->host == NULL || b->host == NULL)
		return a->host == b->host;
	return strcmp(a->host, b->host) == 0 && a->port == b->port;
}

static bool str_same(const char *a, const char *b)
{
	return a == NULL || b == NULL ? a == b : strcmp(a, b) == 0;
}

/* Names in *out the keys of next that differ from cur but take effect only
 * at a restart. */
static void restart_only_changes(const struct config *cur, const struct config *next,
				 struct buf *out)
{
	const struct {
		const char *name;
		bool same;
	} keys[] = {
		{ "node_id", cur->node_id == next->node_id },
		{ "data_dir", str_same(cur->data_dir, next->data_dir) },
		{ "imap_listen", addr_same(&cur->imap_listen, &next->imap_listen) },
		{ "imaps_listen", addr_same(&cur->imaps_listen, &next->imaps_listen) },
		{ "repl_listen", addr_same(&cur->repl_listen, &next->repl_listen) },
		{ "cluster_secret_file", str_same(cur->cluster_secret_file, next->cluster_secret_file) },
		{ "sync_replicas", cur->sync_replicas == next->sync_replicas },
		{ "master_granularity", cur->master_granularity == next->master_granularity },
		{ "degraded_writes", cur->degraded_writes == next->degraded_writes },
		{ "log_level", cur->log_level == next->log_level },
		{ "max_message_size", cur->max_message_size == next->max_message_size },
		{ "plaintext_auth", cur->plaintext_auth == next->plaintext_auth },
		{ "repl_log_max", cur->repl_log_max == next->repl_log_max },
		{ "lmtp_listen", addr_same(&cur->lmtp_listen, &next->lmtp_listen) &&
				 str_same(cur->lmtp_socket, next->lmtp_socket) },
		{ "lmtp_detail_mailbox", cur->lmtp_detail_mailbox == next->lmtp_detail_mailbox },
		{ "metrics_listen", addr_same(&cur->metrics_listen, &next->metrics_listen) },
		{ "acl_owner_rights", str_same(cur->acl_owner_rights, next->acl_owner_rights) },
		{ "read_consistency", cur->read_consistency == next->read_consistency },
		{ "shared_seen", cur->shared_seen_private == next->shared_seen_private },
		/* TLS switched on or off, and peers where there were none (or
		 * none left), change what runs, not only what it uses. */
		{ "tls_cert/tls_key (on/off)", (cur->tls_cert == NULL) == (next->tls_cert == NULL) },
		{ "tls_ca (on/off)", (cur->tls_ca == NULL) == (next->tls_ca == NULL) },
		{ "peer (none/some)", (cur->peers.count == 0) == (next->peers.count == 0) },
	};
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		if (!keys[i].same)
			buf_appendf(out, "%s%s", out->len > 0 ? ", " : "", keys[i].name);
	}
}

/* The users file is read at each login: a new path is all there is to
 * take over (kept apart: how users are looked up may change). */
static void reload_users(struct config *cur, struct config *next)
{
	SWAP(cur->users_file, next->users_file);
	if (cur->users_file != NULL && access(cur->users_file, R_OK) < 0)
		log_warn("SIGHUP: users_file %s", cur->users_file);
}

/* SIGHUP: peers, users and TLS files from the file again.  Sessions and
 * up links stay. */
static void reload(struct node *n)
{
	char *err = NULL;
	struct config *next = config_load(n->cfg->path, &err);
	uint32_t owner_rights;
	/* Checked like at start-up, so that a bad value is reported now, not
	 * at the next restart (which it would stop). */
	if (next != NULL && acl_owner_rights_config(next, &owner_rights, &err) < 0)
		config_free(&next);
	if (next == NULL) {
		log_errorx("SIGHUP: %s; keeping the running configuration", err);
		free(err);
		return;
	}
	struct config *cur = n->cfg;
	struct buf fixed = BUF_INIT;
	restart_only_changes(cur, next, &fixed);
	if (fixed.len > 0)
		log_warnx("SIGHUP: changed, but only a restart applies it (keeping the running values): %s",
			  buf_cstr(&fixed));
	bool tls_onoff = (cur->tls_cert == NULL) != (next->tls_cert == NULL) ||
			 (cur->tls_ca == NULL) != (next->tls_ca == NULL);
	bool peers_ok = (cur->peers.count == 0) == (next->peers.count == 0);
	if (peers_ok && cur->sync_replicas > next->peers.count) {
		log_errorx("SIGHUP: %s: sync_replicas = %u (until a restart) but only %zu peers are configured; "
			   "keeping the running peers", cur->path, cur->sync_replicas, next->peers.count);
		peers_ok = false;
	}
	reload_users(cur, next);
	if (!tls_onoff) {
		SWAP(cur->tls_cert, next->tls_cert);
		SWAP(cur->tls_key, next->tls_key);
		SWAP(cur->tls_ca, next->tls_ca);
		if (imap_server_reload_tls(n->imap, &err) < 0) {
			log_errorx("SIGHUP: %s; keeping the running certificate", err);
			free(err);
			SWAP(cur->tls_cert, next->tls_cert);
			SWAP(cur->tls_key, next->tls_key);
			SWAP(cur->tls_ca, next->tls_ca);
		}
	}
	if (peers_ok) {
		SWAP(cur->peers, next->peers);
		if (n->clustered)
			repl_cluster_peers_changed(n->repl);
	}
	/* Also for new TLS files alone: the next links use them. */
	repl_peers_reload(n->peers, cur);
	ARRAY_PUSH(&n->retired, next);
	buf_free(&fixed);
	log_info("SIGHUP: configuration reloaded from %s (%zu peers)", cur->path, cur->peers.count);
}

static void sighup_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	struct node *n = w->data;
	reload(n);
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
	log_init(0, LOG_LEVEL_INFO);
	char *err = NULL;
	struct node n;
	memset(&n, 0, sizeof(n));
	n.cfg = config_load(conf, &err);
	if (n.cfg == NULL)
		fatalx("%s", err);
	uint32_t owner_rights;
	if (acl_owner_rights_config(n.cfg, &owner_rights, &err) < 0)
		fatalx("%s", err);
	if (print_only) {
		config_print(n.cfg, stdout);
		config_free(&n.cfg);
		return 0;
	}
	log_init(n.cfg->node_id, n.cfg->log_level);
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
	sset.lock_wait_ms = STORE_LOCK_WAIT_MS;
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
	n.users = repl_users_create(n.loop, n.cfg, n.db);
	if (repl_peers_create(n.loop, n.cfg, &link_callbacks, &n, &n.peers, &err) < 0)
		fatalx("%s", err);
	repl_mm_attach(n.mm, n.peers);
	repl_sync_attach(n.sync, n.peers);
	repl_users_attach(n.users, n.peers);
	if (n.clustered)
		repl_cluster_attach(n.repl, n.peers, n.mm, n.sync);
	if (imap_server_create(n.loop, n.cfg, n.repl, &n.imap, &err) < 0)
		fatalx("%s", err);
	if (lmtp_server_create(n.loop, n.cfg, n.repl, &n.lmtp, &err) < 0)
		fatalx("%s", err);
	if (repl_admin_create(n.loop, n.cfg, n.repl, status_cb, &n, &n.admin, &err) < 0)
		fatalx("%s", err);
	if (repl_metrics_create(n.loop, &n.cfg->metrics_listen, metrics_cb, &n, &n.metrics, &err) < 0)
		fatalx("%s", err);
	repl_admin_set_master(n.admin, &master_ops, n.mm);
	repl_admin_set_resync(n.admin, &resync_ops, n.sync);
	repl_admin_set_users(n.admin, n.users);
	n.started = clock_wall_s();
	ev_signal_init(&n.sigterm, signal_cb, SIGTERM);
	ev_signal_init(&n.sigint, signal_cb, SIGINT);
	ev_signal_init(&n.sighup, sighup_cb, SIGHUP);
	n.sighup.data = &n;
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
	repl_users_destroy(&n.users);
	/* Closing the links and the master machine ended the forwards still
	 * waiting on them (as with no master); their clients are answered
	 * now, before the IMAP server and the admin socket go. */
	repl_flush(n.repl);
	repl_metrics_destroy(&n.metrics);
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
	for (size_t i = 0; i < n.retired.count; i++)
		config_free(&n.retired.items[i]);
	ARRAY_FREE(&n.retired);
	return 0;
}

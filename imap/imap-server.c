/* Listening sockets, accept(), the TLS context and the session list. */
#include "imap/imap-private.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/listen.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include "storage/acl-rights.h"

static void describe_peer(const struct sockaddr_storage *ss, char *out, size_t outlen,
			  bool *loopback_r)
{
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;
	*loopback_r = false;
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		port = ntohs(sin->sin_port);
		*loopback_r = (ntohl(sin->sin_addr.s_addr) >> 24) == 127;
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		port = ntohs(sin6->sin6_port);
		*loopback_r = IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr) ||
			(IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr) && sin6->sin6_addr.s6_addr[12] == 127);
	}
	snprintf(out, outlen, "%s:%u", host, port);
}

static void start_listeners(struct imap_server *srv)
{
	for (int i = 0; i < 2; i++)
		if (srv->listen_fd[i] >= 0)
			ev_io_start(srv->loop, &srv->listen_io[i]);
}

static void accept_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct imap_server *srv = w->data;
	start_listeners(srv);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct imap_server *srv = w->data;
	bool tls = w == &srv->listen_io[1];
	/* A bounded number per wakeup, so one busy listener can't starve the
	 * sessions. */
	for (int n = 0; n < 32; n++) {
		struct sockaddr_storage ss;
		int fd = listen_accept(w->fd, &ss);
		if (fd == LISTEN_DRAINED)
			return;
		if (fd < 0) {
			/* EMFILE and friends: stop accepting for a moment instead of
			 * spinning on a listener that stays readable. */
			log_warn("imap: accept");
			for (int i = 0; i < 2; i++)
				if (srv->listen_fd[i] >= 0)
					ev_io_stop(loop, &srv->listen_io[i]);
			ev_timer_set(&srv->accept_retry, 0.5, 0.);
			ev_timer_start(loop, &srv->accept_retry);
			return;
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		char peer[80];
		bool loopback;
		describe_peer(&ss, peer, sizeof(peer), &loopback);
		imap_client_create(srv, fd, tls, peer, loopback);
	}
}

static SSL_CTX *tls_context(const struct config *cfg, char **error_r)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (ctx == NULL) {
		*error_r = xstrdup("TLS: cannot create context");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		char buf[256];
		ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
		*error_r = xasprintf("TLS: cannot load %s / %s: %s", cfg->tls_cert, cfg->tls_key, buf);
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

int imap_server_reload_tls(struct imap_server *srv, char **error_r)
{
	if (srv->ssl_ctx == NULL)
		return 0;
	SSL_CTX *ctx = tls_context(srv->cfg, error_r);
	if (ctx == NULL)
		return -1;
	/* Sessions hold their own reference to the old context. */
	SSL_CTX_free(srv->ssl_ctx);
	srv->ssl_ctx = ctx;
	return 0;
}

int imap_server_create(struct ev_loop *loop, const struct config *cfg, struct repl *repl,
		       struct imap_server **srv_r, char **error_r)
{
	struct imap_server *srv = xcalloc(1, sizeof(*srv));
	srv->loop = loop;
	srv->cfg = cfg;
	srv->repl = repl;
	srv->db = repl_db(repl);
	srv->listen_fd[0] = srv->listen_fd[1] = -1;
	srv->next_id = 1;
	ev_timer_init(&srv->accept_retry, accept_retry_cb, 0.5, 0.);
	srv->accept_retry.data = srv;
	if (acl_owner_rights_config(cfg, &srv->owner_rights, error_r) < 0)
		goto fail;
	if (cfg->tls_cert != NULL && cfg->tls_key != NULL) {
		srv->ssl_ctx = tls_context(cfg, error_r);
		if (srv->ssl_ctx == NULL)
			goto fail;
	} else if (cfg->imaps_listen.host != NULL) {
		*error_r = xstrdup("imaps_listen needs tls_cert and tls_key");
		goto fail;
	}
	if (cfg->imap_listen.host != NULL) {
		srv->listen_fd[0] = listen_tcp(&cfg->imap_listen, error_r);
		if (srv->listen_fd[0] < 0)
			goto fail;
	}
	if (cfg->imaps_listen.host != NULL) {
		srv->listen_fd[1] = listen_tcp(&cfg->imaps_listen, error_r);
		if (srv->listen_fd[1] < 0)
			goto fail;
	}
	for (int i = 0; i < 2; i++) {
		if (srv->listen_fd[i] < 0)
			continue;
		ev_io_init(&srv->listen_io[i], accept_cb, srv->listen_fd[i], EV_READ);
		srv->listen_io[i].data = srv;
	}
	start_listeners(srv);
	srv->passwd_worker = imap_passwd_worker_create(loop);
	repl_watch_add(repl, imap_sync_notify, srv);
	*srv_r = srv;
	return 0;
fail:
	for (int i = 0; i < 2; i++)
		if (srv->listen_fd[i] >= 0)
			close(srv->listen_fd[i]);
	if (srv->ssl_ctx != NULL)
		SSL_CTX_free(srv->ssl_ctx);
	free(srv);
	return -1;
}

void imap_server_destroy(struct imap_server **srvp)
{
	struct imap_server *srv = *srvp;
	if (srv == NULL)
		return;
	*srvp = NULL;
	srv->stopping = true;
	repl_watch_remove(srv->repl, imap_sync_notify, srv);
	imap_recent_free(srv);
	for (int i = 0; i < 2; i++) {
		if (srv->listen_fd[i] < 0)
			continue;
		ev_io_stop(srv->loop, &srv->listen_io[i]);
		close(srv->listen_fd[i]);
	}
	ev_timer_stop(srv->loop, &srv->accept_retry);
	imap_passwd_worker_destroy(&srv->passwd_worker);
	while (srv->clients != NULL) {
		struct imap_client *c = srv->clients;
		if (!c->dead && c->ssl == NULL) {
			/* Best effort: one write, no waiting. */
			static const char bye[] = "* BYE Server shutting down\r\n";
			if (write(c->fd, bye, sizeof(bye) - 1) < 0) {
				/* nothing to do: we are closing anyway */
			}
		}
		/* With srv->stopping set this frees c even if a change is
		 * still in flight (starlingd flushes the seam first). */
		imap_client_destroy(c);
	}
	if (srv->ssl_ctx != NULL)
		SSL_CTX_free(srv->ssl_ctx);
	free(srv);
}

const uint64_t imap_latency_bounds_us[IMAP_LATENCY_BUCKETS] = {
	500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 1000000, 10000000,
};

void imap_latency_add(struct imap_latency *l, uint64_t us)
{
	for (size_t i = 0; i < IMAP_LATENCY_BUCKETS; i++)
		l->le[i] += us <= imap_latency_bounds_us[i];
	l->count++;
	l->sum_us += us;
}

const struct imap_latency *imap_server_latency(const struct imap_server *srv)
{
	return &srv->latency;
}

unsigned imap_server_session_count(const struct imap_server *srv)
{
	return srv->client_count;
}

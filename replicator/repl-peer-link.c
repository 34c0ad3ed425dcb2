/* Peer links (see repl-peer.c): a protocol connection wrapped as a link,
 * an accepted link identified once it authenticated, a peer's link going
 * up and down (told to the layers above), and the dispatch of the peers'
 * commands to the handlers registered by name. */
#include "replicator/repl-peer-private.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "lib/xalloc.h"

void peer_link_free(struct link *link)
{
	struct repl_peers *mgr = link->mgr;
	if (link->prev != NULL)
		link->prev->next = link->next;
	else
		mgr->links = link->next;
	if (link->next != NULL)
		link->next->prev = link->prev;
	free(link);
}

/* The link of an up peer is gone (closed or replaced): tell the layers.
 *
 * A link that dies within REPL_PEER_STABLE_MS of coming up (the peer
 * authenticates us, then refuses our SID, say) counts as a failed attempt:
 * the backoff keeps growing, and from the second such loss in a row on,
 * neither the ups nor the downs are logged above debug level (the reason
 * can vary: a BYE, or a reset that overtook it). */
static void peer_link_lost(struct peer *peer, const char *reason)
{
	struct repl_peers *mgr = peer->mgr;
	bool was_up = peer->state == REPL_PEER_UP;
	peer->link = NULL;
	if (was_up) {
		bool brief = clock_mono_ms() - peer->since_ms < REPL_PEER_STABLE_MS;
		snprintf(peer->reason, sizeof(peer->reason), "%s", reason);
		if (brief && peer->quiet) {
			log_debug("peer %u: link down again: %s", peer->sid, reason);
		} else {
			log_warnx("peer %u: link down: %s%s", peer->sid, reason,
				  brief ? " (right after it came up)" : "");
			snprintf(peer->last_logged, sizeof(peer->last_logged), "%s", reason);
		}
		peer->quiet = brief;
		if (!brief)
			peer->failures = 0;
	} else {
		peer_failure(peer, "%s", reason);
	}
	if (peer->we_connect) {
		peer_schedule_connect(peer);
	} else {
		peer_set_state(peer, REPL_PEER_DOWN);
	}
	if (was_up && mgr->cb.link_down != NULL)
		mgr->cb.link_down(mgr, peer->sid, reason, mgr->ctx);
}

static void peer_link_up(struct peer *peer, struct link *link)
{
	struct repl_peers *mgr = peer->mgr;
	peer->link = link;
	link->peer = peer;
	peer->link_ups++;
	peer->reason[0] = '\0';
	peer_set_state(peer, REPL_PEER_UP);
	if (peer->quiet)
		log_debug("peer %u: link up again (%s)", peer->sid, link->addr);
	else
		log_info("peer %u: link up (%s, %s%s)", peer->sid, link->addr,
			 peer->we_connect ? "we connected" : "it connected",
			 proto_conn_is_tls(link->conn) ? ", TLS" : "");
	if (mgr->cb.link_up != NULL)
		mgr->cb.link_up(mgr, peer->sid, link->conn, mgr->ctx);
}

/* An accepted link authenticated: find whose it is. */
static void link_identify(struct link *link)
{
	struct repl_peers *mgr = link->mgr;
	uint32_t sid = proto_conn_peer_sid(link->conn);
	struct peer *peer = peer_find(mgr, sid);
	char reason[REASON_MAX];
	if (peer == NULL) {
		snprintf(reason, sizeof(reason), "node %u is not a configured peer", sid);
		proto_conn_bye(link->conn, "SID", "unknown node id");
	} else if (peer->we_connect) {
		snprintf(reason, sizeof(reason),
			 "node %u connected, but the lower SID (this node) connects", sid);
		proto_conn_bye(link->conn, "SID", "duplicate link: the lower SID connects");
	} else {
		mgr->anonymous_count--;
		if (peer->link != NULL) {
			/* The peer restarted, or our side missed that its old
			 * link died: the new one wins. */
			struct link *old = peer->link;
			proto_conn_destroy(&old->conn);
			peer_link_free(old);
			peer_link_lost(peer, "replaced by a new connection from the peer");
		}
		peer_link_up(peer, link);
		return;
	}
	link->refused = true;
	peer_refusal_log(mgr, link->addr, reason);
}

static void link_ready_cb(struct proto_conn *conn, void *ctx)
{
	struct link *link = ctx;
	if (link->peer == NULL)
		link_identify(link);
	else
		peer_link_up(link->peer, link);
}

static void link_command_cb(struct proto_conn *conn, const struct proto_cmd *cmd, void *ctx)
{
	struct link *link = ctx;
	struct repl_peers *mgr = link->mgr;
	struct peer *peer = link->peer;
	if (peer == NULL || peer->link != link || peer->state != REPL_PEER_UP) {
		proto_conn_reply(conn, cmd->tag, "NO", "TRYLATER", "link not established");
		return;
	}
	for (size_t i = 0; i < mgr->handlers.count; i++) {
		struct handler *h = &mgr->handlers.items[i];
		if (strcasecmp(h->name, cmd->name) == 0) {
			h->func(mgr, peer->sid, conn, cmd, h->ctx);
			return;
		}
	}
	proto_conn_reply(conn, cmd->tag, "BAD", "UNKNOWN-COMMAND",
			 proto_cmd_info_find(cmd->name) != NULL ?
			 "command not implemented by this node" : "unknown command");
}

static void link_untagged_cb(struct proto_conn *conn, const struct proto_cmd *line, void *ctx)
{
	struct link *link = ctx;
	struct repl_peers *mgr = link->mgr;
	if (link->peer != NULL && link->peer->link == link && mgr->cb.untagged != NULL)
		mgr->cb.untagged(mgr, link->peer->sid, conn, line, mgr->ctx);
}

static void link_drained_cb(struct proto_conn *conn, void *ctx)
{
	struct link *link = ctx;
	struct repl_peers *mgr = link->mgr;
	if (link->peer != NULL && link->peer->link == link && mgr->cb.drained != NULL)
		mgr->cb.drained(mgr, link->peer->sid, conn, mgr->ctx);
}

static void link_closed_cb(struct proto_conn *conn, const char *reason, void *ctx)
{
	struct link *link = ctx;
	struct repl_peers *mgr = link->mgr;
	struct peer *peer = link->peer;
	if (peer == NULL) {
		mgr->anonymous_count--;
		if (!link->refused)
			peer_refusal_log(mgr, link->addr, reason);
		peer_link_free(link);
		return;
	}
	bool current = peer->link == link;
	peer_link_free(link);
	if (current)
		peer_link_lost(peer, reason);
}

/* Read at the HELLO, so a peer's address changed by SIGHUP counts at once. */
static const char *link_peer_host_cb(struct proto_conn *conn, uint32_t sid, void *ctx)
{
	struct link *link = ctx;
	struct peer *peer = peer_find(link->mgr, sid);
	return peer != NULL ? peer->host : NULL;
}

static const struct proto_conn_callbacks link_callbacks = {
	.peer_host = link_peer_host_cb,
	.ready = link_ready_cb,
	.command = link_command_cb,
	.untagged = link_untagged_cb,
	.drained = link_drained_cb,
	.closed = link_closed_cb,
};

/* Wraps a connected socket in a protocol connection.  peer is NULL for an
 * accepted socket.  Returns the link, or NULL (fd closed, failure logged). */
struct link *peer_link_create(struct repl_peers *mgr, int fd, struct peer *peer,
				const char *addr)
{
	struct link *link = xcalloc(1, sizeof(*link));
	link->mgr = mgr;
	link->peer = peer;
	snprintf(link->addr, sizeof(link->addr), "%s", addr);
	struct proto_conn_settings set = mgr->conn_set;
	set.initiator = peer != NULL;
	set.expected_peer_sid = peer != NULL ? peer->sid : 0;
	const char *error;
	link->conn = proto_conn_create(mgr->loop, fd, &set, &link_callbacks, link, &error);
	if (link->conn == NULL) {
		/* proto_conn_create() leaves fd to us when TLS setup fails. */
		close(fd);
		if (peer != NULL)
			peer_failure(peer, "cannot set up the link: %s", error);
		else
			peer_refusal_log(mgr, addr, error);
		free(link);
		return NULL;
	}
	link->next = mgr->links;
	if (mgr->links != NULL)
		mgr->links->prev = link;
	mgr->links = link;
	return link;
}


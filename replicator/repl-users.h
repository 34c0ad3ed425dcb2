/* The cluster's users (SPEC.md 7.5): `starling user add|del|passwd|list`
 * on any node, replicated to every node as a last-writer-wins table of
 * password hashes and tombstones (storage/storage-users.h). */
#ifndef REPLICATOR_REPL_USERS_H
#define REPLICATOR_REPL_USERS_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/config.h"
#include "protocol/protocol.h"
#include "storage/storage.h"

struct repl_peers;
struct repl_users;

/* Wait for each peer's answer to a change, at most. */
#define REPL_USERS_ACK_TIMEOUT_MS 5000u
/* Every node pulls every up peer's table this often (and when a link comes
 * up), so a change a peer missed reaches it within this bound. */
#define REPL_USERS_CHECK_INTERVAL_MS 60000u

struct repl_users *repl_users_create(struct ev_loop *loop, const struct config *cfg,
				     struct stor_db *db);
/* Registers USER-PUT and USER-LIST on the links; peers may be NULL. */
void repl_users_attach(struct repl_users *u, struct repl_peers *peers);
/* Pulls the peer's table and merges it. */
void repl_users_link_up(struct repl_users *u, uint32_t sid, struct proto_conn *conn);
/* Fails the admin requests still waiting (their callbacks run). */
void repl_users_destroy(struct repl_users **u);

/* An admin request (USER-ADD NAME HASH, USER-PASSWD NAME HASH, USER-DEL
 * NAME, USER-LIST; protocol in repl-admin.c) is answered once through cb,
 * maybe before this returns: ok, DATA for USER-LIST, and the text of the
 * final line. */
typedef void repl_users_done_cb(void *ctx, bool ok, const void *data, size_t len,
				const char *text);
void repl_users_admin(struct repl_users *u, char **tok, int n, repl_users_done_cb *cb,
		      void *ctx);

#endif

/* What the files of the admin socket share (repl-admin.c: the socket and
 * its protocol; repl-admin-deliver.c, repl-admin-bundle.c,
 * repl-admin-acl.c, repl-admin-backends.c: the commands).  A command
 * answers through admin_conn_reply(); one that waits for the seam or a
 * backend sets CONN_WAITING and, in its callback, answers only if
 * admin_conn_waited() says the connection is still there. */
#ifndef REPLICATOR_REPL_ADMIN_PRIVATE_H
#define REPLICATOR_REPL_ADMIN_PRIVATE_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>

#include "lib/buf.h"
#include "replicator/repl-admin.h"
#include "replicator/repl-private.h"
#include "sync/sync-bundle.h"

struct admin_conn;

struct repl_admin {
	struct ev_loop *loop;
	const struct config *cfg;
	struct repl *repl;
	repl_admin_status_cb *status_cb;
	void *status_ctx;
	char *path;
	int fd;
	ev_io io;
	struct admin_conn *conns;
	const struct repl_admin_master_ops *master_ops;
	void *master_ctx;
	const struct repl_admin_resync_ops *resync_ops;
	void *resync_ctx;
	bool importing;  /* a BUNDLE-IMPORT runs (one at a time) */
	struct repl_users *users;
	double progress_interval; /* seconds between PROGRESS lines */
	uint32_t owner_rights;     /* acl_owner_rights */
};

enum conn_state {
	CONN_REQUEST,
	CONN_BODY,
	CONN_WAITING,   /* a seam change is in flight */
	CONN_REPLYING,  /* flush, then close */
};

struct admin_conn {
	struct repl_admin *admin;
	struct admin_conn *prev, *next;
	int fd;
	ev_io io;
	ev_timer timer;
	enum conn_state state;
	struct buf in, out;
	/* DELIVER, BUNDLE-EXPORT (body: the state file), BUNDLE-IMPORT (body:
	 * the bundle) */
	enum { BODY_DELIVER, BODY_BUNDLE_EXPORT, BODY_BUNDLE_IMPORT } body_kind;
	char *user, *mailbox;
	uint64_t body_size;
	struct buf body;
	struct guid mailbox_guid;
	struct repl_append req;
	bool dead;        /* closed while a change was in flight */
	/* BUNDLE-IMPORT in steps from an idle watcher, so the node goes on
	 * serving meanwhile. */
	struct sync_bundle_import *imp;
	ev_idle idle;
	ev_timer progress; /* PROGRESS lines of a long RESYNC or BUNDLE-IMPORT */
};

/* repl-admin.c: the connection and its protocol. */
void admin_conn_free(struct admin_conn *c);
/* Queues DATA (if any) and the final line, then closes after flushing. */
void admin_conn_reply(struct admin_conn *c, const void *data, size_t len, const char *status,
		      const char *text);
void admin_conn_update_io(struct admin_conn *c);
/* For the callback of a command that waited (CONN_WAITING): false when
 * the connection died meanwhile (it is freed then: nothing to answer). */
bool admin_conn_waited(struct admin_conn *c);
/* PROGRESS lines every progress_interval until the reply. */
void admin_progress_start(struct admin_conn *c);
/* Starts reading the body of a request (size checked by the caller). */
void admin_body_begin(struct admin_conn *c, int kind, uint64_t size);

/* repl-admin-deliver.c: DELIVER. */
void admin_deliver_request(struct admin_conn *c, char **tok);
void admin_deliver_run(struct admin_conn *c);

/* repl-admin-bundle.c: BUNDLE-EXPORT, BUNDLE-IMPORT. */
void admin_bundle_export_request(struct admin_conn *c, char **tok);
void admin_bundle_import_request(struct admin_conn *c, char **tok);
void admin_bundle_export_run(struct admin_conn *c);
void admin_bundle_import_run(struct admin_conn *c);

/* repl-admin-acl.c: ACL-*, PUBLIC-CREATE. */
void admin_acl_request(struct admin_conn *c, char **tok, int n);
void admin_public_create(struct admin_conn *c, const char *name);

/* repl-admin-backends.c: MASTER, RESYNC, USER-*. */
void admin_master_request(struct admin_conn *c, const char *user, const char *mbname);
void admin_resync_request(struct admin_conn *c, char **tok, int n);
void admin_users_request(struct admin_conn *c, char **tok, int n);

#endif

/* The admin socket: a UNIX stream socket at DATA_DIR/admin.sock (mode 0600)
 * through which the `starling` tool talks to the running node.
 *
 * Protocol (one request per connection):
 *
 *   The client sends one request line terminated by LF (at most 8 KiB):
 *   space-separated tokens, each percent-encoded (every byte outside
 *   0x21-0x7E, and '%' itself, as %XX with two hex digits).  Requests:
 *
 *     DELIVER <user> <mailbox> <size>   followed by exactly <size> bytes of
 *                                       message text (size <= max_message_size)
 *     DUMP <user>                       canonical dump (stor_dump_user)
 *     STATUS                            human-readable node status
 *     USERS                             users that have mailboxes, one a line
 *     USER-ADD <name> <hash>            the cluster's users (SPEC.md 7.5): add,
 *     USER-PASSWD <name> <hash>         change the password hash of, delete;
 *     USER-DEL <name>                   "OK replicated to N of M peers[; not yet
 *                                       on: SID (why) ...]" once every up peer
 *                                       answered (at most 5 s), or "NO why"
 *     USER-LIST                         users that can log in (users_file and
 *                                       the table), sorted, one a line
 *     MASTER <user> [<mailbox>]         the master of the mailbox's granule
 *                                       (default INBOX), SPEC.md 9
 *     RESYNC <user> [<peer>|0] [FULL]   sync the user with one peer (0 or
 *                                       none: every up peer), SPEC.md 10
 *     BUNDLE-EXPORT <user> <size>       followed by <size> bytes of state file
 *                                       (0: none, a full bundle), SPEC.md 11
 *     BUNDLE-IMPORT <size>              followed by <size> bytes of bundle
 *     ACL-GET <owner> <mailbox>         the mailbox's ACL (SPEC.md 7.6)
 *     ACL-SET <owner> <mailbox> <identifier> <rights>
 *                                       set (rights as SETACL's: "+lr",
 *                                       "-w" or a whole set) or, with
 *     ACL-DELETE <owner> <mailbox> <identifier>   delete one record
 *     ACL-DEBUG <user> <mailbox>        why user can or cannot do what on
 *                                       the mailbox as user names it (own
 *                                       name, shared/OWNER/NAME, Public/NAME)
 *     PUBLIC-CREATE <name>              create the public mailbox Public/NAME
 *                                       (its owner is ACL_PUBLIC_OWNER)
 *
 *   The server answers with zero or more chunks "DATA <n>\n" followed by n
 *   bytes, then exactly one final line "OK [text]\n" or "NO <text>\n", and
 *   closes the connection.
 *
 *   DELIVER goes through the seam (so it is replicated like an IMAP APPEND):
 *   the user's default mailboxes are created first if the user has none,
 *   and the reply "OK <uid>" comes only once the message is durable.
 *   Errors: "NO unknown user" (not in users_file), "NO mailbox does not
 *   exist", "NO message too large", "NO bad request: ..." for anything
 *   malformed.
 *
 *   STATUS lines: "node_id: N", "imap: HOST:PORT", "sessions: N",
 *   "uptime_s: N", the store's lines (stor_status), the peer lines,
 *   "root: SID", "epoch: COUNTER.ROOT"
 *   (later issues add more lines; parsers must ignore unknown ones).
 *
 *   MASTER answers the lines "master: SID", "epoch: COUNTER.ROOT",
 *   "root: SID", "granule: KEY" and "is_master: yes|no" (this node's own
 *   view, at the moment of the answer), once the node knows the master.
 *   Errors: "NO mailbox does not exist", "NO timeout" (no master known
 *   within MASTER_TIMEOUT_MS, e.g. while the root waits for a member).
 *
 *   BUNDLE-EXPORT answers the bundle file as DATA, then "OK mailboxes N
 *   messages N tombstones N texts N left_out N".  BUNDLE-IMPORT verifies and
 *   merges the bundle (sync/sync-bundle.h; the loop waits meanwhile), tells
 *   the IMAP sessions, and answers the state file for the next export back
 *   as DATA, then "OK user U source SID base known|unknown created N
 *   received N renumbered N expunged N flags N", or "NO bundle refused:
 *   ..." (nothing changed).  Both need cluster_secret_file.
 *
 *   RESYNC answers the report of repl-sync ("peer: SID", "mailboxes_checked:
 *   N", ..., "converged: yes|no" per peer), then "OK converged", or "NO
 *   not converged: ...", "NO peer N is not connected", "NO resync with N
 *   failed: ..." (after the report of the peers done so far).
 *
 *   While a RESYNC or a BUNDLE-IMPORT runs, the server sends a line
 *   "PROGRESS <text>\n" every 5 s (STARLING_PROGRESS_INTERVAL seconds, for
 *   tests), before any DATA: how far it is, for the operator.  A client that
 *   does not read them gets no more once 4 KiB wait.
 *
 *   ACL-GET, ACL-SET and ACL-DELETE of a public mailbox name the owner
 *   ".public" (ACL_PUBLIC_OWNER) and the name without "Public/".
 *   PUBLIC-CREATE answers "OK created" once the mailbox is made and
 *   replicated like an IMAP CREATE, "NO mailbox exists" and the like.
 *   ACL-GET answers one line "IDENTIFIER RIGHTS" per record (and the
 *   owner's implicit "OWNER lrswipkxtea" when no record names the owner).
 *   ACL-SET and ACL-DELETE answer "OK IDENTIFIER RIGHTS" once the change is
 *   made and replicated like an IMAP SETACL, or "NO mailbox does not
 *   exist", "NO bad request: unknown right 'z'" and the like (nothing
 *   changed).  ACL-DEBUG answers "mailbox:", "owner:", the records that
 *   apply, "result: \"RIGHTS\"" and one "may ...: yes|no" line per operation.
 *
 * The socket never blocks the loop: a request and its body arrive over as
 * many callbacks as needed, and replies are written as the socket accepts
 * them. */
#include "replicator/repl-admin.h"

#include <errno.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/clock.h"
#include "lib/file.h"
#include "lib/log.h"
#include "lib/passwd.h"
#include "replicator/repl-users.h"
#include "storage/storage-users.h"
#include "lib/str.h"
#include "lib/xalloc.h"
#include "replicator/repl-private.h"
#include "sync/sync-bundle.h"
#include "storage/acl-rights.h"
#include "storage/storage-acl.h"

#define ADMIN_MAX_LINE 8192
#define ADMIN_MAX_TOKENS 8
#define ADMIN_TIMEOUT 120.0
#define MASTER_TIMEOUT_MS 10000u
#define PROGRESS_INTERVAL 5.0
#define PROGRESS_BACKLOG_MAX 4096

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

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);

static void conn_free(struct admin_conn *c)
{
	struct repl_admin *a = c->admin;
	if (c->prev != NULL)
		c->prev->next = c->next;
	else if (a != NULL)
		a->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	buf_free(&c->in);
	buf_free(&c->out);
	buf_free(&c->body);
	free(c->user);
	free(c->mailbox);
	free(c);
}

static void progress_stop(struct admin_conn *c)
{
	if (c->admin != NULL && ev_is_active(&c->progress))
		ev_timer_stop(c->admin->loop, &c->progress);
}

static void conn_update_io(struct admin_conn *c);

/* Long admin work tells how far it is; the final line follows as usual. */
static void progress_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct admin_conn *c = (struct admin_conn *)((char *)w - offsetof(struct admin_conn, progress));
	struct repl_admin *a = c->admin;
	char line[256];
	bool have = false;
	(void)loop;
	(void)revents;
	if (c->fd < 0 || c->state != CONN_WAITING || buf_avail(&c->out) > PROGRESS_BACKLOG_MAX)
		return;
	if (c->imp != NULL) {
		sync_bundle_import_progress(c->imp, line, sizeof(line));
		have = true;
	} else if (a->resync_ops != NULL && a->resync_ops->progress != NULL) {
		have = a->resync_ops->progress(a->resync_ctx, c, line, sizeof(line));
	}
	if (!have)
		return;
	buf_appendf(&c->out, "PROGRESS %s\n", line);
	conn_update_io(c);
}

static void progress_start(struct admin_conn *c)
{
	double iv = c->admin->progress_interval;
	ev_timer_init(&c->progress, progress_cb, iv, iv);
	ev_timer_start(c->admin->loop, &c->progress);
}

static void conn_close(struct admin_conn *c)
{
	progress_stop(c);
	if (c->fd >= 0) {
		ev_io_stop(c->admin->loop, &c->io);
		ev_timer_stop(c->admin->loop, &c->timer);
		close(c->fd);
		c->fd = -1;
	}
	if (c->state == CONN_WAITING) {
		c->dead = true;
		return;
	}
	conn_free(c);
}

static void conn_update_io(struct admin_conn *c)
{
	int events = 0;
	if (c->state == CONN_REQUEST || c->state == CONN_BODY)
		events |= EV_READ;
	if (buf_avail(&c->out) > 0)
		events |= EV_WRITE;
	ev_io_stop(c->admin->loop, &c->io);
	if (events != 0) {
		ev_io_set(&c->io, c->fd, events);
		ev_io_start(c->admin->loop, &c->io);
	}
}

/* Queues DATA (if any) and the final line, then closes after flushing. */
static void conn_reply(struct admin_conn *c, const void *data, size_t len, const char *status,
		       const char *text)
{
	progress_stop(c);
	if (data != NULL && len > 0) {
		buf_appendf(&c->out, "DATA %zu\n", len);
		buf_append(&c->out, data, len);
	}
	if (text != NULL && *text != '\0')
		buf_appendf(&c->out, "%s %s\n", status, text);
	else
		buf_appendf(&c->out, "%s\n", status);
	c->state = CONN_REPLYING;
	if (c->fd >= 0)
		conn_update_io(c);
}

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* Splits and percent-decodes the request line in place.  Returns the token
 * count, or -1 for a malformed line.  Decoded tokens may not contain NUL. */
static int split_tokens(char *line, char **tokens, int max)
{
	int n = 0;
	char *p = line;
	while (*p != '\0') {
		if (*p == ' ') {
			p++;
			continue;
		}
		if (n == max)
			return -1;
		char *start = p, *w = p;
		while (*p != '\0' && *p != ' ') {
			unsigned char ch = (unsigned char)*p;
			if (ch < 0x21 || ch > 0x7e)
				return -1;
			if (ch == '%') {
				int h = hexval(p[1]), l = h >= 0 ? hexval(p[2]) : -1;
				if (l < 0 || (h == 0 && l == 0))
					return -1;
				*w++ = (char)(h * 16 + l);
				p += 3;
			} else {
				*w++ = *p++;
			}
		}
		if (*p == ' ')
			p++;
		*w = '\0';
		tokens[n++] = start;
	}
	return n;
}

struct user_find {
	const char *user;
	bool found;
};

static void user_find_cb(void *ctx, const char *user)
{
	struct user_find *f = ctx;
	if (strcmp(f->user, user) == 0)
		f->found = true;
}

static void deliver_appended(void *ctx, const struct repl_result *res)
{
	struct admin_conn *c = ctx;
	c->state = CONN_REPLYING;
	if (c->dead) {
		conn_free(c);
		return;
	}
	if (res->error != REPL_OK) {
		log_warnx("admin: deliver to %s/%s failed: %s", c->user, c->mailbox, res->error_msg);
		if (res->error == REPL_ERR_UNAVAILABLE) {
			/* starling deliver maps it to a temporary failure. */
			char *text = xasprintf("[UNAVAILABLE] %s", res->error_msg);
			conn_reply(c, NULL, 0, "NO", text);
			free(text);
			return;
		}
		conn_reply(c, NULL, 0, "NO", res->error == REPL_ERR_TOOBIG ? "message too large" :
					     res->error_msg);
		return;
	}
	log_info("admin: delivered %llu bytes to %s/%s uid %u",
		 (unsigned long long)c->body.len, c->user, c->mailbox, res->uid);
	char text[32];
	snprintf(text, sizeof(text), "%u", res->uid);
	conn_reply(c, NULL, 0, "OK", text);
}

static void deliver_append(struct admin_conn *c)
{
	struct stor_db *db = repl_db(c->admin->repl);
	struct stor_mailbox mb;
	const char *err;
	int r = stor_mailbox_get(db, c->user, c->mailbox, &mb, &err);
	if (r <= 0) {
		conn_reply(c, NULL, 0, "NO", r < 0 ? err : "mailbox does not exist");
		return;
	}
	c->mailbox_guid = mb.guid;
	stor_mailbox_free(&mb);
	memset(&c->req, 0, sizeof(c->req));
	c->req.internaldate = clock_wall_s();
	c->req.text = c->body.data != NULL ? (const void *)c->body.data : "";
	c->req.text_len = c->body.len;
	c->state = CONN_WAITING;
	repl_append(c->admin->repl, c->user, &c->mailbox_guid, &c->req, deliver_appended, c);
}

static void deliver_defaults_done(void *ctx, const struct repl_result *res)
{
	struct admin_conn *c = ctx;
	c->state = CONN_REPLYING;
	if (c->dead) {
		conn_free(c);
		return;
	}
	if (res->error != REPL_OK) {
		conn_reply(c, NULL, 0, "NO", res->error_msg);
		return;
	}
	deliver_append(c);
}

static void bundle_export_run(struct admin_conn *c);
static void bundle_import_run(struct admin_conn *c);

static void deliver_body_complete(struct admin_conn *c)
{
	ev_timer_stop(c->admin->loop, &c->timer);
	if (c->body_kind == BODY_BUNDLE_EXPORT) {
		bundle_export_run(c);
		return;
	}
	if (c->body_kind == BODY_BUNDLE_IMPORT) {
		bundle_import_run(c);
		return;
	}
	c->state = CONN_WAITING;
	conn_update_io(c);
	repl_user_ensure_defaults(c->admin->repl, c->user, deliver_defaults_done, c);
}

static void master_answered(void *ctx, const struct repl_mm_answer *ans)
{
	struct admin_conn *c = ctx;
	c->state = CONN_REPLYING;
	if (c->dead) {
		conn_free(c);
		return;
	}
	if (!ans->ok) {
		conn_reply(c, NULL, 0, "NO", ans->error);
		return;
	}
	char epoch[32];
	repl_mm_epoch_str(ans->epoch, epoch, sizeof(epoch));
	struct buf out = BUF_INIT;
	buf_appendf(&out, "master: %u\nepoch: %s\nroot: %u\ngranule: %s\nis_master: %s\n",
		    ans->master, epoch, ans->root, ans->gkey, ans->am_master ? "yes" : "no");
	conn_reply(c, out.data, out.len, "OK", "");
	buf_free(&out);
}

static void master_request(struct admin_conn *c, const char *user, const char *mbname)
{
	struct repl_admin *a = c->admin;
	if (a->master_ops == NULL) {
		conn_reply(c, NULL, 0, "NO", "mailbox masters are not running");
		return;
	}
	if (!passwd_user_name_valid(user)) {
		conn_reply(c, NULL, 0, "NO", "bad request: user name");
		return;
	}
	if (strcasecmp(mbname, "INBOX") == 0)
		mbname = "INBOX";
	struct stor_mailbox mb;
	const char *err;
	int r = stor_mailbox_get(repl_db(a->repl), user, mbname, &mb, &err);
	if (r <= 0) {
		conn_reply(c, NULL, 0, "NO", r < 0 ? err : "mailbox does not exist");
		return;
	}
	char gkey[MM_GKEY_MAX + 1];
	r = a->master_ops->granule_key(a->master_ctx, user, &mb.guid, gkey, sizeof(gkey));
	stor_mailbox_free(&mb);
	if (r < 0) {
		conn_reply(c, NULL, 0, "NO", "bad request: no granule key for this user");
		return;
	}
	c->state = CONN_WAITING;
	conn_update_io(c);
	if (a->master_ops->request(a->master_ctx, gkey, MASTER_TIMEOUT_MS, master_answered, c) < 0) {
		c->state = CONN_REQUEST;
		conn_reply(c, NULL, 0, "NO", "bad request: invalid granule key");
	}
}

/* ---- ACLs ---- */

static void acl_done(void *ctx, const struct repl_result *res)
{
	struct admin_conn *c = ctx;
	c->state = CONN_REPLYING;
	if (c->dead) {
		conn_free(c);
		return;
	}
	if (res->error != REPL_OK)
		conn_reply(c, NULL, 0, "NO", res->error_msg != NULL ? res->error_msg : "failed");
	else
		conn_reply(c, NULL, 0, "OK", c->mailbox);
}

/* The records of a mailbox as acl_evaluate() takes them (tombstones left
 * out); entries point into list. */
static struct acl_entry *acl_entries(const stor_acl_list *list, size_t *n_r)
{
	struct acl_entry *e = xcalloc(list->count + 1, sizeof(*e));
	size_t n = 0;
	for (size_t i = 0; i < list->count; i++) {
		uint32_t bits;
		const char *why;
		if (list->items[i].rights[0] == '\0' ||
		    acl_rights_parse(list->items[i].rights, strlen(list->items[i].rights), &bits,
				     &why) < 0)
			continue;
		e[n].identifier = list->items[i].identifier;
		e[n].rights = bits;
		n++;
	}
	*n_r = n;
	return e;
}

static void acl_debug(struct admin_conn *c, const char *user, const char *name)
{
	static const char shared[] = "shared/", public[] = "Public/";
	struct stor_db *db = repl_db(c->admin->repl);
	char *owner = xstrdup(user);
	const char *inner = name, *err;
	if (strncmp(name, public, sizeof(public) - 1) == 0 && name[sizeof(public) - 1] != '\0') {
		free(owner);
		owner = xstrdup(ACL_PUBLIC_OWNER);
		inner = name + sizeof(public) - 1;
	} else if (strncmp(name, shared, sizeof(shared) - 1) == 0) {
		const char *o = name + sizeof(shared) - 1, *slash = strchr(o, '/');
		if (slash == NULL || slash == o || slash[1] == '\0') {
			free(owner);
			conn_reply(c, NULL, 0, "NO", "shared/OWNER/NAME names no mailbox here");
			return;
		}
		free(owner);
		owner = xstrndup(o, (size_t)(slash - o));
		inner = slash + 1;
	}
	struct stor_mailbox mb;
	int r = stor_mailbox_get(db, owner, inner, &mb, &err);
	if (r <= 0) {
		free(owner);
		conn_reply(c, NULL, 0, "NO", r < 0 ? err : "mailbox does not exist");
		return;
	}
	stor_acl_list list;
	if (stor_acl_get(db, &mb.guid, &list, &err) < 0) {
		stor_mailbox_free(&mb);
		free(owner);
		conn_reply(c, NULL, 0, "NO", err);
		return;
	}
	size_t n;
	struct acl_entry *e = acl_entries(&list, &n);
	struct buf out = BUF_INIT;
	buf_appendf(&out, "mailbox: %s\nowner: %s\nuser: %s\n", inner, owner, user);
	if (n == 0)
		buf_append_str(&out, "records: none\n");
	uint32_t rights = acl_evaluate(owner, user, e, n, &out);
	static const struct {
		const char *what;
		uint32_t need;
	} ops[] = {
		{ "see it (LIST, LSUB)", ACL_LOOKUP },
		{ "SELECT, EXAMINE, STATUS, FETCH, SEARCH, COPY out of it", ACL_READ },
		{ "set or clear \\Seen", ACL_SEEN },
		{ "set or clear other flags and keywords", ACL_WRITE },
		{ "APPEND, COPY and MOVE into it", ACL_INSERT },
		{ "set or clear \\Deleted", ACL_DELETE_MSG },
		{ "EXPUNGE (and MOVE out of it, with t)", ACL_EXPUNGE },
		{ "GETACL, SETACL, DELETEACL, LISTRIGHTS", ACL_ADMIN },
	};
	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
		char letter[sizeof(ACL_LETTERS)];
		acl_rights_format(ops[i].need, letter);
		buf_appendf(&out, "may %s (%s): %s\n", ops[i].what, letter,
			    (rights & ops[i].need) ? "yes" : "no");
	}
	if ((rights & ACL_LOOKUP) == 0)
		buf_append_str(&out, "without l every command answers as for a missing mailbox\n");
	free(e);
	stor_acl_list_free(&list);
	stor_mailbox_free(&mb);
	free(owner);
	conn_reply(c, out.data, out.len, "OK", "");
	buf_free(&out);
}

static void acl_request(struct admin_conn *c, char **tok, int n)
{
	struct stor_db *db = repl_db(c->admin->repl);
	const char *err;
	bool get = strcmp(tok[0], "ACL-GET") == 0 && n == 3;
	bool set = strcmp(tok[0], "ACL-SET") == 0 && n == 5;
	bool del = strcmp(tok[0], "ACL-DELETE") == 0 && n == 4;
	bool debug = strcmp(tok[0], "ACL-DEBUG") == 0 && n == 3;
	if (!get && !set && !del && !debug) {
		conn_reply(c, NULL, 0, "NO", "bad request: unknown command or wrong argument count");
		return;
	}
	if (!passwd_user_name_valid(tok[1]) &&
	    (debug || strcmp(tok[1], ACL_PUBLIC_OWNER) != 0)) {
		conn_reply(c, NULL, 0, "NO", "bad request: user name");
		return;
	}
	const char *mbname = strcasecmp(tok[2], "INBOX") == 0 ? "INBOX" : tok[2];
	if (debug) {
		acl_debug(c, tok[1], mbname);
		return;
	}
	enum acl_mod mod = ACL_MOD_REPLACE;
	uint32_t bits = 0;
	if ((set || del) && !acl_identifier_valid(tok[3], strlen(tok[3]), &err)) {
		char *m = xasprintf("bad request: %s", err);
		conn_reply(c, NULL, 0, "NO", m);
		free(m);
		return;
	}
	if (set && acl_mod_rights_parse(tok[4], strlen(tok[4]), &mod, &bits, &err) < 0) {
		char *m = xasprintf("bad request: %s", err);
		conn_reply(c, NULL, 0, "NO", m);
		free(m);
		return;
	}
	struct stor_mailbox mb;
	int r = stor_mailbox_get(db, tok[1], mbname, &mb, &err);
	if (r <= 0) {
		conn_reply(c, NULL, 0, "NO", r < 0 ? err : "mailbox does not exist");
		return;
	}
	stor_acl_list list;
	if (stor_acl_get(db, &mb.guid, &list, &err) < 0) {
		stor_mailbox_free(&mb);
		conn_reply(c, NULL, 0, "NO", err);
		return;
	}
	if (get) {
		struct buf out = BUF_INIT;
		bool owner_named = false;
		for (size_t i = 0; i < list.count; i++) {
			const char *id = list.items[i].identifier;
			if (list.items[i].rights[0] == '\0')
				continue;
			owner_named |= strcmp(id[0] == '-' ? id + 1 : id, tok[1]) == 0;
			buf_appendf(&out, "%s %s\n", id, list.items[i].rights);
		}
		if (!owner_named && strcmp(tok[1], ACL_PUBLIC_OWNER) != 0)
			buf_appendf(&out, "%s %s\n", tok[1], ACL_LETTERS);
		conn_reply(c, out.data, out.len, "OK", "");
		buf_free(&out);
		stor_acl_list_free(&list);
		stor_mailbox_free(&mb);
		return;
	}
	uint32_t old = 0;
	size_t live = 0;
	bool held = false;
	for (size_t i = 0; i < list.count; i++) {
		if (list.items[i].rights[0] == '\0')
			continue;
		live++;
		if (strcmp(list.items[i].identifier, tok[3]) == 0) {
			held = true;
			(void)acl_rights_parse(list.items[i].rights, strlen(list.items[i].rights), &old,
					       &err);
		}
	}
	stor_acl_list_free(&list);
	uint32_t now = set ? acl_mod_apply(mod, old, bits) : 0;
	char letters[sizeof(ACL_LETTERS)];
	acl_rights_format(now, letters);
	int64_t t;
	if (!held && now != 0 && live >= ACL_MAX_ENTRIES) {
		stor_mailbox_free(&mb);
		conn_reply(c, NULL, 0, "NO", "too many identifiers in this ACL");
		return;
	}
	if (stor_acl_next_time(db, &mb.guid, tok[3], &t, &err) < 0) {
		stor_mailbox_free(&mb);
		conn_reply(c, NULL, 0, "NO", err);
		return;
	}
	free(c->mailbox);
	c->mailbox = xasprintf("%s %s", tok[3], letters[0] != '\0' ? letters : "(none)");
	c->mailbox_guid = mb.guid;
	c->state = CONN_WAITING;
	conn_update_io(c);
	repl_acl_put(c->admin->repl, tok[1], &c->mailbox_guid, tok[3], letters, t, acl_done, c);
	stor_mailbox_free(&mb);
}

static void public_created(void *ctx, const struct repl_result *res)
{
	struct admin_conn *c = ctx;
	c->state = CONN_REPLYING;
	if (c->dead) {
		conn_free(c);
		return;
	}
	if (res->error == REPL_ERR_EXISTS)
		conn_reply(c, NULL, 0, "NO", "mailbox exists");
	else if (res->error != REPL_OK)
		conn_reply(c, NULL, 0, "NO", res->error_msg != NULL ? res->error_msg : "failed");
	else
		conn_reply(c, NULL, 0, "OK", "created");
}

static void public_create(struct admin_conn *c, const char *name)
{
	size_t n = strlen(name);
	if (n == 0 || name[0] == '/' || name[n - 1] == '/' || strstr(name, "//") != NULL ||
	    strcasecmp(name, "INBOX") == 0) {
		conn_reply(c, NULL, 0, "NO", "bad request: mailbox name");
		return;
	}
	struct stor_mailbox mb;
	const char *err;
	int r = stor_mailbox_get(repl_db(c->admin->repl), ACL_PUBLIC_OWNER, name, &mb, &err);
	if (r != 0) {
		if (r > 0)
			stor_mailbox_free(&mb);
		conn_reply(c, NULL, 0, "NO", r < 0 ? err : "mailbox exists");
		return;
	}
	c->state = CONN_WAITING;
	conn_update_io(c);
	repl_mailbox_create(c->admin->repl, ACL_PUBLIC_OWNER, name, NULL, public_created, c);
}

static void users_done(void *ctx, bool ok, const void *data, size_t len, const char *text)
{
	struct admin_conn *c = ctx;
	c->state = CONN_REPLYING;
	if (c->dead) {
		conn_free(c);
		return;
	}
	conn_reply(c, data, len, ok ? "OK" : "NO", text);
}

static void users_request(struct admin_conn *c, char **tok, int n)
{
	struct repl_admin *a = c->admin;
	if (a->users == NULL) {
		conn_reply(c, NULL, 0, "NO", "the user table is not available");
		return;
	}
	c->state = CONN_WAITING;
	conn_update_io(c);
	repl_users_admin(a->users, tok, n, users_done, c);
}

void repl_admin_set_users(struct repl_admin *admin, struct repl_users *users)
{
	admin->users = users;
}

static void resync_done(void *ctx, bool converged, const char *report, size_t report_len,
			const char *text)
{
	struct admin_conn *c = ctx;
	c->state = CONN_REPLYING;
	if (c->dead) {
		conn_free(c);
		return;
	}
	conn_reply(c, report, report_len, converged ? "OK" : "NO", text);
}

static void resync_request(struct admin_conn *c, char **tok, int n)
{
	struct repl_admin *a = c->admin;
	uint32_t peer = 0;
	bool full = false;
	int i = 2;
	if (a->resync_ops == NULL) {
		conn_reply(c, NULL, 0, "NO", "resync is not available");
		return;
	}
	if (!passwd_user_name_valid(tok[1])) {
		conn_reply(c, NULL, 0, "NO", "bad request: user name");
		return;
	}
	if (i < n && strcmp(tok[i], "FULL") != 0) {
		uint64_t v;
		if (str_to_u64(tok[i], UINT32_MAX, &v) < 0) {
			conn_reply(c, NULL, 0, "NO", "bad request: peer");
			return;
		}
		peer = (uint32_t)v;
		i++;
	}
	if (i < n && strcmp(tok[i], "FULL") == 0) {
		full = true;
		i++;
	}
	if (i != n) {
		conn_reply(c, NULL, 0, "NO", "bad request: RESYNC user [peer] [FULL]");
		return;
	}
	const char *err;
	c->state = CONN_WAITING;
	conn_update_io(c);
	if (a->resync_ops->start(a->resync_ctx, tok[1], peer, full, resync_done, c, &err) < 0) {
		c->state = CONN_REQUEST;
		conn_reply(c, NULL, 0, "NO", err);
		return;
	}
	progress_start(c);
}

void repl_admin_set_resync(struct repl_admin *admin, const struct repl_admin_resync_ops *ops,
			   void *ctx)
{
	admin->resync_ops = ops;
	admin->resync_ctx = ctx;
}

/* ---- Change bundles (SPEC.md 11) ---- */

static int bundle_secret(struct admin_conn *c, unsigned char **secret_r, size_t *len_r)
{
	const struct config *cfg = c->admin->cfg;
	char *err = NULL;
	if (cfg->cluster_secret_file == NULL) {
		conn_reply(c, NULL, 0, "NO", "bundles are signed with the cluster secret: "
					     "cluster_secret_file is not configured");
		return -1;
	}
	if (file_read_secret("cluster_secret_file", cfg->cluster_secret_file, CONFIG_SECRET_MIN,
			     CONFIG_SECRET_MAX, secret_r, len_r, &err) < 0) {
		conn_reply(c, NULL, 0, "NO", err);
		free(err);
		return -1;
	}
	return 0;
}

static void bundle_export_run(struct admin_conn *c)
{
	const struct config *cfg = c->admin->cfg;
	unsigned char *secret;
	size_t secret_len;
	if (bundle_secret(c, &secret, &secret_len) < 0)
		return;
	struct sync_bundle_export_settings set = {
		.user = c->user,
		.source_sid = cfg->node_id,
		.key = { secret, secret_len, false },
		.state = c->body_size > 0 ? (const void *)c->body.data : NULL,
		.state_len = c->body.len,
	};
	struct sync_bundle_export_report rep;
	struct buf out = BUF_INIT;
	char *err = NULL;
	if (sync_bundle_export(repl_db(c->admin->repl), &set, &out, &rep, &err) < 0) {
		conn_reply(c, NULL, 0, "NO", err);
	} else {
		char text[160];
		snprintf(text, sizeof(text), "mailboxes %u messages %u tombstones %u texts %u "
			 "left_out %u", rep.mailboxes, rep.messages, rep.tombstones, rep.texts,
			 rep.texts_left_out);
		log_info("admin: bundle of %s exported (%zu bytes, %s)", c->user, out.len, text);
		conn_reply(c, out.data, out.len, "OK", text);
	}
	free(err);
	buf_free(&out);
	free(secret);
}

/* Ends the import of c (done or failed) and answers, unless c is dead. */
static void bundle_import_end(struct admin_conn *c, int r, char *err)
{
	struct repl_admin *a = c->admin;
	ev_idle_stop(a->loop, &c->idle);
	a->importing = false;
	struct sync_bundle_import_result res;
	memset(&res, 0, sizeof(res));
	if (r == 0)
		sync_bundle_import_take_result(c->imp, &res);
	sync_bundle_import_destroy(&c->imp);
	if (c->dead) {
		sync_bundle_import_result_free(&res);
		free(err);
		conn_free(c);
		return;
	}
	c->state = CONN_REPLYING;
	if (r < 0) {
		log_warnx("admin: bundle import: %s", err);
		conn_reply(c, NULL, 0, "NO", err);
	} else {
		/* The merge does not say which mailboxes it changed: tell the
		 * watchers of every mailbox of the user. */
		struct stor_db *db = repl_db(a->repl);
		stor_mailbox_array list = ARRAY_INIT;
		const char *serr;
		if (stor_mailbox_list(db, res.user, &list, &serr) == 0) {
			for (size_t i = 0; i < list.count; i++)
				repl_notify(a->repl, res.user, &list.items[i].guid);
			stor_mailbox_list_free(&list);
		}
		const struct sync_report *rp = &res.report;
		char text[256];
		snprintf(text, sizeof(text), "user %s source %u base %s created %u received %u "
			 "renumbered %u expunged %u flags %u", res.user, res.source,
			 res.base_known ? "known" : "unknown", rp->mailboxes_created,
			 rp->messages_received, rp->messages_renumbered, rp->messages_expunged,
			 rp->flags_changed);
		log_info("admin: bundle imported: %s", text);
		conn_reply(c, res.state.data, res.state.len, "OK", text);
	}
	sync_bundle_import_result_free(&res);
	free(err);
}

/* Steps the import for at most about 10 ms per loop iteration. */
static void bundle_idle_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
	struct admin_conn *c = (struct admin_conn *)((char *)w - offsetof(struct admin_conn, idle));
	(void)loop;
	(void)revents;
	if (c->dead) {
		bundle_import_end(c, -1, NULL);
		return;
	}
	uint64_t start = clock_mono_ms();
	char *err = NULL;
	int r;
	do {
		r = sync_bundle_import_step(c->imp, &err);
	} while (r == 1 && clock_mono_ms() - start < 10);
	if (r == SYNC_BUNDLE_IMPORT_WAIT) {
		/* The merge waits for the group commit: bundle_durable() */
		ev_idle_stop(c->admin->loop, &c->idle);
		return;
	}
	if (r > 0)
		return;
	bundle_import_end(c, r, err);
}

static void bundle_durable(void *ctx)
{
	struct admin_conn *c = ctx;
	if (c->admin != NULL)
		ev_idle_start(c->admin->loop, &c->idle);
}

static void bundle_import_run(struct admin_conn *c)
{
	struct repl_admin *a = c->admin;
	const struct config *cfg = a->cfg;
	unsigned char *secret;
	size_t secret_len;
	if (a->importing) {
		conn_reply(c, NULL, 0, "NO", "another bundle import is running");
		return;
	}
	if (bundle_secret(c, &secret, &secret_len) < 0)
		return;
	struct sync_bundle_import_settings set = {
		.own_sid = cfg->node_id,
		.key = { secret, secret_len, false },
		.scratch_parent = cfg->data_dir,
		.max_message_size = cfg->max_message_size,
	};
	char *err = NULL;
	c->imp = sync_bundle_import_begin(repl_db(a->repl), &set,
					  c->body.data != NULL ? (const void *)c->body.data : "",
					  c->body.len, &err);
	free(secret);
	if (c->imp == NULL) {
		log_warnx("admin: bundle import: %s", err);
		conn_reply(c, NULL, 0, "NO", err);
		free(err);
		return;
	}
	a->importing = true;
	c->state = CONN_WAITING;
	conn_update_io(c);
	sync_bundle_import_set_wake(c->imp, bundle_durable, c);
	ev_idle_init(&c->idle, bundle_idle_cb);
	ev_idle_start(a->loop, &c->idle);
	progress_start(c);
}

/* Starts reading the body of a BUNDLE-* request (size checked by the
 * caller). */
static void bundle_body_begin(struct admin_conn *c, int kind, uint64_t size)
{
	c->body_kind = kind;
	c->body_size = size;
	c->state = CONN_BODY;
	size_t take = buf_avail(&c->in) < size ? buf_avail(&c->in) : (size_t)size;
	buf_append(&c->body, buf_rptr(&c->in), take);
	buf_consume(&c->in, take);
	if (c->body.len == c->body_size)
		deliver_body_complete(c);
}

static void handle_request(struct admin_conn *c, char *line)
{
	struct repl_admin *a = c->admin;
	struct stor_db *db = repl_db(a->repl);
	char *tok[ADMIN_MAX_TOKENS];
	int n = split_tokens(line, tok, ADMIN_MAX_TOKENS);
	const char *err;
	if (n <= 0) {
		conn_reply(c, NULL, 0, "NO", "bad request: malformed line");
		return;
	}
	if (strcmp(tok[0], "DELIVER") == 0 && n == 4) {
		uint64_t size;
		if (str_to_u64(tok[3], UINT64_MAX, &size) < 0) {
			conn_reply(c, NULL, 0, "NO", "bad request: size");
			return;
		}
		if (size > a->cfg->max_message_size) {
			conn_reply(c, NULL, 0, "NO", "message too large");
			return;
		}
		if (!passwd_user_name_valid(tok[1])) {
			conn_reply(c, NULL, 0, "NO", "unknown user");
			return;
		}
		struct user_find f = { tok[1], false };
		char *perr = NULL;
		if (passwd_list(a->cfg->users_file, user_find_cb, &f, &perr) < 0) {
			conn_reply(c, NULL, 0, "NO", perr);
			free(perr);
			return;
		}
		struct stor_cuser cu;
		int cr = f.found ? 0 : stor_cuser_get(db, tok[1], &cu, &err);
		if (cr < 0) {
			conn_reply(c, NULL, 0, "NO", err);
			return;
		}
		if (cr > 0) {
			f.found = cu.hash != NULL;
			stor_cuser_free(&cu);
		}
		if (!f.found) {
			conn_reply(c, NULL, 0, "NO", "unknown user");
			return;
		}
		const char *mbname = tok[2];
		if (strcasecmp(mbname, "INBOX") == 0)
			mbname = "INBOX";
		c->user = xstrdup(tok[1]);
		c->mailbox = xstrdup(mbname);
		c->body_size = size;
		c->state = CONN_BODY;
		/* Whatever followed the line is the start of the body. */
		size_t take = buf_avail(&c->in) < size ? buf_avail(&c->in) : (size_t)size;
		buf_append(&c->body, buf_rptr(&c->in), take);
		buf_consume(&c->in, take);
		if (c->body.len == c->body_size)
			deliver_body_complete(c);
		return;
	}
	if (strcmp(tok[0], "DUMP") == 0 && n == 2) {
		struct buf out = BUF_INIT;
		if (stor_dump_user(db, tok[1], &out, &err) < 0)
			conn_reply(c, NULL, 0, "NO", err);
		else
			conn_reply(c, out.data, out.len, "OK", "");
		buf_free(&out);
		return;
	}
	if (strcmp(tok[0], "STATUS") == 0 && n == 1) {
		struct buf out = BUF_INIT;
		a->status_cb(a->status_ctx, &out);
		conn_reply(c, out.data, out.len, "OK", "");
		buf_free(&out);
		return;
	}
	if (strcmp(tok[0], "MASTER") == 0 && (n == 2 || n == 3)) {
		master_request(c, tok[1], n == 3 ? tok[2] : "INBOX");
		return;
	}
	if (strcmp(tok[0], "RESYNC") == 0 && n >= 2 && n <= 4) {
		resync_request(c, tok, n);
		return;
	}
	if (strcmp(tok[0], "BUNDLE-EXPORT") == 0 && n == 3) {
		uint64_t size;
		if (!passwd_user_name_valid(tok[1])) {
			conn_reply(c, NULL, 0, "NO", "bad request: user name");
			return;
		}
		if (str_to_u64(tok[2], SYNC_BUNDLE_MAX_STATE_SIZE, &size) < 0) {
			conn_reply(c, NULL, 0, "NO", "bad request: state size (at most 64 MiB)");
			return;
		}
		c->user = xstrdup(tok[1]);
		bundle_body_begin(c, BODY_BUNDLE_EXPORT, size);
		return;
	}
	if (strcmp(tok[0], "BUNDLE-IMPORT") == 0 && n == 2) {
		uint64_t size;
		if (str_to_u64(tok[1], SYNC_BUNDLE_MAX_SIZE, &size) < 0) {
			conn_reply(c, NULL, 0, "NO", "bundle refused: larger than 1 GiB");
			return;
		}
		bundle_body_begin(c, BODY_BUNDLE_IMPORT, size);
		return;
	}
	if (strcmp(tok[0], "PUBLIC-CREATE") == 0 && n == 2) {
		public_create(c, tok[1]);
		return;
	}
	if (strncmp(tok[0], "ACL-", 4) == 0) {
		acl_request(c, tok, n);
		return;
	}
	if (strncmp(tok[0], "USER-", 5) == 0) {
		users_request(c, tok, n);
		return;
	}
	if (strcmp(tok[0], "USERS") == 0 && n == 1) {
		stor_string_list users = ARRAY_INIT;
		if (stor_user_list(db, &users, &err) < 0) {
			conn_reply(c, NULL, 0, "NO", err);
			return;
		}
		struct buf out = BUF_INIT;
		for (size_t i = 0; i < users.count; i++)
			buf_appendf(&out, "%s\n", users.items[i]);
		stor_string_list_free(&users);
		conn_reply(c, out.data, out.len, "OK", "");
		buf_free(&out);
		return;
	}
	conn_reply(c, NULL, 0, "NO", "bad request: unknown command or wrong argument count");
}

static int conn_read(struct admin_conn *c)
{
	for (int rounds = 0; rounds < 16; rounds++) {
		size_t want = 65536;
		if (c->state == CONN_BODY) {
			uint64_t left = c->body_size - c->body.len;
			if (left == 0)
				return 0;
			if (left < want)
				want = (size_t)left;
			unsigned char *dst = buf_reserve(&c->body, want);
			ssize_t n = read(c->fd, dst, want);
			if (n < 0)
				return errno == EAGAIN || errno == EINTR ? 0 : -1;
			if (n == 0)
				return -1;
			buf_commit(&c->body, (size_t)n);
			if (c->body.len == c->body_size) {
				deliver_body_complete(c);
				return 0;
			}
			continue;
		}
		if (c->state != CONN_REQUEST)
			return 0;
		unsigned char *dst = buf_reserve(&c->in, 4096);
		ssize_t n = read(c->fd, dst, 4096);
		if (n < 0)
			return errno == EAGAIN || errno == EINTR ? 0 : -1;
		if (n == 0)
			return -1;
		buf_commit(&c->in, (size_t)n);
		size_t len;
		char *line = buf_getline(&c->in, &len);
		if (line == NULL) {
			if (buf_avail(&c->in) > ADMIN_MAX_LINE) {
				conn_reply(c, NULL, 0, "NO", "bad request: line too long");
				return 0;
			}
			continue;
		}
		if (len > ADMIN_MAX_LINE || strlen(line) != len) {
			conn_reply(c, NULL, 0, "NO", "bad request: malformed line");
			return 0;
		}
		handle_request(c, line);
	}
	return 0;
}

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct admin_conn *c = (struct admin_conn *)((char *)w - offsetof(struct admin_conn, io));
	if (revents & EV_READ) {
		if (conn_read(c) < 0) {
			conn_close(c);
			return;
		}
		if (c->state == CONN_REQUEST || c->state == CONN_BODY)
			ev_timer_again(loop, &c->timer);
	}
	if (buf_avail(&c->out) > 0) {
		ssize_t n = send(c->fd, buf_rptr(&c->out), buf_avail(&c->out), MSG_NOSIGNAL);
		if (n < 0 && errno != EAGAIN && errno != EINTR) {
			conn_close(c);
			return;
		}
		if (n > 0)
			buf_consume(&c->out, (size_t)n);
	}
	if (c->state == CONN_REPLYING && buf_avail(&c->out) == 0) {
		conn_close(c);
		return;
	}
	conn_update_io(c);
}

static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct admin_conn *c = (struct admin_conn *)((char *)w - offsetof(struct admin_conn, timer));
	if (c->state == CONN_WAITING)
		return;
	conn_close(c);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct repl_admin *a = w->data;
	for (int i = 0; i < 16; i++) {
		int fd = accept4(a->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
				log_warn("admin: accept");
			return;
		}
		struct admin_conn *c = xcalloc(1, sizeof(*c));
		c->admin = a;
		c->fd = fd;
		buf_init(&c->in);
		buf_init(&c->out);
		buf_init(&c->body);
		ev_io_init(&c->io, conn_io_cb, fd, EV_READ);
		ev_init(&c->timer, conn_timer_cb);
		c->timer.repeat = ADMIN_TIMEOUT;
		ev_timer_again(loop, &c->timer);
		c->next = a->conns;
		if (a->conns != NULL)
			a->conns->prev = c;
		a->conns = c;
		ev_io_start(loop, &c->io);
	}
}

int repl_admin_create(struct ev_loop *loop, const struct config *cfg, struct repl *repl,
		      repl_admin_status_cb *status_cb, void *status_ctx,
		      struct repl_admin **admin_r, char **error_r)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	char *path = xasprintf("%s/admin.sock", cfg->data_dir);
	if (strlen(path) >= sizeof(sun.sun_path)) {
		*error_r = xasprintf("%s: path too long for a UNIX socket", path);
		free(path);
		return -1;
	}
	strcpy(sun.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		*error_r = xasprintf("socket: %s", strerror(errno));
		free(path);
		return -1;
	}
	/* The store's lock already guarantees we are the only node on this
	 * data_dir, so a socket file left here is stale. */
	unlink(path);
	mode_t old = umask(077);
	int r = bind(fd, (struct sockaddr *)&sun, sizeof(sun));
	umask(old);
	if (r < 0 || chmod(path, 0600) < 0 || listen(fd, 16) < 0) {
		*error_r = xasprintf("%s: %s", path, strerror(errno));
		close(fd);
		free(path);
		return -1;
	}
	struct repl_admin *a = xcalloc(1, sizeof(*a));
	a->loop = loop;
	a->cfg = cfg;
	a->repl = repl;
	a->status_cb = status_cb;
	a->status_ctx = status_ctx;
	a->path = path;
	a->fd = fd;
	a->progress_interval = PROGRESS_INTERVAL;
	const char *env = getenv("STARLING_PROGRESS_INTERVAL");
	if (env != NULL) {
		char *end;
		double v = strtod(env, &end);
		if (end != env && *end == '\0' && v >= 0.05 && v <= 3600)
			a->progress_interval = v;
	}
	ev_io_init(&a->io, accept_cb, fd, EV_READ);
	a->io.data = a;
	ev_io_start(loop, &a->io);
	*admin_r = a;
	return 0;
}

void repl_admin_set_master(struct repl_admin *a, const struct repl_admin_master_ops *ops,
			   void *ctx)
{
	a->master_ops = ops;
	a->master_ctx = ctx;
}

void repl_admin_destroy(struct repl_admin **ap)
{
	struct repl_admin *a = *ap;
	if (a == NULL)
		return;
	*ap = NULL;
	ev_io_stop(a->loop, &a->io);
	close(a->fd);
	unlink(a->path);
	while (a->conns != NULL) {
		struct admin_conn *c = a->conns;
		a->conns = c->next;
		if (a->conns != NULL)
			a->conns->prev = NULL;
		c->prev = c->next = NULL;
		progress_stop(c);
		if (c->fd >= 0) {
			ev_io_stop(a->loop, &c->io);
			ev_timer_stop(a->loop, &c->timer);
			close(c->fd);
			c->fd = -1;
		}
		if (c->imp != NULL) {
			/* A bundle import stops here (what it merged stays). */
			ev_idle_stop(a->loop, &c->idle);
			sync_bundle_import_destroy(&c->imp);
			a->importing = false;
			c->admin = NULL;
			conn_free(c);
			continue;
		}
		if (c->state == CONN_WAITING) {
			/* The seam was flushed before us; a late completion would
			 * find freed memory, so detach it fully. */
			c->admin = NULL;
			c->dead = true;
			continue;
		}
		c->admin = NULL;
		conn_free(c);
	}
	free(a->path);
	free(a);
}

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
 * them.
 *
 * This file is the socket and its protocol; the commands are in
 * repl-admin-deliver.c, repl-admin-bundle.c, repl-admin-acl.c and
 * repl-admin-backends.c (repl-admin-private.h is what they share). */
#include "replicator/repl-admin-private.h"

#include <errno.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "lib/str.h"
#include "lib/xalloc.h"
#include "storage/acl-rights.h"

#define ADMIN_MAX_LINE 8192
#define ADMIN_MAX_TOKENS 8
#define ADMIN_TIMEOUT 120.0
#define PROGRESS_INTERVAL 5.0
#define PROGRESS_BACKLOG_MAX 4096

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);

void admin_conn_free(struct admin_conn *c)
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
	admin_conn_update_io(c);
}

void admin_progress_start(struct admin_conn *c)
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
	admin_conn_free(c);
}

void admin_conn_update_io(struct admin_conn *c)
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
void admin_conn_reply(struct admin_conn *c, const void *data, size_t len, const char *status,
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
		admin_conn_update_io(c);
}

bool admin_conn_waited(struct admin_conn *c)
{
	c->state = CONN_REPLYING;
	if (c->dead) {
		admin_conn_free(c);
		return false;
	}
	return true;
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

static void body_complete(struct admin_conn *c)
{
	ev_timer_stop(c->admin->loop, &c->timer);
	if (c->body_kind == BODY_BUNDLE_EXPORT) {
		admin_bundle_export_run(c);
		return;
	}
	if (c->body_kind == BODY_BUNDLE_IMPORT) {
		admin_bundle_import_run(c);
		return;
	}
	admin_deliver_run(c);
}

/* Starts reading the body of a request (size checked by the caller). */
void admin_body_begin(struct admin_conn *c, int kind, uint64_t size)
{
	c->body_kind = kind;
	c->body_size = size;
	c->state = CONN_BODY;
	/* Whatever followed the line is the start of the body. */
	size_t take = buf_avail(&c->in) < size ? buf_avail(&c->in) : (size_t)size;
	buf_append(&c->body, buf_rptr(&c->in), take);
	buf_consume(&c->in, take);
	if (c->body.len == c->body_size)
		body_complete(c);
}

static void handle_request(struct admin_conn *c, char *line)
{
	struct repl_admin *a = c->admin;
	struct stor_db *db = repl_db(a->repl);
	char *tok[ADMIN_MAX_TOKENS];
	int n = split_tokens(line, tok, ADMIN_MAX_TOKENS);
	const char *err;
	if (n <= 0) {
		admin_conn_reply(c, NULL, 0, "NO", "bad request: malformed line");
		return;
	}
	if (strcmp(tok[0], "DELIVER") == 0 && n == 4) {
		admin_deliver_request(c, tok);
		return;
	}
	if (strcmp(tok[0], "DUMP") == 0 && n == 2) {
		struct buf out = BUF_INIT;
		if (stor_dump_user(db, tok[1], &out, &err) < 0)
			admin_conn_reply(c, NULL, 0, "NO", err);
		else
			admin_conn_reply(c, out.data, out.len, "OK", "");
		buf_free(&out);
		return;
	}
	if (strcmp(tok[0], "STATUS") == 0 && n == 1) {
		struct buf out = BUF_INIT;
		a->status_cb(a->status_ctx, &out);
		admin_conn_reply(c, out.data, out.len, "OK", "");
		buf_free(&out);
		return;
	}
	if (strcmp(tok[0], "MASTER") == 0 && (n == 2 || n == 3)) {
		admin_master_request(c, tok[1], n == 3 ? tok[2] : "INBOX");
		return;
	}
	if (strcmp(tok[0], "RESYNC") == 0 && n >= 2 && n <= 4) {
		admin_resync_request(c, tok, n);
		return;
	}
	if (strcmp(tok[0], "BUNDLE-EXPORT") == 0 && n == 3) {
		admin_bundle_export_request(c, tok);
		return;
	}
	if (strcmp(tok[0], "BUNDLE-IMPORT") == 0 && n == 2) {
		admin_bundle_import_request(c, tok);
		return;
	}
	if (strcmp(tok[0], "PUBLIC-CREATE") == 0 && n == 2) {
		admin_public_create(c, tok[1]);
		return;
	}
	if (strncmp(tok[0], "ACL-", 4) == 0) {
		admin_acl_request(c, tok, n);
		return;
	}
	if (strncmp(tok[0], "USER-", 5) == 0) {
		admin_users_request(c, tok, n);
		return;
	}
	if (strcmp(tok[0], "USERS") == 0 && n == 1) {
		stor_string_list users = ARRAY_INIT;
		if (stor_user_list(db, &users, &err) < 0) {
			admin_conn_reply(c, NULL, 0, "NO", err);
			return;
		}
		struct buf out = BUF_INIT;
		for (size_t i = 0; i < users.count; i++)
			buf_appendf(&out, "%s\n", users.items[i]);
		stor_string_list_free(&users);
		admin_conn_reply(c, out.data, out.len, "OK", "");
		buf_free(&out);
		return;
	}
	admin_conn_reply(c, NULL, 0, "NO", "bad request: unknown command or wrong argument count");
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
				body_complete(c);
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
				admin_conn_reply(c, NULL, 0, "NO", "bad request: line too long");
				return 0;
			}
			continue;
		}
		if (len > ADMIN_MAX_LINE || strlen(line) != len) {
			admin_conn_reply(c, NULL, 0, "NO", "bad request: malformed line");
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
	admin_conn_update_io(c);
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
	uint32_t owner_rights;
	if (acl_owner_rights_config(cfg, &owner_rights, error_r) < 0)
		return -1;
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
	a->owner_rights = owner_rights;
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
			admin_conn_free(c);
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
		admin_conn_free(c);
	}
	free(a->path);
	free(a);
}

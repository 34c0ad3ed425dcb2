/* Mailbox management: CREATE, DELETE, RENAME (with INBOX's special
 * semantics and renaming of inferiors), SUBSCRIBE, UNSUBSCRIBE, NAMESPACE,
 * STATUS.  Changes go through the seam; STATUS reads storage. */
#include "imap/imap-commands.h"
#include "imap/imap-barrier.h"
#include "imap/imap-acl.h"
#include "imap/imap-pseen.h"

#include <string.h>
#include <strings.h>

#include "lib/log.h"
#include "lib/str.h"
#include "lib/xalloc.h"

/* The mailbox name argument, normalised; NULL after replying. */
static char *mailbox_arg(struct imap_cmd *cmd, const struct imap_arg *arg, bool strip_sep)
{
	const char *err;
	if (!imap_arg_is_string(arg)) {
		imap_cmd_done(cmd, "BAD", "Invalid mailbox name");
		return NULL;
	}
	size_t len = arg->len;
	if (strip_sep && len > 1 && arg->str[len - 1] == '/')
		len--;
	char *name = imap_client_mailbox_name(cmd->client, arg->str, len, &err);
	if (name == NULL)
		imap_cmd_done(cmd, "NO", "[CANNOT] %s", err);
	return name;
}

struct create_ctx {
	char **names;
	size_t count, left;
	enum repl_error error;
	char *error_msg;
};

static void create_ctx_free(void *p)
{
	struct create_ctx *cc = p;
	for (size_t i = 0; i < cc->count; i++)
		free(cc->names[i]);
	free(cc->names);
	free(cc->error_msg);
	free(cc);
}

static void create_one_done(void *ctx, const struct repl_result *res)
{
	struct imap_cmd *cmd = ctx;
	struct create_ctx *cc = cmd->ctx;
	/* Only the last name is the one asked for; its parents may exist. */
	bool is_target = cc->left == 1;
	if (res->error != REPL_OK && cc->error == REPL_OK &&
	    (res->error != REPL_ERR_EXISTS || is_target)) {
		cc->error = res->error;
		cc->error_msg = xstrdup(res->error_msg != NULL ? res->error_msg : "failed");
	}
	if (--cc->left > 0)
		return;
	cmd->waiting = false;
	if (cc->error != REPL_OK)
		imap_cmd_done(cmd, "NO", "%s%s", imap_repl_error_code(cc->error), cc->error_msg);
	else
		imap_cmd_done(cmd, "OK", "CREATE completed");
}

bool imap_cmd_create(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	if (cmd->count < 1 || cmd->count > 2)
		return imap_cmd_done(cmd, "BAD", "CREATE takes a mailbox name");
	char *name = mailbox_arg(cmd, &cmd->args[0], true);
	if (name == NULL)
		return true;
	if (strcmp(name, "INBOX") == 0) {
		free(name);
		return imap_cmd_done(cmd, "NO", "[ALREADYEXISTS] INBOX always exists");
	}
	if (imap_acl_is_shared_name(name))
		return imap_acl_create_shared(cmd, name);
	struct stor_mailbox mb;
	const char *err;
	int r = stor_mailbox_get(c->server->db, c->user, name, &mb, &err);
	if (r != 0) {
		free(name);
		if (r > 0)
			stor_mailbox_free(&mb);
		return imap_cmd_done(cmd, "NO", r < 0 ? "[SERVERBUG] Internal error" :
					       "[ALREADYEXISTS] Mailbox already exists");
	}
	/* RFC 4314 4: "k" on the nearest existing parent; the owner keeps
	 * "l" on it, so a refusal is always NOPERM. */
	uint32_t prights = imap_acl_own_parent_rights(c, name);
	if ((prights & ACL_CREATE) == 0) {
		free(name);
		return imap_acl_refuse(cmd, prights, ACL_CREATE, "[NONEXISTENT] Mailbox does not exist");
	}
	/* RFC 3501 6.3.3: create the missing superiors too, parents first;
	 * the completions arrive in submission order. */
	struct create_ctx *cc = xcalloc(1, sizeof(*cc));
	cmd->ctx = cc;
	cmd->ctx_free = create_ctx_free;
	size_t slashes = 0;
	for (const char *p = name; *p != '\0'; p++)
		slashes += *p == '/';
	cc->names = xcalloc(slashes + 1, sizeof(char *));
	for (const char *p = strchr(name, '/'); p != NULL; p = strchr(p + 1, '/')) {
		char *parent = xstrndup(name, (size_t)(p - name));
		r = strcmp(parent, "INBOX") == 0 ? 1 :
			stor_mailbox_get(c->server->db, c->user, parent, &mb, &err);
		if (r > 0 && strcmp(parent, "INBOX") != 0)
			stor_mailbox_free(&mb);
		if (r == 0)
			cc->names[cc->count++] = parent;
		else
			free(parent);
	}
	cc->names[cc->count++] = name;
	cc->left = cc->count;
	cmd->waiting = true;
	for (size_t i = 0; i < cc->count; i++)
		repl_mailbox_create(c->server->repl, c->user, cc->names[i], NULL, create_one_done, cmd);
	return false;
}

/* Looks up the user's mailbox name (freed here): true with *mb_r, or
 * false after replying NO. */
static bool mailbox_get(struct imap_cmd *cmd, char *name, struct stor_mailbox *mb_r)
{
	struct imap_client *c = cmd->client;
	const char *err;
	int r = stor_mailbox_get(c->server->db, c->user, name, mb_r, &err);
	free(name);
	if (r <= 0) {
		imap_cmd_done(cmd, "NO", r < 0 ? "[SERVERBUG] Internal error" :
					       "[NONEXISTENT] Mailbox does not exist");
		return false;
	}
	return true;
}

bool imap_cmd_delete(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	if (cmd->count != 1)
		return imap_cmd_done(cmd, "BAD", "DELETE takes a mailbox name");
	char *name = mailbox_arg(cmd, &cmd->args[0], true);
	if (name == NULL)
		return true;
	if (strcmp(name, "INBOX") == 0) {
		free(name);
		return imap_cmd_done(cmd, "NO", "[CANNOT] INBOX cannot be deleted");
	}
	if (imap_acl_is_shared_name(name))
		return imap_acl_delete_shared(cmd, name);
	struct stor_mailbox mb;
	if (!mailbox_get(cmd, name, &mb))
		return true;
	/* Owners too: acl_owner_rights or their own record may leave out
	 * "x". */
	uint32_t rights = imap_acl_own_rights(c, &mb.guid);
	if ((rights & ACL_DELETE_MBOX) == 0) {
		stor_mailbox_free(&mb);
		return imap_acl_refuse(cmd, rights, ACL_DELETE_MBOX, "[NONEXISTENT] Mailbox does not exist");
	}
	if (c->sel != NULL && guid_cmp(&c->sel->guid, &mb.guid) == 0)
		imap_sel_close(c);
	struct guid *g = xmemdup(&mb.guid, sizeof(mb.guid));
	stor_mailbox_free(&mb);
	cmd->ctx = g;
	cmd->ctx_free = free;
	cmd->waiting = true;
	repl_mailbox_delete(c->server->repl, c->user, g, imap_cmd_repl_done, cmd);
	return false;
}

/* ---- RENAME ---- */

struct rename_ctx {
	char *old_name, *new_name;
	struct guid *guids;
	char **new_names;
	size_t count, left;
	enum repl_error error;
	char *error_msg;
	/* INBOX: the mailbox to move INBOX's messages into. */
	stor_uid_list uids;
	struct guid inbox, target;
	stor_string_list parents;
	/* A rename in another owner's tree: the session's prefix of the
	 * names ("shared/OWNER/" or "Public/"); new_names are the owner's. */
	char *prefix;
	char *owner;
};

static void rename_ctx_free(void *p)
{
	struct rename_ctx *rc = p;
	for (size_t i = 0; i < rc->count; i++)
		free(rc->new_names[i]);
	free(rc->new_names);
	free(rc->guids);
	free(rc->old_name);
	free(rc->new_name);
	free(rc->error_msg);
	free(rc->prefix);
	free(rc->owner);
	ARRAY_FREE(&rc->uids);
	stor_string_list_free(&rc->parents);
	free(rc);
}

static void rename_one_done(void *ctx, const struct repl_result *res)
{
	struct imap_cmd *cmd = ctx;
	struct rename_ctx *rc = cmd->ctx;
	if (res->error != REPL_OK && rc->error == REPL_OK) {
		rc->error = res->error;
		rc->error_msg = xstrdup(res->error_msg != NULL ? res->error_msg : "failed");
	}
	if (--rc->left > 0)
		return;
	cmd->waiting = false;
	if (rc->error != REPL_OK) {
		imap_cmd_done(cmd, "NO", "%s%s", imap_repl_error_code(rc->error), rc->error_msg);
		return;
	}
	if (rc->prefix == NULL) {
		imap_rename_report_oldnames(cmd->client, rc->old_name, rc->new_name,
					    (const char *const *)rc->new_names, rc->count);
	} else {
		char **names = xcalloc(rc->count + 1, sizeof(*names));
		for (size_t i = 0; i < rc->count; i++)
			names[i] = xasprintf("%s%s", rc->prefix, rc->new_names[i]);
		imap_rename_report_oldnames(cmd->client, rc->old_name, rc->new_name,
					    (const char *const *)names, rc->count);
		for (size_t i = 0; i < rc->count; i++)
			free(names[i]);
		free(names);
	}
	imap_cmd_done(cmd, "OK", "RENAME completed");
}

/* The length of name's namespace prefix and its owner (allocated): "Public/"
 * and ACL_PUBLIC_OWNER, "shared/OWNER/" and OWNER; 0 and NULL for a personal
 * name, and for the roots "shared", "shared/OWNER" and "Public", which are
 * levels of a namespace rather than anybody's mailbox. */
static size_t shared_owner(const char *name, char **owner_r)
{
	*owner_r = NULL;
	if (strncmp(name, IMAP_PUBLIC_PREFIX, IMAP_PUBLIC_PREFIX_LEN) == 0) {
		if (name[IMAP_PUBLIC_PREFIX_LEN] == '\0')
			return 0;
		*owner_r = xstrdup(ACL_PUBLIC_OWNER);
		return IMAP_PUBLIC_PREFIX_LEN;
	}
	if (strncmp(name, IMAP_SHARED_PREFIX, IMAP_SHARED_PREFIX_LEN) != 0)
		return 0;
	const char *o = name + IMAP_SHARED_PREFIX_LEN, *slash = strchr(o, '/');
	if (slash == NULL || slash == o || slash[1] == '\0')
		return 0;
	*owner_r = xstrndup(o, (size_t)(slash - o));
	return (size_t)(slash + 1 - name);
}

/* RENAME where either name is in shared/ or Public/ (names taken).  Only a
 * rename inside one owner's tree is possible, done as the owner's rename
 * (the ACL records and the sharing index are keyed by the mailbox's GUID,
 * so they follow it).  RFC 4314 4: "x" on the mailbox and "k" on the new
 * name's parent.  At the top of an owner's tree there is no parent to hold
 * "k", and CREATE makes nothing there: a mailbox already at the top may be
 * renamed in place with "x", nothing may move up there. */
static bool rename_shared(struct imap_cmd *cmd, char *old_name, char *new_name)
{
	struct imap_client *c = cmd->client;
	struct rename_ctx *rc = xcalloc(1, sizeof(*rc));
	rc->old_name = old_name;
	rc->new_name = new_name;
	cmd->ctx = rc;
	cmd->ctx_free = rename_ctx_free;
	char *old_owner, *new_owner;
	size_t ons = shared_owner(old_name, &old_owner), nns = shared_owner(new_name, &new_owner);
	/* Decided from the names alone, so that it tells nothing about
	 * which mailboxes exist. */
	bool same = old_owner != NULL && new_owner != NULL && strcmp(old_owner, new_owner) == 0 &&
		    strcmp(old_owner, c->user) != 0 && ons == nns &&
		    strncmp(old_name, new_name, ons) == 0;
	free(new_owner);
	if (!same) {
		free(old_owner);
		return imap_cmd_done(cmd, "NO", "[CANNOT] A mailbox can only be renamed within "
					       "its owner's tree (shared/OWNER/ or Public/)");
	}
	rc->prefix = xstrndup(old_name, ons);
	/* Kept until the completions, as the seam requires. */
	rc->owner = old_owner;
	const char *old_inner = old_name + ons, *new_inner = new_name + ons;
	struct stor_mailbox mb;
	uint32_t rights;
	const char *err;
	int r = imap_acl_mailbox_get(c, old_name, &mb, &rights, &err);
	if (r > 0 && strcmp(mb.user, old_owner) != 0) {
		/* One of the user's own mailboxes by that name: not the
		 * other user's mailbox the name asks for. */
		stor_mailbox_free(&mb);
		r = 0;
	}
	if (r <= 0) {
		return imap_cmd_done(cmd, "NO", r < 0 ? "[SERVERBUG] Internal error" :
					       "[NONEXISTENT] Mailbox does not exist");
	}
	stor_mailbox_free(&mb);
	if ((rights & ACL_DELETE_MBOX) == 0) {
		return imap_acl_refuse(cmd, rights, ACL_DELETE_MBOX,
				       "[NONEXISTENT] Mailbox does not exist");
	}
	size_t olen = strlen(old_inner);
	if (strncmp(new_inner, old_inner, olen) == 0 && new_inner[olen] == '/') {
		return imap_cmd_done(cmd, "NO", "[CANNOT] Cannot rename a mailbox into itself");
	}
	const char *nslash = strrchr(new_inner, '/');
	if (nslash == NULL && strchr(old_inner, '/') != NULL) {
		return imap_cmd_done(cmd, "NO", "[CANNOT] Nothing can be moved to the top of "
					       "another user's or the public tree");
	}
	if (nslash != NULL) {
		char *parent = xstrndup(new_name, (size_t)(nslash - new_name));
		uint32_t prights;
		r = imap_acl_mailbox_get(c, parent, &mb, &prights, &err);
		free(parent);
		if (r > 0 && strcmp(mb.user, old_owner) != 0) {
			stor_mailbox_free(&mb);
			r = 0;
		}
		if (r <= 0) {
				return imap_cmd_done(cmd, "NO", r < 0 ? "[SERVERBUG] Internal error" :
						       "[NONEXISTENT] Parent mailbox does not exist");
		}
		stor_mailbox_free(&mb);
		if ((prights & ACL_CREATE) == 0) {
				return imap_acl_refuse(cmd, prights, ACL_CREATE,
					       "[NONEXISTENT] Parent mailbox does not exist");
		}
	}
	struct stor_db *db = c->server->db;
	/* The user may create under the parent, so may learn what CREATE
	 * would tell them: that the name is taken. */
	r = stor_mailbox_get(db, old_owner, new_inner, &mb, &err);
	if (r != 0) {
		if (r > 0)
			stor_mailbox_free(&mb);
		return imap_cmd_done(cmd, "NO", r < 0 ? "[SERVERBUG] Internal error" :
					       "[ALREADYEXISTS] Target mailbox exists");
	}
	stor_mailbox_array list = ARRAY_INIT;
	if (stor_mailbox_list(db, old_owner, &list, &err) < 0) {
		return imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
	}
	/* Its inferiors move with it, as in a personal RENAME. */
	rc->guids = xcalloc(list.count + 1, sizeof(*rc->guids));
	rc->new_names = xcalloc(list.count + 1, sizeof(*rc->new_names));
	for (size_t i = 0; i < list.count; i++) {
		const char *n = list.items[i].name;
		if (strcmp(n, old_inner) == 0)
			rc->new_names[rc->count] = xstrdup(new_inner);
		else if (strncmp(n, old_inner, olen) == 0 && n[olen] == '/')
			rc->new_names[rc->count] = xasprintf("%s%s", new_inner, n + olen);
		else
			continue;
		rc->guids[rc->count++] = list.items[i].guid;
	}
	stor_mailbox_list_free(&list);
	if (rc->count == 0) {
		return imap_cmd_done(cmd, "NO", "[NONEXISTENT] Mailbox does not exist");
	}
	rc->left = rc->count;
	cmd->waiting = true;
	for (size_t i = 0; i < rc->count; i++)
		repl_mailbox_rename(c->server->repl, old_owner, &rc->guids[i], rc->new_names[i],
				    rename_one_done, cmd);
	return false;
}

/* A superior of the new name, created before the renames. */
static void rename_parent_done(void *ctx, const struct repl_result *res)
{
	struct repl_result r = *res;
	if (r.error == REPL_ERR_EXISTS)
		r.error = REPL_OK;
	rename_one_done(ctx, &r);
}

static void inbox_moved(void *ctx, const struct repl_result *res)
{
	struct imap_cmd *cmd = ctx;
	cmd->waiting = false;
	if (res->error != REPL_OK)
		imap_cmd_done(cmd, "NO", "%s%s", imap_repl_error_code(res->error), res->error_msg);
	else
		imap_cmd_done(cmd, "OK", "RENAME completed");
}

static void inbox_target_created(void *ctx, const struct repl_result *res)
{
	struct imap_cmd *cmd = ctx;
	struct imap_client *c = cmd->client;
	struct rename_ctx *rc = cmd->ctx;
	if (res->error != REPL_OK) {
		cmd->waiting = false;
		imap_cmd_done(cmd, "NO", "%s%s", imap_repl_error_code(res->error), res->error_msg);
		return;
	}
	rc->target = res->mailbox->guid;
	stor_msg_list msgs = ARRAY_INIT;
	const char *err;
	if (stor_msg_list_range(c->server->db, &rc->inbox, 1, UINT32_MAX, &msgs, &err) < 0) {
		cmd->waiting = false;
		imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
		return;
	}
	for (size_t i = 0; i < msgs.count; i++)
		ARRAY_PUSH(&rc->uids, msgs.items[i].uid);
	stor_msg_list_free(&msgs);
	repl_copy(c->server->repl, c->user, &rc->inbox, rc->uids.items, rc->uids.count,
		  &rc->target, true, inbox_moved, cmd);
}

bool imap_cmd_rename(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	if (cmd->count != 2)
		return imap_cmd_done(cmd, "BAD", "RENAME takes two mailbox names");
	char *old_name = mailbox_arg(cmd, &cmd->args[0], true);
	if (old_name == NULL)
		return true;
	char *new_name = mailbox_arg(cmd, &cmd->args[1], true);
	if (new_name == NULL) {
		free(old_name);
		return true;
	}
	if (imap_acl_is_shared_name(old_name) || imap_acl_is_shared_name(new_name))
		return rename_shared(cmd, old_name, new_name);
	struct rename_ctx *rc = xcalloc(1, sizeof(*rc));
	rc->old_name = old_name;
	rc->new_name = new_name;
	cmd->ctx = rc;
	cmd->ctx_free = rename_ctx_free;
	struct stor_db *db = c->server->db;
	const char *err;
	struct stor_mailbox mb;
	int r = stor_mailbox_get(db, c->user, old_name, &mb, &err);
	if (r < 0)
		return imap_cmd_done(cmd, "NO", "[SERVERBUG] Internal error");
	/* A name that exists only as the parent of others can be renamed:
	 * its children move. */
	struct guid old_guid;
	memset(&old_guid, 0, sizeof(old_guid));
	bool old_exists = r > 0;
	if (old_exists) {
		old_guid = mb.guid;
		stor_mailbox_free(&mb);
	}
	r = stor_mailbox_get(db, c->user, new_name, &mb, &err);
	if (r != 0) {
		if (r > 0)
			stor_mailbox_free(&mb);
		return imap_cmd_done(cmd, "NO", r < 0 ? "[SERVERBUG] Internal error" :
					       "[ALREADYEXISTS] Target mailbox exists");
	}
	if (strcmp(new_name, "INBOX") == 0 || str_has_prefix_ci(new_name, "INBOX/"))
		return imap_cmd_done(cmd, "NO", "[CANNOT] Cannot rename to INBOX");
	size_t olen = strlen(old_name);
	if (strncmp(new_name, old_name, olen) == 0 && new_name[olen] == '/')
		return imap_cmd_done(cmd, "NO", "[CANNOT] Cannot rename a mailbox into itself");
	/* RFC 4314 4: "x" on the mailbox, "k" on the new parent; owners too. */
	uint32_t rights = old_exists ? imap_acl_own_rights(c, &old_guid) : ACL_ALL;
	if ((rights & ACL_DELETE_MBOX) == 0)
		return imap_acl_refuse(cmd, rights, ACL_DELETE_MBOX, "[NONEXISTENT] Mailbox does not exist");
	rights = imap_acl_own_parent_rights(c, new_name);
	if ((rights & ACL_CREATE) == 0)
		return imap_acl_refuse(cmd, rights, ACL_CREATE, "[NONEXISTENT] Mailbox does not exist");
	if (strcmp(old_name, "INBOX") == 0) {
		/* RFC 3501 6.3.5: move INBOX's messages to a new mailbox and
		 * leave INBOX empty. */
		rc->inbox = old_guid;
		cmd->waiting = true;
		repl_mailbox_create(c->server->repl, c->user, new_name, NULL, inbox_target_created,
				    cmd);
		return false;
	}
	stor_mailbox_array list = ARRAY_INIT;
	if (stor_mailbox_list(db, c->user, &list, &err) < 0)
		return imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
	rc->guids = xcalloc(list.count + 1, sizeof(*rc->guids));
	rc->new_names = xcalloc(list.count + 1, sizeof(*rc->new_names));
	for (size_t i = 0; i < list.count; i++) {
		const char *n = list.items[i].name;
		if (strcmp(n, old_name) == 0) {
			rc->new_names[rc->count] = xstrdup(new_name);
		} else if (strncmp(n, old_name, olen) == 0 && n[olen] == '/') {
			rc->new_names[rc->count] = xasprintf("%s%s", new_name, n + olen);
		} else {
			continue;
		}
		rc->guids[rc->count++] = list.items[i].guid;
	}
	stor_mailbox_list_free(&list);
	if (rc->count == 0)
		return imap_cmd_done(cmd, "NO", "[NONEXISTENT] Mailbox does not exist");
	/* RFC 3501 6.3.5: create the missing superiors of the new name. */
	stor_string_list *parents = &rc->parents;
	for (const char *p = strchr(new_name, '/'); p != NULL; p = strchr(p + 1, '/')) {
		char *parent = xstrndup(new_name, (size_t)(p - new_name));
		r = stor_mailbox_get(db, c->user, parent, &mb, &err);
		if (r > 0)
			stor_mailbox_free(&mb);
		if (r == 0)
			ARRAY_PUSH(parents, parent);
		else
			free(parent);
	}
	rc->left = rc->count + parents->count;
	cmd->waiting = true;
	/* The names stay in rc until completion, as the seam requires. */
	for (size_t i = 0; i < parents->count; i++)
		repl_mailbox_create(c->server->repl, c->user, parents->items[i], NULL,
				    rename_parent_done, cmd);
	for (size_t i = 0; i < rc->count; i++)
		repl_mailbox_rename(c->server->repl, c->user, &rc->guids[i], rc->new_names[i],
				    rename_one_done, cmd);
	return false;
}

static bool do_subscribe(struct imap_cmd *cmd, bool subscribe)
{
	struct imap_client *c = cmd->client;
	if (cmd->count != 1)
		return imap_cmd_done(cmd, "BAD", "%s takes a mailbox name", cmd->name);
	char *name = mailbox_arg(cmd, &cmd->args[0], true);
	if (name == NULL)
		return true;
	cmd->ctx = name;
	cmd->ctx_free = free;
	cmd->waiting = true;
	repl_subscribe(c->server->repl, c->user, name, subscribe, imap_cmd_repl_done, cmd);
	return false;
}

bool imap_cmd_subscribe(struct imap_cmd *cmd)
{
	return do_subscribe(cmd, true);
}

bool imap_cmd_unsubscribe(struct imap_cmd *cmd)
{
	return do_subscribe(cmd, false);
}

bool imap_cmd_namespace(struct imap_cmd *cmd)
{
	imap_client_printf(cmd->client, "* NAMESPACE ((\"\" \"/\")) ((\"" IMAP_SHARED_PREFIX
			   "\" \"/\")) ((\"" IMAP_PUBLIC_PREFIX "\" \"/\"))\r\n");
	return imap_cmd_done(cmd, "OK", "Namespace completed");
}

/* Messages no session on this node has been told about (\Recent for the
 * next session to select the mailbox). */
static uint32_t status_recent(struct imap_client *c, const struct stor_mailbox *mb)
{
	uint32_t first = imap_recent_first(c->server, &mb->guid);
	if (first <= 1)
		return mb->messages;
	if (first >= mb->uidnext)
		return 0;
	stor_msg_list msgs = ARRAY_INIT;
	const char *err;
	uint32_t n = 0;
	if (stor_msg_list_range(c->server->db, &mb->guid, first, UINT32_MAX, &msgs, &err) == 0)
		n = (uint32_t)msgs.count;
	stor_msg_list_free(&msgs);
	return n;
}

/* STATUS SIZE (RFC 8438, the total of the messages' RFC822.SIZE) and
 * DELETED (RFC 9051, messages with \Deleted): one pass over the mailbox. */
static void status_size_deleted(struct imap_client *c, const struct stor_mailbox *mb,
				uint64_t *size_r, uint32_t *deleted_r)
{
	stor_msg_list msgs = ARRAY_INIT;
	const char *err;
	if (stor_msg_list_range(c->server->db, &mb->guid, 1, UINT32_MAX, &msgs, &err) == 0) {
		for (size_t i = 0; i < msgs.count; i++) {
			*size_r += msgs.items[i].size;
			if (msgs.items[i].flags & STOR_FLAG_DELETED)
				(*deleted_r)++;
		}
	}
	stor_msg_list_free(&msgs);
}

bool imap_status_items_valid(const struct imap_client *c, const struct imap_arg *items, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		/* IMAP4rev2 has no RECENT (RFC 9051 6.3.11) */
		if (c->rev2 && imap_arg_atom_eq(&items[i], "RECENT"))
			return false;
		if (!imap_arg_atom_eq(&items[i], "MESSAGES") && !imap_arg_atom_eq(&items[i], "RECENT") &&
		    !imap_arg_atom_eq(&items[i], "UIDNEXT") &&
		    !imap_arg_atom_eq(&items[i], "UIDVALIDITY") &&
		    !imap_arg_atom_eq(&items[i], "UNSEEN") && !imap_arg_atom_eq(&items[i], "SIZE") &&
		    !imap_arg_atom_eq(&items[i], "DELETED") &&
		    !imap_arg_atom_eq(&items[i], "HIGHESTMODSEQ"))
			return false;
	}
	return true;
}

void imap_status_write(struct imap_client *c, const struct stor_mailbox *mb,
		       const struct imap_arg *items, size_t n)
{
	struct buf line = BUF_INIT;
	buf_append_str(&line, "* STATUS ");
	imap_append_mailbox(c, &line, mb->name);
	buf_append_str(&line, " (");
	uint64_t size = 0;
	uint32_t deleted = 0;
	for (size_t i = 0; i < n; i++)
		if (imap_arg_atom_eq(&items[i], "SIZE") || imap_arg_atom_eq(&items[i], "DELETED")) {
			status_size_deleted(c, mb, &size, &deleted);
			break;
		}
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			buf_append_byte(&line, ' ');
		if (imap_arg_atom_eq(&items[i], "MESSAGES"))
			buf_appendf(&line, "MESSAGES %u", mb->messages);
		else if (imap_arg_atom_eq(&items[i], "RECENT"))
			buf_appendf(&line, "RECENT %u", status_recent(c, mb));
		else if (imap_arg_atom_eq(&items[i], "UIDNEXT"))
			buf_appendf(&line, "UIDNEXT %u", mb->uidnext);
		else if (imap_arg_atom_eq(&items[i], "UIDVALIDITY"))
			buf_appendf(&line, "UIDVALIDITY %u", mb->uidvalidity);
		else if (imap_arg_atom_eq(&items[i], "UNSEEN"))
			buf_appendf(&line, "UNSEEN %u", imap_pseen_unseen(c, mb));
		else if (imap_arg_atom_eq(&items[i], "SIZE"))
			buf_appendf(&line, "SIZE %llu", (unsigned long long)size);
		else if (imap_arg_atom_eq(&items[i], "DELETED"))
			buf_appendf(&line, "DELETED %u", deleted);
		else
			buf_appendf(&line, "HIGHESTMODSEQ %llu", (unsigned long long)mb->highestmodseq);
	}
	buf_append_str(&line, ")\r\n");
	imap_client_write(c, line.data, line.len);
	buf_free(&line);
}

bool imap_cmd_status(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	if (cmd->count != 2 || cmd->args[1].type != IMAP_ARG_LIST || cmd->args[1].count == 0)
		return imap_cmd_done(cmd, "BAD", "STATUS takes a mailbox and a list of items");
	const struct imap_arg *items = cmd->args[1].list;
	size_t n = cmd->args[1].count;
	if (!imap_status_items_valid(c, items, n))
		return imap_cmd_done(cmd, "BAD", "Unknown STATUS item");
	char *name = mailbox_arg(cmd, &cmd->args[0], false);
	if (name == NULL)
		return true;
	struct stor_mailbox mb;
	uint32_t rights;
	const char *err;
	int r = imap_acl_mailbox_get(c, name, &mb, &rights, &err);
	free(name);
	if (r <= 0)
		return imap_cmd_done(cmd, "NO", r < 0 ? "[SERVERBUG] Internal error" :
						      "[NONEXISTENT] Mailbox does not exist");
	if ((rights & ACL_READ) == 0) {
		stor_mailbox_free(&mb);
		return imap_acl_refuse(cmd, rights, ACL_READ, "[NONEXISTENT] Mailbox does not exist");
	}
	if (!imap_read_barrier(cmd, imap_cmd_status, &mb.guid)) {
		stor_mailbox_free(&mb);
		return false;
	}
	imap_status_write(c, &mb, items, n);
	stor_mailbox_free(&mb);
	return imap_cmd_done(cmd, "OK", "STATUS completed");
}

/* The ACL commands of RFC 4314: MYRIGHTS, GETACL, SETACL, DELETEACL and
 * LISTRIGHTS.  Changes are ACL records (SPEC.md 7.6) made through the seam
 * and replicated like the mailbox list; reads come from the store. */
#include "imap/imap-acl.h"
#include "imap/imap-commands.h"

#include <stdlib.h>
#include <string.h>

#include "lib/xalloc.h"
#include "storage/storage-acl.h"

#define NOTFOUND "[NONEXISTENT] Mailbox does not exist"

/* Resolves the mailbox argument: true with *mb_r and *rights_r, or false
 * after replying. */
static bool acl_mailbox(struct imap_cmd *cmd, const struct imap_arg *arg, struct stor_mailbox *mb_r,
			uint32_t *rights_r)
{
	const char *err;
	if (!imap_arg_is_string(arg)) {
		imap_cmd_done(cmd, "BAD", "Invalid mailbox name");
		return false;
	}
	char *name = imap_client_mailbox_name(cmd->client, arg->str, arg->len, &err);
	if (name == NULL) {
		imap_cmd_done(cmd, "NO", "[CANNOT] %s", err);
		return false;
	}
	int r = imap_acl_mailbox_get(cmd->client, name, mb_r, rights_r, &err);
	free(name);
	if (r < 0)
		imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
	else if (r == 0)
		imap_cmd_done(cmd, "NO", NOTFOUND);
	return r > 0;
}

/* acl_mailbox() for the commands that need the 'a' right (GETACL,
 * LISTRIGHTS, SETACL, DELETEACL); false after replying. */
static bool acl_admin_mailbox(struct imap_cmd *cmd, const struct imap_arg *arg,
			      struct stor_mailbox *mb_r, uint32_t *rights_r)
{
	if (!acl_mailbox(cmd, arg, mb_r, rights_r))
		return false;
	if ((*rights_r & ACL_ADMIN) == 0) {
		stor_mailbox_free(mb_r);
		imap_acl_refuse(cmd, *rights_r, ACL_ADMIN, NOTFOUND);
		return false;
	}
	return true;
}

/* An identifier argument as a C string; NULL after replying BAD. */
static const char *identifier_arg(struct imap_cmd *cmd, const struct imap_arg *arg)
{
	const char *id = imap_arg_cstr(arg), *why;
	if (id == NULL || !imap_arg_is_string(arg)) {
		imap_cmd_done(cmd, "BAD", "Invalid identifier");
		return NULL;
	}
	if (!acl_identifier_valid(id, strlen(id), &why)) {
		imap_cmd_done(cmd, "BAD", "Invalid identifier: %s", why);
		return NULL;
	}
	return id;
}

bool imap_cmd_myrights(struct imap_cmd *cmd)
{
	if (cmd->count != 1)
		return imap_cmd_done(cmd, "BAD", "MYRIGHTS takes a mailbox name");
	struct stor_mailbox mb;
	uint32_t rights;
	if (!acl_mailbox(cmd, &cmd->args[0], &mb, &rights))
		return true;
	char letters[ACL_RIGHTS_RFC2086_SIZE];
	acl_rights_format_rfc2086(rights, letters);
	struct buf line = BUF_INIT;
	buf_append_str(&line, "* MYRIGHTS ");
	imap_append_mailbox(cmd->client, &line, mb.name);
	buf_append_byte(&line, ' ');
	imap_append_astring(&line, letters, strlen(letters));
	buf_append_str(&line, "\r\n");
	imap_client_write(cmd->client, line.data, line.len);
	buf_free(&line);
	stor_mailbox_free(&mb);
	return imap_cmd_done(cmd, "OK", "MYRIGHTS completed");
}

bool imap_cmd_getacl(struct imap_cmd *cmd)
{
	if (cmd->count != 1)
		return imap_cmd_done(cmd, "BAD", "GETACL takes a mailbox name");
	struct stor_mailbox mb;
	uint32_t rights;
	if (!acl_admin_mailbox(cmd, &cmd->args[0], &mb, &rights))
		return true;
	stor_acl_list acl;
	const char *err;
	if (stor_acl_get(cmd->client->server->db, &mb.guid, &acl, &err) < 0) {
		stor_mailbox_free(&mb);
		return imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
	}
	struct buf line = BUF_INIT;
	buf_append_str(&line, "* ACL ");
	imap_append_mailbox(cmd->client, &line, mb.name);
	bool owner_named = false;
	for (size_t i = 0; i < acl.count; i++) {
		const struct stor_acl *a = &acl.items[i];
		if (a->rights[0] == '\0')
			continue;
		const char *name = a->identifier[0] == '-' ? a->identifier + 1 : a->identifier;
		owner_named |= strcmp(name, mb.user) == 0;
		buf_append_byte(&line, ' ');
		imap_append_astring(&line, a->identifier, strlen(a->identifier));
		/* Records are stored canonical (stor_acl_put), so this parse only
		 * fails on a record written by something else: show it as it is
		 * rather than hide it. */
		char letters[ACL_RIGHTS_RFC2086_SIZE];
		const char *shown = a->rights;
		uint32_t bits;
		const char *why;
		if (acl_rights_parse(a->rights, strlen(a->rights), &bits, &why) == 0) {
			acl_rights_format_rfc2086(bits, letters);
			shown = letters;
		}
		buf_append_byte(&line, ' ');
		imap_append_astring(&line, shown, strlen(shown));
	}
	/* The owner's implicit rights, so that a client shows them (public
	 * mailboxes have no owner who could use them). */
	if (!owner_named && strcmp(mb.user, ACL_PUBLIC_OWNER) != 0) {
		char own[ACL_RIGHTS_RFC2086_SIZE];
		acl_rights_format_rfc2086(cmd->client->server->owner_rights, own);
		buf_append_byte(&line, ' ');
		imap_append_astring(&line, mb.user, strlen(mb.user));
		buf_append_byte(&line, ' ');
		imap_append_astring(&line, own, strlen(own));
	}
	buf_append_str(&line, "\r\n");
	imap_client_write(cmd->client, line.data, line.len);
	buf_free(&line);
	stor_acl_list_free(&acl);
	stor_mailbox_free(&mb);
	return imap_cmd_done(cmd, "OK", "GETACL completed");
}

bool imap_cmd_listrights(struct imap_cmd *cmd)
{
	if (cmd->count != 2)
		return imap_cmd_done(cmd, "BAD", "LISTRIGHTS takes a mailbox name and an identifier");
	const char *id = identifier_arg(cmd, &cmd->args[1]);
	if (id == NULL)
		return true;
	struct stor_mailbox mb;
	uint32_t rights;
	if (!acl_admin_mailbox(cmd, &cmd->args[0], &mb, &rights))
		return true;
	uint32_t required = strcmp(id, mb.user) == 0 ? ACL_OWNER_ALWAYS : 0;
	char req[ACL_RIGHTS_RFC2086_SIZE];
	acl_rights_format_rfc2086(required, req);
	struct buf line = BUF_INIT;
	buf_append_str(&line, "* LISTRIGHTS ");
	imap_append_mailbox(cmd->client, &line, mb.name);
	buf_append_byte(&line, ' ');
	imap_append_astring(&line, id, strlen(id));
	buf_append_byte(&line, ' ');
	imap_append_nstring(&line, req, strlen(req));
	/* Every other right on its own: each can be granted alone. */
	for (size_t i = 0; i < sizeof(ACL_LETTERS) - 1; i++) {
		if ((required & (1u << i)) == 0) {
			buf_append_byte(&line, ' ');
			buf_append_byte(&line, (unsigned char)ACL_LETTERS[i]);
		}
	}
	/* RFC 4314 2.1.1: the virtual c and d, each by itself (their members
	 * are granted one by one, tied to no other right), while any of their
	 * members can still be granted. */
	if ((ACL_CREATE | ACL_DELETE_MBOX) & ~required)
		buf_append_str(&line, " c");
	if ((ACL_DELETE_MSG | ACL_EXPUNGE) & ~required)
		buf_append_str(&line, " d");
	buf_append_str(&line, "\r\n");
	imap_client_write(cmd->client, line.data, line.len);
	buf_free(&line);
	stor_mailbox_free(&mb);
	return imap_cmd_done(cmd, "OK", "LISTRIGHTS completed");
}

/* SETACL and DELETEACL: the new rights of one identifier. */
static bool acl_change(struct imap_cmd *cmd, const char *id, const struct imap_arg *mbox_arg,
		       bool have_mod, enum acl_mod mod, uint32_t bits)
{
	struct imap_client *c = cmd->client;
	struct stor_mailbox mb;
	uint32_t rights;
	if (!acl_admin_mailbox(cmd, mbox_arg, &mb, &rights))
		return true;
	stor_acl_list acl;
	const char *err;
	if (stor_acl_get(c->server->db, &mb.guid, &acl, &err) < 0) {
		stor_mailbox_free(&mb);
		return imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
	}
	uint32_t old = 0;
	bool held = false;
	size_t live = 0;
	for (size_t i = 0; i < acl.count; i++) {
		if (acl.items[i].rights[0] == '\0')
			continue;
		live++;
		if (strcmp(acl.items[i].identifier, id) == 0) {
			held = true;
			(void)acl_rights_parse(acl.items[i].rights, strlen(acl.items[i].rights), &old,
					       &err);
		}
	}
	stor_acl_list_free(&acl);
	uint32_t now = have_mod ? acl_mod_apply(mod, old, bits) : 0;
	if (!held && now != 0 && live >= ACL_MAX_ENTRIES) {
		stor_mailbox_free(&mb);
		return imap_cmd_done(cmd, "NO", "[LIMIT] Too many identifiers in this ACL");
	}
	if (!held && now == 0) {
		/* Nothing to delete: the ACL already says this. */
		stor_mailbox_free(&mb);
		return imap_cmd_done(cmd, "OK", "%s completed", cmd->name);
	}
	int64_t t;
	if (stor_acl_next_time(c->server->db, &mb.guid, id, &t, &err) < 0) {
		stor_mailbox_free(&mb);
		return imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
	}
	char letters[sizeof(ACL_LETTERS)];
	acl_rights_format(now, letters);
	cmd->waiting = true;
	repl_acl_put(c->server->repl, mb.user, &mb.guid, id, letters, t, imap_cmd_repl_done, cmd);
	stor_mailbox_free(&mb);
	return false;
}

bool imap_cmd_setacl(struct imap_cmd *cmd)
{
	if (cmd->count != 3)
		return imap_cmd_done(cmd, "BAD", "SETACL takes a mailbox name, an identifier and rights");
	const char *id = identifier_arg(cmd, &cmd->args[1]);
	if (id == NULL)
		return true;
	const char *rights = imap_arg_cstr(&cmd->args[2]), *why;
	if (rights == NULL || !imap_arg_is_string(&cmd->args[2]))
		return imap_cmd_done(cmd, "BAD", "Invalid rights");
	enum acl_mod mod;
	uint32_t bits;
	/* RFC 4314 3.1: an unknown right is BAD, and nothing changes. */
	if (acl_mod_rights_parse(rights, strlen(rights), &mod, &bits, &why) < 0)
		return imap_cmd_done(cmd, "BAD", "Invalid rights: %s", why);
	return acl_change(cmd, id, &cmd->args[0], true, mod, bits);
}

bool imap_cmd_deleteacl(struct imap_cmd *cmd)
{
	if (cmd->count != 2)
		return imap_cmd_done(cmd, "BAD", "DELETEACL takes a mailbox name and an identifier");
	const char *id = identifier_arg(cmd, &cmd->args[1]);
	if (id == NULL)
		return true;
	return acl_change(cmd, id, &cmd->args[0], false, ACL_MOD_REPLACE, 0);
}

/* ---- CREATE and DELETE in shared/OWNER/ and Public/ ---- */

/* The length of the namespace part of name ("shared/OWNER/" or "Public/"),
 * 0 when name is not below one. */
static size_t namespace_len(const char *name)
{
	if (strncmp(name, IMAP_PUBLIC_PREFIX, IMAP_PUBLIC_PREFIX_LEN) == 0)
		return IMAP_PUBLIC_PREFIX_LEN;
	if (strncmp(name, IMAP_SHARED_PREFIX, IMAP_SHARED_PREFIX_LEN) != 0)
		return 0;
	const char *o = name + IMAP_SHARED_PREFIX_LEN, *slash = strchr(o, '/');
	return slash == NULL || slash == o ? 0 : (size_t)(slash + 1 - name);
}

struct shared_create {
	char *name;
	char *owner;
	struct guid parent;
	size_t left;
	bool failed;
};

static void shared_create_free(void *p)
{
	struct shared_create *sc = p;
	free(sc->name);
	free(sc->owner);
	free(sc);
}

static void shared_acl_copied(void *ctx, const struct repl_result *res)
{
	struct imap_cmd *cmd = ctx;
	struct shared_create *sc = cmd->ctx;
	if (res->error != REPL_OK)
		sc->failed = true;
	if (--sc->left > 0)
		return;
	cmd->waiting = false;
	if (sc->failed)
		imap_cmd_done(cmd, "NO", "[SERVERBUG] Created, but its ACL was not copied");
	else
		imap_cmd_done(cmd, "OK", "CREATE completed");
}

/* RFC 4314 leaves a new mailbox's ACL to the server: it gets its parent's,
 * so that whoever could create it (and the owner's grants) can use it. */
static void shared_created(void *ctx, const struct repl_result *res)
{
	struct imap_cmd *cmd = ctx;
	struct shared_create *sc = cmd->ctx;
	if (res->error != REPL_OK || res->mailbox == NULL) {
		cmd->waiting = false;
		if (res->error == REPL_ERR_EXISTS)
			imap_cmd_done(cmd, "NO", "[ALREADYEXISTS] Mailbox already exists");
		else
			imap_cmd_done(cmd, "NO", "%s%s", imap_repl_error_code(res->error),
				      res->error_msg != NULL ? res->error_msg : "failed");
		return;
	}
	struct guid child = res->mailbox->guid;
	struct stor_db *db = cmd->client->server->db;
	stor_acl_list acl;
	const char *err;
	if (stor_acl_get(db, &sc->parent, &acl, &err) < 0) {
		cmd->waiting = false;
		imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
		return;
	}
	sc->left = 1; /* held until every copy is submitted */
	for (size_t i = 0; i < acl.count; i++) {
		int64_t t;
		if (acl.items[i].rights[0] == '\0' ||
		    stor_acl_next_time(db, &child, acl.items[i].identifier, &t, &err) < 0)
			continue;
		sc->left++;
		repl_acl_put(cmd->client->server->repl, sc->owner, &child, acl.items[i].identifier,
			     acl.items[i].rights, t, shared_acl_copied, cmd);
	}
	stor_acl_list_free(&acl);
	struct repl_result done = { .error = REPL_OK };
	shared_acl_copied(cmd, &done);
}

bool imap_acl_create_shared(struct imap_cmd *cmd, char *name)
{
	struct imap_client *c = cmd->client;
	size_t ns = namespace_len(name);
	const char *slash = strrchr(name, '/');
	if (ns == 0 || slash == NULL || (size_t)(slash - name) < ns) {
		free(name);
		return imap_cmd_done(cmd, "NO", "[CANNOT] Only mailboxes below a mailbox of another "
					       "user or a public one can be created here");
	}
	char *parent = xstrndup(name, (size_t)(slash - name));
	struct stor_mailbox pmb, mb;
	uint32_t rights;
	const char *err;
	int r = imap_acl_mailbox_get(c, parent, &pmb, &rights, &err);
	free(parent);
	if (r <= 0) {
		free(name);
		return imap_cmd_done(cmd, "NO", r < 0 ? "[SERVERBUG] Internal error" :
						      "[NONEXISTENT] Parent mailbox does not exist");
	}
	if ((rights & ACL_CREATE) == 0) {
		stor_mailbox_free(&pmb);
		free(name);
		return imap_acl_refuse(cmd, rights, ACL_CREATE,
				       "[NONEXISTENT] Parent mailbox does not exist");
	}
	uint32_t crights;
	r = imap_acl_mailbox_get(c, name, &mb, &crights, &err);
	if (r != 0) {
		if (r > 0)
			stor_mailbox_free(&mb);
		stor_mailbox_free(&pmb);
		free(name);
		return imap_cmd_done(cmd, "NO", r < 0 ? "[SERVERBUG] Internal error" :
						      "[ALREADYEXISTS] Mailbox already exists");
	}
	struct shared_create *sc = xcalloc(1, sizeof(*sc));
	sc->owner = xstrdup(pmb.user);
	sc->parent = pmb.guid;
	/* The name in the owner's namespace: after "shared/OWNER/" or
	 * "Public/". */
	sc->name = xstrdup(name + ns);
	stor_mailbox_free(&pmb);
	free(name);
	cmd->ctx = sc;
	cmd->ctx_free = shared_create_free;
	cmd->waiting = true;
	repl_mailbox_create(c->server->repl, sc->owner, sc->name, NULL, shared_created, cmd);
	return false;
}

bool imap_acl_delete_shared(struct imap_cmd *cmd, char *name)
{
	struct imap_client *c = cmd->client;
	struct stor_mailbox mb;
	uint32_t rights;
	const char *err;
	int r = imap_acl_mailbox_get(c, name, &mb, &rights, &err);
	free(name);
	if (r <= 0)
		return imap_cmd_done(cmd, "NO", r < 0 ? "[SERVERBUG] Internal error" : NOTFOUND);
	if ((rights & ACL_DELETE_MBOX) == 0) {
		stor_mailbox_free(&mb);
		return imap_acl_refuse(cmd, rights, ACL_DELETE_MBOX, NOTFOUND);
	}
	if (c->sel != NULL && guid_equal(&c->sel->guid, &mb.guid))
		imap_sel_close(c);
	struct guid *g = xmemdup(&mb.guid, sizeof(mb.guid));
	char *owner = xstrdup(mb.user);
	stor_mailbox_free(&mb);
	cmd->ctx = g;
	cmd->ctx_free = free;
	cmd->waiting = true;
	repl_mailbox_delete(c->server->repl, owner, g, imap_cmd_repl_done, cmd);
	free(owner);
	return false;
}

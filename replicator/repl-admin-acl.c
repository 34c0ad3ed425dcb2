/* The admin commands on ACLs (SPEC.md 7.6; see repl-admin.c for their
 * protocol): ACL-GET, ACL-SET and ACL-DELETE read and change a mailbox's
 * ACL (changes replicated like an IMAP SETACL), ACL-DEBUG explains what a
 * user may do on a mailbox, and PUBLIC-CREATE creates a public mailbox. */
#include "replicator/repl-admin-private.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/passwd.h"
#include "lib/xalloc.h"
#include "storage/acl-rights.h"
#include "storage/storage-acl.h"

static void acl_done(void *ctx, const struct repl_result *res)
{
	struct admin_conn *c = ctx;
	if (!admin_conn_waited(c))
		return;
	if (res->error != REPL_OK)
		admin_conn_reply(c, NULL, 0, "NO", res->error_msg != NULL ? res->error_msg : "failed");
	else
		admin_conn_reply(c, NULL, 0, "OK", c->mailbox);
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
			admin_conn_reply(c, NULL, 0, "NO", "shared/OWNER/NAME names no mailbox here");
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
		admin_conn_reply(c, NULL, 0, "NO", r < 0 ? err : "mailbox does not exist");
		return;
	}
	stor_acl_list list;
	if (stor_acl_get(db, &mb.guid, &list, &err) < 0) {
		stor_mailbox_free(&mb);
		free(owner);
		admin_conn_reply(c, NULL, 0, "NO", err);
		return;
	}
	size_t n;
	struct acl_entry *e = acl_entries(&list, &n);
	struct buf out = BUF_INIT;
	buf_appendf(&out, "mailbox: %s\nowner: %s\nuser: %s\n", inner, owner, user);
	if (n == 0)
		buf_append_str(&out, "records: none\n");
	uint32_t rights = acl_evaluate(owner, user, c->admin->owner_rights, e, n, &out);
	static const struct {
		const char *what;
		uint32_t need;
	} ops[] = {
		{ "see it (LIST, LSUB)", ACL_LOOKUP },
		{ "SELECT, EXAMINE, STATUS, FETCH, SEARCH, COPY out of it", ACL_READ },
		{ "set or clear \\Seen", ACL_SEEN },
		{ "set or clear other flags and keywords", ACL_WRITE },
		{ "APPEND, COPY and MOVE into it", ACL_INSERT },
		{ "CREATE below it, RENAME into it", ACL_CREATE },
		{ "DELETE it, RENAME it", ACL_DELETE_MBOX },
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
	admin_conn_reply(c, out.data, out.len, "OK", "");
	buf_free(&out);
}

void admin_acl_request(struct admin_conn *c, char **tok, int n)
{
	struct stor_db *db = repl_db(c->admin->repl);
	const char *err;
	bool get = strcmp(tok[0], "ACL-GET") == 0 && n == 3;
	bool set = strcmp(tok[0], "ACL-SET") == 0 && n == 5;
	bool del = strcmp(tok[0], "ACL-DELETE") == 0 && n == 4;
	bool debug = strcmp(tok[0], "ACL-DEBUG") == 0 && n == 3;
	if (!get && !set && !del && !debug) {
		admin_conn_reply(c, NULL, 0, "NO", "bad request: unknown command or wrong argument count");
		return;
	}
	if (!passwd_user_name_valid(tok[1]) &&
	    (debug || strcmp(tok[1], ACL_PUBLIC_OWNER) != 0)) {
		admin_conn_reply(c, NULL, 0, "NO", "bad request: user name");
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
		admin_conn_reply(c, NULL, 0, "NO", m);
		free(m);
		return;
	}
	if (set && acl_mod_rights_parse(tok[4], strlen(tok[4]), &mod, &bits, &err) < 0) {
		char *m = xasprintf("bad request: %s", err);
		admin_conn_reply(c, NULL, 0, "NO", m);
		free(m);
		return;
	}
	struct stor_mailbox mb;
	int r = stor_mailbox_get(db, tok[1], mbname, &mb, &err);
	if (r <= 0) {
		admin_conn_reply(c, NULL, 0, "NO", r < 0 ? err : "mailbox does not exist");
		return;
	}
	stor_acl_list list;
	if (stor_acl_get(db, &mb.guid, &list, &err) < 0) {
		stor_mailbox_free(&mb);
		admin_conn_reply(c, NULL, 0, "NO", err);
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
		if (!owner_named && strcmp(tok[1], ACL_PUBLIC_OWNER) != 0) {
			char own[sizeof(ACL_LETTERS)];
			acl_rights_format(c->admin->owner_rights, own);
			buf_appendf(&out, "%s %s\n", tok[1], own);
		}
		admin_conn_reply(c, out.data, out.len, "OK", "");
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
		admin_conn_reply(c, NULL, 0, "NO", "too many identifiers in this ACL");
		return;
	}
	if (stor_acl_next_time(db, &mb.guid, tok[3], &t, &err) < 0) {
		stor_mailbox_free(&mb);
		admin_conn_reply(c, NULL, 0, "NO", err);
		return;
	}
	free(c->mailbox);
	c->mailbox = xasprintf("%s %s", tok[3], letters[0] != '\0' ? letters : "(none)");
	c->mailbox_guid = mb.guid;
	c->state = CONN_WAITING;
	admin_conn_update_io(c);
	repl_acl_put(c->admin->repl, tok[1], &c->mailbox_guid, tok[3], letters, t, acl_done, c);
	stor_mailbox_free(&mb);
}

static void public_created(void *ctx, const struct repl_result *res)
{
	struct admin_conn *c = ctx;
	if (!admin_conn_waited(c))
		return;
	if (res->error == REPL_ERR_EXISTS)
		admin_conn_reply(c, NULL, 0, "NO", "mailbox exists");
	else if (res->error != REPL_OK)
		admin_conn_reply(c, NULL, 0, "NO", res->error_msg != NULL ? res->error_msg : "failed");
	else
		admin_conn_reply(c, NULL, 0, "OK", "created");
}

void admin_public_create(struct admin_conn *c, const char *name)
{
	size_t n = strlen(name);
	if (n == 0 || name[0] == '/' || name[n - 1] == '/' || strstr(name, "//") != NULL ||
	    strcasecmp(name, "INBOX") == 0) {
		admin_conn_reply(c, NULL, 0, "NO", "bad request: mailbox name");
		return;
	}
	struct stor_mailbox mb;
	const char *err;
	int r = stor_mailbox_get(repl_db(c->admin->repl), ACL_PUBLIC_OWNER, name, &mb, &err);
	if (r != 0) {
		if (r > 0)
			stor_mailbox_free(&mb);
		admin_conn_reply(c, NULL, 0, "NO", r < 0 ? err : "mailbox exists");
		return;
	}
	c->state = CONN_WAITING;
	admin_conn_update_io(c);
	repl_mailbox_create(c->admin->repl, ACL_PUBLIC_OWNER, name, NULL, public_created, c);
}

/* Rights, names and listing of shared mailboxes for IMAP sessions: see
 * imap-acl.h. */
#include "imap/imap-acl.h"

#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/xalloc.h"
#include "storage/storage-acl.h"

bool imap_acl_is_shared_name(const char *name)
{
	return strncmp(name, IMAP_SHARED_PREFIX, IMAP_SHARED_PREFIX_LEN) == 0 ||
	       strcmp(name, "shared") == 0 ||
	       strncmp(name, IMAP_PUBLIC_PREFIX, IMAP_PUBLIC_PREFIX_LEN) == 0 ||
	       strcmp(name, "Public") == 0;
}

int imap_acl_rights(struct imap_client *c, const char *owner, const struct guid *g,
		    uint32_t *rights_r, const char **error_r)
{
	stor_acl_list list;
	if (stor_acl_get(c->server->db, g, &list, error_r) < 0)
		return -1;
	struct acl_entry *e = xcalloc(list.count + 1, sizeof(*e));
	size_t n = 0;
	for (size_t i = 0; i < list.count; i++) {
		uint32_t bits;
		const char *why;
		/* A tombstone names nobody: not even the owner's default. */
		if (list.items[i].rights[0] == '\0' ||
		    acl_rights_parse(list.items[i].rights, strlen(list.items[i].rights), &bits,
				     &why) < 0)
			continue;
		e[n].identifier = list.items[i].identifier;
		e[n].rights = bits;
		n++;
	}
	*rights_r = acl_evaluate(owner, c->user, c->server->owner_rights, e, n, NULL);
	free(e);
	stor_acl_list_free(&list);
	return 0;
}

/* Gives mb the session's name for a mailbox of owner. */
static void rename_shared(struct stor_mailbox *mb, const char *owner)
{
	char *n = strcmp(owner, ACL_PUBLIC_OWNER) == 0 ?
		xasprintf("%s%s", IMAP_PUBLIC_PREFIX, mb->name) :
		xasprintf("%s%s/%s", IMAP_SHARED_PREFIX, owner, mb->name);
	free(mb->name);
	mb->name = n;
	/* Another user's special-use names their Sent, not ours. */
	mb->special_use[0] = '\0';
}

/* owner's mailbox inner with the session's rights on it: as
 * imap_acl_mailbox_get(), without renaming. */
static int lookup(struct imap_client *c, const char *owner, const char *inner,
		  struct stor_mailbox *mb_r, uint32_t *rights_r, const char **error_r)
{
	int r = stor_mailbox_get(c->server->db, owner, inner, mb_r, error_r);
	if (r <= 0)
		return r;
	if (imap_acl_rights(c, owner, &mb_r->guid, rights_r, error_r) < 0) {
		stor_mailbox_free(mb_r);
		return -1;
	}
	if (*rights_r == 0) {
		stor_mailbox_free(mb_r);
		return 0;
	}
	return 1;
}

int imap_acl_mailbox_get(struct imap_client *c, const char *name, struct stor_mailbox *mb_r,
			 uint32_t *rights_r, const char **error_r)
{
	char *owner = NULL;
	const char *inner = NULL;
	if (strncmp(name, IMAP_PUBLIC_PREFIX, IMAP_PUBLIC_PREFIX_LEN) == 0) {
		if (name[IMAP_PUBLIC_PREFIX_LEN] != '\0') {
			owner = xstrdup(ACL_PUBLIC_OWNER);
			inner = name + IMAP_PUBLIC_PREFIX_LEN;
		}
	} else if (strncmp(name, IMAP_SHARED_PREFIX, IMAP_SHARED_PREFIX_LEN) == 0) {
		/* "shared/OWNER" alone is a level of the namespace, never a
		 * mailbox; nor is one of the user's own names a shared one. */
		const char *o = name + IMAP_SHARED_PREFIX_LEN, *slash = strchr(o, '/'), *why;
		if (slash != NULL && slash != o && slash[1] != '\0') {
			owner = xstrndup(o, (size_t)(slash - o));
			inner = slash + 1;
			if (strcmp(owner, c->user) == 0 ||
			    !acl_identifier_valid(owner, strlen(owner), &why) || owner[0] == '-') {
				free(owner);
				owner = NULL;
			}
		}
	}
	if (owner != NULL) {
		int r = lookup(c, owner, inner, mb_r, rights_r, error_r);
		if (r > 0)
			rename_shared(mb_r, owner);
		free(owner);
		if (r != 0)
			return r;
	}
	/* The user's own mailbox of that name: one made before the
	 * namespaces existed stays reachable where no shared one hides it. */
	return lookup(c, c->user, name, mb_r, rights_r, error_r);
}

bool imap_acl_refuse(struct imap_cmd *cmd, uint32_t rights, uint32_t right, const char *notfound)
{
	if ((rights & ACL_LOOKUP) == 0)
		return imap_cmd_done(cmd, "NO", "%s", notfound);
	char letters[sizeof(ACL_LETTERS)];
	acl_rights_format(right, letters);
	return imap_cmd_done(cmd, "NO", "[NOPERM] You lack the \"%s\" right on this mailbox",
			     letters);
}

uint32_t imap_acl_own_rights(struct imap_client *c, const struct guid *g)
{
	uint32_t rights = 0;
	const char *err;
	if (imap_acl_rights(c, c->user, g, &rights, &err) < 0) {
		log_errorx("imap: reading the ACL: %s", err);
		return 0;
	}
	return rights;
}

uint32_t imap_acl_own_parent_rights(struct imap_client *c, const char *name)
{
	const char *err;
	for (const char *p = strrchr(name, '/'); p != NULL && p > name;) {
		char *parent = xstrndup(name, (size_t)(p - name));
		struct stor_mailbox mb;
		int r = stor_mailbox_get(c->server->db, c->user, parent, &mb, &err);
		free(parent);
		if (r < 0) {
			log_errorx("imap: reading a mailbox: %s", err);
			return 0;
		}
		if (r > 0) {
			uint32_t rights = imap_acl_own_rights(c, &mb.guid);
			stor_mailbox_free(&mb);
			return rights;
		}
		/* The next superior up: the last '/' before p. */
		const char *q = p;
		p = NULL;
		while (q > name) {
			q--;
			if (*q == '/') {
				p = q;
				break;
			}
		}
	}
	return c->server->owner_rights;
}

uint32_t imap_acl_sel_rights(struct imap_client *c)
{
	uint32_t rights = 0;
	const char *err;
	if (c->sel == NULL || c->sel->owner == NULL)
		return 0;
	if (imap_acl_rights(c, c->sel->owner, &c->sel->guid, &rights, &err) < 0) {
		log_errorx("imap: reading the ACL: %s", err);
		return 0;
	}
	return rights;
}

bool imap_acl_selected_ok(struct imap_cmd *cmd)
{
	static const char *const always[] = { "CLOSE", "UNSELECT", "CHECK", "CANCELUPDATE" };
	for (size_t i = 0; i < sizeof(always) / sizeof(always[0]); i++)
		if (strcmp(cmd->name, always[i]) == 0)
			return true;
	uint32_t rights = imap_acl_sel_rights(cmd->client);
	if ((rights & ACL_READ) != 0)
		return true;
	imap_acl_refuse(cmd, rights, ACL_READ, "[NONEXISTENT] Mailbox does not exist");
	return false;
}

static bool have_guid(const stor_share_list *l, size_t before, const struct guid *g)
{
	for (size_t i = 0; i < before; i++)
		if (guid_equal(&l->items[i].mailbox, g))
			return true;
	return false;
}

int imap_acl_list_shared(struct imap_client *c, stor_mailbox_array *mbs, const char **error_r)
{
	stor_share_list shares = ARRAY_INIT;
	static const char *const groups[] = { "anyone", "authenticated" };
	if (stor_acl_shared_with(c->server->db, c->user, &shares, error_r) < 0)
		goto fail;
	for (size_t i = 0; i < sizeof(groups) / sizeof(groups[0]); i++)
		if (stor_acl_shared_with(c->server->db, groups[i], &shares, error_r) < 0)
			goto fail;
	for (size_t i = 0; i < shares.count; i++) {
		const struct stor_share *s = &shares.items[i];
		if (strcmp(s->owner, c->user) == 0 || have_guid(&shares, i, &s->mailbox))
			continue;
		struct stor_mailbox mb;
		int r = stor_mailbox_get_by_guid(c->server->db, &s->mailbox, &mb, error_r);
		if (r < 0)
			goto fail;
		/* A record can arrive before its mailbox's CREATE. */
		if (r == 0)
			continue;
		uint32_t rights;
		if (strcmp(mb.user, s->owner) != 0 ||
		    imap_acl_rights(c, s->owner, &mb.guid, &rights, error_r) < 0 ||
		    (rights & ACL_LOOKUP) == 0) {
			stor_mailbox_free(&mb);
			continue;
		}
		rename_shared(&mb, s->owner);
		ARRAY_PUSH(mbs, mb);
	}
	stor_share_list_free(&shares);
	return 0;
fail:
	stor_share_list_free(&shares);
	return -1;
}

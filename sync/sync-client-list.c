/* The mailbox-list half of a sync: the merge of both sides' lists, and
 * their subscriptions and ACL records, against the last common list
 * (SPEC.md 10.5).  Apart from the per-mailbox sync because it decides
 * which mailboxes exist, and under which names, before any of their
 * messages are looked at.  The last common list (sync-client-list-last.c)
 * and our copy of the server's list (sync-client-list-srv.c) have files of
 * their own. */
#include "sync/sync-client-private.h"

#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/xalloc.h"
#include "storage/storage-acl.h"

/* ---- Mailbox list merge ---- */

/* The server's mailboxes are looked up through their indexes
 * (sync-client-list-srv.c); the other lists of the merge are sorted once
 * and searched with bsearch, so a merge of n mailboxes costs O(n log n)
 * comparisons. */

static int cmp_strp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void str_list_sort(stor_string_list *l)
{
	if (l->count > 1)
		qsort(l->items, l->count, sizeof(char *), cmp_strp);
}

/* l is sorted (str_list_sort). */
static bool str_in(const stor_string_list *l, const char *s)
{
	return l->count > 0 && bsearch(&s, l->items, l->count, sizeof(char *), cmp_strp) != NULL;
}

typedef ARRAY(struct guid) guid_list;

int cmp_guid_v(const void *a, const void *b)
{
	return guid_cmp(a, b);
}

/* l is sorted. */
static bool mb_by_guid(const guid_list *l, const struct guid *g)
{
	return l->count > 0 && bsearch(g, l->items, l->count, sizeof(*g), cmp_guid_v) != NULL;
}

/* The name a mailbox that lost a name clash gets: "<name>-<8 hex of its GUID>". */
static char *clash_name(const char *name, const struct guid *g)
{
	char gh[GUID_HEX_SIZE];
	guid_to_hex(g, gh);
	return xasprintf("%s-%.8s", name, gh);
}

/* Whether name holds a mailbox other than g on the server (server_side)
 * or here. */
static bool name_taken(struct sync_client *c, const char *name, const struct guid *g,
		       bool server_side)
{
	if (server_side) {
		const struct cl_srv_mbox *s = srv_by_name(c, name);
		return s != NULL && guid_cmp(&s->guid, g) != 0;
	}
	struct stor_mailbox mb;
	const char *err;
	if (stor_mailbox_get(c->db, c->user, name, &mb, &err) != 1)
		return false;
	bool other = guid_cmp(&mb.guid, g) != 0;
	stor_mailbox_free(&mb);
	return other;
}

static void send_create(struct sync_client *c, const char *name, const struct guid *g,
			uint32_t uidvalidity, const char *special)
{
	struct proto_wr w;
	uint64_t rstamp = 0;
	const char *err;
	/* The name's stamp goes with it (SPEC.md 10.5): a failed read only
	 * leaves the server's at 0, the stamp of a name never renamed. */
	if (!c->no_rename_stamps && stor_mailbox_rename_stamp(c->db, g, &rstamp, &err) < 0)
		rstamp = 0;
	cl_cmd_begin(c, &w, "CREATE", K_LISTOP, 0);
	proto_wr_cstr(&w, c->user);
	proto_wr_cstr(&w, name);
	proto_wr_guid(&w, g);
	proto_wr_u64(&w, uidvalidity);
	if (special != NULL && special[0] != '\0') {
		proto_wr_atom(&w, "SPECIAL-USE");
		proto_wr_list_begin(&w);
		proto_wr_atom(&w, special);
		proto_wr_list_end(&w);
	}
	if (rstamp != 0) {
		proto_wr_atom(&w, "RSTAMP");
		proto_wr_u64(&w, rstamp);
	}
	cl_cmd_end(c, &w);
	c->report.mailboxes_created++;
	c->list_changed = true;
	/* Known there from now on, for later name checks (its state is
	 * unknown until the next LIST). */
	struct cl_srv_mbox e;
	memset(&e, 0, sizeof(e));
	e.name = xstrdup(name);
	e.guid = *g;
	e.uidvalidity = uidvalidity;
	e.hms = UINT64_MAX;
	srv_add(c, &e);
}

/* rstamp: the stamp the name has (SPEC.md 10.5), or NULL to leave the
 * server's as it is. */
static void send_rename(struct sync_client *c, const char *old, const char *new_name,
			const struct guid *g, const uint64_t *rstamp)
{
	struct proto_wr w;
	cl_cmd_begin(c, &w, "RENAME", K_LISTOP, 0);
	proto_wr_cstr(&w, c->user);
	proto_wr_cstr(&w, old);
	proto_wr_cstr(&w, new_name);
	proto_wr_guid(&w, g);
	if (rstamp != NULL && !c->no_rename_stamps) {
		proto_wr_atom(&w, "RSTAMP");
		proto_wr_u64(&w, *rstamp);
	}
	cl_cmd_end(c, &w);
	c->report.mailboxes_renamed++;
	c->list_changed = true;
	srv_set_name(c, g, new_name);
}

static int local_create(struct sync_client *c, const struct cl_srv_mbox *s, const char *name)
{
	const char *err;
	struct stor_mailbox_create req = {
		.user = c->user, .name = name, .guid = &s->guid, .uidvalidity = s->uidvalidity,
		.special_use = s->special[0] != '\0' ? s->special : NULL,
	};
	if (stor_mailbox_create(c->db, &req, NULL, &err) < 0)
		return cl_fail(c, "creating %s: %s", name, err);
	/* Copied, as for a rename taken from the server (SPEC.md 10.5). */
	if (s->has_rstamp && s->rstamp != 0 &&
	    stor_mailbox_rename_stamped(c->db, &s->guid, name, s->rstamp, &err) < 0)
		return cl_fail(c, "creating %s: %s", name, err);
	c->report.mailboxes_created++;
	return 0;
}

/* Merges the mailbox lists and subscriptions (SPEC.md 10.5). */
/* Whether a copy (uidnext, hms) of a mailbox the other side deleted goes
 * too.  The tombstone keeps what the deleted mailbox held: the delete wins
 * over a copy with nothing beyond that, and a change beats a delete.  A
 * tombstone that does not know it (the delete of a mailbox that side never
 * held) is judged against the last common list: unchanged since, it goes. */
static bool delete_wins(uint32_t uidnext, uint64_t hms, uint32_t tomb_uidnext, uint64_t tomb_hms,
			const struct cl_last_mbox *l)
{
	if (tomb_uidnext != 0)
		return uidnext <= tomb_uidnext && hms <= tomb_hms;
	return l != NULL && uidnext == l->uidnext && hms == l->hms;
}

/* Whether record (t, rights) wins over (t2, rights2): the rule of
 * stor_acl_put() (SPEC.md 7.6), so both sides end with the same one. */
static bool acl_newer(int64_t t, const char *rights, int64_t t2, const char *rights2)
{
	return t > t2 || (t == t2 && strcmp(rights, rights2) > 0);
}

/* 5. ACL records: the newer of each pair wins, so taking the server's
 * where they are newer and sending ours where they are newer (or the
 * server lacks them) leaves both with the same records.  Records of the
 * mailboxes held before the merge are sent; those just created here came
 * from the server. */
static int acl_merge(struct sync_client *c, const stor_mailbox_array *mbs)
{
	const char *err;
	for (size_t i = 0; i < c->srv_acls.count; i++) {
		const struct cl_srv_acl *a = &c->srv_acls.items[i];
		bool applied;
		if (stor_acl_put(c->db, c->user, &a->guid, a->identifier, a->rights, a->time_ms,
				 &applied, &err) < 0)
			return cl_fail(c, "ACL: %s", err);
		if (applied)
			c->report.acls_changed++;
	}
	for (size_t i = 0; i < mbs->count; i++) {
		stor_acl_list acl;
		if (stor_acl_get(c->db, &mbs->items[i].guid, &acl, &err) < 0)
			return cl_fail(c, "%s", err);
		for (size_t j = 0; j < acl.count; j++) {
			const struct stor_acl *r = &acl.items[j];
			const struct cl_srv_acl *s = NULL;
			for (size_t k = 0; k < c->srv_acls.count && s == NULL; k++) {
				if (guid_equal(&c->srv_acls.items[k].guid, &mbs->items[i].guid) &&
				    strcmp(c->srv_acls.items[k].identifier, r->identifier) == 0)
					s = &c->srv_acls.items[k];
			}
			if (s != NULL && !acl_newer(r->time_ms, r->rights, s->time_ms, s->rights))
				continue;
			struct proto_wr w;
			cl_cmd_begin(c, &w, "ACL-PUT", K_LISTOP, 0);
			proto_wr_cstr(&w, c->user);
			proto_wr_guid(&w, &mbs->items[i].guid);
			proto_wr_cstr(&w, r->identifier);
			proto_wr_cstr(&w, r->rights);
			proto_wr_u64(&w, (uint64_t)r->time_ms);
			cl_cmd_end(c, &w);
			c->report.acls_changed++;
		}
		stor_acl_list_free(&acl);
	}
	return 0;
}

int list_merge(struct sync_client *c)
{
	stor_mailbox_array mbs;
	stor_string_list subs;
	cl_last_list last;
	stor_string_list last_subs;
	const char *err;
	int ret = 0;
	if (last_list_read(c, &last, &last_subs) < 0)
		return -1;
	if (stor_mailbox_list(c->db, c->user, &mbs, &err) < 0) {
		last_list_free(&last, &last_subs);
		return cl_fail(c, "%s", err);
	}
	cl_new_group(c);
	c->list_changed = false;
	guid_list by_guid = ARRAY_INIT;
	for (size_t i = 0; i < mbs.count; i++)
		ARRAY_PUSH(&by_guid, mbs.items[i].guid);
	if (by_guid.count > 1)
		qsort(by_guid.items, by_guid.count, sizeof(struct guid), cmp_guid_v);
	if (c->srv_deleted.count > 1)
		qsort(c->srv_deleted.items, c->srv_deleted.count, sizeof(c->srv_deleted.items[0]),
		      cmp_guid_v);
	str_list_sort(&last_subs);
	str_list_sort(&c->srv_subs);

	/* 1. Name clashes: a mailbox new on each side under the same name.
	 * The lower GUID keeps the name. */
	for (size_t i = 0; i < mbs.count && ret == 0; i++) {
		struct stor_mailbox *mb = &mbs.items[i];
		if (srv_by_guid(c, &mb->guid) != NULL || last_by_guid(&last, &mb->guid) != NULL)
			continue;
		const struct cl_srv_mbox *s = srv_by_name(c, mb->name);
		if (s == NULL)
			continue;
		if (mb_by_guid(&by_guid, &s->guid))
			continue; /* not new there: we have it too, under another name */
		if (guid_cmp(&mb->guid, &s->guid) > 0) {
			char *nn = clash_name(mb->name, &mb->guid);
			log_info("sync %s: mailbox %s exists on both sides with different GUIDs; "
				 "ours becomes %s", c->user, mb->name, nn);
			if (stor_mailbox_rename(c->db, &mb->guid, nn, &err) < 0)
				ret = cl_fail(c, "renaming %s: %s", mb->name, err);
			else {
				free(mb->name);
				mb->name = nn;
				c->report.mailboxes_renamed++;
			}
			if (ret < 0)
				free(nn);
		} else {
			char *nn = clash_name(s->name, &s->guid);
			char *old = xstrdup(s->name);
			struct guid sg = s->guid;
			log_info("sync %s: mailbox %s exists on both sides with different GUIDs; "
				 "the peer's becomes %s", c->user, old, nn);
			send_rename(c, old, nn, &sg, NULL);
			free(old);
			free(nn);
		}
	}

	/* 2. Mailboxes we have. */
	for (size_t i = 0; i < mbs.count && ret == 0; i++) {
		const struct stor_mailbox *mb = &mbs.items[i];
		const struct cl_srv_mbox *s = srv_by_guid(c, &mb->guid);
		const struct cl_last_mbox *l = last_by_guid(&last, &mb->guid);
		if (s != NULL) {
			if (strcmp(s->name, mb->name) == 0)
				continue;
			/* We renamed it if the server still has the remembered
			 * name; else the peer did, or both did: the server's
			 * name wins.  A target name held by another mailbox on
			 * the target side makes it "<name>-<8 hex>" on both. */
			bool ours = l != NULL && strcmp(l->name, s->name) == 0;
			uint64_t my_stamp;
			if (stor_mailbox_rename_stamp(c->db, &mb->guid, &my_stamp, &err) < 0) {
				ret = cl_fail(c, "%s", err);
				continue;
			}
			/* Not in our common list: it reached the server by
			 * another way (a third node, a bundle), so the list
			 * says nothing.  Likewise when both names differ from
			 * the list's: a rename of ours may have reached the
			 * server by live replication, with no sync since to
			 * update the list, and a later one of ours not; or
			 * each side took a rename the other never had from
			 * a third node.  The rename stamps order the two
			 * names (the higher is the later rename); without
			 * them (a 1.0 server) or on a tie, a server name we
			 * renamed the mailbox away from is older than ours,
			 * and otherwise the server's name wins. */
			if (l == NULL || (!ours && strcmp(l->name, mb->name) != 0)) {
				if (s->has_rstamp && s->rstamp != my_stamp) {
					ours = my_stamp > s->rstamp;
				} else {
					int r = stor_mailbox_old_name(c->db, &mb->guid, s->name,
								      &err);
					if (r < 0) {
						ret = cl_fail(c, "%s", err);
						continue;
					}
					ours = r > 0;
				}
			}
			const char *target = ours ? mb->name : s->name;
			char *nn = NULL;
			if (name_taken(c, target, &mb->guid, ours)) {
				nn = clash_name(target, &mb->guid);
				target = nn;
			}
			/* The name keeps its stamp wherever it goes: the
			 * server's is copied here, not renewed, so that a
			 * third node comparing it later sees the rename's
			 * own time. */
			uint64_t stamp = ours || !s->has_rstamp ? my_stamp : s->rstamp;
			if (strcmp(target, mb->name) != 0 || stamp != my_stamp) {
				if (stor_mailbox_rename_stamped(c->db, &mb->guid, target, stamp,
								&err) < 0)
					ret = cl_fail(c, "renaming %s: %s", mb->name, err);
				if (strcmp(target, mb->name) != 0)
					c->report.mailboxes_renamed++;
			}
			if (ret == 0 && strcmp(target, s->name) != 0)
				send_rename(c, s->name, target, &mb->guid, &stamp);
			free(nn);
			continue;
		}
		const struct cl_srv_tomb *st =
			c->srv_deleted.count == 0 ? NULL :
			bsearch(&mb->guid, c->srv_deleted.items, c->srv_deleted.count,
				sizeof(c->srv_deleted.items[0]), cmp_guid_v);
		if (st != NULL && delete_wins(mb->uidnext, mb->highestmodseq, st->uidnext, st->hms, l)) {
			/* Deleted on the peer, and nothing here is newer than
			 * what it deleted.  Without the peer's tombstone it
			 * never had it or lost it (its store was wiped or
			 * restored): it gets it back. */
			if (stor_mailbox_delete(c->db, &mb->guid, &err) < 0)
				ret = cl_fail(c, "deleting %s: %s", mb->name, err);
			c->report.mailboxes_deleted++;
			continue;
		}
		/* New here, lost there, or deleted there but changed here since:
		 * (re)create. */
		if (name_taken(c, mb->name, &mb->guid, true)) {
			char *nn = clash_name(mb->name, &mb->guid);
			if (stor_mailbox_rename(c->db, &mb->guid, nn, &err) < 0)
				ret = cl_fail(c, "renaming %s: %s", mb->name, err);
			else
				send_create(c, nn, &mb->guid, mb->uidvalidity, mb->special_use);
			c->report.mailboxes_renamed++;
			free(nn);
			continue;
		}
		send_create(c, mb->name, &mb->guid, mb->uidvalidity, mb->special_use);
	}

	/* 3. Mailboxes only the server has. */
	for (size_t i = 0; i < c->srv.count && ret == 0; i++) {
		const struct cl_srv_mbox *s = &c->srv.items[i];
		if (mb_by_guid(&by_guid, &s->guid))
			continue;
		const struct cl_last_mbox *l = last_by_guid(&last, &s->guid);
		uint32_t tu = 0;
		uint64_t th = 0;
		int gone = stor_mailbox_tomb_get(c->db, c->user, &s->guid, &tu, &th, &err);
		if (gone < 0) {
			ret = cl_fail(c, "%s", err);
			break;
		}
		if (gone > 0 && delete_wins(s->uidnext, s->hms, tu, th, l)) {
			struct proto_wr w;
			cl_cmd_begin(c, &w, "DELETE", K_LISTOP, 0);
			proto_wr_cstr(&w, c->user);
			proto_wr_cstr(&w, s->name);
			proto_wr_guid(&w, &s->guid);
			cl_cmd_end(c, &w);
			c->report.mailboxes_deleted++;
			c->list_changed = true;
			continue;
		}
		if (name_taken(c, s->name, &s->guid, false)) {
			char *nn = clash_name(s->name, &s->guid);
			send_rename(c, s->name, nn, &s->guid, NULL);
			ret = local_create(c, s, nn);
			free(nn);
			continue;
		}
		ret = local_create(c, s, s->name);
	}

	/* 4. Subscriptions: a three-way merge with the last common set; as
	 * for mailboxes, a name goes only where the other side unsubscribed
	 * it (its tombstone), not where it is merely missing. */
	stor_string_list unsubs = ARRAY_INIT;
	str_list_sort(&c->srv_unsubs);
	if (ret == 0 && (stor_subscriptions(c->db, c->user, &subs, &err) < 0 ||
			 stor_unsubscribed(c->db, c->user, &unsubs, &err) < 0))
		ret = cl_fail(c, "%s", err);
	else if (ret == 0) {
		str_list_sort(&subs);
		for (size_t i = 0; i < subs.count && ret == 0; i++) {
			const char *n = subs.items[i];
			if (str_in(&c->srv_subs, n))
				continue;
			if (str_in(&last_subs, n) && str_in(&c->srv_unsubs, n)) {
				if (stor_subscribe(c->db, c->user, n, false, &err) < 0)
					ret = cl_fail(c, "%s", err);
			} else {
				struct proto_wr w;
				cl_cmd_begin(c, &w, "SUBSCRIBE", K_LISTOP, 0);
				proto_wr_cstr(&w, c->user);
				proto_wr_cstr(&w, n);
				cl_cmd_end(c, &w);
			}
			c->report.subscriptions_changed++;
		}
		for (size_t i = 0; i < c->srv_subs.count && ret == 0; i++) {
			const char *n = c->srv_subs.items[i];
			if (str_in(&subs, n))
				continue;
			if (str_in(&last_subs, n) && str_in(&unsubs, n)) {
				struct proto_wr w;
				cl_cmd_begin(c, &w, "UNSUBSCRIBE", K_LISTOP, 0);
				proto_wr_cstr(&w, c->user);
				proto_wr_cstr(&w, n);
				cl_cmd_end(c, &w);
			} else if (stor_subscribe(c->db, c->user, n, true, &err) < 0) {
				ret = cl_fail(c, "%s", err);
			}
			c->report.subscriptions_changed++;
		}
		stor_string_list_free(&subs);
	}
	stor_string_list_free(&unsubs);
	if (ret == 0)
		ret = acl_merge(c, &mbs);
	stor_mailbox_list_free(&mbs);
	ARRAY_FREE(&by_guid);
	last_list_free(&last, &last_subs);
	return ret;
}

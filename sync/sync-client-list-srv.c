/* Our copy of the server's mailbox list in a sync: the LIST command, the
 * lines of its answer (mailboxes, subscriptions, tombstones, ACL records),
 * and the indexes by GUID and by name that the merge (sync-client-list.c)
 * looks the server's mailboxes up in and keeps in step with the CREATE and
 * RENAME commands it sends.  Apart from the merge because it only reads
 * and indexes what the server said. */
#include "sync/sync-client-private.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/xalloc.h"
#include "storage/acl-rights.h"

/* ---- The server's mailbox list ---- */

/* The server's mailboxes are looked up through two sorted index arrays,
 * in O(log n) comparisons each. */
typedef ARRAY(uint32_t) srv_index;
typedef int srv_key_cmp(const struct sync_client *c, uint32_t i, const void *key);

static int srv_key_guid(const struct sync_client *c, uint32_t i, const void *key)
{
	return guid_cmp(&c->srv.items[i].guid, key);
}

static int srv_key_name(const struct sync_client *c, uint32_t i, const void *key)
{
	return strcmp(c->srv.items[i].name, key);
}

static size_t srv_lower(const struct sync_client *c, const srv_index *ix, srv_key_cmp *cmp,
			const void *key)
{
	size_t lo = 0, hi = ix->count;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (cmp(c, ix->items[mid], key) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static const struct cl_srv_mbox *srv_find(const struct sync_client *c, const srv_index *ix,
					  srv_key_cmp *cmp, const void *key)
{
	size_t p = srv_lower(c, ix, cmp, key);
	if (p < ix->count && cmp(c, ix->items[p], key) == 0)
		return &c->srv.items[ix->items[p]];
	return NULL;
}

static void srv_index_insert(struct sync_client *c, srv_index *ix, srv_key_cmp *cmp,
			     const void *key, uint32_t i)
{
	size_t p = srv_lower(c, ix, cmp, key);
	ARRAY_PUSH(ix, i);
	memmove(ix->items + p + 1, ix->items + p, (ix->count - 1 - p) * sizeof(uint32_t));
	ix->items[p] = i;
}

static void srv_index_remove(struct sync_client *c, srv_index *ix, srv_key_cmp *cmp,
			     const void *key, uint32_t i)
{
	for (size_t p = srv_lower(c, ix, cmp, key); p < ix->count; p++) {
		if (ix->items[p] == i) {
			memmove(ix->items + p, ix->items + p + 1, (ix->count - 1 - p) * sizeof(uint32_t));
			ix->count--;
			return;
		}
		if (cmp(c, ix->items[p], key) != 0)
			return;
	}
}

static int ix_cmp_guid(const void *a, const void *b, void *ctx)
{
	const struct sync_client *c = ctx;
	return guid_cmp(&c->srv.items[*(const uint32_t *)a].guid,
			&c->srv.items[*(const uint32_t *)b].guid);
}

static int ix_cmp_name(const void *a, const void *b, void *ctx)
{
	const struct sync_client *c = ctx;
	return strcmp(c->srv.items[*(const uint32_t *)a].name,
		      c->srv.items[*(const uint32_t *)b].name);
}

/* After a LIST answer: sorts both indexes. */
void srv_index_build(struct sync_client *c)
{
	c->srv_by_guid_ix.count = c->srv_by_name_ix.count = 0;
	for (uint32_t i = 0; i < c->srv.count; i++) {
		ARRAY_PUSH(&c->srv_by_guid_ix, i);
		ARRAY_PUSH(&c->srv_by_name_ix, i);
	}
	if (c->srv.count > 1) {
		qsort_r(c->srv_by_guid_ix.items, c->srv.count, sizeof(uint32_t), ix_cmp_guid, c);
		qsort_r(c->srv_by_name_ix.items, c->srv.count, sizeof(uint32_t), ix_cmp_name, c);
	}
}

/* Adds a server mailbox (taking name) to the list and the indexes. */
void srv_add(struct sync_client *c, struct cl_srv_mbox *e)
{
	uint32_t i = (uint32_t)c->srv.count;
	ARRAY_PUSH(&c->srv, *e);
	srv_index_insert(c, (srv_index *)&c->srv_by_guid_ix, srv_key_guid, &e->guid, i);
	srv_index_insert(c, (srv_index *)&c->srv_by_name_ix, srv_key_name, e->name, i);
}

/* Renames the server's mailbox g in our copy of its list. */
void srv_set_name(struct sync_client *c, const struct guid *g, const char *new_name)
{
	const struct cl_srv_mbox *s = srv_find(c, (const srv_index *)&c->srv_by_guid_ix,
					       srv_key_guid, g);
	if (s == NULL)
		return;
	uint32_t i = (uint32_t)(s - c->srv.items);
	char *old = c->srv.items[i].name;
	srv_index_remove(c, (srv_index *)&c->srv_by_name_ix, srv_key_name, old, i);
	c->srv.items[i].name = xstrdup(new_name);
	free(old);
	srv_index_insert(c, (srv_index *)&c->srv_by_name_ix, srv_key_name,
			 c->srv.items[i].name, i);
}

const struct cl_srv_mbox *srv_by_guid(const struct sync_client *c, const struct guid *g)
{
	return srv_find(c, (const srv_index *)&c->srv_by_guid_ix, srv_key_guid, g);
}

const struct cl_srv_mbox *srv_by_name(const struct sync_client *c, const char *name)
{
	return srv_find(c, (const srv_index *)&c->srv_by_name_ix, srv_key_name, name);
}

void send_list(struct sync_client *c)
{
	struct proto_wr w;
	srv_list_free(c);
	cl_new_group(c);
	cl_cmd_begin(c, &w, "LIST", K_LIST, 0);
	proto_wr_cstr(&w, c->user);
	cl_cmd_end(c, &w);
}

int on_list_line(struct sync_client *c, const struct proto_cmd *line)
{
	struct cl_srv_mbox m;
	const char *s;
	size_t len;
	memset(&m, 0, sizeof(m));
	if (c->srv.count + c->srv_subs.count >= SYNC_MAX_MAILBOXES)
		return cl_fail(c, "LIST: too many mailboxes");
	if (proto_cmd_is(line, "SUBSCRIBED")) {
		if (line->arg_count != 1 || proto_arg_str(&line->args[0], &s, &len) < 0 ||
		    len > STOR_MAX_MAILBOX_NAME_LEN)
			return cl_fail(c, "LIST: bad SUBSCRIBED line");
		ARRAY_PUSH(&c->srv_subs, xstrdup(s));
		return 0;
	}
	if (proto_cmd_is(line, "UNSUBSCRIBED")) {
		if (line->arg_count != 1 || proto_arg_str(&line->args[0], &s, &len) < 0 ||
		    len > STOR_MAX_MAILBOX_NAME_LEN || c->srv_unsubs.count >= SYNC_MAX_MAILBOXES)
			return cl_fail(c, "LIST: bad UNSUBSCRIBED line");
		ARRAY_PUSH(&c->srv_unsubs, xstrdup(s));
		return 0;
	}
	if (proto_cmd_is(line, "ACL")) {
		struct cl_srv_acl a;
		const char *id, *rights, *why;
		size_t idlen, rlen;
		uint64_t t;
		uint32_t bits;
		if (line->arg_count != 4 || proto_arg_guid(&line->args[0], &a.guid) < 0 ||
		    proto_arg_str(&line->args[1], &id, &idlen) < 0 ||
		    !acl_identifier_valid(id, idlen, &why) || memchr(id, '\0', idlen) != NULL ||
		    proto_arg_str(&line->args[2], &rights, &rlen) < 0 ||
		    memchr(rights, '\0', rlen) != NULL || acl_rights_parse(rights, rlen, &bits, &why) < 0 ||
		    proto_arg_u64(&line->args[3], INT64_MAX, &t) < 0)
			return cl_fail(c, "LIST: bad ACL line");
		if (c->srv_acls.count >= SYNC_MAX_MAILBOXES * (size_t)4)
			return cl_fail(c, "LIST: too many ACL lines");
		a.identifier = xstrdup(id);
		a.rights = xstrdup(rights);
		a.time_ms = (int64_t)t;
		ARRAY_PUSH(&c->srv_acls, a);
		return 0;
	}
	if (proto_cmd_is(line, "DELETED")) {
		struct cl_srv_tomb t;
		uint64_t v = 0;
		memset(&t, 0, sizeof(t));
		if ((line->arg_count != 1 && line->arg_count != 3) ||
		    proto_arg_guid(&line->args[0], &t.guid) < 0 ||
		    (line->arg_count == 3 &&
		     (proto_arg_u32(&line->args[1], &t.uidnext) < 0 ||
		      proto_arg_u64(&line->args[2], INT64_MAX, &v) < 0 ||
		      !mail_modseq_valid(v) || t.uidnext > MAIL_UIDNEXT_MAX)))
			return cl_fail(c, "LIST: bad DELETED line");
		t.hms = v;
		if (c->srv_deleted.count >= SYNC_MAX_MAILBOXES)
			return cl_fail(c, "LIST: too many DELETED lines");
		ARRAY_PUSH(&c->srv_deleted, t);
		return 0;
	}
	struct guid digest;
	uint64_t v;
	if (!proto_cmd_is(line, "MAILBOX") || (line->arg_count != 7 && line->arg_count != 9) ||
	    proto_arg_str(&line->args[0], &s, &len) < 0 || len > STOR_MAX_MAILBOX_NAME_LEN ||
	    proto_arg_guid(&line->args[1], &m.guid) < 0 ||
	    proto_arg_u32(&line->args[2], &m.uidvalidity) < 0 ||
	    proto_arg_u32(&line->args[3], &m.uidnext) < 0 ||
	    proto_arg_u64(&line->args[4], INT64_MAX, &v) < 0 ||
	    proto_arg_guid(&line->args[5], &digest) < 0 ||
	    line->args[6].type != PROTO_ARG_ATOM || line->args[6].len >= sizeof(m.special))
		return cl_fail(c, "LIST: bad MAILBOX line");
	if (line->arg_count == 9) {
		if (line->args[7].type != PROTO_ARG_ATOM || strcasecmp(line->args[7].str, "RSTAMP") != 0 ||
		    proto_arg_u64(&line->args[8], INT64_MAX, &m.rstamp) < 0)
			return cl_fail(c, "LIST: bad MAILBOX line");
		m.has_rstamp = true;
	}
	if (!mail_uidnext_valid(m.uidnext) || !mail_modseq_valid(v))
		return cl_fail(c, "LIST: MAILBOX line with %s", MAIL_LIMITS_TEXT);
	m.hms = v;
	memcpy(m.digest, digest.b, sizeof(m.digest));
	if (strcmp(line->args[6].str, "NIL") != 0)
		memcpy(m.special, line->args[6].str, line->args[6].len + 1);
	m.name = xstrdup(s);
	ARRAY_PUSH(&c->srv, m);
	return 0;
}

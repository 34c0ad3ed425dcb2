/* The last common mailbox list of a user with a peer, kept in stor_meta:
 * written when a sync completes, read by the merge (sync-client-list.c),
 * which tells by it a rename or a delete on one side from a mailbox new
 * on the other.  Apart because it is the merge's memory from one sync to
 * the next, with a stored format of its own. */
#include "sync/sync-client-private.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "lib/str.h"
#include "lib/xalloc.h"

/* ---- The last common mailbox list (stor_meta) ---- */

static char *last_list_key(const struct sync_client *c)
{
	return xasprintf("sync.list.%u.%s", c->peer, c->user);
}

void last_list_free(cl_last_list *l, stor_string_list *subs)
{
	for (size_t i = 0; i < l->count; i++)
		free(l->items[i].name);
	ARRAY_FREE(l);
	for (size_t i = 0; i < subs->count; i++)
		free(subs->items[i]);
	ARRAY_FREE(subs);
}

static char *hex_to_str(const char *hex, size_t len)
{
	if (len % 2 != 0)
		return NULL;
	char *s = xmalloc(len / 2 + 1);
	if (hex_decode(hex, len, (unsigned char *)s, len / 2) < 0) {
		free(s);
		return NULL;
	}
	s[len / 2] = '\0';
	return s;
}

static int cmp_last_guid(const void *a, const void *b)
{
	return guid_cmp(&((const struct cl_last_mbox *)a)->guid,
			&((const struct cl_last_mbox *)b)->guid);
}

/* Lines "M guid uidnext hms hexname" and "S hexname". */
int last_list_read(struct sync_client *c, cl_last_list *l_r, stor_string_list *subs_r)
{
	struct buf v = BUF_INIT;
	const char *err;
	char *key = last_list_key(c);
	memset(l_r, 0, sizeof(*l_r));
	memset(subs_r, 0, sizeof(*subs_r));
	int r = stor_meta_get(c->db, key, &v, &err);
	free(key);
	if (r < 0) {
		buf_free(&v);
		return cl_fail(c, "reading the last mailbox list: %s", err);
	}
	buf_append_byte(&v, '\n');
	char *line;
	size_t len;
	while ((line = buf_getline(&v, &len)) != NULL) {
		char *f[5], *save = NULL;
		size_t nf = 0;
		for (char *tok = strtok_r(line, " ", &save); tok != NULL && nf < 5;
		     tok = strtok_r(NULL, " ", &save))
			f[nf++] = tok;
		struct cl_last_mbox e;
		uint64_t u, m;
		if (nf == 5 && strcmp(f[0], "M") == 0 && guid_from_hex(f[1], &e.guid) == 0 &&
		    str_to_u64(f[2], UINT32_MAX, &u) == 0 && str_to_u64(f[3], INT64_MAX, &m) == 0 &&
		    (e.name = hex_to_str(f[4], strlen(f[4]))) != NULL) {
			e.uidnext = (uint32_t)u;
			e.hms = m;
			ARRAY_PUSH(l_r, e);
		} else if (nf == 2 && strcmp(f[0], "S") == 0) {
			char *name = hex_to_str(f[1], strlen(f[1]));
			if (name != NULL)
				ARRAY_PUSH(subs_r, name);
		}
	}
	buf_free(&v);
	if (l_r->count > 1)
		qsort(l_r->items, l_r->count, sizeof(struct cl_last_mbox), cmp_last_guid);
	return 0;
}

int last_list_write(struct sync_client *c)
{
	stor_mailbox_array mbs;
	stor_string_list subs;
	const char *err;
	struct buf v = BUF_INIT;
	if (stor_mailbox_list(c->db, c->user, &mbs, &err) < 0)
		return cl_fail(c, "%s", err);
	if (stor_subscriptions(c->db, c->user, &subs, &err) < 0) {
		stor_mailbox_list_free(&mbs);
		return cl_fail(c, "%s", err);
	}
	for (size_t i = 0; i < mbs.count; i++) {
		char gh[GUID_HEX_SIZE];
		/* The name both sides hold is the server's as its last LIST
		 * gave it (the merge made ours equal to it).  Ours differs
		 * only by a rename made here during the sync, after the merge,
		 * that the server may never get (its live RENAME lost or
		 * refused): recorded as common, the next merge would take the
		 * server's name for a later rename of the server's and undo
		 * the user's (seed 9721). */
		const struct cl_srv_mbox *s = srv_by_guid(c, &mbs.items[i].guid);
		const char *name = s != NULL ? s->name : mbs.items[i].name;
		size_t nl = strlen(name);
		char *nh = xmalloc(nl * 2 + 1);
		hex_encode((const unsigned char *)name, nl, nh);
		guid_to_hex(&mbs.items[i].guid, gh);
		buf_appendf(&v, "M %s %u %" PRIu64 " %s\n", gh, mbs.items[i].uidnext,
			    mbs.items[i].highestmodseq, nh);
		free(nh);
	}
	for (size_t i = 0; i < subs.count; i++) {
		size_t nl = strlen(subs.items[i]);
		char *nh = xmalloc(nl * 2 + 1);
		hex_encode((const unsigned char *)subs.items[i], nl, nh);
		buf_appendf(&v, "S %s\n", nh);
		free(nh);
	}
	stor_mailbox_list_free(&mbs);
	stor_string_list_free(&subs);
	char *key = last_list_key(c);
	int r = stor_meta_set(c->db, key, v.data, v.len, &err);
	free(key);
	buf_free(&v);
	return r < 0 ? cl_fail(c, "saving the mailbox list: %s", err) : 0;
}

/* l is sorted by GUID (last_list_read). */
const struct cl_last_mbox *last_by_guid(const cl_last_list *l, const struct guid *g)
{
	struct cl_last_mbox key;
	if (l->count == 0)
		return NULL;
	key.guid = *g;
	return bsearch(&key, l->items, l->count, sizeof(key), cmp_last_guid);
}

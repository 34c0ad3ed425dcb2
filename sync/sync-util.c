/* Flag lists and UID sets as the sync commands carry them. */
#include "sync/sync-private.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/xalloc.h"

/* Storage keeps the bits and limits of the wire's flag lists, so a list
 * read from a peer fits the store as it is. */
_Static_assert(PROTO_FLAG_SEEN == STOR_FLAG_SEEN && PROTO_FLAG_ANSWERED == STOR_FLAG_ANSWERED &&
		       PROTO_FLAG_FLAGGED == STOR_FLAG_FLAGGED &&
		       PROTO_FLAG_DELETED == STOR_FLAG_DELETED &&
		       PROTO_FLAG_DRAFT == STOR_FLAG_DRAFT && PROTO_FLAGS_ALL == STOR_FLAGS_ALL,
	       "flag bits differ between protocol and storage");
_Static_assert(PROTO_MAX_KEYWORDS == STOR_MAX_KEYWORDS &&
		       PROTO_MAX_KEYWORD_LEN == STOR_MAX_KEYWORD_LEN,
	       "keyword limits differ between protocol and storage");

void sync_flags_free(struct sync_flags *f)
{
	stor_string_list_free(&f->keywords);
	f->flags = 0;
}

void sync_wr_flags(struct proto_wr *w, uint32_t flags, const stor_string_list *keywords)
{
	proto_wr_flags(w, flags, keywords == NULL ? NULL : (const char *const *)keywords->items,
		       keywords == NULL ? 0 : keywords->count);
}

void sync_flags_take(struct sync_flags *f_r, struct proto_flags *pf)
{
	f_r->flags = pf->flags;
	f_r->keywords.items = pf->keywords.items;
	f_r->keywords.count = pf->keywords.count;
	f_r->keywords.cap = pf->keywords.cap;
	memset(pf, 0, sizeof(*pf));
}

int sync_arg_flags(const struct proto_arg *a, struct sync_flags *f_r)
{
	struct proto_flags pf;
	memset(f_r, 0, sizeof(*f_r));
	if (proto_arg_flags(a, &pf) < 0)
		return -1;
	sync_flags_take(f_r, &pf);
	return 0;
}

void sync_save_of_msg(struct proto_save *sv_r, const struct stor_msg *m)
{
	memset(sv_r, 0, sizeof(*sv_r));
	sv_r->date = m->internaldate;
	sv_r->tz = m->internaldate_tz;
	sv_r->uid = m->uid;
	sv_r->modseq = m->modseq;
	sv_r->guid = m->guid;
	sv_r->f.flags = m->flags;
	sv_r->f.keywords.items = m->keywords.items;
	sv_r->f.keywords.count = m->keywords.count;
	sv_r->f.keywords.cap = m->keywords.cap;
}

bool sync_flags_equal(uint32_t f1, const stor_string_list *k1, uint32_t f2,
		      const stor_string_list *k2)
{
	if (f1 != f2 || k1->count != k2->count)
		return false;
	/* Keywords are sorted and unique in the store; compare as sets all
	 * the same, since a peer's order is not ours. */
	for (size_t i = 0; i < k1->count; i++) {
		if (!stor_keywords_have(k2, k1->items[i]))
			return false;
	}
	return true;
}

int sync_arg_uids(const struct proto_arg *a, size_t max, stor_uid_list *uids_r)
{
	if (proto_arg_uids(a, max, &uids_r->items, &uids_r->count) < 0) {
		uids_r->cap = 0;
		return -1;
	}
	uids_r->cap = uids_r->count;
	return 0;
}

void sync_wr_stamps(struct proto_wr *w, const stor_stamp_list *stamps)
{
	if (stamps->count == 0)
		return;
	proto_wr_atom(w, "STAMPS");
	proto_wr_list_begin(w);
	for (size_t i = 0; i < stamps->count; i++) {
		proto_wr_atom(w, stamps->items[i].name);
		proto_wr_u64(w, stamps->items[i].modseq);
		proto_wr_u64(w, (uint64_t)stamps->items[i].time_ms);
	}
	proto_wr_list_end(w);
}

int sync_arg_stamps(const struct proto_arg *a, stor_stamp_list *out)
{
	stor_stamp_list l = ARRAY_INIT;
	if (a->type != PROTO_ARG_LIST || a->count % 3 != 0 || a->count / 3 > STOR_MAX_STAMPS)
		return -1;
	for (size_t i = 0; i < a->count; i += 3) {
		const struct proto_arg *n = &a->list[i];
		struct stor_stamp st;
		uint64_t ms, t;
		uint32_t bit;
		if (n->type != PROTO_ARG_ATOM || n->len == 0 || n->len > STOR_MAX_KEYWORD_LEN ||
		    proto_arg_u64(&a->list[i + 1], INT64_MAX, &ms) < 0 ||
		    proto_arg_u64(&a->list[i + 2], INT64_MAX, &t) < 0)
			goto fail;
		const char *name = n->str;
		if (name[0] == '\\') {
			if (proto_flag_from_name(name, &bit) == 0)
				name = stor_flag_name((enum stor_flag)bit);
			else if (strcmp(name, STOR_STAMP_ALL) != 0)
				goto fail;
		}
		for (size_t j = 0; j < l.count; j++) {
			if (strcasecmp(l.items[j].name, name) == 0)
				goto fail;
		}
		st.name = xstrdup(name);
		st.modseq = ms;
		st.time_ms = (int64_t)t;
		ARRAY_PUSH(&l, st);
	}
	*out = l;
	return 0;
fail:
	stor_stamp_list_free(&l);
	return -1;
}

int sync_cmd_stamps(const struct proto_cmd *cmd, size_t npos, bool *given_r,
		    stor_stamp_list *out)
{
	*given_r = false;
	memset(out, 0, sizeof(*out));
	if (cmd->arg_count == npos)
		return 0;
	if (cmd->arg_count != npos + 2 || cmd->args[npos].type != PROTO_ARG_ATOM ||
	    strcasecmp(cmd->args[npos].str, "STAMPS") != 0 ||
	    sync_arg_stamps(&cmd->args[npos + 1], out) < 0)
		return -1;
	*given_r = true;
	return 0;
}

static int uexp_cmp(const void *a, const void *b)
{
	uint32_t x = ((const struct sync_uexp *)a)->uid, y = ((const struct sync_uexp *)b)->uid;
	return x < y ? -1 : x > y;
}

void sync_uexp_sort(sync_uexp_list *l)
{
	if (l->count == 0)
		return;
	/* Stable for equal UIDs is not needed: one tombstone per UID. */
	qsort(l->items, l->count, sizeof(l->items[0]), uexp_cmp);
	size_t n = 1;
	for (size_t i = 1; i < l->count; i++) {
		if (l->items[i].uid != l->items[n - 1].uid)
			l->items[n++] = l->items[i];
	}
	l->count = n;
}

const struct sync_uexp *sync_uexp_find(const sync_uexp_list *l, uint32_t uid)
{
	struct sync_uexp key = { .uid = uid };
	if (l->count == 0)
		return NULL;
	return bsearch(&key, l->items, l->count, sizeof(l->items[0]), uexp_cmp);
}

int sync_expunge(struct stor_db *db, const struct guid *mailbox, const uint32_t *uids, size_t count,
		 const sync_uexp_list *user, uint64_t modseq, stor_uid_list *done, const char **err)
{
	stor_uid_list u = ARRAY_INIT, e = ARRAY_INIT;
	int r = 0;
	for (size_t i = 0; i < count && r == 0; i++) {
		const struct sync_uexp *x = sync_uexp_find(user, uids[i]);
		bool is_user = false;
		if (x != NULL) {
			struct stor_msg m;
			r = stor_msg_get(db, mailbox, uids[i], &m, err);
			if (r > 0) {
				is_user = guid_cmp(&m.guid, &x->guid) == 0;
				stor_msg_free(&m);
			}
			if (r > 0)
				r = 0;
		}
		ARRAY_PUSH(is_user ? &u : &e, uids[i]);
	}
	if (r == 0 && u.count > 0)
		r = stor_msg_expunge_kind(db, mailbox, u.items, u.count, modseq, true, done, err);
	if (r == 0 && e.count > 0)
		r = stor_msg_expunge_kind(db, mailbox, e.items, e.count, modseq, false, done, err);
	ARRAY_FREE(&u);
	ARRAY_FREE(&e);
	return r;
}

void sync_wr_user_guids(struct proto_wr *w, const struct guid *guids, size_t n)
{
	proto_wr_atom(w, "GUIDS");
	proto_wr_list_begin(w);
	for (size_t i = 0; i < n; i++)
		proto_wr_guid(w, &guids[i]);
	proto_wr_list_end(w);
}

int sync_cmd_user_guids(const struct proto_cmd *cmd, size_t npos, const stor_uid_list *uids,
			bool *given_r, struct guid **guids_r)
{
	*given_r = false;
	*guids_r = NULL;
	if (cmd->arg_count == npos)
		return 0;
	if (cmd->arg_count != npos + 2 || cmd->args[npos].type != PROTO_ARG_ATOM ||
	    strcasecmp(cmd->args[npos].str, "GUIDS") != 0)
		return -1;
	const struct proto_arg *l = &cmd->args[npos + 1];
	if (l->type != PROTO_ARG_LIST || l->count != uids->count || l->count == 0)
		return -1;
	/* The n-th GUID names the n-th UID: only a set in ascending order
	 * makes that unambiguous. */
	for (size_t i = 1; i < uids->count; i++) {
		if (uids->items[i] <= uids->items[i - 1])
			return -1;
	}
	struct guid *g = xmalloc(l->count * sizeof(*g));
	for (size_t i = 0; i < l->count; i++) {
		if (proto_arg_guid(&l->list[i], &g[i]) < 0) {
			free(g);
			return -1;
		}
	}
	*given_r = true;
	*guids_r = g;
	return 0;
}

void sync_stamps_legacy(uint64_t modseq, stor_stamp_list *out)
{
	struct stor_stamp st = { xstrdup(STOR_STAMP_ALL), modseq, 0 };
	memset(out, 0, sizeof(*out));
	ARRAY_PUSH(out, st);
}

int sync_cmd_gone(const struct proto_cmd *cmd, struct guid **guids_r, size_t *count_r)
{
	*guids_r = NULL;
	*count_r = 0;
	if (cmd->arg_count != 2 || cmd->args[0].type != PROTO_ARG_ATOM ||
	    strcasecmp(cmd->args[0].str, "GUIDS") != 0)
		return -1;
	const struct proto_arg *l = &cmd->args[1];
	if (l->type != PROTO_ARG_LIST || l->count == 0 || l->count > SYNC_MAX_GONE_PER_LINE)
		return -1;
	struct guid *g = xmalloc(l->count * sizeof(*g));
	for (size_t i = 0; i < l->count; i++) {
		if (proto_arg_guid(&l->list[i], &g[i]) < 0 || guid_is_zero(&g[i])) {
			free(g);
			return -1;
		}
	}
	*guids_r = g;
	*count_r = l->count;
	return 0;
}

static int gone_cmp(const void *a, const void *b)
{
	return guid_cmp(a, b);
}

int sync_gone_since(struct stor_db *db, const struct guid *mailbox, uint64_t since,
		    sync_guid_list *out, const char **err)
{
	stor_guid_tomb_list l;
	if (stor_guid_tombs_since(db, mailbox, since, &l, err) < 0)
		return -1;
	int r = 0;
	for (size_t i = 0; i < l.count && r >= 0; i++) {
		uint32_t at;
		r = stor_msg_find_guid(db, mailbox, &l.items[i].guid, &at, err);
		if (r == 0)
			ARRAY_PUSH(out, l.items[i].guid);
	}
	ARRAY_FREE(&l);
	if (out->count > 1)
		qsort(out->items, out->count, sizeof(out->items[0]), gone_cmp);
	return r < 0 ? -1 : 0;
}

uint32_t sync_tags_add(struct sync_tags *t, const char *tag)
{
	struct sync_tag e;
	if (++t->last_id == 0)
		t->last_id = 1; /* 0 marks a completed entry */
	e.id = t->last_id;
	snprintf(e.tag, sizeof(e.tag), "%s", tag);
	ARRAY_PUSH(&t->pending, e);
	return e.id;
}

static size_t tags_find(const struct sync_tags *t, uint32_t id)
{
	size_t i = t->head;
	while (i < t->pending.count && t->pending.items[i].id != id)
		i++;
	return i;
}

const char *sync_tags_get(const struct sync_tags *t, uint32_t id)
{
	size_t i = id != 0 ? tags_find(t, id) : t->pending.count;
	return i < t->pending.count ? t->pending.items[i].tag : NULL;
}

void sync_tags_answered(struct sync_tags *t, uint32_t id, const char *name)
{
	if (strcmp(name, "OK") != 0 && strcmp(name, "NO") != 0 && strcmp(name, "BAD") != 0)
		return;
	size_t i = id != 0 ? tags_find(t, id) : t->pending.count;
	if (i == t->pending.count)
		return;
	t->pending.items[i].id = 0;
	while (t->head < t->pending.count && t->pending.items[t->head].id == 0)
		t->head++;
	if (t->head == t->pending.count)
		t->pending.count = t->head = 0;
}

void sync_tags_free(struct sync_tags *t)
{
	ARRAY_FREE(&t->pending);
	t->head = 0;
}

void sync_wire_send(const struct sync_transport *t, struct buf *wire, const char *tag,
		    const char *name, const void *rest, size_t rest_len)
{
	struct proto_wr w;
	buf_reset(wire);
	proto_wr_init(&w, wire);
	proto_wr_begin(&w, tag, name);
	buf_append(wire, rest, rest_len);
	proto_wr_end(&w);
	t->send(t->ctx, wire->data, wire->len);
	buf_reset(wire);
}

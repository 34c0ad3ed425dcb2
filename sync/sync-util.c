/* Flag lists and UID sets as the sync commands carry them. */
#include "sync/sync-private.h"

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
		bool found = false;
		for (size_t j = 0; j < k2->count && !found; j++)
			found = strcasecmp(k1->items[i], k2->items[j]) == 0;
		if (!found)
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

static void wr_arg(struct buf *out, const struct proto_arg *a)
{
	switch (a->type) {
	case PROTO_ARG_ATOM:
		buf_append(out, a->str, a->len);
		break;
	case PROTO_ARG_QUOTED:
		buf_append_byte(out, '"');
		for (size_t i = 0; i < a->len; i++) {
			if (a->str[i] == '"' || a->str[i] == '\\')
				buf_append_byte(out, '\\');
			buf_append_byte(out, (unsigned char)a->str[i]);
		}
		buf_append_byte(out, '"');
		break;
	case PROTO_ARG_LITERAL:
		buf_appendf(out, "{%zu}\r\n", a->len);
		buf_append(out, a->str, a->len);
		break;
	case PROTO_ARG_LIST:
		buf_append_byte(out, '(');
		for (size_t i = 0; i < a->count; i++) {
			if (i > 0)
				buf_append_byte(out, ' ');
			wr_arg(out, &a->list[i]);
		}
		buf_append_byte(out, ')');
		break;
	}
}

void sync_wr_cmd(struct buf *out, const struct proto_cmd *cmd)
{
	buf_appendf(out, "%s %s", cmd->tag, cmd->name);
	for (size_t i = 0; i < cmd->arg_count; i++) {
		buf_append_byte(out, ' ');
		wr_arg(out, &cmd->args[i]);
	}
	buf_append(out, "\r\n", 2);
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

void sync_stamps_legacy(uint64_t modseq, stor_stamp_list *out)
{
	struct stor_stamp st = { xstrdup(STOR_STAMP_ALL), modseq, 0 };
	memset(out, 0, sizeof(*out));
	ARRAY_PUSH(out, st);
}

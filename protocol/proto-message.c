/* Typed codecs of the message commands (SPEC.md 8): each command's
 * arguments read into one struct, with the rules every receiver applies
 * (UID 0 only in a request, a GUID is never zero, values within
 * lib/mail-limits.h), and written back from it. */
#include "protocol/protocol.h"

#include <stdlib.h>
#include <string.h>

#include "lib/mail-limits.h"

static int bad(const char **error_r, const char *text)
{
	*error_r = text;
	return PROTO_CODEC_BAD;
}

int proto_read_save(const struct proto_cmd *cmd, enum proto_save_rule rule,
		    struct proto_save *s_r, const char **error_r)
{
	uint64_t uid;
	memset(s_r, 0, sizeof(*s_r));
	if (cmd->arg_count < 6)
		return bad(error_r, "too few arguments");
	if (proto_arg_date(&cmd->args[0], &s_r->date, &s_r->tz) < 0)
		return bad(error_r, "bad date");
	if (proto_arg_u64(&cmd->args[1], UINT32_MAX, &uid) < 0 ||
	    proto_arg_u64(&cmd->args[2], INT64_MAX, &s_r->modseq) < 0)
		return bad(error_r, "bad UID or modseq");
	s_r->uid = (uint32_t)uid;
	if (rule == PROTO_SAVE_ASSIGN && (s_r->uid != 0 || s_r->modseq != 0))
		return bad(error_r, "a request to the master carries UID 0 and modseq 0");
	if (rule == PROTO_SAVE_GIVEN && (s_r->uid == 0 || s_r->modseq == 0))
		return bad(error_r, "UID 0 or modseq 0 where both must be given");
	if (proto_arg_guid(&cmd->args[3], &s_r->guid) < 0 || guid_is_zero(&s_r->guid))
		return bad(error_r, "bad or zero GUID");
	const struct proto_arg *t = &cmd->args[5];
	if (t->type == PROTO_ARG_LITERAL) {
		s_r->text_arg = t;
		s_r->text = t->str;
		s_r->text_len = t->len;
	} else if (t->type != PROTO_ARG_ATOM || strcmp(t->str, "NIL") != 0) {
		return bad(error_r, "the text is neither a literal nor NIL");
	}
	if (proto_arg_flags(&cmd->args[4], &s_r->f) < 0)
		return bad(error_r, "bad flag list");
	/* A value past the limits would leave the mailbox unable to take
	 * mail or to sync: the caller refuses it before anything changes. */
	if (rule == PROTO_SAVE_GIVEN &&
	    (!mail_uid_valid(s_r->uid) || !mail_modseq_valid(s_r->modseq))) {
		proto_flags_free(&s_r->f);
		*error_r = MAIL_LIMITS_TEXT;
		return PROTO_CODEC_LIMIT;
	}
	return PROTO_CODEC_OK;
}

void proto_save_free(struct proto_save *s)
{
	proto_flags_free(&s->f);
}

int proto_save_holder(const struct proto_cmd *cmd, size_t npos, uint32_t *sid_r)
{
	*sid_r = 0;
	const struct proto_arg *h = proto_cmd_option(cmd, npos, "HOLDER");
	if (h == NULL)
		return 0;
	uint32_t sid;
	if (proto_arg_u32(h, &sid) < 0 || sid == 0 || proto_cmd_option(cmd, npos, "ORIGIN") != NULL)
		return -1;
	*sid_r = sid;
	return 0;
}

void proto_wr_holder(struct proto_wr *w, uint32_t sid)
{
	proto_wr_atom(w, "HOLDER");
	proto_wr_u64(w, sid);
}

void proto_wr_save(struct proto_wr *w, const struct proto_save *s)
{
	proto_wr_date(w, s->date, s->tz);
	proto_wr_u64(w, s->uid);
	proto_wr_u64(w, s->modseq);
	proto_wr_guid(w, &s->guid);
	proto_wr_flags(w, s->f.flags, (const char *const *)s->f.keywords.items,
		       s->f.keywords.count);
	if (s->text != NULL)
		proto_wr_literal(w, s->text, s->text_len);
	else
		proto_wr_atom(w, "NIL");
}

/* The removed-flags list "(\*)": replace by the added list. */
static bool is_replace(const struct proto_arg *a)
{
	return a->type == PROTO_ARG_LIST && a->count == 1 && a->list[0].type == PROTO_ARG_ATOM &&
	       strcmp(a->list[0].str, "\\*") == 0;
}

int proto_read_store(const struct proto_cmd *cmd, enum proto_store_rule rule, size_t max_uids,
		     struct proto_store *s_r, const char **error_r)
{
	memset(s_r, 0, sizeof(*s_r));
	if (cmd->arg_count < 4)
		return bad(error_r, "too few arguments");
	if (proto_arg_u64(&cmd->args[1], INT64_MAX, &s_r->modseq) < 0)
		return bad(error_r, "bad modseq");
	if (rule == PROTO_STORE_GIVEN && s_r->modseq == 0)
		return bad(error_r, "modseq 0 where the change's is given");
	s_r->replace = is_replace(&cmd->args[3]);
	if (rule == PROTO_STORE_GIVEN && !s_r->replace)
		return bad(error_r, "the removed list of a change is (\\*)");
	if (proto_arg_uids(&cmd->args[0], max_uids, &s_r->uids, &s_r->uid_count) < 0)
		return bad(error_r, "bad UID set, or too many UIDs");
	if (proto_arg_flags(&cmd->args[2], &s_r->add) < 0 ||
	    (!s_r->replace && proto_arg_flags(&cmd->args[3], &s_r->rm) < 0)) {
		proto_store_free(s_r);
		return bad(error_r, "bad flag list");
	}
	bool has_add = s_r->add.flags != 0 || s_r->add.keywords.count > 0;
	bool has_rm = s_r->rm.flags != 0 || s_r->rm.keywords.count > 0;
	if (has_add && has_rm) {
		proto_store_free(s_r);
		return bad(error_r, "add or remove flags, not both");
	}
	if (rule == PROTO_STORE_GIVEN && (!mail_modseq_valid(s_r->modseq) ||
					  !mail_uids_valid(s_r->uids, s_r->uid_count))) {
		proto_store_free(s_r);
		*error_r = MAIL_LIMITS_TEXT;
		return PROTO_CODEC_LIMIT;
	}
	return PROTO_CODEC_OK;
}

void proto_store_free(struct proto_store *s)
{
	free(s->uids);
	s->uids = NULL;
	s->uid_count = 0;
	proto_flags_free(&s->add);
	proto_flags_free(&s->rm);
}

void proto_wr_store(struct proto_wr *w, const struct proto_store *s)
{
	proto_wr_uidset(w, s->uids, s->uid_count);
	proto_wr_u64(w, s->modseq);
	proto_wr_flags(w, s->add.flags, (const char *const *)s->add.keywords.items,
		       s->add.keywords.count);
	if (s->replace) {
		proto_wr_list_begin(w);
		proto_wr_atom(w, "\\*");
		proto_wr_list_end(w);
	} else {
		proto_wr_flags(w, s->rm.flags, (const char *const *)s->rm.keywords.items,
			       s->rm.keywords.count);
	}
}

int proto_read_expunge(const struct proto_cmd *cmd, enum proto_expunge_rule rule,
		       size_t max_uids, struct proto_expunge *e_r, const char **error_r)
{
	memset(e_r, 0, sizeof(*e_r));
	if (cmd->arg_count < 2)
		return bad(error_r, "too few arguments");
	if (proto_arg_u64(&cmd->args[1], INT64_MAX, &e_r->modseq) < 0)
		return bad(error_r, "bad modseq");
	if (rule == PROTO_EXPUNGE_REQUEST && e_r->modseq != 0)
		return bad(error_r, "a request to the master carries modseq 0");
	if (rule == PROTO_EXPUNGE_GIVEN && e_r->modseq == 0)
		return bad(error_r, "modseq 0 where the change's is given");
	if (proto_arg_uids(&cmd->args[0], max_uids, &e_r->uids, &e_r->uid_count) < 0)
		return bad(error_r, "bad UID set, or too many UIDs");
	if (rule != PROTO_EXPUNGE_REQUEST && (!mail_modseq_valid(e_r->modseq) ||
					      !mail_uids_valid(e_r->uids, e_r->uid_count))) {
		proto_expunge_free(e_r);
		*error_r = MAIL_LIMITS_TEXT;
		return PROTO_CODEC_LIMIT;
	}
	return PROTO_CODEC_OK;
}

void proto_expunge_free(struct proto_expunge *e)
{
	free(e->uids);
	e->uids = NULL;
	e->uid_count = 0;
}

void proto_wr_expunge(struct proto_wr *w, const struct proto_expunge *e)
{
	proto_wr_uidset(w, e->uids, e->uid_count);
	proto_wr_u64(w, e->modseq);
}

int proto_read_uidfix(const struct proto_cmd *cmd, size_t max_uids, struct proto_uidfix *f_r,
		      const char **error_r)
{
	size_t n;
	memset(f_r, 0, sizeof(*f_r));
	if (cmd->arg_count != 2)
		return bad(error_r, "expected an old and a new UID set");
	if (proto_arg_uids(&cmd->args[0], max_uids, &f_r->old_uids, &f_r->count) < 0)
		return bad(error_r, "bad old UID set, or too many UIDs");
	if (proto_arg_uids(&cmd->args[1], max_uids, &f_r->new_uids, &n) < 0 || n != f_r->count) {
		proto_uidfix_free(f_r);
		return bad(error_r, "bad new UID set, or not as many UIDs as the old");
	}
	for (size_t i = 1; i < f_r->count; i++) {
		if (f_r->old_uids[i] <= f_r->old_uids[i - 1] ||
		    f_r->new_uids[i] <= f_r->new_uids[i - 1]) {
			proto_uidfix_free(f_r);
			return bad(error_r, "UID sets that do not ascend");
		}
	}
	if (!mail_uids_valid(f_r->old_uids, f_r->count) ||
	    !mail_uids_valid(f_r->new_uids, f_r->count)) {
		proto_uidfix_free(f_r);
		*error_r = MAIL_LIMITS_TEXT;
		return PROTO_CODEC_LIMIT;
	}
	return PROTO_CODEC_OK;
}

void proto_uidfix_free(struct proto_uidfix *f)
{
	free(f->old_uids);
	free(f->new_uids);
	memset(f, 0, sizeof(*f));
}

size_t proto_uidfix_run(const uint32_t *old_uids, const uint32_t *new_uids, size_t count,
			size_t max)
{
	size_t n = count > 0 ? 1 : 0;
	while (n < count && n < max && old_uids[n] > old_uids[n - 1] &&
	       new_uids[n] > new_uids[n - 1])
		n++;
	return n;
}

void proto_wr_uidfix(struct proto_wr *w, const uint32_t *old_uids, const uint32_t *new_uids,
		     size_t count)
{
	proto_wr_uidset(w, old_uids, count);
	proto_wr_uidset(w, new_uids, count);
}

int proto_read_fetch(const struct proto_cmd *cmd, size_t max_uids, struct proto_fetch *f_r,
		     const char **error_r)
{
	memset(f_r, 0, sizeof(*f_r));
	if (cmd->arg_count != 1)
		return bad(error_r, "expected one UID set");
	if (proto_arg_uids(&cmd->args[0], max_uids, &f_r->uids, &f_r->uid_count) < 0)
		return bad(error_r, "bad UID set, or too many UIDs");
	return PROTO_CODEC_OK;
}

void proto_fetch_free(struct proto_fetch *f)
{
	free(f->uids);
	memset(f, 0, sizeof(*f));
}

void proto_wr_fetch(struct proto_wr *w, const uint32_t *uids, size_t count)
{
	proto_wr_uidset(w, uids, count);
}

int proto_read_flags_line(const struct proto_cmd *cmd, struct proto_flags_line *l_r,
			  const char **error_r)
{
	memset(l_r, 0, sizeof(*l_r));
	if (cmd->arg_count < 3)
		return bad(error_r, "too few arguments");
	if (proto_arg_u32(&cmd->args[0], &l_r->uid) < 0 || l_r->uid == 0 ||
	    proto_arg_u64(&cmd->args[1], INT64_MAX, &l_r->modseq) < 0 || l_r->modseq == 0)
		return bad(error_r, "bad UID or modseq");
	if (proto_arg_flags(&cmd->args[2], &l_r->f) < 0)
		return bad(error_r, "bad flag list");
	if (!mail_uid_valid(l_r->uid) || !mail_modseq_valid(l_r->modseq)) {
		proto_flags_free(&l_r->f);
		*error_r = MAIL_LIMITS_TEXT;
		return PROTO_CODEC_LIMIT;
	}
	return PROTO_CODEC_OK;
}

void proto_wr_flags_line(struct proto_wr *w, const struct proto_flags_line *l)
{
	proto_wr_u64(w, l->uid);
	proto_wr_u64(w, l->modseq);
	proto_wr_flags(w, l->f.flags, (const char *const *)l->f.keywords.items,
		       l->f.keywords.count);
}

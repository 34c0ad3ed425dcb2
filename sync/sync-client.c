/* The driving end of a sync (SPEC.md 10): one user against one peer.
 *
 * Phases: LIST the server's mailboxes and subscriptions; merge the two
 * mailbox lists against the last common list (CREATE, DELETE, RENAME,
 * (UN)SUBSCRIBE on whichever side lacks a change); LIST again if anything
 * changed; then, per mailbox, skip it when both copies still have the state
 * of the last sync (UIDNEXT, HIGHESTMODSEQ and digest: no per-message work),
 * else MBOX, SELECT, SYNC-BEGIN, our changes, SYNC-END, FETCH of the texts we
 * lack, and apply the server's answer.  Each step of the state machine does a
 * bounded amount of work.
 *
 * This file: the client's life, its commands' plumbing, the input and the
 * state machine.  The list merge (sync-client-list.c, with the last common
 * list in sync-client-list-last.c and the server's list in
 * sync-client-list-srv.c) and the per-mailbox sync (sync-client-mailbox.c,
 * with the answer applied in sync-client-mailbox-apply.c) have files of
 * their own. */
#include "sync/sync-client-private.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/str.h"
#include "lib/xalloc.h"

/* The built-in link of a byte transport: the only place the client's
 * commands get a tag, "C<n>" for command n (sync_client_input() reads it
 * back). */
static void wire_send_cmd(void *ctx, uint32_t id, const char *name, const void *args,
			  size_t args_len)
{
	struct sync_client *c = ctx;
	char tag[24];
	snprintf(tag, sizeof(tag), "C%" PRIu32, id);
	sync_wire_send(&c->t, &c->wire, tag, name, args, args_len);
}

int cl_fail(struct sync_client *c, const char *fmt, ...)
{
	va_list ap;
	char msg[512];
	if (c->phase == PH_ERROR)
		return -1;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	free(c->error);
	c->error = xstrdup(msg);
	c->phase = PH_ERROR;
	log_warnx("sync %s with %u: %s", c->user, c->peer, msg);
	return -1;
}

/* Starts a command; the caller adds arguments and calls cl_cmd_end().  w
 * writes only the arguments: the link puts its tag and the name before
 * them. */
void cl_cmd_begin(struct sync_client *c, struct proto_wr *w, const char *name,
		  enum cl_kind kind, size_t idx)
{
	struct cl_pending p = { .kind = kind, .idx = idx, .done = false };
	ARRAY_PUSH(&c->pending, p);
	c->outstanding++;
	snprintf(c->cmd_name, sizeof(c->cmd_name), "%s", name);
	buf_reset(&c->out);
	proto_wr_init(w, &c->out);
	w->need_sp = true; /* after the name */
}

void cl_cmd_end(struct sync_client *c, struct proto_wr *w)
{
	/* As proto_wr_end() would check: every list closed. */
	assert(w->depth == 0);
	(void)w;
	c->link.send_cmd(c->link.ctx, c->next_id++, c->cmd_name, c->out.data, c->out.len);
	buf_reset(&c->out);
}

/* uids in EXPUNGE lines of per_line UIDs at most, each with its UIDs'
 * GUIDS when guids is given. */
static void cl_wr_expunge_lines(struct sync_client *c, const stor_uid_list *uids,
				size_t per_line, const struct guid *guids)
{
	struct proto_wr w;
	for (size_t i = 0; i < uids->count; i += per_line) {
		size_t k = uids->count - i;
		if (k > per_line)
			k = per_line;
		struct proto_expunge e = { uids->items + i, k, 0 };
		cl_cmd_begin(c, &w, "EXPUNGE", K_OTHER, 0);
		proto_wr_expunge(&w, &e);
		if (guids != NULL)
			sync_wr_user_guids(&w, guids + i, k);
		cl_cmd_end(c, &w);
	}
}

/* EXPUNGE <uidset> 0 lines: the engine's tombstones (uids), then a user's
 * (uuids, with their GUIDs: GUIDS).  Both sets ascending. */
void cl_wr_expunges(struct sync_client *c, const stor_uid_list *uids,
		    const stor_uid_list *uuids, const struct guid *guids)
{
	cl_wr_expunge_lines(c, uids, SYNC_MAX_UIDS_PER_LINE, NULL);
	cl_wr_expunge_lines(c, uuids, SYNC_MAX_USER_UIDS_PER_LINE, guids);
}

/* Expunges as the answer says: a user's expunge where it named the UID
 * and its message with GUIDS, else the engine's. */
int cl_expunge(struct sync_client *c, const stor_uid_list *uids, uint64_t modseq,
	       stor_uid_list *done, const char **err)
{
	return sync_expunge(c->db, &c->cur.guid, uids->items, uids->count, &c->exp_user, modseq,
			    done, err);
}

/* Starts a new group of commands: answers to older tags are ignored. */
void cl_new_group(struct sync_client *c)
{
	c->pending.count = 0;
	c->phase_base = c->next_id;
	c->outstanding = 0;
}

static struct sync_client *client_new(struct stor_db *db, const struct sync_settings *set)
{
	struct sync_client *c = xcalloc(1, sizeof(*c));
	c->db = db;
	c->peer = set->peer_sid;
	c->user = xstrdup(set->user);
	c->full = set->full;
	c->no_rename_stamps = set->no_rename_stamps;
	c->budget = set->step_budget != 0 ? set->step_budget : SYNC_DEFAULT_STEP_BUDGET;
	c->parser = proto_parser_create(NULL);
	buf_init(&c->out);
	buf_init(&c->wire);
	c->next_id = 1;
	c->phase = PH_START;
	return c;
}

struct sync_client *sync_client_create(struct stor_db *db, const struct sync_settings *set,
				       const struct sync_transport *t)
{
	struct sync_client *c = client_new(db, set);
	c->t = *t;
	c->link.send_cmd = wire_send_cmd;
	c->link.ctx = c;
	return c;
}

struct sync_client *sync_client_create_linked(struct stor_db *db, const struct sync_settings *set,
					      const struct sync_client_link *l)
{
	struct sync_client *c = client_new(db, set);
	c->link = *l;
	return c;
}

void srv_list_free(struct sync_client *c)
{
	for (size_t i = 0; i < c->srv.count; i++)
		free(c->srv.items[i].name);
	ARRAY_FREE(&c->srv);
	ARRAY_FREE(&c->srv_by_guid_ix);
	ARRAY_FREE(&c->srv_by_name_ix);
	stor_string_list_free(&c->srv_subs);
	memset(&c->srv_subs, 0, sizeof(c->srv_subs));
	ARRAY_FREE(&c->srv_deleted);
	stor_string_list_free(&c->srv_unsubs);
	memset(&c->srv_unsubs, 0, sizeof(c->srv_unsubs));
	for (size_t i = 0; i < c->srv_acls.count; i++) {
		free(c->srv_acls.items[i].identifier);
		free(c->srv_acls.items[i].rights);
	}
	ARRAY_FREE(&c->srv_acls);
}

void answer_free(struct sync_client *c)
{
	for (size_t i = 0; i < c->saves.count; i++) {
		sync_flags_free(&c->saves.items[i].f);
		stor_stamp_list_free(&c->saves.items[i].stamps);
	}
	for (size_t i = 0; i < c->flags.count; i++) {
		sync_flags_free(&c->flags.items[i].f);
		stor_stamp_list_free(&c->flags.items[i].stamps);
	}
	ARRAY_FREE(&c->saves);
	ARRAY_FREE(&c->flags);
	ARRAY_FREE(&c->exp_uids);
	ARRAY_FREE(&c->exp_user);
	ARRAY_FREE(&c->exp_after);
	ARRAY_FREE(&c->fix_old);
	ARRAY_FREE(&c->fix_new);
	ARRAY_FREE(&c->gone);
	sync_pseen_cl_reset(c);
	stor_msg_list_free(&c->msgs);
	memset(&c->msgs, 0, sizeof(c->msgs));
	ARRAY_FREE(&c->tombs);
	ARRAY_FREE(&c->utomb_guids);
	c->utomb_built = false;
	c->keep_drop_logged = 0;
	ARRAY_FREE(&c->resend);
	ARRAY_FREE(&c->need);
	ARRAY_FREE(&c->chunks);
	c->fetch_pos = 0;
	ARRAY_FREE(&c->late_exp);
	ARRAY_FREE(&c->late_uexp);
	ARRAY_FREE(&c->late_uexp_g);
	ARRAY_FREE(&c->late_old);
	ARRAY_FREE(&c->late_new);
	if (c->have_cur)
		stor_mailbox_free(&c->cur);
	c->have_cur = false;
}

void sync_client_destroy(struct sync_client **cp)
{
	struct sync_client *c = *cp;
	if (c == NULL)
		return;
	*cp = NULL;
	answer_free(c);
	srv_list_free(c);
	ARRAY_FREE(&c->jobs);
	ARRAY_FREE(&c->pending);
	proto_parser_destroy(&c->parser);
	buf_free(&c->out);
	buf_free(&c->wire);
	free(c->error);
	free(c->user);
	free(c);
}

const struct sync_report *sync_client_report(const struct sync_client *c)
{
	return &c->report;
}

const char *sync_client_error(const struct sync_client *c)
{
	return c->error;
}

/* ---- Input ---- */

int sync_client_input(struct sync_client *c, const struct proto_cmd *line)
{
	if (c->phase == PH_ERROR)
		return -1;
	if (strcmp(line->tag, "*") == 0)
		return 0;
	uint64_t tagno;
	if (line->tag[0] != 'C' || str_to_u64(line->tag + 1, UINT32_MAX, &tagno) < 0)
		return cl_fail(c, "line with a foreign tag %s", line->tag);
	return sync_client_answer(c, (uint32_t)tagno, line);
}

int sync_client_answer(struct sync_client *c, uint32_t id, const struct proto_cmd *line)
{
	if (c->phase == PH_ERROR)
		return -1;
	if (id < c->phase_base || id - c->phase_base >= c->pending.count)
		return 0; /* an answer to an abandoned group */
	struct cl_pending *p = &c->pending.items[id - c->phase_base];
	if (p->done)
		return cl_fail(c, "second completion for command %" PRIu32, id);
	if (!proto_cmd_is_status(line)) {
		switch (p->kind) {
		case K_LIST:
			return on_list_line(c, line);
		case K_END:
			return on_end_line(c, line);
		case K_FETCH:
			return on_text_line(c, line);
		default:
			return cl_fail(c, "unexpected data line %s to command %" PRIu32, line->name, id);
		}
	}
	p->done = true;
	c->outstanding--;
	bool ok = proto_cmd_is(line, "OK");
	switch (p->kind) {
	case K_SAVE:
		if (ok && proto_code_has(line, "PRESENT")) {
			c->report.messages_present++;
			return 0;
		}
		if (ok) {
			c->report.messages_sent++;
			return 0;
		}
		if (proto_code_has(line, "NONEXISTENT")) {
			ARRAY_PUSH(&c->resend, p->idx);
			return 0;
		}
		return cl_fail(c, "SAVE refused: %s", line->text);
	case K_END:
		if (!ok)
			return cl_fail(c, "SYNC-END refused: %s", line->text);
		{
			const struct proto_arg *a = proto_code_value(line, "UIDNEXT");
			const struct proto_arg *b = proto_code_value(line, "HIGHESTMODSEQ");
			uint64_t ms;
			if (a == NULL || b == NULL || proto_arg_u32(a, &c->final_uidnext) < 0 ||
			    proto_arg_u64(b, INT64_MAX, &ms) < 0)
				return cl_fail(c, "SYNC-END: OK without UIDNEXT and HIGHESTMODSEQ");
			if (!mail_uidnext_valid(c->final_uidnext) || !mail_modseq_valid(ms))
				return cl_fail(c, "SYNC-END: OK with %s", MAIL_LIMITS_TEXT);
			c->final_modseq = ms;
		}
		return 0;
	case K_FETCH:
		if (!ok || proto_code_has(line, "MISSING"))
			return cl_fail(c, "FETCH: the peer lacks texts it announced (%s)", line->text);
		if (p->idx < c->chunks.count)
			c->chunks.items[p->idx].done = true;
		return 0;
	case K_LISTOP:
		if (!ok)
			return cl_fail(c, "%s refused: %s", "mailbox list change", line->text);
		return 0;
	default:
		if (!ok)
			return cl_fail(c, "command %" PRIu32 " refused: %s", id, line->text);
		return 0;
	}
}

int sync_client_feed(struct sync_client *c, const void *data, size_t len)
{
	const unsigned char *p = data;
	while (len > 0) {
		size_t used;
		const struct proto_cmd *line;
		int r = proto_parser_parse(c->parser, p, len, &used, &line);
		if (r < 0) {
			const char *code, *text;
			proto_parser_get_error(c->parser, &code, &text);
			return cl_fail(c, "parse error: %s", text);
		}
		p += used;
		len -= used;
		if (r == 1 && sync_client_input(c, line) < 0)
			return -1;
	}
	return 0;
}

/* ---- The state machine ---- */

enum sync_step_result sync_client_step(struct sync_client *c)
{
	int r;
	switch (c->phase) {
	case PH_START:
		send_list(c);
		c->phase = PH_LIST_WAIT;
		return SYNC_STEP_WAIT;
	case PH_LIST_WAIT:
	case PH_LISTOPS_WAIT:
	case PH_RELIST_WAIT:
	case PH_MBOX_WAIT:
	case PH_SEND_WAIT:
	case PH_RESEND_WAIT:
	case PH_END_WAIT:
	case PH_FETCH_WAIT:
		if (c->outstanding > 0 && c->phase == PH_FETCH_WAIT) {
			/* Store the messages whose texts arrived while the rest
			 * come. */
			size_t stage = c->apply_stage, pos = c->apply_pos;
			c->apply_below = fetched_below(c);
			if (apply_some(c) < 0)
				return SYNC_STEP_ERROR;
			if (stage != c->apply_stage || pos != c->apply_pos)
				return SYNC_STEP_AGAIN;
		}
		if (c->outstanding > 0)
			return SYNC_STEP_WAIT;
		switch (c->phase) {
		case PH_LIST_WAIT:
			srv_index_build(c);
			c->phase = PH_LIST_MERGE;
			break;
		case PH_LISTOPS_WAIT:
			if (c->list_changed) {
				send_list(c);
				c->phase = PH_RELIST_WAIT;
				return SYNC_STEP_WAIT;
			}
			c->phase = PH_PLAN;
			break;
		case PH_RELIST_WAIT:
			srv_index_build(c);
			c->phase = PH_PLAN;
			break;
		case PH_MBOX_WAIT:
			log_debug("sync %s with %u: mailbox %s: %s sync", c->user, c->peer,
				  c->cur.name, c->cur_full ? "full" : "incremental");
			if (send_begin(c) < 0)
				return SYNC_STEP_ERROR;
			c->phase = PH_SEND;
			break;
		case PH_SEND_WAIT:
			c->resend_pos = 0;
			cl_new_group(c);
			c->phase = PH_RESEND;
			break;
		case PH_RESEND_WAIT:
			send_end(c);
			c->phase = PH_END_WAIT;
			return SYNC_STEP_WAIT;
		case PH_END_WAIT:
			log_debug("sync %s with %u: mailbox %s: answer in: %zu expunged, %zu saved, "
				  "%zu flags, %zu moved", c->user, c->peer, c->cur.name,
				  c->exp_uids.count, c->saves.count, c->flags.count, c->fix_old.count);
			if (c->saves.count > 0)
				qsort(c->saves.items, c->saves.count, sizeof(struct cl_save),
				      cmp_cl_save);
			c->apply_stage = 0;
			c->apply_pos = 0;
			c->apply_below = 0; /* nothing stored before the FETCHes go */
			c->chunks.count = 0;
			c->phase = PH_FETCH;
			break;
		case PH_FETCH_WAIT:
			log_debug("sync %s with %u: mailbox %s: %u texts fetched so far; applying",
				  c->user, c->peer, c->cur.name, c->report.texts_fetched);
			c->apply_below = UINT32_MAX;
			c->phase = PH_APPLY;
			break;
		default:
			break;
		}
		return SYNC_STEP_AGAIN;
	case PH_LIST_MERGE:
		if (list_merge(c) < 0)
			return SYNC_STEP_ERROR;
		c->phase = PH_LISTOPS_WAIT;
		return SYNC_STEP_AGAIN;
	case PH_PLAN:
		if (plan_jobs(c) < 0)
			return SYNC_STEP_ERROR;
		c->phase = PH_MBOX_NEXT;
		return SYNC_STEP_AGAIN;
	case PH_MBOX_NEXT: {
		unsigned n = 0;
		while (c->job < c->jobs.count && n++ < c->budget) {
			r = mbox_start(c);
			if (r < 0)
				return SYNC_STEP_ERROR;
			if (r > 0) {
				c->phase = PH_MBOX_WAIT;
				return SYNC_STEP_WAIT;
			}
			c->job++;
			c->job_tries = 0;
		}
		if (c->job == c->jobs.count)
			c->phase = PH_FINISH;
		return SYNC_STEP_AGAIN;
	}
	case PH_SEND:
		if (send_some(c) > 0)
			c->phase = PH_SEND_WAIT;
		return c->phase == PH_ERROR ? SYNC_STEP_ERROR : SYNC_STEP_AGAIN;
	case PH_RESEND:
		r = resend_some(c);
		if (r < 0)
			return SYNC_STEP_ERROR;
		if (r > 0)
			c->phase = PH_RESEND_WAIT;
		return SYNC_STEP_AGAIN;
	case PH_FETCH:
		r = send_fetch(c);
		if (r < 0)
			return SYNC_STEP_ERROR;
		if (r > 0)
			c->phase = PH_FETCH_WAIT;
		return SYNC_STEP_AGAIN;
	case PH_APPLY:
		r = apply_some(c);
		if (r < 0)
			return SYNC_STEP_ERROR;
		if (r == 0)
			return SYNC_STEP_AGAIN;
		if (r == 3) {
			if (++c->late_rounds > 3) {
				cl_fail(c, "mailbox %s does not converge", c->cur.name);
				return SYNC_STEP_ERROR;
			}
			if (send_late(c) < 0)
				return SYNC_STEP_ERROR;
			c->phase = PH_SEND_WAIT;
			return SYNC_STEP_WAIT;
		}
		c->late_rounds = 0;
		if (r == 2) {
			/* Changed meanwhile: sync this mailbox once more. */
			if (++c->job_tries > 3) {
				cl_fail(c, "mailbox %s does not converge", c->cur.name);
				return SYNC_STEP_ERROR;
			}
		} else {
			c->job++;
			c->job_tries = 0;
		}
		c->phase = PH_MBOX_NEXT;
		return SYNC_STEP_AGAIN;
	case PH_FINISH:
		if (last_list_write(c) < 0)
			return SYNC_STEP_ERROR;
		answer_free(c);
		c->phase = PH_DONE;
		return SYNC_STEP_DONE;
	case PH_DONE:
		return SYNC_STEP_DONE;
	case PH_ERROR:
		return SYNC_STEP_ERROR;
	}
	return SYNC_STEP_ERROR;
}

/* The answering end of a sync (SPEC.md 7, 8 and 10): LIST, MBOX, SELECT,
 * mailbox CREATE/DELETE/RENAME/(UN)SUBSCRIBE, and SYNC-BEGIN ... SYNC-END
 * with the client's SAVE, STORE and EXPUNGE, then FETCH of texts.
 *
 * Between SYNC-BEGIN and SYNC-END the client's changes are only collected
 * (texts are written to the store at once, unreferenced); SYNC-END merges
 * them with the server's own changes since the last common modseq and
 * answers with the EXPUNGE, SAVE, FLAGS and UIDFIX lines that bring the
 * client to the merged state, in bounded steps (see merge_step()).
 *
 * This file: the server's life, its dispatch and FETCH.  The mailbox-list
 * commands, the collected changes, the merge and its pieces, and the flag
 * merge have files of their own (sync-server-*.c, sync-flag-merge.c). */
#include "sync/sync-server-private.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>

#include "lib/log.h"
#include "lib/xalloc.h"

void srv_flush(struct sync_server *s)
{
	for (size_t i = 0; i < s->lines.count; i++) {
		const struct srv_line *ln = &s->lines.items[i];
		size_t end = i + 1 < s->lines.count ? s->lines.items[i + 1].start : s->out.len;
		/* Every line ends in the CRLF of proto_wr_end() or srv_status(). */
		assert(end >= ln->start + 2);
		s->link.send_line(s->link.ctx, ln->id, ln->name, s->out.data + ln->start,
				  end - 2 - ln->start);
	}
	s->lines.count = 0;
	buf_reset(&s->out);
}

void srv_line_begin(struct sync_server *s, struct proto_wr *w, uint32_t id, const char *name)
{
	struct srv_line ln = { id, name, s->out.len };
	ARRAY_PUSH(&s->lines, ln);
	proto_wr_init(w, &s->out);
	w->need_sp = true; /* after the name, which is the link's to write */
}

void srv_status(struct sync_server *s, uint32_t id, const char *status, const char *code,
		const char *text)
{
	struct srv_line ln = { id, status, s->out.len };
	ARRAY_PUSH(&s->lines, ln);
	proto_wr_status_rest(&s->out, code, text);
	buf_append(&s->out, "\r\n", 2);
}

void srv_reply(struct sync_server *s, uint32_t id, const char *status,
	       const char *code, const char *text)
{
	srv_status(s, id, status, code, text);
	srv_flush(s);
}

/* The built-in link of a byte transport: the only place the server's
 * answers get a tag, the one of the command they answer. */
static void wire_send_line(void *ctx, uint32_t id, const char *name, const void *rest,
			   size_t rest_len)
{
	struct sync_server *s = ctx;
	const char *tag = sync_tags_get(&s->wire_tags, id);
	/* Answers name only commands given to the engine, each completed
	 * once. */
	if (tag == NULL) {
		log_errorx("sync server (peer %u): an answer to no pending command (%u %s)", s->peer,
			   id, name);
		return;
	}
	sync_wire_send(&s->t, &s->wire, tag, name, rest, rest_len);
	sync_tags_answered(&s->wire_tags, id, name);
}

int srv_fail(struct sync_server *s, const char *fmt, ...)
{
	va_list ap;
	char msg[512];
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	free(s->error);
	s->error = xstrdup(msg);
	log_warnx("sync server (peer %u): %s", s->peer, msg);
	return -1;
}

struct sync_server *sync_server_create_linked(struct stor_db *db, uint32_t peer_sid,
					      const struct sync_server_link *l)
{
	struct sync_server *s = xcalloc(1, sizeof(*s));
	s->db = db;
	s->peer = peer_sid;
	s->parser = proto_parser_create(NULL);
	s->budget = SYNC_DEFAULT_STEP_BUDGET;
	buf_init(&s->out);
	buf_init(&s->wire);
	s->link = *l;
	return s;
}

struct sync_server *sync_server_create(struct stor_db *db, uint32_t peer_sid,
				       const struct sync_transport *t)
{
	struct sync_server_link wire = { .send_line = wire_send_line, .ctx = NULL };
	struct sync_server *s = sync_server_create_linked(db, peer_sid, &wire);
	s->t = *t;
	s->link.ctx = s;
	return s;
}


void srv_sync_reset(struct sync_server *s)
{
	for (size_t i = 0; i < s->saves.count; i++) {
		sync_flags_free(&s->saves.items[i].f);
		stor_stamp_list_free(&s->saves.items[i].stamps);
	}
	for (size_t i = 0; i < s->stores.count; i++) {
		sync_flags_free(&s->stores.items[i].f);
		stor_stamp_list_free(&s->stores.items[i].stamps);
	}
	ARRAY_FREE(&s->saves);
	ARRAY_FREE(&s->stores);
	ARRAY_FREE(&s->expunges);
	ARRAY_FREE(&s->uexp);
	ARRAY_FREE(&s->uexp_guids);
	ARRAY_FREE(&s->gone_in);
	ARRAY_FREE(&s->fix_old);
	ARRAY_FREE(&s->fix_new);
	sync_pseen_srv_reset(s);
	s->in_sync = false;
}

void sync_server_set_no_rename_stamps(struct sync_server *s, bool none)
{
	s->no_rename_stamps = none;
}

void sync_server_destroy(struct sync_server **sp)
{
	struct sync_server *s = *sp;
	if (s == NULL)
		return;
	*sp = NULL;
	job_end(s);
	srv_sync_reset(s);
	ARRAY_FREE(&s->ids);
	proto_parser_destroy(&s->parser);
	for (size_t i = s->held_pos; i < s->held.count; i++)
		proto_cmd_kept_free(&s->held.items[i]);
	ARRAY_FREE(&s->held);
	ARRAY_FREE(&s->held_ids);
	ARRAY_FREE(&s->lines);
	sync_tags_free(&s->wire_tags);
	buf_free(&s->wire);
	ARRAY_FREE(&s->text_refs);
	buf_free(&s->out);
	free(s->error);
	free(s);
}

unsigned sync_server_messages_examined(const struct sync_server *s)
{
	return s->examined;
}

const char *sync_server_error(const struct sync_server *s)
{
	return s->error;
}

/* ---- FETCH, in steps ---- */

static int cmd_fetch(struct sync_server *s, const struct proto_cmd *cmd)
{
	struct proto_fetch f;
	const char *err;
	if (proto_read_fetch(cmd, SYNC_MAX_UIDS_PER_LINE * 4, &f, &err) != PROTO_CODEC_OK) {
		srv_reply(s, s->cur_id, "BAD", "ARGS", "FETCH uidset");
		return 0;
	}
	memset(&s->fetch, 0, sizeof(s->fetch));
	s->fetch.id = s->cur_id;
	/* The codec's array becomes the job's list: freed with it. */
	s->fetch.uids.items = f.uids;
	s->fetch.uids.count = f.uid_count;
	s->fetch.uids.cap = f.uid_count;
	s->job = JOB_FETCH;
	return 0;
}

static struct srv_text_ref *text_ref_find(struct sync_server *s, uint32_t uid)
{
	size_t lo = 0, hi = s->text_refs.count;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (s->text_refs.items[mid].uid == uid)
			return &s->text_refs.items[mid];
		if (s->text_refs.items[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* Sends the texts of up to s->budget UIDs (and about
 * SYNC_FETCH_STEP_BYTES), then the completion once all are sent. */
static int fetch_step(struct sync_server *s)
{
	struct srv_fetch *f = &s->fetch;
	const char *err;
	struct proto_wr w;
	size_t bytes = 0;
	unsigned n = 0;
	proto_wr_init(&w, &s->out);
	while (f->pos < f->uids.count && n < s->budget && bytes < SYNC_FETCH_STEP_BYTES) {
		uint32_t uid = f->uids.items[f->pos++];
		struct stor_msg m;
		n++;
		const struct srv_text_ref *ref = text_ref_find(s, uid);
		if (ref != NULL) {
			buf_reset(&f->text);
			if (stor_text_read(s->db, &ref->guid, 0, ref->size, &f->text, &err) == 0) {
				srv_line_begin(s, &w, f->id, "TEXT");
				proto_wr_u64(&w, uid);
				proto_wr_guid(&w, &ref->guid);
				proto_wr_literal(&w, f->text.data, f->text.len);
				proto_wr_end(&w);
				bytes += f->text.len;
			} else {
				ARRAY_PUSH(&f->missing, uid);
			}
			continue;
		}
		int r = stor_msg_get(s->db, &s->sel, uid, &m, &err);
		if (r < 0) {
			srv_flush(s);
			job_end(s);
			return srv_fail(s, "FETCH: %s", err);
		}
		if (r == 0) {
			ARRAY_PUSH(&f->missing, uid);
			continue;
		}
		buf_reset(&f->text);
		if (stor_text_read(s->db, &m.guid, 0, m.size, &f->text, &err) == 0) {
			srv_line_begin(s, &w, f->id, "TEXT");
			proto_wr_u64(&w, m.uid);
			proto_wr_guid(&w, &m.guid);
			proto_wr_literal(&w, f->text.data, f->text.len);
			proto_wr_end(&w);
			bytes += f->text.len;
		} else {
			/* A text lost here: reported missing, not fatal. */
			ARRAY_PUSH(&f->missing, uid);
		}
		stor_msg_free(&m);
	}
	if (f->pos == f->uids.count) {
		if (f->missing.count > 0) {
			struct buf code = BUF_INIT;
			struct proto_wr cw;
			proto_wr_init(&cw, &code);
			buf_append_str(&code, "MISSING ");
			proto_wr_uidset(&cw, f->missing.items, f->missing.count);
			buf_append_byte(&code, '\0');
			srv_status(s, f->id, "OK", (const char *)code.data, "fetched");
			buf_free(&code);
		} else {
			srv_status(s, f->id, "OK", NULL, "fetched");
		}
		job_end(s);
	}
	srv_flush(s);
	return 0;
}

bool sync_server_in_sync(const struct sync_server *s)
{
	return s->in_sync;
}

bool sync_server_selected(const struct sync_server *s, struct guid *guid_r)
{
	if (s->selected)
		*guid_r = s->sel;
	return s->selected;
}

/* Runs one command now (the server is idle). */
static int srv_dispatch(struct sync_server *s, const struct proto_cmd *cmd)
{
	if (proto_cmd_is(cmd, "LIST"))
		return cmd_list(s, cmd);
	if (proto_cmd_is(cmd, "CREATE"))
		return cmd_create(s, cmd);
	if (proto_cmd_is(cmd, "DELETE"))
		return cmd_delete(s, cmd);
	if (proto_cmd_is(cmd, "RENAME"))
		return cmd_rename(s, cmd);
	if (proto_cmd_is(cmd, "SUBSCRIBE"))
		return cmd_subscribe(s, cmd, true);
	if (proto_cmd_is(cmd, "UNSUBSCRIBE"))
		return cmd_subscribe(s, cmd, false);
	if (proto_cmd_is(cmd, "ACL-PUT"))
		return cmd_acl_put(s, cmd);
	if (proto_cmd_is(cmd, "MBOX"))
		return cmd_mbox(s, cmd);
	if (proto_cmd_is(cmd, "SELECT"))
		return cmd_select(s, cmd);
	static const char *const selected_cmds[] = {
		"SYNC-BEGIN", "FETCH", "SAVE", "STORE", "EXPUNGE", "UIDFIX", "GONE",
		"PSEEN", "SYNC-END", NULL
	};
	bool known = false;
	for (size_t i = 0; selected_cmds[i] != NULL && !known; i++)
		known = proto_cmd_is(cmd, selected_cmds[i]);
	if (!known) {
		srv_reply(s, s->cur_id, "BAD", "UNKNOWN-COMMAND", "not a sync command");
		return 0;
	}
	if (!s->selected) {
		srv_reply(s, s->cur_id, "BAD", "NOSELECT", "no mailbox selected");
		return 0;
	}
	if (proto_cmd_is(cmd, "SYNC-BEGIN"))
		return cmd_sync_begin(s, cmd);
	if (proto_cmd_is(cmd, "FETCH"))
		return cmd_fetch(s, cmd);
	if (!s->in_sync) {
		srv_reply(s, s->cur_id, "BAD", "PROTOCOL", "not in a sync");
		return 0;
	}
	if (proto_cmd_is(cmd, "SAVE"))
		return cmd_save(s, cmd);
	if (proto_cmd_is(cmd, "STORE"))
		return cmd_store(s, cmd);
	if (proto_cmd_is(cmd, "EXPUNGE"))
		return cmd_expunge(s, cmd);
	if (proto_cmd_is(cmd, "UIDFIX"))
		return cmd_uidfix(s, cmd);
	if (proto_cmd_is(cmd, "GONE"))
		return cmd_expunged(s, cmd);
	if (proto_cmd_is(cmd, "PSEEN"))
		return sync_pseen_srv_cmd(s, cmd);
	if (proto_cmd_is(cmd, "SYNC-END"))
		return merge_start(s, s->cur_id);
	srv_reply(s, s->cur_id, "BAD", "UNKNOWN-COMMAND", "not a sync command");
	return 0;
}

bool sync_server_busy(const struct sync_server *s)
{
	return s->job != JOB_NONE || s->held_pos < s->held.count;
}

void sync_server_set_budget(struct sync_server *s, unsigned budget)
{
	s->budget = budget != 0 ? budget : SYNC_DEFAULT_STEP_BUDGET;
}

int sync_server_step(struct sync_server *s)
{
	if (s->job == JOB_MERGE && merge_step(s) < 0)
		return -1;
	if (s->job == JOB_FETCH && fetch_step(s) < 0)
		return -1;
	/* Held commands, in order, until one starts a job again. */
	while (s->job == JOB_NONE && s->held_pos < s->held.count) {
		s->cur_id = s->held_ids.items[s->held_pos];
		struct proto_cmd *cmd = s->held.items[s->held_pos++];
		s->held_bytes -= proto_cmd_kept_size(cmd);
		int r = srv_dispatch(s, cmd);
		proto_cmd_kept_free(&cmd);
		if (r < 0)
			return -1;
		if (s->job != JOB_NONE)
			return 1;
	}
	if (s->held_pos == s->held.count)
		s->held.count = s->held_ids.count = s->held_pos = 0;
	return sync_server_busy(s) ? 1 : 0;
}

int sync_server_input(struct sync_server *s, const struct proto_cmd *cmd,
		      struct proto_parser *parser)
{
	if (proto_cmd_is_status(cmd) || strcmp(cmd->tag, "*") == 0)
		return 0; /* nothing of ours is pending */
	return sync_server_command(s, sync_tags_add(&s->wire_tags, cmd->tag), cmd, parser);
}

int sync_server_command(struct sync_server *s, uint32_t id, const struct proto_cmd *cmd,
			struct proto_parser *parser)
{
	if (proto_cmd_is_status(cmd))
		return 0; /* nothing of ours is pending */
	if (sync_server_busy(s)) {
		/* Answers keep the order of the commands: this one waits. */
		if (s->held_bytes > SYNC_MAX_HELD_INPUT)
			return srv_fail(s, "the peer sends commands without waiting for answers");
		struct proto_cmd *kept = proto_cmd_keep(cmd, parser);
		s->held_bytes += proto_cmd_kept_size(kept);
		ARRAY_PUSH(&s->held, kept);
		ARRAY_PUSH(&s->held_ids, id);
		return 0;
	}
	s->cur_id = id;
	if (srv_dispatch(s, cmd) < 0)
		return -1;
	/* Small jobs end at once, as if answered in one call. */
	if (s->job != JOB_NONE && sync_server_step(s) < 0)
		return -1;
	return 0;
}

int sync_server_feed(struct sync_server *s, const void *data, size_t len)
{
	const unsigned char *p = data;
	while (len > 0) {
		size_t used;
		const struct proto_cmd *cmd;
		int r = proto_parser_parse(s->parser, p, len, &used, &cmd);
		if (r < 0) {
			const char *code, *text;
			proto_parser_get_error(s->parser, &code, &text);
			return srv_fail(s, "parse error: %s", text);
		}
		p += used;
		len -= used;
		if (r == 1 && sync_server_input(s, cmd, s->parser) < 0)
			return -1;
	}
	return 0;
}

/* SEARCH and UID SEARCH.  The program is parsed once (imap-search.c), then
 * evaluated over the session's messages in bounded steps per loop turn,
 * loading a message's text only when a key needs it.  With a MODSEQ key the
 * reply ends with (MODSEQ n), the highest modseq among the matches (RFC
 * 7162 3.1.5). */
#include "imap/imap-commands.h"

#include <stdlib.h>
#include <string.h>

#include "imap/imap-search.h"
#include "lib/xalloc.h"

#define SEARCH_STEP_NO_TEXT 5000
#define SEARCH_STEP_TEXT 100

struct search_ctx {
	struct imap_search *search;
	stor_msg_list msgs;   /* all of the mailbox, UID order */
	size_t next;
	stor_uid_list matches;
	uint64_t max_modseq;
	struct guid mailbox;
	struct stor_db *db;
	struct buf text;
	struct guid text_guid;
	uint64_t text_size;
};

static void search_ctx_free(void *p)
{
	struct search_ctx *sc = p;
	imap_search_free(&sc->search);
	stor_msg_list_free(&sc->msgs);
	ARRAY_FREE(&sc->matches);
	buf_free(&sc->text);
	free(sc);
}

static int load_text(void *ctx, const char **text_r, size_t *len_r)
{
	struct search_ctx *sc = ctx;
	const char *err;
	buf_reset(&sc->text);
	if (stor_text_read(sc->db, &sc->text_guid, 0, sc->text_size, &sc->text, &err) < 0)
		return -1;
	*text_r = (const char *)sc->text.data;
	*len_r = sc->text.len;
	if (*text_r == NULL)
		*text_r = "";
	return 0;
}

static bool search_finish(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	struct search_ctx *sc = cmd->ctx;
	struct buf line = BUF_INIT;
	buf_append_str(&line, "* SEARCH");
	for (size_t i = 0; i < sc->matches.count; i++)
		buf_appendf(&line, " %u", sc->matches.items[i]);
	if (imap_search_uses_modseq(sc->search) && sc->matches.count > 0)
		buf_appendf(&line, " (MODSEQ %llu)", (unsigned long long)sc->max_modseq);
	buf_append_str(&line, "\r\n");
	imap_client_write(c, line.data, line.len);
	buf_free(&line);
	return imap_cmd_done(cmd, "OK", "SEARCH completed");
}

static bool search_step(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	struct search_ctx *sc = cmd->ctx;
	if (c->sel == NULL)
		return imap_cmd_done(cmd, "NO", "Mailbox closed");
	size_t budget = imap_search_needs_text(sc->search) ? SEARCH_STEP_TEXT : SEARCH_STEP_NO_TEXT;
	for (size_t n = 0; n < budget && sc->next < sc->msgs.count; n++) {
		const struct stor_msg *m = &sc->msgs.items[sc->next++];
		uint32_t seq = imap_sel_seq(c->sel, m->uid);
		if (seq == 0)
			continue;
		struct imap_search_msg sm;
		memset(&sm, 0, sizeof(sm));
		sm.seq = seq;
		sm.uid = m->uid;
		sm.flags = m->flags;
		sm.keywords = &m->keywords;
		sm.internaldate = m->internaldate;
		sm.internaldate_tz = m->internaldate_tz;
		sm.size = m->size;
		sm.modseq = m->modseq;
		sm.recent = imap_sel_is_recent(c->sel, m->uid);
		sm.load_text = load_text;
		sm.load_ctx = sc;
		sc->text_guid = m->guid;
		sc->text_size = m->size;
		if (imap_search_match(sc->search, &sm)) {
			ARRAY_PUSH(&sc->matches, cmd->uid ? m->uid : seq);
			if (m->modseq > sc->max_modseq)
				sc->max_modseq = m->modseq;
		}
		imap_search_msg_done(&sm);
	}
	if (sc->next < sc->msgs.count) {
		cmd->cont = search_step;
		imap_client_kick(c);
		return false;
	}
	return search_finish(cmd);
}

bool imap_cmd_search(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	struct search_ctx *sc = xcalloc(1, sizeof(*sc));
	cmd->ctx = sc;
	cmd->ctx_free = search_ctx_free;
	const struct imap_arg *args = cmd->args;
	size_t count = cmd->count;
	if (count >= 2 && imap_arg_atom_eq(&args[0], "RETURN"))
		return imap_cmd_done(cmd, "BAD", "ESEARCH is not supported");
	enum imap_search_error kind;
	const char *err;
	if (imap_search_parse(args, count, &sc->search, &kind, &err) < 0) {
		if (kind == IMAP_SEARCH_BADCHARSET)
			return imap_cmd_done(cmd, "NO", "[BADCHARSET (UTF-8 US-ASCII)] %s", err);
		return imap_cmd_done(cmd, "BAD", "%s", err);
	}
	if (imap_search_uses_modseq(sc->search))
		c->condstore = true;
	struct imap_selected *sel = c->sel;
	uint32_t n = (uint32_t)sel->uids.count;
	imap_search_resolve(sc->search, n, n > 0 ? sel->uids.items[n - 1] : 0);
	sc->mailbox = sel->guid;
	sc->db = c->server->db;
	if (stor_msg_list_range(sc->db, &sc->mailbox, 1, UINT32_MAX, &sc->msgs, &err) < 0)
		return imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
	return search_step(cmd);
}

/* SEARCH and UID SEARCH.  The program is parsed once (imap-search.c), then
 * evaluated over the session's messages in bounded steps per loop turn,
 * loading a message's text only when a key needs it.  With a MODSEQ key the
 * reply ends with (MODSEQ n), the highest modseq among the matches (RFC
 * 7162 3.1.5).  With RETURN (...) the reply is an ESEARCH response
 * (imap-esearch.c, RFC 4731/5267) and SAVE keeps the result for "$" (RFC
 * 5182). */
#include "imap/imap-commands.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap/imap-derived.h"
#include "imap/imap-esearch.h"
#include "imap/imap-search.h"
#include "lib/xalloc.h"

#define SEARCH_STEP_NO_TEXT 5000
#define SEARCH_STEP_TEXT 100

struct search_ctx {
	struct imap_search *search;
	stor_msg_list msgs;   /* all of the mailbox, UID order */
	size_t next;
	stor_uid_list matches;    /* sequence numbers or UIDs, as answered */
	stor_uid_list match_uids; /* the same messages' UIDs, for SAVE */
	ARRAY(uint64_t) match_modseqs;
	uint64_t max_modseq;
	struct imap_esearch_return ret;
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
	ARRAY_FREE(&sc->match_uids);
	ARRAY_FREE(&sc->match_modseqs);
	buf_free(&sc->text);
	free(sc);
}

static int load_text(void *ctx, const char **text_r, size_t *len_r)
{
	struct search_ctx *sc = ctx;
	const char *err;
	buf_reset(&sc->text);
	if (!imap_search_needs_body(sc->search) ?
		    imap_derived_load_header(sc->db, &sc->text_guid, sc->text_size, &sc->text, &err) < 0 :
		    stor_text_read(sc->db, &sc->text_guid, 0, sc->text_size, &sc->text, &err) < 0)
		return -1;
	*text_r = (const char *)sc->text.data;
	*len_r = sc->text.len;
	if (*text_r == NULL)
		*text_r = "";
	return 0;
}

static void save_result(struct imap_selected *sel, const struct search_ctx *sc)
{
	size_t n;
	uint32_t *uids = imap_esearch_save_uids(&sc->ret, sc->matches.items, sc->match_uids.items,
						sc->matches.count, &n);
	imap_sel_save_result(sel, uids, n);
	free(uids);
}

/* RFC 5182 2.1: a SEARCH with SAVE that fails leaves "$" empty, so later
 * commands using it cannot act on a stale result. */
static bool search_fail(struct imap_cmd *cmd, bool save, const char *status, const char *text)
{
	if (save && cmd->client->sel != NULL)
		imap_sel_save_result(cmd->client->sel, NULL, 0);
	return imap_cmd_done_str(cmd, status, text);
}

static bool search_finish(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	struct search_ctx *sc = cmd->ctx;
	struct buf line = BUF_INIT;
	if (sc->ret.given) {
		if (imap_esearch_wants_reply(&sc->ret))
			imap_esearch_format(&line, cmd->tag, cmd->uid, &sc->ret, sc->matches.items,
					    imap_search_uses_modseq(sc->search) ?
						    sc->match_modseqs.items : NULL,
					    sc->matches.count);
		if (sc->ret.opts & IMAP_ESEARCH_SAVE)
			save_result(c->sel, sc);
		if ((sc->ret.opts & IMAP_ESEARCH_UPDATE) &&
		    imap_search_update_add(c->sel, cmd->tag, cmd->uid, &sc->search,
					   sc->match_uids.items, sc->match_uids.count) < 0) {
			/* RFC 5267 4.3.1: the search itself still succeeds. */
			buf_append_str(&line, "* NO [NOUPDATE ");
			imap_append_nstring(&line, cmd->tag, strlen(cmd->tag));
			buf_append_str(&line, "] Too many search contexts\r\n");
		}
	} else {
		buf_append_str(&line, "* SEARCH");
		for (size_t i = 0; i < sc->matches.count; i++)
			buf_appendf(&line, " %u", sc->matches.items[i]);
		if (imap_search_uses_modseq(sc->search) && sc->matches.count > 0)
			buf_appendf(&line, " (MODSEQ %llu)", (unsigned long long)sc->max_modseq);
		buf_append_str(&line, "\r\n");
	}
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
		imap_search_msg_init(&sm, m, seq, imap_sel_is_recent(c->sel, m->uid), load_text, sc);
		sc->text_guid = m->guid;
		sc->text_size = m->size;
		if (imap_search_match(sc->search, &sm)) {
			ARRAY_PUSH(&sc->matches, cmd->uid ? m->uid : seq);
			ARRAY_PUSH(&sc->match_uids, m->uid);
			ARRAY_PUSH(&sc->match_modseqs, m->modseq);
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
	const char *err;
	int used = imap_esearch_parse_return(args, count, &sc->ret, &err);
	if (used < 0)
		return search_fail(cmd, imap_esearch_names_save(args, count), "BAD", err);
	/* RFC 9051 6.4.4: IMAP4rev2 answers every SEARCH with ESEARCH; no
	 * RETURN is RETURN (ALL). */
	if (c->rev2 && !sc->ret.given) {
		sc->ret.given = true;
		sc->ret.opts = IMAP_ESEARCH_ALL;
	}
	bool save = (sc->ret.opts & IMAP_ESEARCH_SAVE) != 0;
	args += used;
	count -= (size_t)used;
	enum imap_search_error kind;
	if (imap_search_parse(args, count, &sc->search, &kind, &err) < 0) {
		if (kind == IMAP_SEARCH_BADCHARSET) {
			char text[256];
			snprintf(text, sizeof(text), "[BADCHARSET (UTF-8 US-ASCII)] %s", err);
			return search_fail(cmd, save, "NO", text);
		}
		return search_fail(cmd, save, "BAD", err);
	}
	if (imap_search_uses_modseq(sc->search))
		imap_enable_condstore(c);
	struct imap_selected *sel = c->sel;
	uint32_t n = (uint32_t)sel->uids.count;
	imap_search_resolve(sc->search, n, n > 0 ? sel->uids.items[n - 1] : 0);
	imap_search_resolve_saved(sc->search, sel->saved.items, sel->saved.count);
	sc->mailbox = sel->guid;
	sc->db = c->server->db;
	if (stor_msg_list_range(sc->db, &sc->mailbox, 1, UINT32_MAX, &sc->msgs, &err) < 0) {
		char text[512];
		snprintf(text, sizeof(text), "[SERVERBUG] %s", err);
		return search_fail(cmd, save, "NO", text);
	}
	return search_step(cmd);
}

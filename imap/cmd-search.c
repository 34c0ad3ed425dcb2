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

#include "imap/imap-search-run.h"
#include "lib/xalloc.h"

#define SEARCH_STEP_NO_TEXT 5000
#define SEARCH_STEP_TEXT 100

struct search_ctx {
	struct imap_search_run run;
	stor_uid_list matches;    /* sequence numbers or UIDs, as answered */
	stor_uid_list match_uids; /* the same messages' UIDs, for SAVE */
	ARRAY(uint64_t) match_modseqs;
	struct imap_esearch_return ret;
};

static void search_ctx_free(void *p)
{
	struct search_ctx *sc = p;
	imap_search_run_free(&sc->run);
	ARRAY_FREE(&sc->matches);
	ARRAY_FREE(&sc->match_uids);
	ARRAY_FREE(&sc->match_modseqs);
	free(sc);
}

static int search_update(struct imap_cmd *cmd)
{
	struct search_ctx *sc = cmd->ctx;
	return imap_search_update_add(cmd->client->sel, cmd->tag, cmd->uid, &sc->run.search,
				      sc->match_uids.items, sc->match_uids.count);
}

static bool search_finish(struct imap_cmd *cmd)
{
	struct search_ctx *sc = cmd->ctx;
	imap_search_run_reply(cmd, "SEARCH", &sc->ret, imap_search_uses_modseq(sc->run.search),
			      sc->matches.items, sc->match_uids.items, sc->match_modseqs.items,
			      sc->matches.count, search_update);
	return imap_cmd_done(cmd, "OK", "SEARCH completed");
}

static void search_match(struct imap_cmd *cmd, const struct stor_msg *m, uint32_t seq,
			 const struct imap_search_msg *sm)
{
	(void)sm;
	struct search_ctx *sc = cmd->ctx;
	ARRAY_PUSH(&sc->matches, cmd->uid ? m->uid : seq);
	ARRAY_PUSH(&sc->match_uids, m->uid);
	ARRAY_PUSH(&sc->match_modseqs, m->modseq);
}

static bool search_step(struct imap_cmd *cmd)
{
	struct search_ctx *sc = cmd->ctx;
	size_t budget = imap_search_needs_text(sc->run.search) ? SEARCH_STEP_TEXT
							       : SEARCH_STEP_NO_TEXT;
	return imap_search_run_step(cmd, &sc->run, budget, search_match, search_step,
				    search_finish);
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
		return imap_search_run_fail(cmd, imap_esearch_names_save(args, count), "BAD",
					    err);
	/* RFC 9051 6.4.4: IMAP4rev2 answers every SEARCH with ESEARCH; no
	 * RETURN is RETURN (ALL). */
	if (c->rev2 && !sc->ret.given) {
		sc->ret.given = true;
		sc->ret.opts = IMAP_ESEARCH_ALL;
	}
	bool save = (sc->ret.opts & IMAP_ESEARCH_SAVE) != 0;
	const char *status;
	char text[512];
	if (imap_search_run_parse(&sc->run, args + used, count - (size_t)used, false, &status, text,
				  sizeof(text)) < 0)
		return imap_search_run_fail(cmd, save, status, text);
	if (imap_search_uses_modseq(sc->run.search))
		imap_enable_condstore(c);
	if (imap_search_run_start(&sc->run, c, text, sizeof(text)) < 0)
		return imap_search_run_fail(cmd, save, "NO", text);
	imap_search_resolve_saved(sc->run.search, c->sel->saved.items, c->sel->saved.count);
	return search_step(cmd);
}

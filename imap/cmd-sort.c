/* SORT and UID SORT (RFC 5256), with SORT=DISPLAY's criteria (RFC 5957) and
 * ESORT's return options (RFC 5267: MIN, MAX, COUNT, ALL, and PARTIAL) and
 * SEARCHRES's SAVE (RFC 5182), parsed and answered by imap-esearch.c, and
 * CONTEXT=SORT's UPDATE, kept up to date by imap-search-update.c.
 *
 * The search program is SEARCH's (imap-search.c), run the same way in
 * bounded steps per loop turn; each match gets the sort keys its criteria
 * need (from the text's derived record, imap-derived.h, which holds the
 * keys of imap-sortkeys.c), and when all
 * messages are seen the entries are sorted and reported.  ESORT's MIN and
 * MAX are the first and last message in the sort order, ALL and PARTIAL
 * keep that order. */
#include "imap/imap-commands.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap/imap-derived.h"
#include "imap/imap-search-run.h"
#include "imap/imap-sort.h"
#include "lib/xalloc.h"

#define SORT_STEP_NO_TEXT 5000
#define SORT_STEP_TEXT 100

struct sort_ctx {
	struct imap_search_run run;
	struct imap_sort_program prog;
	struct imap_esearch_return ret;
	ARRAY(struct imap_sort_entry) entries;
};

static void sort_ctx_free(void *p)
{
	struct sort_ctx *sc = p;
	imap_search_run_free(&sc->run);
	for (size_t i = 0; i < sc->entries.count; i++)
		imap_sort_entry_free(&sc->entries.items[i]);
	ARRAY_FREE(&sc->entries);
	free(sc);
}

/* CONTEXT=SORT: the context takes the entries, keys and all */
static int sort_update(struct imap_cmd *cmd)
{
	struct sort_ctx *sc = cmd->ctx;
	if (imap_search_update_add_sorted(cmd->client->sel, cmd->tag, cmd->uid, &sc->run.search,
					  &sc->prog, sc->entries.items, sc->entries.count) != 0)
		return -1;
	sc->entries.count = 0;
	return 0;
}

static bool sort_finish(struct imap_cmd *cmd)
{
	struct sort_ctx *sc = cmd->ctx;
	size_t n = sc->entries.count;
	imap_sort_entries(&sc->prog, sc->entries.items, n);
	uint32_t *nums = xreallocarray(NULL, n > 0 ? n : 1, sizeof(*nums));
	uint32_t *uids = xreallocarray(NULL, n > 0 ? n : 1, sizeof(*uids));
	uint64_t *modseqs = xreallocarray(NULL, n > 0 ? n : 1, sizeof(*modseqs));
	for (size_t i = 0; i < n; i++) {
		nums[i] = cmd->uid ? sc->entries.items[i].uid : sc->entries.items[i].seq;
		uids[i] = sc->entries.items[i].uid;
		modseqs[i] = sc->entries.items[i].modseq;
	}
	imap_search_run_reply(cmd, "SORT", &sc->ret, imap_search_uses_modseq(sc->run.search), nums,
			      uids, modseqs, n, sort_update);
	free(nums);
	free(uids);
	free(modseqs);
	return imap_cmd_done(cmd, "OK", "SORT completed");
}

static void sort_match(struct imap_cmd *cmd, const struct stor_msg *m, uint32_t seq,
		       const struct imap_search_msg *sm)
{
	(void)sm;
	struct sort_ctx *sc = cmd->ctx;
	struct imap_sort_entry e;
	memset(&e, 0, sizeof(e));
	e.seq = seq;
	e.uid = m->uid;
	e.size = m->size;
	e.arrival = m->internaldate;
	e.modseq = m->modseq;
	/* The keys come from the text's derived record; an unreadable text
	 * sorts with empty keys. */
	struct imap_derived d;
	const char *err;
	if (imap_sort_program_needs_text(&sc->prog) &&
	    imap_derived_load(sc->run.db, &m->guid, m->size, &d, NULL, NULL, &err) == 0) {
		imap_derived_sort_fill(&e, &sc->prog, &d);
		imap_derived_free(&d);
	} else {
		imap_sort_entry_fill(&e, &sc->prog, NULL);
	}
	ARRAY_PUSH(&sc->entries, e);
}

static bool sort_step(struct imap_cmd *cmd)
{
	struct sort_ctx *sc = cmd->ctx;
	size_t budget = imap_sort_program_needs_text(&sc->prog) ||
					imap_search_needs_text(sc->run.search) ?
				SORT_STEP_TEXT :
				SORT_STEP_NO_TEXT;
	return imap_search_run_step(cmd, &sc->run, budget, sort_match, sort_step, sort_finish);
}

bool imap_cmd_sort(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	struct sort_ctx *sc = xcalloc(1, sizeof(*sc));
	cmd->ctx = sc;
	cmd->ctx_free = sort_ctx_free;
	const struct imap_arg *args = cmd->args;
	size_t count = cmd->count;
	const char *err;
	char text[512];
	int used = imap_esearch_parse_return(args, count, &sc->ret, &err);
	if (used < 0)
		return imap_search_run_fail(cmd, imap_esearch_names_save(args, count), "BAD",
					    err);
	bool save = (sc->ret.opts & IMAP_ESEARCH_SAVE) != 0;
	sc->ret.sorted = true;
	size_t i = (size_t)used;
	if (i >= count || imap_sort_program_parse(&args[i], &sc->prog, &err) < 0)
		return imap_search_run_fail(cmd, save, "BAD",
					    i >= count ? "Missing sort criteria" : err);
	i++;
	if (i >= count || args[i].type == IMAP_ARG_LIST)
		return imap_search_run_fail(cmd, save, "BAD", "Missing charset");
	if (count - i < 2)
		return imap_search_run_fail(cmd, save, "BAD", "Missing search keys");
	const char *status;
	if (imap_search_run_parse(&sc->run, &args[i], count - i, true, &status, text, sizeof(text)) <
	    0)
		return imap_search_run_fail(cmd, save, status, text);
	if (imap_search_uses_modseq(sc->run.search))
		imap_enable_condstore(c);
	if (imap_search_run_start(&sc->run, c, text, sizeof(text)) < 0)
		return imap_search_run_fail(cmd, save, "NO", text);
	imap_search_resolve_saved(sc->run.search, c->sel->saved.items, c->sel->saved.count);
	return sort_step(cmd);
}

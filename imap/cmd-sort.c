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
#include "imap/imap-esearch.h"
#include "imap/imap-mime.h"
#include "imap/imap-search.h"
#include "imap/imap-sort.h"
#include "lib/xalloc.h"

#define SORT_STEP_NO_TEXT 5000
#define SORT_STEP_TEXT 100

struct sort_ctx {
	struct imap_search *search;
	struct imap_arg *search_args;
	struct imap_sort_program prog;
	struct imap_esearch_return ret;
	stor_msg_list msgs; /* all of the mailbox, UID order */
	size_t next;
	ARRAY(struct imap_sort_entry) entries;
	struct guid mailbox;
	struct stor_db *db;
	struct buf text;
	struct guid text_guid;
	uint64_t text_size;
};

static void sort_ctx_free(void *p)
{
	struct sort_ctx *sc = p;
	imap_search_free(&sc->search);
	free(sc->search_args);
	stor_msg_list_free(&sc->msgs);
	for (size_t i = 0; i < sc->entries.count; i++)
		imap_sort_entry_free(&sc->entries.items[i]);
	ARRAY_FREE(&sc->entries);
	buf_free(&sc->text);
	free(sc);
}

static int load_text(void *ctx, const char **text_r, size_t *len_r)
{
	struct sort_ctx *sc = ctx;
	const char *err;
	buf_reset(&sc->text);
	if (!imap_search_needs_body(sc->search) ?
		    imap_derived_load_header(sc->db, &sc->text_guid, sc->text_size, &sc->text, &err) < 0 :
		    stor_text_read(sc->db, &sc->text_guid, 0, sc->text_size, &sc->text, &err) < 0)
		return -1;
	*text_r = sc->text.data != NULL ? (const char *)sc->text.data : "";
	*len_r = sc->text.len;
	return 0;
}

/* RFC 5182 2.1: a failing command with SAVE leaves "$" empty. */
static bool sort_fail(struct imap_cmd *cmd, bool save, const char *status, const char *text)
{
	if (save && cmd->client->sel != NULL)
		imap_sel_save_result(cmd->client->sel, NULL, 0);
	return imap_cmd_done_str(cmd, status, text);
}

static bool sort_finish(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	struct sort_ctx *sc = cmd->ctx;
	size_t n = sc->entries.count;
	imap_sort_entries(&sc->prog, sc->entries.items, n);
	uint32_t *nums = xreallocarray(NULL, n > 0 ? n : 1, sizeof(*nums));
	uint32_t *uids = xreallocarray(NULL, n > 0 ? n : 1, sizeof(*uids));
	uint64_t *modseqs = xreallocarray(NULL, n > 0 ? n : 1, sizeof(*modseqs));
	uint64_t max_modseq = 0;
	for (size_t i = 0; i < n; i++) {
		nums[i] = cmd->uid ? sc->entries.items[i].uid : sc->entries.items[i].seq;
		uids[i] = sc->entries.items[i].uid;
		modseqs[i] = sc->entries.items[i].modseq;
		if (modseqs[i] > max_modseq)
			max_modseq = modseqs[i];
	}
	bool with_modseq = imap_search_uses_modseq(sc->search);
	struct buf line = BUF_INIT;
	if (sc->ret.given) {
		if (imap_esearch_wants_reply(&sc->ret))
			imap_esearch_format(&line, cmd->tag, cmd->uid, &sc->ret, nums,
					    with_modseq ? modseqs : NULL, n);
		if (sc->ret.opts & IMAP_ESEARCH_SAVE) {
			size_t nsave;
			uint32_t *save = imap_esearch_save_uids(&sc->ret, nums, uids, n, &nsave);
			imap_sel_save_result(c->sel, save, nsave);
			free(save);
		}
		/* CONTEXT=SORT: the context takes the entries, keys and all */
		if (sc->ret.opts & IMAP_ESEARCH_UPDATE) {
			if (imap_search_update_add_sorted(c->sel, cmd->tag, cmd->uid, &sc->search,
							  &sc->prog, sc->entries.items, n) == 0) {
				sc->entries.count = 0;
			} else {
				/* RFC 5267 4.3.1: the sort itself still succeeds. */
				buf_append_str(&line, "* NO [NOUPDATE ");
				imap_append_nstring(&line, cmd->tag, strlen(cmd->tag));
				buf_append_str(&line, "] Too many search contexts\r\n");
			}
		}
	} else {
		buf_append_str(&line, "* SORT");
		for (size_t i = 0; i < n; i++)
			buf_appendf(&line, " %u", nums[i]);
		if (with_modseq && n > 0)
			buf_appendf(&line, " (MODSEQ %llu)", (unsigned long long)max_modseq);
		buf_append_str(&line, "\r\n");
	}
	imap_client_write(c, line.data, line.len);
	buf_free(&line);
	free(nums);
	free(uids);
	free(modseqs);
	return imap_cmd_done(cmd, "OK", "SORT completed");
}

static bool sort_step(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	struct sort_ctx *sc = cmd->ctx;
	if (c->sel == NULL)
		return imap_cmd_done(cmd, "NO", "Mailbox closed");
	bool keys_need_text = imap_sort_program_needs_text(&sc->prog);
	size_t budget = keys_need_text || imap_search_needs_text(sc->search) ? SORT_STEP_TEXT
									     : SORT_STEP_NO_TEXT;
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
			struct imap_sort_entry e;
			memset(&e, 0, sizeof(e));
			e.seq = seq;
			e.uid = m->uid;
			e.size = m->size;
			e.arrival = m->internaldate;
			e.modseq = m->modseq;
			/* The keys come from the text's derived record; an
			 * unreadable text sorts with empty keys. */
			struct imap_derived d;
			const char *err;
			if (keys_need_text &&
			    imap_derived_load(sc->db, &m->guid, m->size, &d, NULL, NULL, &err) == 0) {
				imap_derived_sort_fill(&e, &sc->prog, &d);
				imap_derived_free(&d);
			} else {
				imap_sort_entry_fill(&e, &sc->prog, NULL);
			}
			ARRAY_PUSH(&sc->entries, e);
		}
		imap_search_msg_done(&sm);
	}
	if (sc->next < sc->msgs.count) {
		cmd->cont = sort_step;
		imap_client_kick(c);
		return false;
	}
	return sort_finish(cmd);
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
		return sort_fail(cmd, imap_esearch_names_save(args, count), "BAD", err);
	bool save = (sc->ret.opts & IMAP_ESEARCH_SAVE) != 0;
	sc->ret.sorted = true;
	size_t i = (size_t)used;
	if (i >= count || imap_sort_program_parse(&args[i], &sc->prog, &err) < 0)
		return sort_fail(cmd, save, "BAD", i >= count ? "Missing sort criteria" : err);
	i++;
	/* the charset is mandatory here; SEARCH's parser takes it as
	 * "CHARSET x" */
	if (i >= count || args[i].type == IMAP_ARG_LIST)
		return sort_fail(cmd, save, "BAD", "Missing charset");
	size_t n = count - i + 1;
	sc->search_args = xreallocarray(NULL, n, sizeof(*sc->search_args));
	memset(&sc->search_args[0], 0, sizeof(sc->search_args[0]));
	sc->search_args[0].type = IMAP_ARG_ATOM;
	sc->search_args[0].str = "CHARSET";
	sc->search_args[0].len = 7;
	memcpy(&sc->search_args[1], &args[i], (count - i) * sizeof(*args));
	if (n < 3)
		return sort_fail(cmd, save, "BAD", "Missing search keys");
	enum imap_search_error kind;
	if (imap_search_parse(sc->search_args, n, &sc->search, &kind, &err) < 0) {
		if (kind == IMAP_SEARCH_BADCHARSET) {
			snprintf(text, sizeof(text), "[BADCHARSET (UTF-8 US-ASCII)] %s", err);
			return sort_fail(cmd, save, "NO", text);
		}
		return sort_fail(cmd, save, "BAD", err);
	}
	if (imap_search_uses_modseq(sc->search))
		c->condstore = true;
	struct imap_selected *sel = c->sel;
	uint32_t nmsg = (uint32_t)sel->uids.count;
	imap_search_resolve(sc->search, nmsg, nmsg > 0 ? sel->uids.items[nmsg - 1] : 0);
	imap_search_resolve_saved(sc->search, sel->saved.items, sel->saved.count);
	sc->mailbox = sel->guid;
	sc->db = c->server->db;
	if (stor_msg_list_range(sc->db, &sc->mailbox, 1, UINT32_MAX, &sc->msgs, &err) < 0) {
		snprintf(text, sizeof(text), "[SERVERBUG] %s", err);
		return sort_fail(cmd, save, "NO", text);
	}
	return sort_step(cmd);
}

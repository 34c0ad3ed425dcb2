/* SORT and UID SORT (RFC 5256), with SORT=DISPLAY's criteria (RFC 5957) and
 * ESORT's return options (RFC 5267: MIN, MAX, COUNT, ALL, and PARTIAL).
 *
 * The search program is SEARCH's (imap-search.c), run the same way in
 * bounded steps per loop turn; each match gets the sort keys its criteria
 * need (from the text's derived record, imap-derived.h, which holds the
 * keys of imap-sortkeys.c), and when all
 * messages are seen the entries are sorted and reported.  ESORT's MIN and
 * MAX are the first and last message in the sort order, ALL and PARTIAL
 * keep that order. */
#include "imap/imap-commands.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "imap/imap-derived.h"
#include "imap/imap-mime.h"
#include "imap/imap-search.h"
#include "imap/imap-sort.h"
#include "lib/xalloc.h"

#define SORT_STEP_NO_TEXT 5000
#define SORT_STEP_TEXT 100

enum sort_return {
	RET_MIN = 1 << 0,
	RET_MAX = 1 << 1,
	RET_COUNT = 1 << 2,
	RET_ALL = 1 << 3,
	RET_PARTIAL = 1 << 4,
};

struct sort_ctx {
	struct imap_search *search;
	struct imap_arg *search_args;
	struct imap_sort_program prog;
	bool esort;
	unsigned ret;
	uint32_t partial_lo, partial_hi;
	stor_msg_list msgs; /* all of the mailbox, UID order */
	size_t next;
	ARRAY(struct imap_sort_entry) entries;
	uint64_t max_modseq;
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

/* "nz-number:nz-number" (either order), no '*'. */
static int parse_partial(const struct imap_arg *a, uint32_t *lo_r, uint32_t *hi_r)
{
	if (a->type != IMAP_ARG_ATOM)
		return -1;
	uint64_t n[2] = { 0, 0 };
	const char *p = a->str;
	for (int k = 0; k < 2; k++) {
		if (!isdigit((unsigned char)*p) || *p == '0')
			return -1;
		while (isdigit((unsigned char)*p)) {
			n[k] = n[k] * 10 + (uint64_t)(*p++ - '0');
			if (n[k] > UINT32_MAX)
				return -1;
		}
		if (k == 0 && *p++ != ':')
			return -1;
	}
	if (*p != '\0')
		return -1;
	*lo_r = (uint32_t)(n[0] < n[1] ? n[0] : n[1]);
	*hi_r = (uint32_t)(n[0] < n[1] ? n[1] : n[0]);
	return 0;
}

static int parse_return(struct sort_ctx *sc, const struct imap_arg *list, const char **error_r)
{
	sc->esort = true;
	if (list->type != IMAP_ARG_LIST) {
		*error_r = "RETURN needs a list";
		return -1;
	}
	for (size_t i = 0; i < list->count; i++) {
		const struct imap_arg *a = &list->list[i];
		if (imap_arg_atom_eq(a, "MIN"))
			sc->ret |= RET_MIN;
		else if (imap_arg_atom_eq(a, "MAX"))
			sc->ret |= RET_MAX;
		else if (imap_arg_atom_eq(a, "COUNT"))
			sc->ret |= RET_COUNT;
		else if (imap_arg_atom_eq(a, "ALL"))
			sc->ret |= RET_ALL;
		else if (imap_arg_atom_eq(a, "PARTIAL")) {
			if ((sc->ret & RET_PARTIAL) != 0 || i + 1 >= list->count ||
			    parse_partial(&list->list[i + 1], &sc->partial_lo, &sc->partial_hi) < 0) {
				*error_r = "PARTIAL needs a range n:m";
				return -1;
			}
			sc->ret |= RET_PARTIAL;
			i++;
		} else {
			*error_r = "Unknown RETURN option";
			return -1;
		}
	}
	/* RFC 4731: RETURN () means ALL */
	if (sc->ret == 0)
		sc->ret = RET_ALL;
	return 0;
}

static void write_esearch(struct imap_cmd *cmd, const uint32_t *nums, size_t n, struct buf *line)
{
	struct sort_ctx *sc = cmd->ctx;
	buf_appendf(line, "* ESEARCH (TAG \"%s\")", cmd->tag);
	if (cmd->uid)
		buf_append_str(line, " UID");
	if ((sc->ret & RET_MIN) != 0 && n > 0)
		buf_appendf(line, " MIN %u", nums[0]);
	if ((sc->ret & RET_MAX) != 0 && n > 0)
		buf_appendf(line, " MAX %u", nums[n - 1]);
	if ((sc->ret & RET_COUNT) != 0)
		buf_appendf(line, " COUNT %zu", n);
	if ((sc->ret & RET_ALL) != 0 && n > 0) {
		buf_append_str(line, " ALL ");
		imap_sort_append_set(line, nums, n);
	}
	if ((sc->ret & RET_PARTIAL) != 0) {
		buf_appendf(line, " PARTIAL (%u:%u ", sc->partial_lo, sc->partial_hi);
		if (sc->partial_lo > n) {
			buf_append_str(line, "NIL");
		} else {
			size_t hi = sc->partial_hi < n ? sc->partial_hi : n;
			imap_sort_append_set(line, nums + sc->partial_lo - 1,
					     hi - sc->partial_lo + 1);
		}
		buf_append_byte(line, ')');
	}
	if (imap_search_uses_modseq(sc->search) && n > 0)
		buf_appendf(line, " MODSEQ %llu", (unsigned long long)sc->max_modseq);
}

static bool sort_finish(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	struct sort_ctx *sc = cmd->ctx;
	size_t n = sc->entries.count;
	imap_sort_entries(&sc->prog, sc->entries.items, n);
	uint32_t *nums = xreallocarray(NULL, n > 0 ? n : 1, sizeof(*nums));
	for (size_t i = 0; i < n; i++)
		nums[i] = cmd->uid ? sc->entries.items[i].uid : sc->entries.items[i].seq;
	struct buf line = BUF_INIT;
	if (sc->esort) {
		write_esearch(cmd, nums, n, &line);
	} else {
		buf_append_str(&line, "* SORT");
		for (size_t i = 0; i < n; i++)
			buf_appendf(&line, " %u", nums[i]);
		if (imap_search_uses_modseq(sc->search) && n > 0)
			buf_appendf(&line, " (MODSEQ %llu)", (unsigned long long)sc->max_modseq);
	}
	buf_append_str(&line, "\r\n");
	imap_client_write(c, line.data, line.len);
	buf_free(&line);
	free(nums);
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
			struct imap_sort_entry e;
			memset(&e, 0, sizeof(e));
			e.seq = seq;
			e.uid = m->uid;
			e.size = m->size;
			e.arrival = m->internaldate;
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
			if (m->modseq > sc->max_modseq)
				sc->max_modseq = m->modseq;
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
	size_t count = cmd->count, i = 0;
	const char *err;
	if (count >= 1 && imap_arg_atom_eq(&args[0], "RETURN")) {
		if (count < 2 || parse_return(sc, &args[1], &err) < 0)
			return imap_cmd_done(cmd, "BAD", "%s", count < 2 ? "Missing RETURN options" : err);
		i = 2;
	}
	if (i >= count || imap_sort_program_parse(&args[i], &sc->prog, &err) < 0)
		return imap_cmd_done(cmd, "BAD", "%s", i >= count ? "Missing sort criteria" : err);
	i++;
	/* the charset is mandatory here; SEARCH's parser takes it as
	 * "CHARSET x" */
	if (i >= count || args[i].type == IMAP_ARG_LIST)
		return imap_cmd_done(cmd, "BAD", "Missing charset");
	size_t n = count - i + 1;
	sc->search_args = xreallocarray(NULL, n, sizeof(*sc->search_args));
	memset(&sc->search_args[0], 0, sizeof(sc->search_args[0]));
	sc->search_args[0].type = IMAP_ARG_ATOM;
	sc->search_args[0].str = "CHARSET";
	sc->search_args[0].len = 7;
	memcpy(&sc->search_args[1], &args[i], (count - i) * sizeof(*args));
	if (n < 3)
		return imap_cmd_done(cmd, "BAD", "Missing search keys");
	enum imap_search_error kind;
	if (imap_search_parse(sc->search_args, n, &sc->search, &kind, &err) < 0) {
		if (kind == IMAP_SEARCH_BADCHARSET)
			return imap_cmd_done(cmd, "NO", "[BADCHARSET (UTF-8 US-ASCII)] %s", err);
		return imap_cmd_done(cmd, "BAD", "%s", err);
	}
	if (imap_search_uses_modseq(sc->search))
		c->condstore = true;
	struct imap_selected *sel = c->sel;
	uint32_t nmsg = (uint32_t)sel->uids.count;
	imap_search_resolve(sc->search, nmsg, nmsg > 0 ? sel->uids.items[nmsg - 1] : 0);
	sc->mailbox = sel->guid;
	sc->db = c->server->db;
	if (stor_msg_list_range(sc->db, &sc->mailbox, 1, UINT32_MAX, &sc->msgs, &err) < 0)
		return imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
	return sort_step(cmd);
}

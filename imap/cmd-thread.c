/* THREAD and UID THREAD (RFC 5256; REFS from draft-ietf-morg-inthread).
 *
 *   THREAD <algorithm> <charset> <search criteria>
 *
 * The criteria are SEARCH's (imap-search.c, the charset given to it as
 * SEARCH's CHARSET).  One pass over the mailbox, in bounded steps per loop
 * turn, evaluates them and reads each match's thread keys from its header
 * (Message-ID, References, In-Reply-To, Subject, Date); imap-thread.c then
 * builds the reply.  Keys come from the text's derived record
 * (imap-derived.h); when it does not hold them (a text too hostile to
 * keep them for), they are read from the stored text: only the first
 * THREAD_HEADER_READ bytes unless the header goes on past them. */
#include "imap/imap-commands.h"

#include <stdlib.h>
#include <string.h>

#include "imap/imap-derived.h"
#include "imap/imap-search-run.h"
#include "imap/imap-sortkeys.h"
#include "imap/imap-thread.h"
#include "lib/xalloc.h"

#define THREAD_STEP 100
#define THREAD_HEADER_READ 65536
/* Bytes of message IDs one THREAD keeps.  Past it each further message
 * keeps only its parent's ID (the last reference), so a mailbox of
 * crafted References fields cannot make a THREAD hold its headers' worth
 * of memory. */
#define THREAD_ID_BUDGET (64u * 1024 * 1024)

struct thread_ctx {
	enum imap_thread_alg alg;
	struct imap_search_run run;
	ARRAY(struct imap_thread_msg) matches;
	size_t id_bytes;
};

static void thread_ctx_free(void *p)
{
	struct thread_ctx *tc = p;
	imap_search_run_free(&tc->run);
	for (size_t i = 0; i < tc->matches.count; i++)
		imap_thread_msg_free(&tc->matches.items[i]);
	ARRAY_FREE(&tc->matches);
	free(tc);
}

static bool header_complete(const struct buf *b)
{
	const unsigned char *p = b->data;
	for (size_t i = 0; i + 1 < b->len; i++) {
		if (p[i] != '\n')
			continue;
		if (p[i + 1] == '\n' || (p[i + 1] == '\r' && i + 2 < b->len && p[i + 2] == '\n'))
			return true;
	}
	return false;
}

/* Reads the header of the current message into tc->run.text (unless the
 * search already loaded the whole text).  Returns false if unreadable. */
static bool load_header(struct thread_ctx *tc, bool have_text)
{
	if (have_text)
		return true;
	struct imap_search_run *r = &tc->run;
	const char *err;
	uint64_t len = r->text_size < THREAD_HEADER_READ ? r->text_size : THREAD_HEADER_READ;
	buf_reset(&r->text);
	if (stor_text_read(r->db, &r->text_guid, 0, len, &r->text, &err) < 0)
		return false;
	if (len < r->text_size && !header_complete(&r->text)) {
		buf_reset(&r->text);
		if (stor_text_read(r->db, &r->text_guid, 0, r->text_size, &r->text, &err) < 0)
			return false;
	}
	return true;
}

static const char *field(const struct thread_ctx *tc, const char *name, struct buf *v, size_t *len_r)
{
	buf_reset(v);
	const char *text = tc->run.text.data != NULL ? (const char *)tc->run.text.data : "";
	if (!imap_thread_header_get(text, tc->run.text.len, name, v))
		return NULL;
	*len_r = v->len;
	return buf_cstr(v);
}

static void add_match(struct thread_ctx *tc, const struct stor_msg *m, uint32_t id, bool readable)
{
	struct imap_thread_msg tm;
	memset(&tm, 0, sizeof(tm));
	tm.id = id;
	tm.date = m->internaldate;
	if (readable) {
		struct buf mid = BUF_INIT, refs = BUF_INIT, irt = BUF_INIT, v = BUF_INIT;
		size_t mid_len = 0, refs_len = 0, irt_len = 0, len = 0;
		const char *pmid = field(tc, "Message-ID", &mid, &mid_len);
		const char *prefs = field(tc, "References", &refs, &refs_len);
		const char *pirt = field(tc, "In-Reply-To", &irt, &irt_len);
		if (tc->alg != IMAP_THREAD_ORDEREDSUBJECT) {
			imap_thread_msg_set_ids(&tm, pmid, mid_len, prefs, refs_len, pirt, irt_len);
			if (tc->id_bytes > THREAD_ID_BUDGET)
				imap_thread_msg_keep_parent(&tm);
			tc->id_bytes += imap_thread_msg_id_bytes(&tm);
		}
		tm.date = imap_sent_date_value(field(tc, "Date", &v, &len), m->internaldate);
		if (tc->alg != IMAP_THREAD_REFS) {
			char *base = imap_base_subject(field(tc, "Subject", &v, &len), &tm.reply_or_fwd);
			tm.base_subject = imap_sortkey_fold(base);
			free(base);
		}
		buf_free(&mid);
		buf_free(&refs);
		buf_free(&irt);
		buf_free(&v);
	}
	ARRAY_PUSH(&tc->matches, tm);
}

/* Adds the match from the text's derived record; false if it does not
 * hold the keys. */
static bool add_match_derived(struct thread_ctx *tc, const struct stor_msg *m, uint32_t id)
{
	struct imap_derived d;
	const char *err;
	if (imap_derived_load(tc->run.db, &m->guid, m->size, &d, NULL, NULL, &err) < 0)
		return false;
	struct imap_thread_msg tm;
	memset(&tm, 0, sizeof(tm));
	tm.id = id;
	bool ok = imap_derived_thread_fill(&tm, &d, tc->alg != IMAP_THREAD_ORDEREDSUBJECT,
					   tc->alg != IMAP_THREAD_REFS, m->internaldate);
	imap_derived_free(&d);
	if (!ok)
		return false;
	if (tc->alg != IMAP_THREAD_ORDEREDSUBJECT) {
		if (tc->id_bytes > THREAD_ID_BUDGET)
			imap_thread_msg_keep_parent(&tm);
		tc->id_bytes += imap_thread_msg_id_bytes(&tm);
	}
	ARRAY_PUSH(&tc->matches, tm);
	return true;
}

static bool thread_finish(struct imap_cmd *cmd)
{
	struct thread_ctx *tc = cmd->ctx;
	struct buf line = BUF_INIT;
	/* thread-data = "THREAD" [SP 1*thread-list]: no space without
	 * threads. */
	buf_append_str(&line, tc->matches.count > 0 ? "* THREAD " : "* THREAD");
	imap_thread_build(tc->alg, tc->matches.items, tc->matches.count, &line);
	buf_append_str(&line, "\r\n");
	imap_client_write(cmd->client, line.data, line.len);
	buf_free(&line);
	return imap_cmd_done(cmd, "OK", "THREAD completed");
}

static void thread_match(struct imap_cmd *cmd, const struct stor_msg *m, uint32_t seq,
			 const struct imap_search_msg *sm)
{
	struct thread_ctx *tc = cmd->ctx;
	if (!add_match_derived(tc, m, cmd->uid ? m->uid : seq)) {
		/* text unreadable, or keys too big for the record: the
		 * header's fields as they are.  A header the search loaded
		 * may be the derived header block: the same fields. */
		bool readable = load_header(tc, sm->text_loaded && !sm->text_failed);
		add_match(tc, m, cmd->uid ? m->uid : seq, readable);
	}
}

static bool thread_step(struct imap_cmd *cmd)
{
	struct thread_ctx *tc = cmd->ctx;
	return imap_search_run_step(cmd, &tc->run, THREAD_STEP, thread_match, thread_step,
				    thread_finish);
}

bool imap_cmd_thread(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	const struct imap_arg *args = cmd->args;
	size_t count = cmd->count;
	if (count < 3 || args[0].type != IMAP_ARG_ATOM || args[1].type == IMAP_ARG_LIST)
		return imap_cmd_done(cmd, "BAD", "THREAD needs an algorithm, a charset and search criteria");
	enum imap_thread_alg alg;
	if (!imap_thread_alg_parse(args[0].str, args[0].len, &alg))
		return imap_cmd_done(cmd, "BAD", "Unknown threading algorithm");
	struct thread_ctx *tc = xcalloc(1, sizeof(*tc));
	cmd->ctx = tc;
	cmd->ctx_free = thread_ctx_free;
	tc->alg = alg;
	const char *status;
	char text[1024]; /* imap_cmd_done()'s size */
	if (imap_search_run_parse(&tc->run, &args[1], count - 1, true, &status, text, sizeof(text)) <
	    0)
		return imap_cmd_done_str(cmd, status, text);
	/* THREAD's reply has no room for a modseq, but a MODSEQ key still
	 * enables CONDSTORE, as in SEARCH and SORT (RFC 7162 3.1.9). */
	if (imap_search_uses_modseq(tc->run.search))
		imap_enable_condstore(c);
	if (imap_search_run_start(&tc->run, c, text, sizeof(text)) < 0)
		return imap_cmd_done_str(cmd, "NO", text);
	imap_search_resolve_saved(tc->run.search, c->sel->saved.items, c->sel->saved.count);
	return thread_step(cmd);
}

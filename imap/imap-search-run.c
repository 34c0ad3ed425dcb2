/* The pass SEARCH, SORT and THREAD share (imap-search-run.h). */
#include "imap/imap-search-run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap/imap-derived.h"
#include "imap/imap-pseen.h"
#include "lib/xalloc.h"

void imap_search_run_free(struct imap_search_run *r)
{
	imap_search_free(&r->search);
	free(r->args);
	r->args = NULL;
	stor_msg_list_free(&r->msgs);
	buf_free(&r->text);
}

bool imap_search_run_fail(struct imap_cmd *cmd, bool save, const char *status,
			  const char *text)
{
	if (save && cmd->client->sel != NULL)
		imap_sel_save_result(cmd->client->sel, NULL, 0);
	return imap_cmd_done_str(cmd, status, text);
}

int imap_search_run_parse(struct imap_search_run *r, const struct imap_arg *args, size_t count,
			  bool bare_charset, const char **status_r, char *text, size_t size)
{
	if (bare_charset) {
		/* SEARCH's parser takes the charset as "CHARSET x" */
		r->args = xreallocarray(NULL, count + 1, sizeof(*r->args));
		memset(&r->args[0], 0, sizeof(r->args[0]));
		r->args[0].type = IMAP_ARG_ATOM;
		r->args[0].str = "CHARSET";
		r->args[0].len = 7;
		memcpy(&r->args[1], args, count * sizeof(*args));
		args = r->args;
		count++;
	}
	enum imap_search_error kind;
	const char *err;
	if (imap_search_parse(args, count, &r->search, &kind, &err) < 0) {
		if (kind == IMAP_SEARCH_BADCHARSET) {
			*status_r = "NO";
			snprintf(text, size, "[BADCHARSET (UTF-8 US-ASCII)] %s", err);
		} else {
			*status_r = "BAD";
			snprintf(text, size, "%s", err);
		}
		return -1;
	}
	return 0;
}

int imap_search_run_start(struct imap_search_run *r, struct imap_client *c, char *text,
			  size_t size)
{
	struct imap_selected *sel = c->sel;
	uint32_t n = (uint32_t)sel->uids.count;
	imap_search_resolve(r->search, n, n > 0 ? sel->uids.items[n - 1] : 0);
	r->mailbox = sel->guid;
	r->db = c->server->db;
	const char *err;
	if (stor_msg_list_range(r->db, &r->mailbox, 1, UINT32_MAX, &r->msgs, &err) < 0) {
		snprintf(text, size, "[SERVERBUG] %s", err);
		return -1;
	}
	imap_pseen_view(c, &r->mailbox, r->msgs.items, r->msgs.count);
	return 0;
}

/* A key that needs no body reads the header from the derived record. */
static int load_text(void *ctx, const char **text_r, size_t *len_r)
{
	struct imap_search_run *r = ctx;
	const char *err;
	buf_reset(&r->text);
	if (!imap_search_needs_body(r->search) ?
		    imap_derived_load_header(r->db, &r->text_guid, r->text_size, &r->text, &err) < 0 :
		    stor_text_read(r->db, &r->text_guid, 0, r->text_size, &r->text, &err) < 0)
		return -1;
	*text_r = r->text.data != NULL ? (const char *)r->text.data : "";
	*len_r = r->text.len;
	return 0;
}

bool imap_search_run_step(struct imap_cmd *cmd, struct imap_search_run *r, size_t budget,
			  imap_search_run_match_fn *match, bool (*cont)(struct imap_cmd *cmd),
			  bool (*finish)(struct imap_cmd *cmd))
{
	struct imap_client *c = cmd->client;
	if (c->sel == NULL)
		return imap_cmd_done(cmd, "NO", "Mailbox closed");
	for (size_t n = 0; n < budget && r->next < r->msgs.count; n++) {
		const struct stor_msg *m = &r->msgs.items[r->next++];
		uint32_t seq = imap_sel_seq(c->sel, m->uid);
		if (seq == 0)
			continue;
		struct imap_search_msg sm;
		imap_search_msg_init(&sm, m, seq, imap_sel_is_recent(c->sel, m->uid), load_text, r);
		r->text_guid = m->guid;
		r->text_size = m->size;
		if (imap_search_match(r->search, &sm))
			match(cmd, m, seq, &sm);
		imap_search_msg_done(&sm);
	}
	if (r->next < r->msgs.count) {
		cmd->cont = cont;
		imap_client_kick(c);
		return false;
	}
	return finish(cmd);
}

void imap_search_run_reply(struct imap_cmd *cmd, const char *name,
			   const struct imap_esearch_return *ret, bool with_modseq,
			   const uint32_t *nums, const uint32_t *uids, const uint64_t *modseqs,
			   size_t n, int (*update)(struct imap_cmd *cmd))
{
	struct imap_client *c = cmd->client;
	struct buf line = BUF_INIT;
	if (ret->given) {
		if (imap_esearch_wants_reply(ret))
			imap_esearch_format(&line, cmd->tag, cmd->uid, ret, nums,
					    with_modseq ? modseqs : NULL, n);
		if (ret->opts & IMAP_ESEARCH_SAVE) {
			size_t nsave;
			uint32_t *save = imap_esearch_save_uids(ret, nums, uids, n, &nsave);
			imap_sel_save_result(c->sel, save, nsave);
			free(save);
		}
		if ((ret->opts & IMAP_ESEARCH_UPDATE) && update(cmd) < 0) {
			/* RFC 5267 4.3.1: the command itself still succeeds. */
			buf_append_str(&line, "* NO [NOUPDATE ");
			imap_append_nstring(&line, cmd->tag, strlen(cmd->tag));
			buf_append_str(&line, "] Too many search contexts\r\n");
		}
	} else {
		uint64_t max_modseq = 0;
		buf_appendf(&line, "* %s", name);
		for (size_t i = 0; i < n; i++) {
			buf_appendf(&line, " %u", nums[i]);
			if (modseqs[i] > max_modseq)
				max_modseq = modseqs[i];
		}
		if (with_modseq && n > 0)
			buf_appendf(&line, " (MODSEQ %llu)", (unsigned long long)max_modseq);
		buf_append_str(&line, "\r\n");
	}
	imap_client_write(c, line.data, line.len);
	buf_free(&line);
}

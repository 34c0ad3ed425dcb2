/* CONTEXT=SEARCH updates (RFC 5267 4.3): SEARCH RETURN (UPDATE ...) leaves
 * a context behind in the selected mailbox; whenever the session is told
 * of changes (imap_sync), the changed and new messages are evaluated again
 * against each context's program and the differences are sent as ESEARCH
 * ADDTO / REMOVEFROM.  Expunged messages leave a context just before their
 * EXPUNGE (or VANISHED) is sent, so the sequence numbers in a REMOVEFROM
 * are still those the client knows.
 *
 * A context's result is kept as ascending UIDs; the position given with an
 * ADDTO or REMOVEFROM is the 1-based place of the set's lowest message in
 * that ascending result (an unsorted SEARCH result has no other order).
 * Evaluation here is synchronous (in the loop turn that reports the
 * changes): at most IMAP_SEARCH_UPDATES_MAX contexts per session, and a
 * context that would read more than IMAP_SEARCH_UPDATE_TEXT_MAX message
 * texts for one report is ended with NOUPDATE instead (RFC 5267 4.3.1 lets
 * the server stop updating a context at any time), so one STORE 1:* cannot
 * hold the node for a mailbox's worth of text reads. */
#include "imap/imap-commands.h"

#include <stdlib.h>
#include <string.h>

#include "imap/imap-derived.h"
#include "imap/imap-search.h"
#include "imap/imap-sort.h"
#include "lib/xalloc.h"

#define IMAP_SEARCH_UPDATE_TEXT_MAX 1000

struct imap_search_update {
	char *tag;
	bool uid;
	struct imap_search *search;
	stor_uid_list result; /* ascending UIDs */
	/* CONTEXT=SORT: the result in sort order with each message's keys.
	 * An entry's seq is its UID: sequence numbers shift with expunges,
	 * UIDs keep the same relative order, so the tie-break stays right. */
	bool sorted;
	struct imap_sort_program prog;
	ARRAY(struct imap_sort_entry) order;
};

static void update_free(struct imap_search_update *u)
{
	free(u->tag);
	imap_search_free(&u->search);
	ARRAY_FREE(&u->result);
	for (size_t i = 0; i < u->order.count; i++)
		imap_sort_entry_free(&u->order.items[i]);
	ARRAY_FREE(&u->order);
	free(u);
}

void imap_search_updates_free(struct imap_selected *sel)
{
	for (size_t i = 0; i < sel->updates.count; i++)
		update_free(sel->updates.items[i]);
	ARRAY_FREE(&sel->updates);
}

static size_t find_tag(const struct imap_selected *sel, const char *tag)
{
	for (size_t i = 0; i < sel->updates.count; i++)
		if (strcmp(sel->updates.items[i]->tag, tag) == 0)
			return i;
	return SIZE_MAX;
}

static void remove_at(struct imap_selected *sel, size_t i)
{
	update_free(sel->updates.items[i]);
	memmove(&sel->updates.items[i], &sel->updates.items[i + 1],
		(sel->updates.count - i - 1) * sizeof(sel->updates.items[0]));
	sel->updates.count--;
}

static int uid_cmp(const void *a, const void *b);

int imap_search_update_add_sorted(struct imap_selected *sel, const char *tag, bool uid,
				  struct imap_search **search, const struct imap_sort_program *prog,
				  struct imap_sort_entry *entries, size_t n)
{
	uint32_t *uids = xreallocarray(NULL, n > 0 ? n : 1, sizeof(*uids));
	for (size_t i = 0; i < n; i++)
		uids[i] = entries[i].uid;
	qsort(uids, n, sizeof(*uids), uid_cmp);
	int r = imap_search_update_add(sel, tag, uid, search, uids, n);
	free(uids);
	if (r < 0)
		return -1;
	struct imap_search_update *u = sel->updates.items[sel->updates.count - 1];
	u->sorted = true;
	u->prog = *prog;
	ARRAY_RESERVE(&u->order, n);
	for (size_t i = 0; i < n; i++) {
		entries[i].seq = entries[i].uid;
		ARRAY_PUSH(&u->order, entries[i]);
	}
	return 0;
}

int imap_search_update_add(struct imap_selected *sel, const char *tag, bool uid,
			   struct imap_search **search, const uint32_t *uids, size_t n)
{
	/* A tag names one context: a new search under it replaces the old. */
	size_t old = find_tag(sel, tag);
	if (old != SIZE_MAX)
		remove_at(sel, old);
	if (sel->updates.count >= IMAP_SEARCH_UPDATES_MAX)
		return -1;
	struct imap_search_update *u = xcalloc(1, sizeof(*u));
	u->tag = xstrdup(tag);
	u->uid = uid;
	u->search = *search;
	*search = NULL;
	ARRAY_RESERVE(&u->result, n);
	for (size_t i = 0; i < n; i++)
		ARRAY_PUSH(&u->result, uids[i]);
	ARRAY_PUSH(&sel->updates, u);
	return 0;
}

int imap_search_update_cancel(struct imap_selected *sel, const char *tag)
{
	size_t i = find_tag(sel, tag);
	if (i == SIZE_MAX)
		return -1;
	remove_at(sel, i);
	return 0;
}

static int uid_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* Sends "ADDTO"/"REMOVEFROM" for uids (ascending, non-empty); pos is the
 * 1-based position of the lowest one. */
static void send_change(struct imap_client *c, const struct imap_search_update *u,
			const char *what, size_t pos, const stor_uid_list *uids)
{
	stor_uid_list nums = ARRAY_INIT;
	for (size_t i = 0; i < uids->count; i++) {
		uint32_t n = u->uid ? uids->items[i] : imap_sel_seq(c->sel, uids->items[i]);
		if (n != 0)
			ARRAY_PUSH(&nums, n);
	}
	if (nums.count > 0) {
		struct buf line = BUF_INIT;
		buf_append_str(&line, "* ESEARCH (TAG ");
		imap_append_nstring(&line, u->tag, strlen(u->tag));
		buf_appendf(&line, ")%s %s (%zu ", u->uid ? " UID" : "", what, pos);
		imap_seqset_format(nums.items, nums.count, &line);
		buf_append_str(&line, ")\r\n");
		imap_client_write(c, line.data, line.len);
		buf_free(&line);
	}
	ARRAY_FREE(&nums);
}

/* Sends one ADDTO or REMOVEFROM "(pos set)" for order[from..to): messages
 * at consecutive positions from from+1, listed in sort order. */
static void send_sorted_run(struct imap_client *c, const struct imap_search_update *u,
			    const char *what, size_t from, size_t to)
{
	stor_uid_list nums = ARRAY_INIT;
	for (size_t i = from; i < to; i++) {
		uint32_t id = u->order.items[i].uid;
		ARRAY_PUSH(&nums, u->uid ? id : imap_sel_seq(c->sel, id));
	}
	struct buf line = BUF_INIT;
	buf_append_str(&line, "* ESEARCH (TAG ");
	imap_append_nstring(&line, u->tag, strlen(u->tag));
	buf_appendf(&line, ")%s %s (%zu ", u->uid ? " UID" : "", what, from + 1);
	imap_seqset_format(nums.items, nums.count, &line);
	buf_append_str(&line, ")\r\n");
	imap_client_write(c, line.data, line.len);
	buf_free(&line);
	ARRAY_FREE(&nums);
}

/* Drops the messages gone (ascending UIDs) from a sorted context with
 * REMOVEFROM for each run of consecutive positions, the last run first, so
 * that each position holds when the client applies them in order. */
static void sorted_remove(struct imap_client *c, struct imap_search_update *u,
			  const stor_uid_list *gone)
{
	size_t n = u->order.count;
	for (size_t i = n; i > 0;) {
		if (!imap_uid_list_has(gone, u->order.items[i - 1].uid)) {
			i--;
			continue;
		}
		size_t end = i;
		while (i > 0 && imap_uid_list_has(gone, u->order.items[i - 1].uid))
			i--;
		send_sorted_run(c, u, "REMOVEFROM", i, end);
	}
	size_t w = 0;
	for (size_t i = 0; i < n; i++) {
		if (imap_uid_list_has(gone, u->order.items[i].uid))
			imap_sort_entry_free(&u->order.items[i]);
		else
			u->order.items[w++] = u->order.items[i];
	}
	u->order.count = w;
}

/* Merges the new entries (taken; any order) into a sorted context and
 * sends ADDTO for each run of consecutive new positions, the first run
 * first: a run's position counts the runs before it and none after. */
static void sorted_add(struct imap_client *c, struct imap_search_update *u,
		       struct imap_sort_entry *add, size_t k)
{
	imap_sort_entries(&u->prog, add, k);
	size_t old = u->order.count, total = old + k;
	struct imap_sort_entry *merged = xreallocarray(NULL, total, sizeof(*merged));
	bool *is_new = xcalloc(total, sizeof(bool));
	for (size_t i = 0, j = 0, w = 0; w < total; w++) {
		if (j < k && (i == old ||
			      imap_sort_compare(&u->prog, &add[j], &u->order.items[i]) < 0)) {
			is_new[w] = true;
			merged[w] = add[j++];
		} else {
			merged[w] = u->order.items[i++];
		}
	}
	ARRAY_FREE(&u->order);
	u->order.items = merged;
	u->order.count = u->order.cap = total;
	for (size_t i = 0; i < total;) {
		if (!is_new[i]) {
			i++;
			continue;
		}
		size_t start = i;
		while (i < total && is_new[i])
			i++;
		send_sorted_run(c, u, "ADDTO", start, i);
	}
	free(is_new);
}

void imap_search_updates_expunge(struct imap_client *c, const stor_uid_list *uids)
{
	struct imap_selected *sel = c->sel;
	for (size_t k = 0; k < sel->updates.count; k++) {
		struct imap_search_update *u = sel->updates.items[k];
		stor_uid_list gone = ARRAY_INIT;
		size_t pos = 0;
		for (size_t i = 0; i < uids->count; i++) {
			size_t at = imap_uid_lower_bound(&u->result, uids->items[i]);
			if (at < u->result.count && u->result.items[at] == uids->items[i]) {
				if (gone.count == 0 || at + 1 < pos)
					pos = at + 1;
				ARRAY_PUSH(&gone, uids->items[i]);
			}
		}
		if (gone.count > 0 && u->sorted) {
			qsort(gone.items, gone.count, sizeof(uint32_t), uid_cmp);
			sorted_remove(c, u, &gone);
		}
		if (gone.count > 0) {
			qsort(gone.items, gone.count, sizeof(uint32_t), uid_cmp);
			if (!u->sorted)
				send_change(c, u, "REMOVEFROM", pos, &gone);
			size_t w = 0;
			for (size_t i = 0; i < u->result.count; i++)
				if (!imap_uid_list_has(&gone, u->result.items[i]))
					u->result.items[w++] = u->result.items[i];
			u->result.count = w;
		}
		ARRAY_FREE(&gone);
	}
}

struct eval_ctx {
	struct stor_db *db;
	struct buf text;
	struct guid guid;
	uint64_t size;
	bool header_only;       /* the search needs no BODY or TEXT */
};

static int load_text(void *ctx, const char **text_r, size_t *len_r)
{
	struct eval_ctx *ec = ctx;
	const char *err;
	buf_reset(&ec->text);
	if (ec->header_only ?
		    imap_derived_load_header(ec->db, &ec->guid, ec->size, &ec->text, &err) < 0 :
		    stor_text_read(ec->db, &ec->guid, 0, ec->size, &ec->text, &err) < 0)
		return -1;
	*text_r = ec->text.data != NULL ? (const char *)ec->text.data : "";
	*len_r = ec->text.len;
	return 0;
}

static bool has_pending(const struct imap_selected *sel, uint32_t uid)
{
	for (size_t i = 0; i < sel->pending_expunges.count; i++)
		if (sel->pending_expunges.items[i] == uid)
			return true;
	return false;
}

static bool matches(struct imap_client *c, const struct imap_search_update *u,
		    const struct stor_msg *m, uint32_t seq, struct eval_ctx *ec)
{
	struct imap_search_msg sm;
	imap_search_msg_init(&sm, m, seq, imap_sel_is_recent(c->sel, m->uid), load_text, ec);
	ec->guid = m->guid;
	ec->size = m->size;
	ec->header_only = !imap_search_needs_body(u->search);
	bool r = imap_search_match(u->search, &sm);
	imap_search_msg_done(&sm);
	return r;
}

/* The sort keys of m for a sorted context (from its text's derived record
 * when the program needs text; keys of an unreadable text are empty). */
static struct imap_sort_entry sort_entry(const struct imap_search_update *u,
					 const struct stor_msg *m, struct eval_ctx *ec)
{
	struct imap_sort_entry e;
	memset(&e, 0, sizeof(e));
	e.seq = e.uid = m->uid;
	e.size = m->size;
	e.arrival = m->internaldate;
	e.modseq = m->modseq;
	struct imap_derived d;
	const char *err;
	if (imap_sort_program_needs_text(&u->prog) &&
	    imap_derived_load(ec->db, &m->guid, m->size, &d, NULL, NULL, &err) == 0) {
		imap_derived_sort_fill(&e, &u->prog, &d);
		imap_derived_free(&d);
	} else {
		imap_sort_entry_fill(&e, &u->prog, NULL);
	}
	return e;
}

void imap_search_updates_changed(struct imap_client *c, const stor_msg_list *msgs)
{
	struct imap_selected *sel = c->sel;
	if (sel->updates.count == 0 || msgs->count == 0)
		return;
	struct eval_ctx ec = { c->server->db, BUF_INIT, { { 0 } }, 0, false };
	stor_uid_list added = ARRAY_INIT, removed = ARRAY_INIT;
	ARRAY(struct imap_sort_entry) new_entries = ARRAY_INIT;
	for (size_t k = 0; k < sel->updates.count; k++) {
		struct imap_search_update *u = sel->updates.items[k];
		bool texts = imap_search_needs_text(u->search) ||
			     (u->sorted && imap_sort_program_needs_text(&u->prog));
		if (texts && msgs->count > IMAP_SEARCH_UPDATE_TEXT_MAX) {
			struct buf line = BUF_INIT;
			buf_append_str(&line, "* NO [NOUPDATE ");
			imap_append_nstring(&line, u->tag, strlen(u->tag));
			buf_append_str(&line, "] Too many changes to follow\r\n");
			imap_client_write(c, line.data, line.len);
			buf_free(&line);
			remove_at(sel, k--);
			continue;
		}
		added.count = removed.count = new_entries.count = 0;
		for (size_t i = 0; i < msgs->count; i++) {
			const struct stor_msg *m = &msgs->items[i];
			uint32_t seq = imap_sel_seq(sel, m->uid);
			/* Not in the session's view, or leaving it: the
			 * expunge path removes it. */
			if (seq == 0 || has_pending(sel, m->uid))
				continue;
			bool now = matches(c, u, m, seq, &ec);
			bool was = imap_uid_list_has(&u->result, m->uid);
			if (now && !was) {
				ARRAY_PUSH(&added, m->uid);
				if (u->sorted)
					ARRAY_PUSH(&new_entries, sort_entry(u, m, &ec));
			} else if (!now && was)
				ARRAY_PUSH(&removed, m->uid);
		}
		if (removed.count > 0) {
			qsort(removed.items, removed.count, sizeof(uint32_t), uid_cmp);
			if (u->sorted)
				sorted_remove(c, u, &removed);
			else
				send_change(c, u, "REMOVEFROM",
					    imap_uid_lower_bound(&u->result, removed.items[0]) + 1, &removed);
			size_t w = 0;
			for (size_t i = 0; i < u->result.count; i++)
				if (!imap_uid_list_has(&removed, u->result.items[i]))
					u->result.items[w++] = u->result.items[i];
			u->result.count = w;
		}
		if (added.count > 0) {
			qsort(added.items, added.count, sizeof(uint32_t), uid_cmp);
			/* One merge from the back: linear however many were
			 * added (STORE 1:* on a large mailbox). */
			size_t old = u->result.count, total = old + added.count;
			ARRAY_RESERVE(&u->result, added.count);
			for (size_t i = old, j = added.count, w = total; j > 0;) {
				if (i > 0 && u->result.items[i - 1] > added.items[j - 1])
					u->result.items[--w] = u->result.items[--i];
				else
					u->result.items[--w] = added.items[--j];
			}
			u->result.count = total;
			if (u->sorted)
				sorted_add(c, u, new_entries.items, new_entries.count);
			else
				send_change(c, u, "ADDTO",
					    imap_uid_lower_bound(&u->result, added.items[0]) + 1, &added);
		}
	}
	ARRAY_FREE(&new_entries);
	ARRAY_FREE(&added);
	ARRAY_FREE(&removed);
	buf_free(&ec.text);
}

bool imap_cmd_cancelupdate(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	if (cmd->count == 0)
		return imap_cmd_done(cmd, "BAD", "CANCELUPDATE needs a tag");
	for (size_t i = 0; i < cmd->count; i++)
		if (!imap_arg_is_string(&cmd->args[i]))
			return imap_cmd_done(cmd, "BAD", "CANCELUPDATE takes tags");
	/* Check them all first: a bad tag cancels nothing. */
	for (size_t i = 0; i < cmd->count; i++)
		if (find_tag(c->sel, cmd->args[i].str) == SIZE_MAX)
			return imap_cmd_done(cmd, "BAD", "Unknown search context");
	for (size_t i = 0; i < cmd->count; i++)
		(void)imap_search_update_cancel(c->sel, cmd->args[i].str);
	return imap_cmd_done(cmd, "OK", "CANCELUPDATE completed");
}

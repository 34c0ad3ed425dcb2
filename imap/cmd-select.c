/* SELECT and EXAMINE (with the CONDSTORE and QRESYNC parameters of RFC
 * 7162), CLOSE, UNSELECT, CHECK.
 *
 * \Recent (RFC 3501 2.3.2) is session state kept per node in memory: see
 * struct imap_recent_table; SELECT takes the recent messages, EXAMINE only
 * shows them. */
#include "imap/imap-commands.h"
#include "imap/imap-barrier.h"
#include "imap/imap-acl.h"
#include "imap/imap-pseen.h"

#include <string.h>
#include <strings.h>

#include "lib/log.h"
#include "lib/xalloc.h"

struct qresync_params {
	bool present;
	uint32_t uidvalidity;
	uint64_t modseq;
	const char *known_uids; /* NULL: all */
};

static int parse_u64_arg(const struct imap_arg *a, uint64_t max, uint64_t *v_r)
{
	if (a->type != IMAP_ARG_ATOM || a->len == 0 || a->len > 20)
		return -1;
	uint64_t v = 0;
	for (size_t i = 0; i < a->len; i++) {
		if (a->str[i] < '0' || a->str[i] > '9')
			return -1;
		if (v > (UINT64_MAX - 9) / 10)
			return -1;
		v = v * 10 + (uint64_t)(a->str[i] - '0');
	}
	if (v > max)
		return -1;
	*v_r = v;
	return 0;
}

/* Parses "(CONDSTORE)" or "(QRESYNC (uidvalidity modseq [known-uids
 * [seq-match]]))".  Returns 0 or -1 (*error_r). */
static int parse_select_params(struct imap_cmd *cmd, const struct imap_arg *arg,
			       struct qresync_params *q, const char **error_r)
{
	struct imap_client *c = cmd->client;
	if (arg->type != IMAP_ARG_LIST) {
		*error_r = "Invalid SELECT parameters";
		return -1;
	}
	for (size_t i = 0; i < arg->count; i++) {
		const struct imap_arg *p = &arg->list[i];
		if (imap_arg_atom_eq(p, "CONDSTORE")) {
			c->condstore = true;
			continue;
		}
		if (imap_arg_atom_eq(p, "QRESYNC") && i + 1 < arg->count &&
		    arg->list[i + 1].type == IMAP_ARG_LIST) {
			if (!c->qresync) {
				*error_r = "QRESYNC is not enabled";
				return -1;
			}
			const struct imap_arg *l = arg->list[i + 1].list;
			size_t n = arg->list[i + 1].count;
			uint64_t v;
			if (n < 2 || n > 4 || parse_u64_arg(&l[0], UINT32_MAX, &v) < 0 || v == 0) {
				*error_r = "Invalid QRESYNC parameters";
				return -1;
			}
			q->uidvalidity = (uint32_t)v;
			if (parse_u64_arg(&l[1], UINT64_MAX, &q->modseq) < 0) {
				*error_r = "Invalid QRESYNC modseq";
				return -1;
			}
			if (n >= 3) {
				if (l[2].type != IMAP_ARG_ATOM) {
					*error_r = "Invalid QRESYNC known UIDs";
					return -1;
				}
				q->known_uids = l[2].str;
			}
			q->present = true;
			i++;
			continue;
		}
		*error_r = "Unknown SELECT parameter";
		return -1;
	}
	return 0;
}

static void qresync_report(struct imap_client *c, const struct qresync_params *q)
{
	struct imap_selected *sel = c->sel;
	if (q->uidvalidity != sel->uidvalidity)
		return;
	stor_msg_list msgs = ARRAY_INIT;
	stor_tombstone_list tombs = ARRAY_INIT;
	const char *err;
	if (stor_changes_since(c->server->db, &sel->guid, q->modseq, &msgs, &tombs, &err) < 0 ||
	    imap_pseen_changes(c, &sel->guid, q->modseq, &msgs, &err) < 0) {
		stor_msg_list_free(&msgs);
		ARRAY_FREE(&tombs);
		log_errorx("imap[%016llx]: QRESYNC: %s", (unsigned long long)c->id, err);
		return;
	}
	imap_seqset known = ARRAY_INIT;
	bool have_known = false;
	if (q->known_uids != NULL && imap_seqset_parse(q->known_uids, &known) == 0) {
		imap_seqset_resolve(&known, UINT32_MAX);
		have_known = true;
	}
	stor_uid_list vanished = ARRAY_INIT;
	for (size_t i = 0; i < tombs.count; i++) {
		uint32_t uid = tombs.items[i].uid;
		if (have_known && !imap_seqset_contains(&known, uid))
			continue;
		/* A UID may have been expunged and (UIDFIX) reused: report it
		 * only if it is really gone. */
		if (imap_sel_seq(sel, uid) != 0)
			continue;
		if (vanished.count == 0 || vanished.items[vanished.count - 1] != uid)
			ARRAY_PUSH(&vanished, uid);
	}
	if (vanished.count > 0) {
		struct buf line = BUF_INIT;
		buf_append_str(&line, "* VANISHED (EARLIER) ");
		imap_seqset_format(vanished.items, vanished.count, &line);
		buf_append_str(&line, "\r\n");
		imap_client_write(c, line.data, line.len);
		buf_free(&line);
	}
	struct buf line = BUF_INIT;
	for (size_t i = 0; i < msgs.count; i++) {
		const struct stor_msg *m = &msgs.items[i];
		uint32_t seq = imap_sel_seq(sel, m->uid);
		if (seq == 0)
			continue;
		imap_sel_announce_keywords(c, &m->keywords);
		buf_reset(&line);
		buf_appendf(&line, "* %u FETCH (UID %u FLAGS ", seq, m->uid);
		imap_append_flags(&line, m->flags, &m->keywords, imap_sel_is_recent(sel, m->uid));
		buf_appendf(&line, " MODSEQ (%llu))\r\n", (unsigned long long)m->modseq);
		imap_client_write(c, line.data, line.len);
	}
	buf_free(&line);
	ARRAY_FREE(&vanished);
	ARRAY_FREE(&known);
	stor_msg_list_free(&msgs);
	ARRAY_FREE(&tombs);
}

static bool do_select(struct imap_cmd *cmd, bool readonly)
{
	struct imap_client *c = cmd->client;
	if (cmd->count < 1 || cmd->count > 2 || !imap_arg_is_string(&cmd->args[0]))
		return imap_cmd_done(cmd, "BAD", "%s takes a mailbox name", cmd->name);
	struct qresync_params q;
	memset(&q, 0, sizeof(q));
	const char *err;
	bool had_selection = c->sel != NULL;
	/* A failed SELECT leaves no mailbox selected (RFC 3501 6.3.1). */
	imap_sel_close(c);
	if (had_selection && (c->qresync || c->rev2))
		imap_client_printf(c, "* OK [CLOSED] Previous mailbox closed\r\n");
	if (cmd->count == 2 && parse_select_params(cmd, &cmd->args[1], &q, &err) < 0)
		return imap_cmd_done(cmd, "BAD", "%s", err);
	char *name = imap_client_mailbox_name(c, cmd->args[0].str, cmd->args[0].len, &err);
	if (name == NULL)
		return imap_cmd_done(cmd, "NO", "%s", err);
	struct stor_mailbox mb;
	uint32_t rights;
	int r = imap_acl_mailbox_get(c, name, &mb, &rights, &err);
	free(name);
	if (r < 0)
		return imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
	if (r == 0)
		return imap_cmd_done(cmd, "NO", "[NONEXISTENT] Mailbox does not exist");
	if ((rights & ACL_READ) == 0) {
		stor_mailbox_free(&mb);
		return imap_acl_refuse(cmd, rights, ACL_READ, "[NONEXISTENT] Mailbox does not exist");
	}
	/* At least what the master holds (read_consistency); with QRESYNC
	 * this also covers a client that saw a newer modseq elsewhere. */
	if (!imap_read_barrier(cmd, readonly ? imap_cmd_examine : imap_cmd_select, &mb.guid)) {
		stor_mailbox_free(&mb);
		return false;
	}
	/* RFC 4314 4: read-only to a user who may change nothing in it. */
	if ((rights & (ACL_SEEN | ACL_WRITE | ACL_INSERT | ACL_DELETE_MSG | ACL_EXPUNGE)) == 0)
		readonly = true;
	uint32_t first_unseen;
	if (imap_sel_open(c, &mb, readonly, &first_unseen, &err) < 0) {
		stor_mailbox_free(&mb);
		return imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
	}
	imap_sel_send_flags(c);
	imap_client_printf(c, "* %zu EXISTS\r\n", c->sel->uids.count);
	/* RFC 9051 removed RECENT and [UNSEEN n]; it wants the mailbox's
	 * LIST response instead (6.3.2), with its name as the server has it. */
	if (!c->rev2)
		imap_client_printf(c, "* %zu RECENT\r\n", c->sel->recent.count);
	c->sel->recent_reported = c->sel->recent.count;
	if (first_unseen != 0 && !c->rev2)
		imap_client_printf(c, "* OK [UNSEEN %u] First unseen\r\n", first_unseen);
	if (c->rev2) {
		struct buf line = BUF_INIT;
		buf_append_str(&line, "* LIST () \"/\" ");
		imap_append_mailbox(c, &line, mb.name);
		buf_append_str(&line, "\r\n");
		imap_client_write(c, line.data, line.len);
		buf_free(&line);
	}
	imap_client_printf(c, "* OK [UIDVALIDITY %u] UIDs valid\r\n", mb.uidvalidity);
	imap_client_printf(c, "* OK [UIDNEXT %u] Predicted next UID\r\n", mb.uidnext);
	imap_client_printf(c, "* OK [HIGHESTMODSEQ %llu] Highest\r\n",
			   (unsigned long long)mb.highestmodseq);
	stor_mailbox_free(&mb);
	if (q.present)
		qresync_report(c, &q);
	return imap_cmd_done(cmd, "OK", "[%s] %s completed", readonly ? "READ-ONLY" : "READ-WRITE",
			     cmd->name);
}

bool imap_cmd_select(struct imap_cmd *cmd)
{
	return do_select(cmd, false);
}

bool imap_cmd_examine(struct imap_cmd *cmd)
{
	return do_select(cmd, true);
}

struct close_ctx {
	struct guid mailbox;
	stor_uid_list uids;
};

static void close_ctx_free(void *p)
{
	struct close_ctx *cc = p;
	ARRAY_FREE(&cc->uids);
	free(cc);
}

static void close_expunged(void *ctx, const struct repl_result *res)
{
	struct imap_cmd *cmd = ctx;
	cmd->waiting = false;
	imap_sel_close(cmd->client);
	if (res->error != REPL_OK)
		imap_cmd_done(cmd, "NO", "Expunge failed: %s", res->error_msg);
	else
		imap_cmd_done(cmd, "OK", "Close completed");
}

bool imap_cmd_close(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	if (cmd->count != 0)
		return imap_cmd_done(cmd, "BAD", "CLOSE takes no arguments");
	/* RFC 4314 4: CLOSE without "e" expunges nothing, silently. */
	if (c->sel->readonly || (imap_acl_sel_rights(c) & ACL_EXPUNGE) == 0) {
		imap_sel_close(c);
		return imap_cmd_done(cmd, "OK", "Close completed");
	}
	stor_msg_list msgs = ARRAY_INIT;
	const char *err;
	if (stor_msg_list_range(c->server->db, &c->sel->guid, 1, UINT32_MAX, &msgs, &err) < 0) {
		imap_sel_close(c);
		return imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
	}
	struct close_ctx *cc = xcalloc(1, sizeof(*cc));
	cmd->ctx = cc;
	cmd->ctx_free = close_ctx_free;
	cc->mailbox = c->sel->guid;
	for (size_t i = 0; i < msgs.count; i++)
		if ((msgs.items[i].flags & STOR_FLAG_DELETED) != 0 &&
		    imap_sel_seq(c->sel, msgs.items[i].uid) != 0)
			ARRAY_PUSH(&cc->uids, msgs.items[i].uid);
	stor_msg_list_free(&msgs);
	if (cc->uids.count == 0) {
		imap_sel_close(c);
		return imap_cmd_done(cmd, "OK", "Close completed");
	}
	/* The request lives in cmd->ctx until the seam completes. */
	cmd->waiting = true;
	repl_expunge(c->server->repl, c->sel->owner, &cc->mailbox, cc->uids.items, cc->uids.count,
		     close_expunged, cmd);
	return false;
}

bool imap_cmd_unselect(struct imap_cmd *cmd)
{
	if (cmd->count != 0)
		return imap_cmd_done(cmd, "BAD", "UNSELECT takes no arguments");
	imap_sel_close(cmd->client);
	return imap_cmd_done(cmd, "OK", "Unselect completed");
}

bool imap_cmd_check(struct imap_cmd *cmd)
{
	return imap_cmd_done(cmd, "OK", "Check completed");
}

/* STORE and UID STORE: +FLAGS, -FLAGS, FLAGS, .SILENT, and CONDSTORE's
 * UNCHANGEDSINCE with the MODIFIED response code.  The untagged FETCH
 * replies are built from the seam's result; messages whose flags did not
 * change are reported with their current flags (as RFC 3501 expects for a
 * non-silent STORE). */
#include "imap/imap-commands.h"
#include "imap/imap-barrier.h"
#include "imap/imap-acl.h"
#include "imap/imap-pseen.h"

#include <string.h>
#include <strings.h>

#include "lib/str.h"
#include "lib/xalloc.h"

struct store_ctx {
	struct guid mailbox;
	stor_uid_list uids;
	imap_str_array keywords;
	struct stor_store req;
	bool silent;
	bool unchanged_zero;  /* UNCHANGEDSINCE 0 */
};

static void store_ctx_free(void *p)
{
	struct store_ctx *sc = p;
	ARRAY_FREE(&sc->uids);
	ARRAY_FREE(&sc->keywords);
	free(sc);
}

static void send_fetch(struct imap_cmd *cmd, uint32_t seq, const struct stor_msg *m)
{
	struct imap_client *c = cmd->client;
	imap_sel_announce_keywords(c, &m->keywords);
	struct buf line = BUF_INIT;
	buf_appendf(&line, "* %u FETCH (UID %u FLAGS ", seq, m->uid);
	imap_append_flags(&line, m->flags, &m->keywords,
			  c->sel != NULL && imap_sel_is_recent(c->sel, m->uid));
	if (c->condstore)
		buf_appendf(&line, " MODSEQ (%llu)", (unsigned long long)m->modseq);
	buf_append_str(&line, ")\r\n");
	imap_client_write(c, line.data, line.len);
	buf_free(&line);
}

static bool in_list(const uint32_t *l, size_t n, uint32_t v)
{
	for (size_t i = 0; i < n; i++)
		if (l[i] == v)
			return true;
	return false;
}

static void store_done(void *ctx, const struct repl_result *res)
{
	struct imap_cmd *cmd = ctx;
	struct imap_client *c = cmd->client;
	struct store_ctx *sc = cmd->ctx;
	cmd->waiting = false;
	if (res->error != REPL_OK) {
		imap_cmd_done(cmd, "NO", "%s%s", imap_repl_error_code(res->error), res->error_msg);
		return;
	}
	if (c->sel == NULL || c->dead) {
		imap_cmd_done(cmd, "OK", "STORE completed");
		return;
	}
	for (size_t i = 0; i < res->changed_count; i++) {
		const struct stor_msg *m = &res->changed[i];
		imap_sel_own_change(c->sel, m->uid, m->modseq);
		uint32_t seq = imap_sel_seq(c->sel, m->uid);
		if (seq == 0)
			continue;
		if (!sc->silent) {
			send_fetch(cmd, seq, m);
		} else if (c->condstore) {
			imap_client_printf(c, "* %u FETCH (UID %u MODSEQ (%llu))\r\n", seq, m->uid,
					   (unsigned long long)m->modseq);
		}
	}
	if (!sc->silent) {
		for (size_t i = 0; i < sc->uids.count; i++) {
			uint32_t uid = sc->uids.items[i];
			bool changed = false;
			for (size_t k = 0; k < res->changed_count && !changed; k++)
				changed = res->changed[k].uid == uid;
			if (changed || in_list(res->failed, res->failed_count, uid))
				continue;
			struct stor_msg m;
			const char *err;
			if (stor_msg_get(c->server->db, &sc->mailbox, uid, &m, &err) == 1) {
				imap_pseen_view(c, &sc->mailbox, &m, 1);
				uint32_t seq = imap_sel_seq(c->sel, uid);
				if (seq != 0)
					send_fetch(cmd, seq, &m);
				stor_msg_free(&m);
			}
		}
	}
	if (res->failed_count > 0) {
		stor_uid_list nums = ARRAY_INIT;
		for (size_t i = 0; i < res->failed_count; i++) {
			uint32_t v = cmd->uid ? res->failed[i] : imap_sel_seq(c->sel, res->failed[i]);
			if (v != 0)
				ARRAY_PUSH(&nums, v);
		}
		struct buf set = BUF_INIT;
		imap_seqset_format(nums.items, nums.count, &set);
		imap_cmd_done(cmd, "OK", "[MODIFIED %s] Conditional STORE failed", buf_cstr(&set));
		buf_free(&set);
		ARRAY_FREE(&nums);
		return;
	}
	imap_cmd_done(cmd, "OK", "STORE completed");
}

bool imap_cmd_store(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	const struct imap_arg *args = cmd->args;
	size_t n = cmd->count;
	if (n < 3 || args[0].type != IMAP_ARG_ATOM)
		return imap_cmd_done(cmd, "BAD", "STORE takes a set, an item and flags");
	struct store_ctx *sc = xcalloc(1, sizeof(*sc));
	cmd->ctx = sc;
	cmd->ctx_free = store_ctx_free;
	size_t i = 1;
	if (args[i].type == IMAP_ARG_LIST) {
		const struct imap_arg *m = args[i].list;
		if (args[i].count != 2 || !imap_arg_atom_eq(&m[0], "UNCHANGEDSINCE") ||
		    m[1].type != IMAP_ARG_ATOM)
			return imap_cmd_done(cmd, "BAD", "Invalid STORE modifier");
		uint64_t v;
		if (str_to_u64(m[1].str, UINT64_MAX, &v) < 0)
			return imap_cmd_done(cmd, "BAD", "Invalid UNCHANGEDSINCE");
		/* 0 fails for every message (RFC 7162 3.1.3): every message
		 * here has a modseq. */
		sc->req.unchangedsince = v;
		sc->unchanged_zero = v == 0;
		imap_enable_condstore(c);
		i++;
	}
	if (i + 1 >= n || args[i].type != IMAP_ARG_ATOM)
		return imap_cmd_done(cmd, "BAD", "STORE takes a set, an item and flags");
	const char *item = args[i].str;
	if (*item == '+') {
		sc->req.op = STOR_FLAGS_ADD;
		item++;
	} else if (*item == '-') {
		sc->req.op = STOR_FLAGS_REMOVE;
		item++;
	} else {
		sc->req.op = STOR_FLAGS_REPLACE;
	}
	if (strcasecmp(item, "FLAGS.SILENT") == 0)
		sc->silent = true;
	else if (strcasecmp(item, "FLAGS") != 0)
		return imap_cmd_done(cmd, "BAD", "Unknown STORE item");
	i++;
	const char *err;
	for (; i < n; i++) {
		uint32_t f;
		if (imap_parse_flags(&args[i], &f, &sc->keywords, true, &err) < 0)
			return imap_cmd_done(cmd, "BAD", "%s", err);
		sc->req.flags |= f;
	}
	sc->req.keywords = sc->keywords.items;
	sc->req.keyword_count = sc->keywords.count;
	if (c->sel->readonly)
		return imap_cmd_done(cmd, "NO", "[READ-ONLY] Mailbox is read-only");
	/* RFC 4314 4: \Seen needs "s", \Deleted "t", the other flags and
	 * keywords "w"; replacing the flags changes all of them. */
	uint32_t need = 0;
	if (sc->req.op == STOR_FLAGS_REPLACE) {
		need = ACL_SEEN | ACL_DELETE_MSG | ACL_WRITE;
	} else {
		if (sc->req.flags & STOR_FLAG_SEEN)
			need |= ACL_SEEN;
		if (sc->req.flags & STOR_FLAG_DELETED)
			need |= ACL_DELETE_MSG;
		if ((sc->req.flags & ~(uint32_t)(STOR_FLAG_SEEN | STOR_FLAG_DELETED)) != 0 ||
		    sc->req.keyword_count > 0)
			need |= ACL_WRITE;
	}
	uint32_t rights = imap_acl_sel_rights(c);
	if ((rights & need) != need)
		return imap_acl_refuse(cmd, rights, need & ~rights,
				       "[NONEXISTENT] Mailbox does not exist");
	/* The master decides UNCHANGEDSINCE; waiting here keeps what the
	 * client is told afterwards at least as new as what it saw. */
	if (sc->req.unchangedsince != 0 &&
	    !imap_read_barrier_modseq(cmd, imap_cmd_store, &c->sel->guid, sc->req.unchangedsince))
		return false;
	if (imap_sel_resolve(c->sel, args[0].str, cmd->uid, &sc->uids) < 0)
		return imap_cmd_done(cmd, "BAD", "Invalid sequence set");
	if (sc->unchanged_zero && sc->uids.count > 0) {
		stor_uid_list nums = ARRAY_INIT;
		for (size_t k = 0; k < sc->uids.count; k++)
			ARRAY_PUSH(&nums, cmd->uid ? sc->uids.items[k] :
					  imap_sel_seq(c->sel, sc->uids.items[k]));
		struct buf set = BUF_INIT;
		imap_seqset_format(nums.items, nums.count, &set);
		ARRAY_FREE(&nums);
		imap_cmd_done(cmd, "OK", "[MODIFIED %s] Conditional STORE failed", buf_cstr(&set));
		buf_free(&set);
		return true;
	}
	if (sc->uids.count == 0)
		return imap_cmd_done(cmd, "OK", "STORE completed");
	sc->mailbox = c->sel->guid;
	/* \Seen of this session's own on another user's or a public mailbox
	 * (SPEC.md 7.7): the master changes the user's records with it. */
	if (imap_pseen_sel(c) &&
	    (sc->req.op == STOR_FLAGS_REPLACE || (sc->req.flags & STOR_FLAG_SEEN) != 0))
		sc->req.seen_of = c->user;
	cmd->waiting = true;
	repl_store(c->server->repl, c->sel->owner, &sc->mailbox, sc->uids.items, sc->uids.count, &sc->req,
		   store_done, cmd);
	return false;
}

/* The periodic check: cheap LISTs compared with our copy, queueing a resync
 * of what differs.  Apart because it only reads and queues, and never
 * syncs anything itself. */
#include "replicator/repl-sync-private.h"

#include <ev.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "lib/str.h"
#include "lib/xalloc.h"
#include "protocol/protocol.h"
#include "replicator/repl-private.h"
#include "storage/storage-acl.h"
#include "storage/storage.h"
#include "sync/sync.h"

/* ------------------------------------------------------------------ */
/* The periodic check (issue 7: "a sync starts by itself ... on a cheap
 * periodic check").  Every check interval, for each up peer and each user
 * with mail here, LIST (SPEC.md 7.4) asks the peer for its mailboxes'
 * names, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and digest, which are compared with
 * ours: the cost grows with the number of mailboxes, never of messages.  A
 * user that differs is resynced (repl_sync_enqueue) when it differed at the
 * previous round too (a change on its way by live replication differs for
 * a moment only), at once when the peer lacks the user entirely or when a
 * digest differs with equal UIDNEXT and HIGHESTMODSEQ (a divergence that
 * modseqs cannot explain: logged, and the sync compares that mailbox
 * message by message, SPEC.md 10.1).  Of the two ends of a link, the one
 * that initiated it (the lower SID) acts on differences; the other only on
 * a user the peer lacks, which the first cannot list. */

/* Mailboxes and subscriptions in one LIST answer (as the sync client). */
#define CHECK_MAX_MAILBOXES 100000

struct chk_mbox {
	struct guid guid;
	char *name;
	uint32_t uidvalidity, uidnext;
	uint64_t hms;
	unsigned char digest[16];
};

/* One LIST of a round. */
struct chk {
	struct chk *prev, *next;
	struct repl_sync *rs; /* NULL once repl-sync is gone */
	uint32_t sid;
	char *user;
	bool initiator;       /* we initiated the link (we have the lower SID) */
	bool bad;             /* the answer was malformed or too large */
	ARRAY(struct chk_mbox) mbs;
	stor_string_list subs;
	/* The ACL records (SPEC.md 7.6) as a count and an order-independent
	 * sum of their hashes: enough to see a difference. */
	uint64_t acl_sum;
	size_t acl_count;
};

struct chk_job {
	uint32_t sid;
	char *user;
};

double check_interval_default(void)
{
	const char *e = getenv("STARLING_SYNC_CHECK_INTERVAL");
	if (e == NULL || *e == '\0')
		return REPL_SYNC_CHECK_INTERVAL;
	char *end;
	double v = strtod(e, &end);
	if (*end != '\0' || !(v >= 0) || v > 86400) {
		log_warnx("STARLING_SYNC_CHECK_INTERVAL=%s is not a number of seconds in "
			  "[0, 86400]; using %u", e, REPL_SYNC_CHECK_INTERVAL);
		return REPL_SYNC_CHECK_INTERVAL;
	}
	if (v > 0 && v < 0.05)
		v = 0.05;
	return v;
}

static void chk_free(struct chk *k)
{
	free(k->user);
	for (size_t i = 0; i < k->mbs.count; i++)
		free(k->mbs.items[i].name);
	ARRAY_FREE(&k->mbs);
	stor_string_list_free(&k->subs);
	free(k);
}

static void chk_unlink(struct chk *k)
{
	struct repl_sync *rs = k->rs;
	if (rs == NULL)
		return;
	if (k->prev != NULL)
		k->prev->next = k->next;
	else
		rs->chks = k->next;
	if (k->next != NULL)
		k->next->prev = k->prev;
	rs->chk_inflight--;
	k->rs = NULL;
}

static int cmp_chk_mbox(const void *a, const void *b)
{
	return guid_cmp(&((const struct chk_mbox *)a)->guid, &((const struct chk_mbox *)b)->guid);
}

static int cmp_stor_mbox(const void *a, const void *b)
{
	return guid_cmp(&((const struct stor_mailbox *)a)->guid,
			&((const struct stor_mailbox *)b)->guid);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* FNV-1a of one ACL record, as both ends see it. */
static uint64_t acl_hash(const struct guid *g, const char *id, size_t idlen, const char *rights,
			 size_t rlen, uint64_t t)
{
	uint64_t h = 14695981039346656037ull;
#define MIX(p, n) do { for (size_t i_ = 0; i_ < (n); i_++) { \
		h ^= ((const unsigned char *)(p))[i_]; h *= 1099511628211ull; } } while (0)
	MIX(g->b, sizeof(g->b));
	MIX(id, idlen);
	MIX("", 1);
	MIX(rights, rlen);
	MIX("", 1);
	for (int i = 0; i < 8; i++) {
		unsigned char b = (unsigned char)(t >> (8 * i));
		MIX(&b, 1);
	}
#undef MIX
	return h;
}

/* Our records of the user's mailboxes, as chk_cb() sums the peer's. */
static int acl_local_sum(struct stor_db *db, const stor_mailbox_array *mine, uint64_t *sum_r,
			 size_t *count_r, const char **error_r)
{
	uint64_t sum = 0;
	size_t n = 0;
	for (size_t i = 0; i < mine->count; i++) {
		stor_acl_list acl;
		if (stor_acl_get(db, &mine->items[i].guid, &acl, error_r) < 0)
			return -1;
		for (size_t j = 0; j < acl.count; j++) {
			const struct stor_acl *a = &acl.items[j];
			sum += acl_hash(&mine->items[i].guid, a->identifier, strlen(a->identifier),
					a->rights, strlen(a->rights), (uint64_t)a->time_ms);
			n++;
		}
		stor_acl_list_free(&acl);
	}
	*sum_r = sum;
	*count_r = n;
	return 0;
}

static char *suspect_key(uint32_t sid, const char *user)
{
	return xasprintf("%u %s", sid, user);
}

static bool strlist_has(const stor_string_list *l, const char *s)
{
	for (size_t i = 0; i < l->count; i++)
		if (strcmp(l->items[i], s) == 0)
			return true;
	return false;
}

/* Compares the peer's answer with our copy of the user; queues a resync
 * when they differ (see above).  Returns whether they differ. */
static bool chk_compare(struct repl_sync *rs, struct chk *k)
{
	struct stor_db *db = repl_db(rs->repl);
	stor_mailbox_array mine = ARRAY_INIT;
	stor_string_list subs = ARRAY_INIT;
	const char *err;
	if (stor_mailbox_list(db, k->user, &mine, &err) < 0 ||
	    stor_subscriptions(db, k->user, &subs, &err) < 0) {
		log_errorx("sync check of %s: %s", k->user, err);
		stor_mailbox_list_free(&mine);
		return false;
	}
	if (mine.count > 1)
		qsort(mine.items, mine.count, sizeof(mine.items[0]), cmp_stor_mbox);
	if (k->mbs.count > 1)
		qsort(k->mbs.items, k->mbs.count, sizeof(k->mbs.items[0]), cmp_chk_mbox);
	bool differ = mine.count != k->mbs.count, unexplained = false;
	for (size_t i = 0; i < mine.count && i < k->mbs.count; i++) {
		const struct stor_mailbox *a = &mine.items[i];
		const struct chk_mbox *b = &k->mbs.items[i];
		if (guid_cmp(&a->guid, &b->guid) != 0) {
			differ = true;
			break;
		}
		bool same_state = a->uidvalidity == b->uidvalidity && a->uidnext == b->uidnext &&
				  a->highestmodseq == b->hms;
		/* Names too: two renames that crossed leave equal mailboxes
		 * under different names, which only a resync settles. */
		bool same_name = strcmp(a->name, b->name) == 0;
		bool same_digest = memcmp(a->digest, b->digest, sizeof(b->digest)) == 0;
		if (same_state && !same_digest) {
			log_warnx("sync check: mailbox %s of %s differs from peer %u with equal "
				  "UIDNEXT %u and HIGHESTMODSEQ %llu (digests differ, which modseqs "
				  "cannot explain); its sync compares every message",
				  a->name, k->user, k->sid, a->uidnext,
				  (unsigned long long)a->highestmodseq);
			unexplained = true;
		}
		if (!same_state || !same_digest || !same_name)
			differ = true;
	}
	if (!differ) {
		if (subs.count > 1)
			qsort(subs.items, subs.count, sizeof(char *), cmp_str);
		if (k->subs.count > 1)
			qsort(k->subs.items, k->subs.count, sizeof(char *), cmp_str);
		differ = subs.count != k->subs.count;
		for (size_t i = 0; !differ && i < subs.count; i++)
			differ = strcmp(subs.items[i], k->subs.items[i]) != 0;
	}
	if (!differ) {
		uint64_t sum;
		size_t n;
		if (acl_local_sum(db, &mine, &sum, &n, &err) < 0)
			log_errorx("sync check of %s: %s", k->user, err);
		else
			differ = sum != k->acl_sum || n != k->acl_count;
	}
	bool peer_lacks = k->mbs.count == 0 && mine.count > 0;
	stor_mailbox_list_free(&mine);
	stor_string_list_free(&subs);
	rs->check_compared++;
	if (!differ)
		return false;
	rs->check_differed++;
	if (!k->initiator && !peer_lacks)
		return true; /* the other end checks this pair */
	char *key = suspect_key(k->sid, k->user);
	if (unexplained || peer_lacks || strlist_has(&rs->suspects_prev, key)) {
		log_info("sync check: %s differs on peer %u: resync queued", k->user, k->sid);
		repl_sync_enqueue(rs, k->user, k->sid);
		free(key);
	} else {
		ARRAY_PUSH(&rs->suspects_cur, key);
	}
	return true;
}

static void chk_pump(struct repl_sync *rs);

static void chk_cb(struct proto_conn *conn, enum proto_reply_kind kind,
		   const struct proto_cmd *line, void *ctx)
{
	struct chk *k = ctx;
	(void)conn;
	if (kind == PROTO_REPLY_DATA) {
		if (k->rs == NULL || k->bad)
			return;
		const char *s;
		size_t len;
		if (k->mbs.count + k->subs.count >= CHECK_MAX_MAILBOXES) {
			k->bad = true;
			return;
		}
		if (proto_cmd_is(line, "SUBSCRIBED") && line->arg_count == 1 &&
		    proto_arg_str(&line->args[0], &s, &len) == 0) {
			ARRAY_PUSH(&k->subs, xstrdup(s));
			return;
		}
		/* Tombstones say what a sync may delete, not what the user
		 * sees: two copies can differ there and still be equal. */
		if ((proto_cmd_is(line, "DELETED") && (line->arg_count == 1 || line->arg_count == 3)) ||
		    (proto_cmd_is(line, "UNSUBSCRIBED") && line->arg_count == 1))
			return;
		if (proto_cmd_is(line, "ACL")) {
			struct guid g;
			const char *id, *rights;
			size_t idlen, rlen;
			uint64_t t;
			if (line->arg_count != 4 || proto_arg_guid(&line->args[0], &g) < 0 ||
			    proto_arg_str(&line->args[1], &id, &idlen) < 0 ||
			    proto_arg_str(&line->args[2], &rights, &rlen) < 0 ||
			    proto_arg_u64(&line->args[3], INT64_MAX, &t) < 0) {
				k->bad = true;
				return;
			}
			k->acl_sum += acl_hash(&g, id, idlen, rights, rlen, t);
			k->acl_count++;
			return;
		}
		struct chk_mbox m;
		struct guid digest;
		uint64_t v;
		/* RSTAMP (a 1.1 peer, SPEC.md 7.4) is left out: it orders
		 * renames for a merge, and two copies with the same names are
		 * the same to the user whatever their stamps. */
		if (!proto_cmd_is(line, "MAILBOX") ||
		    (line->arg_count != 7 && line->arg_count != 9) ||
		    proto_arg_str(&line->args[0], &s, &len) < 0 ||
		    proto_arg_guid(&line->args[1], &m.guid) < 0 ||
		    proto_arg_u32(&line->args[2], &m.uidvalidity) < 0 ||
		    proto_arg_u32(&line->args[3], &m.uidnext) < 0 ||
		    proto_arg_u64(&line->args[4], INT64_MAX, &v) < 0 ||
		    proto_arg_guid(&line->args[5], &digest) < 0) {
			k->bad = true;
			return;
		}
		m.hms = v;
		memcpy(m.digest, digest.b, sizeof(m.digest));
		m.name = xstrdup(s);
		ARRAY_PUSH(&k->mbs, m);
		return;
	}
	struct repl_sync *rs = k->rs;
	if (rs != NULL && kind == PROTO_REPLY_DONE && proto_cmd_is(line, "OK") && !k->bad)
		chk_compare(rs, k);
	chk_unlink(k);
	chk_free(k);
	if (rs != NULL)
		chk_pump(rs);
}

static void chk_round_end(struct repl_sync *rs)
{
	for (size_t i = 0; i < rs->check_jobs.count; i++)
		free(rs->check_jobs.items[i].user);
	rs->check_jobs.count = 0;
	rs->check_pos = 0;
	stor_string_list_free(&rs->suspects_prev);
	rs->suspects_prev = rs->suspects_cur;
	memset(&rs->suspects_cur, 0, sizeof(rs->suspects_cur));
	rs->check_rounds++;
	if (rs->suspects_prev.count > 0 && rs->check_interval > REPL_SYNC_CHECK_CONFIRM_S) {
		/* A difference live replication does not explain a moment later
		 * is acted on within seconds, not a whole interval later. */
		ev_timer_stop(rs->loop, &rs->check_timer);
		ev_timer_set(&rs->check_timer, REPL_SYNC_CHECK_CONFIRM_S, rs->check_interval);
		ev_timer_start(rs->loop, &rs->check_timer);
	}
}

/* Sends the round's LISTs, a bounded number at a time. */
static void chk_pump(struct repl_sync *rs)
{
	while (rs->chk_inflight < REPL_SYNC_CHECK_INFLIGHT && rs->check_pos < rs->check_jobs.count) {
		struct chk_job *j = &rs->check_jobs.items[rs->check_pos++];
		struct proto_conn *conn = rs->peers != NULL ? repl_peers_conn(rs->peers, j->sid) : NULL;
		if (conn == NULL || !proto_conn_is_ready(conn))
			continue;
		struct chk *k = xcalloc(1, sizeof(*k));
		k->rs = rs;
		k->sid = j->sid;
		k->user = xstrdup(j->user);
		k->next = rs->chks;
		if (k->next != NULL)
			k->next->prev = k;
		rs->chks = k;
		rs->chk_inflight++;
		struct proto_wr *w = proto_conn_cmd_begin(conn, "LIST");
		proto_wr_cstr(w, j->user);
		/* A dropped command calls chk_cb (CLOSED) before returning. */
		const char *tag = proto_conn_cmd_send(conn, REPL_SYNC_CHECK_TIMEOUT_MS, chk_cb, k);
		if (tag != NULL)
			k->initiator = tag[0] == 'C';
	}
	if (rs->check_pos >= rs->check_jobs.count && rs->chk_inflight == 0 &&
	    rs->check_jobs.count > 0)
		chk_round_end(rs);
}

void check_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct repl_sync *rs = (struct repl_sync *)((char *)w - offsetof(struct repl_sync, check_timer));
	(void)loop;
	(void)revents;
	/* A round still running, or a resync running (it compares anyway). */
	if (rs->check_jobs.count > 0 || rs->run != NULL || rs->peers == NULL)
		return;
	stor_string_list users = ARRAY_INIT;
	const char *err;
	if (stor_user_list(repl_db(rs->repl), &users, &err) < 0) {
		log_errorx("sync check: listing users: %s", err);
		return;
	}
	size_t n = repl_peers_count(rs->peers);
	for (size_t p = 0; p < n; p++) {
		uint32_t sid = repl_peers_sid(rs->peers, p);
		if (repl_peers_conn(rs->peers, sid) == NULL)
			continue;
		for (size_t i = 0; i < users.count; i++) {
			struct chk_job j = { sid, xstrdup(users.items[i]) };
			ARRAY_PUSH(&rs->check_jobs, j);
		}
	}
	stor_string_list_free(&users);
	if (rs->check_jobs.count == 0) {
		/* Nothing to compare: what was suspect is not any more. */
		stor_string_list_free(&rs->suspects_prev);
		memset(&rs->suspects_prev, 0, sizeof(rs->suspects_prev));
		return;
	}
	chk_pump(rs);
}

void check_stop(struct repl_sync *rs)
{
	ev_timer_stop(rs->loop, &rs->check_timer);
	while (rs->chks != NULL) {
		struct chk *k = rs->chks;
		chk_unlink(k); /* its callback comes later and frees it */
	}
	for (size_t i = 0; i < rs->check_jobs.count; i++)
		free(rs->check_jobs.items[i].user);
	ARRAY_FREE(&rs->check_jobs);
	stor_string_list_free(&rs->suspects_prev);
	stor_string_list_free(&rs->suspects_cur);
}

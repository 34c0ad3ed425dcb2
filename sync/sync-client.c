/* The driving end of a sync (SPEC.md 10): one user against one peer.
 *
 * Phases: LIST the server's mailboxes and subscriptions; merge the two
 * mailbox lists against the last common list (CREATE, DELETE, RENAME,
 * (UN)SUBSCRIBE on whichever side lacks a change); LIST again if anything
 * changed; then, per mailbox, skip it when both copies still have the state
 * of the last sync (UIDNEXT, HIGHESTMODSEQ and digest: no per-message work),
 * else MBOX, SELECT, SYNC-BEGIN, our changes, SYNC-END, FETCH of the texts we
 * lack, and apply the server's answer.  Each step of the state machine does a
 * bounded amount of work. */
#include "sync/sync-private.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/str.h"
#include "lib/xalloc.h"

enum cl_phase {
	PH_START,
	PH_LIST_WAIT,
	PH_LIST_MERGE,
	PH_LISTOPS_WAIT,
	PH_RELIST_WAIT,
	PH_PLAN,
	PH_MBOX_NEXT,
	PH_MBOX_WAIT,
	PH_SEND,
	PH_SEND_WAIT,
	PH_RESEND,
	PH_RESEND_WAIT,
	PH_END_WAIT,
	PH_FETCH,
	PH_FETCH_WAIT,
	PH_APPLY,
	PH_FINISH,
	PH_DONE,
	PH_ERROR,
};

enum cl_kind {
	K_IGNORE,
	K_LIST,
	K_LISTOP,
	K_MBOX,
	K_SELECT,
	K_BEGIN,
	K_SAVE,
	K_OTHER,
	K_END,
	K_FETCH,
};

struct cl_pending {
	enum cl_kind kind;
	size_t idx;
	bool done;
};

struct cl_srv_tomb {
	struct guid guid;
	uint32_t uidnext;       /* what the deleted mailbox held; 0: not known */
	uint64_t hms;
};

struct cl_srv_mbox {
	char *name;
	struct guid guid;
	uint32_t uidvalidity, uidnext;
	uint64_t hms;
	unsigned char digest[16];
	char special[16];
};

struct cl_last_mbox {
	struct guid guid;
	uint32_t uidnext;
	uint64_t hms;
	char *name;
};

/* A SAVE line of the server's answer. */
struct cl_save {
	uint32_t uid;
	uint64_t modseq;
	struct guid guid;
	struct sync_flags f;
	bool stamped;
	stor_stamp_list stamps;
	int64_t date;
	int tz;
};

/* One FETCH command of texts: its first UID, and whether it completed. */
struct cl_chunk {
	uint32_t lo;
	bool done;
};

struct cl_flags {
	uint32_t uid;
	uint64_t modseq;
	struct sync_flags f;
	stor_stamp_list stamps;
};

struct sync_client {
	struct stor_db *db;
	uint32_t peer;
	char *user;
	bool full;
	unsigned budget;
	struct sync_transport t;
	struct proto_parser *parser;
	struct buf out;
	struct sync_report report;
	char *error;
	enum cl_phase phase;

	uint32_t next_tag, phase_base;
	ARRAY(struct cl_pending) pending;
	size_t outstanding;

	ARRAY(struct cl_srv_mbox) srv;
	/* Indexes into srv sorted by GUID and by name (lookups in O(log n)). */
	ARRAY(uint32_t) srv_by_guid_ix, srv_by_name_ix;
	stor_string_list srv_subs;
	/* The server's mailbox tombstones (DELETED lines), and the names it
	 * unsubscribed (UNSUBSCRIBED lines). */
	ARRAY(struct cl_srv_tomb) srv_deleted;
	stor_string_list srv_unsubs;
	bool list_changed;

	/* Mailboxes to look at, by GUID, and the current one. */
	ARRAY(struct guid) jobs;
	size_t job;
	unsigned job_tries;
	struct stor_mailbox cur;
	bool have_cur;
	bool cur_full;
	uint32_t L, cu;
	uint64_t M, cm;

	stor_msg_list msgs;
	stor_tombstone_list tombs;
	size_t send_pos;
	stor_uid_list resend;  /* indexes into msgs */
	size_t resend_pos;

	/* The server's answer. */
	stor_uid_list exp_uids;
	/* Of exp_uids, those the answer names as a user's expunges (GUIDS):
	 * our tombstones of them say so (SPEC 10.3). */
	sync_uexp_list exp_user;
	uint64_t exp_modseq;
	/* Of exp_uids, those whose message the answer saves again under
	 * another UID: expunged after the SAVE lines, or the text they share
	 * would be freed first. */
	stor_uid_list exp_after;
	ARRAY(struct cl_save) saves;
	ARRAY(struct cl_flags) flags;
	stor_uid_list fix_old, fix_new;
	uint32_t final_uidnext;
	uint64_t final_modseq;
	size_t fetch_pos;
	stor_uid_list need; /* UIDs whose texts we lack */
	ARRAY(struct cl_chunk) chunks; /* the FETCH commands, in UID order */
	uint32_t apply_below;          /* SAVE lines at or above wait for texts */
	bool apply_diverged;           /* a SAVE line was not applied: sync again */
	size_t apply_pos;
	unsigned apply_stage;
	/* Found while applying SAVE lines at UIDs where we hold a tombstone:
	 * our expunges of the same message, and conflicts moved to fresh UIDs
	 * (old, new), both sent to the server in a second, short sync. */
	stor_uid_list late_exp, late_old, late_new;
	/* Like late_exp, for a user's expunges: UIDs, GUIDs (sent with GUIDS). */
	stor_uid_list late_uexp;
	ARRAY(struct guid) late_uexp_g;
	uint32_t late_next;
	unsigned late_rounds;
};

static void cl_flush(struct sync_client *c)
{
	if (c->out.len > 0)
		c->t.send(c->t.ctx, c->out.data, c->out.len);
	buf_reset(&c->out);
}

static int cl_fail(struct sync_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int cl_fail(struct sync_client *c, const char *fmt, ...)
{
	va_list ap;
	char msg[512];
	if (c->phase == PH_ERROR)
		return -1;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	free(c->error);
	c->error = xstrdup(msg);
	c->phase = PH_ERROR;
	log_warnx("sync %s with %u: %s", c->user, c->peer, msg);
	return -1;
}

/* Starts a command; the caller adds arguments and calls cl_cmd_end(). */
static void cl_cmd_begin(struct sync_client *c, struct proto_wr *w, const char *name,
			 enum cl_kind kind, size_t idx)
{
	char tag[24];
	snprintf(tag, sizeof(tag), "C%u", c->next_tag);
	struct cl_pending p = { .kind = kind, .idx = idx, .done = false };
	ARRAY_PUSH(&c->pending, p);
	c->next_tag++;
	c->outstanding++;
	proto_wr_init(w, &c->out);
	proto_wr_begin(w, tag, name);
}

static void cl_cmd_end(struct sync_client *c, struct proto_wr *w)
{
	proto_wr_end(w);
	cl_flush(c);
}

/* uids in EXPUNGE lines of per_line UIDs at most, each with its UIDs'
 * GUIDS when guids is given. */
static void cl_wr_expunge_lines(struct sync_client *c, const stor_uid_list *uids,
				size_t per_line, const struct guid *guids)
{
	struct proto_wr w;
	for (size_t i = 0; i < uids->count; i += per_line) {
		size_t k = uids->count - i;
		if (k > per_line)
			k = per_line;
		cl_cmd_begin(c, &w, "EXPUNGE", K_OTHER, 0);
		proto_wr_uidset(&w, uids->items + i, k);
		proto_wr_u64(&w, 0);
		if (guids != NULL)
			sync_wr_user_guids(&w, guids + i, k);
		cl_cmd_end(c, &w);
	}
}

/* EXPUNGE <uidset> 0 lines: the engine's tombstones (uids), then a user's
 * (uuids, with their GUIDs: GUIDS).  Both sets ascending. */
static void cl_wr_expunges(struct sync_client *c, const stor_uid_list *uids,
			   const stor_uid_list *uuids, const struct guid *guids)
{
	cl_wr_expunge_lines(c, uids, SYNC_MAX_UIDS_PER_LINE, NULL);
	cl_wr_expunge_lines(c, uuids, SYNC_MAX_USER_UIDS_PER_LINE, guids);
}

/* Expunges as the answer says: a user's expunge where it named the UID
 * and its message with GUIDS, else the engine's. */
static int cl_expunge(struct sync_client *c, const stor_uid_list *uids, stor_uid_list *done,
		      const char **err)
{
	return sync_expunge(c->db, &c->cur.guid, uids->items, uids->count, &c->exp_user,
			    c->exp_modseq, done, err);
}

/* Starts a new group of commands: answers to older tags are ignored. */
static void cl_new_group(struct sync_client *c)
{
	c->pending.count = 0;
	c->phase_base = c->next_tag;
	c->outstanding = 0;
}

struct sync_client *sync_client_create(struct stor_db *db, const struct sync_settings *set,
				       const struct sync_transport *t)
{
	struct sync_client *c = xcalloc(1, sizeof(*c));
	c->db = db;
	c->peer = set->peer_sid;
	c->user = xstrdup(set->user);
	c->full = set->full;
	c->budget = set->step_budget != 0 ? set->step_budget : SYNC_DEFAULT_STEP_BUDGET;
	c->t = *t;
	c->parser = proto_parser_create(NULL);
	buf_init(&c->out);
	c->next_tag = 1;
	c->phase = PH_START;
	return c;
}

static void srv_list_free(struct sync_client *c)
{
	for (size_t i = 0; i < c->srv.count; i++)
		free(c->srv.items[i].name);
	ARRAY_FREE(&c->srv);
	ARRAY_FREE(&c->srv_by_guid_ix);
	ARRAY_FREE(&c->srv_by_name_ix);
	stor_string_list_free(&c->srv_subs);
	memset(&c->srv_subs, 0, sizeof(c->srv_subs));
	ARRAY_FREE(&c->srv_deleted);
	stor_string_list_free(&c->srv_unsubs);
	memset(&c->srv_unsubs, 0, sizeof(c->srv_unsubs));
}

static void answer_free(struct sync_client *c)
{
	for (size_t i = 0; i < c->saves.count; i++) {
		sync_flags_free(&c->saves.items[i].f);
		stor_stamp_list_free(&c->saves.items[i].stamps);
	}
	for (size_t i = 0; i < c->flags.count; i++) {
		sync_flags_free(&c->flags.items[i].f);
		stor_stamp_list_free(&c->flags.items[i].stamps);
	}
	ARRAY_FREE(&c->saves);
	ARRAY_FREE(&c->flags);
	ARRAY_FREE(&c->exp_uids);
	ARRAY_FREE(&c->exp_user);
	ARRAY_FREE(&c->exp_after);
	ARRAY_FREE(&c->fix_old);
	ARRAY_FREE(&c->fix_new);
	stor_msg_list_free(&c->msgs);
	memset(&c->msgs, 0, sizeof(c->msgs));
	ARRAY_FREE(&c->tombs);
	ARRAY_FREE(&c->resend);
	ARRAY_FREE(&c->need);
	ARRAY_FREE(&c->chunks);
	c->fetch_pos = 0;
	ARRAY_FREE(&c->late_exp);
	ARRAY_FREE(&c->late_uexp);
	ARRAY_FREE(&c->late_uexp_g);
	ARRAY_FREE(&c->late_old);
	ARRAY_FREE(&c->late_new);
	if (c->have_cur)
		stor_mailbox_free(&c->cur);
	c->have_cur = false;
}

void sync_client_destroy(struct sync_client **cp)
{
	struct sync_client *c = *cp;
	if (c == NULL)
		return;
	*cp = NULL;
	answer_free(c);
	srv_list_free(c);
	ARRAY_FREE(&c->jobs);
	ARRAY_FREE(&c->pending);
	proto_parser_destroy(&c->parser);
	buf_free(&c->out);
	free(c->error);
	free(c->user);
	free(c);
}

const struct sync_report *sync_client_report(const struct sync_client *c)
{
	return &c->report;
}

const char *sync_client_error(const struct sync_client *c)
{
	return c->error;
}

/* ---- The last common mailbox list (stor_meta) ---- */

static char *last_list_key(const struct sync_client *c)
{
	return xasprintf("sync.list.%u.%s", c->peer, c->user);
}

typedef ARRAY(struct cl_last_mbox) cl_last_list;

static void last_list_free(cl_last_list *l, stor_string_list *subs)
{
	for (size_t i = 0; i < l->count; i++)
		free(l->items[i].name);
	ARRAY_FREE(l);
	for (size_t i = 0; i < subs->count; i++)
		free(subs->items[i]);
	ARRAY_FREE(subs);
}

static char *hex_to_str(const char *hex, size_t len)
{
	if (len % 2 != 0)
		return NULL;
	char *s = xmalloc(len / 2 + 1);
	if (hex_decode(hex, len, (unsigned char *)s, len / 2) < 0) {
		free(s);
		return NULL;
	}
	s[len / 2] = '\0';
	return s;
}

static int cmp_last_guid(const void *a, const void *b)
{
	return guid_cmp(&((const struct cl_last_mbox *)a)->guid,
			&((const struct cl_last_mbox *)b)->guid);
}

/* Lines "M guid uidnext hms hexname" and "S hexname". */
static int last_list_read(struct sync_client *c, cl_last_list *l_r, stor_string_list *subs_r)
{
	struct buf v = BUF_INIT;
	const char *err;
	char *key = last_list_key(c);
	memset(l_r, 0, sizeof(*l_r));
	memset(subs_r, 0, sizeof(*subs_r));
	int r = stor_meta_get(c->db, key, &v, &err);
	free(key);
	if (r < 0) {
		buf_free(&v);
		return cl_fail(c, "reading the last mailbox list: %s", err);
	}
	buf_append_byte(&v, '\n');
	char *line;
	size_t len;
	while ((line = buf_getline(&v, &len)) != NULL) {
		char *f[5], *save = NULL;
		size_t nf = 0;
		for (char *tok = strtok_r(line, " ", &save); tok != NULL && nf < 5;
		     tok = strtok_r(NULL, " ", &save))
			f[nf++] = tok;
		struct cl_last_mbox e;
		uint64_t u, m;
		if (nf == 5 && strcmp(f[0], "M") == 0 && guid_from_hex(f[1], &e.guid) == 0 &&
		    str_to_u64(f[2], UINT32_MAX, &u) == 0 && str_to_u64(f[3], INT64_MAX, &m) == 0 &&
		    (e.name = hex_to_str(f[4], strlen(f[4]))) != NULL) {
			e.uidnext = (uint32_t)u;
			e.hms = m;
			ARRAY_PUSH(l_r, e);
		} else if (nf == 2 && strcmp(f[0], "S") == 0) {
			char *name = hex_to_str(f[1], strlen(f[1]));
			if (name != NULL)
				ARRAY_PUSH(subs_r, name);
		}
	}
	buf_free(&v);
	if (l_r->count > 1)
		qsort(l_r->items, l_r->count, sizeof(struct cl_last_mbox), cmp_last_guid);
	return 0;
}

static int last_list_write(struct sync_client *c)
{
	stor_mailbox_array mbs;
	stor_string_list subs;
	const char *err;
	struct buf v = BUF_INIT;
	if (stor_mailbox_list(c->db, c->user, &mbs, &err) < 0)
		return cl_fail(c, "%s", err);
	if (stor_subscriptions(c->db, c->user, &subs, &err) < 0) {
		stor_mailbox_list_free(&mbs);
		return cl_fail(c, "%s", err);
	}
	for (size_t i = 0; i < mbs.count; i++) {
		char gh[GUID_HEX_SIZE];
		size_t nl = strlen(mbs.items[i].name);
		char *nh = xmalloc(nl * 2 + 1);
		hex_encode((const unsigned char *)mbs.items[i].name, nl, nh);
		guid_to_hex(&mbs.items[i].guid, gh);
		buf_appendf(&v, "M %s %u %" PRIu64 " %s\n", gh, mbs.items[i].uidnext,
			    mbs.items[i].highestmodseq, nh);
		free(nh);
	}
	for (size_t i = 0; i < subs.count; i++) {
		size_t nl = strlen(subs.items[i]);
		char *nh = xmalloc(nl * 2 + 1);
		hex_encode((const unsigned char *)subs.items[i], nl, nh);
		buf_appendf(&v, "S %s\n", nh);
		free(nh);
	}
	stor_mailbox_list_free(&mbs);
	stor_string_list_free(&subs);
	char *key = last_list_key(c);
	int r = stor_meta_set(c->db, key, v.data, v.len, &err);
	free(key);
	buf_free(&v);
	return r < 0 ? cl_fail(c, "saving the mailbox list: %s", err) : 0;
}

/* ---- Mailbox list merge ---- */

/* The server's mailboxes are looked up through two sorted index arrays;
 * the other lists of the merge are sorted once and searched with bsearch,
 * so a merge of n mailboxes costs O(n log n) comparisons. */
typedef ARRAY(uint32_t) srv_index;
typedef int srv_key_cmp(const struct sync_client *c, uint32_t i, const void *key);

static int srv_key_guid(const struct sync_client *c, uint32_t i, const void *key)
{
	return guid_cmp(&c->srv.items[i].guid, key);
}

static int srv_key_name(const struct sync_client *c, uint32_t i, const void *key)
{
	return strcmp(c->srv.items[i].name, key);
}

static size_t srv_lower(const struct sync_client *c, const srv_index *ix, srv_key_cmp *cmp,
			const void *key)
{
	size_t lo = 0, hi = ix->count;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (cmp(c, ix->items[mid], key) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static const struct cl_srv_mbox *srv_find(const struct sync_client *c, const srv_index *ix,
					  srv_key_cmp *cmp, const void *key)
{
	size_t p = srv_lower(c, ix, cmp, key);
	if (p < ix->count && cmp(c, ix->items[p], key) == 0)
		return &c->srv.items[ix->items[p]];
	return NULL;
}

static void srv_index_insert(struct sync_client *c, srv_index *ix, srv_key_cmp *cmp,
			     const void *key, uint32_t i)
{
	size_t p = srv_lower(c, ix, cmp, key);
	ARRAY_PUSH(ix, i);
	memmove(ix->items + p + 1, ix->items + p, (ix->count - 1 - p) * sizeof(uint32_t));
	ix->items[p] = i;
}

static void srv_index_remove(struct sync_client *c, srv_index *ix, srv_key_cmp *cmp,
			     const void *key, uint32_t i)
{
	for (size_t p = srv_lower(c, ix, cmp, key); p < ix->count; p++) {
		if (ix->items[p] == i) {
			memmove(ix->items + p, ix->items + p + 1, (ix->count - 1 - p) * sizeof(uint32_t));
			ix->count--;
			return;
		}
		if (cmp(c, ix->items[p], key) != 0)
			return;
	}
}

static int ix_cmp_guid(const void *a, const void *b, void *ctx)
{
	const struct sync_client *c = ctx;
	return guid_cmp(&c->srv.items[*(const uint32_t *)a].guid,
			&c->srv.items[*(const uint32_t *)b].guid);
}

static int ix_cmp_name(const void *a, const void *b, void *ctx)
{
	const struct sync_client *c = ctx;
	return strcmp(c->srv.items[*(const uint32_t *)a].name,
		      c->srv.items[*(const uint32_t *)b].name);
}

/* After a LIST answer: sorts both indexes. */
static void srv_index_build(struct sync_client *c)
{
	c->srv_by_guid_ix.count = c->srv_by_name_ix.count = 0;
	for (uint32_t i = 0; i < c->srv.count; i++) {
		ARRAY_PUSH(&c->srv_by_guid_ix, i);
		ARRAY_PUSH(&c->srv_by_name_ix, i);
	}
	if (c->srv.count > 1) {
		qsort_r(c->srv_by_guid_ix.items, c->srv.count, sizeof(uint32_t), ix_cmp_guid, c);
		qsort_r(c->srv_by_name_ix.items, c->srv.count, sizeof(uint32_t), ix_cmp_name, c);
	}
}

/* Adds a server mailbox (taking name) to the list and the indexes. */
static void srv_add(struct sync_client *c, struct cl_srv_mbox *e)
{
	uint32_t i = (uint32_t)c->srv.count;
	ARRAY_PUSH(&c->srv, *e);
	srv_index_insert(c, (srv_index *)&c->srv_by_guid_ix, srv_key_guid, &e->guid, i);
	srv_index_insert(c, (srv_index *)&c->srv_by_name_ix, srv_key_name, e->name, i);
}

/* Renames the server's mailbox g in our copy of its list. */
static void srv_set_name(struct sync_client *c, const struct guid *g, const char *new_name)
{
	const struct cl_srv_mbox *s = srv_find(c, (const srv_index *)&c->srv_by_guid_ix,
					       srv_key_guid, g);
	if (s == NULL)
		return;
	uint32_t i = (uint32_t)(s - c->srv.items);
	char *old = c->srv.items[i].name;
	srv_index_remove(c, (srv_index *)&c->srv_by_name_ix, srv_key_name, old, i);
	c->srv.items[i].name = xstrdup(new_name);
	free(old);
	srv_index_insert(c, (srv_index *)&c->srv_by_name_ix, srv_key_name,
			 c->srv.items[i].name, i);
}

static const struct cl_srv_mbox *srv_by_guid(const struct sync_client *c, const struct guid *g)
{
	return srv_find(c, (const srv_index *)&c->srv_by_guid_ix, srv_key_guid, g);
}

static const struct cl_srv_mbox *srv_by_name(const struct sync_client *c, const char *name)
{
	return srv_find(c, (const srv_index *)&c->srv_by_name_ix, srv_key_name, name);
}

/* l is sorted by GUID (last_list_read). */
static const struct cl_last_mbox *last_by_guid(const cl_last_list *l, const struct guid *g)
{
	struct cl_last_mbox key;
	if (l->count == 0)
		return NULL;
	key.guid = *g;
	return bsearch(&key, l->items, l->count, sizeof(key), cmp_last_guid);
}

static int cmp_strp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void str_list_sort(stor_string_list *l)
{
	if (l->count > 1)
		qsort(l->items, l->count, sizeof(char *), cmp_strp);
}

/* l is sorted (str_list_sort). */
static bool str_in(const stor_string_list *l, const char *s)
{
	return l->count > 0 && bsearch(&s, l->items, l->count, sizeof(char *), cmp_strp) != NULL;
}

typedef ARRAY(struct guid) guid_list;

static int cmp_guid_v(const void *a, const void *b)
{
	return guid_cmp(a, b);
}

/* l is sorted. */
static bool mb_by_guid(const guid_list *l, const struct guid *g)
{
	return l->count > 0 && bsearch(g, l->items, l->count, sizeof(*g), cmp_guid_v) != NULL;
}

/* The name a mailbox that lost a name clash gets: "<name>-<8 hex of its GUID>". */
static char *clash_name(const char *name, const struct guid *g)
{
	char gh[GUID_HEX_SIZE];
	guid_to_hex(g, gh);
	return xasprintf("%s-%.8s", name, gh);
}

/* Whether name holds a mailbox other than g on the server (server_side)
 * or here. */
static bool name_taken(struct sync_client *c, const char *name, const struct guid *g,
		       bool server_side)
{
	if (server_side) {
		const struct cl_srv_mbox *s = srv_by_name(c, name);
		return s != NULL && guid_cmp(&s->guid, g) != 0;
	}
	struct stor_mailbox mb;
	const char *err;
	if (stor_mailbox_get(c->db, c->user, name, &mb, &err) != 1)
		return false;
	bool other = guid_cmp(&mb.guid, g) != 0;
	stor_mailbox_free(&mb);
	return other;
}

static void send_create(struct sync_client *c, const char *name, const struct guid *g,
			uint32_t uidvalidity, const char *special)
{
	struct proto_wr w;
	cl_cmd_begin(c, &w, "CREATE", K_LISTOP, 0);
	proto_wr_cstr(&w, c->user);
	proto_wr_cstr(&w, name);
	proto_wr_guid(&w, g);
	proto_wr_u64(&w, uidvalidity);
	if (special != NULL && special[0] != '\0') {
		proto_wr_atom(&w, "SPECIAL-USE");
		proto_wr_list_begin(&w);
		proto_wr_atom(&w, special);
		proto_wr_list_end(&w);
	}
	cl_cmd_end(c, &w);
	c->report.mailboxes_created++;
	c->list_changed = true;
	/* Known there from now on, for later name checks (its state is
	 * unknown until the next LIST). */
	struct cl_srv_mbox e;
	memset(&e, 0, sizeof(e));
	e.name = xstrdup(name);
	e.guid = *g;
	e.uidvalidity = uidvalidity;
	e.hms = UINT64_MAX;
	srv_add(c, &e);
}

static void send_rename(struct sync_client *c, const char *old, const char *new_name,
			const struct guid *g)
{
	struct proto_wr w;
	cl_cmd_begin(c, &w, "RENAME", K_LISTOP, 0);
	proto_wr_cstr(&w, c->user);
	proto_wr_cstr(&w, old);
	proto_wr_cstr(&w, new_name);
	proto_wr_guid(&w, g);
	cl_cmd_end(c, &w);
	c->report.mailboxes_renamed++;
	c->list_changed = true;
	srv_set_name(c, g, new_name);
}

static int local_create(struct sync_client *c, const struct cl_srv_mbox *s, const char *name)
{
	const char *err;
	struct stor_mailbox_create req = {
		.user = c->user, .name = name, .guid = &s->guid, .uidvalidity = s->uidvalidity,
		.special_use = s->special[0] != '\0' ? s->special : NULL,
	};
	if (stor_mailbox_create(c->db, &req, NULL, &err) < 0)
		return cl_fail(c, "creating %s: %s", name, err);
	c->report.mailboxes_created++;
	return 0;
}

/* Merges the mailbox lists and subscriptions (SPEC.md 10.5). */
/* Whether a copy (uidnext, hms) of a mailbox the other side deleted goes
 * too.  The tombstone keeps what the deleted mailbox held: the delete wins
 * over a copy with nothing beyond that, and a change beats a delete.  A
 * tombstone that does not know it (the delete of a mailbox that side never
 * held) is judged against the last common list: unchanged since, it goes. */
static bool delete_wins(uint32_t uidnext, uint64_t hms, uint32_t tomb_uidnext, uint64_t tomb_hms,
			const struct cl_last_mbox *l)
{
	if (tomb_uidnext != 0)
		return uidnext <= tomb_uidnext && hms <= tomb_hms;
	return l != NULL && uidnext == l->uidnext && hms == l->hms;
}

static int list_merge(struct sync_client *c)
{
	stor_mailbox_array mbs;
	stor_string_list subs;
	cl_last_list last;
	stor_string_list last_subs;
	const char *err;
	int ret = 0;
	if (last_list_read(c, &last, &last_subs) < 0)
		return -1;
	if (stor_mailbox_list(c->db, c->user, &mbs, &err) < 0) {
		last_list_free(&last, &last_subs);
		return cl_fail(c, "%s", err);
	}
	cl_new_group(c);
	c->list_changed = false;
	guid_list by_guid = ARRAY_INIT;
	for (size_t i = 0; i < mbs.count; i++)
		ARRAY_PUSH(&by_guid, mbs.items[i].guid);
	if (by_guid.count > 1)
		qsort(by_guid.items, by_guid.count, sizeof(struct guid), cmp_guid_v);
	if (c->srv_deleted.count > 1)
		qsort(c->srv_deleted.items, c->srv_deleted.count, sizeof(c->srv_deleted.items[0]),
		      cmp_guid_v);
	str_list_sort(&last_subs);
	str_list_sort(&c->srv_subs);

	/* 1. Name clashes: a mailbox new on each side under the same name.
	 * The lower GUID keeps the name. */
	for (size_t i = 0; i < mbs.count && ret == 0; i++) {
		struct stor_mailbox *mb = &mbs.items[i];
		if (srv_by_guid(c, &mb->guid) != NULL || last_by_guid(&last, &mb->guid) != NULL)
			continue;
		const struct cl_srv_mbox *s = srv_by_name(c, mb->name);
		if (s == NULL)
			continue;
		if (mb_by_guid(&by_guid, &s->guid))
			continue; /* not new there: we have it too, under another name */
		if (guid_cmp(&mb->guid, &s->guid) > 0) {
			char *nn = clash_name(mb->name, &mb->guid);
			log_info("sync %s: mailbox %s exists on both sides with different GUIDs; "
				 "ours becomes %s", c->user, mb->name, nn);
			if (stor_mailbox_rename(c->db, &mb->guid, nn, &err) < 0)
				ret = cl_fail(c, "renaming %s: %s", mb->name, err);
			else {
				free(mb->name);
				mb->name = nn;
				c->report.mailboxes_renamed++;
			}
			if (ret < 0)
				free(nn);
		} else {
			char *nn = clash_name(s->name, &s->guid);
			char *old = xstrdup(s->name);
			struct guid sg = s->guid;
			log_info("sync %s: mailbox %s exists on both sides with different GUIDs; "
				 "the peer's becomes %s", c->user, old, nn);
			send_rename(c, old, nn, &sg);
			free(old);
			free(nn);
		}
	}

	/* 2. Mailboxes we have. */
	for (size_t i = 0; i < mbs.count && ret == 0; i++) {
		const struct stor_mailbox *mb = &mbs.items[i];
		const struct cl_srv_mbox *s = srv_by_guid(c, &mb->guid);
		const struct cl_last_mbox *l = last_by_guid(&last, &mb->guid);
		if (s != NULL) {
			if (strcmp(s->name, mb->name) == 0)
				continue;
			/* We renamed it if the server still has the remembered
			 * name; else the peer did, or both did: the server's
			 * name wins.  A target name held by another mailbox on
			 * the target side makes it "<name>-<8 hex>" on both. */
			bool ours = l != NULL && strcmp(l->name, s->name) == 0;
			const char *target = ours ? mb->name : s->name;
			char *nn = NULL;
			if (name_taken(c, target, &mb->guid, ours)) {
				nn = clash_name(target, &mb->guid);
				target = nn;
			}
			if (strcmp(target, mb->name) != 0) {
				if (stor_mailbox_rename(c->db, &mb->guid, target, &err) < 0)
					ret = cl_fail(c, "renaming %s: %s", mb->name, err);
				c->report.mailboxes_renamed++;
			}
			if (ret == 0 && strcmp(target, s->name) != 0)
				send_rename(c, s->name, target, &mb->guid);
			free(nn);
			continue;
		}
		const struct cl_srv_tomb *st =
			c->srv_deleted.count == 0 ? NULL :
			bsearch(&mb->guid, c->srv_deleted.items, c->srv_deleted.count,
				sizeof(c->srv_deleted.items[0]), cmp_guid_v);
		if (st != NULL && delete_wins(mb->uidnext, mb->highestmodseq, st->uidnext, st->hms, l)) {
			/* Deleted on the peer, and nothing here is newer than
			 * what it deleted.  Without the peer's tombstone it
			 * never had it or lost it (its store was wiped or
			 * restored): it gets it back. */
			if (stor_mailbox_delete(c->db, &mb->guid, &err) < 0)
				ret = cl_fail(c, "deleting %s: %s", mb->name, err);
			c->report.mailboxes_deleted++;
			continue;
		}
		/* New here, lost there, or deleted there but changed here since:
		 * (re)create. */
		if (name_taken(c, mb->name, &mb->guid, true)) {
			char *nn = clash_name(mb->name, &mb->guid);
			if (stor_mailbox_rename(c->db, &mb->guid, nn, &err) < 0)
				ret = cl_fail(c, "renaming %s: %s", mb->name, err);
			else
				send_create(c, nn, &mb->guid, mb->uidvalidity, mb->special_use);
			c->report.mailboxes_renamed++;
			free(nn);
			continue;
		}
		send_create(c, mb->name, &mb->guid, mb->uidvalidity, mb->special_use);
	}

	/* 3. Mailboxes only the server has. */
	for (size_t i = 0; i < c->srv.count && ret == 0; i++) {
		const struct cl_srv_mbox *s = &c->srv.items[i];
		if (mb_by_guid(&by_guid, &s->guid))
			continue;
		const struct cl_last_mbox *l = last_by_guid(&last, &s->guid);
		uint32_t tu = 0;
		uint64_t th = 0;
		int gone = stor_mailbox_tomb_get(c->db, c->user, &s->guid, &tu, &th, &err);
		if (gone < 0) {
			ret = cl_fail(c, "%s", err);
			break;
		}
		if (gone > 0 && delete_wins(s->uidnext, s->hms, tu, th, l)) {
			struct proto_wr w;
			cl_cmd_begin(c, &w, "DELETE", K_LISTOP, 0);
			proto_wr_cstr(&w, c->user);
			proto_wr_cstr(&w, s->name);
			proto_wr_guid(&w, &s->guid);
			cl_cmd_end(c, &w);
			c->report.mailboxes_deleted++;
			c->list_changed = true;
			continue;
		}
		if (name_taken(c, s->name, &s->guid, false)) {
			char *nn = clash_name(s->name, &s->guid);
			send_rename(c, s->name, nn, &s->guid);
			ret = local_create(c, s, nn);
			free(nn);
			continue;
		}
		ret = local_create(c, s, s->name);
	}

	/* 4. Subscriptions: a three-way merge with the last common set; as
	 * for mailboxes, a name goes only where the other side unsubscribed
	 * it (its tombstone), not where it is merely missing. */
	stor_string_list unsubs = ARRAY_INIT;
	str_list_sort(&c->srv_unsubs);
	if (ret == 0 && (stor_subscriptions(c->db, c->user, &subs, &err) < 0 ||
			 stor_unsubscribed(c->db, c->user, &unsubs, &err) < 0))
		ret = cl_fail(c, "%s", err);
	else if (ret == 0) {
		str_list_sort(&subs);
		for (size_t i = 0; i < subs.count && ret == 0; i++) {
			const char *n = subs.items[i];
			if (str_in(&c->srv_subs, n))
				continue;
			if (str_in(&last_subs, n) && str_in(&c->srv_unsubs, n)) {
				if (stor_subscribe(c->db, c->user, n, false, &err) < 0)
					ret = cl_fail(c, "%s", err);
			} else {
				struct proto_wr w;
				cl_cmd_begin(c, &w, "SUBSCRIBE", K_LISTOP, 0);
				proto_wr_cstr(&w, c->user);
				proto_wr_cstr(&w, n);
				cl_cmd_end(c, &w);
			}
			c->report.subscriptions_changed++;
		}
		for (size_t i = 0; i < c->srv_subs.count && ret == 0; i++) {
			const char *n = c->srv_subs.items[i];
			if (str_in(&subs, n))
				continue;
			if (str_in(&last_subs, n) && str_in(&unsubs, n)) {
				struct proto_wr w;
				cl_cmd_begin(c, &w, "UNSUBSCRIBE", K_LISTOP, 0);
				proto_wr_cstr(&w, c->user);
				proto_wr_cstr(&w, n);
				cl_cmd_end(c, &w);
			} else if (stor_subscribe(c->db, c->user, n, true, &err) < 0) {
				ret = cl_fail(c, "%s", err);
			}
			c->report.subscriptions_changed++;
		}
		stor_string_list_free(&subs);
	}
	stor_string_list_free(&unsubs);
	stor_mailbox_list_free(&mbs);
	ARRAY_FREE(&by_guid);
	last_list_free(&last, &last_subs);
	return ret;
}

static void send_list(struct sync_client *c)
{
	struct proto_wr w;
	srv_list_free(c);
	cl_new_group(c);
	cl_cmd_begin(c, &w, "LIST", K_LIST, 0);
	proto_wr_cstr(&w, c->user);
	cl_cmd_end(c, &w);
}

static int on_list_line(struct sync_client *c, const struct proto_cmd *line)
{
	struct cl_srv_mbox m;
	const char *s;
	size_t len;
	memset(&m, 0, sizeof(m));
	if (c->srv.count + c->srv_subs.count >= SYNC_MAX_MAILBOXES)
		return cl_fail(c, "LIST: too many mailboxes");
	if (proto_cmd_is(line, "SUBSCRIBED")) {
		if (line->arg_count != 1 || proto_arg_str(&line->args[0], &s, &len) < 0 ||
		    len > STOR_MAX_MAILBOX_NAME_LEN)
			return cl_fail(c, "LIST: bad SUBSCRIBED line");
		ARRAY_PUSH(&c->srv_subs, xstrdup(s));
		return 0;
	}
	if (proto_cmd_is(line, "UNSUBSCRIBED")) {
		if (line->arg_count != 1 || proto_arg_str(&line->args[0], &s, &len) < 0 ||
		    len > STOR_MAX_MAILBOX_NAME_LEN || c->srv_unsubs.count >= SYNC_MAX_MAILBOXES)
			return cl_fail(c, "LIST: bad UNSUBSCRIBED line");
		ARRAY_PUSH(&c->srv_unsubs, xstrdup(s));
		return 0;
	}
	if (proto_cmd_is(line, "DELETED")) {
		struct cl_srv_tomb t;
		uint64_t v = 0;
		memset(&t, 0, sizeof(t));
		if ((line->arg_count != 1 && line->arg_count != 3) ||
		    proto_arg_guid(&line->args[0], &t.guid) < 0 ||
		    (line->arg_count == 3 &&
		     (proto_arg_u32(&line->args[1], &t.uidnext) < 0 ||
		      proto_arg_u64(&line->args[2], INT64_MAX, &v) < 0 ||
		      !mail_modseq_valid(v) || t.uidnext > MAIL_UIDNEXT_MAX)))
			return cl_fail(c, "LIST: bad DELETED line");
		t.hms = v;
		if (c->srv_deleted.count >= SYNC_MAX_MAILBOXES)
			return cl_fail(c, "LIST: too many DELETED lines");
		ARRAY_PUSH(&c->srv_deleted, t);
		return 0;
	}
	struct guid digest;
	uint64_t v;
	if (!proto_cmd_is(line, "MAILBOX") || line->arg_count != 7 ||
	    proto_arg_str(&line->args[0], &s, &len) < 0 || len > STOR_MAX_MAILBOX_NAME_LEN ||
	    proto_arg_guid(&line->args[1], &m.guid) < 0 ||
	    proto_arg_u32(&line->args[2], &m.uidvalidity) < 0 ||
	    proto_arg_u32(&line->args[3], &m.uidnext) < 0 ||
	    proto_arg_u64(&line->args[4], INT64_MAX, &v) < 0 ||
	    proto_arg_guid(&line->args[5], &digest) < 0 ||
	    line->args[6].type != PROTO_ARG_ATOM || line->args[6].len >= sizeof(m.special))
		return cl_fail(c, "LIST: bad MAILBOX line");
	if (!mail_uidnext_valid(m.uidnext) || !mail_modseq_valid(v))
		return cl_fail(c, "LIST: MAILBOX line with %s", MAIL_LIMITS_TEXT);
	m.hms = v;
	memcpy(m.digest, digest.b, sizeof(m.digest));
	if (strcmp(line->args[6].str, "NIL") != 0)
		memcpy(m.special, line->args[6].str, line->args[6].len + 1);
	m.name = xstrdup(s);
	ARRAY_PUSH(&c->srv, m);
	return 0;
}

/* ---- Per-mailbox sync ---- */

static int plan_jobs(struct sync_client *c)
{
	stor_mailbox_array mbs;
	const char *err;
	if (stor_mailbox_list(c->db, c->user, &mbs, &err) < 0)
		return cl_fail(c, "%s", err);
	ARRAY_FREE(&c->jobs);
	for (size_t i = 0; i < mbs.count; i++)
		ARRAY_PUSH(&c->jobs, mbs.items[i].guid);
	stor_mailbox_list_free(&mbs);
	c->job = 0;
	c->job_tries = 0;
	return 0;
}

/* Decides what to do with mailbox c->jobs[c->job]: 1 sync it (MBOX sent),
 * 0 skip it, -1 error. */
static int mbox_start(struct sync_client *c)
{
	const char *err;
	struct stor_sync_state st;
	answer_free(c);
	int r = stor_mailbox_get_by_guid(c->db, &c->jobs.items[c->job], &c->cur, &err);
	if (r <= 0)
		return r < 0 ? cl_fail(c, "%s", err) : 0; /* gone meanwhile */
	c->have_cur = true;
	const struct cl_srv_mbox *s = srv_by_guid(c, &c->cur.guid);
	if (s == NULL)
		return cl_fail(c, "mailbox %s is missing on the peer after the list merge",
			       c->cur.name);
	c->report.mailboxes_checked++;
	if (s->uidvalidity != c->cur.uidvalidity)
		return cl_fail(c, "mailbox %s: UIDVALIDITY %u here, %u on the peer (needs a "
			       "full resync, SPEC.md 10.4, not implemented)", c->cur.name,
			       c->cur.uidvalidity, s->uidvalidity);
	r = stor_sync_state_get(c->db, c->peer, &c->cur.guid, &st, &err);
	if (r < 0)
		return cl_fail(c, "%s", err);
	if (r > 0 && st.uidvalidity != c->cur.uidvalidity) {
		r = 0;
		memset(&st, 0, sizeof(st));
	}
	bool digest_eq = memcmp(s->digest, c->cur.digest, sizeof(s->digest)) == 0;
	bool full = c->full;
	if (!full && !digest_eq && c->cur.uidnext == s->uidnext &&
	    c->cur.highestmodseq == s->hms) {
		/* Equal UIDNEXT and HIGHESTMODSEQ, different messages or
		 * flags: nothing the modseqs say can be trusted. */
		log_warnx("sync %s with %u: mailbox %s: digests differ with equal UIDNEXT and "
			  "HIGHESTMODSEQ; comparing every message", c->user, c->peer, c->cur.name);
		full = true;
	}
	if (r > 0 && !full) {
		bool unchanged = c->cur.uidnext == st.uidnext && s->uidnext == st.uidnext &&
			c->cur.highestmodseq == st.highestmodseq && s->hms == st.highestmodseq;
		if (unchanged && digest_eq)
			return 0;
		/* (Unchanged with different digests was caught above.) */
		if (c->cur.uidnext < st.uidnext || s->uidnext < st.uidnext ||
			   c->cur.highestmodseq < st.highestmodseq || s->hms < st.highestmodseq) {
			log_warnx("sync %s with %u: mailbox %s went back in time (restored?); "
				  "comparing every message", c->user, c->peer, c->cur.name);
			full = true;
		}
	} else if (r == 0 && !full && digest_eq && c->cur.uidnext == s->uidnext &&
		   c->cur.highestmodseq == s->hms) {
		/* Never synced, but identical already (both new and empty). */
		st.uidvalidity = c->cur.uidvalidity;
		st.uidnext = c->cur.uidnext;
		st.highestmodseq = c->cur.highestmodseq;
		if (stor_sync_state_set(c->db, c->peer, &c->cur.guid, &st, &err) < 0)
			return cl_fail(c, "%s", err);
		return 0;
	}
	if (r == 0)
		full = true;
	c->cur_full = full;
	c->L = full ? 1 : st.uidnext;
	c->M = full ? 0 : st.highestmodseq;
	c->cu = c->cur.uidnext;
	c->cm = c->cur.highestmodseq;
	c->report.mailboxes_synced++;
	if (full)
		c->report.mailboxes_full++;

	struct proto_wr w;
	/* One mailbox at a time: id 1 is rebound each time (SPEC.md 6.1), so
	 * the server's id table stays one entry whatever the mailbox count. */
	uint32_t id = 1;
	cl_new_group(c);
	cl_cmd_begin(c, &w, "MBOX", K_MBOX, 0);
	proto_wr_u64(&w, id);
	proto_wr_cstr(&w, c->user);
	proto_wr_cstr(&w, c->cur.name);
	proto_wr_u64(&w, c->cur.uidvalidity);
	proto_wr_guid(&w, &c->cur.guid);
	cl_cmd_end(c, &w);
	cl_cmd_begin(c, &w, "SELECT", K_SELECT, 0);
	proto_wr_u64(&w, id);
	cl_cmd_end(c, &w);
	return 1;
}

static int send_begin(struct sync_client *c)
{
	const char *err;
	if (stor_changes_since(c->db, &c->cur.guid, c->M, &c->msgs, &c->tombs, &err) < 0)
		return cl_fail(c, "%s", err);
	c->report.messages_examined += (unsigned)(c->msgs.count + c->tombs.count);
	cl_new_group(c);
	struct proto_wr w;
	cl_cmd_begin(c, &w, "SYNC-BEGIN", K_BEGIN, 0);
	proto_wr_u64(&w, c->M);
	proto_wr_u64(&w, c->cm);
	proto_wr_u64(&w, c->L);
	proto_wr_u64(&w, c->cu);
	cl_cmd_end(c, &w);
	c->send_pos = 0;
	return 0;
}

/* Sends up to budget of our changes; 1 when all are sent. */
static int send_some(struct sync_client *c)
{
	struct proto_wr w;
	unsigned n = 0;
	while (c->send_pos < c->msgs.count && n < c->budget) {
		const struct stor_msg *m = &c->msgs.items[c->send_pos];
		if (m->uid >= c->L) {
			struct proto_save sv;
			sync_save_of_msg(&sv, m);
			cl_cmd_begin(c, &w, "SAVE", K_SAVE, c->send_pos);
			proto_wr_save(&w, &sv);
			sync_wr_stamps(&w, &m->stamps);
		} else {
			uint32_t uid = m->uid;
			struct proto_store st = {
				.uids = &uid, .uid_count = 1, .modseq = m->modseq,
				.add = { m->flags, { m->keywords.items, m->keywords.count,
						     m->keywords.cap } },
				.replace = true,
			};
			cl_cmd_begin(c, &w, "STORE", K_OTHER, 0);
			proto_wr_store(&w, &st);
			sync_wr_stamps(&w, &m->stamps);
			c->report.flags_changed++;
		}
		cl_cmd_end(c, &w);
		c->send_pos++;
		n++;
	}
	if (c->send_pos < c->msgs.count)
		return 0;
	if (c->tombs.count > 0) {
		/* A user's expunges go with their GUIDs: the server drops its
		 * copies of those GUIDs under other UIDs too (SPEC 10.3). */
		stor_uid_list uids = ARRAY_INIT, uuids = ARRAY_INIT;
		ARRAY(struct guid) ug = ARRAY_INIT;
		for (size_t i = 0; i < c->tombs.count; i++) {
			const struct stor_tombstone *t = &c->tombs.items[i];
			if (t->user) {
				ARRAY_PUSH(&uuids, t->uid);
				ARRAY_PUSH(&ug, t->guid);
			} else {
				ARRAY_PUSH(&uids, t->uid);
			}
		}
		cl_wr_expunges(c, &uids, &uuids, ug.items);
		ARRAY_FREE(&uids);
		ARRAY_FREE(&uuids);
		ARRAY_FREE(&ug);
	}
	return 1;
}

static int resend_some(struct sync_client *c)
{
	struct proto_wr w;
	struct buf text = BUF_INIT;
	const char *err;
	size_t bytes = 0;
	unsigned n = 0;
	while (c->resend_pos < c->resend.count && n < c->budget && bytes < 8 * 1024 * 1024) {
		const struct stor_msg *m = &c->msgs.items[c->resend.items[c->resend_pos]];
		buf_reset(&text);
		if (stor_text_read(c->db, &m->guid, 0, m->size, &text, &err) < 0) {
			buf_free(&text);
			return cl_fail(c, "reading the text of UID %u: %s", m->uid, err);
		}
		struct proto_save sv;
		sync_save_of_msg(&sv, m);
		sv.text = text.data != NULL ? (const void *)text.data : "";
		sv.text_len = text.len;
		cl_cmd_begin(c, &w, "SAVE", K_SAVE, c->resend.items[c->resend_pos]);
		proto_wr_save(&w, &sv);
		sync_wr_stamps(&w, &m->stamps);
		cl_cmd_end(c, &w);
		c->report.texts_sent++;
		bytes += text.len;
		c->resend_pos++;
		n++;
	}
	buf_free(&text);
	return c->resend_pos == c->resend.count ? 1 : 0;
}

static void send_end(struct sync_client *c)
{
	struct proto_wr w;
	cl_new_group(c);
	cl_cmd_begin(c, &w, "SYNC-END", K_END, 0);
	cl_cmd_end(c, &w);
}

/* Looks for the texts of up to budget SAVE lines; once all are looked at,
 * FETCHes the ones we don't hold.  0 = call again, 1 = FETCH sent (or
 * nothing to fetch), -1 error. */
static int send_fetch(struct sync_client *c)
{
	const char *err;
	unsigned n = 0;
	if (c->fetch_pos == 0)
		c->need.count = 0;
	for (; c->fetch_pos < c->saves.count && n < c->budget; c->fetch_pos++, n++) {
		const struct cl_save *sv = &c->saves.items[c->fetch_pos];
		int r = stor_text_exists(c->db, &sv->guid, NULL, &err);
		if (r < 0)
			return cl_fail(c, "%s", err);
		if (r == 0)
			ARRAY_PUSH(&c->need, sv->uid);
	}
	if (c->fetch_pos < c->saves.count)
		return 0;
	c->fetch_pos = 0;
	cl_new_group(c);
	stor_uid_list need = c->need;
	for (size_t i = 0; i < need.count; i += SYNC_MAX_UIDS_PER_LINE) {
		struct proto_wr w;
		size_t k = need.count - i;
		if (k > SYNC_MAX_UIDS_PER_LINE)
			k = SYNC_MAX_UIDS_PER_LINE;
		/* need is in UID order: the messages below this chunk's first
		 * UID can be stored once the chunks before it completed. */
		struct cl_chunk ch = { need.items[i], false };
		cl_cmd_begin(c, &w, "FETCH", K_FETCH, c->chunks.count);
		ARRAY_PUSH(&c->chunks, ch);
		proto_wr_uidset(&w, need.items + i, k);
		cl_cmd_end(c, &w);
	}
	c->need.count = 0;
	return 1;
}

/* The UID below which every message of the answer has its text here: the
 * first UID of the first FETCH chunk not completed yet. */
static uint32_t fetched_below(const struct sync_client *c)
{
	for (size_t i = 0; i < c->chunks.count; i++) {
		if (!c->chunks.items[i].done)
			return c->chunks.items[i].lo;
	}
	return UINT32_MAX;
}

static int cmp_cl_save(const void *a, const void *b)
{
	uint32_t x = ((const struct cl_save *)a)->uid, y = ((const struct cl_save *)b)->uid;
	return x < y ? -1 : x > y;
}

/* c->saves is sorted by UID once the SYNC-END answer is complete. */
static const struct cl_save *save_by_uid(const struct sync_client *c, uint32_t uid)
{
	struct cl_save key;
	key.uid = uid;
	if (c->saves.count == 0)
		return NULL;
	return bsearch(&key, c->saves.items, c->saves.count, sizeof(key), cmp_cl_save);
}

static int on_text_line(struct sync_client *c, const struct proto_cmd *line)
{
	uint32_t uid;
	struct guid g;
	const char *err;
	if (!proto_cmd_is(line, "TEXT") || line->arg_count != 3 ||
	    proto_arg_u32(&line->args[0], &uid) < 0 || proto_arg_guid(&line->args[1], &g) < 0 ||
	    line->args[2].type != PROTO_ARG_LITERAL)
		return cl_fail(c, "FETCH: bad data line %s", line->name);
	const struct cl_save *sv = save_by_uid(c, uid);
	if (sv == NULL || guid_cmp(&sv->guid, &g) != 0)
		return cl_fail(c, "FETCH: TEXT for UID %u that was not asked for", uid);
	struct stor_text_writer *tw = stor_text_begin(c->db, &g);
	if (stor_text_write(tw, line->args[2].str, line->args[2].len, &err) < 0) {
		stor_text_abort(&tw);
		return cl_fail(c, "storing the text of UID %u: %s", uid, err);
	}
	if (stor_text_finish(&tw, &err) < 0)
		return cl_fail(c, "storing the text of UID %u: %s", uid, err);
	c->report.texts_fetched++;
	return 0;
}

/* Data lines of the SYNC-END answer. */
static int on_end_line(struct sync_client *c, const struct proto_cmd *line)
{
	if (c->exp_uids.count + c->saves.count + c->flags.count + c->fix_old.count >
	    SYNC_MAX_ANSWER_ITEMS)
		return cl_fail(c, "SYNC-END: answer too large");
	if (proto_cmd_is(line, "EXPUNGE")) {
		stor_uid_list uids;
		uint64_t ms;
		bool user;
		struct guid *guids;
		if (line->arg_count < 2 ||
		    sync_arg_uids(&line->args[0], SYNC_MAX_UIDS_PER_LINE * 4, &uids) < 0)
			return cl_fail(c, "SYNC-END: bad EXPUNGE line");
		if (proto_arg_u64(&line->args[1], INT64_MAX, &ms) < 0 ||
		    sync_cmd_user_guids(line, 2, &uids, &user, &guids) < 0) {
			ARRAY_FREE(&uids);
			return cl_fail(c, "SYNC-END: bad EXPUNGE line");
		}
		/* Values past the bounds fail the sync before anything of
		 * the answer is applied. */
		if (!mail_modseq_valid(ms) || !mail_uids_valid(uids.items, uids.count)) {
			ARRAY_FREE(&uids);
			free(guids);
			return cl_fail(c, "SYNC-END: EXPUNGE line with %s", MAIL_LIMITS_TEXT);
		}
		for (size_t i = 0; i < uids.count; i++) {
			ARRAY_PUSH(&c->exp_uids, uids.items[i]);
			if (user) {
				struct sync_uexp x = { uids.items[i], guids[i] };
				ARRAY_PUSH(&c->exp_user, x);
			}
		}
		free(guids);
		ARRAY_FREE(&uids);
		c->exp_modseq = ms;
		return 0;
	}
	if (proto_cmd_is(line, "SAVE")) {
		struct cl_save sv;
		struct proto_save ps;
		const char *err;
		memset(&sv, 0, sizeof(sv));
		int cr = proto_read_save(line, PROTO_SAVE_GIVEN, &ps, &err);
		if (cr == PROTO_CODEC_BAD || sync_cmd_stamps(line, 6, &sv.stamped, &sv.stamps) < 0) {
			if (cr == PROTO_CODEC_OK)
				proto_save_free(&ps);
			return cl_fail(c, "SYNC-END: bad SAVE line");
		}
		if (cr == PROTO_CODEC_LIMIT) {
			stor_stamp_list_free(&sv.stamps);
			return cl_fail(c, "SYNC-END: SAVE line with %s", MAIL_LIMITS_TEXT);
		}
		sv.uid = ps.uid;
		sv.modseq = ps.modseq;
		sv.guid = ps.guid;
		sync_flags_take(&sv.f, &ps.f);
		sv.date = ps.date;
		sv.tz = ps.tz;
		if (ps.text != NULL) {
			struct stor_text_writer *tw = stor_text_begin(c->db, &sv.guid);
			if (stor_text_write(tw, ps.text, ps.text_len, &err) < 0) {
				stor_text_abort(&tw);
				sync_flags_free(&sv.f);
				stor_stamp_list_free(&sv.stamps);
				return cl_fail(c, "%s", err);
			}
			if (stor_text_finish(&tw, &err) < 0) {
				sync_flags_free(&sv.f);
				stor_stamp_list_free(&sv.stamps);
				return cl_fail(c, "%s", err);
			}
		}
		ARRAY_PUSH(&c->saves, sv);
		return 0;
	}
	if (proto_cmd_is(line, "FLAGS")) {
		struct cl_flags fl;
		struct proto_flags_line pl;
		const char *err;
		memset(&fl, 0, sizeof(fl));
		bool stamped;
		int cr = proto_read_flags_line(line, &pl, &err);
		if (cr == PROTO_CODEC_BAD || sync_cmd_stamps(line, 3, &stamped, &fl.stamps) < 0) {
			if (cr == PROTO_CODEC_OK)
				proto_flags_free(&pl.f);
			return cl_fail(c, "SYNC-END: bad FLAGS line");
		}
		if (cr == PROTO_CODEC_LIMIT) {
			stor_stamp_list_free(&fl.stamps);
			return cl_fail(c, "SYNC-END: FLAGS line with %s", MAIL_LIMITS_TEXT);
		}
		fl.uid = pl.uid;
		fl.modseq = pl.modseq;
		sync_flags_take(&fl.f, &pl.f);
		ARRAY_PUSH(&c->flags, fl);
		return 0;
	}
	if (proto_cmd_is(line, "UIDFIX")) {
		stor_uid_list o, n;
		if (line->arg_count != 2 ||
		    sync_arg_uids(&line->args[0], SYNC_MAX_UIDS_PER_LINE * 4, &o) < 0)
			return cl_fail(c, "SYNC-END: bad UIDFIX line");
		if (sync_arg_uids(&line->args[1], SYNC_MAX_UIDS_PER_LINE * 4, &n) < 0 ||
		    n.count != o.count) {
			ARRAY_FREE(&o);
			ARRAY_FREE(&n);
			return cl_fail(c, "SYNC-END: bad UIDFIX line");
		}
		if (!mail_uids_valid(o.items, o.count) || !mail_uids_valid(n.items, n.count)) {
			ARRAY_FREE(&o);
			ARRAY_FREE(&n);
			return cl_fail(c, "SYNC-END: UIDFIX line with %s", MAIL_LIMITS_TEXT);
		}
		for (size_t i = 0; i < o.count; i++) {
			ARRAY_PUSH(&c->fix_old, o.items[i]);
			ARRAY_PUSH(&c->fix_new, n.items[i]);
		}
		ARRAY_FREE(&o);
		ARRAY_FREE(&n);
		return 0;
	}
	return cl_fail(c, "SYNC-END: unexpected data line %s", line->name);
}

static const struct stor_tombstone *tomb_by_uid(const stor_tombstone_list *l, uint32_t uid)
{
	size_t lo = 0, hi = l->count;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (l->items[mid].uid == uid)
			return &l->items[mid];
		if (l->items[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* The second, short sync after an answer that named UIDs we hold
 * tombstones for: EXPUNGE of our expunged copies, UIDFIX of the server's
 * messages that we had to place at fresh UIDs. */
static int send_late(struct sync_client *c)
{
	struct stor_mailbox mb;
	const char *err;
	struct proto_wr w;
	int r = stor_mailbox_get_by_guid(c->db, &c->cur.guid, &mb, &err);
	if (r <= 0)
		return cl_fail(c, "mailbox vanished: %s", r < 0 ? err : "");
	c->M = c->final_modseq;
	c->L = c->final_uidnext;
	c->cu = mb.uidnext;
	c->cm = mb.highestmodseq;
	stor_mailbox_free(&mb);
	stor_uid_list exp = c->late_exp, fo = c->late_old, fn = c->late_new;
	stor_uid_list uexp = c->late_uexp;
	struct guid *uexp_g = c->late_uexp_g.items;
	memset(&c->late_exp, 0, sizeof(c->late_exp));
	memset(&c->late_uexp, 0, sizeof(c->late_uexp));
	memset(&c->late_uexp_g, 0, sizeof(c->late_uexp_g));
	memset(&c->late_old, 0, sizeof(c->late_old));
	memset(&c->late_new, 0, sizeof(c->late_new));
	for (size_t i = 0; i < c->saves.count; i++) {
		sync_flags_free(&c->saves.items[i].f);
		stor_stamp_list_free(&c->saves.items[i].stamps);
	}
	for (size_t i = 0; i < c->flags.count; i++) {
		sync_flags_free(&c->flags.items[i].f);
		stor_stamp_list_free(&c->flags.items[i].stamps);
	}
	c->saves.count = c->flags.count = 0;
	c->exp_uids.count = c->fix_old.count = c->fix_new.count = 0;
	c->exp_user.count = 0;
	c->exp_after.count = 0;
	c->tombs.count = 0;
	c->resend.count = 0;
	stor_msg_list_free(&c->msgs);
	memset(&c->msgs, 0, sizeof(c->msgs));
	cl_new_group(c);
	cl_cmd_begin(c, &w, "SYNC-BEGIN", K_BEGIN, 0);
	proto_wr_u64(&w, c->M);
	proto_wr_u64(&w, c->cm);
	proto_wr_u64(&w, c->L);
	proto_wr_u64(&w, c->cu);
	cl_cmd_end(c, &w);
	cl_wr_expunges(c, &exp, &uexp, uexp_g);
	for (size_t i = 0; i < fo.count; i += SYNC_MAX_UIDS_PER_LINE) {
		size_t k = fo.count - i < SYNC_MAX_UIDS_PER_LINE ? fo.count - i : SYNC_MAX_UIDS_PER_LINE;
		cl_cmd_begin(c, &w, "UIDFIX", K_OTHER, 0);
		proto_wr_uidset(&w, fo.items + i, k);
		proto_wr_uidset(&w, fn.items + i, k);
		cl_cmd_end(c, &w);
	}
	ARRAY_FREE(&exp);
	ARRAY_FREE(&uexp);
	free(uexp_g);
	ARRAY_FREE(&fo);
	ARRAY_FREE(&fn);
	return 0;
}

/* Applies the server's answer, up to budget operations per call; 1 when
 * done. */
static int apply_some(struct sync_client *c)
{
	const char *err;
	unsigned n = 0;
	const struct guid *mbg = &c->cur.guid;
	if (c->apply_stage == 0) {
		if (c->exp_uids.count > 0) {
			stor_uid_list now = ARRAY_INIT, done = ARRAY_INIT;
			struct guid *saved = NULL;
			c->exp_after.count = 0;
			if (c->saves.count > 0) {
				saved = xmalloc(c->saves.count * sizeof(*saved));
				for (size_t j = 0; j < c->saves.count; j++)
					saved[j] = c->saves.items[j].guid;
				qsort(saved, c->saves.count, sizeof(*saved), cmp_guid_v);
			}
			for (size_t i = 0; i < c->exp_uids.count; i++) {
				struct stor_msg m;
				bool again = false;
				if (saved != NULL &&
				    stor_msg_get(c->db, mbg, c->exp_uids.items[i], &m, &err) > 0) {
					again = bsearch(&m.guid, saved, c->saves.count, sizeof(*saved),
							cmp_guid_v) != NULL;
					stor_msg_free(&m);
				}
				if (again)
					ARRAY_PUSH(&c->exp_after, c->exp_uids.items[i]);
				else
					ARRAY_PUSH(&now, c->exp_uids.items[i]);
			}
			sync_uexp_sort(&c->exp_user);
			if (now.count > 0 && cl_expunge(c, &now, &done, &err) < 0) {
				ARRAY_FREE(&now);
				free(saved);
				return cl_fail(c, "%s", err);
			}
			c->report.messages_expunged += (unsigned)done.count;
			ARRAY_FREE(&done);
			ARRAY_FREE(&now);
			free(saved);
		}
		c->apply_stage = 1;
		c->apply_pos = 0;
	}
	if (c->apply_stage == 1) {
		for (; c->apply_pos < c->fix_old.count && n < c->budget; c->apply_pos++, n++) {
			if (stor_msg_renumber(c->db, mbg, c->fix_old.items[c->apply_pos],
					      c->fix_new.items[c->apply_pos], c->final_modseq, &err) < 0)
				return cl_fail(c, "UIDFIX %u -> %u: %s", c->fix_old.items[c->apply_pos],
					       c->fix_new.items[c->apply_pos], err);
			c->report.messages_renumbered++;
		}
		if (c->apply_pos < c->fix_old.count)
			return 0;
		c->apply_stage = 2;
		c->apply_pos = 0;
	}
	if (c->apply_stage == 2) {
		if (c->apply_pos == 0)
			c->late_next = c->final_uidnext;
		for (; c->apply_pos < c->saves.count && n < c->budget; c->apply_pos++, n++) {
			const struct cl_save *sv = &c->saves.items[c->apply_pos];
			uint32_t uid = sv->uid;
			if (uid >= c->apply_below)
				return 0; /* its text is still on its way */
			const struct stor_tombstone *t = tomb_by_uid(&c->tombs, uid);
			if (t != NULL && guid_cmp(&t->guid, &sv->guid) == 0) {
				/* We expunged this very message: the expunge wins. */
				if (t->user) {
					ARRAY_PUSH(&c->late_uexp, uid);
					ARRAY_PUSH(&c->late_uexp_g, t->guid);
				} else {
					ARRAY_PUSH(&c->late_exp, uid);
				}
				continue;
			}
			if (t != NULL) {
				/* The UID named another message here: it moves. */
				if (!mail_uid_valid(c->late_next))
					return cl_fail(c, "no UIDs left to renumber UID %u to", uid);
				uid = c->late_next++;
				ARRAY_PUSH(&c->late_old, sv->uid);
				ARRAY_PUSH(&c->late_new, uid);
				c->report.messages_renumbered++;
			}
			struct stor_msg have;
			int hr = stor_msg_get(c->db, mbg, uid, &have, &err);
			if (hr < 0)
				return cl_fail(c, "%s", err);
			if (hr == 0) {
				/* Replication may have brought this very message to
				 * another UID since the answer: not twice.  The
				 * state differs from the answer's then, and the
				 * mailbox is synced again (apply_some returns 2). */
				uint32_t at;
				int fr = stor_msg_find_guid(c->db, mbg, &sv->guid, &at, &err);
				if (fr < 0)
					return cl_fail(c, "%s", err);
				if (fr > 0) {
					c->apply_diverged = true;
					continue;
				}
			}
			if (hr > 0) {
				bool same = guid_cmp(&have.guid, &sv->guid) == 0;
				stor_msg_free(&have);
				if (!same)
					return cl_fail(c, "SAVE line for UID %u, which holds another "
						       "message here", uid);
				/* Already here: take the line's state and modseq. */
				struct stor_store sreq = {
					.op = STOR_FLAGS_REPLACE, .flags = sv->f.flags,
					.keywords = (const char *const *)sv->f.keywords.items,
					.keyword_count = sv->f.keywords.count, .modseq = sv->modseq,
					.stamps = sv->stamps.items, .stamp_count = sv->stamps.count,
				};
				if (stor_msg_store(c->db, mbg, &uid, 1, &sreq, NULL, NULL, &err) < 0)
					return cl_fail(c, "FLAGS %u: %s", uid, err);
				continue;
			}
			struct stor_append req = {
				.uid = uid, .modseq = sv->modseq, .guid = &sv->guid,
				.flags = sv->f.flags,
				.keywords = (const char *const *)sv->f.keywords.items,
				.keyword_count = sv->f.keywords.count,
				.internaldate = sv->date, .internaldate_tz = sv->tz,
				.stamps_given = sv->stamped, .stamps = sv->stamps.items,
				.stamp_count = sv->stamps.count,
			};
			if (stor_msg_append(c->db, mbg, &req, NULL, NULL, &err) < 0)
				return cl_fail(c, "storing UID %u: %s", uid, err);
			c->report.messages_received++;
		}
		if (c->apply_pos < c->saves.count || c->apply_below != UINT32_MAX)
			return 0;
		if (c->exp_after.count > 0) {
			stor_uid_list done = ARRAY_INIT;
			if (cl_expunge(c, &c->exp_after, &done, &err) < 0)
				return cl_fail(c, "%s", err);
			c->report.messages_expunged += (unsigned)done.count;
			ARRAY_FREE(&done);
			c->exp_after.count = 0;
		}
		c->apply_stage = 3;
		c->apply_pos = 0;
	}
	if (c->apply_stage == 3) {
		for (; c->apply_pos < c->flags.count && n < c->budget; c->apply_pos++, n++) {
			const struct cl_flags *fl = &c->flags.items[c->apply_pos];
			struct stor_store req = {
				.op = STOR_FLAGS_REPLACE, .flags = fl->f.flags,
				.keywords = (const char *const *)fl->f.keywords.items,
				.keyword_count = fl->f.keywords.count, .modseq = fl->modseq,
				.stamps = fl->stamps.items, .stamp_count = fl->stamps.count,
			};
			if (stor_msg_store(c->db, mbg, &fl->uid, 1, &req, NULL, NULL, &err) < 0)
				return cl_fail(c, "FLAGS %u: %s", fl->uid, err);
			c->report.flags_changed++;
		}
		if (c->apply_pos < c->flags.count)
			return 0;
		c->apply_stage = 4;
	}
	if (stor_mailbox_raise(c->db, mbg, c->final_uidnext, c->final_modseq, &err) < 0)
		return cl_fail(c, "%s", err);
	if (c->late_exp.count > 0 || c->late_uexp.count > 0 || c->late_old.count > 0)
		return 3;
	struct stor_mailbox mb;
	int r = stor_mailbox_get_by_guid(c->db, mbg, &mb, &err);
	if (r <= 0)
		return cl_fail(c, "mailbox vanished: %s", r < 0 ? err : "");
	bool converged = mb.uidnext == c->final_uidnext && mb.highestmodseq == c->final_modseq &&
			 !c->apply_diverged;
	c->apply_diverged = false;
	struct stor_sync_state st = {
		.uidvalidity = mb.uidvalidity, .uidnext = c->final_uidnext,
		.highestmodseq = c->final_modseq,
	};
	stor_mailbox_free(&mb);
	if (stor_sync_state_set(c->db, c->peer, mbg, &st, &err) < 0)
		return cl_fail(c, "%s", err);
	if (!converged)
		return 2;
	return 1;
}

/* ---- Input ---- */

int sync_client_input(struct sync_client *c, const struct proto_cmd *line)
{
	if (c->phase == PH_ERROR)
		return -1;
	if (strcmp(line->tag, "*") == 0)
		return 0;
	uint64_t tagno;
	if (line->tag[0] != 'C' || str_to_u64(line->tag + 1, UINT32_MAX, &tagno) < 0)
		return cl_fail(c, "line with a foreign tag %s", line->tag);
	if (tagno < c->phase_base || tagno >= c->phase_base + c->pending.count)
		return 0; /* an answer to an abandoned group */
	struct cl_pending *p = &c->pending.items[tagno - c->phase_base];
	if (p->done)
		return cl_fail(c, "second completion for %s", line->tag);
	if (!proto_cmd_is_status(line)) {
		switch (p->kind) {
		case K_LIST:
			return on_list_line(c, line);
		case K_END:
			return on_end_line(c, line);
		case K_FETCH:
			return on_text_line(c, line);
		default:
			return cl_fail(c, "unexpected data line %s %s", line->tag, line->name);
		}
	}
	p->done = true;
	c->outstanding--;
	bool ok = proto_cmd_is(line, "OK");
	switch (p->kind) {
	case K_SAVE:
		if (ok && proto_code_has(line, "PRESENT")) {
			c->report.messages_present++;
			return 0;
		}
		if (ok) {
			c->report.messages_sent++;
			return 0;
		}
		if (proto_code_has(line, "NONEXISTENT")) {
			ARRAY_PUSH(&c->resend, p->idx);
			return 0;
		}
		return cl_fail(c, "SAVE refused: %s", line->text);
	case K_END:
		if (!ok)
			return cl_fail(c, "SYNC-END refused: %s", line->text);
		{
			const struct proto_arg *a = proto_code_value(line, "UIDNEXT");
			const struct proto_arg *b = proto_code_value(line, "HIGHESTMODSEQ");
			uint64_t ms;
			if (a == NULL || b == NULL || proto_arg_u32(a, &c->final_uidnext) < 0 ||
			    proto_arg_u64(b, INT64_MAX, &ms) < 0)
				return cl_fail(c, "SYNC-END: OK without UIDNEXT and HIGHESTMODSEQ");
			if (!mail_uidnext_valid(c->final_uidnext) || !mail_modseq_valid(ms))
				return cl_fail(c, "SYNC-END: OK with %s", MAIL_LIMITS_TEXT);
			c->final_modseq = ms;
		}
		return 0;
	case K_FETCH:
		if (!ok || proto_code_has(line, "MISSING"))
			return cl_fail(c, "FETCH: the peer lacks texts it announced (%s)", line->text);
		if (p->idx < c->chunks.count)
			c->chunks.items[p->idx].done = true;
		return 0;
	case K_LISTOP:
		if (!ok)
			return cl_fail(c, "%s refused: %s", "mailbox list change", line->text);
		return 0;
	default:
		if (!ok)
			return cl_fail(c, "command %s refused: %s", line->tag, line->text);
		return 0;
	}
}

int sync_client_feed(struct sync_client *c, const void *data, size_t len)
{
	const unsigned char *p = data;
	while (len > 0) {
		size_t used;
		const struct proto_cmd *line;
		int r = proto_parser_parse(c->parser, p, len, &used, &line);
		if (r < 0) {
			const char *code, *text;
			proto_parser_get_error(c->parser, &code, &text);
			return cl_fail(c, "parse error: %s", text);
		}
		p += used;
		len -= used;
		if (r == 1 && sync_client_input(c, line) < 0)
			return -1;
	}
	return 0;
}

/* ---- The state machine ---- */

enum sync_step_result sync_client_step(struct sync_client *c)
{
	int r;
	switch (c->phase) {
	case PH_START:
		send_list(c);
		c->phase = PH_LIST_WAIT;
		return SYNC_STEP_WAIT;
	case PH_LIST_WAIT:
	case PH_LISTOPS_WAIT:
	case PH_RELIST_WAIT:
	case PH_MBOX_WAIT:
	case PH_SEND_WAIT:
	case PH_RESEND_WAIT:
	case PH_END_WAIT:
	case PH_FETCH_WAIT:
		if (c->outstanding > 0 && c->phase == PH_FETCH_WAIT) {
			/* Store the messages whose texts arrived while the rest
			 * come. */
			size_t stage = c->apply_stage, pos = c->apply_pos;
			c->apply_below = fetched_below(c);
			if (apply_some(c) < 0)
				return SYNC_STEP_ERROR;
			if (stage != c->apply_stage || pos != c->apply_pos)
				return SYNC_STEP_AGAIN;
		}
		if (c->outstanding > 0)
			return SYNC_STEP_WAIT;
		switch (c->phase) {
		case PH_LIST_WAIT:
			srv_index_build(c);
			c->phase = PH_LIST_MERGE;
			break;
		case PH_LISTOPS_WAIT:
			if (c->list_changed) {
				send_list(c);
				c->phase = PH_RELIST_WAIT;
				return SYNC_STEP_WAIT;
			}
			c->phase = PH_PLAN;
			break;
		case PH_RELIST_WAIT:
			srv_index_build(c);
			c->phase = PH_PLAN;
			break;
		case PH_MBOX_WAIT:
			log_debug("sync %s with %u: mailbox %s: %s sync", c->user, c->peer,
				  c->cur.name, c->cur_full ? "full" : "incremental");
			if (send_begin(c) < 0)
				return SYNC_STEP_ERROR;
			c->phase = PH_SEND;
			break;
		case PH_SEND_WAIT:
			c->resend_pos = 0;
			cl_new_group(c);
			c->phase = PH_RESEND;
			break;
		case PH_RESEND_WAIT:
			send_end(c);
			c->phase = PH_END_WAIT;
			return SYNC_STEP_WAIT;
		case PH_END_WAIT:
			log_debug("sync %s with %u: mailbox %s: answer in: %zu expunged, %zu saved, "
				  "%zu flags, %zu moved", c->user, c->peer, c->cur.name,
				  c->exp_uids.count, c->saves.count, c->flags.count, c->fix_old.count);
			if (c->saves.count > 0)
				qsort(c->saves.items, c->saves.count, sizeof(struct cl_save),
				      cmp_cl_save);
			c->apply_stage = 0;
			c->apply_pos = 0;
			c->apply_below = 0; /* nothing stored before the FETCHes go */
			c->chunks.count = 0;
			c->phase = PH_FETCH;
			break;
		case PH_FETCH_WAIT:
			log_debug("sync %s with %u: mailbox %s: %u texts fetched so far; applying",
				  c->user, c->peer, c->cur.name, c->report.texts_fetched);
			c->apply_below = UINT32_MAX;
			c->phase = PH_APPLY;
			break;
		default:
			break;
		}
		return SYNC_STEP_AGAIN;
	case PH_LIST_MERGE:
		if (list_merge(c) < 0)
			return SYNC_STEP_ERROR;
		c->phase = PH_LISTOPS_WAIT;
		return SYNC_STEP_AGAIN;
	case PH_PLAN:
		if (plan_jobs(c) < 0)
			return SYNC_STEP_ERROR;
		c->phase = PH_MBOX_NEXT;
		return SYNC_STEP_AGAIN;
	case PH_MBOX_NEXT: {
		unsigned n = 0;
		while (c->job < c->jobs.count && n++ < c->budget) {
			r = mbox_start(c);
			if (r < 0)
				return SYNC_STEP_ERROR;
			if (r > 0) {
				c->phase = PH_MBOX_WAIT;
				return SYNC_STEP_WAIT;
			}
			c->job++;
			c->job_tries = 0;
		}
		if (c->job == c->jobs.count)
			c->phase = PH_FINISH;
		return SYNC_STEP_AGAIN;
	}
	case PH_SEND:
		if (send_some(c) > 0)
			c->phase = PH_SEND_WAIT;
		return c->phase == PH_ERROR ? SYNC_STEP_ERROR : SYNC_STEP_AGAIN;
	case PH_RESEND:
		r = resend_some(c);
		if (r < 0)
			return SYNC_STEP_ERROR;
		if (r > 0)
			c->phase = PH_RESEND_WAIT;
		return SYNC_STEP_AGAIN;
	case PH_FETCH:
		r = send_fetch(c);
		if (r < 0)
			return SYNC_STEP_ERROR;
		if (r > 0)
			c->phase = PH_FETCH_WAIT;
		return SYNC_STEP_AGAIN;
	case PH_APPLY:
		r = apply_some(c);
		if (r < 0)
			return SYNC_STEP_ERROR;
		if (r == 0)
			return SYNC_STEP_AGAIN;
		if (r == 3) {
			if (++c->late_rounds > 3) {
				cl_fail(c, "mailbox %s does not converge", c->cur.name);
				return SYNC_STEP_ERROR;
			}
			if (send_late(c) < 0)
				return SYNC_STEP_ERROR;
			c->phase = PH_SEND_WAIT;
			return SYNC_STEP_WAIT;
		}
		c->late_rounds = 0;
		if (r == 2) {
			/* Changed meanwhile: sync this mailbox once more. */
			if (++c->job_tries > 3) {
				cl_fail(c, "mailbox %s does not converge", c->cur.name);
				return SYNC_STEP_ERROR;
			}
		} else {
			c->job++;
			c->job_tries = 0;
		}
		c->phase = PH_MBOX_NEXT;
		return SYNC_STEP_AGAIN;
	case PH_FINISH:
		if (last_list_write(c) < 0)
			return SYNC_STEP_ERROR;
		answer_free(c);
		c->phase = PH_DONE;
		return SYNC_STEP_DONE;
	case PH_DONE:
		return SYNC_STEP_DONE;
	case PH_ERROR:
		return SYNC_STEP_ERROR;
	}
	return SYNC_STEP_ERROR;
}

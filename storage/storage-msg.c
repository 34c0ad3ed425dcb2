/* Messages: append (master or replica), copy, flag changes, expunge with
 * tombstones, UID renumbering, lookups and changes since a modseq.
 *
 * Each call is one transaction: the message records, their modseq and GUID
 * index entries, tombstones, text reference counts and the mailbox record
 * (UIDNEXT, HIGHESTMODSEQ, counts, digest) change in one batch. */
#include "storage/storage-private.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/mail-limits.h"
#include "lib/xalloc.h"

static void msg_key(struct stor_key *k, const struct guid *mailbox, uint32_t uid)
{
	stor_key_init(k, STOR_KEY_MSG);
	stor_key_guid(k, mailbox);
	stor_key_u32(k, uid);
}

static void modseq_key(struct stor_key *k, char prefix, const struct guid *mailbox,
		       uint64_t modseq, uint32_t uid)
{
	stor_key_init(k, prefix);
	stor_key_guid(k, mailbox);
	stor_key_u64(k, modseq);
	stor_key_u32(k, uid);
}

static void guid_key(struct stor_key *k, const struct guid *mailbox, const struct guid *guid,
		     uint32_t uid)
{
	stor_key_init(k, STOR_KEY_GUID);
	stor_key_guid(k, mailbox);
	stor_key_guid(k, guid);
	stor_key_u32(k, uid);
}

static void tomb_key(struct stor_key *k, const struct guid *mailbox, uint32_t uid)
{
	stor_key_init(k, STOR_KEY_TOMB);
	stor_key_guid(k, mailbox);
	stor_key_u32(k, uid);
}

static void xor16(unsigned char *dst, const unsigned char *src)
{
	for (int i = 0; i < 16; i++)
		dst[i] ^= src[i];
}

/* Removes (sign < 0) or adds (sign > 0) a message's share of the mailbox's
 * counters and digest. */
static void mailbox_account(struct stor_mailbox *mb, const struct stor_msg *msg, int sign)
{
	unsigned char h[16];
	stor_msg_hash(msg, h);
	xor16(mb->digest, h);
	bool unseen = (msg->flags & STOR_FLAG_SEEN) == 0;
	if (sign > 0) {
		mb->messages++;
		if (unseen)
			mb->unseen++;
	} else {
		mb->messages--;
		if (unseen)
			mb->unseen--;
	}
}

/* Writes the message record and its index entries. */
static void msg_put(struct stor_txn *txn, const struct guid *mailbox, const struct stor_msg *msg)
{
	struct stor_key k;
	struct buf v = BUF_INIT;
	stor_msg_encode(msg, &v);
	msg_key(&k, mailbox, msg->uid);
	stor_batch_put(txn->wb, &k, v.data, v.len);
	buf_free(&v);
	modseq_key(&k, STOR_KEY_MODSEQ, mailbox, msg->modseq, msg->uid);
	stor_batch_put(txn->wb, &k, "", 0);
	guid_key(&k, mailbox, &msg->guid, msg->uid);
	stor_batch_put(txn->wb, &k, "", 0);
}

/* Deletes the message record and its index entries. */
static void msg_del(struct stor_txn *txn, const struct guid *mailbox, const struct stor_msg *msg)
{
	struct stor_key k;
	msg_key(&k, mailbox, msg->uid);
	stor_batch_del(txn->wb, &k);
	modseq_key(&k, STOR_KEY_MODSEQ, mailbox, msg->modseq, msg->uid);
	stor_batch_del(txn->wb, &k);
	guid_key(&k, mailbox, &msg->guid, msg->uid);
	stor_batch_del(txn->wb, &k);
}

static void tomb_put(struct stor_txn *txn, const struct guid *mailbox,
		     const struct stor_tombstone *t)
{
	struct stor_key k;
	unsigned char v[GUID_SIZE + 9];
	memcpy(v, t->guid.b, GUID_SIZE);
	for (int i = 0; i < 8; i++)
		v[GUID_SIZE + i] = (unsigned char)(t->modseq >> (56 - 8 * i));
	v[GUID_SIZE + 8] = t->user ? 1 : 0;
	tomb_key(&k, mailbox, t->uid);
	stor_batch_put(txn->wb, &k, v, sizeof(v));
	modseq_key(&k, STOR_KEY_TOMB_MODSEQ, mailbox, t->modseq, t->uid);
	stor_batch_put(txn->wb, &k, "", 0);
}

static int tomb_decode(uint32_t uid, const char *v, size_t len, struct stor_tombstone *t_r)
{
	/* A record without the provenance byte comes from a store written
	 * before it existed: counted as the engine's, so an old tombstone
	 * never removes a copy under another UID (SPEC.md 10.3). */
	if (len != GUID_SIZE + 8 && len != GUID_SIZE + 9)
		return -1;
	if (len == GUID_SIZE + 9 && (unsigned char)v[GUID_SIZE + 8] > 1)
		return -1;
	t_r->uid = uid;
	memcpy(t_r->guid.b, v, GUID_SIZE);
	t_r->modseq = stor_be64((const unsigned char *)v + GUID_SIZE);
	t_r->user = len == GUID_SIZE + 9 && v[GUID_SIZE + 8] == 1;
	return t_r->modseq == 0 ? -1 : 0;
}

/* The tombstone at uid: 1, 0, -1. */
static int tomb_get(struct stor_db *db, const struct guid *mailbox, uint32_t uid,
		    struct stor_tombstone *t_r, const char **error_r)
{
	struct stor_key k;
	char *v;
	size_t len;
	tomb_key(&k, mailbox, uid);
	int ret = stor_db_get(db, &k, &v, &len, error_r);
	if (ret <= 0)
		return ret;
	ret = tomb_decode(uid, v, len, t_r);
	free(v);
	return ret < 0 ? stor_err_corrupt(db, error_r, "tombstone") : 1;
}

int stor_msg_get(struct stor_db *db, const struct guid *mailbox, uint32_t uid,
		 struct stor_msg *msg_r, const char **error_r)
{
	struct stor_key k;
	char *v;
	size_t len;
	if (uid == 0)
		return 0;
	msg_key(&k, mailbox, uid);
	int ret = stor_db_get(db, &k, &v, &len, error_r);
	if (ret <= 0)
		return ret;
	struct stor_msg msg;
	ret = stor_msg_decode(uid, v, len, &msg);
	free(v);
	if (ret < 0)
		return stor_err_corrupt(db, error_r, "message");
	if (msg_r != NULL)
		*msg_r = msg;
	else
		stor_msg_free(&msg);
	return 1;
}

static int uid_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* The UIDs sorted, without duplicates or 0 (a new array). */
static uint32_t *uids_unique(const uint32_t *uids, size_t count, size_t *count_r)
{
	uint32_t *u = xmalloc(count * sizeof(uint32_t) + 1);
	size_t n = 0;
	if (count > 0) {
		memcpy(u, uids, count * sizeof(uint32_t));
		qsort(u, count, sizeof(uint32_t), uid_cmp);
	}
	for (size_t i = 0; i < count; i++) {
		if (u[i] != 0 && (n == 0 || u[n - 1] != u[i]))
			u[n++] = u[i];
	}
	*count_r = n;
	return u;
}

static int mailbox_missing(struct stor_db *db, const char **error_r)
{
	return stor_err(db, error_r, "mailbox does not exist");
}

/* A call that changes messages refuses a given modseq out of range, and
 * one to assign when the mailbox has used them all, before it changes
 * anything: the store never holds a modseq past MAIL_MODSEQ_MAX. */
static int modseq_room(struct stor_db *db, const struct stor_mailbox *mb, uint64_t given,
		       const char **error_r)
{
	if (!mail_modseq_valid(given))
		return stor_err(db, error_r, "modseq %llu is out of range", (unsigned long long)given);
	if (given == 0 && mb->highestmodseq >= MAIL_MODSEQ_MAX)
		return stor_err_kind(db, STOR_ERROR_LIMIT, error_r, "mailbox has run out of modseqs");
	return 0;
}

/* The next modseq of a call: the given one, or one above the mailbox's
 * highest, assigned once per call (modseq_room() checked it first). */
static uint64_t call_modseq(struct stor_mailbox *mb, uint64_t given, uint64_t *assigned)
{
	if (given != 0) {
		if (given > mb->highestmodseq)
			mb->highestmodseq = given;
		return given;
	}
	if (*assigned == 0)
		*assigned = ++mb->highestmodseq;
	return *assigned;
}

/* ---- Flag stamps (storage.h struct stor_stamp) ---- */

static struct stor_stamp *stamp_find(stor_stamp_list *l, const char *name)
{
	for (size_t i = 0; i < l->count; i++) {
		if (strcasecmp(l->items[i].name, name) == 0)
			return &l->items[i];
	}
	return NULL;
}

static void stamp_set(stor_stamp_list *l, const char *name, uint64_t modseq, int64_t time_ms)
{
	struct stor_stamp *st = stamp_find(l, name);
	if (st != NULL) {
		st->modseq = modseq;
		st->time_ms = time_ms;
		return;
	}
	struct stor_stamp n = { xstrdup(name), modseq, time_ms };
	ARRAY_PUSH(l, n);
}

static bool kw_held(const stor_string_list *kws, const char *name)
{
	for (size_t i = 0; i < kws->count; i++) {
		if (strcasecmp(kws->items[i], name) == 0)
			return true;
	}
	return false;
}

static bool is_system_flag(const char *name)
{
	return name[0] == '\\';
}

/* Keeps the list within STOR_MAX_STAMPS: the oldest stamps of keywords the
 * message no longer holds go first (set flags always keep theirs). */
static void stamps_bound(struct stor_msg *msg)
{
	while (msg->stamps.count > STOR_MAX_STAMPS) {
		size_t victim = SIZE_MAX;
		for (size_t i = 0; i < msg->stamps.count; i++) {
			const struct stor_stamp *st = &msg->stamps.items[i];
			if (is_system_flag(st->name) || kw_held(&msg->keywords, st->name))
				continue;
			if (victim == SIZE_MAX || st->modseq < msg->stamps.items[victim].modseq)
				victim = i;
		}
		if (victim == SIZE_MAX)
			return;
		free(msg->stamps.items[victim].name);
		msg->stamps.items[victim] = msg->stamps.items[msg->stamps.count - 1];
		msg->stamps.count--;
	}
}

/* One flag changed here now: its stamp gets the change's modseq and time.
 * time_ms 0 is a change made on this node: the wall clock, but always
 * after the flag's previous change, so that a change made after another
 * one (seen here) is later even when the node that made the earlier one
 * had a clock ahead of ours; only changes made apart compare by clocks. */
static void stamp_change(struct stor_msg *msg, const char *name, int64_t time_ms, int64_t now_ms)
{
	if (time_ms == 0) {
		uint64_t ms;
		int64_t prev;
		stor_msg_stamp(msg, name, &ms, &prev);
		time_ms = prev < now_ms ? now_ms : prev < INT64_MAX ? prev + 1 : INT64_MAX;
	}
	stamp_set(&msg->stamps, name, msg->modseq, time_ms);
}

static bool given_names(const struct stor_stamp *given, size_t count, const char *name)
{
	for (size_t i = 0; i < count; i++) {
		if (strcasecmp(given[i].name, name) == 0)
			return true;
	}
	return false;
}

/* Stamps every flag whose value differs between (oflags, okw) and msg's
 * with (msg->modseq, time_ms or now); then gives the flags named in given
 * their time (a merge's decision, or the change a peer sends), keeping the
 * modseq of those that did not change.  given's own modseqs are the
 * sender's and are not kept. */
static void stamps_update(struct stor_msg *msg, uint32_t oflags, const stor_string_list *okw,
			  int64_t time_ms, int64_t now_ms, const struct stor_stamp *given,
			  size_t given_count)
{
	for (uint32_t bit = 1; bit <= STOR_FLAG_DRAFT; bit <<= 1) {
		const char *name = stor_flag_name((enum stor_flag)bit);
		if (((oflags ^ msg->flags) & bit) != 0 && !given_names(given, given_count, name))
			stamp_change(msg, name, time_ms, now_ms);
	}
	for (size_t i = 0; i < okw->count; i++) {
		if (!kw_held(&msg->keywords, okw->items[i]) &&
		    !given_names(given, given_count, okw->items[i]))
			stamp_change(msg, okw->items[i], time_ms, now_ms);
	}
	for (size_t i = 0; i < msg->keywords.count; i++) {
		if (!kw_held(okw, msg->keywords.items[i]) &&
		    !given_names(given, given_count, msg->keywords.items[i]))
			stamp_change(msg, msg->keywords.items[i], time_ms, now_ms);
	}
	for (size_t i = 0; i < given_count; i++) {
		const char *name = given[i].name;
		if (strcmp(name, STOR_STAMP_ALL) == 0)
			continue;
		bool changed;
		uint32_t bit = 0;
		for (uint32_t b = 1; b <= STOR_FLAG_DRAFT; b <<= 1) {
			if (strcasecmp(name, stor_flag_name((enum stor_flag)b)) == 0)
				bit = b;
		}
		if (bit != 0)
			changed = ((oflags ^ msg->flags) & bit) != 0;
		else
			changed = kw_held(okw, name) != kw_held(&msg->keywords, name);
		if (changed) {
			stamp_set(&msg->stamps, name, msg->modseq, given[i].time_ms);
			continue;
		}
		/* The same value here.  A later time is a user's action this
		 * copy has not seen (a STORE that changed no value, SPEC.md
		 * 10.2): it counts as a change of this modseq, so a sync with a
		 * third node still sees it.  Otherwise only the time is kept. */
		uint64_t lm;
		int64_t lt;
		stor_msg_stamp(msg, name, &lm, &lt);
		struct stor_stamp *st = stamp_find(&msg->stamps, name);
		if (given[i].time_ms > lt)
			stamp_set(&msg->stamps, name, msg->modseq, given[i].time_ms);
		else if (st != NULL)
			st->time_ms = given[i].time_ms;
	}
	stamps_bound(msg);
}

/* A user's STORE acts on every flag it names, also on those whose value
 * stays (SPEC.md 10.2): +FLAGS/-FLAGS the listed ones, FLAGS every system
 * flag and every keyword of the old or the new set.  Each gets this
 * change's stamp unless the value change just gave it one. */
static bool store_names_flags(const struct stor_store *req, const stor_string_list *req_kw)
{
	return req->op == STOR_FLAGS_REPLACE || (req->flags & STOR_FLAGS_ALL) != 0 ||
	       req_kw->count > 0;
}

static void stamp_named(struct stor_msg *msg, const struct stor_store *req,
			const stor_string_list *req_kw, const stor_string_list *okw,
			int64_t now_ms)
{
	uint32_t bits = req->op == STOR_FLAGS_REPLACE ? STOR_FLAGS_ALL & ~req->keep_flags : req->flags;
	for (uint32_t bit = 1; bit <= STOR_FLAG_DRAFT; bit <<= 1) {
		if ((bits & bit) == 0)
			continue;
		const char *name = stor_flag_name((enum stor_flag)bit);
		uint64_t ms;
		int64_t t;
		stor_msg_stamp(msg, name, &ms, &t);
		if (ms != msg->modseq)
			stamp_change(msg, name, req->time_ms, now_ms);
	}
	const stor_string_list *lists[2] = { req_kw, req->op == STOR_FLAGS_REPLACE ? okw : NULL };
	for (size_t l = 0; l < 2; l++) {
		for (size_t i = 0; lists[l] != NULL && i < lists[l]->count; i++) {
			const char *name = lists[l]->items[i];
			uint64_t ms;
			int64_t t;
			stor_msg_stamp(msg, name, &ms, &t);
			if (ms != msg->modseq)
				stamp_change(msg, name, req->time_ms, now_ms);
		}
	}
	stamps_bound(msg);
}

struct append_args {
	uint32_t uid;
	uint64_t modseq;
	struct guid guid;
	bool guid_generated;        /* just made up: no text can exist yet */
	uint32_t flags;
	stor_string_list keywords;  /* normalised, owned by the caller */
	int64_t internaldate;
	int32_t internaldate_tz;
	const void *text;
	size_t text_len;
	bool stamps_given;
	const struct stor_stamp *stamps;
	size_t stamp_count;
};

/* Adds a message to txn.  Returns 1 when added, 0 when it was already
 * there (idempotent replay; uid_r and modseq_r get the existing values), -1
 * on error. */
static int append_txn(struct stor_txn *txn, const struct guid *mailbox, const struct append_args *a,
		      uint32_t *uid_r, uint64_t *modseq_r, const char **error_r)
{
	struct stor_db *db = txn->db;
	struct stor_txn_mailbox *tm;
	struct stor_msg existing;
	struct stor_tombstone tomb;

	int ret = stor_txn_mailbox(txn, mailbox, &tm, error_r);
	if (ret <= 0)
		return ret < 0 ? -1 : mailbox_missing(db, error_r);
	struct stor_mailbox *mb = &tm->mb;

	uint32_t uid = a->uid;
	if (uid == 0) {
		if (mb->uidnext > MAIL_UID_ASSIGN_MAX)
			return stor_err_kind(db, STOR_ERROR_LIMIT, error_r,
					     "mailbox has run out of UIDs");
		uid = mb->uidnext;
	} else if (!mail_uid_valid(uid)) {
		return stor_err(db, error_r, "UID %u is out of range", uid);
	} else {
		ret = stor_msg_get(db, mailbox, uid, &existing, error_r);
		if (ret < 0)
			return -1;
		if (ret > 0) {
			bool same = guid_cmp(&existing.guid, &a->guid) == 0;
			uint64_t modseq = existing.modseq;
			stor_msg_free(&existing);
			if (!same)
				return stor_err(db, error_r, "UID %u is already used by another message",
						uid);
			if (uid_r != NULL)
				*uid_r = uid;
			if (modseq_r != NULL)
				*modseq_r = modseq;
			return 0;
		}
		ret = tomb_get(db, mailbox, uid, &tomb, error_r);
		if (ret < 0)
			return -1;
		if (ret > 0) {
			if (guid_cmp(&tomb.guid, &a->guid) != 0)
				return stor_err(db, error_r,
						"UID %u was used by an expunged message", uid);
			/* A late replay of an append that was expunged since:
			 * don't resurrect it. */
			if (uid_r != NULL)
				*uid_r = uid;
			if (modseq_r != NULL)
				*modseq_r = tomb.modseq;
			return 0;
		}
		/* A user expunged this GUID from the mailbox (under any
		 * UID, maybe on another node) and no copy of it is left
		 * here: a copy that reaches a replica now is one the
		 * expunge missed, and stays out (SPEC.md 10.3 "GUID
		 * tombstones").  A master storing a GUID (uid 0) is a new
		 * message and clears it below. */
		uint64_t gone_at;
		uint32_t held_at;
		ret = a->guid_generated ? 0 : stor_guid_tomb_get(db, mailbox, &a->guid, &gone_at,
								error_r);
		if (ret > 0) {
			ret = stor_msg_find_guid(db, mailbox, &a->guid, &held_at, error_r);
			ret = ret < 0 ? -1 : ret == 0;
		}
		if (ret < 0)
			return -1;
		if (ret > 0) {
			if (uid_r != NULL)
				*uid_r = uid;
			if (modseq_r != NULL)
				*modseq_r = gone_at;
			return 0;
		}
	}

	if (modseq_room(db, mb, a->modseq, error_r) < 0 ||
	    (!a->guid_generated && stor_pseen_enter_txn(txn, tm, mailbox, &a->guid, error_r) < 0))
		return -1;
	struct stor_text_rec rec;
	ret = a->guid_generated ? 0 : stor_text_rec_get(db, &a->guid, &rec, error_r);
	if (ret < 0)
		return -1;
	uint64_t size;
	if (ret > 0) {
		/* The node already holds this text (a copy, or streamed in
		 * by stor_text_*): share it. */
		size = rec.size;
	} else if (a->text != NULL) {
		if (a->text_len > db->max_message_size)
			return stor_err_kind(db, STOR_ERROR_TOOBIG, error_r,
					     "message too large (%zu bytes, limit %llu)", a->text_len,
					     (unsigned long long)db->max_message_size);
		if (stor_text_put(db, txn, &a->guid, a->text, a->text_len, error_r) < 0)
			return -1;
		size = a->text_len;
	} else {
		char hex[GUID_HEX_SIZE];
		guid_to_hex(&a->guid, hex);
		return stor_err(db, error_r, "text of message %s is not in the store", hex);
	}
	stor_txn_text_ref(txn, &a->guid, 1);

	uint64_t assigned = 0;
	struct stor_msg msg;
	memset(&msg, 0, sizeof(msg));
	msg.uid = uid;
	msg.guid = a->guid;
	msg.modseq = call_modseq(mb, a->modseq, &assigned);
	msg.flags = a->flags & STOR_FLAGS_ALL;
	msg.keywords = a->keywords;
	msg.internaldate = a->internaldate;
	msg.internaldate_tz = a->internaldate_tz;
	msg.size = size;
	if (a->stamps_given) {
		/* The sender's view of when each flag changed; here they all
		 * changed with this message. */
		for (size_t i = 0; i < a->stamp_count; i++)
			stamp_set(&msg.stamps, a->stamps[i].name, msg.modseq, a->stamps[i].time_ms);
		stamps_bound(&msg);
	} else {
		stor_string_list none = ARRAY_INIT;
		stamps_update(&msg, 0, &none, 0, stor_now_ms(), NULL, 0);
	}
	msg_put(txn, mailbox, &msg);
	stor_guid_tomb_clear_txn(txn, mailbox, &msg.guid);
	mailbox_account(mb, &msg, 1);
	stor_stamp_list_free(&msg.stamps);
	if (uid >= mb->uidnext)
		mb->uidnext = uid + 1;
	tm->dirty = true;
	if (uid_r != NULL)
		*uid_r = uid;
	if (modseq_r != NULL)
		*modseq_r = msg.modseq;
	return 1;
}

int stor_msg_append(struct stor_db *db, const struct guid *mailbox,
		    const struct stor_append *req, uint32_t *uid_r, uint64_t *modseq_r,
		    const char **error_r)
{
	struct append_args a;
	struct stor_txn txn;
	memset(&a, 0, sizeof(a));
	if (req->text != NULL && req->text_len > db->max_message_size)
		return stor_err_kind(db, STOR_ERROR_TOOBIG, error_r,
				     "message too large (%zu bytes, limit %llu)", req->text_len,
				     (unsigned long long)db->max_message_size);
	if (req->guid != NULL && guid_is_zero(req->guid))
		return stor_err(db, error_r, "message GUID is zero");
	if (stor_keywords_normalize(db, req->keywords, req->keyword_count, &a.keywords,
				    error_r) < 0)
		return -1;
	a.uid = req->uid;
	a.modseq = req->modseq;
	if (req->guid != NULL)
		a.guid = *req->guid;
	else {
		guid_generate(&a.guid);
		a.guid_generated = true;
	}
	a.flags = req->flags;
	a.internaldate = req->internaldate;
	a.internaldate_tz = req->internaldate_tz;
	a.text = req->text;
	a.text_len = req->text_len;
	if (req->stamps_given) {
		if (req->stamp_count > STOR_MAX_STAMPS) {
			stor_string_list_free(&a.keywords);
			return stor_err(db, error_r, "too many flag stamps");
		}
		for (size_t i = 0; i < req->stamp_count; i++) {
			size_t n = strlen(req->stamps[i].name);
			if (n == 0 || n > STOR_MAX_KEYWORD_LEN || req->stamps[i].time_ms < 0) {
				stor_string_list_free(&a.keywords);
				return stor_err(db, error_r, "invalid flag stamp");
			}
		}
		a.stamps_given = true;
		a.stamps = req->stamps;
		a.stamp_count = req->stamp_count;
	}

	stor_txn_begin(db, &txn);
	int ret = append_txn(&txn, mailbox, &a, uid_r, modseq_r, error_r);
	if (ret > 0)
		ret = stor_txn_commit(&txn, error_r);
	else
		stor_txn_free(&txn);
	stor_string_list_free(&a.keywords);
	return ret < 0 ? -1 : 0;
}

int stor_msg_copy(struct stor_db *db, const struct guid *src_mailbox, uint32_t src_uid,
		  const struct guid *dst_mailbox, uint32_t dst_uid, uint64_t dst_modseq,
		  uint32_t *uid_r, uint64_t *modseq_r, const char **error_r)
{
	struct stor_msg src;
	struct stor_txn txn;
	int ret = stor_msg_get(db, src_mailbox, src_uid, &src, error_r);
	if (ret <= 0)
		return ret < 0 ? -1 : stor_err(db, error_r, "source message does not exist");
	struct append_args a;
	memset(&a, 0, sizeof(a));
	a.uid = dst_uid;
	a.modseq = dst_modseq;
	a.guid = src.guid;
	a.flags = src.flags;
	a.keywords = src.keywords;
	a.internaldate = src.internaldate;
	a.internaldate_tz = src.internaldate_tz;
	stor_txn_begin(db, &txn);
	ret = append_txn(&txn, dst_mailbox, &a, uid_r, modseq_r, error_r);
	if (ret > 0)
		ret = stor_txn_commit(&txn, error_r);
	else
		stor_txn_free(&txn);
	stor_msg_free(&src);
	return ret < 0 ? -1 : 0;
}

int stor_msg_list_range(struct stor_db *db, const struct guid *mailbox, uint32_t first,
			uint32_t last, stor_msg_list *list_r, const char **error_r)
{
	struct stor_key prefix, start;
	const unsigned char *key;
	size_t klen;
	stor_msg_list list = ARRAY_INIT;
	stor_key_init(&prefix, STOR_KEY_MSG);
	stor_key_guid(&prefix, mailbox);
	msg_key(&start, mailbox, first);
	leveldb_iterator_t *it = stor_iter_seek(db, &start);
	int ret = 0;
	while (first <= last && stor_iter_in(it, &prefix, &key, &klen)) {
		if (klen != prefix.len + 4) {
			ret = stor_err_corrupt(db, error_r, "message key");
			break;
		}
		uint32_t uid = stor_be32(key + prefix.len);
		if (uid > last)
			break;
		size_t vlen;
		const char *val = leveldb_iter_value(it, &vlen);
		struct stor_msg msg;
		if (stor_msg_decode(uid, val, vlen, &msg) < 0) {
			ret = stor_err_corrupt(db, error_r, "message");
			break;
		}
		ARRAY_PUSH(&list, msg);
		/* Stepping on would pass the markers of expunged UIDs above. */
		if (uid == last)
			break;
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	if (ret < 0) {
		stor_msg_list_free(&list);
		return -1;
	}
	*list_r = list;
	return 0;
}

int stor_msg_find_guid(struct stor_db *db, const struct guid *mailbox, const struct guid *guid,
		       uint32_t *uid_r, const char **error_r)
{
	struct stor_key prefix;
	const unsigned char *key;
	size_t klen;
	stor_key_init(&prefix, STOR_KEY_GUID);
	stor_key_guid(&prefix, mailbox);
	stor_key_guid(&prefix, guid);
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	int ret = 0;
	if (stor_iter_in(it, &prefix, &key, &klen)) {
		if (klen != prefix.len + 4) {
			ret = stor_err_corrupt(db, error_r, "GUID index");
		} else {
			if (uid_r != NULL)
				*uid_r = stor_be32(key + prefix.len);
			ret = 1;
		}
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		return -1;
	return ret;
}

/* The bit of a system flag's name, 0 for a keyword. */
static uint32_t flag_bit(const char *name)
{
	for (uint32_t bit = 1; bit <= STOR_FLAG_DRAFT; bit <<= 1) {
		if (strcasecmp(name, stor_flag_name((enum stor_flag)bit)) == 0)
			return bit;
	}
	return 0;
}

static bool msg_has_flag(const struct stor_msg *m, const char *name)
{
	uint32_t bit = flag_bit(name);
	return bit != 0 ? (m->flags & bit) != 0 : kw_held(&m->keywords, name);
}

static void name_add(stor_string_list *names, const char *name)
{
	if (strcmp(name, STOR_STAMP_ALL) != 0 && !kw_held(names, name))
		ARRAY_PUSH(names, xstrdup(name));
}

/* The copies at lower UIDs that dedupe expunges may hold flag changes the
 * kept copy lacks (each of two syncs moved the message and a user changed
 * it at one of its UIDs meanwhile): per flag, the value of the latest
 * change among the copies (by its time, then its modseq) goes to the kept
 * one, with that change's time, as the three-way merge decides a flag
 * changed on both sides (SPEC.md 10.3). */
static int dedupe_merge_flags(struct stor_db *db, const struct guid *mailbox, uint32_t keep,
			      const uint32_t *lower, size_t n, const char **error_r)
{
	struct stor_msg kept;
	int r = stor_msg_get(db, mailbox, keep, &kept, error_r);
	if (r <= 0)
		return r;
	struct stor_msg *copies = xcalloc(n, sizeof(*copies));
	size_t have = 0;
	stor_string_list names = ARRAY_INIT;
	for (uint32_t bit = 1; bit <= STOR_FLAG_DRAFT; bit <<= 1)
		name_add(&names, stor_flag_name((enum stor_flag)bit));
	for (size_t i = 0; i < n && r >= 0; i++) {
		r = stor_msg_get(db, mailbox, lower[i], &copies[have], error_r);
		if (r > 0)
			have++;
	}
	for (size_t i = 0; i <= have && r >= 0; i++) {
		const struct stor_msg *m = i < have ? &copies[i] : &kept;
		for (size_t k = 0; k < m->keywords.count; k++)
			name_add(&names, m->keywords.items[k]);
		for (size_t k = 0; k < m->stamps.count; k++)
			name_add(&names, m->stamps.items[k].name);
	}
	stor_string_list set = ARRAY_INIT, clear = ARRAY_INIT;
	ARRAY(struct stor_stamp) set_st = ARRAY_INIT, clear_st = ARRAY_INIT;
	uint32_t set_bits = 0, clear_bits = 0;
	for (size_t j = 0; j < names.count && r >= 0; j++) {
		const char *name = names.items[j];
		uint64_t bm;
		int64_t bt;
		stor_msg_stamp(&kept, name, &bm, &bt);
		bool bv = msg_has_flag(&kept, name);
		for (size_t i = 0; i < have; i++) {
			uint64_t cm;
			int64_t ct;
			stor_msg_stamp(&copies[i], name, &cm, &ct);
			if (ct > bt || (ct == bt && cm > bm)) {
				bt = ct;
				bm = cm;
				bv = msg_has_flag(&copies[i], name);
			}
		}
		if (bv == msg_has_flag(&kept, name))
			continue;
		uint32_t bit = flag_bit(name);
		struct stor_stamp st = { (char *)name, 0, bt };
		if (bv) {
			set_bits |= bit;
			if (bit == 0)
				ARRAY_PUSH(&set, xstrdup(name));
			ARRAY_PUSH(&set_st, st);
		} else {
			clear_bits |= bit;
			if (bit == 0)
				ARRAY_PUSH(&clear, xstrdup(name));
			ARRAY_PUSH(&clear_st, st);
		}
	}
	for (int pass = 0; pass < 2 && r >= 0; pass++) {
		bool add = pass == 0;
		if ((add ? set_st.count : clear_st.count) == 0)
			continue;
		struct stor_store req = {
			.op = add ? STOR_FLAGS_ADD : STOR_FLAGS_REMOVE,
			.flags = add ? set_bits : clear_bits,
			.keywords = (const char *const *)(add ? set.items : clear.items),
			.keyword_count = add ? set.count : clear.count,
			.stamps = add ? set_st.items : clear_st.items,
			.stamp_count = add ? set_st.count : clear_st.count,
		};
		r = stor_msg_store(db, mailbox, &keep, 1, &req, NULL, NULL, error_r);
	}
	stor_string_list_free(&set);
	stor_string_list_free(&clear);
	ARRAY_FREE(&set_st);
	ARRAY_FREE(&clear_st);
	stor_string_list_free(&names);
	for (size_t i = 0; i < have; i++)
		stor_msg_free(&copies[i]);
	free(copies);
	stor_msg_free(&kept);
	return r < 0 ? -1 : 0;
}

int stor_msg_dedupe(struct stor_db *db, const struct guid *mailbox, stor_uid_list *expunged_r,
		    const char **error_r)
{
	struct stor_key prefix;
	const unsigned char *key;
	size_t klen;
	stor_uid_list lower = ARRAY_INIT, run_keep = ARRAY_INIT;
	stor_key_init(&prefix, STOR_KEY_GUID);
	stor_key_guid(&prefix, mailbox);
	/* The index is sorted by (GUID, UID): within a run of one GUID every
	 * entry but the last names a lower UID. */
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	unsigned char prev[GUID_SIZE];
	uint32_t prev_uid = 0;
	bool have_prev = false;
	int ret = 0;
	while (stor_iter_in(it, &prefix, &key, &klen)) {
		if (klen != prefix.len + GUID_SIZE + 4) {
			ret = stor_err_corrupt(db, error_r, "GUID index");
			break;
		}
		const unsigned char *g = key + prefix.len;
		uint32_t uid = stor_be32(g + GUID_SIZE);
		if (have_prev && memcmp(prev, g, GUID_SIZE) == 0) {
			ARRAY_PUSH(&lower, prev_uid);
			ARRAY_PUSH(&run_keep, uid);
		}
		memcpy(prev, g, GUID_SIZE);
		prev_uid = uid;
		have_prev = true;
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	/* lower[i] goes, run_keep[i] is a higher UID of its GUID; the last
	 * entry of each run is the UID kept. */
	for (size_t i = 0; ret == 0 && i < lower.count;) {
		size_t j = i;
		while (j + 1 < lower.count && run_keep.items[j] == lower.items[j + 1])
			j++;
		ret = dedupe_merge_flags(db, mailbox, run_keep.items[j], lower.items + i, j - i + 1,
					 error_r);
		i = j + 1;
	}
	if (ret == 0 && lower.count > 0)
		ret = stor_msg_expunge_kind(db, mailbox, lower.items, lower.count, 0, false,
					    expunged_r, error_r);
	ARRAY_FREE(&lower);
	ARRAY_FREE(&run_keep);
	return ret;
}

static bool keywords_equal(const stor_string_list *a, const stor_string_list *b)
{
	if (a->count != b->count)
		return false;
	for (size_t i = 0; i < a->count; i++) {
		if (strcmp(a->items[i], b->items[i]) != 0)
			return false;
	}
	return true;
}

/* The new keyword list of a message under the operation. */
static int keywords_apply(struct stor_db *db, const stor_string_list *cur, enum stor_flag_op op,
			  const stor_string_list *req, stor_string_list *out, const char **error_r)
{
	ARRAY(const char *) all = ARRAY_INIT;
	switch (op) {
	case STOR_FLAGS_REPLACE:
		for (size_t i = 0; i < req->count; i++)
			ARRAY_PUSH(&all, req->items[i]);
		break;
	case STOR_FLAGS_ADD:
		/* Existing spellings come first, so they win. */
		for (size_t i = 0; i < cur->count; i++)
			ARRAY_PUSH(&all, cur->items[i]);
		for (size_t i = 0; i < req->count; i++)
			ARRAY_PUSH(&all, req->items[i]);
		break;
	case STOR_FLAGS_REMOVE:
		for (size_t i = 0; i < cur->count; i++) {
			bool removed = false;
			for (size_t j = 0; j < req->count && !removed; j++)
				removed = strcasecmp(cur->items[i], req->items[j]) == 0;
			if (!removed)
				ARRAY_PUSH(&all, cur->items[i]);
		}
		break;
	}
	int ret = stor_keywords_normalize(db, all.items, all.count, out, error_r);
	ARRAY_FREE(&all);
	return ret;
}

typedef ARRAY(struct stor_stamp) stamp_refs; /* names borrowed */

static void given_drop(stamp_refs *given, const char *name)
{
	for (size_t i = 0; i < given->count; i++) {
		if (strcasecmp(given->items[i].name, name) == 0) {
			given->items[i] = given->items[given->count - 1];
			given->count--;
			return;
		}
	}
}

static bool local_is_later(const struct stor_msg *msg, const stamp_refs *given, const char *name)
{
	uint64_t lm;
	int64_t lt;
	stor_msg_stamp(msg, name, &lm, &lt);
	const struct stor_stamp *all = NULL;
	int64_t gt = 0;
	bool found = false;
	for (size_t i = 0; i < given->count && !found; i++) {
		if (strcasecmp(given->items[i].name, name) == 0) {
			gt = given->items[i].time_ms;
			found = true;
		} else if (strcmp(given->items[i].name, STOR_STAMP_ALL) == 0) {
			all = &given->items[i];
		}
	}
	if (!found && all != NULL)
		gt = all->time_ms;
	return lt > gt;
}

/* A replica applying a peer's whole flag state (storage.h
 * keep_later_local): a flag whose value here differs and whose change here
 * is later than the peer's keeps its value and stamp. */
static void keep_later_local(const struct stor_msg *msg, uint32_t *nflags, stor_string_list *nkw,
			     stamp_refs *given)
{
	for (uint32_t bit = 1; bit <= STOR_FLAG_DRAFT; bit <<= 1) {
		const char *name = stor_flag_name((enum stor_flag)bit);
		if (((msg->flags ^ *nflags) & bit) != 0 && local_is_later(msg, given, name)) {
			*nflags = (*nflags & ~bit) | (msg->flags & bit);
			given_drop(given, name);
		}
	}
	for (size_t i = 0; i < nkw->count;) {
		if (!kw_held(&msg->keywords, nkw->items[i]) &&
		    local_is_later(msg, given, nkw->items[i])) {
			given_drop(given, nkw->items[i]);
			free(nkw->items[i]);
			nkw->items[i] = nkw->items[nkw->count - 1];
			nkw->count--;
			continue;
		}
		i++;
	}
	for (size_t i = 0; i < msg->keywords.count; i++) {
		const char *kw = msg->keywords.items[i];
		if (!kw_held(nkw, kw) && local_is_later(msg, given, kw) &&
		    nkw->count < STOR_MAX_KEYWORDS) {
			given_drop(given, kw);
			ARRAY_PUSH(nkw, xstrdup(kw));
		}
	}
	if (nkw->count > 1)
		qsort(nkw->items, nkw->count, sizeof(nkw->items[0]), stor_kw_cmp);
}

int stor_msg_store(struct stor_db *db, const struct guid *mailbox, const uint32_t *uids,
		   size_t uid_count, const struct stor_store *req, stor_msg_list *changed_r,
		   stor_uid_list *failed_r, const char **error_r)
{
	struct stor_txn txn;
	struct stor_txn_mailbox *tm;
	stor_string_list req_kw;
	stor_msg_list changed = ARRAY_INIT;
	stor_uid_list failed = ARRAY_INIT;

	if (req->op != STOR_FLAGS_REPLACE && req->op != STOR_FLAGS_ADD &&
	    req->op != STOR_FLAGS_REMOVE)
		return stor_err(db, error_r, "invalid flag operation");
	if (stor_keywords_normalize(db, req->keywords, req->keyword_count, &req_kw, error_r) < 0)
		return -1;
	size_t nuids;
	uint32_t *sorted = uids_unique(uids, uid_count, &nuids);
	stor_txn_begin(db, &txn);
	int ret = stor_txn_mailbox(&txn, mailbox, &tm, error_r);
	if (ret <= 0) {
		if (ret == 0)
			mailbox_missing(db, error_r);
		ret = -1;
		goto cleanup;
	}
	ret = modseq_room(db, &tm->mb, req->modseq, error_r);
	if (ret < 0)
		goto cleanup;
	uint64_t assigned = 0;
	uint32_t rflags = req->flags & STOR_FLAGS_ALL;
	bool names_flags = store_names_flags(req, &req_kw);
	int64_t now_ms = stor_now_ms();
	for (size_t i = 0; i < nuids; i++) {
		struct stor_msg msg;
		int r = stor_msg_get(db, mailbox, sorted[i], &msg, error_r);
		if (r < 0) {
			ret = -1;
			goto cleanup;
		}
		if (r == 0)
			continue;
		if (req->unchangedsince != 0 && msg.modseq > req->unchangedsince) {
			ARRAY_PUSH(&failed, msg.uid);
			stor_msg_free(&msg);
			continue;
		}
		if (req->modseq != 0 && (req->modseq < msg.modseq ||
					 (req->modseq == msg.modseq && !req->same_modseq))) {
			/* An older change never overwrites a newer one. */
			stor_msg_free(&msg);
			continue;
		}
		uint32_t nflags = msg.flags;
		switch (req->op) {
		case STOR_FLAGS_REPLACE:
			nflags = (rflags & ~req->keep_flags) | (msg.flags & req->keep_flags);
			break;
		case STOR_FLAGS_ADD: nflags |= rflags; break;
		case STOR_FLAGS_REMOVE: nflags &= ~rflags; break;
		}
		stor_string_list nkw;
		if (keywords_apply(db, &msg.keywords, req->op, &req_kw, &nkw, error_r) < 0) {
			stor_msg_free(&msg);
			ret = -1;
			goto cleanup;
		}
		/* The given stamps, less those of flags kept as they are here. */
		stamp_refs given = ARRAY_INIT;
		for (size_t g = 0; g < req->stamp_count; g++)
			ARRAY_PUSH(&given, req->stamps[g]);
		if (req->keep_later_local)
			keep_later_local(&msg, &nflags, &nkw, &given);
		/* A change made here (modseq 0) that names no flag changes
		 * nothing and keeps the modseq; one that names a flag is a
		 * change of that flag even when its value stays (SPEC.md
		 * 10.2): it needs a modseq so that replication and syncs see
		 * it.  A replica adopts the master's newer modseq anyway, so
		 * that modseqs converge. */
		if (nflags == msg.flags && keywords_equal(&nkw, &msg.keywords) &&
		    req->modseq == 0 && !names_flags) {
			ARRAY_FREE(&given);
			stor_string_list_free(&nkw);
			stor_msg_free(&msg);
			continue;
		}
		msg_del(&txn, mailbox, &msg);
		mailbox_account(&tm->mb, &msg, -1);
		uint32_t oflags = msg.flags;
		stor_string_list okw = msg.keywords;
		msg.keywords = nkw;
		msg.flags = nflags;
		msg.modseq = call_modseq(&tm->mb, req->modseq, &assigned);
		stamps_update(&msg, oflags, &okw, req->time_ms, now_ms, given.items, given.count);
		if (req->modseq == 0 && names_flags)
			stamp_named(&msg, req, &req_kw, &okw, now_ms);
		ARRAY_FREE(&given);
		stor_string_list_free(&okw);
		msg_put(&txn, mailbox, &msg);
		mailbox_account(&tm->mb, &msg, 1);
		tm->dirty = true;
		ARRAY_PUSH(&changed, msg);
	}
	if (tm->dirty)
		ret = stor_txn_commit(&txn, error_r);
cleanup:
	stor_txn_free(&txn);
	stor_string_list_free(&req_kw);
	free(sorted);
	if (ret == 0 && changed_r != NULL) {
		for (size_t i = 0; i < changed.count; i++)
			ARRAY_PUSH(changed_r, changed.items[i]);
		ARRAY_FREE(&changed);
	} else {
		stor_msg_list_free(&changed);
	}
	if (ret == 0 && failed_r != NULL) {
		for (size_t i = 0; i < failed.count; i++)
			ARRAY_PUSH(failed_r, failed.items[i]);
	}
	ARRAY_FREE(&failed);
	return ret;
}

int stor_msg_expunge(struct stor_db *db, const struct guid *mailbox, const uint32_t *uids,
		     size_t uid_count, uint64_t modseq, stor_uid_list *expunged_r,
		     const char **error_r)
{
	return stor_msg_expunge_kind(db, mailbox, uids, uid_count, modseq, true, expunged_r,
				     error_r);
}

int stor_msg_expunge_kind(struct stor_db *db, const struct guid *mailbox, const uint32_t *uids,
			  size_t uid_count, uint64_t modseq, bool user,
			  stor_uid_list *expunged_r, const char **error_r)
{
	struct stor_txn txn;
	struct stor_txn_mailbox *tm;
	stor_uid_list done = ARRAY_INIT;
	ARRAY(struct guid) gone = ARRAY_INIT;
	stor_msg_list left = ARRAY_INIT; /* uid and guid only, for storage-pseen.c */
	uint64_t gone_modseq = 0;
	stor_txn_begin(db, &txn);
	int ret = stor_txn_mailbox(&txn, mailbox, &tm, error_r);
	if (ret <= 0) {
		stor_txn_free(&txn);
		return ret < 0 ? -1 : mailbox_missing(db, error_r);
	}
	if (modseq_room(db, &tm->mb, modseq, error_r) < 0) {
		stor_txn_free(&txn);
		return -1;
	}
	ret = 0;
	uint64_t assigned = 0;
	size_t nuids;
	uint32_t *sorted = uids_unique(uids, uid_count, &nuids);
	for (size_t i = 0; i < nuids; i++) {
		struct stor_msg msg;
		int r = stor_msg_get(db, mailbox, sorted[i], &msg, error_r);
		if (r < 0) {
			ret = -1;
			break;
		}
		if (r == 0)
			continue;
		msg_del(&txn, mailbox, &msg);
		mailbox_account(&tm->mb, &msg, -1);
		stor_txn_text_ref(&txn, &msg.guid, -1);
		struct stor_tombstone t = {
			.uid = msg.uid, .guid = msg.guid,
			.modseq = call_modseq(&tm->mb, modseq, &assigned), .user = user,
		};
		tomb_put(&txn, mailbox, &t);
		if (user)
			ARRAY_PUSH(&gone, msg.guid);
		gone_modseq = t.modseq;
		tm->dirty = true;
		ARRAY_PUSH(&done, msg.uid);
		struct stor_msg l = { .uid = msg.uid, .guid = msg.guid };
		ARRAY_PUSH(&left, l);
		stor_msg_free(&msg);
	}
	free(sorted);
	if (ret == 0 && stor_pseen_leave_txn(&txn, tm, mailbox, left.items, left.count, user,
					     error_r) < 0)
		ret = -1;
	ARRAY_FREE(&left);
	/* A user's expunge is remembered by GUID too: the message may live
	 * on under another UID on a node that a sync renumbered it on, or
	 * reach a node that never held it from a third one (SPEC.md 10.3). */
	if (ret == 0 && gone.count > 0 &&
	    stor_guid_tombs_put_txn(&txn, mailbox, gone.items, gone.count, gone_modseq,
				    error_r) < 0)
		ret = -1;
	ARRAY_FREE(&gone);
	if (ret == 0 && tm->dirty)
		ret = stor_txn_commit(&txn, error_r);
	else
		stor_txn_free(&txn);
	if (ret == 0 && expunged_r != NULL) {
		for (size_t i = 0; i < done.count; i++)
			ARRAY_PUSH(expunged_r, done.items[i]);
	}
	ARRAY_FREE(&done);
	return ret;
}

int stor_msg_renumber(struct stor_db *db, const struct guid *mailbox, uint32_t old_uid,
		      uint32_t new_uid, uint64_t modseq, const char **error_r)
{
	struct stor_txn txn;
	struct stor_txn_mailbox *tm;
	struct stor_msg msg;
	struct stor_tombstone tomb;
	if (new_uid == 0 || new_uid == old_uid)
		return stor_err(db, error_r, "invalid new UID");
	if (!mail_uid_valid(new_uid))
		return stor_err(db, error_r, "UID %u is out of range", new_uid);
	stor_txn_begin(db, &txn);
	int ret = stor_txn_mailbox(&txn, mailbox, &tm, error_r);
	if (ret <= 0) {
		stor_txn_free(&txn);
		return ret < 0 ? -1 : mailbox_missing(db, error_r);
	}
	if (modseq_room(db, &tm->mb, modseq, error_r) < 0) {
		stor_txn_free(&txn);
		return -1;
	}
	ret = stor_msg_get(db, mailbox, old_uid, &msg, error_r);
	if (ret <= 0) {
		stor_txn_free(&txn);
		return ret < 0 ? -1 : stor_err(db, error_r, "message does not exist");
	}
	int r1 = stor_msg_get(db, mailbox, new_uid, NULL, error_r);
	int r2 = r1 < 0 ? -1 : tomb_get(db, mailbox, new_uid, &tomb, error_r);
	if (r1 != 0 || r2 != 0) {
		stor_msg_free(&msg);
		stor_txn_free(&txn);
		return r1 < 0 || r2 < 0 ? -1 : stor_err(db, error_r, "UID %u is already used", new_uid);
	}
	uint64_t assigned = 0;
	struct stor_mailbox *mb = &tm->mb;
	msg_del(&txn, mailbox, &msg);
	mailbox_account(mb, &msg, -1);
	uint64_t ms = call_modseq(mb, modseq, &assigned);
	struct stor_tombstone t = { .uid = old_uid, .guid = msg.guid, .modseq = ms };
	tomb_put(&txn, mailbox, &t);
	msg.uid = new_uid;
	msg.modseq = ms;
	msg_put(&txn, mailbox, &msg);
	mailbox_account(mb, &msg, 1);
	if (new_uid >= mb->uidnext)
		mb->uidnext = new_uid + 1;
	tm->dirty = true;
	stor_msg_free(&msg);
	return stor_txn_commit(&txn, error_r);
}

static int tomb_cmp(const void *a, const void *b)
{
	return uid_cmp(&((const struct stor_tombstone *)a)->uid,
		       &((const struct stor_tombstone *)b)->uid);
}

/* UIDs of index entries (prefix mailbox) with modseq > since. */
static int modseq_scan(struct stor_db *db, char kind, const struct guid *mailbox, uint64_t since,
		       stor_uid_list *uids, const char **error_r)
{
	struct stor_key prefix, start;
	const unsigned char *key;
	size_t klen;
	stor_key_init(&prefix, kind);
	stor_key_guid(&prefix, mailbox);
	if (since == UINT64_MAX)
		return 0;
	modseq_key(&start, kind, mailbox, since + 1, 0);
	leveldb_iterator_t *it = stor_iter_seek(db, &start);
	int ret = 0;
	while (stor_iter_in(it, &prefix, &key, &klen)) {
		if (klen != prefix.len + 12) {
			ret = stor_err_corrupt(db, error_r, "modseq index");
			break;
		}
		ARRAY_PUSH(uids, stor_be32(key + prefix.len + 8));
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	return ret;
}

int stor_changes_since(struct stor_db *db, const struct guid *mailbox, uint64_t since,
		       stor_msg_list *msgs_r, stor_tombstone_list *tombs_r, const char **error_r)
{
	stor_uid_list uids = ARRAY_INIT;
	stor_msg_list msgs = ARRAY_INIT;
	stor_tombstone_list tombs = ARRAY_INIT;
	int ret = stor_mailbox_get_by_guid(db, mailbox, NULL, error_r);
	if (ret <= 0)
		return ret < 0 ? -1 : mailbox_missing(db, error_r);
	if (since == 0) {
		/* Every message has a modseq above 0.  One scan of the message
		 * records beats a point lookup per message, which reads a whole
		 * table block each once the texts crowd out the cache: a full
		 * sync of a large mailbox spent nearly all its time there. */
		ARRAY_FREE(&msgs);
		ret = stor_msg_list_range(db, mailbox, 1, UINT32_MAX, &msgs, error_r);
	} else {
		ret = modseq_scan(db, STOR_KEY_MODSEQ, mailbox, since, &uids, error_r);
	}
	if (ret == 0 && uids.count > 1)
		qsort(uids.items, uids.count, sizeof(uint32_t), uid_cmp);
	for (size_t i = 0; i < uids.count && ret == 0; i++) {
		struct stor_msg msg;
		int r = stor_msg_get(db, mailbox, uids.items[i], &msg, error_r);
		if (r == 0)
			ret = stor_err_corrupt(db, error_r, "modseq index (no message)");
		else if (r < 0)
			ret = -1;
		else
			ARRAY_PUSH(&msgs, msg);
	}
	uids.count = 0;
	if (ret == 0)
		ret = modseq_scan(db, STOR_KEY_TOMB_MODSEQ, mailbox, since, &uids, error_r);
	for (size_t i = 0; i < uids.count && ret == 0; i++) {
		struct stor_tombstone t;
		int r = tomb_get(db, mailbox, uids.items[i], &t, error_r);
		if (r == 0)
			ret = stor_err_corrupt(db, error_r, "modseq index (no tombstone)");
		else if (r < 0)
			ret = -1;
		else
			ARRAY_PUSH(&tombs, t);
	}
	if (ret == 0 && tombs.count > 1)
		qsort(tombs.items, tombs.count, sizeof(tombs.items[0]), tomb_cmp);
	ARRAY_FREE(&uids);
	if (ret < 0) {
		stor_msg_list_free(&msgs);
		ARRAY_FREE(&tombs);
		return -1;
	}
	*msgs_r = msgs;
	*tombs_r = tombs;
	return 0;
}

/* Messages: the flag stamps (storage.h struct stor_stamp), kept with each
 * message's flags by appends and flag changes. */
#include "storage/storage-msg-private.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/mail-limits.h"
#include "lib/xalloc.h"

/* ---- Flag stamps (storage.h struct stor_stamp) ---- */

static struct stor_stamp *stamp_find(stor_stamp_list *l, const char *name)
{
	for (size_t i = 0; i < l->count; i++) {
		if (strcasecmp(l->items[i].name, name) == 0)
			return &l->items[i];
	}
	return NULL;
}

void stamp_set(stor_stamp_list *l, const char *name, uint64_t modseq, int64_t time_ms)
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

static bool is_system_flag(const char *name)
{
	return name[0] == '\\';
}

/* Keeps the list within STOR_MAX_STAMPS: the oldest stamps of keywords the
 * message no longer holds go first (set flags always keep theirs). */
void stamps_bound(struct stor_msg *msg)
{
	while (msg->stamps.count > STOR_MAX_STAMPS) {
		size_t victim = SIZE_MAX;
		for (size_t i = 0; i < msg->stamps.count; i++) {
			const struct stor_stamp *st = &msg->stamps.items[i];
			if (is_system_flag(st->name) || stor_msg_has_keyword(msg, st->name))
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
void stamps_update(struct stor_msg *msg, uint32_t oflags, const stor_string_list *okw,
		   int64_t time_ms, int64_t now_ms, const struct stor_stamp *given,
		   size_t given_count)
{
	for (uint32_t bit = 1; bit <= STOR_FLAG_DRAFT; bit <<= 1) {
		const char *name = stor_flag_name((enum stor_flag)bit);
		if (((oflags ^ msg->flags) & bit) != 0 && !given_names(given, given_count, name))
			stamp_change(msg, name, time_ms, now_ms);
	}
	for (size_t i = 0; i < okw->count; i++) {
		if (!stor_msg_has_keyword(msg, okw->items[i]) &&
		    !given_names(given, given_count, okw->items[i]))
			stamp_change(msg, okw->items[i], time_ms, now_ms);
	}
	for (size_t i = 0; i < msg->keywords.count; i++) {
		if (!stor_keywords_have(okw, msg->keywords.items[i]) &&
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
			changed = stor_keywords_have(okw, name) != stor_msg_has_keyword(msg, name);
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
bool store_names_flags(const struct stor_store *req, const stor_string_list *req_kw)
{
	return req->op == STOR_FLAGS_REPLACE || (req->flags & STOR_FLAGS_ALL) != 0 ||
	       req_kw->count > 0;
}

void stamp_named(struct stor_msg *msg, const struct stor_store *req,
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

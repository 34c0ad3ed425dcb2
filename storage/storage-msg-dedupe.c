/* Messages: one message per GUID in a mailbox (stor_msg_dedupe), the
 * flags of the copies merged into the one kept. */
#include "storage/storage-msg-private.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/mail-limits.h"
#include "lib/xalloc.h"

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
	return bit != 0 ? (m->flags & bit) != 0 : stor_msg_has_keyword(m, name);
}

static void name_add(stor_string_list *names, const char *name)
{
	if (strcmp(name, STOR_STAMP_ALL) != 0 && !stor_keywords_have(names, name))
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

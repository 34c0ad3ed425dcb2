/* The three-way flag merge on its own: a pure decision over one message's
 * two flag states and their stamps, with no store or wire, so that the rule
 * SPEC.md 10.3 states lives in one place and both sides decide alike. */
#include "sync/sync-server-private.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>

#include "lib/log.h"
#include "lib/xalloc.h"

/* ---- The three-way flag merge (SPEC.md 10.3 "Flags") ----
 *
 * A message changed on both sides since M: per flag (each system flag and
 * every keyword either side holds or has a stamp for), a side changed it
 * when its stamp is above M.  Changed on one side: that side's value.
 * Changed on both (or, for copies that disagree, on neither) to different
 * values: the later change wins by its time, then by its modseq, and on a
 * full tie the flag is set.  Nothing depends on which side is the client,
 * so every pair of nodes decides alike. */

void flag_merge_free(struct flag_merge *fm)
{
	stor_string_list_free(&fm->keywords);
	stor_stamp_list_free(&fm->times);
}

typedef ARRAY(const char *) name_list;

static void name_add(name_list *names, const char *name)
{
	if (strcmp(name, STOR_STAMP_ALL) == 0)
		return;
	for (size_t i = 0; i < names->count; i++) {
		if (strcasecmp(names->items[i], name) == 0)
			return;
	}
	ARRAY_PUSH(names, name);
}

void flag_merge_run(const struct stor_msg *cur, uint32_t cflags, const stor_string_list *ckws,
		    const stor_stamp_list *cstamps, uint64_t M, struct flag_merge *fm_r)
{
	name_list names = ARRAY_INIT;
	memset(fm_r, 0, sizeof(*fm_r));
	for (uint32_t bit = 1; bit <= STOR_FLAG_DRAFT; bit <<= 1)
		name_add(&names, stor_flag_name((enum stor_flag)bit));
	for (size_t i = 0; i < cur->keywords.count; i++)
		name_add(&names, cur->keywords.items[i]);
	for (size_t i = 0; i < ckws->count; i++)
		name_add(&names, ckws->items[i]);
	for (size_t i = 0; i < cur->stamps.count; i++)
		name_add(&names, cur->stamps.items[i].name);
	for (size_t i = 0; i < cstamps->count; i++)
		name_add(&names, cstamps->items[i].name);
	for (size_t i = 0; i < names.count; i++) {
		const char *name = names.items[i];
		uint32_t bit = 0;
		for (uint32_t b = 1; b <= STOR_FLAG_DRAFT && bit == 0; b <<= 1) {
			if (strcasecmp(name, stor_flag_name((enum stor_flag)b)) == 0)
				bit = b;
		}
		bool sv = bit != 0 ? (cur->flags & bit) != 0 : stor_keywords_have(&cur->keywords, name);
		bool cv = bit != 0 ? (cflags & bit) != 0 : stor_keywords_have(ckws, name);
		uint64_t sm, cm;
		int64_t st, ct;
		stor_msg_stamp(cur, name, &sm, &st);
		stor_stamps_lookup(cstamps, name, &cm, &ct);
		bool sch = sm > M, cch = cm > M;
		bool val;
		int64_t t;
		if (sv == cv) {
			val = sv;
			if (!sch && !cch)
				goto decided;
			t = !cch ? st : !sch ? ct : st > ct ? st : ct;
		} else if (sch != cch) {
			val = sch ? sv : cv;
			t = sch ? st : ct;
		} else {
			bool client_later = ct != st ? ct > st : cm != sm ? cm > sm : cv;
			val = client_later ? cv : sv;
			t = client_later ? ct : st;
		}
		struct stor_stamp ts = { xstrdup(name), 0, t };
		ARRAY_PUSH(&fm_r->times, ts);
	decided:
		if (!val)
			continue;
		if (bit != 0)
			fm_r->flags |= bit;
		else
			ARRAY_PUSH(&fm_r->keywords, xstrdup(name));
	}
	ARRAY_FREE(&names);
}

/* Store fixtures shared by the unit test programs that link storage/ (kept
 * out of testutil.c, which programs without storage/ link too). */
#ifndef TESTS_TESTUTIL_STOR_H
#define TESTS_TESTUTIL_STOR_H

#include <stdint.h>

struct guid;
struct stor_db;

/* Stores text at uid with GUID g, as a replicated SAVE or a sync places
 * the sender's copy, or stops the test. */
void test_save_at(struct stor_db *db, const struct guid *mb, uint32_t uid, const struct guid *g,
		  const char *text);

#endif

/* Store fixtures: see testutil-stor.h. */
#include "tests/testutil-stor.h"

#include <CUnit/CUnit.h>
#include <stdio.h>
#include <string.h>

#include "storage/storage.h"

void test_save_at(struct stor_db *db, const struct guid *mb, uint32_t uid, const struct guid *g,
		  const char *text)
{
	struct stor_append req;
	const char *error = NULL;
	memset(&req, 0, sizeof(req));
	req.uid = uid;
	req.guid = g;
	req.internaldate = 1700000000;
	req.text = text;
	req.text_len = strlen(text);
	int r = stor_msg_append(db, mb, &req, NULL, NULL, &error);
	if (r < 0)
		fprintf(stderr, "append at %u: %s\n", uid, error);
	CU_ASSERT_EQUAL_FATAL(r, 0);
}

/* Pure helpers of imap/: dates, flags, mailbox names, string quoting. */
#include <stdlib.h>
#include <string.h>

#include "imap/imap-mutf7.h"
#include "imap/imap-private.h"
#include "tests/imap/tests-imap.h"

static void test_util_datetime_roundtrip(void)
{
	int64_t t;
	int32_t tz;
	CU_ASSERT_EQUAL_FATAL(imap_parse_datetime("17-Jul-1996 02:44:25 -0700", &t, &tz), 0);
	CU_ASSERT_EQUAL(t, 837596665);
	CU_ASSERT_EQUAL(tz, -420);
	struct buf b = BUF_INIT;
	imap_append_internaldate(&b, t, tz);
	CU_ASSERT_STRING_EQUAL(buf_cstr(&b), "\"17-Jul-1996 02:44:25 -0700\"");
	buf_free(&b);
	CU_ASSERT_EQUAL(imap_parse_datetime(" 7-Jul-1996 02:44:25 +0000", &t, &tz), 0);
	CU_ASSERT_EQUAL(imap_parse_datetime("17-Jul-1996 02:44:25", &t, &tz), -1);
	CU_ASSERT_EQUAL(imap_parse_datetime("17-Foo-1996 02:44:25 +0000", &t, &tz), -1);
	CU_ASSERT_EQUAL(imap_parse_datetime("17-Jul-1996 25:44:25 +0000", &t, &tz), -1);
	CU_ASSERT_EQUAL(imap_parse_date("1-Feb-2026", &t), 0);
	CU_ASSERT_EQUAL(t, 1769904000);
	CU_ASSERT_EQUAL(imap_parse_date("1-Feb-26", &t), -1);
}

static void test_util_flags(void)
{
	CU_ASSERT_EQUAL(imap_flag_bit("\\seen"), STOR_FLAG_SEEN);
	CU_ASSERT_EQUAL(imap_flag_bit("\\Recent"), 0);
	CU_ASSERT_TRUE(imap_keyword_valid("$Label1"));
	CU_ASSERT_FALSE(imap_keyword_valid("a]b"));
	CU_ASSERT_FALSE(imap_keyword_valid(""));
	struct buf b = BUF_INIT;
	char *kw[] = { "$Work" };
	stor_string_list list = { kw, 1, 1 };
	imap_append_flags(&b, STOR_FLAG_SEEN | STOR_FLAG_DELETED, &list, false);
	CU_ASSERT_STRING_EQUAL(buf_cstr(&b), "(\\Deleted \\Seen $Work)");
	buf_reset(&b);
	imap_append_flags(&b, 0, NULL, true);
	CU_ASSERT_STRING_EQUAL(buf_cstr(&b), "(\\Recent)");
	buf_free(&b);
}

static void test_util_mailbox_names(void)
{
	const char *err;
	char *n = imap_mailbox_name("inbox", 5, &err);
	CU_ASSERT_STRING_EQUAL(n, "INBOX");
	free(n);
	n = imap_mailbox_name("Inbox/Sub", 9, &err);
	CU_ASSERT_STRING_EQUAL(n, "INBOX/Sub");
	free(n);
	n = imap_mailbox_name("Inboxes", 7, &err);
	CU_ASSERT_STRING_EQUAL(n, "Inboxes");
	free(n);
	n = imap_mailbox_name("Entw&APw-rfe", 12, &err);
	CU_ASSERT_STRING_EQUAL(n, "Entw&APw-rfe");
	free(n);
	CU_ASSERT_PTR_NULL(imap_mailbox_name("bad&APw", 7, &err));
	CU_ASSERT_PTR_NULL(imap_mailbox_name("a//b", 4, &err));
	CU_ASSERT_PTR_NULL(imap_mailbox_name("a*", 2, &err));
	CU_ASSERT_PTR_NULL(imap_mailbox_name("50%", 3, &err));
	CU_ASSERT_PTR_NULL(imap_mailbox_name("", 0, &err));
	CU_ASSERT_PTR_NULL(imap_mailbox_name("caf\xc3\xa9", 5, &err));
}

static void test_util_astring_quoting(void)
{
	struct buf b = BUF_INIT;
	imap_append_astring(&b, "INBOX", 5);
	buf_append_byte(&b, ' ');
	imap_append_astring(&b, "My Folder", 9);
	buf_append_byte(&b, ' ');
	imap_append_astring(&b, "a\"b", 3);
	buf_append_byte(&b, ' ');
	imap_append_astring(&b, "x\ny", 3);
	buf_append_byte(&b, ' ');
	imap_append_astring(&b, "nil", 3);
	CU_ASSERT_STRING_EQUAL(buf_cstr(&b), "INBOX \"My Folder\" \"a\\\"b\" {3}\r\nx\ny \"nil\"");
	buf_free(&b);
}

static void check_mutf7(const char *m, const char *u)
{
	char *got = imap_mutf7_to_utf8(m, strlen(m));
	CU_ASSERT_PTR_NOT_NULL_FATAL(got);
	CU_ASSERT_STRING_EQUAL(got, u);
	free(got);
	got = imap_utf8_to_mutf7(u, strlen(u));
	CU_ASSERT_PTR_NOT_NULL_FATAL(got);
	CU_ASSERT_STRING_EQUAL(got, m);
	free(got);
}

/* Modified UTF-7 <-> UTF-8 (RFC 3501 5.1.3, RFC 9051 5.1): round trips,
 * and what is not valid either way. */
static void test_util_mutf7(void)
{
	check_mutf7("INBOX", "INBOX");
	check_mutf7("~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/\xe5\x8f\xb0\xe5\x8c\x97/"
		    "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e");
	check_mutf7("A&-B", "A&B");
	check_mutf7("Entw&APw-rfe/&AMQ-rger", "Entw\xc3\xbcrfe/\xc3\x84rger");
	check_mutf7("&2D3eAA-", "\xf0\x9f\x98\x80"); /* U+1F600: a surrogate pair */
	check_mutf7("&AMQAxA-", "\xc3\x84\xc3\x84");
	static const char *const bad_m[] = {
		"&",        /* no end */
		"&AMQ",     /* no '-' */
		"&AGE-",    /* encodes 'a' */
		"&AMR-",    /* leftover bits not zero */
		"&2AA-",    /* a lone high surrogate */
		"&3AA-",    /* a lone low surrogate */
		"&AM!-",    /* not base64 */
		"a\x80" "b", /* 8-bit */
	};
	for (size_t i = 0; i < sizeof(bad_m) / sizeof(bad_m[0]); i++) {
		char *r = imap_mutf7_to_utf8(bad_m[i], strlen(bad_m[i]));
		CU_ASSERT_PTR_NULL(r);
		free(r);
	}
	static const char *const bad_u[] = {
		"a\xe4" "b",       /* latin-1 */
		"\xc0\xaf",        /* overlong */
		"\xed\xa0\x80",    /* a surrogate */
		"\xf4\x90\x80\x80", /* above U+10FFFF */
		"x\x01y",          /* a control character */
		"\xe6\x97",        /* truncated */
	};
	for (size_t i = 0; i < sizeof(bad_u) / sizeof(bad_u[0]); i++) {
		char *r = imap_utf8_to_mutf7(bad_u[i], strlen(bad_u[i]));
		CU_ASSERT_PTR_NULL(r);
		free(r);
	}
}

const struct test_case imap_util_cases[] = {
	{ "date-time round trip and bad dates", test_util_datetime_roundtrip },
	{ "flags and keywords", test_util_flags },
	{ "mailbox names", test_util_mailbox_names },
	{ "astring quoting", test_util_astring_quoting },
	{ "modified UTF-7 and UTF-8", test_util_mutf7 },
	{ NULL, NULL },
};

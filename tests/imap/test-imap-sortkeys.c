/* Sort keys (imap/imap-sortkeys.h): base subjects per RFC 5256 2.1, their
 * comparison form, and sent dates. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "imap/imap-mime.h"
#include "imap/imap-sortkeys.h"
#include "tests/imap/tests-imap.h"

static void check_base(const char *value, const char *want, bool want_reply)
{
	bool reply = !want_reply;
	char *got = imap_base_subject(value, &reply);
	if (strcmp(got, want) != 0 || reply != want_reply)
		fprintf(stderr, "base subject of [%s]: [%s] reply=%d, want [%s] reply=%d\n",
			value != NULL ? value : "(null)", got, reply, want, want_reply);
	CU_ASSERT_STRING_EQUAL(got, want);
	CU_ASSERT_EQUAL(reply, want_reply);
	free(got);
}

static void test_base_subject_leaders(void)
{
	check_base(NULL, "", false);
	check_base("", "", false);
	check_base("Lunch", "Lunch", false);
	check_base("Re: Lunch", "Lunch", true);
	check_base("RE:Lunch", "Lunch", true);
	check_base("re : Lunch", "Lunch", true);
	check_base("Fw: Lunch", "Lunch", true);
	check_base("FWD: Lunch", "Lunch", true);
	check_base("Re: Re: fwd: Lunch", "Lunch", true);
	check_base("Re[2]: Lunch", "Lunch", true);
	check_base("[list] Re: Lunch", "Lunch", true);
	check_base("[list] Lunch", "Lunch", false);
	check_base("[foo] Fwd: [bar] Re: fw: b (fWd)  (fwd)", "b", true);
	/* not a leader: other words, or no colon */
	check_base("Ad: Re: Ad: Re: Ad: x", "Ad: Re: Ad: Re: Ad: x", false);
	check_base("Reply to all", "Reply to all", false);
	check_base("Re Lunch", "Re Lunch", false);
	check_base("Ref: x", "Ref: x", false);
}

static void test_base_subject_blobs_and_wrapping(void)
{
	/* a blob that is all there is stays */
	check_base("[xyz]", "[xyz]", false);
	check_base("[a] [b]", "[b]", false);
	check_base("Re: [FWD: c]", "c", true);
	check_base("[Fwd: Lunch]", "Lunch", true);
	check_base("re: [fwd: [fwd: re: [fwd: babylon]]]", "babylon", true);
	check_base("[fwd: a] b", "b", false);
	check_base("Lunch (fwd)", "Lunch", true);
	check_base("Lunch (fwd) x", "Lunch (fwd) x", false);
	check_base("b (a)", "b (a)", false);
	/* unbalanced brackets are text */
	check_base("[unclosed Re: x", "[unclosed Re: x", false);
	check_base("[a[b]] x", "[a[b]] x", false);
}

static void test_base_subject_whitespace_and_encoding(void)
{
	check_base("  a \t\r\n  b  ", "a b", false);
	check_base("=?iso-8859-1?q?_?=", "", false);
	check_base("Re: =?utf-8?q?b?=", "b", true);
	check_base("=?iso-8859-1?q?RE:_C?=", "C", true);
	check_base("=?us-ascii?b?UmU6IGM=?=", "c", true);
	check_base("=?iso-8859-1?q?Caf=E9?=", "Caf\xc3\xa9", false);
	/* an encoded NUL cannot cut the key short */
	check_base("=?us-ascii?q?a=00b?=", "ab", false);
}

static void test_sortkey_fold(void)
{
	char *a = imap_sortkey_fold("c"), *b = imap_sortkey_fold("C");
	CU_ASSERT_STRING_EQUAL(a, b);
	free(a);
	free(b);
	/* letters sort before '[' and '_' (uppercase mapping, as Dovecot) */
	a = imap_sortkey_fold("xyz");
	b = imap_sortkey_fold("[xyz]");
	CU_ASSERT_TRUE(strcmp(a, b) < 0);
	free(a);
	free(b);
	/* precomposed and decomposed e-acute fold alike */
	a = imap_sortkey_fold("caf\xc3\xa9");
	b = imap_sortkey_fold("CAFE\xcc\x81");
	CU_ASSERT_STRING_EQUAL(a, b);
	free(a);
	free(b);
	a = imap_sortkey_fold("");
	CU_ASSERT_STRING_EQUAL(a, "");
	free(a);
}

static void test_sent_date(void)
{
	const char *text = "Date: Mon, 7 Dec 2026 10:00:00 +0200\r\nSubject: x\r\n\r\nbody\r\n";
	struct imap_mime *m = imap_mime_parse((const unsigned char *)text, strlen(text));
	/* 2026-12-07 08:00:00 UTC */
	CU_ASSERT_EQUAL(imap_sent_date(m, 5), 1796630400);
	imap_mime_free(&m);
	const char *bad = "Date: not a date\r\n\r\n";
	m = imap_mime_parse((const unsigned char *)bad, strlen(bad));
	CU_ASSERT_EQUAL(imap_sent_date(m, 5), 5);
	imap_mime_free(&m);
	const char *none = "Subject: x\r\n\r\n";
	m = imap_mime_parse((const unsigned char *)none, strlen(none));
	CU_ASSERT_EQUAL(imap_sent_date(m, 7), 7);
	imap_mime_free(&m);
	CU_ASSERT_EQUAL(imap_sent_date(NULL, 9), 9);
	CU_ASSERT_EQUAL(imap_sent_date_value("Mon, 7 Dec 2026 08:00:00 +0000", 1), 1796630400);
	CU_ASSERT_EQUAL(imap_sent_date_value("garbage", 3), 3);
	CU_ASSERT_EQUAL(imap_sent_date_value(NULL, 4), 4);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A hostile Subject: must not cost quadratic time (a mailbox of such
 * messages would hold the server's loop for minutes per SORT). */
static void test_base_subject_hostile(void)
{
	size_t n = 100000;
	char *s = malloc(3 * n + 16);
	CU_ASSERT_PTR_NOT_NULL_FATAL(s);
	/* 100000 blobs: step 4 removes all but the last */
	for (size_t i = 0; i < n; i++)
		memcpy(s + 3 * i, "[a]", 3);
	s[3 * n] = '\0';
	double t0 = now();
	char *b = imap_base_subject(s, NULL);
	double t1 = now() - t0;
	CU_ASSERT_STRING_EQUAL(b, "[a]");
	free(b);
	/* blobs followed by text: all go */
	strcpy(s + 3 * n, "x");
	t0 = now();
	b = imap_base_subject(s, NULL);
	double t2 = now() - t0;
	CU_ASSERT_STRING_EQUAL(b, "x");
	free(b);
	/* 50000 nested [fwd: ] wrappings */
	size_t d = 50000, k = 0;
	char *w = malloc(7 * d + 8);
	CU_ASSERT_PTR_NOT_NULL_FATAL(w);
	for (size_t i = 0; i < d; i++, k += 5)
		memcpy(w + k, "[fwd:", 5);
	w[k++] = 'y';
	for (size_t i = 0; i < d; i++)
		w[k++] = ']';
	w[k] = '\0';
	t0 = now();
	bool reply = false;
	b = imap_base_subject(w, &reply);
	double t3 = now() - t0;
	CU_ASSERT_STRING_EQUAL(b, "y");
	CU_ASSERT_TRUE(reply);
	free(b);
	if (t1 > 2 || t2 > 2 || t3 > 2)
		fprintf(stderr, "base subject of hostile subjects: %.2f s, %.2f s, %.2f s\n", t1, t2,
			t3);
	/* linear work takes milliseconds even under ASan on a busy machine */
	CU_ASSERT_TRUE(t1 < 2 && t2 < 2 && t3 < 2);
	free(s);
	free(w);
}

const struct test_case imap_sortkeys_cases[] = {
	{ "base subject: re/fw/fwd leaders", test_base_subject_leaders },
	{ "base subject: blobs and [fwd: ] wrapping", test_base_subject_blobs_and_wrapping },
	{ "base subject: whitespace and RFC 2047", test_base_subject_whitespace_and_encoding },
	{ "sort key folding", test_sortkey_fold },
	{ "sent date", test_sent_date },
	{ "base subject: hostile subjects take linear time", test_base_subject_hostile },
	{ NULL, NULL },
};

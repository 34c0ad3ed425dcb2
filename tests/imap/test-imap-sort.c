/* SORT programs (imap/imap-sort.h) on in-memory messages: criteria parsing,
 * every key's comparison, REVERSE and the sequence-number tiebreak, the
 * address keys of SORT and SORT=DISPLAY, and ESORT's set writing. */
#include <stdlib.h>
#include <string.h>

#include "imap/imap-mime.h"
#include "imap/imap-parser.h"
#include "imap/imap-seqset.h"
#include "imap/imap-sort.h"
#include "imap/imap-sortkeys.h"
#include "tests/imap/tests-imap.h"

static const struct imap_parser_limits limits = {
	.max_line = 65536, .max_literal = 65536, .max_total = 1 << 20,
	.max_args = 1000, .max_depth = 16,
};

/* Parses "t SORT <criteria>" and the criteria list into prog; returns the
 * parse result. */
static int parse(const char *criteria, struct imap_sort_program *prog)
{
	char line[512];
	snprintf(line, sizeof(line), "t SORT %s\r\n", criteria);
	struct imap_parser *p = imap_parser_create(&limits);
	size_t used;
	enum imap_parse_result pr = imap_parser_feed(p, (const unsigned char *)line, strlen(line),
						     &used);
	CU_ASSERT_EQUAL_FATAL(pr, IMAP_PARSE_DONE);
	const struct imap_command *c = imap_parser_command(p);
	CU_ASSERT_TRUE_FATAL(c->count >= 1);
	const char *err = NULL;
	int r = imap_sort_program_parse(&c->args[0], prog, &err);
	if (r < 0)
		CU_ASSERT_PTR_NOT_NULL(err);
	imap_parser_destroy(&p);
	return r;
}

static void test_sort_parse(void)
{
	struct imap_sort_program prog;
	CU_ASSERT_EQUAL(parse("(subject)", &prog), 0);
	CU_ASSERT_EQUAL(prog.count, 1);
	CU_ASSERT_EQUAL(prog.crit[0].key, IMAP_SORT_SUBJECT);
	CU_ASSERT_FALSE(prog.crit[0].reverse);
	CU_ASSERT_EQUAL(parse("(REVERSE date Arrival reverse DISPLAYFROM displayto cc to from size)",
			      &prog), 0);
	CU_ASSERT_EQUAL(prog.count, 8);
	CU_ASSERT_TRUE(prog.crit[0].reverse);
	CU_ASSERT_EQUAL(prog.crit[0].key, IMAP_SORT_DATE);
	CU_ASSERT_FALSE(prog.crit[1].reverse);
	CU_ASSERT_EQUAL(prog.crit[2].key, IMAP_SORT_DISPLAYFROM);
	CU_ASSERT_TRUE(prog.crit[2].reverse);
	CU_ASSERT_EQUAL(prog.crit[7].key, IMAP_SORT_SIZE);
	CU_ASSERT_TRUE(imap_sort_program_needs_text(&prog));
	CU_ASSERT_EQUAL(parse("(arrival reverse size)", &prog), 0);
	CU_ASSERT_FALSE(imap_sort_program_needs_text(&prog));

	CU_ASSERT_EQUAL(parse("()", &prog), -1);
	CU_ASSERT_EQUAL(parse("subject", &prog), -1);
	CU_ASSERT_EQUAL(parse("(reverse)", &prog), -1);
	CU_ASSERT_EQUAL(parse("(subject reverse)", &prog), -1);
	CU_ASSERT_EQUAL(parse("(reverse reverse subject)", &prog), -1);
	CU_ASSERT_EQUAL(parse("(bogus)", &prog), -1);
	CU_ASSERT_EQUAL(parse("((subject))", &prog), -1);
	CU_ASSERT_EQUAL(parse("(\"subject\")", &prog), -1);
	char many[400] = "(";
	for (int i = 0; i < IMAP_SORT_MAX_CRITERIA + 1; i++)
		strcat(many, "size ");
	strcat(many, ")");
	CU_ASSERT_EQUAL(parse(many, &prog), -1);
}

struct tmsg {
	int64_t arrival;
	uint64_t size;
	const char *text;
};

/* seq n is msgs[n - 1] */
static const struct tmsg msgs[] = {
	{ 300, 50,
	  "From: Zed <zed@example.org>\r\nTo: \"Bob B\" <bob@x.org>\r\nCc: carol@x.org\r\n"
	  "Subject: Re: Lunch\r\nDate: Sat, 10 Jan 2026 12:00:00 +0000\r\n\r\nbody\r\n" },
	{ 100, 20,
	  "From: =?iso-8859-1?q?=C9mile?= <alice@example.org>\r\nTo: team: dave@x.org;\r\n"
	  "Subject: =?utf-8?q?lunch?=\r\nDate: Fri, 9 Jan 2026 23:00:00 -0200\r\n\r\nbody\r\n" },
	{ 200, 50,
	  "From: bob@example.org (Bobby)\r\nTo: aaron@x.org\r\n"
	  "Subject: [list] Apples\r\n\r\nbody\r\n" },
	{ 200, 10, "Subject: lunch (fwd)\r\nDate: garbage\r\n\r\nbody\r\n" },
};
#define NMSGS (sizeof(msgs) / sizeof(msgs[0]))

/* Sorts msgs by criteria; writes the sequence numbers in sort order as
 * "a b c" to out. */
static void run(const char *criteria, char *out, size_t out_size)
{
	struct imap_sort_program prog;
	CU_ASSERT_EQUAL_FATAL(parse(criteria, &prog), 0);
	struct imap_sort_entry e[NMSGS];
	memset(e, 0, sizeof(e));
	/* in reverse sequence order, so the tiebreak is the sort's work */
	for (size_t i = 0; i < NMSGS; i++) {
		const struct tmsg *m = &msgs[NMSGS - 1 - i];
		e[i].seq = (uint32_t)(NMSGS - i);
		e[i].uid = e[i].seq * 10;
		e[i].size = m->size;
		e[i].arrival = m->arrival;
		struct imap_mime *mime = imap_mime_parse((const unsigned char *)m->text,
							 strlen(m->text));
		imap_sort_entry_fill(&e[i], &prog, mime);
		imap_mime_free(&mime);
	}
	imap_sort_entries(&prog, e, NMSGS);
	out[0] = '\0';
	for (size_t i = 0; i < NMSGS; i++) {
		char n[16];
		snprintf(n, sizeof(n), i == 0 ? "%u" : " %u", e[i].seq);
		strncat(out, n, out_size - strlen(out) - 1);
		imap_sort_entry_free(&e[i]);
	}
}

static void check(const char *criteria, const char *want)
{
	char got[128];
	run(criteria, got, sizeof(got));
	if (strcmp(got, want) != 0)
		fprintf(stderr, "SORT %s: got %s, want %s\n", criteria, got, want);
	CU_ASSERT_STRING_EQUAL(got, want);
}

static void test_sort_keys(void)
{
	check("(arrival)", "2 3 4 1");
	/* REVERSE does not reverse the sequence tiebreak (3, 4 tie) */
	check("(reverse arrival)", "1 3 4 2");
	check("(size)", "4 2 1 3");
	check("(size reverse arrival)", "4 2 1 3");
	check("(size arrival)", "4 2 3 1");
	/* sent dates: 1 is 2026-01-10 12:00Z, 2 is 2026-01-10 01:00Z; 3 has
	 * no Date: and 4 a broken one, so their arrivals (200) count */
	check("(date)", "3 4 2 1");
	check("(reverse date)", "1 2 3 4");
	/* base subjects: apples, lunch x3 (tie by sequence) */
	check("(subject)", "3 1 2 4");
	check("(reverse subject)", "1 2 4 3");
	check("(subject reverse arrival)", "3 1 4 2");
	/* FROM by mailbox: zed, alice, bob, "" (no From sorts first) */
	check("(from)", "4 2 3 1");
	/* TO: bob, team (the group's name), aaron, "" */
	check("(to)", "4 3 1 2");
	/* CC: carol, "", "", "" */
	check("(cc)", "2 3 4 1");
	check("(reverse cc)", "1 2 3 4");
	/* DISPLAYFROM: Zed, Emile (decoded), Bobby (the comment), "" */
	check("(displayfrom)", "4 3 2 1");
	/* DISPLAYTO: Bob B, team, aaron@x.org, "" */
	check("(displayto)", "4 3 1 2");
}

static char *addr_key(const char *text, const char *field, bool display)
{
	struct imap_mime *m = imap_mime_parse((const unsigned char *)text, strlen(text));
	char *k = imap_sortkey_address(m, field, display);
	imap_mime_free(&m);
	return k;
}

static void check_addr(const char *text, const char *field, bool display, const char *want)
{
	char *k = addr_key(text, field, display);
	if (strcmp(k, want) != 0)
		fprintf(stderr, "%s key of [%s]: [%s], want [%s]\n", field, text, k, want);
	CU_ASSERT_STRING_EQUAL(k, want);
	free(k);
}

static void test_sort_address_keys(void)
{
	/* keys are folded: uppercase */
	check_addr("From: Foo Bar <a@b.c>\r\n\r\n", "from", false, "A");
	check_addr("From: Foo Bar <a@b.c>\r\n\r\n", "from", true, "FOO BAR");
	check_addr("From: b@c.d\r\n\r\n", "from", true, "B@C.D");
	check_addr("From: d\r\n\r\n", "from", true, "D");
	check_addr("From: d\r\n\r\n", "from", false, "D");
	check_addr("From: =?iso-8859-1?q?foo_aar?= <e@f.g>\r\n\r\n", "from", true, "FOO AAR");
	check_addr("To: a: xx@xx.org, yy@yy.org;\r\n\r\n", "to", true, "A");
	check_addr("To: a: xx@xx.org, yy@yy.org;\r\n\r\n", "to", false, "A");
	check_addr("To: empty:;\r\n\r\n", "to", true, "EMPTY");
	check_addr("Cc: user2: blah@domain1.org;\r\n\r\n", "cc", false, "USER2");
	check_addr("Cc: x@y (Name)\r\n\r\n", "cc", true, "NAME");
	check_addr("Cc: \"\" <x@y>\r\n\r\n", "cc", true, "X@Y");
	check_addr("Cc: first@a, second@b\r\n\r\n", "cc", false, "FIRST");
	check_addr("Subject: x\r\n\r\n", "from", false, "");
	check_addr("From:\r\n\r\n", "from", true, "");
	/* an encoded NUL does not end the key */
	check_addr("From: =?us-ascii?q?a=00b?= <x@y>\r\n\r\n", "from", true, "AB");
	/* keys are cut to a bound */
	size_t big = 100000;
	char *text = malloc(big + 64);
	CU_ASSERT_PTR_NOT_NULL_FATAL(text);
	strcpy(text, "From: ");
	memset(text + 6, 'n', big);
	strcpy(text + 6 + big, " <x@y>\r\nSubject: ");
	size_t hl = strlen(text);
	char *text2 = malloc(hl + big + 8);
	CU_ASSERT_PTR_NOT_NULL_FATAL(text2);
	memcpy(text2, text, hl);
	memset(text2 + hl, 's', big);
	strcpy(text2 + hl + big, "\r\n\r\n");
	struct imap_mime *m = imap_mime_parse((const unsigned char *)text2, strlen(text2));
	char *k = imap_sortkey_address(m, "from", true);
	CU_ASSERT_EQUAL(strlen(k), IMAP_SORTKEY_MAX);
	CU_ASSERT_EQUAL(k[0], 'N');
	free(k);
	k = imap_sortkey_subject(m);
	CU_ASSERT_EQUAL(strlen(k), IMAP_SORTKEY_MAX);
	CU_ASSERT_EQUAL(k[IMAP_SORTKEY_MAX - 1], 'S');
	free(k);
	imap_mime_free(&m);
	free(text);
	free(text2);
	k = imap_sortkey_address(NULL, "from", true);
	CU_ASSERT_STRING_EQUAL(k, "");
	free(k);
	k = imap_sortkey_subject(NULL);
	CU_ASSERT_STRING_EQUAL(k, "");
	free(k);
}

static void check_set(const uint32_t *nums, size_t n, const char *want)
{
	struct buf b = BUF_INIT;
	imap_seqset_format(nums, n, &b);
	CU_ASSERT_STRING_EQUAL(buf_cstr(&b), want);
	buf_free(&b);
}

static void test_sort_set(void)
{
	static const uint32_t a[] = { 1, 2, 3, 4, 5 };
	check_set(a, 5, "1:5");
	static const uint32_t b[] = { 5, 3, 4, 2, 1 };
	check_set(b, 5, "5,3:4,2,1");
	static const uint32_t c[] = { 7 };
	check_set(c, 1, "7");
	check_set(c, 0, "");
	static const uint32_t d[] = { 4294967294u, 4294967295u, 1, 2 };
	check_set(d, 4, "4294967294:4294967295,1:2");
}

/* Sorting is O(n log n) and correct on a large input with many ties. */
static void test_sort_many(void)
{
	struct imap_sort_program prog;
	CU_ASSERT_EQUAL_FATAL(parse("(reverse size)", &prog), 0);
	size_t n = 100000;
	struct imap_sort_entry *e = calloc(n, sizeof(*e));
	CU_ASSERT_PTR_NOT_NULL_FATAL(e);
	for (size_t i = 0; i < n; i++) {
		e[i].seq = (uint32_t)(n - i);
		e[i].size = (i * 7919) % 97;
	}
	imap_sort_entries(&prog, e, n);
	bool ok = true;
	for (size_t i = 1; i < n; i++)
		if (e[i - 1].size < e[i].size ||
		    (e[i - 1].size == e[i].size && e[i - 1].seq > e[i].seq))
			ok = false;
	CU_ASSERT_TRUE(ok);
	free(e);
}

const struct test_case imap_sort_cases[] = {
	{ "criteria parsing", test_sort_parse },
	{ "every key, REVERSE and the sequence tiebreak", test_sort_keys },
	{ "address keys of SORT and SORT=DISPLAY", test_sort_address_keys },
	{ "ESORT sets keep the sort order", test_sort_set },
	{ "100000 entries with ties", test_sort_many },
	{ NULL, NULL },
};

/* THREAD algorithms on in-memory messages: the cases of imaptest's thread
 * groups, REFS ordering, loops, deep chains and random inputs (every
 * message appears exactly once), and the header/ID extraction. */
#include <stdlib.h>
#include <string.h>

#include "imap/imap-thread.h"
#include "lib/buf.h"
#include "tests/imap/tests-imap.h"

struct tmsg {
	int64_t date;
	const char *mid, *refs, *irt;
	const char *subject; /* base subject */
	bool reply;
};

static char *run(enum imap_thread_alg alg, const struct tmsg *in, size_t n)
{
	struct imap_thread_msg *m = calloc(n + 1, sizeof(*m));
	for (size_t i = 0; i < n; i++) {
		m[i].id = (uint32_t)i + 1;
		m[i].date = in[i].date;
		imap_thread_msg_set_ids(&m[i], in[i].mid, in[i].mid ? strlen(in[i].mid) : 0,
					in[i].refs, in[i].refs ? strlen(in[i].refs) : 0, in[i].irt,
					in[i].irt ? strlen(in[i].irt) : 0);
		m[i].base_subject = in[i].subject != NULL ? strdup(in[i].subject) : NULL;
		m[i].reply_or_fwd = in[i].reply;
	}
	struct buf out = BUF_INIT;
	imap_thread_build(alg, m, n, &out);
	for (size_t i = 0; i < n; i++)
		imap_thread_msg_free(&m[i]);
	free(m);
	char *s = strdup(buf_cstr(&out));
	buf_free(&out);
	return s;
}

#define CHECK_THREAD(alg, msgs, expect) do { \
	char *got_ = run(alg, msgs, sizeof(msgs) / sizeof(msgs[0])); \
	CU_ASSERT_STRING_EQUAL(got_, expect); \
	free(got_); \
} while (0)

/* imaptest "thread": c's own References (b) would loop, but the link to
 * a that b's References made gives way first. */
static void test_refs_truncated_references_loop(void)
{
	static const struct tmsg m[] = {
		{ 1700, "<a@b>", NULL, NULL, NULL, false },
		{ 1500, "<b@b>", "<a@b> <c@b>", NULL, NULL, false },
		{ 1600, "<c@b>", "<b@b>", NULL, NULL, false },
	};
	CHECK_THREAD(IMAP_THREAD_REFERENCES, m, "(3 2)(1)");
	static const struct tmsg after_expunge[] = {
		{ 1500, "<b@b>", "<a@b> <c@b>", NULL, NULL, false },
		{ 1600, "<c@b>", "<b@b>", NULL, NULL, false },
	};
	CHECK_THREAD(IMAP_THREAD_REFERENCES, after_expunge, "(2 1)");
}

static void test_refs_duplicate_message_ids(void)
{
	static const struct tmsg dup[] = {
		{ 100, "<a@b>", NULL, NULL, NULL, false },
		{ 100, "<a@b>", NULL, NULL, NULL, false },
	};
	CHECK_THREAD(IMAP_THREAD_REFERENCES, dup, "(1)(2)");
	/* thread3: the duplicate is joined by subject instead. */
	static const struct tmsg subj[] = {
		{ 100, "<a@b>", NULL, NULL, "FOO", false },
		{ 101, "<a@b>", NULL, NULL, "FOO", true },
	};
	CHECK_THREAD(IMAP_THREAD_REFERENCES, subj, "(1 2)");
	/* thread7: the first message with an ID owns it. */
	static const struct tmsg owner[] = {
		{ 100, "<a@b>", NULL, NULL, NULL, false },
		{ 100, "<b@b>", "<a@b>", NULL, NULL, false },
		{ 100, "<c@b>", "<b@b>", NULL, NULL, false },
		{ 100, "<b@b>", "<a@b>", NULL, NULL, false },
	};
	CHECK_THREAD(IMAP_THREAD_REFERENCES, owner, "(1 (2 3)(4))");
}

static void test_refs_dummies(void)
{
	/* thread4: a dummy root with one child is replaced by it, then the
	 * subject joins the reply to the original. */
	static const struct tmsg one[] = {
		{ 100, "<a@b>", NULL, NULL, "FOO", false },
		{ 101, "<b@b>", "<c@b>", NULL, "FOO", true },
	};
	CHECK_THREAD(IMAP_THREAD_REFERENCES, one, "(1 2)");
	/* thread6: a dummy root with two children stays. */
	static const struct tmsg two[] = {
		{ 100, NULL, "<a@b>", NULL, NULL, false },
		{ 101, NULL, "<a@b>", NULL, NULL, false },
	};
	CHECK_THREAD(IMAP_THREAD_REFERENCES, two, "((1)(2))");
	/* thread5 after its expunges: In-Reply-To to missing messages. */
	static const struct tmsg irt[] = {
		{ 100, "<3@b>", NULL, "<1@b>", NULL, false },
		{ 100, "<4@b>", NULL, "<2@b>", NULL, false },
		{ 100, "<5@b>", NULL, "<2@b>", NULL, false },
	};
	CHECK_THREAD(IMAP_THREAD_REFERENCES, irt, "(1)((2)(3))");
	/* A dummy inside a thread is spliced out: its children move up. */
	static const struct tmsg inner[] = {
		{ 100, "<r@b>", NULL, NULL, NULL, false },
		{ 101, "<x@b>", "<r@b> <gone@b>", NULL, NULL, false },
		{ 102, "<y@b>", "<r@b> <gone@b>", NULL, NULL, false },
	};
	CHECK_THREAD(IMAP_THREAD_REFERENCES, inner, "(1 (2)(3))");
}

static void test_refs_subject_grouping(void)
{
	/* Two originals with one subject: a new dummy holds both. */
	static const struct tmsg both[] = {
		{ 100, "<a@b>", NULL, NULL, "LUNCH", false },
		{ 200, "<b@b>", NULL, NULL, "LUNCH", false },
		{ 150, "<c@b>", NULL, NULL, "OTHER", false },
	};
	CHECK_THREAD(IMAP_THREAD_REFERENCES, both, "((1)(2))(3)");
	/* The reply sorts first by date but the original leads the table. */
	static const struct tmsg reply_first[] = {
		{ 200, "<a@b>", NULL, NULL, "LUNCH", false },
		{ 100, "<b@b>", NULL, NULL, "LUNCH", true },
	};
	CHECK_THREAD(IMAP_THREAD_REFERENCES, reply_first, "(1 2)");
	/* REFS never groups by subject. */
	CHECK_THREAD(IMAP_THREAD_REFS, reply_first, "(2)(1)");
	/* Empty subjects are never grouped. */
	static const struct tmsg empty[] = {
		{ 100, "<a@b>", NULL, NULL, "", false },
		{ 200, "<b@b>", NULL, NULL, NULL, true },
	};
	CHECK_THREAD(IMAP_THREAD_REFERENCES, empty, "(1)(2)");
}

static void test_refs_orders_threads_by_newest_message(void)
{
	static const struct tmsg m[] = {
		{ 100, "<a@b>", NULL, NULL, "A", false },
		{ 200, "<b@b>", NULL, NULL, "B", false },
		{ 300, "<c@b>", "<a@b>", NULL, "A", true },
		{ 150, "<d@b>", "<a@b>", NULL, "A", true },
	};
	CHECK_THREAD(IMAP_THREAD_REFERENCES, m, "(1 (4)(3))(2)");
	CHECK_THREAD(IMAP_THREAD_REFS, m, "(2)(1 (4)(3))");
}

/* REFS breaks ties in the newest date as Dovecot does: threads under a
 * missing message first, in the order those IDs were first seen, then the
 * others by sequence number (checked against Dovecot 2.3 on random
 * mailboxes). */
static void test_refs_tie_break(void)
{
	static const struct tmsg m[] = {
		{ 100, "<a@b>", NULL, NULL, NULL, false },
		{ 100, "<b@b>", "<missing1@b>", NULL, NULL, false },
		{ 100, "<c@b>", "<missing0@b>", NULL, NULL, false },
		{ 100, "<d@b>", NULL, NULL, NULL, false },
		{ 100, "<e@b>", "<missing0@b>", NULL, NULL, false },
	};
	CHECK_THREAD(IMAP_THREAD_REFS, m, "(2)((3)(5))(1)(4)");
	CHECK_THREAD(IMAP_THREAD_REFERENCES, m, "(1)(2)((3)(5))(4)");
}

static void test_orderedsubject(void)
{
	/* imaptest thread-orderedsubject2: dates decide the parent and the
	 * thread order, ties fall back to the sequence. */
	static const struct tmsg m[] = {
		{ 10, NULL, NULL, NULL, "A", false }, { 9, NULL, NULL, NULL, "B", false },
		{ 8, NULL, NULL, NULL, "A", false },  { 7, NULL, NULL, NULL, "B", false },
		{ 30, NULL, NULL, NULL, "A", false }, { 29, NULL, NULL, NULL, "B", false },
		{ 28, NULL, NULL, NULL, "A", false }, { 27, NULL, NULL, NULL, "B", false },
	};
	CHECK_THREAD(IMAP_THREAD_ORDEREDSUBJECT, m, "(4 (2)(8)(6))(3 (1)(7)(5))");
	static const struct tmsg ties[] = {
		{ 1, NULL, NULL, NULL, "Z", false }, { 1, NULL, NULL, NULL, "", false },
		{ 1, NULL, NULL, NULL, NULL, false }, { 1, NULL, NULL, NULL, "Z", true },
		{ 1, NULL, NULL, NULL, "Y", false },
	};
	CHECK_THREAD(IMAP_THREAD_ORDEREDSUBJECT, ties, "(1 4)(2 3)(5)");
	struct buf out = BUF_INIT;
	imap_thread_build(IMAP_THREAD_ORDEREDSUBJECT, NULL, 0, &out);
	imap_thread_build(IMAP_THREAD_REFS, NULL, 0, &out);
	CU_ASSERT_EQUAL(out.len, 0);
	buf_free(&out);
}

/* Counts how often each id 1..n occurs in a thread reply and checks the
 * parentheses balance. */
static bool each_once(const char *s, size_t n)
{
	unsigned *seen = calloc(n + 1, sizeof(*seen));
	long depth = 0;
	bool ok = true;
	for (const char *p = s; *p != '\0';) {
		if (*p == '(') {
			depth++;
			p++;
		} else if (*p == ')') {
			if (--depth < 0)
				ok = false;
			p++;
		} else if (*p == ' ') {
			p++;
		} else {
			char *end;
			unsigned long v = strtoul(p, &end, 10);
			if (end == p || v == 0 || v > n) {
				ok = false;
				break;
			}
			seen[v]++;
			p = end;
		}
	}
	for (size_t i = 1; i <= n; i++)
		if (seen[i] != 1)
			ok = false;
	free(seen);
	return ok && depth == 0;
}

static void test_loops_and_deep_chains(void)
{
	static const struct tmsg loop[] = {
		{ 100, "<a@b>", "<b@b>", NULL, NULL, false },
		{ 101, "<b@b>", "<a@b>", NULL, NULL, false },
		{ 102, "<c@b>", "<c@b> <c@b>", NULL, NULL, false },
		{ 103, "<d@b>", "<a@b> <b@b> <a@b> <d@b>", NULL, NULL, false },
	};
	char *got = run(IMAP_THREAD_REFERENCES, loop, 4);
	CU_ASSERT_TRUE(each_once(got, 4));
	free(got);

	/* 100000 messages, each replying to the one before: nothing may
	 * recurse that deep. */
	enum { N = 100000 };
	struct imap_thread_msg *m = calloc(N, sizeof(*m));
	char id[32], ref[32];
	for (size_t i = 0; i < N; i++) {
		snprintf(id, sizeof(id), "<%zu@x>", i);
		snprintf(ref, sizeof(ref), "<%zu@x>", i - 1);
		m[i].id = (uint32_t)i + 1;
		m[i].date = (int64_t)i;
		imap_thread_msg_set_ids(&m[i], id, strlen(id), i > 0 ? ref : NULL, strlen(ref), NULL, 0);
	}
	struct buf out = BUF_INIT;
	imap_thread_build(IMAP_THREAD_REFS, m, N, &out);
	CU_ASSERT_TRUE(strncmp(buf_cstr(&out), "(1 2 3 4 ", 9) == 0);
	CU_ASSERT_TRUE(each_once(buf_cstr(&out), N));
	buf_free(&out);
	for (size_t i = 0; i < N; i++)
		imap_thread_msg_free(&m[i]);
	free(m);
}

/* Messages that arrive after their replies, each at the bottom of an
 * ever deeper chain: the loop check would walk the whole chain each time.
 * Past IMAP_THREAD_MAX_DEPTH ancestors the link is refused, so the chain
 * breaks into several threads (and the work stays linear). */
static void test_loop_check_is_bounded(void)
{
	enum { K = 2500 };
	struct imap_thread_msg *m = calloc(2 * K, sizeof(*m));
	char id[32], ref[32];
	/* First the replies: message K + i replies to <i>. */
	for (size_t i = 0; i < K; i++) {
		snprintf(id, sizeof(id), "<r%zu@x>", i);
		snprintf(ref, sizeof(ref), "<%zu@x>", i);
		m[i].id = (uint32_t)(K + i + 1);
		m[i].date = (int64_t)(K + i);
		imap_thread_msg_set_ids(&m[i], id, strlen(id), ref, strlen(ref), NULL, 0);
	}
	/* Then <i>, each replying to <i - 1>. */
	for (size_t i = 0; i < K; i++) {
		snprintf(id, sizeof(id), "<%zu@x>", i);
		snprintf(ref, sizeof(ref), "<%zu@x>", i - 1);
		m[K + i].id = (uint32_t)(i + 1);
		m[K + i].date = (int64_t)i;
		imap_thread_msg_set_ids(&m[K + i], id, strlen(id), i > 0 ? ref : NULL, strlen(ref),
					NULL, 0);
	}
	struct buf out = BUF_INIT;
	imap_thread_build(IMAP_THREAD_REFS, m, 2 * K, &out);
	const char *s = buf_cstr(&out);
	CU_ASSERT_TRUE(each_once(s, 2 * K));
	/* Top-level threads: one per IMAP_THREAD_MAX_DEPTH + 1 links. */
	size_t threads = 0;
	long depth = 0;
	for (const char *p = s; *p != '\0'; p++) {
		if (*p == '(' && depth++ == 0)
			threads++;
		else if (*p == ')')
			depth--;
	}
	CU_ASSERT_EQUAL(threads, (K + IMAP_THREAD_MAX_DEPTH) / (IMAP_THREAD_MAX_DEPTH + 1));
	buf_free(&out);
	for (size_t i = 0; i < 2 * K; i++)
		imap_thread_msg_free(&m[i]);
	free(m);
}

static void test_random_inputs_keep_every_message_once(void)
{
	static const char *const ids[] = { "<1@x>", "<2@x>", "<3@x>", "<4@x>", "<5@x>", "<6@x>" };
	static const char *const subjects[] = { "", "A", "B" };
	unsigned seed = 12345;
	for (int round = 0; round < 2000; round++) {
		size_t n = 1 + (size_t)(rand_r(&seed) % 8);
		struct imap_thread_msg m[8];
		memset(m, 0, sizeof(m));
		for (size_t i = 0; i < n; i++) {
			char refs[64] = "";
			int nr = rand_r(&seed) % 4;
			for (int r = 0; r < nr; r++)
				strcat(refs, ids[rand_r(&seed) % 6]);
			const char *mid = rand_r(&seed) % 5 == 0 ? NULL : ids[rand_r(&seed) % 6];
			m[i].id = (uint32_t)i + 1;
			m[i].date = rand_r(&seed) % 3;
			imap_thread_msg_set_ids(&m[i], mid, mid ? strlen(mid) : 0, refs, strlen(refs),
						NULL, 0);
			m[i].base_subject = strdup(subjects[rand_r(&seed) % 3]);
			m[i].reply_or_fwd = rand_r(&seed) % 2;
		}
		for (int alg = IMAP_THREAD_ORDEREDSUBJECT; alg <= IMAP_THREAD_REFS; alg++) {
			struct buf out = BUF_INIT;
			imap_thread_build((enum imap_thread_alg)alg, m, n, &out);
			if (!each_once(buf_cstr(&out), n)) {
				CU_FAIL("a message is missing or repeated");
				round = 2000;
			}
			buf_free(&out);
		}
		for (size_t i = 0; i < n; i++)
			imap_thread_msg_free(&m[i]);
	}
}

static void test_message_id_extraction(void)
{
	struct imap_thread_msg m;
	memset(&m, 0, sizeof(m));
	const char *irt = "Your message of \"Mon\" (from <x@y>) <real@id>\r\n <second@id>";
	imap_thread_msg_set_ids(&m, " <mid@host> (comment)", 21, NULL, 0, irt, strlen(irt));
	CU_ASSERT_STRING_EQUAL(m.message_id, "mid@host");
	CU_ASSERT_EQUAL_FATAL(m.ref_count, 1);
	CU_ASSERT_STRING_EQUAL(m.refs[0], "real@id");
	/* References wins over In-Reply-To; folding inside an ID is removed;
	 * "<>" is no ID. */
	const char *refs = "<a@b>\r\n\t<c@\r\n d> <>";
	imap_thread_msg_set_ids(&m, "garbage", 7, refs, strlen(refs), irt, strlen(irt));
	CU_ASSERT_PTR_NULL(m.message_id);
	CU_ASSERT_EQUAL_FATAL(m.ref_count, 2);
	CU_ASSERT_STRING_EQUAL(m.refs[0], "a@b");
	CU_ASSERT_STRING_EQUAL(m.refs[1], "c@d");
	/* A References field without IDs falls back to In-Reply-To. */
	imap_thread_msg_set_ids(&m, NULL, 0, "none", 4, "<p@q>", 5);
	CU_ASSERT_EQUAL_FATAL(m.ref_count, 1);
	CU_ASSERT_STRING_EQUAL(m.refs[0], "p@q");
	/* An overlong chain keeps the root and the nearest ancestors. */
	struct buf many = BUF_INIT;
	for (int i = 0; i < 2000; i++)
		buf_appendf(&many, " <%d@z>", i);
	imap_thread_msg_set_ids(&m, NULL, 0, (const char *)many.data, many.len, NULL, 0);
	CU_ASSERT_EQUAL_FATAL(m.ref_count, IMAP_THREAD_MAX_REFS);
	CU_ASSERT_STRING_EQUAL(m.refs[0], "0@z");
	CU_ASSERT_STRING_EQUAL(m.refs[IMAP_THREAD_MAX_REFS - 1], "1999@z");
	CU_ASSERT_STRING_EQUAL(m.refs[1], "1501@z");
	buf_free(&many);
	/* Under a memory budget only the parent is kept. */
	imap_thread_msg_set_ids(&m, "<m@z>", 5, "<a@z> <b@z> <c@z>", 17, NULL, 0);
	CU_ASSERT_EQUAL(imap_thread_msg_id_bytes(&m), 4 * 4);
	imap_thread_msg_keep_parent(&m);
	CU_ASSERT_EQUAL_FATAL(m.ref_count, 1);
	CU_ASSERT_STRING_EQUAL(m.refs[0], "c@z");
	CU_ASSERT_EQUAL(imap_thread_msg_id_bytes(&m), 2 * 4);
	imap_thread_msg_keep_parent(&m);
	CU_ASSERT_EQUAL(m.ref_count, 1);
	/* An unclosed bracket ends the scan without an ID. */
	imap_thread_msg_set_ids(&m, "<open", 5, "<x@y> <unclosed", 15, NULL, 0);
	CU_ASSERT_PTR_NULL(m.message_id);
	CU_ASSERT_EQUAL(m.ref_count, 1);
	imap_thread_msg_free(&m);
}

/* Random bytes from an alphabet rich in the characters the scanners act
 * on: every ID found is non-empty and has no white space or brackets, and
 * header lookups stay inside the text (ASan checks the reads). */
static void test_random_field_values(void)
{
	static const char alphabet[] = "<>()\\\"@ \t\r\nab:";
	unsigned seed = 777;
	char text[200];
	for (int round = 0; round < 20000; round++) {
		size_t len = (size_t)(rand_r(&seed) % sizeof(text));
		for (size_t i = 0; i < len; i++)
			text[i] = alphabet[rand_r(&seed) % (sizeof(alphabet) - 1)];
		struct imap_thread_msg m;
		memset(&m, 0, sizeof(m));
		imap_thread_msg_set_ids(&m, text, len, text, len, text, len);
		bool ok = m.ref_count <= IMAP_THREAD_MAX_REFS;
		for (size_t i = 0; i < m.ref_count; i++)
			ok = ok && m.refs[i][0] != '\0' && strpbrk(m.refs[i], "<> \t\r\n") == NULL;
		if (m.message_id != NULL)
			ok = ok && m.message_id[0] != '\0' && strpbrk(m.message_id, "<> \t\r\n") == NULL;
		imap_thread_msg_free(&m);
		struct buf v = BUF_INIT;
		char *copy = malloc(len > 0 ? len : 1); /* exact size: ASan sees overreads */
		memcpy(copy, text, len);
		if (imap_thread_header_get(copy, len, "a", &v))
			ok = ok && v.len <= len && (v.len == 0 || memchr(v.data, '\n', v.len) == NULL);
		free(copy);
		buf_free(&v);
		if (!ok) {
			CU_FAIL("a malformed value gave a bad ID or header value");
			break;
		}
	}
}

static void test_header_get(void)
{
	const char *text = "From: a@b\r\nreferences: <1@x>\r\n\t<2@x>\r\nSubject: s\r\n\r\n"
			   "Message-ID: <body@x>\r\n";
	struct buf v = BUF_INIT;
	CU_ASSERT_TRUE(imap_thread_header_get(text, strlen(text), "References", &v));
	CU_ASSERT_STRING_EQUAL(buf_cstr(&v), "<1@x>\t<2@x>");
	buf_reset(&v);
	CU_ASSERT_TRUE(imap_thread_header_get(text, strlen(text), "subject", &v));
	CU_ASSERT_STRING_EQUAL(buf_cstr(&v), "s");
	buf_reset(&v);
	/* Fields of the body are not the header's. */
	CU_ASSERT_FALSE(imap_thread_header_get(text, strlen(text), "Message-ID", &v));
	/* A name that is only a prefix does not match. */
	CU_ASSERT_FALSE(imap_thread_header_get(text, strlen(text), "Subj", &v));
	/* A header cut off inside a folded value. */
	const char *cut = "X: 1\nIn-Reply-To: <a@b>\n <c";
	CU_ASSERT_TRUE(imap_thread_header_get(cut, strlen(cut), "in-reply-to", &v));
	CU_ASSERT_STRING_EQUAL(buf_cstr(&v), "<a@b> <c");
	buf_free(&v);
}

static void test_alg_names(void)
{
	enum imap_thread_alg a;
	CU_ASSERT_TRUE(imap_thread_alg_parse("refs", 4, &a));
	CU_ASSERT_EQUAL(a, IMAP_THREAD_REFS);
	CU_ASSERT_TRUE(imap_thread_alg_parse("References", 10, &a));
	CU_ASSERT_EQUAL(a, IMAP_THREAD_REFERENCES);
	CU_ASSERT_TRUE(imap_thread_alg_parse("ORDEREDSUBJECT", 14, &a));
	CU_ASSERT_EQUAL(a, IMAP_THREAD_ORDEREDSUBJECT);
	CU_ASSERT_FALSE(imap_thread_alg_parse("REF", 3, &a));
	CU_ASSERT_FALSE(imap_thread_alg_parse("REFSX", 5, &a));
}

const struct test_case imap_thread_cases[] = {
	{ "a truncated References link gives way to the message's own", test_refs_truncated_references_loop },
	{ "duplicate Message-IDs", test_refs_duplicate_message_ids },
	{ "dummy pruning", test_refs_dummies },
	{ "REFERENCES groups roots by base subject", test_refs_subject_grouping },
	{ "REFS orders threads by their newest message", test_refs_orders_threads_by_newest_message },
	{ "REFS breaks date ties as Dovecot does", test_refs_tie_break },
	{ "ORDEREDSUBJECT", test_orderedsubject },
	{ "loops and a 100000-message chain", test_loops_and_deep_chains },
	{ "the loop check is bounded", test_loop_check_is_bounded },
	{ "random inputs keep every message exactly once", test_random_inputs_keep_every_message_once },
	{ "message ID extraction", test_message_id_extraction },
	{ "header field lookup", test_header_get },
	{ "random field values", test_random_field_values },
	{ "algorithm names", test_alg_names },
	{ NULL, NULL },
};

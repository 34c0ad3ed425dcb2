/* Unit tests of the typed codecs of the replication commands
 * (protocol/proto-flags.c and friends): what the writer produces reads back
 * to the same values, and every bound and malformed input is refused. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/mail-limits.h"
#include "protocol/protocol.h"
#include "tests/protocol/tests.h"

/* Parses one whole line; the parser stays alive so that the line's
 * arguments stay valid until the caller destroys it. */
static const struct proto_cmd *parse_line(struct proto_parser **pp, const void *line, size_t len)
{
	size_t used;
	const struct proto_cmd *cmd = NULL;
	*pp = proto_parser_create(NULL);
	int r = proto_parser_parse(*pp, line, len, &used, &cmd);
	CU_ASSERT_EQUAL(r, 1);
	CU_ASSERT_EQUAL(used, len);
	if (r != 1) {
		fprintf(stderr, "\ndoes not parse: %.*s", (int)len, (const char *)line);
		return NULL;
	}
	return cmd;
}

static const struct proto_cmd *parse_str(struct proto_parser **pp, const char *line)
{
	return parse_line(pp, line, strlen(line));
}

/* The first argument of "C1 X <arg>". */
static int flags_of(const char *arg, struct proto_flags *f_r)
{
	char line[16384];
	struct proto_parser *p;
	snprintf(line, sizeof(line), "C1 X %s\r\n", arg);
	const struct proto_cmd *cmd = parse_str(&p, line);
	int r = cmd == NULL || cmd->arg_count != 1 ? -2 : proto_arg_flags(&cmd->args[0], f_r);
	proto_parser_destroy(&p);
	return r;
}

static int uids_of(const char *arg, size_t max, uint32_t **uids_r, size_t *count_r)
{
	char line[512];
	struct proto_parser *p;
	snprintf(line, sizeof(line), "C1 X %s\r\n", arg);
	const struct proto_cmd *cmd = parse_str(&p, line);
	int r = cmd == NULL || cmd->arg_count != 1 ? -2 :
		proto_arg_uids(&cmd->args[0], max, uids_r, count_r);
	proto_parser_destroy(&p);
	return r;
}

static void test_flags_round_trip(void)
{
	const char *kw[] = { "$Label1", "work", "$Junk" };
	struct buf out;
	struct proto_wr w;
	buf_init(&out);
	proto_wr_init(&w, &out);
	proto_wr_begin(&w, "C1", "X");
	proto_wr_flags(&w, PROTO_FLAG_DRAFT | PROTO_FLAG_SEEN | PROTO_FLAG_DELETED, kw, 3);
	proto_wr_end(&w);
	CU_ASSERT_EQUAL(out.len, strlen("C1 X (\\Seen \\Deleted \\Draft $Label1 work $Junk)\r\n"));
	CU_ASSERT(memcmp(out.data, "C1 X (\\Seen \\Deleted \\Draft $Label1 work $Junk)\r\n", out.len) ==
		  0);

	struct proto_parser *p;
	const struct proto_cmd *cmd = parse_line(&p, out.data, out.len);
	struct proto_flags f;
	CU_ASSERT_FATAL(cmd != NULL);
	CU_ASSERT_EQUAL_FATAL(proto_arg_flags(&cmd->args[0], &f), 0);
	CU_ASSERT_EQUAL(f.flags, PROTO_FLAG_DRAFT | PROTO_FLAG_SEEN | PROTO_FLAG_DELETED);
	CU_ASSERT_EQUAL_FATAL(f.keywords.count, 3);
	for (size_t i = 0; i < 3; i++)
		CU_ASSERT_STRING_EQUAL(f.keywords.items[i], kw[i]);
	proto_flags_free(&f);
	CU_ASSERT_EQUAL(f.keywords.count, 0);
	proto_parser_destroy(&p);

	/* Every system flag, and none at all. */
	buf_reset(&out);
	proto_wr_begin(&w, "C1", "X");
	proto_wr_flags(&w, PROTO_FLAGS_ALL, NULL, 0);
	proto_wr_flags(&w, 0, NULL, 0);
	proto_wr_end(&w);
	CU_ASSERT_EQUAL(out.len,
			strlen("C1 X (\\Seen \\Answered \\Flagged \\Deleted \\Draft) ()\r\n"));
	CU_ASSERT(memcmp(out.data, "C1 X (\\Seen \\Answered \\Flagged \\Deleted \\Draft) ()\r\n",
			 out.len) == 0);
	buf_free(&out);

	/* Names of system flags are case-insensitive, a repeat is harmless. */
	CU_ASSERT_EQUAL_FATAL(flags_of("(\\seen \\SEEN \\fLaGgEd)", &f), 0);
	CU_ASSERT_EQUAL(f.flags, PROTO_FLAG_SEEN | PROTO_FLAG_FLAGGED);
	CU_ASSERT_EQUAL(f.keywords.count, 0);
	proto_flags_free(&f);

	for (uint32_t bit = 1; bit <= PROTO_FLAG_DRAFT; bit <<= 1) {
		uint32_t back = 0;
		CU_ASSERT_PTR_NOT_NULL_FATAL(proto_flag_name(bit));
		CU_ASSERT_EQUAL(proto_flag_from_name(proto_flag_name(bit), &back), 0);
		CU_ASSERT_EQUAL(back, bit);
	}
	CU_ASSERT_PTR_NULL(proto_flag_name(0));
	CU_ASSERT_PTR_NULL(proto_flag_name(PROTO_FLAG_DRAFT << 1));
	CU_ASSERT_PTR_NULL(proto_flag_name(PROTO_FLAG_SEEN | PROTO_FLAG_DRAFT));
}

static void test_flags_bounds_and_hostile_input(void)
{
	struct proto_flags f;
	char big[16384];
	size_t n;

	/* Exactly PROTO_MAX_KEYWORDS keywords of the longest length pass... */
	n = 0;
	big[n++] = '(';
	for (int i = 0; i < PROTO_MAX_KEYWORDS; i++) {
		n += (size_t)snprintf(big + n, sizeof(big) - n, "%s%0*d", i > 0 ? " " : "",
				      PROTO_MAX_KEYWORD_LEN, i);
	}
	snprintf(big + n, sizeof(big) - n, " \\Seen)");
	CU_ASSERT_EQUAL_FATAL(flags_of(big, &f), 0);
	CU_ASSERT_EQUAL(f.keywords.count, PROTO_MAX_KEYWORDS);
	CU_ASSERT_EQUAL(strlen(f.keywords.items[0]), PROTO_MAX_KEYWORD_LEN);
	CU_ASSERT_EQUAL(f.flags, PROTO_FLAG_SEEN);
	proto_flags_free(&f);
	/* ... one more keyword does not. */
	snprintf(big + n, sizeof(big) - n, " x)");
	CU_ASSERT_EQUAL(flags_of(big, &f), -1);
	CU_ASSERT_EQUAL(f.keywords.count, 0);
	CU_ASSERT_EQUAL(f.flags, 0);

	/* A keyword one byte too long. */
	char kw[PROTO_MAX_KEYWORD_LEN + 8];
	memset(kw, 'k', sizeof(kw));
	kw[0] = '(';
	kw[PROTO_MAX_KEYWORD_LEN + 2] = ')';
	kw[PROTO_MAX_KEYWORD_LEN + 3] = '\0';
	CU_ASSERT_EQUAL(flags_of(kw, &f), -1);
	kw[PROTO_MAX_KEYWORD_LEN + 1] = ')';
	kw[PROTO_MAX_KEYWORD_LEN + 2] = '\0';
	CU_ASSERT_EQUAL_FATAL(flags_of(kw, &f), 0);
	proto_flags_free(&f);

	static const char *const bad[] = {
		"\\Seen",                  /* not a list */
		"Seen",
		"(\\Recent)",              /* never replicated */
		"(\\Unknown)",
		"(\\*)",                   /* only STORE's removed list may say it */
		"(\\)",
		"(\"quoted\")",            /* keywords are atoms */
		"((\\Seen))",              /* nested */
		"({3}\r\nabc)",            /* a literal */
		"(\\Seen NIL \\Flagged {1}\r\nx)",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&f, 0xa5, sizeof(f));
		int r = flags_of(bad[i], &f);
		CU_ASSERT_EQUAL(r, -1);
		if (r != -1)
			fprintf(stderr, "\naccepted: %s\n", bad[i]);
		/* A refusal leaves nothing to free. */
		CU_ASSERT_EQUAL(f.keywords.count, 0);
		CU_ASSERT_PTR_NULL(f.keywords.items);
	}
	/* "(\\Seen NIL)": NIL is an atom, so a keyword: what the wire said. */
	CU_ASSERT_EQUAL_FATAL(flags_of("(\\Seen NIL)", &f), 0);
	CU_ASSERT_EQUAL(f.keywords.count, 1);
	proto_flags_free(&f);
}

static void test_uids_expand_and_refuse(void)
{
	uint32_t *u;
	size_t n;
	CU_ASSERT_EQUAL_FATAL(uids_of("7,1:3,5", 10, &u, &n), 0);
	CU_ASSERT_EQUAL_FATAL(n, 5);
	CU_ASSERT_EQUAL(u[0], 7);
	CU_ASSERT_EQUAL(u[1], 1);
	CU_ASSERT_EQUAL(u[3], 3);
	CU_ASSERT_EQUAL(u[4], 5);
	free(u);
	/* A reversed range is the same range. */
	CU_ASSERT_EQUAL_FATAL(uids_of("3:1", 3, &u, &n), 0);
	CU_ASSERT_EQUAL(n, 3);
	CU_ASSERT_EQUAL(u[0], 1);
	free(u);
	/* The highest UID the wire carries. */
	CU_ASSERT_EQUAL_FATAL(uids_of("4294967295", 1, &u, &n), 0);
	CU_ASSERT_EQUAL(n, 1);
	CU_ASSERT_EQUAL(u[0], UINT32_MAX);
	free(u);
	/* Exactly max UIDs pass, max + 1 do not, even when split. */
	CU_ASSERT_EQUAL_FATAL(uids_of("1:64000", PROTO_MAX_CHANGE_UIDS, &u, &n), 0);
	CU_ASSERT_EQUAL(n, PROTO_MAX_CHANGE_UIDS);
	free(u);
	u = (uint32_t *)&n; /* must be reset on failure */
	CU_ASSERT_EQUAL(uids_of("1:64000,64001", PROTO_MAX_CHANGE_UIDS, &u, &n), -1);
	CU_ASSERT_PTR_NULL(u);
	CU_ASSERT_EQUAL(n, 0);
	/* A huge range is refused by counting, not by expanding it. */
	CU_ASSERT_EQUAL(uids_of("1:4294967295", PROTO_MAX_CHANGE_UIDS, &u, &n), -1);
	/* '*' is the highest UID the wire carries: the codec knows no mailbox. */
	CU_ASSERT_EQUAL_FATAL(uids_of("*", 1, &u, &n), 0);
	CU_ASSERT_EQUAL(n, 1);
	CU_ASSERT_EQUAL(u[0], UINT32_MAX);
	free(u);
	CU_ASSERT_EQUAL(uids_of("1:*", PROTO_MAX_CHANGE_UIDS, &u, &n), -1);
	static const char *const bad[] = {
		"0", "0:3", "1,", ",1", "1,,2", "1:", ":1", "a", "-1", "01",
		"4294967296", "1:2:3", "(1)", "\"1\"",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = uids_of(bad[i], 100, &u, &n);
		CU_ASSERT_EQUAL(r, -1);
		if (r != -1)
			fprintf(stderr, "\naccepted: %s\n", bad[i]);
	}
	CU_ASSERT_EQUAL(PROTO_MAX_CHANGE_UIDS, 64000);
}


#define G "0123456789abcdef0123456789abcdef"

/* proto_read_save() of one line; the result and *s_r as the codec left it
 * (freed here when it was read). */
static int save_of(const char *line, enum proto_save_rule rule, struct proto_save *s_r)
{
	struct proto_parser *p;
	const char *err = NULL;
	const struct proto_cmd *cmd = parse_str(&p, line);
	int r = cmd == NULL ? -99 : proto_read_save(cmd, rule, s_r, &err);
	if (r != PROTO_CODEC_OK) {
		CU_ASSERT_PTR_NOT_NULL(err);
		CU_ASSERT(err != NULL && err[0] != '\0');
	} else {
		proto_save_free(s_r);
	}
	proto_parser_destroy(&p);
	return r;
}

static void test_save_round_trip(void)
{
	static const char *const kw[] = { "$Label1", "x" };
	struct proto_save out = {
		.date = 1700000000, .tz = -90, .uid = 17, .modseq = 99,
		.f = { PROTO_FLAG_SEEN | PROTO_FLAG_FLAGGED, { (char **)kw, 2, 2 } },
		.text = "From: a@b\r\n\r\nbody\r\n", .text_len = 19,
	};
	CU_ASSERT_EQUAL_FATAL(guid_from_hex(G, &out.guid), 0);
	for (int round = 0; round < 4; round++) {
		bool nil = round % 2 == 1;
		bool assign = round >= 2;
		struct proto_save o = out;
		if (nil)
			o.text = NULL;
		if (assign)
			o.uid = 0, o.modseq = 0;
		struct buf b;
		struct proto_wr w;
		buf_init(&b);
		proto_wr_init(&w, &b);
		proto_wr_begin(&w, "C7", "SAVE");
		proto_wr_save(&w, &o);
		proto_wr_atom(&w, "ORIGIN");
		proto_wr_u64(&w, 3);
		proto_wr_end(&w);
		char want[256];
		snprintf(want, sizeof(want), "C7 SAVE 1700000000-0130 %s " G
			 " (\\Seen \\Flagged $Label1 x) %s ORIGIN 3\r\n",
			 assign ? "0 0" : "17 99",
			 nil ? "NIL" : "{19}\r\nFrom: a@b\r\n\r\nbody\r\n");
		CU_ASSERT_EQUAL(b.len, strlen(want));
		CU_ASSERT(b.len == strlen(want) && memcmp(b.data, want, b.len) == 0);

		struct proto_parser *p;
		const struct proto_cmd *cmd = parse_line(&p, b.data, b.len);
		CU_ASSERT_FATAL(cmd != NULL);
		size_t npos;
		const char *err;
		CU_ASSERT_EQUAL(proto_cmd_validate(cmd, &npos, &err), 0);
		CU_ASSERT_EQUAL(npos, 6);
		struct proto_save in;
		enum proto_save_rule rule = assign ? PROTO_SAVE_ASSIGN : PROTO_SAVE_GIVEN;
		int r = proto_read_save(cmd, rule, &in, &err);
		CU_ASSERT_EQUAL_FATAL(r, PROTO_CODEC_OK);
		CU_ASSERT_EQUAL(in.date, o.date);
		CU_ASSERT_EQUAL(in.tz, o.tz);
		CU_ASSERT_EQUAL(in.uid, o.uid);
		CU_ASSERT_EQUAL(in.modseq, o.modseq);
		CU_ASSERT(guid_equal(&in.guid, &o.guid));
		CU_ASSERT_EQUAL(in.f.flags, o.f.flags);
		CU_ASSERT_EQUAL_FATAL(in.f.keywords.count, 2);
		CU_ASSERT_STRING_EQUAL(in.f.keywords.items[0], "$Label1");
		CU_ASSERT_STRING_EQUAL(in.f.keywords.items[1], "x");
		if (nil) {
			CU_ASSERT_PTR_NULL(in.text);
			CU_ASSERT_PTR_NULL(in.text_arg);
		} else {
			CU_ASSERT_EQUAL(in.text_len, 19);
			CU_ASSERT(in.text != NULL && memcmp(in.text, o.text, 19) == 0);
			CU_ASSERT_PTR_EQUAL(in.text_arg, &cmd->args[5]);
		}
		/* Read back and written again: the same bytes. */
		struct buf b2;
		buf_init(&b2);
		proto_wr_init(&w, &b2);
		proto_wr_begin(&w, "C7", "SAVE");
		proto_wr_save(&w, &in);
		proto_wr_atom(&w, "ORIGIN");
		proto_wr_u64(&w, 3);
		proto_wr_end(&w);
		CU_ASSERT(b2.len == b.len && memcmp(b2.data, b.data, b.len) == 0);
		buf_free(&b2);
		proto_save_free(&in);
		CU_ASSERT_EQUAL(in.f.keywords.count, 0);
		/* The other rule refuses the same line. */
		r = proto_read_save(cmd, assign ? PROTO_SAVE_GIVEN : PROTO_SAVE_ASSIGN, &in, &err);
		CU_ASSERT_EQUAL(r, PROTO_CODEC_BAD);
		proto_parser_destroy(&p);
		buf_free(&b);
	}
}

static void test_save_bounds_and_hostile_input(void)
{
	struct proto_save s;
	char line[512];
	const enum proto_save_rule given = PROTO_SAVE_GIVEN;
#define SAVE_LINE(uid, modseq) \
	(snprintf(line, sizeof(line), "C1 SAVE 1700000000+0100 %s %s " G " (\\Seen) NIL\r\n", \
		  uid, modseq), line)
	char umax[24], umax1[24], mmax[24], mmax1[24];
	snprintf(umax, sizeof(umax), "%u", (unsigned)MAIL_UID_MAX);
	snprintf(umax1, sizeof(umax1), "%u", (unsigned)MAIL_UID_MAX + 1);
	snprintf(mmax, sizeof(mmax), "%llu", (unsigned long long)MAIL_MODSEQ_MAX);
	snprintf(mmax1, sizeof(mmax1), "%llu", (unsigned long long)MAIL_MODSEQ_MAX + 1);

	/* The highest values of lib/mail-limits.h pass, one above is NO [LIMIT]. */
	CU_ASSERT_EQUAL(save_of(SAVE_LINE(umax, mmax), given, &s), PROTO_CODEC_OK);
	CU_ASSERT_EQUAL(save_of(SAVE_LINE("1", "1"), given, &s), PROTO_CODEC_OK);
	CU_ASSERT_EQUAL(save_of(SAVE_LINE(umax1, "1"), given, &s), PROTO_CODEC_LIMIT);
	CU_ASSERT_EQUAL(save_of(SAVE_LINE("4294967295", "1"), given, &s), PROTO_CODEC_LIMIT);
	CU_ASSERT_EQUAL(save_of(SAVE_LINE("1", mmax1), given, &s), PROTO_CODEC_LIMIT);
	CU_ASSERT_EQUAL(save_of(SAVE_LINE("1", "9223372036854775807"), given, &s),
			PROTO_CODEC_LIMIT);
	/* Past what the wire carries at all: malformed. */
	CU_ASSERT_EQUAL(save_of(SAVE_LINE("4294967296", "1"), given, &s), PROTO_CODEC_BAD);
	CU_ASSERT_EQUAL(save_of(SAVE_LINE("1", "9223372036854775808"), given, &s),
			PROTO_CODEC_BAD);
	CU_ASSERT_EQUAL(save_of(SAVE_LINE("1", "18446744073709551616"), given, &s),
			PROTO_CODEC_BAD);
	/* UID 0 and modseq 0 only in a request, and there both. */
	CU_ASSERT_EQUAL(save_of(SAVE_LINE("0", "5"), given, &s), PROTO_CODEC_BAD);
	CU_ASSERT_EQUAL(save_of(SAVE_LINE("5", "0"), given, &s), PROTO_CODEC_BAD);
	CU_ASSERT_EQUAL(save_of(SAVE_LINE("0", "0"), given, &s), PROTO_CODEC_BAD);
	CU_ASSERT_EQUAL(save_of(SAVE_LINE("0", "0"), PROTO_SAVE_ASSIGN, &s), PROTO_CODEC_OK);
	CU_ASSERT_EQUAL(save_of(SAVE_LINE("0", "5"), PROTO_SAVE_ASSIGN, &s), PROTO_CODEC_BAD);
	CU_ASSERT_EQUAL(save_of(SAVE_LINE("5", "0"), PROTO_SAVE_ASSIGN, &s), PROTO_CODEC_BAD);
	/* A request is never past the limits: it names no UID. */
	CU_ASSERT_EQUAL(save_of(SAVE_LINE(umax1, "0"), PROTO_SAVE_ASSIGN, &s), PROTO_CODEC_BAD);
#undef SAVE_LINE

	static const char *const bad[] = {
		"C1 SAVE\r\n",
		"C1 SAVE 1700000000+0100 1 1 " G " ()\r\n", /* no text */
		"C1 SAVE 1700000000+0100 1 1 00000000000000000000000000000000 () NIL\r\n",
		"C1 SAVE 1700000000+0100 1 1 " G "0 () NIL\r\n",
		"C1 SAVE 1700000000 1 1 " G " () NIL\r\n",
		"C1 SAVE x 1 1 " G " () NIL\r\n",
		"C1 SAVE 1700000000+0100 01 1 " G " () NIL\r\n",
		"C1 SAVE 1700000000+0100 -1 1 " G " () NIL\r\n",
		"C1 SAVE 1700000000+0100 1 1 " G " () nil\r\n",
		"C1 SAVE 1700000000+0100 1 1 " G " () \"text\"\r\n",
		"C1 SAVE 1700000000+0100 1 1 " G " () (NIL)\r\n",
		"C1 SAVE 1700000000+0100 1 1 " G " \\Seen NIL\r\n",
		"C1 SAVE 1700000000+0100 1 1 " G " (\\Recent) {1}\r\nx\r\n",
		"C1 SAVE 1700000000+0100 1 1 " G " ({1}\r\nx) NIL\r\n",
		"C1 SAVE (1) 1 1 " G " () NIL\r\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = save_of(bad[i], given, &s);
		CU_ASSERT_EQUAL(r, PROTO_CODEC_BAD);
		if (r != PROTO_CODEC_BAD)
			fprintf(stderr, "\nnot refused as malformed (%d): %s", r, bad[i]);
	}
	/* Refused with a flag list read: nothing leaks (ASan checks). */
	CU_ASSERT_EQUAL(save_of("C1 SAVE 1700000000+0100 4294967295 1 " G
				" (a b c) NIL\r\n", given, &s), PROTO_CODEC_LIMIT);
	CU_ASSERT_EQUAL(s.f.keywords.count, 0);
	CU_ASSERT_PTR_NULL(s.f.keywords.items);
	/* An empty literal is a text, not NIL. */
	struct proto_parser *p;
	const char *err;
	const struct proto_cmd *cmd =
		parse_str(&p, "C1 SAVE 1700000000+0100 1 1 " G " () {0}\r\n\r\n");
	CU_ASSERT_FATAL(cmd != NULL);
	CU_ASSERT_EQUAL_FATAL(proto_read_save(cmd, given, &s, &err), PROTO_CODEC_OK);
	CU_ASSERT_PTR_NOT_NULL(s.text);
	CU_ASSERT_EQUAL(s.text_len, 0);
	proto_save_free(&s);
	proto_parser_destroy(&p);
}

static int store_of(const char *line, enum proto_store_rule rule, size_t max,
		    struct proto_store *s_r)
{
	struct proto_parser *p;
	const char *err = NULL;
	const struct proto_cmd *cmd = parse_str(&p, line);
	int r = cmd == NULL ? -99 : proto_read_store(cmd, rule, max, s_r, &err);
	if (r != PROTO_CODEC_OK) {
		CU_ASSERT(err != NULL && err[0] != '\0');
		CU_ASSERT_PTR_NULL(s_r->uids);
		CU_ASSERT_EQUAL(s_r->add.keywords.count + s_r->rm.keywords.count, 0);
	}
	proto_parser_destroy(&p);
	return r;
}

#define U9 "UNCHANGEDSINCE 9\r\n"

static void test_store_round_trip(void)
{
	static const char *const kw[] = { "$Junk" };
	uint32_t uids[] = { 1, 2, 3, 4, 5, 7 };
	struct proto_flags fl = { PROTO_FLAG_SEEN, { (char **)kw, 1, 1 } };
	static const struct {
		enum proto_store_rule rule;
		int op; /* 0 add, 1 remove, 2 replace */
		const char *want;
	} cases[] = {
		{ PROTO_STORE_REQUEST, 0, "C10 STORE 1:5,7 1233 (\\Seen $Junk) () " U9 },
		{ PROTO_STORE_REQUEST, 1, "C10 STORE 1:5,7 1233 () (\\Seen $Junk) " U9 },
		{ PROTO_STORE_REQUEST, 2, "C10 STORE 1:5,7 1233 (\\Seen $Junk) (\\*) " U9 },
		{ PROTO_STORE_GIVEN, 2, "C10 STORE 1:5,7 1233 (\\Seen $Junk) (\\*) " U9 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct proto_store o = { .uids = uids, .uid_count = 6, .modseq = 1233 };
		if (cases[i].op == 1)
			o.rm = fl;
		else
			o.add = fl;
		o.replace = cases[i].op == 2;
		struct buf b;
		struct proto_wr w;
		buf_init(&b);
		proto_wr_init(&w, &b);
		proto_wr_begin(&w, "C10", "STORE");
		proto_wr_store(&w, &o);
		proto_wr_atom(&w, "UNCHANGEDSINCE");
		proto_wr_u64(&w, 9);
		proto_wr_end(&w);
		CU_ASSERT_EQUAL(b.len, strlen(cases[i].want));
		CU_ASSERT(b.len == strlen(cases[i].want) &&
			  memcmp(b.data, cases[i].want, b.len) == 0);

		struct proto_parser *p;
		const struct proto_cmd *cmd = parse_line(&p, b.data, b.len);
		CU_ASSERT_FATAL(cmd != NULL);
		size_t npos;
		const char *err;
		CU_ASSERT_EQUAL(proto_cmd_validate(cmd, &npos, &err), 0);
		CU_ASSERT_EQUAL(npos, 4);
		struct proto_store in;
		CU_ASSERT_EQUAL_FATAL(proto_read_store(cmd, cases[i].rule, 6, &in, &err),
				      PROTO_CODEC_OK);
		CU_ASSERT_EQUAL_FATAL(in.uid_count, 6);
		CU_ASSERT(memcmp(in.uids, uids, sizeof(uids)) == 0);
		CU_ASSERT_EQUAL(in.modseq, 1233);
		CU_ASSERT_EQUAL(in.replace, o.replace);
		const struct proto_flags *set = cases[i].op == 1 ? &in.rm : &in.add;
		const struct proto_flags *empty = cases[i].op == 1 ? &in.add : &in.rm;
		CU_ASSERT_EQUAL(set->flags, PROTO_FLAG_SEEN);
		CU_ASSERT_EQUAL_FATAL(set->keywords.count, 1);
		CU_ASSERT_STRING_EQUAL(set->keywords.items[0], "$Junk");
		CU_ASSERT_EQUAL(empty->flags, 0);
		CU_ASSERT_EQUAL(empty->keywords.count, 0);
		struct buf b2;
		buf_init(&b2);
		proto_wr_init(&w, &b2);
		proto_wr_begin(&w, "C10", "STORE");
		proto_wr_store(&w, &in);
		proto_wr_atom(&w, "UNCHANGEDSINCE");
		proto_wr_u64(&w, 9);
		proto_wr_end(&w);
		CU_ASSERT(b2.len == b.len && memcmp(b2.data, b.data, b.len) == 0);
		buf_free(&b2);
		proto_store_free(&in);
		CU_ASSERT_PTR_NULL(in.uids);
		/* Fewer UIDs allowed than the set has: refused. */
		CU_ASSERT_EQUAL(proto_read_store(cmd, cases[i].rule, 5, &in, &err), PROTO_CODEC_BAD);
		/* A change always replaces. */
		if (cases[i].op != 2)
			CU_ASSERT_EQUAL(proto_read_store(cmd, PROTO_STORE_GIVEN, 6, &in, &err),
					PROTO_CODEC_BAD);
		proto_parser_destroy(&p);
		buf_free(&b);
	}
}

static void test_store_bounds_and_hostile_input(void)
{
	struct proto_store s;
	const enum proto_store_rule given = PROTO_STORE_GIVEN, req = PROTO_STORE_REQUEST;
	/* The highest UID and modseq of lib/mail-limits.h pass, one above is
	 * NO [LIMIT] for a change. */
	CU_ASSERT_EQUAL(store_of("C1 STORE 2147483647 4611686018427387903 () (\\*)\r\n", given, 1,
				 &s), PROTO_CODEC_OK);
	CU_ASSERT_EQUAL(s.uids[0], MAIL_UID_MAX);
	proto_store_free(&s);
	CU_ASSERT_EQUAL(store_of("C1 STORE 1,2147483648 5 () (\\*)\r\n", given, 2, &s),
			PROTO_CODEC_LIMIT);
	CU_ASSERT_EQUAL(store_of("C1 STORE * 5 () (\\*)\r\n", given, 1, &s), PROTO_CODEC_LIMIT);
	CU_ASSERT_EQUAL(store_of("C1 STORE 1 4611686018427387904 () (\\*)\r\n", given, 1, &s),
			PROTO_CODEC_LIMIT);
	/* A request names UIDs the master may not hold; it is not refused. */
	CU_ASSERT_EQUAL(store_of("C1 STORE 2147483648 0 (\\Seen) ()\r\n", req, 1, &s),
			PROTO_CODEC_OK);
	proto_store_free(&s);
	/* Exactly max UIDs, and one more. */
	const size_t max = PROTO_MAX_CHANGE_UIDS;
	CU_ASSERT_EQUAL(store_of("C1 STORE 1:64000 5 () (\\*)\r\n", given, max, &s), PROTO_CODEC_OK);
	CU_ASSERT_EQUAL(s.uid_count, PROTO_MAX_CHANGE_UIDS);
	proto_store_free(&s);
	CU_ASSERT_EQUAL(store_of("C1 STORE 1:64001 5 () (\\*)\r\n", given, max, &s),
			PROTO_CODEC_BAD);
	CU_ASSERT_EQUAL(store_of("C1 STORE 1:4294967295 5 () (\\*)\r\n", req, max, &s),
			PROTO_CODEC_BAD);
	static const struct {
		const char *line;
		enum proto_store_rule rule;
	} bad[] = {
		{ "C1 STORE 1 5 (\\Seen)\r\n", PROTO_STORE_REQUEST },
		{ "C1 STORE 1 5 (\\Seen) (\\Draft)\r\n", PROTO_STORE_REQUEST }, /* add and remove */
		{ "C1 STORE 1 5 ($a) ($b)\r\n", PROTO_STORE_REQUEST },
		{ "C1 STORE 0 5 (\\Seen) ()\r\n", PROTO_STORE_REQUEST },
		{ "C1 STORE 1, 5 (\\Seen) ()\r\n", PROTO_STORE_REQUEST },
		{ "C1 STORE 1 -5 (\\Seen) ()\r\n", PROTO_STORE_REQUEST },
		{ "C1 STORE 1 9223372036854775808 (\\Seen) ()\r\n", PROTO_STORE_REQUEST },
		{ "C1 STORE 1 5 (\\Recent) ()\r\n", PROTO_STORE_REQUEST },
		{ "C1 STORE 1 5 () (\\Bogus)\r\n", PROTO_STORE_REQUEST },
		{ "C1 STORE 1 5 () (\\* \\Seen)\r\n", PROTO_STORE_REQUEST },
		{ "C1 STORE 1 5 (\\*) ()\r\n", PROTO_STORE_REQUEST },
		{ "C1 STORE 1 5 () \\*\r\n", PROTO_STORE_REQUEST },
		{ "C1 STORE 1 5 (\\Seen) ()\r\n", PROTO_STORE_GIVEN },  /* a change replaces */
		{ "C1 STORE 1 5 (\\Seen) (\\Seen)\r\n", PROTO_STORE_GIVEN },
		{ "C1 STORE 1 0 (\\Seen) (\\*)\r\n", PROTO_STORE_GIVEN }, /* modseq 0 */
		{ "C1 STORE (1) 5 (\\Seen) (\\*)\r\n", PROTO_STORE_GIVEN },
		{ "C1 STORE 1 5 ({1}\r\nx) (\\*)\r\n", PROTO_STORE_GIVEN },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = store_of(bad[i].line, bad[i].rule, 10, &s);
		CU_ASSERT_EQUAL(r, PROTO_CODEC_BAD);
		if (r != PROTO_CODEC_BAD)
			fprintf(stderr, "\nnot refused as malformed (%d): %s", r, bad[i].line);
	}
	/* Empty lists on both sides: a STORE that only raises modseqs. */
	CU_ASSERT_EQUAL(store_of("C1 STORE 1 5 () ()\r\n", req, 1, &s), PROTO_CODEC_OK);
	CU_ASSERT(!s.replace && s.add.flags == 0 && s.rm.flags == 0);
	proto_store_free(&s);
}

static int expunge_of(const char *line, enum proto_expunge_rule rule, size_t max,
		      struct proto_expunge *e_r)
{
	struct proto_parser *p;
	const char *err = NULL;
	const struct proto_cmd *cmd = parse_str(&p, line);
	int r = cmd == NULL ? -99 : proto_read_expunge(cmd, rule, max, e_r, &err);
	if (r != PROTO_CODEC_OK) {
		CU_ASSERT(err != NULL && err[0] != '\0');
		CU_ASSERT_PTR_NULL(e_r->uids);
	}
	proto_parser_destroy(&p);
	return r;
}

static void test_expunge_round_trip_and_bounds(void)
{
	uint32_t uids[] = { 7, 1, 2, 3, 4, 5 };
	const enum proto_expunge_rule given = PROTO_EXPUNGE_GIVEN, req = PROTO_EXPUNGE_REQUEST;
	for (int assign = 0; assign < 2; assign++) {
		struct proto_expunge o = { uids, 6, assign ? 0 : 1236 };
		struct buf b;
		struct proto_wr w;
		buf_init(&b);
		proto_wr_init(&w, &b);
		proto_wr_begin(&w, "C9", "EXPUNGE");
		proto_wr_expunge(&w, &o);
		proto_wr_end(&w);
		const char *want = assign ? "C9 EXPUNGE 1:5,7 0\r\n" : "C9 EXPUNGE 1:5,7 1236\r\n";
		CU_ASSERT(b.len == strlen(want) && memcmp(b.data, want, b.len) == 0);
		struct proto_expunge in;
		enum proto_expunge_rule rule = assign ? req : given;
		CU_ASSERT_EQUAL_FATAL(expunge_of(want, rule, 6, &in), PROTO_CODEC_OK);
		CU_ASSERT_EQUAL_FATAL(in.uid_count, 6);
		CU_ASSERT_EQUAL(in.uids[0], 1);
		CU_ASSERT_EQUAL(in.uids[5], 7);
		CU_ASSERT_EQUAL(in.modseq, o.modseq);
		proto_expunge_free(&in);
		CU_ASSERT_EQUAL(expunge_of(want, rule, 5, &in), PROTO_CODEC_BAD);
		CU_ASSERT_EQUAL(expunge_of(want, assign ? given : req, 6, &in), PROTO_CODEC_BAD);
		buf_free(&b);
	}
	struct proto_expunge e;
	CU_ASSERT_EQUAL(expunge_of("C1 EXPUNGE 2147483647 4611686018427387903\r\n", given, 1, &e),
			PROTO_CODEC_OK);
	proto_expunge_free(&e);
	CU_ASSERT_EQUAL(expunge_of("C1 EXPUNGE 1,2147483648 5\r\n", given, 2, &e),
			PROTO_CODEC_LIMIT);
	CU_ASSERT_EQUAL(expunge_of("C1 EXPUNGE 1 4611686018427387904\r\n", given, 1, &e),
			PROTO_CODEC_LIMIT);
	CU_ASSERT_EQUAL(expunge_of("C1 EXPUNGE 4294967295 0\r\n", req, 1, &e), PROTO_CODEC_OK);
	proto_expunge_free(&e);
	static const char *const bad[] = {
		"C1 EXPUNGE 1\r\n", "C1 EXPUNGE 0 5\r\n", "C1 EXPUNGE 1: 5\r\n",
		"C1 EXPUNGE (1) 5\r\n",
		"C1 EXPUNGE 1 -1\r\n", "C1 EXPUNGE 1 9223372036854775808\r\n", "C1 EXPUNGE 1 0\r\n",
		"C1 EXPUNGE 1:4294967295 5\r\n", "C1 EXPUNGE \"1\" 5\r\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = expunge_of(bad[i], given, PROTO_MAX_CHANGE_UIDS, &e);
		CU_ASSERT_EQUAL(r, PROTO_CODEC_BAD);
		if (r != PROTO_CODEC_BAD)
			fprintf(stderr, "\nnot refused as malformed (%d): %s", r, bad[i]);
	}
	CU_ASSERT_EQUAL(expunge_of("C1 EXPUNGE 1 5\r\n", req, 1, &e), PROTO_CODEC_BAD);
	/* A sync's: the client's modseq 0 and the server's both read, the
	 * bounds hold. */
	const enum proto_expunge_rule sync = PROTO_EXPUNGE_SYNC;
	CU_ASSERT_EQUAL(expunge_of("C1 EXPUNGE 3:4 0\r\n", sync, 2, &e), PROTO_CODEC_OK);
	CU_ASSERT_EQUAL(e.uid_count, 2);
	CU_ASSERT_EQUAL(e.modseq, 0);
	proto_expunge_free(&e);
	CU_ASSERT_EQUAL(expunge_of("C1 EXPUNGE 3 77 GUIDS (x)\r\n", sync, 1, &e), PROTO_CODEC_OK);
	CU_ASSERT_EQUAL(e.modseq, 77);
	proto_expunge_free(&e);
	CU_ASSERT_EQUAL(expunge_of("C1 EXPUNGE 2147483648 5\r\n", sync, 1, &e), PROTO_CODEC_LIMIT);
	CU_ASSERT_EQUAL(expunge_of("C1 EXPUNGE 1 4611686018427387904\r\n", sync, 1, &e),
			PROTO_CODEC_LIMIT);
	CU_ASSERT_EQUAL(expunge_of("C1 EXPUNGE 1:3 0\r\n", sync, 2, &e), PROTO_CODEC_BAD);
	CU_ASSERT_EQUAL(expunge_of("C1 EXPUNGE 1 -1\r\n", sync, 1, &e), PROTO_CODEC_BAD);
}

static int uidfix_of(const char *line, size_t max, struct proto_uidfix *f_r)
{
	struct proto_parser *p;
	const char *err = NULL;
	const struct proto_cmd *cmd = parse_str(&p, line);
	int r = cmd == NULL ? -99 : proto_read_uidfix(cmd, max, f_r, &err);
	if (r != PROTO_CODEC_OK) {
		CU_ASSERT(err != NULL && err[0] != '\0');
		CU_ASSERT_PTR_NULL(f_r->old_uids);
		CU_ASSERT_PTR_NULL(f_r->new_uids);
	}
	proto_parser_destroy(&p);
	return r;
}

/* UIDFIX old new (SPEC.md 10.2): pairs in order, as many new as old. */
static void test_uidfix_round_trip_and_bounds(void)
{
	uint32_t o[] = { 4, 5, 9 }, n[] = { 11, 12, 13 };
	struct buf b;
	struct proto_wr w;
	buf_init(&b);
	proto_wr_init(&w, &b);
	proto_wr_begin(&w, "S3", "UIDFIX");
	proto_wr_uidfix(&w, o, n, 3);
	proto_wr_end(&w);
	const char *want = "S3 UIDFIX 4:5,9 11:13\r\n";
	CU_ASSERT(b.len == strlen(want) && memcmp(b.data, want, b.len) == 0);
	buf_free(&b);
	struct proto_uidfix f;
	CU_ASSERT_EQUAL_FATAL(uidfix_of(want, 3, &f), PROTO_CODEC_OK);
	CU_ASSERT_EQUAL_FATAL(f.count, 3);
	for (size_t i = 0; i < 3; i++) {
		CU_ASSERT_EQUAL(f.old_uids[i], o[i]);
		CU_ASSERT_EQUAL(f.new_uids[i], n[i]);
	}
	proto_uidfix_free(&f);
	CU_ASSERT_PTR_NULL(f.old_uids);
	CU_ASSERT_EQUAL(uidfix_of(want, 2, &f), PROTO_CODEC_BAD);
	CU_ASSERT_EQUAL(uidfix_of("S3 UIDFIX 1 2147483648\r\n", 1, &f), PROTO_CODEC_LIMIT);
	CU_ASSERT_EQUAL(uidfix_of("S3 UIDFIX 2147483648 1\r\n", 1, &f), PROTO_CODEC_LIMIT);
	static const char *const bad[] = {
		"S3 UIDFIX 1\r\n", "S3 UIDFIX 1:2 3\r\n", "S3 UIDFIX 1 2:3\r\n", "S3 UIDFIX 0 1\r\n",
		"S3 UIDFIX 1 2 3\r\n", "S3 UIDFIX (1) 2\r\n", "S3 UIDFIX 1 \"2\"\r\n",
		"S3 UIDFIX 5,4 6:7\r\n", "S3 UIDFIX 4:5 7,6\r\n", "S3 UIDFIX 4,4 6:7\r\n",
	};
	/* Pairs whose new UIDs do not ascend with the old go on lines of
	 * their own: a set would sort them apart. */
	uint32_t po[] = { 3, 5, 6, 8, 9 }, pn[] = { 21, 20, 22, 23, 24 };
	CU_ASSERT_EQUAL(proto_uidfix_run(po, pn, 5, 100), 1);
	CU_ASSERT_EQUAL(proto_uidfix_run(po + 1, pn + 1, 4, 100), 4);
	CU_ASSERT_EQUAL(proto_uidfix_run(po + 1, pn + 1, 4, 2), 2);
	CU_ASSERT_EQUAL(proto_uidfix_run(po, pn, 0, 100), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = uidfix_of(bad[i], 10, &f);
		CU_ASSERT_EQUAL(r, PROTO_CODEC_BAD);
		if (r != PROTO_CODEC_BAD)
			fprintf(stderr, "\nnot refused as malformed (%d): %s", r, bad[i]);
	}
}

static int fetch_of(const char *line, size_t max, struct proto_fetch *f_r)
{
	struct proto_parser *p;
	const char *err = NULL;
	const struct proto_cmd *cmd = parse_str(&p, line);
	int r = cmd == NULL ? -99 : proto_read_fetch(cmd, max, f_r, &err);
	if (r != PROTO_CODEC_OK) {
		CU_ASSERT(err != NULL && err[0] != '\0');
		CU_ASSERT_PTR_NULL(f_r->uids);
		CU_ASSERT_EQUAL(f_r->uid_count, 0);
	}
	proto_parser_destroy(&p);
	return r;
}

/* FETCH uidset (SPEC.md 8.5): the set as the sender wrote it, at most max
 * UIDs; a UID nobody holds is the answer's MISSING, not an error. */
static void test_fetch_round_trip_and_bounds(void)
{
	uint32_t u[] = { 46, 48, 49, 50, 7 };
	struct buf b;
	struct proto_wr w;
	buf_init(&b);
	proto_wr_init(&w, &b);
	proto_wr_begin(&w, "C13", "FETCH");
	proto_wr_fetch(&w, u, 4);
	proto_wr_end(&w);
	const char *want = "C13 FETCH 46,48:50\r\n";
	CU_ASSERT(b.len == strlen(want) && memcmp(b.data, want, b.len) == 0);
	buf_free(&b);
	struct proto_fetch f;
	CU_ASSERT_EQUAL_FATAL(fetch_of(want, 4, &f), PROTO_CODEC_OK);
	CU_ASSERT_EQUAL_FATAL(f.uid_count, 4);
	for (size_t i = 0; i < 4; i++)
		CU_ASSERT_EQUAL(f.uids[i], u[i]);
	proto_fetch_free(&f);
	CU_ASSERT_PTR_NULL(f.uids);
	CU_ASSERT_EQUAL(f.uid_count, 0);
	/* One past max is refused whole, not cut. */
	CU_ASSERT_EQUAL(fetch_of(want, 3, &f), PROTO_CODEC_BAD);
	/* Read in the set's order, as the receiver answers them. */
	CU_ASSERT_EQUAL_FATAL(fetch_of("C2 FETCH 9,3\r\n", 2, &f), PROTO_CODEC_OK);
	CU_ASSERT_EQUAL_FATAL(f.uid_count, 2);
	CU_ASSERT_EQUAL(f.uids[0], 9);
	CU_ASSERT_EQUAL(f.uids[1], 3);
	proto_fetch_free(&f);
	/* Past lib/mail-limits.h: no message has that UID, so it is read and
	 * answered MISSING (8.5 has no NO [LIMIT]). */
	CU_ASSERT_EQUAL_FATAL(fetch_of("C2 FETCH 4294967295\r\n", 1, &f), PROTO_CODEC_OK);
	CU_ASSERT_EQUAL(f.uids[0], 4294967295u);
	proto_fetch_free(&f);
	static const char *const bad[] = {
		"C2 FETCH\r\n", "C2 FETCH 0\r\n", "C2 FETCH 1 2\r\n", "C2 FETCH (1)\r\n",
		"C2 FETCH \"1\"\r\n", "C2 FETCH {1}\r\n1\r\n", "C2 FETCH 1,\r\n",
		"C2 FETCH 4294967296\r\n", "C2 FETCH 1:x\r\n", "C2 FETCH 1:4294967295\r\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = fetch_of(bad[i], 10, &f);
		CU_ASSERT_EQUAL(r, PROTO_CODEC_BAD);
		if (r != PROTO_CODEC_BAD)
			fprintf(stderr, "\nnot refused as malformed (%d): %s", r, bad[i]);
	}
}

static int flags_line_of(const char *line, struct proto_flags_line *l_r)
{
	struct proto_parser *p;
	const char *err = NULL;
	const struct proto_cmd *cmd = parse_str(&p, line);
	int r = cmd == NULL ? -99 : proto_read_flags_line(cmd, l_r, &err);
	if (r != PROTO_CODEC_OK) {
		CU_ASSERT(err != NULL && err[0] != '\0');
		CU_ASSERT_PTR_NULL(l_r->f.keywords.items);
	}
	proto_parser_destroy(&p);
	return r;
}

static void test_flags_line_round_trip_and_bounds(void)
{
	static const char *const kw[] = { "$Label1" };
	struct proto_flags_line o = { 3, 1240, { PROTO_FLAG_SEEN | PROTO_FLAG_ANSWERED,
						 { (char **)kw, 1, 1 } } };
	struct buf b;
	struct proto_wr w;
	buf_init(&b);
	proto_wr_init(&w, &b);
	proto_wr_begin(&w, "C10", "FLAGS");
	proto_wr_flags_line(&w, &o);
	proto_wr_end(&w);
	const char *want = "C10 FLAGS 3 1240 (\\Seen \\Answered $Label1)\r\n";
	CU_ASSERT(b.len == strlen(want) && memcmp(b.data, want, b.len) == 0);
	buf_free(&b);
	struct proto_flags_line l;
	CU_ASSERT_EQUAL_FATAL(flags_line_of(want, &l), PROTO_CODEC_OK);
	CU_ASSERT_EQUAL(l.uid, 3);
	CU_ASSERT_EQUAL(l.modseq, 1240);
	CU_ASSERT_EQUAL(l.f.flags, PROTO_FLAG_SEEN | PROTO_FLAG_ANSWERED);
	CU_ASSERT_EQUAL_FATAL(l.f.keywords.count, 1);
	CU_ASSERT_STRING_EQUAL(l.f.keywords.items[0], "$Label1");
	proto_flags_free(&l.f);
	/* Options after the three arguments are the caller's. */
	CU_ASSERT_EQUAL(flags_line_of("C1 FLAGS 2147483647 4611686018427387903 () STAMPS ()\r\n",
				      &l), PROTO_CODEC_OK);
	proto_flags_free(&l.f);
	CU_ASSERT_EQUAL(flags_line_of("C1 FLAGS 2147483648 5 (\\Seen)\r\n", &l), PROTO_CODEC_LIMIT);
	CU_ASSERT_EQUAL(flags_line_of("C1 FLAGS 1 4611686018427387904 ($a)\r\n", &l),
			PROTO_CODEC_LIMIT);
	static const char *const bad[] = {
		"C1 FLAGS 1 5\r\n", "C1 FLAGS 0 5 ()\r\n", "C1 FLAGS 1 0 ()\r\n",
		"C1 FLAGS 4294967296 5 ()\r\n", "C1 FLAGS 1:2 5 ()\r\n", "C1 FLAGS 1 5 \\Seen\r\n",
		"C1 FLAGS 1 5 (\\Recent)\r\n", "C1 FLAGS 1 9223372036854775808 ()\r\n",
		"C1 FLAGS \"1\" 5 ()\r\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = flags_line_of(bad[i], &l);
		CU_ASSERT_EQUAL(r, PROTO_CODEC_BAD);
		if (r != PROTO_CODEC_BAD)
			fprintf(stderr, "\nnot refused as malformed (%d): %s", r, bad[i]);
	}
}

/* HOLDER <sid> (SPEC 8.8): written after a SAVE request, read back; absent
 * reads as 0; 0, past 32 bits, not a number, or with ORIGIN is refused by
 * both the reader and the validator. */
static void test_save_holder(void)
{
	struct buf b;
	struct proto_wr w;
	buf_init(&b);
	proto_wr_init(&w, &b);
	struct proto_save o = { .date = 1700000000, .tz = 60, .text = "x", .text_len = 1 };
	CU_ASSERT_EQUAL_FATAL(guid_from_hex(G, &o.guid), 0);
	proto_wr_begin(&w, "C7", "SAVE");
	proto_wr_save(&w, &o);
	proto_wr_holder(&w, 4294967295u);
	proto_wr_end(&w);
	const char *want = "C7 SAVE 1700000000+0100 0 0 " G " () {1}\r\nx HOLDER 4294967295\r\n";
	CU_ASSERT(b.len == strlen(want) && memcmp(b.data, want, b.len) == 0);
	struct proto_parser *p;
	const struct proto_cmd *cmd = parse_line(&p, b.data, b.len);
	CU_ASSERT_FATAL(cmd != NULL);
	size_t npos;
	const char *err;
	uint32_t sid = 7;
	CU_ASSERT_EQUAL(proto_cmd_validate(cmd, &npos, &err), 0);
	CU_ASSERT_EQUAL(proto_save_holder(cmd, npos, &sid), 0);
	CU_ASSERT_EQUAL(sid, 4294967295u);
	proto_parser_destroy(&p);
	buf_free(&b);

	static const struct {
		const char *line;
		int validates, reads;
		uint32_t sid;
	} cases[] = {
		{ "C1 SAVE 1700000000+0100 0 0 " G " () NIL\r\n", 0, 0, 0 },
		{ "C1 SAVE 1700000000+0100 0 0 " G " () NIL HOLDER 1 TO 3\r\n", 0, 0, 1 },
		{ "C1 SAVE 1700000000+0100 0 0 " G " () NIL HOLDER 0\r\n", -1, -1, 0 },
		{ "C1 SAVE 1700000000+0100 0 0 " G " () NIL HOLDER 4294967296\r\n", -1, -1, 0 },
		{ "C1 SAVE 1700000000+0100 0 0 " G " () NIL HOLDER x\r\n", -1, -1, 0 },
		{ "C1 SAVE 1700000000+0100 0 0 " G " () NIL HOLDER \"2\"\r\n", -1, -1, 0 },
		{ "C1 SAVE 1700000000+0100 17 9 " G " () NIL ORIGIN 2 HOLDER 2\r\n", -1, -1, 0 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cmd = parse_str(&p, cases[i].line);
		CU_ASSERT_FATAL(cmd != NULL);
		int v = proto_cmd_validate(cmd, &npos, &err);
		CU_ASSERT_EQUAL(v, cases[i].validates);
		/* The reader on its own, also where the validator refused. */
		size_t at = 6;
		sid = 99;
		CU_ASSERT_EQUAL(proto_save_holder(cmd, at, &sid), cases[i].reads);
		if (cases[i].reads == 0)
			CU_ASSERT_EQUAL(sid, cases[i].sid);
		if (v != cases[i].validates || (cases[i].reads == 0 && sid != cases[i].sid))
			fprintf(stderr, "\nHOLDER case %zu: %s", i, cases[i].line);
		proto_parser_destroy(&p);
	}
}

static int pseen_of(const char *line, enum proto_pseen_rule rule, struct proto_pseen *p_r)
{
	struct proto_parser *p;
	const char *err = NULL;
	const struct proto_cmd *cmd = parse_str(&p, line);
	int r = cmd == NULL ? -99 : proto_read_pseen(cmd, rule, p_r, &err);
	if (r != PROTO_CODEC_OK)
		CU_ASSERT(err != NULL && err[0] != '\0');
	proto_parser_destroy(&p);
	return r;
}

static void test_pseen_round_trip_and_bounds(void)
{
	struct proto_pseen o, in;
	memset(&o, 0, sizeof(o));
	strcpy(o.user, "bob.smith+x@example.org");
	for (int i = 0; i < 16; i++)
		o.guid.b[i] = (unsigned char)(0xa0 + i);
	o.seen = true;
	o.modseq = MAIL_MODSEQ_MAX;
	o.time_ms = 1765084800123;
	struct buf b;
	struct proto_wr w;
	buf_init(&b);
	proto_wr_init(&w, &b);
	proto_wr_begin(&w, "C3", "PSEEN");
	proto_wr_pseen(&w, &o);
	proto_wr_end(&w);
	buf_append(&b, "", 1);
	CU_ASSERT_STRING_EQUAL((const char *)b.data,
			       "C3 PSEEN bob.smith+x@example.org a0a1a2a3a4a5a6a7a8a9aaabacadaeaf 1 "
			       "4611686018427387903 1765084800123\r\n");
	CU_ASSERT_EQUAL_FATAL(pseen_of((const char *)b.data, PROTO_PSEEN_GIVEN, &in), PROTO_CODEC_OK);
	CU_ASSERT_STRING_EQUAL(in.user, o.user);
	CU_ASSERT(guid_equal(&in.guid, &o.guid));
	CU_ASSERT(in.seen && in.modseq == o.modseq && in.time_ms == o.time_ms);
	/* A bundle's record: modseq 0, seen 0 kept as such. */
	CU_ASSERT_EQUAL(pseen_of("C1 PSEEN \"bob\" 000000000000000000000000000000a1 0 0 5\r\n",
				 PROTO_PSEEN_ASSIGN, &in), PROTO_CODEC_OK);
	CU_ASSERT(!in.seen && in.modseq == 0 && in.time_ms == 5 && strcmp(in.user, "bob") == 0);
	buf_free(&b);

	/* A 255-byte name is the longest. */
	char line[1024], name[300];
	memset(name, 'u', 255);
	name[255] = '\0';
	snprintf(line, sizeof(line), "C1 PSEEN %s 000000000000000000000000000000a1 1 7 5\r\n", name);
	CU_ASSERT_EQUAL(pseen_of(line, PROTO_PSEEN_GIVEN, &in), PROTO_CODEC_OK);
	CU_ASSERT_EQUAL(strlen(in.user), 255);
	name[255] = 'u';
	name[256] = '\0';
	snprintf(line, sizeof(line), "C1 PSEEN %s 000000000000000000000000000000a1 1 7 5\r\n", name);
	CU_ASSERT_EQUAL(pseen_of(line, PROTO_PSEEN_GIVEN, &in), PROTO_CODEC_BAD);

	/* Past lib/mail-limits.h: NO [LIMIT], not BAD. */
	CU_ASSERT_EQUAL(pseen_of("C1 PSEEN bob 000000000000000000000000000000a1 1 "
				 "4611686018427387904 5\r\n", PROTO_PSEEN_GIVEN, &in),
			PROTO_CODEC_LIMIT);

	static const struct {
		const char *line;
		enum proto_pseen_rule rule;
	} bad[] = {
		{ "C1 PSEEN bob 000000000000000000000000000000a1 1 7\r\n", PROTO_PSEEN_GIVEN },
		{ "C1 PSEEN 000000000000000000000000000000a1 1 7 5\r\n", PROTO_PSEEN_GIVEN },
		{ "C1 PSEEN .public 000000000000000000000000000000a1 1 7 5\r\n", PROTO_PSEEN_GIVEN },
		{ "C1 PSEEN .bob 000000000000000000000000000000a1 1 7 5\r\n", PROTO_PSEEN_GIVEN },
		{ "C1 PSEEN \"\" 000000000000000000000000000000a1 1 7 5\r\n", PROTO_PSEEN_GIVEN },
		{ "C1 PSEEN \"bo b\" 000000000000000000000000000000a1 1 7 5\r\n", PROTO_PSEEN_GIVEN },
		{ "C1 PSEEN bo/b 000000000000000000000000000000a1 1 7 5\r\n", PROTO_PSEEN_GIVEN },
		{ "C1 PSEEN {3}\r\nbob 000000000000000000000000000000a1 1 7 5\r\n", PROTO_PSEEN_GIVEN },
		{ "C1 PSEEN (bob) 000000000000000000000000000000a1 1 7 5\r\n", PROTO_PSEEN_GIVEN },
		{ "C1 PSEEN bob 00000000000000000000000000000000 1 7 5\r\n", PROTO_PSEEN_GIVEN },
		{ "C1 PSEEN bob 000000000000000000000000000000a 1 7 5\r\n", PROTO_PSEEN_GIVEN },
		{ "C1 PSEEN bob 000000000000000000000000000000a1a 1 7 5\r\n", PROTO_PSEEN_GIVEN },
		{ "C1 PSEEN bob 000000000000000000000000000000g1 1 7 5\r\n", PROTO_PSEEN_GIVEN },
		{ "C1 PSEEN bob 000000000000000000000000000000a1 2 7 5\r\n", PROTO_PSEEN_GIVEN },
		{ "C1 PSEEN bob 000000000000000000000000000000a1 01 7 5\r\n", PROTO_PSEEN_GIVEN },
		{ "C1 PSEEN bob 000000000000000000000000000000a1 -1 7 5\r\n", PROTO_PSEEN_GIVEN },
		{ "C1 PSEEN bob 000000000000000000000000000000a1 yes 7 5\r\n", PROTO_PSEEN_GIVEN },
		{ "C1 PSEEN bob 000000000000000000000000000000a1 1 0 5\r\n", PROTO_PSEEN_GIVEN },
		{ "C1 PSEEN bob 000000000000000000000000000000a1 1 7 5\r\n", PROTO_PSEEN_ASSIGN },
		{ "C1 PSEEN bob 000000000000000000000000000000a1 1 9223372036854775808 5\r\n",
		  PROTO_PSEEN_GIVEN },
		{ "C1 PSEEN bob 000000000000000000000000000000a1 1 7 9223372036854775808\r\n",
		  PROTO_PSEEN_GIVEN },
		{ "C1 PSEEN bob 000000000000000000000000000000a1 1 7 -5\r\n", PROTO_PSEEN_GIVEN },
		{ "C1 PSEEN bob 000000000000000000000000000000a1 1 7 (5)\r\n", PROTO_PSEEN_GIVEN },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *l = bad[i].line;
		int r = pseen_of(l, bad[i].rule, &in);
		CU_ASSERT_EQUAL(r, PROTO_CODEC_BAD);
		if (r != PROTO_CODEC_BAD)
			fprintf(stderr, "\nnot refused as malformed (%d): %s", r, l);
	}
	/* A literal holding a NUL in the name. */
	static const char nul_line[] = "C1 PSEEN {3}\r\nb\0b 000000000000000000000000000000a1 1 7 5\r\n";
	struct proto_parser *p;
	const char *err = NULL;
	const struct proto_cmd *cmd = parse_line(&p, nul_line, sizeof(nul_line) - 1);
	CU_ASSERT_FATAL(cmd != NULL);
	CU_ASSERT_EQUAL(proto_read_pseen(cmd, PROTO_PSEEN_GIVEN, &in, &err), PROTO_CODEC_BAD);
	proto_parser_destroy(&p);
}

static void test_pseen_mbox_round_trip_and_bounds(void)
{
	struct proto_pseen_mbox o, in;
	memset(&o, 0, sizeof(o));
	strcpy(o.owner, ".public");
	o.mailbox.b[15] = 0x42;
	o.uidvalidity = UINT32_MAX;
	struct buf b;
	struct proto_wr w;
	buf_init(&b);
	proto_wr_init(&w, &b);
	proto_wr_begin(&w, "C4", "PSEEN-MBOX");
	proto_wr_pseen_mbox(&w, &o);
	proto_wr_end(&w);
	buf_append(&b, "", 1);
	CU_ASSERT_STRING_EQUAL((const char *)b.data,
			       "C4 PSEEN-MBOX .public 00000000000000000000000000000042 4294967295\r\n");
	struct proto_parser *p;
	const char *err = NULL;
	const struct proto_cmd *cmd = parse_str(&p, (const char *)b.data);
	CU_ASSERT_FATAL(cmd != NULL);
	CU_ASSERT_EQUAL(proto_read_pseen_mbox(cmd, &in, &err), PROTO_CODEC_OK);
	CU_ASSERT_STRING_EQUAL(in.owner, ".public");
	CU_ASSERT(guid_equal(&in.mailbox, &o.mailbox) && in.uidvalidity == UINT32_MAX);
	proto_parser_destroy(&p);
	buf_free(&b);

	static const char *const bad[] = {
		"C1 PSEEN-MBOX alice 00000000000000000000000000000042\r\n",
		"C1 PSEEN-MBOX .alice 00000000000000000000000000000042 7\r\n",
		"C1 PSEEN-MBOX a!ice 00000000000000000000000000000042 7\r\n",
		"C1 PSEEN-MBOX alice 00000000000000000000000000000000 7\r\n",
		"C1 PSEEN-MBOX alice 0000000000000000000000000000004 7\r\n",
		"C1 PSEEN-MBOX alice 00000000000000000000000000000042 0\r\n",
		"C1 PSEEN-MBOX alice 00000000000000000000000000000042 4294967296\r\n",
		"C1 PSEEN-MBOX alice 00000000000000000000000000000042 x\r\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cmd = parse_str(&p, bad[i]);
		CU_ASSERT_FATAL(cmd != NULL);
		err = NULL;
		int r = proto_read_pseen_mbox(cmd, &in, &err);
		CU_ASSERT_EQUAL(r, PROTO_CODEC_BAD);
		CU_ASSERT(err != NULL);
		if (r != PROTO_CODEC_BAD)
			fprintf(stderr, "\nnot refused as malformed (%d): %s", r, bad[i]);
		proto_parser_destroy(&p);
	}
}

static int seen_of_of(const char *line, const char **user_r)
{
	struct proto_parser *p;
	const char *err = NULL;
	static char copy[512];
	const struct proto_cmd *cmd = parse_str(&p, line);
	/* The four positional arguments of a STORE; options follow. */
	int r = cmd == NULL ? -99 : proto_read_seen_of(cmd, 4, user_r, &err);
	if (r != PROTO_CODEC_OK)
		CU_ASSERT(err != NULL && err[0] != '\0');
	if (r == PROTO_CODEC_OK && *user_r != NULL) {
		snprintf(copy, sizeof(copy), "%s", *user_r);
		*user_r = copy;
	}
	proto_parser_destroy(&p);
	return r;
}

static void test_seen_of_option(void)
{
	const char *user = "x";
	CU_ASSERT_EQUAL(seen_of_of("C1 STORE 1 5 (\\Seen) () GUIDS (000000000000000000000000000000a1)\r\n",
				   &user), PROTO_CODEC_OK);
	CU_ASSERT_PTR_NULL(user);
	CU_ASSERT_EQUAL(seen_of_of("C1 STORE 1 5 (\\Seen) () SEEN-OF bob GUIDS "
				   "(000000000000000000000000000000a1)\r\n", &user), PROTO_CODEC_OK);
	CU_ASSERT(user != NULL && strcmp(user, "bob") == 0);
	CU_ASSERT_EQUAL(seen_of_of("C1 STORE 1 5 (\\Seen) () GUIDS (000000000000000000000000000000a1) "
				   "UNCHANGEDSINCE 3 seen-of \"carol@x\"\r\n", &user), PROTO_CODEC_OK);
	CU_ASSERT(user != NULL && strcmp(user, "carol@x") == 0);
	static const char *const bad[] = {
		"C1 STORE 1 5 (\\Seen) () SEEN-OF bob\r\n", /* no GUIDS */
		"C1 STORE 1 5 (\\Seen) () SEEN-OF .public GUIDS (000000000000000000000000000000a1)\r\n",
		"C1 STORE 1 5 (\\Seen) () SEEN-OF \"\" GUIDS (000000000000000000000000000000a1)\r\n",
		"C1 STORE 1 5 (\\Seen) () SEEN-OF (bob) GUIDS (000000000000000000000000000000a1)\r\n",
		"C1 STORE 1 5 (\\Seen) () SEEN-OF {3}\r\nbob GUIDS (000000000000000000000000000000a1)\r\n",
		"C1 STORE 1 5 (\\Seen) () SEEN-OF b*b GUIDS (000000000000000000000000000000a1)\r\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = seen_of_of(bad[i], &user);
		CU_ASSERT_EQUAL(r, PROTO_CODEC_BAD);
		if (r != PROTO_CODEC_BAD)
			fprintf(stderr, "\nnot refused as malformed (%d): %s", r, bad[i]);
	}
	/* The alphabet is 7.5's, the same as logins'. */
	CU_ASSERT(proto_user_name_valid("a.b_c@d+e-f9", 12));
	CU_ASSERT(!proto_user_name_valid("a:b", 3));
	CU_ASSERT(!proto_user_name_valid("a\0b", 3));
	CU_ASSERT(!proto_user_name_valid(".public", 7));
}

const struct test_case proto_codec_cases[] = {
	{ "flag lists round trip", test_flags_round_trip },
	{ "flag lists: every bound and hostile input refused",
	  test_flags_bounds_and_hostile_input },
	{ "UID sets expand within max and refuse bad ones", test_uids_expand_and_refuse },
	{ "SAVE round trips under both rules", test_save_round_trip },
	{ "SAVE: every bound and hostile input refused", test_save_bounds_and_hostile_input },
	{ "SAVE: HOLDER round trips, its bounds refused", test_save_holder },
	{ "STORE round trips: add, remove, replace, a change", test_store_round_trip },
	{ "STORE: every bound and hostile input refused", test_store_bounds_and_hostile_input },
	{ "EXPUNGE round trips, refuses every bound and hostile input",
	  test_expunge_round_trip_and_bounds },
	{ "UIDFIX: round trip, pairs in order, bounds", test_uidfix_round_trip_and_bounds },
	{ "FETCH: round trip, the set's order, bounds and hostile input",
	  test_fetch_round_trip_and_bounds },
	{ "FLAGS data line round trips, refuses every bound and hostile input",
	  test_flags_line_round_trip_and_bounds },
	{ "PSEEN round trips, refuses every bound and hostile input",
	  test_pseen_round_trip_and_bounds },
	{ "PSEEN-MBOX round trips, refuses every bound and hostile input",
	  test_pseen_mbox_round_trip_and_bounds },
	{ "SEEN-OF: a valid user with GUIDS, or BAD", test_seen_of_option },
	{ NULL, NULL },
};

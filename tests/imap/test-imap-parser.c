/* The IMAP command parser: whole and byte-by-byte feeding, literals, limits
 * just under and over, and malformed input. */
#include <string.h>

#include "imap/imap-parser.h"
#include "tests/imap/tests-imap.h"

static const struct imap_parser_limits big = {
	.max_line = 65536, .max_literal = 1 << 20, .max_total = 2 << 20,
	.max_args = 1000, .max_depth = 8,
};

/* Feeds all of s at once; returns the result and sets *used_r. */
static enum imap_parse_result feed_str(struct imap_parser *p, const char *s, size_t *used_r)
{
	size_t used = 0;
	enum imap_parse_result r = imap_parser_feed(p, (const unsigned char *)s, strlen(s), &used);
	if (used_r != NULL)
		*used_r = used;
	return r;
}

static void test_parser_simple_command_is_complete(void)
{
	struct imap_parser *p = imap_parser_create(&big);
	size_t used;
	CU_ASSERT_EQUAL(feed_str(p, "a1 noop\r\n", &used), IMAP_PARSE_DONE);
	CU_ASSERT_EQUAL(used, 9);
	const struct imap_command *c = imap_parser_command(p);
	CU_ASSERT_STRING_EQUAL(c->tag, "a1");
	CU_ASSERT_STRING_EQUAL(c->name, "NOOP");
	CU_ASSERT_EQUAL(c->count, 0);
	imap_parser_destroy(&p);
	CU_ASSERT_PTR_NULL(p);
}

static void check_login(const struct imap_command *c)
{
	CU_ASSERT_STRING_EQUAL(c->tag, "a2");
	CU_ASSERT_STRING_EQUAL(c->name, "LOGIN");
	CU_ASSERT_EQUAL_FATAL(c->count, 2);
	CU_ASSERT_EQUAL(c->args[0].type, IMAP_ARG_ATOM);
	CU_ASSERT_STRING_EQUAL(c->args[0].str, "user");
	CU_ASSERT_EQUAL(c->args[1].type, IMAP_ARG_STRING);
	CU_ASSERT_STRING_EQUAL(c->args[1].str, "pa\"s\\s");
	CU_ASSERT_EQUAL(c->args[1].len, 6);
}

static void test_parser_byte_by_byte_needs_more_until_last_byte(void)
{
	const char *cmd = "a2 LOGIN user \"pa\\\"s\\\\s\"\r\n";
	struct imap_parser *p = imap_parser_create(&big);
	size_t n = strlen(cmd);
	for (size_t i = 0; i < n; i++) {
		size_t used = 0;
		enum imap_parse_result r = imap_parser_feed(p, (const unsigned char *)cmd + i, 1, &used);
		CU_ASSERT_EQUAL(used, 1);
		if (i + 1 < n) {
			CU_ASSERT_EQUAL(r, IMAP_PARSE_MORE);
		} else {
			CU_ASSERT_EQUAL_FATAL(r, IMAP_PARSE_DONE);
		}
	}
	check_login(imap_parser_command(p));
	imap_parser_reset(p);
	/* The same command whole gives the same result. */
	CU_ASSERT_EQUAL_FATAL(feed_str(p, cmd, NULL), IMAP_PARSE_DONE);
	check_login(imap_parser_command(p));
	imap_parser_destroy(&p);
}

static void test_parser_sync_literal_asks_for_continuation(void)
{
	struct imap_parser *p = imap_parser_create(&big);
	size_t used;
	CU_ASSERT_EQUAL(feed_str(p, "a3 APPEND INBOX (\\Seen) {5}\r\n", &used), IMAP_PARSE_CONTINUE);
	CU_ASSERT(imap_parser_busy(p));
	CU_ASSERT_EQUAL(feed_str(p, "he", &used), IMAP_PARSE_MORE);
	CU_ASSERT_EQUAL(imap_parser_feed(p, (const unsigned char *)"l\0o", 3, &used), IMAP_PARSE_MORE);
	CU_ASSERT_EQUAL(used, 3);
	CU_ASSERT_EQUAL(feed_str(p, "\r\n", &used), IMAP_PARSE_DONE);
	const struct imap_command *c = imap_parser_command(p);
	CU_ASSERT_EQUAL_FATAL(c->count, 3);
	CU_ASSERT_EQUAL(c->args[1].type, IMAP_ARG_LIST);
	CU_ASSERT_EQUAL(c->args[1].count, 1);
	CU_ASSERT_EQUAL(c->args[2].type, IMAP_ARG_LITERAL);
	CU_ASSERT_EQUAL(c->args[2].len, 5);
	CU_ASSERT(memcmp(c->args[2].str, "hel\0o", 5) == 0);
	imap_parser_destroy(&p);
}

static void test_parser_literal_plus_needs_no_continuation(void)
{
	struct imap_parser *p = imap_parser_create(&big);
	CU_ASSERT_EQUAL(feed_str(p, "a4 LOGIN {4+}\r\nuser {3+}\r\npw!\r\n", NULL), IMAP_PARSE_DONE);
	const struct imap_command *c = imap_parser_command(p);
	CU_ASSERT_EQUAL_FATAL(c->count, 2);
	CU_ASSERT_STRING_EQUAL(c->args[0].str, "user");
	CU_ASSERT_STRING_EQUAL(c->args[1].str, "pw!");
	CU_ASSERT_EQUAL(c->args[1].type, IMAP_ARG_LITERAL);
	imap_parser_destroy(&p);
}

static void test_parser_literal8(void)
{
	struct imap_parser *p = imap_parser_create(&big);
	size_t used;
	CU_ASSERT_EQUAL(feed_str(p, "a6 APPEND INBOX ~{3}\r\n", &used), IMAP_PARSE_CONTINUE);
	CU_ASSERT_EQUAL(imap_parser_feed(p, (const unsigned char *)"\0x\0 {2+}\r\nab ~{1+}\r\n\0\r\n",
					 23, &used), IMAP_PARSE_DONE);
	const struct imap_command *c = imap_parser_command(p);
	CU_ASSERT_EQUAL_FATAL(c->count, 4);
	CU_ASSERT_EQUAL(c->args[1].type, IMAP_ARG_LITERAL);
	CU_ASSERT(c->args[1].literal8);
	CU_ASSERT_EQUAL(c->args[1].len, 3);
	CU_ASSERT(memcmp(c->args[1].str, "\0x\0", 3) == 0);
	CU_ASSERT(!c->args[2].literal8);
	CU_ASSERT_STRING_EQUAL(c->args[2].str, "ab");
	CU_ASSERT(c->args[3].literal8);
	CU_ASSERT_EQUAL(c->args[3].len, 1);
	imap_parser_destroy(&p);
	/* '~' not followed by a literal is an atom character. */
	p = imap_parser_create(&big);
	CU_ASSERT_EQUAL(feed_str(p, "a7 LOGIN ~user x\r\n", NULL), IMAP_PARSE_DONE);
	c = imap_parser_command(p);
	CU_ASSERT_EQUAL_FATAL(c->count, 2);
	CU_ASSERT_STRING_EQUAL(c->args[0].str, "~user");
	CU_ASSERT(!c->args[0].literal8);
	imap_parser_destroy(&p);
}

static void test_parser_zero_length_literal(void)
{
	struct imap_parser *p = imap_parser_create(&big);
	CU_ASSERT_EQUAL(feed_str(p, "a LOGIN {0}\r\n", NULL), IMAP_PARSE_CONTINUE);
	CU_ASSERT_EQUAL(feed_str(p, " x\r\n", NULL), IMAP_PARSE_DONE);
	const struct imap_command *c = imap_parser_command(p);
	CU_ASSERT_EQUAL_FATAL(c->count, 2);
	CU_ASSERT_EQUAL(c->args[0].len, 0);
	CU_ASSERT_STRING_EQUAL(c->args[1].str, "x");
	imap_parser_destroy(&p);
}

static void test_parser_fetch_section_is_one_atom(void)
{
	struct imap_parser *p = imap_parser_create(&big);
	CU_ASSERT_EQUAL_FATAL(feed_str(p, "a5 UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From To)]<0.100>)\r\n",
				       NULL), IMAP_PARSE_DONE);
	const struct imap_command *c = imap_parser_command(p);
	CU_ASSERT_STRING_EQUAL(c->name, "UID");
	CU_ASSERT_EQUAL_FATAL(c->count, 3);
	CU_ASSERT_STRING_EQUAL(c->args[1].str, "1:*");
	CU_ASSERT_EQUAL_FATAL(c->args[2].type, IMAP_ARG_LIST);
	CU_ASSERT_EQUAL_FATAL(c->args[2].count, 2);
	CU_ASSERT_STRING_EQUAL(c->args[2].list[1].str, "BODY.PEEK[HEADER.FIELDS (From To)]<0.100>");
	CU_ASSERT(imap_arg_atom_eq(&c->args[2].list[0], "flags"));
	imap_parser_destroy(&p);
}

static void test_parser_pipelined_commands_stop_after_each(void)
{
	struct imap_parser *p = imap_parser_create(&big);
	const char *two = "a NOOP\r\nb CAPABILITY\r\n";
	size_t used;
	CU_ASSERT_EQUAL(feed_str(p, two, &used), IMAP_PARSE_DONE);
	CU_ASSERT_EQUAL(used, 8);
	CU_ASSERT_STRING_EQUAL(imap_parser_command(p)->tag, "a");
	imap_parser_reset(p);
	CU_ASSERT_EQUAL(feed_str(p, two + used, &used), IMAP_PARSE_DONE);
	CU_ASSERT_STRING_EQUAL(imap_parser_command(p)->name, "CAPABILITY");
	imap_parser_destroy(&p);
}

static void test_parser_line_limit_just_under_and_over(void)
{
	struct imap_parser_limits l = big;
	l.max_line = 20;
	struct imap_parser *p = imap_parser_create(&l);
	/* 20 bytes without CRLF. */
	CU_ASSERT_EQUAL(feed_str(p, "a1 SELECT 1234567890\r\n", NULL), IMAP_PARSE_DONE);
	imap_parser_reset(p);
	CU_ASSERT_EQUAL(feed_str(p, "a2 SELECT 12345678901\r\n", NULL), IMAP_PARSE_BAD);
	CU_ASSERT_STRING_EQUAL(imap_parser_tag(p), "a2");
	CU_ASSERT_STRING_EQUAL(imap_parser_error(p), "Line too long");
	/* A huge line fed in pieces is skipped without being stored, then
	 * the next command parses. */
	CU_ASSERT_EQUAL(feed_str(p, "a3 xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", NULL), IMAP_PARSE_MORE);
	for (int i = 0; i < 100; i++)
		CU_ASSERT_EQUAL(feed_str(p, "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy", NULL), IMAP_PARSE_MORE);
	CU_ASSERT_EQUAL(feed_str(p, "zz\r\n", NULL), IMAP_PARSE_BAD);
	CU_ASSERT_STRING_EQUAL(imap_parser_tag(p), "a3");
	CU_ASSERT_EQUAL(feed_str(p, "a4 NOOP\r\n", NULL), IMAP_PARSE_DONE);
	imap_parser_destroy(&p);
}

static void test_parser_literal_limit_just_under_and_over(void)
{
	struct imap_parser_limits l = big;
	l.max_literal = 10;
	struct imap_parser *p = imap_parser_create(&l);
	CU_ASSERT_EQUAL(feed_str(p, "a1 APPEND x {10}\r\n", NULL), IMAP_PARSE_CONTINUE);
	CU_ASSERT_EQUAL(feed_str(p, "0123456789\r\n", NULL), IMAP_PARSE_DONE);
	imap_parser_reset(p);
	/* Synchronizing: refused before the client sends it. */
	CU_ASSERT_EQUAL(feed_str(p, "a2 APPEND x {11}\r\n", NULL), IMAP_PARSE_BAD);
	CU_ASSERT_STRING_EQUAL(imap_parser_tag(p), "a2");
	CU_ASSERT_STRING_EQUAL(imap_parser_error(p), "Literal too big");
	CU_ASSERT_FALSE(imap_parser_busy(p));
	CU_ASSERT_EQUAL(feed_str(p, "a3 NOOP\r\n", NULL), IMAP_PARSE_DONE);
	imap_parser_reset(p);
	/* Non-synchronizing: the data is on its way, the stream is lost. */
	CU_ASSERT_EQUAL(feed_str(p, "a4 APPEND x {11+}\r\n", NULL), IMAP_PARSE_FATAL);
	CU_ASSERT_EQUAL(feed_str(p, "a5 APPEND x {99999999999999999999}\r\n", NULL), IMAP_PARSE_BAD);
	imap_parser_destroy(&p);
}

static void test_parser_arg_and_depth_limits(void)
{
	struct imap_parser_limits l = big;
	l.max_args = 3;
	l.max_depth = 2;
	struct imap_parser *p = imap_parser_create(&l);
	CU_ASSERT_EQUAL(feed_str(p, "a X 1 2 3\r\n", NULL), IMAP_PARSE_DONE);
	imap_parser_reset(p);
	CU_ASSERT_EQUAL(feed_str(p, "a X 1 2 3 4\r\n", NULL), IMAP_PARSE_BAD);
	CU_ASSERT_STRING_EQUAL(imap_parser_error(p), "Too many arguments");
	CU_ASSERT_EQUAL(feed_str(p, "a X ((1))\r\n", NULL), IMAP_PARSE_DONE);
	imap_parser_reset(p);
	CU_ASSERT_EQUAL(feed_str(p, "a X (((1)))\r\n", NULL), IMAP_PARSE_BAD);
	CU_ASSERT_STRING_EQUAL(imap_parser_error(p), "Lists nested too deeply");
	imap_parser_destroy(&p);
}

/* '[' is an ATOM-CHAR (RFC 3501 9): without a ']' on the line it is part
 * of the atom, as in imaptest's mailbox name; with one, the section up to
 * it is one atom. */
static void test_parser_open_bracket_in_atom(void)
{
	struct imap_parser *p = imap_parser_create(&big);
	CU_ASSERT_EQUAL_FATAL(feed_str(p, "a1 SELECT !#$&'+,-.0123456789:;<=>?@^_`|[}\r\n", NULL),
			      IMAP_PARSE_DONE);
	const struct imap_command *c = imap_parser_command(p);
	CU_ASSERT_EQUAL_FATAL(c->count, 1);
	CU_ASSERT_EQUAL(c->args[0].type, IMAP_ARG_ATOM);
	CU_ASSERT_STRING_EQUAL(c->args[0].str, "!#$&'+,-.0123456789:;<=>?@^_`|[}");
	imap_parser_reset(p);
	CU_ASSERT_EQUAL_FATAL(feed_str(p, "a2 CREATE a[b [c\r\n", NULL), IMAP_PARSE_DONE);
	c = imap_parser_command(p);
	CU_ASSERT_EQUAL_FATAL(c->count, 2);
	CU_ASSERT_STRING_EQUAL(c->args[0].str, "a[b");
	CU_ASSERT_STRING_EQUAL(c->args[1].str, "[c");
	imap_parser_reset(p);
	CU_ASSERT_EQUAL_FATAL(feed_str(p, "a3 FETCH 1 (BODY[HEADER.FIELDS (A)] x[)\r\n", NULL),
			      IMAP_PARSE_DONE);
	c = imap_parser_command(p);
	CU_ASSERT_EQUAL_FATAL(c->count, 2);
	CU_ASSERT_EQUAL_FATAL(c->args[1].count, 2);
	CU_ASSERT_STRING_EQUAL(c->args[1].list[0].str, "BODY[HEADER.FIELDS (A)]");
	CU_ASSERT_STRING_EQUAL(c->args[1].list[1].str, "x[");
	imap_parser_destroy(&p);
}

static void test_parser_malformed_commands_get_reasons(void)
{
	static const struct {
		const char *in, *tag, *error;
	} cases[] = {
		{ "a1\r\n", "a1", "Missing command" },
		{ "a1 NOOP )\r\n", "a1", "Unexpected ')'" },
		{ "a1 LOGIN \"x\r\n", "a1", "Unterminated quoted string" },
		{ "a1 LOGIN \"\\x\"\r\n", "a1", "Invalid escape in quoted string" },
		{ "a1 LIST (a\r\n", "a1", "Missing ')'" },
		{ "(x NOOP\r\n", "*", "Invalid tag" },
		{ "a1 NO\001OP\r\n", "a1", "Invalid command name" },
		{ "a1 LOGIN \"a\"\"b\"\r\n", "a1", "Missing space between arguments" },
	};
	struct imap_parser *p = imap_parser_create(&big);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		CU_ASSERT_EQUAL(feed_str(p, cases[i].in, NULL), IMAP_PARSE_BAD);
		CU_ASSERT_STRING_EQUAL(imap_parser_tag(p), cases[i].tag);
		CU_ASSERT_STRING_EQUAL(imap_parser_error(p), cases[i].error);
	}
	/* NUL in a line. */
	size_t used;
	CU_ASSERT_EQUAL(imap_parser_feed(p, (const unsigned char *)"a NO\0OP\r\n", 9, &used),
			IMAP_PARSE_BAD);
	CU_ASSERT_EQUAL(used, 9);
	/* After all that, a good command still parses. */
	CU_ASSERT_EQUAL(feed_str(p, "ok NOOP\r\n", NULL), IMAP_PARSE_DONE);
	imap_parser_destroy(&p);
}

static void test_parser_empty_lines_are_ignored(void)
{
	struct imap_parser *p = imap_parser_create(&big);
	CU_ASSERT_EQUAL(feed_str(p, "\r\n\r\n", NULL), IMAP_PARSE_MORE);
	CU_ASSERT_FALSE(imap_parser_busy(p));
	CU_ASSERT_EQUAL(feed_str(p, "a NOOP\n", NULL), IMAP_PARSE_DONE);
	imap_parser_destroy(&p);
}

static void test_parser_quote_inside_string_is_not_a_literal(void)
{
	struct imap_parser *p = imap_parser_create(&big);
	CU_ASSERT_EQUAL(feed_str(p, "a SELECT \"x{5}\"\r\n", NULL), IMAP_PARSE_DONE);
	CU_ASSERT_STRING_EQUAL(imap_parser_command(p)->args[0].str, "x{5}");
	imap_parser_destroy(&p);
}

const struct test_case imap_parser_cases[] = {
	{ "simple command is complete", test_parser_simple_command_is_complete },
	{ "byte by byte needs more until the last byte", test_parser_byte_by_byte_needs_more_until_last_byte },
	{ "synchronizing literal asks for continuation", test_parser_sync_literal_asks_for_continuation },
	{ "LITERAL+ needs no continuation", test_parser_literal_plus_needs_no_continuation },
	{ "zero-length literal", test_parser_zero_length_literal },
	{ "literal8 ~{N}", test_parser_literal8 },
	{ "FETCH section is one atom", test_parser_fetch_section_is_one_atom },
	{ "pipelined commands stop after each", test_parser_pipelined_commands_stop_after_each },
	{ "line limit just under and over", test_parser_line_limit_just_under_and_over },
	{ "literal limit just under and over", test_parser_literal_limit_just_under_and_over },
	{ "argument count and depth limits", test_parser_arg_and_depth_limits },
	{ "malformed commands get reasons", test_parser_malformed_commands_get_reasons },
	{ "'[' without ']' is an atom character", test_parser_open_bracket_in_atom },
	{ "empty lines are ignored", test_parser_empty_lines_are_ignored },
	{ "quoted {N} is not a literal", test_parser_quote_inside_string_is_not_a_literal },
	{ NULL, NULL },
};

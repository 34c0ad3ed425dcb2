/* Unit tests of the IMAP MIME layer (imap/imap-mime.h): BODYSTRUCTURE,
 * ENVELOPE, BODY[section], header/body search and date parsing, compared
 * against exact expected strings. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap/imap-mime.h"
#include "lib/buf.h"
#include "tests/testutil.h"

/* ---- helpers ---- */

static struct imap_mime *parse_str(const char *text)
{
	return imap_mime_parse((const unsigned char *)text, strlen(text));
}

static void assert_buf_eq(const struct buf *b, const char *expected, const char *what)
{
	size_t n = strlen(expected);
	bool ok = b->len == n && (n == 0 || memcmp(b->data, expected, n) == 0);
	if (!ok)
		fprintf(stderr, "\n%s mismatch:\n got: %.*s\nwant: %s\n", what, (int)b->len,
			b->data != NULL ? (const char *)b->data : "", expected);
	CU_ASSERT(ok);
}

static void check_bodystructure(const char *msg, bool extended, const char *expected)
{
	struct imap_mime *m = parse_str(msg);
	struct buf out = BUF_INIT;
	imap_mime_bodystructure(m, extended, &out);
	assert_buf_eq(&out, expected, extended ? "BODYSTRUCTURE" : "BODY");
	buf_free(&out);
	imap_mime_free(&m);
	CU_ASSERT_PTR_NULL(m);
}

static void check_envelope(const char *msg, const char *expected)
{
	struct imap_mime *m = parse_str(msg);
	struct buf out = BUF_INIT;
	imap_mime_envelope(m, &out);
	assert_buf_eq(&out, expected, "ENVELOPE");
	buf_free(&out);
	imap_mime_free(&m);
}

/* expected NULL: the section must not exist */
static void check_section_fields(const struct imap_mime *m, const char *part,
				 enum imap_section_kind kind, const char *const *fields,
				 size_t nfields, const char *expected)
{
	struct buf out = BUF_INIT;
	int ret = imap_mime_section(m, part, kind, fields, nfields, &out);
	if (expected == NULL) {
		if (ret != -1)
			fprintf(stderr, "\nsection %s kind %d exists, expected none\n", part, (int)kind);
		CU_ASSERT_EQUAL(ret, -1);
		CU_ASSERT_EQUAL(out.len, 0);
	} else {
		CU_ASSERT_EQUAL(ret, 0);
		assert_buf_eq(&out, expected, part);
	}
	buf_free(&out);
}

static void check_section(const struct imap_mime *m, const char *part,
			  enum imap_section_kind kind, const char *expected)
{
	check_section_fields(m, part, kind, NULL, 0, expected);
}

/* ---- fixtures ---- */

static const char simple_msg[] =
	"From: Alice <alice@example.com>\r\n"
	"To: bob@example.org\r\n"
	"Subject: Hi\r\n"
	"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
	"Message-ID: <1@example.com>\r\n"
	"Content-Type: text/plain; charset=utf-8\r\n"
	"\r\n"
	"Hello Bob\r\n"
	"Bye\r\n";

static const char alternative_msg[] =
	"From: a@b.c\r\n"
	"Content-Type: multipart/alternative; boundary=\"XX\"\r\n"
	"\r\n"
	"preamble\r\n"
	"--XX\r\n"
	"Content-Type: text/plain; charset=us-ascii\r\n"
	"\r\n"
	"plain text\r\n"
	"--XX\r\n"
	"Content-Type: text/html; charset=\"utf-8\"\r\n"
	"Content-Transfer-Encoding: quoted-printable\r\n"
	"\r\n"
	"<p>html=3D</p>\r\n"
	"--XX--\r\n"
	"epilogue\r\n";

static const char mixed_msg[] =
	"Content-Type: multipart/mixed; boundary=frontier\r\n"
	"\r\n"
	"--frontier\r\n"
	"Content-Type: text/plain\r\n"
	"\r\n"
	"See attached.\r\n"
	"--frontier\r\n"
	"Content-Type: application/pdf; name=\"report.pdf\"\r\n"
	"Content-Transfer-Encoding: base64\r\n"
	"Content-Disposition: attachment; filename=\"report.pdf\"; size=9\r\n"
	"Content-ID: <att1@x>\r\n"
	"Content-Description: The \"final\" report\r\n"
	"Content-Language: en, de\r\n"
	"Content-Location: http://x/report.pdf\r\n"
	"Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n"
	"\r\n"
	"SGVsbG8gUERG\r\n"
	"--frontier--\r\n";

static const char nested_msg[] =
	"Content-Type: multipart/mixed; boundary=\"outer\"\r\n"
	"\r\n"
	"--outer\r\n"
	"Content-Type: multipart/alternative; boundary=\"inner\"\r\n"
	"\r\n"
	"--inner\r\n"
	"\r\n"
	"plain\r\n"
	"--inner\r\n"
	"Content-Type: text/html\r\n"
	"\r\n"
	"<b>html</b>\r\n"
	"--inner--\r\n"
	"--outer\r\n"
	"Content-Type: image/png\r\n"
	"Content-Transfer-Encoding: base64\r\n"
	"\r\n"
	"iVBORw0KGgo=\r\n"
	"--outer--\r\n";

#define INNER_HEADER \
	"From: \"Inner, Person\" <inner@example.net>\r\n" \
	"To: undisclosed-recipients:;\r\n" \
	"Subject: hello\r\n" \
	"Date: Tue, 2 Jan 2024 09:30:00 -0500\r\n" \
	"Message-ID: <inner@example.net>\r\n" \
	"\r\n"

static const char rfc822_msg[] =
	"From: outer@example.com\r\n"
	"Subject: Fwd: hello\r\n"
	"Content-Type: multipart/mixed; boundary=b1\r\n"
	"\r\n"
	"--b1\r\n"
	"Content-Type: text/plain\r\n"
	"\r\n"
	"See below.\r\n"
	"--b1\r\n"
	"Content-Type: message/rfc822\r\n"
	"\r\n"
	INNER_HEADER
	"Inner body\r\n"
	"line 2\r\n"
	"--b1--\r\n";

/* a message/rfc822 part whose message is itself multipart */
static const char rfc822_multipart_msg[] =
	"Content-Type: multipart/mixed; boundary=o\r\n"
	"\r\n"
	"--o\r\n"
	"Content-Type: message/rfc822\r\n"
	"Content-Description: forwarded\r\n"
	"\r\n"
	"Subject: inner\r\n"
	"Content-Type: multipart/alternative; boundary=i\r\n"
	"\r\n"
	"--i\r\n"
	"Content-Type: text/plain\r\n"
	"\r\n"
	"one\r\n"
	"--i\r\n"
	"Content-Type: text/enriched\r\n"
	"\r\n"
	"two\r\n"
	"--i--\r\n"
	"--o--\r\n";

/* ---- BODYSTRUCTURE ---- */

static void test_simple_text_message_bodystructure_and_body(void)
{
	check_bodystructure(simple_msg, true,
			    "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 16 2 NIL NIL NIL NIL)");
	check_bodystructure(simple_msg, false,
			    "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 16 2)");
}

static void test_missing_headers_default_to_us_ascii_text_7bit(void)
{
	check_bodystructure("\r\nhello", true,
			    "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 5 1 NIL NIL NIL NIL)");
	/* a header without a blank line: everything is header, the body is empty */
	check_bodystructure("Subject: x\r\n", false,
			    "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 0 0)");
	/* an unparsable Content-Type also means text/plain; charset=us-ascii */
	check_bodystructure("Content-Type: garbage\r\nContent-Transfer-Encoding: 8bit\r\n\r\nx\r\n", false,
			    "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"8BIT\" 3 1)");
	check_bodystructure("", false,
			    "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 0 0)");
	struct imap_mime *m = imap_mime_parse(NULL, 0);
	check_section(m, "", IMAP_SECTION_ALL, "");
	check_section(m, "1", IMAP_SECTION_ALL, "");
	check_section(m, "", IMAP_SECTION_HEADER, "");
	imap_mime_free(&m);
}

static void test_bare_lf_message_counts_bytes_as_stored(void)
{
	check_bodystructure("Subject: a\n\nline1\nline2\n", false,
			    "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 12 2)");
	check_bodystructure("Content-Type: multipart/mixed; boundary=q\n\n--q\n\nab\n--q\n\ncd\n\n--q--\n", false,
			    "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 2 1)"
			    "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 3 1) \"MIXED\")");
}

static void test_multipart_alternative_bodystructure(void)
{
	check_bodystructure(alternative_msg, true,
			    "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 10 1 NIL NIL NIL NIL)"
			    "(\"TEXT\" \"HTML\" (\"CHARSET\" \"utf-8\") NIL NIL \"QUOTED-PRINTABLE\" 14 1 NIL NIL NIL NIL)"
			    " \"ALTERNATIVE\" (\"BOUNDARY\" \"XX\") NIL NIL NIL)");
	check_bodystructure(alternative_msg, false,
			    "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 10 1)"
			    "(\"TEXT\" \"HTML\" (\"CHARSET\" \"utf-8\") NIL NIL \"QUOTED-PRINTABLE\" 14 1)"
			    " \"ALTERNATIVE\")");
}

static void test_multipart_mixed_attachment_has_all_extension_fields(void)
{
	check_bodystructure(mixed_msg, true,
			    "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 13 1 NIL NIL NIL NIL)"
			    "(\"APPLICATION\" \"PDF\" (\"NAME\" \"report.pdf\") \"<att1@x>\" \"The \\\"final\\\" report\""
			    " \"BASE64\" 12 \"Q2hlY2sgSW50ZWdyaXR5IQ==\""
			    " (\"ATTACHMENT\" (\"FILENAME\" \"report.pdf\" \"SIZE\" \"9\")) (\"en\" \"de\")"
			    " \"http://x/report.pdf\")"
			    " \"MIXED\" (\"BOUNDARY\" \"frontier\") NIL NIL NIL)");
	check_bodystructure(mixed_msg, false,
			    "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 13 1)"
			    "(\"APPLICATION\" \"PDF\" (\"NAME\" \"report.pdf\") \"<att1@x>\" \"The \\\"final\\\" report\""
			    " \"BASE64\" 12) \"MIXED\")");
}

static void test_nested_multipart_inside_multipart(void)
{
	check_bodystructure(nested_msg, true,
			    "(((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 5 1 NIL NIL NIL NIL)"
			    "(\"TEXT\" \"HTML\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 11 1 NIL NIL NIL NIL)"
			    " \"ALTERNATIVE\" (\"BOUNDARY\" \"inner\") NIL NIL NIL)"
			    "(\"IMAGE\" \"PNG\" NIL NIL NIL \"BASE64\" 12 NIL NIL NIL NIL)"
			    " \"MIXED\" (\"BOUNDARY\" \"outer\") NIL NIL NIL)");
}

static void test_message_rfc822_part_has_envelope_body_and_lines(void)
{
	check_bodystructure(rfc822_msg, true,
			    "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 10 1 NIL NIL NIL NIL)"
			    "(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 180"
			    " (\"Tue, 2 Jan 2024 09:30:00 -0500\" \"hello\""
			    " ((\"Inner, Person\" NIL \"inner\" \"example.net\"))"
			    " ((\"Inner, Person\" NIL \"inner\" \"example.net\"))"
			    " ((\"Inner, Person\" NIL \"inner\" \"example.net\"))"
			    " ((NIL NIL \"undisclosed-recipients\" NIL)(NIL NIL NIL NIL))"
			    " NIL NIL NIL \"<inner@example.net>\")"
			    " (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 18 2 NIL NIL NIL NIL)"
			    " 8 NIL NIL NIL NIL)"
			    " \"MIXED\" (\"BOUNDARY\" \"b1\") NIL NIL NIL)");
	check_bodystructure(rfc822_multipart_msg, false,
			    "((\"MESSAGE\" \"RFC822\" NIL NIL \"forwarded\" \"7BIT\" 151"
			    " (NIL \"inner\" NIL NIL NIL NIL NIL NIL NIL NIL)"
			    " ((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 3 1)"
			    "(\"TEXT\" \"ENRICHED\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 3 1) \"ALTERNATIVE\")"
			    " 12) \"MIXED\")");
}

static void test_multipart_digest_parts_default_to_message_rfc822(void)
{
	check_bodystructure("Content-Type: multipart/digest; boundary=d\r\n\r\n"
			    "--d\r\n\r\nSubject: s\r\n\r\nx\r\n--d--\r\n", false,
			    "((\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 15"
			    " (NIL \"s\" NIL NIL NIL NIL NIL NIL NIL NIL)"
			    " (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 1 1) 3) \"DIGEST\")");
}

static void test_rfc2231_parameters_are_joined(void)
{
	check_bodystructure("Content-Type: application/octet-stream;\r\n"
			    " name*0=\"very long \";\r\n"
			    " name*1=\"file name.txt\"\r\n"
			    "Content-Disposition: attachment;\r\n"
			    " filename*=utf-8''%E2%82%AC%20rates.txt;\r\n"
			    " title*1=\" plain\"; title*0*=us-ascii'en'This%20is\r\n"
			    "\r\n"
			    "data", true,
			    "(\"APPLICATION\" \"OCTET-STREAM\" (\"NAME\" \"very long file name.txt\") NIL NIL"
			    " \"7BIT\" 4 NIL (\"ATTACHMENT\" (\"FILENAME*\" \"utf-8''%E2%82%AC%20rates.txt\""
			    " \"TITLE*\" \"us-ascii'en'This%20is%20plain\")) NIL NIL)");
}

static void test_parameter_values_with_8bit_or_comments(void)
{
	/* comments are skipped; an 8-bit value is sent as a literal */
	check_bodystructure("Content-Type: text/plain (plain) ; charset = \"iso-8859-1\" (latin);"
			    " name=caf\xc3\xa9.txt\r\n\r\n", false,
			    "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"iso-8859-1\" \"NAME\" {9}\r\ncaf\xc3\xa9.txt)"
			    " NIL NIL \"7BIT\" 0 0)");
}

static void test_multipart_without_closing_boundary_ends_at_message_end(void)
{
	check_bodystructure("Content-Type: multipart/mixed; boundary=zz\r\n"
			    "\r\n"
			    "--zz\r\n"
			    "\r\n"
			    "first\r\n"
			    "--zz  \r\n"
			    "\r\n"
			    "-- zz is not a boundary\r\n", true,
			    "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 5 1 NIL NIL NIL NIL)"
			    "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 25 1 NIL NIL NIL NIL)"
			    " \"MIXED\" (\"BOUNDARY\" \"zz\") NIL NIL NIL)");
}

static void test_boundary_only_has_to_start_the_line_unless_inner_boundary_is_longer(void)
{
	/* RFC 2046 5.1.1: "--b trailing junk" is a delimiter of boundary b,
	 * but "--b-inner" is the delimiter of the nested multipart that
	 * declared boundary b-inner */
	const char *msg =
		"Content-Type: multipart/mixed; boundary=b\r\n"
		"\r\n"
		"--b trailing junk\r\n"
		"Content-Type: multipart/alternative; boundary=b-inner\r\n"
		"\r\n"
		"--b-inner\r\n"
		"\r\n"
		"one\r\n"
		"--b-inner\r\n"
		"\r\n"
		"two\r\n"
		"--b-inner--\r\n"
		"--b\r\n"
		"\r\n"
		"three\r\n"
		"--b--junk\r\n"
		"epilogue\r\n";
	check_bodystructure(msg, false,
			    "(((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 3 1)"
			    "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 3 1) \"ALTERNATIVE\")"
			    "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 5 1) \"MIXED\")");
	struct imap_mime *m = parse_str(msg);
	check_section(m, "1.2", IMAP_SECTION_ALL, "two");
	check_section(m, "2", IMAP_SECTION_ALL, "three");
	imap_mime_free(&m);
}

static void test_multipart_whose_boundary_never_occurs_degrades_to_text(void)
{
	const char *msg = "Content-Type: multipart/mixed; boundary=nope\r\n\r\nhello\r\n";
	check_bodystructure(msg, true,
			    "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 7 1 NIL NIL NIL NIL)");
	check_bodystructure("Content-Type: multipart/mixed\r\n\r\n--x\r\nhello\r\n", false,
			    "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 12 2)");
	struct imap_mime *m = parse_str(msg);
	check_section(m, "1", IMAP_SECTION_ALL, "hello\r\n");
	CU_ASSERT_EQUAL(imap_mime_part_count(m), 1);
	imap_mime_free(&m);
}

static size_t count_substr(const struct buf *b, const char *needle)
{
	size_t n = 0, nl = strlen(needle);
	for (size_t i = 0; i + nl <= b->len; i++) {
		if (memcmp(b->data + i, needle, nl) == 0)
			n++;
	}
	return n;
}

static bool parens_balanced(const struct buf *b)
{
	long depth = 0;
	for (size_t i = 0; i < b->len; i++) {
		if (b->data[i] == '(')
			depth++;
		else if (b->data[i] == ')' && --depth < 0)
			return false;
	}
	return depth == 0;
}

static void test_deep_nesting_is_bounded_and_degrades_to_text(void)
{
	enum { LEVELS = 60 };
	struct buf msg = BUF_INIT, tail = BUF_INIT;
	for (int i = 0; i < LEVELS; i++)
		buf_appendf(&msg, "Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n", i, i);
	buf_append_str(&msg, "Content-Type: text/plain\r\n\r\ndeep\r\n");
	for (int i = LEVELS - 1; i >= 0; i--)
		buf_appendf(&msg, "\r\n--b%d--\r\n", i);
	buf_free(&tail);

	struct imap_mime *m = imap_mime_parse(msg.data, msg.len);
	/* depths 0..49 are multiparts; the part at depth 50 is a text leaf.
	 * b1 is a prefix of b10..b19: their delimiters must not split b1. */
	CU_ASSERT_EQUAL(imap_mime_part_count(m), IMAP_MIME_MAX_DEPTH + 1);
	struct buf out = BUF_INIT;
	imap_mime_bodystructure(m, true, &out);
	CU_ASSERT_EQUAL(count_substr(&out, "\"MIXED\""), IMAP_MIME_MAX_DEPTH);
	CU_ASSERT_EQUAL(count_substr(&out, "\"TEXT\" \"PLAIN\""), 1);
	CU_ASSERT(parens_balanced(&out));

	char spec[2 * (IMAP_MIME_MAX_DEPTH + 2)];
	size_t n = 0;
	for (int i = 0; i < IMAP_MIME_MAX_DEPTH; i++) {
		spec[n++] = '1';
		spec[n++] = '.';
	}
	spec[n - 1] = '\0';
	buf_reset(&out);
	CU_ASSERT_EQUAL(imap_mime_section(m, spec, IMAP_SECTION_MIME, NULL, 0, &out), 0);
	assert_buf_eq(&out, "Content-Type: multipart/mixed; boundary=b50\r\n\r\n", "deepest MIME");
	spec[n - 1] = '.';
	spec[n] = '1';
	spec[n + 1] = '\0';
	buf_reset(&out);
	CU_ASSERT_EQUAL(imap_mime_section(m, spec, IMAP_SECTION_ALL, NULL, 0, &out), -1);
	buf_free(&out);
	imap_mime_free(&m);
	buf_free(&msg);
}

static void test_deep_message_rfc822_chain_does_not_recurse(void)
{
	/* 100000 nested message/rfc822 headers: parsing stays bounded */
	struct buf msg = BUF_INIT;
	for (int i = 0; i < 100000; i++)
		buf_append_str(&msg, "Content-Type: message/rfc822\r\n\r\n");
	buf_append_str(&msg, "x");
	struct imap_mime *m = imap_mime_parse(msg.data, msg.len);
	CU_ASSERT_EQUAL(imap_mime_part_count(m), IMAP_MIME_MAX_DEPTH + 1);
	struct buf out = BUF_INIT;
	imap_mime_bodystructure(m, false, &out);
	CU_ASSERT(parens_balanced(&out));
	CU_ASSERT_EQUAL(count_substr(&out, "\"MESSAGE\" \"RFC822\""), IMAP_MIME_MAX_DEPTH);
	buf_free(&out);
	imap_mime_free(&m);
	buf_free(&msg);
}

static void test_part_count_is_bounded(void)
{
	struct buf msg = BUF_INIT;
	buf_append_str(&msg, "Content-Type: multipart/mixed; boundary=b\r\n\r\n");
	for (int i = 0; i < IMAP_MIME_MAX_PARTS + 1000; i++)
		buf_append_str(&msg, "--b\r\n\r\nx\r\n");
	buf_append_str(&msg, "--b--\r\n");
	struct imap_mime *m = imap_mime_parse(msg.data, msg.len);
	CU_ASSERT_EQUAL(imap_mime_part_count(m), IMAP_MIME_MAX_PARTS);
	struct buf out = BUF_INIT;
	char spec[16];
	snprintf(spec, sizeof(spec), "%d", IMAP_MIME_MAX_PARTS - 1);
	CU_ASSERT_EQUAL(imap_mime_section(m, spec, IMAP_SECTION_ALL, NULL, 0, &out), 0);
	assert_buf_eq(&out, "x", "last part");
	buf_reset(&out);
	snprintf(spec, sizeof(spec), "%d", IMAP_MIME_MAX_PARTS);
	CU_ASSERT_EQUAL(imap_mime_section(m, spec, IMAP_SECTION_ALL, NULL, 0, &out), -1);
	buf_free(&out);
	imap_mime_free(&m);
	buf_free(&msg);
}

/* ---- ENVELOPE ---- */

static void test_simple_envelope_copies_from_to_sender_and_reply_to(void)
{
	check_envelope(simple_msg,
		       "(\"Mon, 1 Jan 2024 10:00:00 +0000\" \"Hi\""
		       " ((\"Alice\" NIL \"alice\" \"example.com\"))"
		       " ((\"Alice\" NIL \"alice\" \"example.com\"))"
		       " ((\"Alice\" NIL \"alice\" \"example.com\"))"
		       " ((NIL NIL \"bob\" \"example.org\")) NIL NIL NIL \"<1@example.com>\")");
}

static void test_envelope_groups_quoted_names_routes_and_missing_fields(void)
{
	check_envelope("From: \"Doe, John\" <john@example.com>\r\n"
		       "Reply-To: \r\n"
		       "To: Team: alice@example.com, \"Bob \\\"B\\\" Smith\" <bob@example.com>;,\r\n"
		       "  carol@example.com (Carol C)\r\n"
		       "Cc: Mary Smith <@relay.example:mary@example.net>, local-only,\r\n"
		       "\t=?utf-8?q?J=C3=B6rg?= <jorg@example.de>, John Q. Public <jqp@x.org>\r\n"
		       "Bcc: undisclosed-recipients:;\r\n"
		       "Subject: test with \"quotes\" and \\backslash\r\n"
		       "In-Reply-To: <parent@example.com>\r\n"
		       "\r\n",
		       "(NIL \"test with \\\"quotes\\\" and \\\\backslash\""
		       " ((\"Doe, John\" NIL \"john\" \"example.com\"))"
		       " ((\"Doe, John\" NIL \"john\" \"example.com\"))"
		       " ((\"Doe, John\" NIL \"john\" \"example.com\"))"
		       " ((NIL NIL \"Team\" NIL)(NIL NIL \"alice\" \"example.com\")"
		       "(\"Bob \\\"B\\\" Smith\" NIL \"bob\" \"example.com\")(NIL NIL NIL NIL)"
		       "(\"Carol C\" NIL \"carol\" \"example.com\"))"
		       " ((\"Mary Smith\" \"@relay.example\" \"mary\" \"example.net\")"
		       "(NIL NIL \"local-only\" \"MISSING_DOMAIN\")"
		       "(\"=?utf-8?q?J=C3=B6rg?=\" NIL \"jorg\" \"example.de\")"
		       "(\"John Q. Public\" NIL \"jqp\" \"x.org\"))"
		       " ((NIL NIL \"undisclosed-recipients\" NIL)(NIL NIL NIL NIL))"
		       " \"<parent@example.com>\" NIL)");
}

static void test_envelope_of_empty_header_is_all_nil(void)
{
	check_envelope("\r\nbody\r\n", "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)");
	/* empty address fields are NIL, an empty subject is "" */
	check_envelope("From:\r\nTo:   \r\nSubject:\r\n\r\n",
		       "(NIL \"\" NIL NIL NIL NIL NIL NIL NIL NIL)");
}

static void test_envelope_subject_is_unfolded_raw_and_8bit_goes_literal(void)
{
	check_envelope("Subject: =?utf-8?q?caf=C3=A9?=\r\n  folded\r\nSender: s@x\r\n"
		       "From: f@x\r\n\r\n",
		       "(NIL \"=?utf-8?q?caf=C3=A9?=  folded\" ((NIL NIL \"f\" \"x\"))"
		       " ((NIL NIL \"s\" \"x\")) ((NIL NIL \"f\" \"x\")) NIL NIL NIL NIL NIL)");
	check_envelope("Subject: caf\xc3\xa9\r\n\r\n",
		       "(NIL {5}\r\ncaf\xc3\xa9 NIL NIL NIL NIL NIL NIL NIL NIL)");
}

static void test_envelope_skips_control_characters_in_addresses(void)
{
	/* a control character once stopped the address lexer from advancing */
	check_envelope("To: x\x1d@y, <<>>@@,,;;::\x1d\x7f\r\n\r\n",
		       "(NIL NIL NIL NIL NIL ((NIL NIL \"x\" \"y\")"
		       "(NIL NIL \"MISSING_MAILBOX\" \"MISSING_DOMAIN\")) NIL NIL NIL NIL)");
}

/* ---- BODY[section] ---- */

static void test_sections_of_a_single_part_message(void)
{
	struct imap_mime *m = parse_str(simple_msg);
	const char *body = "Hello Bob\r\nBye\r\n";
	size_t hlen = strlen(simple_msg) - strlen(body);
	char header[512];
	memcpy(header, simple_msg, hlen);
	header[hlen] = '\0';

	check_section(m, "", IMAP_SECTION_ALL, simple_msg);
	check_section(m, NULL, IMAP_SECTION_HEADER, header);
	check_section(m, "", IMAP_SECTION_TEXT, body);
	check_section(m, "", IMAP_SECTION_MIME, NULL);
	/* part 1 of a non-multipart message is its body */
	check_section(m, "1", IMAP_SECTION_ALL, body);
	check_section(m, "1", IMAP_SECTION_MIME, header);
	check_section(m, "1", IMAP_SECTION_HEADER, NULL);
	check_section(m, "2", IMAP_SECTION_ALL, NULL);
	check_section(m, "1.1", IMAP_SECTION_ALL, NULL);
	check_section(m, "0", IMAP_SECTION_ALL, NULL);
	check_section(m, "01", IMAP_SECTION_ALL, NULL);
	check_section(m, "1.", IMAP_SECTION_ALL, NULL);
	check_section(m, "x", IMAP_SECTION_ALL, NULL);
	check_section(m, "99999999999999999999", IMAP_SECTION_ALL, NULL);
	imap_mime_free(&m);
}

static void test_header_fields_are_case_insensitive_and_end_with_blank_line(void)
{
	struct imap_mime *m = parse_str("Subject: one\r\n"
					"X-Long: a\r\n"
					"  b\r\n"
					"FROM: x@y\r\n"
					"subject: two\r\n"
					"not a field line\r\n"
					"\r\n"
					"body\r\n");
	static const char *const f1[] = { "from", "SUBJECT" };
	check_section_fields(m, "", IMAP_SECTION_HEADER_FIELDS, f1, 2,
			     "Subject: one\r\nFROM: x@y\r\nsubject: two\r\n\r\n");
	static const char *const f2[] = { "subject" };
	check_section_fields(m, "", IMAP_SECTION_HEADER_FIELDS_NOT, f2, 1,
			     "X-Long: a\r\n  b\r\nFROM: x@y\r\n\r\n");
	static const char *const f3[] = { "x-missing" };
	check_section_fields(m, "", IMAP_SECTION_HEADER_FIELDS, f3, 1, "\r\n");
	imap_mime_free(&m);

	/* a bare LF message gets a bare LF blank line */
	m = parse_str("Subject: lf\nTo: a@b\n\nbody\n");
	check_section_fields(m, "", IMAP_SECTION_HEADER_FIELDS, f2, 1, "Subject: lf\n\n");
	imap_mime_free(&m);
	/* a last field without a line end still gets one */
	m = parse_str("Subject: end");
	check_section_fields(m, "", IMAP_SECTION_HEADER_FIELDS, f2, 1, "Subject: end\r\n\r\n");
	imap_mime_free(&m);
}

static void test_sections_of_multipart_parts(void)
{
	struct imap_mime *m = parse_str(nested_msg);
	check_section(m, "1.2", IMAP_SECTION_ALL, "<b>html</b>");
	check_section(m, "1.1", IMAP_SECTION_ALL, "plain");
	check_section(m, "1.1", IMAP_SECTION_MIME, "\r\n");
	check_section(m, "1.2", IMAP_SECTION_MIME, "Content-Type: text/html\r\n\r\n");
	check_section(m, "1", IMAP_SECTION_MIME,
		      "Content-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n");
	check_section(m, "1", IMAP_SECTION_ALL,
		      "--inner\r\n\r\nplain\r\n--inner\r\nContent-Type: text/html\r\n\r\n"
		      "<b>html</b>\r\n--inner--");
	check_section(m, "2", IMAP_SECTION_ALL, "iVBORw0KGgo=");
	check_section(m, "1.3", IMAP_SECTION_ALL, NULL);
	check_section(m, "2.1", IMAP_SECTION_ALL, NULL);
	check_section(m, "3", IMAP_SECTION_ALL, NULL);
	check_section(m, "1", IMAP_SECTION_HEADER, NULL);
	check_section(m, "1", IMAP_SECTION_TEXT, NULL);
	imap_mime_free(&m);

	m = parse_str(alternative_msg);
	check_section(m, "1", IMAP_SECTION_ALL, "plain text");
	check_section(m, "2", IMAP_SECTION_ALL, "<p>html=3D</p>");
	check_section(m, "2", IMAP_SECTION_MIME,
		      "Content-Type: text/html; charset=\"utf-8\"\r\n"
		      "Content-Transfer-Encoding: quoted-printable\r\n\r\n");
	imap_mime_free(&m);
}

static void test_sections_of_attached_message(void)
{
	struct imap_mime *m = parse_str(rfc822_msg);
	static const char *const f[] = { "SUBJECT", "from" };
	static const char *const fnot[] = { "from", "subject", "date", "message-id" };
	check_section(m, "2", IMAP_SECTION_ALL, INNER_HEADER "Inner body\r\nline 2");
	check_section(m, "2", IMAP_SECTION_MIME, "Content-Type: message/rfc822\r\n\r\n");
	check_section(m, "2", IMAP_SECTION_HEADER, INNER_HEADER);
	check_section(m, "2", IMAP_SECTION_TEXT, "Inner body\r\nline 2");
	check_section_fields(m, "2", IMAP_SECTION_HEADER_FIELDS, f, 2,
			     "From: \"Inner, Person\" <inner@example.net>\r\nSubject: hello\r\n\r\n");
	check_section_fields(m, "2", IMAP_SECTION_HEADER_FIELDS_NOT, fnot, 4,
			     "To: undisclosed-recipients:;\r\n\r\n");
	/* the attached message is not multipart: its part 1 is its body */
	check_section(m, "2.1", IMAP_SECTION_ALL, "Inner body\r\nline 2");
	check_section(m, "2.1", IMAP_SECTION_MIME, INNER_HEADER);
	check_section(m, "2.2", IMAP_SECTION_ALL, NULL);
	check_section(m, "1", IMAP_SECTION_HEADER, NULL);
	imap_mime_free(&m);

	m = parse_str(rfc822_multipart_msg);
	check_section(m, "1.1", IMAP_SECTION_ALL, "one");
	check_section(m, "1.2", IMAP_SECTION_ALL, "two");
	check_section(m, "1.2", IMAP_SECTION_MIME, "Content-Type: text/enriched\r\n\r\n");
	check_section(m, "1.3", IMAP_SECTION_ALL, NULL);
	check_section(m, "1.1.1", IMAP_SECTION_ALL, NULL);
	check_section(m, "1", IMAP_SECTION_HEADER,
		      "Subject: inner\r\nContent-Type: multipart/alternative; boundary=i\r\n\r\n");
	static const char *const subj[] = { "subject" };
	check_section_fields(m, "1", IMAP_SECTION_HEADER_FIELDS, subj, 1, "Subject: inner\r\n\r\n");
	imap_mime_free(&m);
}

static void check_partial(const struct imap_mime *m, const char *part, enum imap_section_kind kind,
			  uint64_t offset, uint64_t count, const char *expected, uint64_t full)
{
	struct buf out = BUF_INIT;
	uint64_t size = 0;
	static const char *const f[] = { "subject" };
	CU_ASSERT_EQUAL(imap_mime_section_partial(m, part, kind, f, 1, offset, count, &out, &size), 0);
	assert_buf_eq(&out, expected, part);
	CU_ASSERT_EQUAL(size, full);
	buf_free(&out);
}

static void test_partial_sections_of_nested_messages(void)
{
	struct imap_mime *m = parse_str(rfc822_msg);
	/* BODY[2.TEXT]<6.4> of "Inner body\r\nline 2" */
	check_partial(m, "2", IMAP_SECTION_TEXT, 6, 4, "body", 18);
	check_partial(m, "2.1", IMAP_SECTION_ALL, 12, 100, "line 2", 18);
	check_partial(m, "2.1", IMAP_SECTION_ALL, 18, 5, "", 18);
	check_partial(m, "2.1", IMAP_SECTION_ALL, 1000, 5, "", 18);
	check_partial(m, "2", IMAP_SECTION_HEADER, 0, 4, "From", 162);
	check_partial(m, "2", IMAP_SECTION_HEADER_FIELDS, 9, UINT64_MAX, "hello\r\n\r\n", 18);
	check_partial(m, "", IMAP_SECTION_ALL, 0, 6, "From: ", strlen(rfc822_msg));
	struct buf out = BUF_INIT;
	CU_ASSERT_EQUAL(imap_mime_section_partial(m, "3", IMAP_SECTION_ALL, NULL, 0, 0, 1, &out, NULL), -1);
	CU_ASSERT_EQUAL(out.len, 0);
	buf_free(&out);
	imap_mime_free(&m);
}

static void test_section_of_message_rfc822_at_top_level(void)
{
	/* a top-level message/rfc822: 1 is the enclosed message, 1.1 its body */
	struct imap_mime *m = parse_str("Content-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\nbody");
	check_section(m, "1", IMAP_SECTION_ALL, "Subject: in\r\n\r\nbody");
	check_section(m, "1", IMAP_SECTION_HEADER, "Subject: in\r\n\r\n");
	check_section(m, "1.1", IMAP_SECTION_ALL, "body");
	check_section(m, "", IMAP_SECTION_TEXT, "Subject: in\r\n\r\nbody");
	imap_mime_free(&m);
}

/* ---- search ---- */

static void test_decode_header_joins_adjacent_encoded_words(void)
{
	struct {
		const char *in, *out;
	} cases[] = {
		{ "=?ISO-8859-1?Q?Caf=E9_cr=E8me?= =?UTF-8?B?w5xiZXI=?=", "Caf\xc3\xa9 cr\xc3\xa8me\xc3\x9c" "ber" },
		{ "=?utf-8?q?a?= b =?utf-8?q?c?=", "a b c" },
		{ "x =?utf-8*en?Q?y?=\r\n =?us-ascii?q?z?= w", "x yz w" },
		{ "=?bogus broken?= =?utf-8?x?nope?=", "=?bogus broken?= =?utf-8?x?nope?=" },
		{ "=?windows-1252?q?=80_5?=", "\xe2\x82\xac 5" },
		{ "", "" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct buf out = BUF_INIT;
		imap_mime_decode_header((const unsigned char *)cases[i].in, strlen(cases[i].in), &out);
		assert_buf_eq(&out, cases[i].out, cases[i].in);
		buf_free(&out);
	}
}

static void test_header_search_decodes_and_ignores_case(void)
{
	struct imap_mime *m = parse_str("Subject: =?ISO-8859-1?Q?Caf=E9_cr=E8me?=\r\n"
					" =?UTF-8?B?w5xiZXI=?=\r\n"
					"From: =?utf-8?q?J=C3=B6rg?= <jorg@example.de>\r\n"
					"X-Empty:\r\n"
					"\r\n"
					"body text\r\n");
	CU_ASSERT(imap_mime_header_contains(m, "subject", "CAF\xc3\x89 CR\xc3\x88ME"));
	CU_ASSERT(imap_mime_header_contains(m, "SUBJECT", "\xc3\xbc" "ber"));
	CU_ASSERT(!imap_mime_header_contains(m, "subject", "cr\xc3\xa8me \xc3\xbc" "ber"));
	CU_ASSERT(imap_mime_header_contains(m, "from", "j\xc3\xb6RG <JORG@"));
	CU_ASSERT(!imap_mime_header_contains(m, "to", "jorg"));
	CU_ASSERT(imap_mime_header_contains(m, NULL, "jorg@example"));
	CU_ASSERT(!imap_mime_header_contains(m, NULL, "body text"));
	/* an empty needle matches every message that has the field */
	CU_ASSERT(imap_mime_header_contains(m, "x-empty", ""));
	CU_ASSERT(!imap_mime_header_contains(m, "x-missing", ""));
	imap_mime_free(&m);
}

static void test_body_search_decodes_qp_base64_and_charsets(void)
{
	struct imap_mime *m = parse_str(alternative_msg);
	CU_ASSERT(imap_mime_body_contains(m, "HTML=</P>"));
	CU_ASSERT(!imap_mime_body_contains(m, "3D"));
	CU_ASSERT(imap_mime_body_contains(m, "Plain TEXT"));
	CU_ASSERT(!imap_mime_body_contains(m, "preamble"));
	CU_ASSERT(imap_mime_body_contains(m, ""));
	imap_mime_free(&m);

	m = parse_str("Content-Type: multipart/mixed; boundary=b\r\n\r\n"
		      "--b\r\n"
		      "Content-Type: text/plain; charset=iso-8859-1\r\n"
		      "Content-Transfer-Encoding: base64\r\n\r\n"
		      "R3L832UgYXVzIEv2bG4=\r\n"
		      "--b\r\n"
		      "Content-Type: text/plain; charset=windows-1252\r\n"
		      "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
		      "costs 5 =80, a very long=\r\n"
		      "word\r\n"
		      "--b\r\n"
		      "Content-Type: application/octet-stream\r\n\r\n"
		      "binary secret\r\n"
		      "--b\r\n"
		      "Content-Type: message/rfc822\r\n\r\n"
		      "Subject: inner\r\n\r\n"
		      "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 inside\r\n"
		      "--b--\r\n");
	CU_ASSERT(imap_mime_body_contains(m, "GR\xc3\x9c\xc3\x9f" "E AUS K\xc3\xb6LN"));
	CU_ASSERT(imap_mime_body_contains(m, "5 \xe2\x82\xac"));
	CU_ASSERT(imap_mime_body_contains(m, "longword"));
	CU_ASSERT(!imap_mime_body_contains(m, "secret"));
	/* Cyrillic folds too, and text of attached messages is searched */
	CU_ASSERT(imap_mime_body_contains(m, "\xd0\xbf\xd0\xa0\xd0\x98\xd0\x92\xd0\x95\xd0\xa2 INSIDE"));
	CU_ASSERT(!imap_mime_body_contains(m, "Subject: inner"));
	imap_mime_free(&m);
}

/* Bodies in charsets other than the four the old tables knew: each found by
 * a UTF-8 needle in another case. */
static void test_body_search_converts_charsets_iconv_knows(void)
{
	struct imap_mime *m = parse_str(
		"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
		"--b\r\n"
		"Content-Type: text/plain; charset=koi8-r\r\n\r\n"
		/* "Привет, мир! Встреча в пятницу" */
		"\xf0\xd2\xc9\xd7\xc5\xd4, \xcd\xc9\xd2! \xf7\xd3\xd4\xd2\xc5\xde\xc1 \xd7 \xd0\xd1\xd4\xce\xc9\xc3\xd5" "\r\n"
		"--b\r\n"
		"Content-Type: text/plain; charset=\"ISO-2022-JP\"\r\n\r\n"
		/* "会議は金曜日です" */
		"\x1b$B2q5D$O6bMKF|$G$9\x1b(B" "\r\n"
		"--b\r\n"
		"Content-Type: text/plain; charset=Shift_JIS\r\n"
		"Content-Transfer-Encoding: 8bit\r\n\r\n"
		/* "東京タワーで会いましょう" */
		"\x93\x8c\x8b\x9e\x83^\x83\x8f\x81[\x82\xc5\x89\xef\x82\xa2\x82\xdc\x82\xb5\x82\xe5\x82\xa4" "\r\n"
		"--b\r\n"
		"Content-Type: text/html; charset=gb2312\r\n\r\n"
		/* "明天开会" */
		"<p>" "\xc3\xf7\xcc\xec\xbf\xaa\xbb\xe1" "</p>\r\n"
		"--b\r\n"
		"Content-Type: text/plain; charset=utf-16\r\n"
		"Content-Transfer-Encoding: base64\r\n\r\n"
		/* "Grüße aus Köln" with a byte order mark */
		"//5HAHIA/ADfAGUAIABhAHUAcwAgAEsA9gBsAG4A\r\n"
		"--b--\r\n");
	/* "ВСТРЕЧА В ПЯТНИЦУ" */
	CU_ASSERT(imap_mime_body_contains(m, "\xd0\x92\xd0\xa1\xd0\xa2\xd0\xa0\xd0\x95\xd0\xa7\xd0\x90 \xd0\x92 \xd0\x9f\xd0\xaf\xd0\xa2\xd0\x9d\xd0\x98\xd0\xa6\xd0\xa3"));
	/* "金曜日" */
	CU_ASSERT(imap_mime_body_contains(m, "\xe9\x87\x91\xe6\x9b\x9c\xe6\x97\xa5"));
	/* "タワーで" */
	CU_ASSERT(imap_mime_body_contains(m, "\xe3\x82\xbf\xe3\x83\xaf\xe3\x83\xbc\xe3\x81\xa7"));
	/* "开会" */
	CU_ASSERT(imap_mime_body_contains(m, "\xe5\xbc\x80\xe4\xbc\x9a"));
	/* "GRÜßE AUS KÖLN" */
	CU_ASSERT(imap_mime_body_contains(m, "GR\xc3\x9c\xc3\x9f" "E AUS K\xc3\x96LN"));
	CU_ASSERT(!imap_mime_body_contains(m, "\x1b$B"));
	imap_mime_free(&m);
}

static void test_encoded_words_in_charsets_iconv_knows(void)
{
	struct imap_mime *m = parse_str("Subject: =?windows-1251?B?zvL3uPIg5+Ag6uLg8PLg6w==?=\r\n"
					"From: =?GB2312?B?sbG+?= =?GB2312?B?qbu2063E4w==?= <x@example.cn>\r\n"
					"\r\nbody\r\n");
	/* "ОТЧЁТ ЗА" */
	CU_ASSERT(imap_mime_header_contains(m, "subject", "\xd0\x9e\xd0\xa2\xd0\xa7\xd0\x81\xd0\xa2 \xd0\x97\xd0\x90"));
	/* "北京欢迎你": the second character is split across the two words */
	CU_ASSERT(imap_mime_header_contains(m, "from", "\xe5\x8c\x97\xe4\xba\xac\xe6\xac\xa2\xe8\xbf\x8e\xe4\xbd\xa0"));
	imap_mime_free(&m);

	struct {
		const char *in, *out;
	} cases[] = {
		{ "=?koi8-r?q?=F0=D2=C9=D7=C5=D4?=", "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82" },
		{ "=?ISO-2022-JP?B?GyRCRnxLXDhsGyhC?=", "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e" },
		/* unknown charset: the decoded bytes as they are */
		{ "=?x-unknown?q?=F0=D2?=", "\xf0\xd2" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct buf out = BUF_INIT;
		imap_mime_decode_header((const unsigned char *)cases[i].in, strlen(cases[i].in), &out);
		assert_buf_eq(&out, cases[i].out, cases[i].in);
		buf_free(&out);
	}
}

/* Invalid sequences become U+FFFD and the text after them is still
 * converted; output stays bounded. */
static void test_invalid_bytes_do_not_stop_conversion(void)
{
	struct imap_mime *m = parse_str(
		"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
		"--b\r\n"
		"Content-Type: text/plain; charset=shift_jis\r\n\r\n"
		/* a lead byte with a bad trail byte, and bytes Shift_JIS never uses */
		"bad \x81\x20\xff\xfe\xa0 then " "\x93\x8c\x8b\x9e" " later\r\n"
		"--b\r\n"
		"Content-Type: text/plain; charset=iso-2022-jp\r\n\r\n"
		"\x1b$Z bogus escape, then \x1b$B2q5D\x1b(B meeting\r\n"
		"--b--\r\n");
	/* "東京 LATER", "会議 MEETING" */
	CU_ASSERT(imap_mime_body_contains(m, "\xe6\x9d\xb1\xe4\xba\xac LATER"));
	CU_ASSERT(imap_mime_body_contains(m, "\xe4\xbc\x9a\xe8\xad\xb0 MEETING"));
	CU_ASSERT(imap_mime_body_contains(m, "BAD \xef\xbf\xbd"));
	imap_mime_free(&m);

	static const struct {
		const char *charset, *in;
		size_t in_len;
		const char *out;
	} cases[] = {
		/* an unpaired surrogate costs one code unit, not the alignment */
		{ "UTF-16LE", "h\0i\0\x00\xdct\0h\0e\0r\0e\0", 16, "hi\xef\xbf\xbdthere" },
		/* input ending inside a character */
		{ "EUC-JP", "abc\xa4", 4, "abc\xef\xbf\xbd" },
		{ "euc-jp", "\xa4\xa2\xff" "x", 4, "\xe3\x81\x82\xef\xbf\xbdx" },
		/* a label mailers use that glibc does not know */
		{ "ks_c_5601-1987", "\xc7\xd1", 2, "\xed\x95\x9c" },
		{ " KOI8-R ", "\xf0", 1, "\xd0\x9f" },
		/* UTF-8 and US-ASCII are compared as they are, like before */
		{ "utf-8", "\xff" "a", 2, "\xff" "a" },
		{ "US-ASCII", "\xe9", 1, "\xe9" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct buf out = BUF_INIT;
		CU_ASSERT_EQUAL(imap_mime_charset_to_utf8(cases[i].charset, strlen(cases[i].charset),
							  (const unsigned char *)cases[i].in,
							  cases[i].in_len, &out), 0);
		assert_buf_eq(&out, cases[i].out, cases[i].charset);
		buf_free(&out);
	}

	/* 64 KiB of bytes invalid in Shift_JIS: every one becomes U+FFFD */
	size_t n = 65536;
	unsigned char *junk = malloc(n);
	CU_ASSERT_PTR_NOT_NULL_FATAL(junk);
	memset(junk, 0xff, n);
	struct buf out = BUF_INIT;
	CU_ASSERT_EQUAL(imap_mime_charset_to_utf8("Shift_JIS", 9, junk, n, &out), 0);
	CU_ASSERT_EQUAL(out.len, 3 * n);
	free(junk);
	buf_free(&out);
}

/* Names iconv does not know, or that glibc would read as something else
 * ("" is the locale's charset, "//" adds options), leave the bytes as they
 * are and SEARCH CHARSET refuses them. */
static void test_unknown_charsets_keep_the_bytes(void)
{
	static const char *const names[] = {
		"x-unknown", "", "   ", "UTF-8//IGNORE", "koi8-r,utf-8", "../../tmp/x",
		"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		struct buf out = BUF_INIT;
		CU_ASSERT_EQUAL(imap_mime_charset_to_utf8(names[i], strlen(names[i]),
							  (const unsigned char *)"\xf0x", 2, &out), -1);
		assert_buf_eq(&out, "\xf0x", names[i]);
		CU_ASSERT_FALSE(imap_mime_charset_known(names[i], strlen(names[i])));
		buf_free(&out);
	}
	CU_ASSERT_TRUE(imap_mime_charset_known("UTF-8", 5));
	CU_ASSERT_TRUE(imap_mime_charset_known("windows-1251", 12));
	CU_ASSERT_TRUE(imap_mime_charset_known("GB18030", 7));
	/* a body in an unknown charset is still searched as bytes */
	struct imap_mime *m = parse_str("Content-Type: text/plain; charset=x-unknown\r\n\r\n"
					"caf\xe9 au lait\r\n");
	CU_ASSERT(imap_mime_body_contains(m, "CAF\xe9 AU"));
	imap_mime_free(&m);
}

/* RFC 5051 i;unicode-casemap: titlecase, then full decomposition. */
static void test_case_folding_is_rfc5051_unicode_casemap(void)
{
	struct imap_mime *m = parse_str(
		"Content-Type: text/plain; charset=utf-8\r\n\r\n"
		/* Turkish: "kırmızı İstanbul" */
		"k\xc4\xb1rm\xc4\xb1z\xc4\xb1 \xc4\xb0stanbul\r\n"
		/* Greek with a final sigma: "ΟΔΟΣ" */
		"\xce\x9f\xce\x94\xce\x9f\xce\xa3\r\n"
		/* German: "Straße" */
		"Stra\xc3\x9f" "e\r\n"
		/* Armenian "Բարեւ", Georgian Asomtavruli "Ⴀ" */
		"\xd4\xb2\xd5\xa1\xd6\x80\xd5\xa5\xd6\x82 \xe1\x82\xa0\r\n"
		/* "café" precomposed, "résumé" decomposed, "ﬁle" with a ligature */
		"caf\xc3\xa9 re\xcc\x81sume\xcc\x81 \xef\xac\x81le\r\n");
	/* dotless i is I in titlecase: "KIRMIZI" and "kirmizi" */
	CU_ASSERT(imap_mime_body_contains(m, "KIRMIZI"));
	CU_ASSERT(imap_mime_body_contains(m, "kirmizi"));
	/* dotted capital I decomposes to I + U+0307: "i̇stanbul" */
	CU_ASSERT(imap_mime_body_contains(m, "i\xcc\x87stanbul"));
	CU_ASSERT(!imap_mime_body_contains(m, "ISTANBUL"));
	/* "οδος" with a final sigma, and "ΟΔΟσ" */
	CU_ASSERT(imap_mime_body_contains(m, "\xce\xbf\xce\xb4\xce\xbf\xcf\x82"));
	CU_ASSERT(imap_mime_body_contains(m, "\xce\x9f\xce\x94\xce\x9f\xcf\x83"));
	/* sharp s has no titlecase form of its own: "STRAßE" matches, "STRASSE" not */
	CU_ASSERT(imap_mime_body_contains(m, "STRA\xc3\x9f" "E"));
	CU_ASSERT(!imap_mime_body_contains(m, "STRASSE"));
	/* "բԱՐԵՒ", Nuskhuri "ⴀ" */
	CU_ASSERT(imap_mime_body_contains(m, "\xd5\xa2\xd4\xb1\xd5\x90\xd4\xb5\xd5\x92"));
	CU_ASSERT(imap_mime_body_contains(m, "\xe2\xb4\x80"));
	/* precomposed and decomposed forms match each other, in any case */
	CU_ASSERT(imap_mime_body_contains(m, "CAFE\xcc\x81"));
	CU_ASSERT(imap_mime_body_contains(m, "R\xc3\x89SUM\xc3\x89"));
	CU_ASSERT(imap_mime_body_contains(m, "FILE"));
	CU_ASSERT(!imap_mime_body_contains(m, "CAF\xc3\xa8"));
	imap_mime_free(&m);

	/* the same folding applies to decoded header values */
	m = parse_str("Subject: =?utf-8?q?=CE=9F=CE=94=CE=9F=CE=A3_k=C4=B1rm=C4=B1z=C4=B1?=\r\n\r\nx\r\n");
	CU_ASSERT(imap_mime_header_contains(m, "subject", "\xce\xbf\xce\xb4\xce\xbf\xcf\x82 KIRMIZI"));
	imap_mime_free(&m);
}

/* ---- dates ---- */

static void test_parse_date_accepts_real_world_forms(void)
{
	static const struct {
		const char *s;
		int64_t t;
		int32_t tz;
	} cases[] = {
		{ "Mon, 1 Jan 2024 10:00:00 +0000", 1704103200, 0 },
		{ "1 Jan 2024 11:00:00 +0100", 1704103200, 60 },
		{ "Mon, 01 Jan 2024 05:00 -0500 (EST)", 1704103200, -300 },
		{ "Mon, 1 Jan 24 10:00:00 GMT", 1704103200, 0 },
		{ "Fri, 1 Jan 99 10:00:00 EST", 915202800, -300 },
		{ "Mon Jan  1 10:00:00 2024", 1704103200, 0 },
		{ "Monday, 01-Jan-24 10:00:00 GMT", 1704103200, 0 },
		{ "2024-01-01T10:00:00Z", 1704103200, 0 },
		{ "2024-01-01T11:00:00.123+01:00", 1704103200, 60 },
		{ "Mon, 1 January 2024 10:00:00 +0000", 1704103200, 0 },
		{ "Mon., 1 Jan. 2024 10:00:00 UT", 1704103200, 0 },
		{ "mon, 1 jan 2024 10:00:00 pdt", 1704128400, -420 },
		{ "  Mon,\t1 Jan 2024 10:00:00 +0000 (Coordinated Universal Time)  ", 1704103200, 0 },
		{ "Thu, 29 Feb 2024 23:59:60 +0000", 1709251199, 0 },
		{ "Sun, 1 Jan 2023 10:00:00 A", 1672567200, 0 },
		{ "1 Jan 2024 10:00:00", 1704103200, 0 },
		{ "Sat, 1 Jan 100 10:00:00 +0000", 946720800, 0 },
		{ "Mon, 1 Jan 2024 10:00:00 AM +0000", 1704103200, 0 },
		{ "1 Jan 2024 10:00:00 PM +1200", 1704103200, 720 },
		{ "Thu, 1 Jan 1970 00:00:00 +0000", 0, 0 },
		{ "Wed, 31 Dec 1969 23:59:59 +0000", -1, 0 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int64_t t = 12345;
		int32_t tz = 12345;
		int ret = imap_mime_parse_date(cases[i].s, strlen(cases[i].s), &t, &tz);
		if (ret != 1 || t != cases[i].t || tz != cases[i].tz)
			fprintf(stderr, "\ndate \"%s\": ret %d t %lld tz %d\n", cases[i].s, ret,
				(long long)t, (int)tz);
		CU_ASSERT_EQUAL(ret, 1);
		CU_ASSERT_EQUAL(t, cases[i].t);
		CU_ASSERT_EQUAL(tz, cases[i].tz);
	}
}

static void test_parse_date_rejects_invalid_dates(void)
{
	static const char *const bad[] = {
		"",
		"hello",
		"31 Feb 2024 10:00:00 +0000",
		"29 Feb 2023 10:00:00 +0000",
		"1 Foo 2024 10:00:00 +0000",
		"1 Jan 2024 25:00:00 +0000",
		"1 Jan 2024 10:61:00 +0000",
		"Mon, 1 Jan 2024 10:00:00 +9999",
		"1 Jan 2024 10:00:00 +123456",
		"Jan 2024",
		"1 2 3 4 Jan 10:00",
		"1 Jan 123456 10:00:00",
		"10:00:00",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int64_t t = 7;
		int32_t tz = 7;
		int ret = imap_mime_parse_date(bad[i], strlen(bad[i]), &t, &tz);
		if (ret != 0)
			fprintf(stderr, "\ndate \"%s\" accepted as %lld\n", bad[i], (long long)t);
		CU_ASSERT_EQUAL(ret, 0);
		CU_ASSERT_EQUAL(t, 7);
		CU_ASSERT_EQUAL(tz, 7);
	}
}

static void test_message_date_reads_folded_date_header(void)
{
	struct imap_mime *m = parse_str("Subject: x\r\nDate: Mon, 1 Jan 2024\r\n 12:30:00 +0230\r\n\r\n");
	int64_t t = 0;
	int32_t tz = 0;
	CU_ASSERT_EQUAL(imap_mime_date(m, &t, &tz), 1);
	CU_ASSERT_EQUAL(t, 1704103200);
	CU_ASSERT_EQUAL(tz, 150);
	imap_mime_free(&m);

	m = parse_str("Subject: no date\r\n\r\n");
	CU_ASSERT_EQUAL(imap_mime_date(m, &t, &tz), 0);
	imap_mime_free(&m);
	m = parse_str("Date: someday\r\n\r\n");
	CU_ASSERT_EQUAL(imap_mime_date(m, &t, &tz), 0);
	imap_mime_free(&m);
}

/* ---- hostile input ---- */

static void test_garbage_input_never_crashes(void)
{
	/* every prefix of a tricky message parses and formats */
	static const char tricky[] =
		"Content-Type: multipart/mixed; boundary=\"b\"; x*0*=a; x*1=\"\r\n"
		"From: \"unterminated <a@b>, (comment (nested, <x@y>\r\n"
		"To: <<>>@@,,;;::\x1d\r\n"
		"Subject: =?utf-8?B?====?= =?\r\n"
		"\r\n"
		"--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: a\r\n\r\n--b\r\n"
		"Content-Type: text/plain; charset=\"\r\n\r\n=\r\n=4\r\n--b--";
	for (size_t n = 0; n <= sizeof(tricky) - 1; n++) {
		struct imap_mime *m = imap_mime_parse((const unsigned char *)tricky, n);
		struct buf out = BUF_INIT;
		imap_mime_bodystructure(m, true, &out);
		CU_ASSERT(parens_balanced(&out) || memchr(out.data, '{', out.len) != NULL);
		buf_reset(&out);
		imap_mime_envelope(m, &out);
		CU_ASSERT(out.len > 0);
		(void)imap_mime_header_contains(m, NULL, "x");
		(void)imap_mime_body_contains(m, "x");
		static const char *const parts[] = { "", "1", "2", "1.1" };
		for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
			buf_reset(&out);
			(void)imap_mime_binary(m, parts[i], &out);
		}
		buf_reset(&out);
		(void)imap_mime_binary_to_base64((const unsigned char *)tricky, n, &out);
		buf_free(&out);
		imap_mime_free(&m);
	}
}

static void test_binary_undoes_transfer_encodings(void)
{
	static const char msg[] =
		"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
		"--b\r\nContent-Transfer-Encoding: BASE64\r\n\r\n AGF\r\n iAP8=\r\n"
		"--b\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
		"a=3Db  \r\nc= \r\nd=\r\n"
		"--b\r\nContent-Transfer-Encoding: x-unknown\r\n\r\nzz\r\n"
		"--b\r\nContent-Transfer-Encoding: 8bit\r\n\r\nr=3D\r\n--b--\r\n";
	struct imap_mime *m = imap_mime_parse((const unsigned char *)msg, sizeof(msg) - 1);
	struct buf out = BUF_INIT;
	CU_ASSERT_EQUAL(imap_mime_binary(m, "1", &out), 0);
	CU_ASSERT(out.len == 5 && memcmp(out.data, "\0ab\0\xff", 5) == 0);
	buf_reset(&out);
	CU_ASSERT_EQUAL(imap_mime_binary(m, "2", &out), 0);
	/* trailing blanks dropped, "= " at a line end is a soft break */
	CU_ASSERT(out.len == 7 && memcmp(out.data, "a=b\r\ncd", 7) == 0);
	buf_reset(&out);
	CU_ASSERT_EQUAL(imap_mime_binary(m, "3", &out), -2);
	CU_ASSERT_EQUAL(out.len, 0);
	CU_ASSERT_EQUAL(imap_mime_binary(m, "4", &out), 0);
	CU_ASSERT(out.len == 4 && memcmp(out.data, "r=3D", 4) == 0);
	buf_reset(&out);
	CU_ASSERT_EQUAL(imap_mime_binary(m, "5", &out), -1);
	CU_ASSERT_EQUAL(imap_mime_binary(m, "1.1", &out), -1);
	CU_ASSERT_EQUAL(imap_mime_binary(m, "", &out), 0);
	CU_ASSERT_EQUAL(out.len, sizeof(msg) - 1);
	buf_free(&out);
	imap_mime_free(&m);
}

static void test_binary_to_base64_reencodes_parts_with_nul(void)
{
	static const char msg[] =
		"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
		"--b\r\nContent-Type: application/x\r\nContent-Transfer-Encoding: binary\r\n"
		"X-Keep: 1\r\n\r\n\0\x01\xff\0\r\n"
		"--b\r\nContent-Type: text/plain\r\n\r\nno nul here\r\n--b--\r\n";
	struct buf out = BUF_INIT;
	CU_ASSERT_EQUAL(imap_mime_binary_to_base64((const unsigned char *)msg, sizeof(msg) - 1,
						   &out), 1);
	CU_ASSERT_PTR_NULL(memchr(out.data, '\0', out.len));
	struct imap_mime *m = imap_mime_parse(out.data, out.len);
	struct buf part = BUF_INIT;
	CU_ASSERT_EQUAL(imap_mime_binary(m, "1", &part), 0);
	CU_ASSERT(part.len == 4 && memcmp(part.data, "\0\x01\xff\0", 4) == 0);
	buf_reset(&part);
	CU_ASSERT_EQUAL(imap_mime_section(m, "1", IMAP_SECTION_MIME, NULL, 0, &part), 0);
	buf_append_byte(&part, '\0');
	CU_ASSERT_PTR_NOT_NULL(strstr((const char *)part.data, "X-Keep: 1\r\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr((const char *)part.data, "Content-Transfer-Encoding: base64"));
	CU_ASSERT_PTR_NULL(strstr((const char *)part.data, "binary"));
	buf_reset(&part);
	CU_ASSERT_EQUAL(imap_mime_binary(m, "2", &part), 0);
	CU_ASSERT(part.len == 11 && memcmp(part.data, "no nul here", 11) == 0);
	buf_free(&part);
	imap_mime_free(&m);
	/* Nothing to do: the text is copied as it is. */
	buf_reset(&out);
	CU_ASSERT_EQUAL(imap_mime_binary_to_base64((const unsigned char *)"a: b\r\n\r\nc", 9,
						   &out), 0);
	CU_ASSERT(out.len == 9 && memcmp(out.data, "a: b\r\n\r\nc", 9) == 0);
	buf_free(&out);
}

static const struct test_case mime_cases[] = {
	{ "simple_text_message_bodystructure_and_body", test_simple_text_message_bodystructure_and_body },
	{ "missing_headers_default_to_us_ascii_text_7bit", test_missing_headers_default_to_us_ascii_text_7bit },
	{ "bare_lf_message_counts_bytes_as_stored", test_bare_lf_message_counts_bytes_as_stored },
	{ "multipart_alternative_bodystructure", test_multipart_alternative_bodystructure },
	{ "multipart_mixed_attachment_has_all_extension_fields",
	  test_multipart_mixed_attachment_has_all_extension_fields },
	{ "nested_multipart_inside_multipart", test_nested_multipart_inside_multipart },
	{ "message_rfc822_part_has_envelope_body_and_lines",
	  test_message_rfc822_part_has_envelope_body_and_lines },
	{ "multipart_digest_parts_default_to_message_rfc822",
	  test_multipart_digest_parts_default_to_message_rfc822 },
	{ "rfc2231_parameters_are_joined", test_rfc2231_parameters_are_joined },
	{ "parameter_values_with_8bit_or_comments", test_parameter_values_with_8bit_or_comments },
	{ "multipart_without_closing_boundary_ends_at_message_end",
	  test_multipart_without_closing_boundary_ends_at_message_end },
	{ "boundary_only_has_to_start_the_line_unless_inner_boundary_is_longer",
	  test_boundary_only_has_to_start_the_line_unless_inner_boundary_is_longer },
	{ "multipart_whose_boundary_never_occurs_degrades_to_text",
	  test_multipart_whose_boundary_never_occurs_degrades_to_text },
	{ "deep_nesting_is_bounded_and_degrades_to_text", test_deep_nesting_is_bounded_and_degrades_to_text },
	{ "deep_message_rfc822_chain_does_not_recurse", test_deep_message_rfc822_chain_does_not_recurse },
	{ "part_count_is_bounded", test_part_count_is_bounded },
	{ NULL, NULL },
};

static const struct test_case envelope_cases[] = {
	{ "simple_envelope_copies_from_to_sender_and_reply_to",
	  test_simple_envelope_copies_from_to_sender_and_reply_to },
	{ "envelope_groups_quoted_names_routes_and_missing_fields",
	  test_envelope_groups_quoted_names_routes_and_missing_fields },
	{ "envelope_of_empty_header_is_all_nil", test_envelope_of_empty_header_is_all_nil },
	{ "envelope_skips_control_characters_in_addresses",
	  test_envelope_skips_control_characters_in_addresses },
	{ "envelope_subject_is_unfolded_raw_and_8bit_goes_literal",
	  test_envelope_subject_is_unfolded_raw_and_8bit_goes_literal },
	{ NULL, NULL },
};

static const struct test_case section_cases[] = {
	{ "sections_of_a_single_part_message", test_sections_of_a_single_part_message },
	{ "header_fields_are_case_insensitive_and_end_with_blank_line",
	  test_header_fields_are_case_insensitive_and_end_with_blank_line },
	{ "sections_of_multipart_parts", test_sections_of_multipart_parts },
	{ "sections_of_attached_message", test_sections_of_attached_message },
	{ "section_of_message_rfc822_at_top_level", test_section_of_message_rfc822_at_top_level },
	{ "partial_sections_of_nested_messages", test_partial_sections_of_nested_messages },
	{ NULL, NULL },
};

static const struct test_case search_cases[] = {
	{ "decode_header_joins_adjacent_encoded_words", test_decode_header_joins_adjacent_encoded_words },
	{ "header_search_decodes_and_ignores_case", test_header_search_decodes_and_ignores_case },
	{ "body_search_decodes_qp_base64_and_charsets", test_body_search_decodes_qp_base64_and_charsets },
	{ "body_search_converts_charsets_iconv_knows", test_body_search_converts_charsets_iconv_knows },
	{ "encoded_words_in_charsets_iconv_knows", test_encoded_words_in_charsets_iconv_knows },
	{ "invalid_bytes_do_not_stop_conversion", test_invalid_bytes_do_not_stop_conversion },
	{ "unknown_charsets_keep_the_bytes", test_unknown_charsets_keep_the_bytes },
	{ "case_folding_is_rfc5051_unicode_casemap", test_case_folding_is_rfc5051_unicode_casemap },
	{ NULL, NULL },
};

static const struct test_case binary_cases[] = {
	{ "binary_undoes_transfer_encodings", test_binary_undoes_transfer_encodings },
	{ "binary_to_base64_reencodes_parts_with_nul",
	  test_binary_to_base64_reencodes_parts_with_nul },
	{ NULL, NULL },
};

static const struct test_case date_cases[] = {
	{ "parse_date_accepts_real_world_forms", test_parse_date_accepts_real_world_forms },
	{ "parse_date_rejects_invalid_dates", test_parse_date_rejects_invalid_dates },
	{ "message_date_reads_folded_date_header", test_message_date_reads_folded_date_header },
	{ NULL, NULL },
};

static const struct test_case hostile_cases[] = {
	{ "garbage_input_never_crashes", test_garbage_input_never_crashes },
	{ NULL, NULL },
};

int main(void)
{
	static const struct test_suite suites[] = {
		{ "mime-bodystructure", mime_cases, NULL, NULL },
		{ "mime-envelope", envelope_cases, NULL, NULL },
		{ "mime-section", section_cases, NULL, NULL },
		{ "mime-search", search_cases, NULL, NULL },
		{ "mime-date", date_cases, NULL, NULL },
		{ "mime-binary", binary_cases, NULL, NULL },
		{ "mime-hostile", hostile_cases, NULL, NULL },
		{ NULL, NULL, NULL, NULL },
	};
	return test_run_suites("test-mime", suites);
}

/* Unit tests of the protocol parser and writer: every command of SPEC.md
 * written and parsed back, every split of the input, every limit. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/xalloc.h"
#include "protocol/protocol.h"
#include "tests/protocol/tests.h"

static char *steal_str(struct buf *b)
{
	size_t len;
	return (char *)buf_steal(b, &len);
}


/* A canonical text form of a parsed line: atoms bare, quoted strings in
 * double quotes (raw), literals as {N:bytes}, status lines as
 * "TAG NAME [code] |text|". */
static void dump_args(struct buf *b, const struct proto_arg *args, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const struct proto_arg *a = &args[i];
		if (i > 0)
			buf_append_byte(b, ' ');
		switch (a->type) {
		case PROTO_ARG_ATOM:
			buf_append(b, a->str, a->len);
			break;
		case PROTO_ARG_QUOTED:
			buf_append_byte(b, '"');
			buf_append(b, a->str, a->len);
			buf_append_byte(b, '"');
			break;
		case PROTO_ARG_LITERAL:
			buf_appendf(b, "{%zu:", a->len);
			if (a->len <= 64) {
				/* NULs would end the dump string early. */
				for (size_t j = 0; j < a->len; j++) {
					if (a->str[j] == '\0')
						buf_append_str(b, "\\0");
					else
						buf_append_byte(b, (unsigned char)a->str[j]);
				}
			}
			else
				buf_appendf(b, "%02x..%02x", (unsigned char)a->str[0],
					    (unsigned char)a->str[a->len - 1]);
			buf_append_byte(b, '}');
			break;
		case PROTO_ARG_LIST:
			buf_append_byte(b, '(');
			dump_args(b, a->list, a->count);
			buf_append_byte(b, ')');
			break;
		}
	}
}

static char *dump_cmd(const struct proto_cmd *cmd)
{
	struct buf b = BUF_INIT;
	buf_appendf(&b, "%s %s", cmd->tag, cmd->name);
	if (proto_cmd_is_status(cmd)) {
		if (cmd->has_code) {
			buf_append_str(&b, " [");
			dump_args(&b, cmd->args, cmd->arg_count);
			buf_append_byte(&b, ']');
		}
		buf_appendf(&b, " |%s|", cmd->text);
	} else if (cmd->arg_count > 0) {
		buf_append_byte(&b, ' ');
		dump_args(&b, cmd->args, cmd->arg_count);
	}
	return steal_str(&b);
}

/* Parses input fed in pieces of at most `step` bytes (0: all at once),
 * optionally with one extra cut at `split`; returns the dumps joined with
 * '\n' and the final status in *status_r (1 all complete, 0 partial, -1). */
static char *parse_pieces(const struct proto_parser_settings *set, const unsigned char *in,
			  size_t len, size_t step, size_t split, int *status_r,
			  enum proto_parse_error *err_r)
{
	struct proto_parser *p = proto_parser_create(set);
	struct buf out = BUF_INIT;
	size_t pos = 0;
	int status = 1;
	buf_append_str(&out, "");
	while (pos < len && status >= 0) {
		size_t end = len;
		if (step > 0 && pos + step < end)
			end = pos + step;
		if (split > pos && split < end)
			end = split;
		size_t off = pos;
		while (off < end) {
			size_t used;
			const struct proto_cmd *cmd;
			int r = proto_parser_parse(p, in + off, end - off, &used, &cmd);
			CU_ASSERT(used <= end - off);
			off += used;
			if (r < 0) {
				status = -1;
				break;
			}
			if (r == 1) {
				char *d = dump_cmd(cmd);
				buf_appendf(&out, "%s\n", d);
				free(d);
			} else {
				CU_ASSERT_EQUAL(off, end);
			}
		}
		pos = end;
	}
	if (status == 1 && !proto_parser_is_idle(p))
		status = 0;
	if (err_r != NULL)
		*err_r = proto_parser_get_error(p, NULL, NULL);
	*status_r = status;
	proto_parser_destroy(&p);
	return steal_str(&out);
}

static char *parse_all(const char *in, int *status_r)
{
	return parse_pieces(NULL, (const unsigned char *)in, strlen(in), 0, 0, status_r, NULL);
}

static const struct guid guid_a = { { 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
				      0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef } };
#define GUID_A "0123456789abcdef0123456789abcdef"

/* Writes one line of every kind SPEC.md defines, with the dump each must
 * parse back to. */
struct sample {
	char *expect;
};

static void write_samples(struct buf *out, struct buf *expect)
{
	struct proto_wr w;
	proto_wr_init(&w, out);
	static const uint32_t uids[] = { 7, 3, 1, 2, 4, 5, 5 };
	static const char text[] = "From: a@b\r\nSubject: hi\r\n\r\nbody\r\n";
	static const unsigned char bin[] = { 'a', 0, 'b', '\r', '\n', 0xff };

#define EXPECT(s) buf_append_str(expect, s "\n")
	proto_wr_begin(&w, "*", "HELLO");
	proto_wr_atom(&w, "1.0");
	proto_wr_u64(&w, 2);
	proto_wr_atom(&w, GUID_A GUID_A);
	proto_wr_list_begin(&w);
	proto_wr_atom(&w, "STARTTLS");
	proto_wr_atom(&w, "COMPRESS=DEFLATE");
	proto_wr_atom(&w, "AUTH=HMAC-SHA256");
	proto_wr_list_end(&w);
	proto_wr_end(&w);
	EXPECT("* HELLO 1.0 2 " GUID_A GUID_A " (STARTTLS COMPRESS=DEFLATE AUTH=HMAC-SHA256)");

	proto_wr_begin(&w, "C1", "STARTTLS");
	proto_wr_end(&w);
	EXPECT("C1 STARTTLS");
	proto_wr_status(out, "C1", "OK", NULL, "begin TLS");
	EXPECT("C1 OK |begin TLS|");

	proto_wr_begin(&w, "C2", "AUTH");
	proto_wr_atom(&w, "HMAC-SHA256");
	proto_wr_atom(&w, GUID_A GUID_A);
	proto_wr_end(&w);
	EXPECT("C2 AUTH HMAC-SHA256 " GUID_A GUID_A);
	proto_wr_status(out, "C2", "OK", "AUTH " GUID_A GUID_A, "authenticated");
	EXPECT("C2 OK [AUTH " GUID_A GUID_A "] |authenticated|");
	proto_wr_status(out, "C2", "NO", "AUTHFAILED", "authentication failed");
	EXPECT("C2 NO [AUTHFAILED] |authentication failed|");

	proto_wr_begin(&w, "C3", "COMPRESS");
	proto_wr_atom(&w, "DEFLATE");
	proto_wr_end(&w);
	EXPECT("C3 COMPRESS DEFLATE");
	proto_wr_status(out, "C3", "OK", "COMPRESSIONACTIVE", NULL);
	EXPECT("C3 OK [COMPRESSIONACTIVE] ||");

	proto_wr_begin(&w, "S1", "PING");
	proto_wr_end(&w);
	EXPECT("S1 PING");
	proto_wr_status(out, "S1", "OK", NULL, "PONG");
	EXPECT("S1 OK |PONG|");

	proto_wr_begin(&w, "C4", "MBOX");
	proto_wr_u64(&w, 1);
	proto_wr_cstr(&w, "alice smith");
	proto_wr_cstr(&w, "Sent \"Items\" \\ \xc3\xa9t\xc3\xa9");
	proto_wr_u64(&w, 1700000001);
	proto_wr_guid(&w, &guid_a);
	proto_wr_end(&w);
	EXPECT("C4 MBOX 1 \"alice smith\" \"Sent \"Items\" \\ \xc3\xa9t\xc3\xa9\" 1700000001 " GUID_A);
	proto_wr_status(out, "C4", "OK", "UIDNEXT 42 HIGHESTMODSEQ 1234", NULL);
	EXPECT("C4 OK [UIDNEXT 42 HIGHESTMODSEQ 1234] ||");
	proto_wr_status(out, "C4", "NO", "UIDVALIDITY 1700000009", "UIDVALIDITY differs");
	EXPECT("C4 NO [UIDVALIDITY 1700000009] |UIDVALIDITY differs|");

	proto_wr_begin(&w, "C5", "SELECT");
	proto_wr_u64(&w, 1);
	proto_wr_end(&w);
	EXPECT("C5 SELECT 1");
	proto_wr_status(out, "C5", "NO", "NOMBOX", "unknown mailbox id");
	EXPECT("C5 NO [NOMBOX] |unknown mailbox id|");

	proto_wr_begin(&w, "C6", "MM");
	proto_wr_atom(&w, "MASTER-MOVE");
	proto_wr_u64(&w, 2);
	proto_wr_u64(&w, 3);
	proto_wr_u64(&w, 32);
	proto_wr_u64(&w, 17179869185ull);
	proto_wr_cstr(&w, "m:alice smith/" GUID_A);
	proto_wr_u64(&w, 2);
	proto_wr_atom(&w, "2,4");
	proto_wr_atom(&w, "SOFT");
	proto_wr_u64(&w, 25);
	proto_wr_end(&w);
	EXPECT("C6 MM MASTER-MOVE 2 3 32 17179869185 \"m:alice smith/" GUID_A "\" 2 2,4 SOFT 25");
	proto_wr_status(out, "C6", "OK", NULL, NULL);
	EXPECT("C6 OK ||");

	proto_wr_begin(&w, "C7", "SAVE");
	proto_wr_date(&w, 1700000000, 60);
	proto_wr_u64(&w, 0);
	proto_wr_u64(&w, 0);
	proto_wr_guid(&w, &guid_a);
	proto_wr_list_begin(&w);
	proto_wr_atom(&w, "\\Seen");
	proto_wr_atom(&w, "$Label1");
	proto_wr_list_end(&w);
	proto_wr_literal(&w, text, strlen(text));
	proto_wr_end(&w);
	EXPECT("C7 SAVE 1700000000+0100 0 0 " GUID_A " (\\Seen $Label1) {32:From: a@b\r\nSubject: hi\r\n\r\nbody\r\n}");
	proto_wr_status(out, "C7", "OK", "UID 17 MODSEQ 99 MASTER 3 EPOCH 7", "saved");
	EXPECT("C7 OK [UID 17 MODSEQ 99 MASTER 3 EPOCH 7] |saved|");

	/* A forwarded SAVE: options after the positional arguments. */
	proto_wr_begin(&w, "S2", "SAVE");
	proto_wr_date(&w, 1700000000, -330);
	proto_wr_u64(&w, 17);
	proto_wr_u64(&w, 99);
	proto_wr_guid(&w, &guid_a);
	proto_wr_list_begin(&w);
	proto_wr_list_end(&w);
	proto_wr_literal(&w, bin, sizeof(bin));
	proto_wr_atom(&w, "VIA");
	proto_wr_list_begin(&w);
	proto_wr_u64(&w, 1);
	proto_wr_u64(&w, 2);
	proto_wr_list_end(&w);
	proto_wr_end(&w);
	buf_append_str(expect, "S2 SAVE 1700000000-0530 17 99 " GUID_A " () {6:a");
	buf_append_str(expect, "\\0b\r\n\xff} VIA (1 2)\n");

	proto_wr_begin(&w, "C8", "COPY");
	proto_wr_u64(&w, 2);
	proto_wr_u64(&w, 15);
	proto_wr_guid(&w, &guid_a);
	proto_wr_u64(&w, 0);
	proto_wr_u64(&w, 0);
	proto_wr_date(&w, 1700000000, 0);
	proto_wr_list_begin(&w);
	proto_wr_atom(&w, "\\Flagged");
	proto_wr_list_end(&w);
	proto_wr_end(&w);
	EXPECT("C8 COPY 2 15 " GUID_A " 0 0 1700000000+0000 (\\Flagged)");

	proto_wr_begin(&w, "C9", "EXPUNGE");
	proto_wr_uidset(&w, uids, sizeof(uids) / sizeof(uids[0]));
	proto_wr_u64(&w, 0);
	proto_wr_end(&w);
	EXPECT("C9 EXPUNGE 1:5,7 0");

	proto_wr_begin(&w, "C10", "STORE");
	proto_wr_atom(&w, "1:5,7");
	proto_wr_u64(&w, 1233);
	proto_wr_list_begin(&w);
	proto_wr_atom(&w, "\\Seen");
	proto_wr_list_end(&w);
	proto_wr_list_begin(&w);
	proto_wr_atom(&w, "$Junk");
	proto_wr_list_end(&w);
	proto_wr_atom(&w, "UNCHANGEDSINCE");
	proto_wr_u64(&w, 1233);
	proto_wr_end(&w);
	EXPECT("C10 STORE 1:5,7 1233 (\\Seen) ($Junk) UNCHANGEDSINCE 1233");
	proto_wr_begin(&w, "C10", "FLAGS");
	proto_wr_u64(&w, 3);
	proto_wr_u64(&w, 1240);
	proto_wr_list_begin(&w);
	proto_wr_atom(&w, "\\Seen");
	proto_wr_atom(&w, "\\Answered");
	proto_wr_list_end(&w);
	proto_wr_end(&w);
	EXPECT("C10 FLAGS 3 1240 (\\Seen \\Answered)");
	proto_wr_status(out, "C10", "OK", "MODSEQ 1241 MODIFIED 3", NULL);
	EXPECT("C10 OK [MODSEQ 1241 MODIFIED 3] ||");

	proto_wr_begin(&w, "C11", "SYNC-BEGIN");
	proto_wr_u64(&w, 1200);
	proto_wr_u64(&w, 1300);
	proto_wr_u64(&w, 40);
	proto_wr_u64(&w, 45);
	proto_wr_list_begin(&w);
	proto_wr_atom(&w, "1:44");
	proto_wr_list_end(&w);
	proto_wr_end(&w);
	EXPECT("C11 SYNC-BEGIN 1200 1300 40 45 (1:44)");

	proto_wr_begin(&w, "C12", "SYNC-END");
	proto_wr_end(&w);
	EXPECT("C12 SYNC-END");
	proto_wr_begin(&w, "C12", "SAVE");
	proto_wr_date(&w, 1700000000, 0);
	proto_wr_u64(&w, 46);
	proto_wr_u64(&w, 1302);
	proto_wr_guid(&w, &guid_a);
	proto_wr_list_begin(&w);
	proto_wr_list_end(&w);
	proto_wr_atom(&w, "NIL");
	proto_wr_end(&w);
	EXPECT("C12 SAVE 1700000000+0000 46 1302 " GUID_A " () NIL");
	proto_wr_begin(&w, "C12", "UIDFIX");
	proto_wr_atom(&w, "41:42");
	proto_wr_atom(&w, "47:48");
	proto_wr_end(&w);
	EXPECT("C12 UIDFIX 41:42 47:48");
	proto_wr_status(out, "C12", "OK", "UIDNEXT 49 HIGHESTMODSEQ 1310", "synced");
	EXPECT("C12 OK [UIDNEXT 49 HIGHESTMODSEQ 1310] |synced|");

	proto_wr_begin(&w, "C13", "FETCH");
	proto_wr_atom(&w, "46,48");
	proto_wr_end(&w);
	EXPECT("C13 FETCH 46,48");
	proto_wr_begin(&w, "C13", "TEXT");
	proto_wr_u64(&w, 46);
	proto_wr_guid(&w, &guid_a);
	proto_wr_literal(&w, "", 0);
	proto_wr_end(&w);
	EXPECT("C13 TEXT 46 " GUID_A " {0:}");

	proto_wr_begin(&w, "C14", "MM");
	proto_wr_atom(&w, "MASTER-WHO");
	proto_wr_u64(&w, 2);
	proto_wr_u64(&w, 1);
	proto_wr_u64(&w, 31);
	proto_wr_u64(&w, 30064771073ull);
	proto_wr_cstr(&w, "u:alice");
	proto_wr_end(&w);
	EXPECT("C14 MM MASTER-WHO 2 1 31 30064771073 u:alice");
	proto_wr_status(out, "C14", "BAD", "ARGS", "not a mailbox-master message");
	EXPECT("C14 BAD [ARGS] |not a mailbox-master message|");

	proto_wr_begin(&w, "S3", "MM");
	proto_wr_atom(&w, "MASTER-IS");
	proto_wr_u64(&w, 1);
	proto_wr_u64(&w, 2);
	proto_wr_u64(&w, 32);
	proto_wr_u64(&w, 30064771073ull);
	proto_wr_cstr(&w, "u:alice");
	proto_wr_u64(&w, 2);
	proto_wr_u64(&w, 1);
	proto_wr_end(&w);
	EXPECT("S3 MM MASTER-IS 1 2 32 30064771073 u:alice 2 1");

	proto_wr_begin(&w, "S4", "MM");
	proto_wr_atom(&w, "LINKS");
	proto_wr_u64(&w, 1);
	proto_wr_u64(&w, 8);
	proto_wr_u64(&w, 30064771073ull);
	proto_wr_atom(&w, "2,3");
	proto_wr_end(&w);
	EXPECT("S4 MM LINKS 1 8 30064771073 2,3");
	proto_wr_begin(&w, "C15", "MM");
	proto_wr_atom(&w, "DROPPED");
	proto_wr_u64(&w, 2);
	proto_wr_u64(&w, 1);
	proto_wr_u64(&w, 32);
	proto_wr_u64(&w, 30064771073ull);
	proto_wr_end(&w);
	EXPECT("C15 MM DROPPED 2 1 32 30064771073");

	proto_wr_begin(&w, "C16", "CREATE");
	proto_wr_cstr(&w, "alice");
	proto_wr_cstr(&w, "Archive/2026");
	proto_wr_guid(&w, &guid_a);
	proto_wr_u64(&w, 1700000002);
	proto_wr_end(&w);
	EXPECT("C16 CREATE alice Archive/2026 " GUID_A " 1700000002");
	proto_wr_begin(&w, "C17", "RENAME");
	proto_wr_cstr(&w, "alice");
	proto_wr_cstr(&w, "Archive/2026");
	proto_wr_cstr(&w, "Old (2026)");
	proto_wr_guid(&w, &guid_a);
	proto_wr_end(&w);
	EXPECT("C17 RENAME alice Archive/2026 \"Old (2026)\" " GUID_A);
	proto_wr_begin(&w, "C18", "DELETE");
	proto_wr_cstr(&w, "alice");
	proto_wr_cstr(&w, "Old (2026)");
	proto_wr_guid(&w, &guid_a);
	proto_wr_end(&w);
	EXPECT("C18 DELETE alice \"Old (2026)\" " GUID_A);
	proto_wr_begin(&w, "C19", "SUBSCRIBE");
	proto_wr_cstr(&w, "alice");
	proto_wr_cstr(&w, "Line\r\nBreak");
	proto_wr_end(&w);
	EXPECT("C19 SUBSCRIBE alice {11:Line\r\nBreak}");
	proto_wr_begin(&w, "C20", "UNSUBSCRIBE");
	proto_wr_cstr(&w, "alice");
	proto_wr_cstr(&w, "INBOX");
	proto_wr_end(&w);
	EXPECT("C20 UNSUBSCRIBE alice INBOX");

	proto_wr_begin(&w, "C21", "X-NEST");
	proto_wr_list_begin(&w);
	proto_wr_list_begin(&w);
	proto_wr_list_end(&w);
	proto_wr_list_begin(&w);
	proto_wr_atom(&w, "a");
	proto_wr_list_begin(&w);
	proto_wr_literal(&w, "xy", 2);
	proto_wr_list_end(&w);
	proto_wr_list_end(&w);
	proto_wr_atom(&w, "b");
	proto_wr_list_end(&w);
	proto_wr_atom(&w, "c");
	proto_wr_end(&w);
	EXPECT("C21 X-NEST (() (a ({2:xy})) b) c");

	proto_wr_begin(&w, "C22", "LOGOUT");
	proto_wr_end(&w);
	EXPECT("C22 LOGOUT");
	proto_wr_status(out, "*", "BYE", "LOGOUT", "closing");
	EXPECT("* BYE [LOGOUT] |closing|");
#undef EXPECT
}

static void test_writer_output_parses_back_to_every_command(void)
{
	struct buf out = BUF_INIT, expect = BUF_INIT;
	write_samples(&out, &expect);
	int status;
	char *got = parse_pieces(NULL, out.data, out.len, 0, 0, &status, NULL);
	CU_ASSERT_EQUAL(status, 1);
	CU_ASSERT_EQUAL(strlen(got), expect.len);
	CU_ASSERT(memcmp(got, expect.data, expect.len) == 0);
	if (memcmp(got, expect.data, expect.len) != 0)
		fprintf(stderr, "\ngot:\n%s\nexpected:\n%s\n", got, expect.data);
	free(got);
	buf_free(&out);
	buf_free(&expect);
}

static void test_every_split_point_gives_same_commands(void)
{
	struct buf out = BUF_INIT, expect = BUF_INIT;
	write_samples(&out, &expect);
	int status;
	char *whole = parse_pieces(NULL, out.data, out.len, 0, 0, &status, NULL);
	for (size_t split = 1; split < out.len; split++) {
		char *got = parse_pieces(NULL, out.data, out.len, 0, split, &status, NULL);
		CU_ASSERT_EQUAL(status, 1);
		CU_ASSERT_STRING_EQUAL(got, whole);
		free(got);
	}
	free(whole);
	buf_free(&out);
	buf_free(&expect);
}

static void test_one_byte_at_a_time_gives_same_commands(void)
{
	struct buf out = BUF_INIT, expect = BUF_INIT;
	write_samples(&out, &expect);
	int status;
	char *whole = parse_pieces(NULL, out.data, out.len, 0, 0, &status, NULL);
	char *bytes = parse_pieces(NULL, out.data, out.len, 1, 0, &status, NULL);
	CU_ASSERT_EQUAL(status, 1);
	CU_ASSERT_STRING_EQUAL(bytes, whole);
	free(bytes);
	free(whole);
	buf_free(&out);
	buf_free(&expect);
}

static void test_parser_needs_more_until_last_byte(void)
{
	const char *line = "C1 SAVE 1 {3}\r\nabc (x)\r\n";
	struct proto_parser *p = proto_parser_create(NULL);
	size_t len = strlen(line), used;
	const struct proto_cmd *cmd;
	for (size_t i = 0; i + 1 < len; i++) {
		CU_ASSERT_EQUAL(proto_parser_parse(p, (const unsigned char *)line + i, 1, &used, &cmd), 0);
		CU_ASSERT_EQUAL(used, 1);
		CU_ASSERT_FALSE(proto_parser_is_idle(p));
	}
	CU_ASSERT_EQUAL(proto_parser_parse(p, (const unsigned char *)line + len - 1, 1, &used, &cmd), 1);
	CU_ASSERT_PTR_NOT_NULL_FATAL(cmd);
	CU_ASSERT_EQUAL(cmd->arg_count, 3);
	CU_ASSERT_EQUAL(cmd->args[1].type, PROTO_ARG_LITERAL);
	CU_ASSERT_STRING_EQUAL(cmd->args[1].str, "abc");
	CU_ASSERT(proto_parser_is_idle(p));
	proto_parser_destroy(&p);
}

static void test_parser_stops_after_one_line(void)
{
	const char *in = "C1 PING\r\nC2 PING\r\n";
	struct proto_parser *p = proto_parser_create(NULL);
	size_t used;
	const struct proto_cmd *cmd;
	CU_ASSERT_EQUAL(proto_parser_parse(p, (const unsigned char *)in, strlen(in), &used, &cmd), 1);
	CU_ASSERT_EQUAL(used, 9);
	CU_ASSERT_STRING_EQUAL(cmd->tag, "C1");
	CU_ASSERT_EQUAL(proto_parser_parse(p, (const unsigned char *)in + used, strlen(in) - used,
					   &used, &cmd), 1);
	CU_ASSERT_STRING_EQUAL(cmd->tag, "C2");
	proto_parser_destroy(&p);
}

static void test_parser_accepts_bare_lf(void)
{
	int status;
	char *got = parse_all("C1 SELECT 5\n", &status);
	CU_ASSERT_EQUAL(status, 1);
	CU_ASSERT_STRING_EQUAL(got, "C1 SELECT 5\n");
	free(got);
}

static void test_literal_can_be_stolen_without_copy(void)
{
	const char *in = "C1 SAVE {5}\r\nhello\r\n";
	struct proto_parser *p = proto_parser_create(NULL);
	size_t used;
	const struct proto_cmd *cmd;
	CU_ASSERT_EQUAL_FATAL(proto_parser_parse(p, (const unsigned char *)in, strlen(in), &used, &cmd), 1);
	const char *before = cmd->args[0].str;
	unsigned char *lit = proto_parser_steal_literal(p, &cmd->args[0]);
	CU_ASSERT_PTR_EQUAL(lit, before);
	CU_ASSERT_STRING_EQUAL((char *)lit, "hello");
	CU_ASSERT_PTR_NULL(proto_parser_steal_literal(p, &cmd->args[0]));
	free(lit);
	proto_parser_destroy(&p);
}

/* A kept line outlives the parser's next lines whole; its literal is the
 * parser's own buffer, taken, not a copy; without the parser it is a copy. */
static void test_kept_line_outlives_the_parser(void)
{
	const char *in = "C1 SAVE a \"q \\\" x\" (b (c d) ()) {5}\r\nhello\r\n"
			 "C2 NOOP zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz {3}\r\nxyz\r\n"
			 "* OK [MASTER 3 EPOCH 7] fine\r\n";
	struct proto_parser *p = proto_parser_create(NULL);
	size_t used, pos = 0;
	const struct proto_cmd *cmd;
	CU_ASSERT_EQUAL_FATAL(proto_parser_parse(p, (const unsigned char *)in, strlen(in), &used, &cmd), 1);
	pos += used;
	const char *lit = cmd->args[3].str;
	struct proto_cmd *k = proto_cmd_keep(cmd, p);
	struct proto_cmd *c = proto_cmd_keep(cmd, NULL);
	CU_ASSERT_PTR_EQUAL(k->args[3].str, lit);
	CU_ASSERT_PTR_NULL(proto_parser_steal_literal(p, &cmd->args[3]));
	CU_ASSERT(c->args[3].str != lit);
	CU_ASSERT(proto_cmd_kept_size(k) >= 5);
	/* The next lines reuse every buffer of the parser. */
	CU_ASSERT_EQUAL_FATAL(proto_parser_parse(p, (const unsigned char *)in + pos, strlen(in) - pos,
						 &used, &cmd), 1);
	pos += used;
	for (int i = 0; i < 2; i++) {
		const struct proto_cmd *x = i == 0 ? k : c;
		CU_ASSERT_STRING_EQUAL(x->tag, "C1");
		CU_ASSERT(proto_cmd_is(x, "save"));
		CU_ASSERT_STRING_EQUAL(x->text, "");
		CU_ASSERT_FALSE(x->has_code);
		CU_ASSERT_EQUAL_FATAL(x->arg_count, 4);
		CU_ASSERT_EQUAL(x->args[0].type, PROTO_ARG_ATOM);
		CU_ASSERT_STRING_EQUAL(x->args[0].str, "a");
		CU_ASSERT_EQUAL(x->args[1].type, PROTO_ARG_QUOTED);
		CU_ASSERT_STRING_EQUAL(x->args[1].str, "q \" x");
		CU_ASSERT_EQUAL(x->args[1].len, 5);
		const struct proto_arg *l = &x->args[2];
		CU_ASSERT_EQUAL_FATAL(l->type, PROTO_ARG_LIST);
		CU_ASSERT_EQUAL_FATAL(l->count, 3);
		CU_ASSERT_STRING_EQUAL(l->list[0].str, "b");
		CU_ASSERT_EQUAL_FATAL(l->list[1].count, 2);
		CU_ASSERT_STRING_EQUAL(l->list[1].list[1].str, "d");
		CU_ASSERT_EQUAL(l->list[2].type, PROTO_ARG_LIST);
		CU_ASSERT_EQUAL(l->list[2].count, 0);
		CU_ASSERT_EQUAL(x->args[3].type, PROTO_ARG_LITERAL);
		CU_ASSERT_EQUAL(x->args[3].len, 5);
		CU_ASSERT(memcmp(x->args[3].str, "hello", 6) == 0);
	}
	CU_ASSERT_EQUAL_FATAL(proto_parser_parse(p, (const unsigned char *)in + pos, strlen(in) - pos,
						 &used, &cmd), 1);
	struct proto_cmd *st = proto_cmd_keep(cmd, p);
	proto_parser_destroy(&p);
	CU_ASSERT(proto_cmd_is_status(st));
	CU_ASSERT(st->has_code);
	CU_ASSERT_STRING_EQUAL(st->text, "fine");
	CU_ASSERT(proto_code_has(st, "EPOCH"));
	proto_cmd_kept_free(&k);
	proto_cmd_kept_free(&c);
	proto_cmd_kept_free(&st);
	CU_ASSERT_PTR_NULL(k);
	proto_cmd_kept_free(&k);
}

/* Inputs that must fail with the given error. */
static void expect_error(const struct proto_parser_settings *set, const char *in, size_t len,
			 enum proto_parse_error want)
{
	for (size_t step = 0; step <= 1; step++) {
		int status;
		enum proto_parse_error err;
		char *got = parse_pieces(set, (const unsigned char *)in, len, step, 0, &status, &err);
		CU_ASSERT_EQUAL(status, -1);
		CU_ASSERT_EQUAL(err, want);
		if (err != want)
			fprintf(stderr, "\ninput %.*s: error %d, want %d\n", (int)len, in, err, want);
		free(got);
	}
}

static void test_malformed_lines_give_syntax_error(void)
{
	static const char *const bad[] = {
		"\r\n", "C1\r\n", " C1 PING\r\n", "C1  PING\r\n", "C1 PING \r\n", "C1 PI_NG\r\n",
		"C1 SAVE (a\r\n", "C1 SAVE a)\r\n", "C1 SAVE (a )\r\n", "C1 SAVE \"abc\r\n",
		"C1 SAVE \"a\\nb\"\r\n", "C1 SAVE {3\r\n", "C1 SAVE {x}\r\n", "C1 SAVE {3} x\r\n",
		"C1 SAVE {}\r\n", "C1 SAVE a\"b\r\n", "C1 SAVE a(b)\r\n", "C1 SAVE \x01\r\n",
		"C1 SAVE \xc3\xa9\r\n", "C1 SAVE a\rb\r\n", "C1 OK [MASTER 3\r\n",
		"C1 OK [A {3}]\r\n", "C1 OK [A]x\r\n", "C1 SAVE {1}\r\nxy\r\n",
		"C1 SAVE ]\r\n", "*x PING\r\n", "C1 SAVE \"a\" b\"\r\n",
		"C123456789012345678901234567890123 PING\r\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_error(NULL, bad[i], strlen(bad[i]), PROTO_PARSE_ERR_SYNTAX);
	expect_error(NULL, "C1 SAVE a\0b\r\n", 13, PROTO_PARSE_ERR_SYNTAX);
	expect_error(NULL, "C1 SAVE \"a\0b\"\r\n", 15, PROTO_PARSE_ERR_SYNTAX);
}

static void test_line_limit_just_under_and_over(void)
{
	struct proto_parser_settings set;
	proto_parser_settings_default(&set);
	set.max_line = 64;
	char line[128];
	/* "C1 X " + atom + CRLF = 64 bytes exactly */
	memset(line, 'a', sizeof(line));
	memcpy(line, "C1 X ", 5);
	memcpy(line + 62, "\r\n", 2);
	int status;
	char *got = parse_pieces(&set, (const unsigned char *)line, 64, 0, 0, &status, NULL);
	CU_ASSERT_EQUAL(status, 1);
	free(got);
	memcpy(line + 62, "a\r\n", 3);
	expect_error(&set, line, 65, PROTO_PARSE_ERR_LINE_TOO_LONG);
	/* A line that never ends fails once the limit is passed. */
	expect_error(&set, line, 100, PROTO_PARSE_ERR_LINE_TOO_LONG);
	/* The limit counts all segments of a line, not the literals. */
	char two[160];
	int n = snprintf(two, sizeof(two), "C1 X %.40s {3}\r\nxyz %.40s\r\n", line + 20, line + 20);
	expect_error(&set, two, (size_t)n, PROTO_PARSE_ERR_LINE_TOO_LONG);
}

static void test_literal_limit_just_under_and_over(void)
{
	struct proto_parser_settings set;
	proto_parser_settings_default(&set);
	set.max_literal = 10;
	int status;
	const char *ok = "C1 SAVE {4}\r\nabcd {6}\r\nefghij\r\n";
	char *got = parse_pieces(&set, (const unsigned char *)ok, strlen(ok), 0, 0, &status, NULL);
	CU_ASSERT_EQUAL(status, 1);
	CU_ASSERT_STRING_EQUAL(got, "C1 SAVE {4:abcd} {6:efghij}\n");
	free(got);
	const char *over = "C1 SAVE {4}\r\nabcd {7}\r\nefghijk\r\n";
	expect_error(&set, over, strlen(over), PROTO_PARSE_ERR_LITERAL_TOO_BIG);
	const char *huge = "C1 SAVE {99999999999999999999999}\r\n";
	expect_error(&set, huge, strlen(huge), PROTO_PARSE_ERR_LITERAL_TOO_BIG);
	proto_parser_settings_preauth(&set);
	const char *pre = "C1 AUTH {1}\r\nx\r\n";
	expect_error(&set, pre, strlen(pre), PROTO_PARSE_ERR_LITERAL_TOO_BIG);
}

static void test_args_and_depth_limits(void)
{
	struct proto_parser_settings set;
	proto_parser_settings_default(&set);
	set.max_args = 5;
	set.max_depth = 2;
	int status;
	const char *ok = "C1 X a (b (c))\r\n";
	char *got = parse_pieces(&set, (const unsigned char *)ok, strlen(ok), 0, 0, &status, NULL);
	CU_ASSERT_EQUAL(status, 1);
	free(got);
	expect_error(&set, "C1 X a b c d e f\r\n", 18, PROTO_PARSE_ERR_TOO_MANY_ARGS);
	expect_error(&set, "C1 X (((a)))\r\n", 14, PROTO_PARSE_ERR_TOO_DEEP);
}

static void test_error_is_final(void)
{
	struct proto_parser *p = proto_parser_create(NULL);
	size_t used;
	const struct proto_cmd *cmd;
	const char *code, *text;
	CU_ASSERT_EQUAL(proto_parser_parse(p, (const unsigned char *)"C1 (\r\n", 6, &used, &cmd), -1);
	CU_ASSERT_EQUAL(proto_parser_get_error(p, &code, &text), PROTO_PARSE_ERR_SYNTAX);
	CU_ASSERT_STRING_EQUAL(code, "PARSE");
	CU_ASSERT(text[0] != '\0');
	CU_ASSERT_EQUAL(proto_parser_parse(p, (const unsigned char *)"C2 PING\r\n", 9, &used, &cmd), -1);
	proto_parser_destroy(&p);
}

static void test_typed_arguments_check_syntax(void)
{
	int status;
	struct proto_parser *p = proto_parser_create(NULL);
	const char *in = "C1 X 0 007 4294967296 1700000000+0530 17-2400 " GUID_A " 1:3,5,9:* 0:1 1,,2 \"5\"\r\n";
	size_t used;
	const struct proto_cmd *cmd;
	CU_ASSERT_EQUAL_FATAL(proto_parser_parse(p, (const unsigned char *)in, strlen(in), &used, &cmd), 1);
	CU_ASSERT_EQUAL_FATAL(cmd->arg_count, 10);
	uint32_t v;
	uint64_t v64;
	CU_ASSERT_EQUAL(proto_arg_u32(&cmd->args[0], &v), 0);
	CU_ASSERT_EQUAL(v, 0);
	CU_ASSERT_EQUAL(proto_arg_u32(&cmd->args[1], &v), -1);
	CU_ASSERT_EQUAL(proto_arg_u32(&cmd->args[2], &v), -1);
	CU_ASSERT_EQUAL(proto_arg_u64(&cmd->args[2], UINT64_MAX, &v64), 0);
	CU_ASSERT_EQUAL(v64, 4294967296ULL);
	int64_t secs;
	int tz;
	CU_ASSERT_EQUAL(proto_arg_date(&cmd->args[3], &secs, &tz), 0);
	CU_ASSERT_EQUAL(secs, 1700000000);
	CU_ASSERT_EQUAL(tz, 330);
	CU_ASSERT_EQUAL(proto_arg_date(&cmd->args[4], &secs, &tz), -1);
	struct guid g;
	CU_ASSERT_EQUAL(proto_arg_guid(&cmd->args[5], &g), 0);
	CU_ASSERT_EQUAL(guid_cmp(&g, &guid_a), 0);
	CU_ASSERT_EQUAL(proto_arg_guid(&cmd->args[6], &g), -1);
	struct proto_uid_range *r;
	size_t n;
	CU_ASSERT_EQUAL_FATAL(proto_arg_uidset(&cmd->args[6], 20, 10, &r, &n), 0);
	CU_ASSERT_EQUAL_FATAL(n, 3);
	CU_ASSERT(r[0].lo == 1 && r[0].hi == 3 && r[1].lo == 5 && r[1].hi == 5 &&
		  r[2].lo == 9 && r[2].hi == 20);
	free(r);
	CU_ASSERT_EQUAL(proto_arg_uidset(&cmd->args[6], 20, 2, &r, &n), -1);
	CU_ASSERT_EQUAL(proto_arg_uidset(&cmd->args[7], 20, 10, &r, &n), -1);
	CU_ASSERT_EQUAL(proto_arg_uidset(&cmd->args[8], 20, 10, &r, &n), -1);
	/* Numbers are atoms: a quoted "5" is a string, not a number. */
	CU_ASSERT_EQUAL(proto_arg_u32(&cmd->args[9], &v), -1);
	const char *s;
	CU_ASSERT_EQUAL(proto_arg_str(&cmd->args[9], &s, NULL), 0);
	CU_ASSERT_STRING_EQUAL(s, "5");
	proto_parser_destroy(&p);
	(void)status;
}

static void test_writer_chooses_atom_quoted_or_literal(void)
{
	struct buf b = BUF_INIT;
	struct proto_wr w;
	proto_wr_init(&w, &b);
	proto_wr_begin(&w, "C1", "X");
	proto_wr_cstr(&w, "INBOX");
	proto_wr_cstr(&w, "");
	proto_wr_cstr(&w, "a b");
	proto_wr_cstr(&w, "a\"b\\");
	proto_wr_cstr(&w, "x\ny");
	char big[PROTO_MAX_QUOTED + 1];
	memset(big, ' ', sizeof(big));
	proto_wr_str(&w, big, PROTO_MAX_QUOTED);
	proto_wr_end(&w);
	char expect[2 * PROTO_MAX_QUOTED];
	int n = snprintf(expect, sizeof(expect), "C1 X INBOX \"\" \"a b\" \"a\\\"b\\\\\" {3}\r\nx\ny \"%.*s\"\r\n",
			 PROTO_MAX_QUOTED, big);
	CU_ASSERT_EQUAL(b.len, (size_t)n);
	CU_ASSERT(memcmp(b.data, expect, (size_t)n) == 0);
	buf_reset(&b);
	proto_wr_begin(&w, "C2", "X");
	proto_wr_str(&w, big, sizeof(big));
	proto_wr_end(&w);
	CU_ASSERT(memcmp(b.data, "C2 X {1025}\r\n", 13) == 0);
	buf_free(&b);
}

static void test_auth_proof_depends_on_every_input(void)
{
	unsigned char n1[PROTO_NONCE_SIZE] = { 1 }, n2[PROTO_NONCE_SIZE] = { 2 };
	unsigned char chan[32] = { 3 };
	unsigned char base[32], other[32];
	const unsigned char key[] = "secret", key2[] = "secreT";
	CU_ASSERT_EQUAL_FATAL(proto_auth_proof(key, 6, "initiator", n1, n2, 1, 2, NULL, base), 0);
	proto_auth_proof(key, 6, "initiator", n1, n2, 1, 2, NULL, other);
	CU_ASSERT(memcmp(base, other, 32) == 0);
	proto_auth_proof(key2, 6, "initiator", n1, n2, 1, 2, NULL, other);
	CU_ASSERT(memcmp(base, other, 32) != 0);
	proto_auth_proof(key, 6, "acceptor", n1, n2, 1, 2, NULL, other);
	CU_ASSERT(memcmp(base, other, 32) != 0);
	proto_auth_proof(key, 6, "initiator", n2, n1, 1, 2, NULL, other);
	CU_ASSERT(memcmp(base, other, 32) != 0);
	proto_auth_proof(key, 6, "initiator", n1, n2, 2, 1, NULL, other);
	CU_ASSERT(memcmp(base, other, 32) != 0);
	proto_auth_proof(key, 6, "initiator", n1, n2, 1, 2, chan, other);
	CU_ASSERT(memcmp(base, other, 32) != 0);
}

/* Every replication command and data line of the samples passes the
 * command table, and options are found after the positional arguments. */
static void test_sample_commands_pass_the_command_table(void)
{
	struct buf out = BUF_INIT, expect = BUF_INIT;
	write_samples(&out, &expect);
	struct proto_parser *p = proto_parser_create(NULL);
	size_t pos = 0, validated = 0, used, npos;
	const struct proto_cmd *cmd;
	const char *error;
	while (pos < out.len && proto_parser_parse(p, out.data + pos, out.len - pos, &used, &cmd) == 1) {
		pos += used;
		if (proto_cmd_is_status(cmd) || proto_cmd_info_find(cmd->name) == NULL)
			continue;
		int r = proto_cmd_validate(cmd, &npos, &error);
		CU_ASSERT_EQUAL(r, 0);
		if (r != 0) {
			fprintf(stderr, "\n%s %s: %s\n", cmd->tag, cmd->name, error);
			continue;
		}
		validated++;
		if (strcmp(cmd->tag, "S2") == 0) {
			CU_ASSERT_EQUAL(npos, 6);
			const struct proto_arg *via = proto_cmd_option(cmd, npos, "VIA");
			CU_ASSERT_PTR_NOT_NULL_FATAL(via);
			CU_ASSERT_EQUAL(via->count, 2);
			CU_ASSERT_PTR_NULL(proto_cmd_option(cmd, npos, "TO"));
		}
		if (strcmp(cmd->tag, "C10") == 0 && proto_cmd_is(cmd, "STORE")) {
			const struct proto_arg *u = proto_cmd_option(cmd, npos, "UNCHANGEDSINCE");
			CU_ASSERT(u != NULL && strcmp(u->str, "1233") == 0);
		}
	}
	CU_ASSERT_EQUAL(pos, out.len);
	CU_ASSERT(validated >= 24);
	proto_parser_destroy(&p);
	buf_free(&out);
	buf_free(&expect);
}

static void test_malformed_arguments_fail_the_command_table(void)
{
	static const char *const bad[] = {
		"C1 MBOX 0 alice INBOX 1 " GUID_A "\r\n",          /* id 0 */
		"C1 MBOX 1 alice (INBOX) 1 " GUID_A "\r\n",        /* list for a string */
		"C1 MBOX 1 alice INBOX 1 0123\r\n",                /* short GUID */
		"C1 SELECT 1 2\r\n",                                /* extra argument */
		"C1 SELECT\r\n",                                    /* missing argument */
		"C1 SAVE 1700000000 0 0 " GUID_A " () {1}\r\nx\r\n", /* date without zone */
		"C1 SAVE 1700000000+0000 0 0 " GUID_A " () \"x\"\r\n", /* text not a literal */
		"C1 SAVE 1700000000+0000 0 0 " GUID_A " (\\Se\\en) {1}\r\nx\r\n", /* bad flag */
		"C1 SAVE 1700000000+0000 0 0 " GUID_A " () NIL VIA (1 2 3 4 5 6 7 8 9)\r\n",
		"C1 SAVE 1700000000+0000 0 0 " GUID_A " () NIL VIA (1) VIA (2)\r\n",
		"C1 EXPUNGE 1:5\r\n",
		"C1 FETCH 0\r\n",
		"C1 STORE 1:5 1 (\\Seen) () UNCHANGEDSINCE\r\n",
		"C1 CREATE alice x " GUID_A " 5 UNCHANGEDSINCE 5\r\n",
		"C1 COPY 2 0 " GUID_A " 0 0 1700000000+0000 ()\r\n", /* source UID 0 */
		"C1 MM MASTER-MOVE 2 3 32 7 u:alice 2 - SOFT\r\n", /* rate missing */
		"C1 MM ROOT 1 8\r\n",                             /* a draft, never sent */
		"C1 SYNC-BEGIN 1 2 3 4 (1:*,x)\r\n",
		"C1 NOSUCH 1\r\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct proto_parser *p = proto_parser_create(NULL);
		size_t used, npos;
		const struct proto_cmd *cmd;
		const char *error = NULL;
		int r = proto_parser_parse(p, (const unsigned char *)bad[i], strlen(bad[i]), &used, &cmd);
		CU_ASSERT_EQUAL(r, 1);
		if (r == 1) {
			CU_ASSERT_EQUAL(proto_cmd_validate(cmd, &npos, &error), -1);
			CU_ASSERT_PTR_NOT_NULL(error);
		}
		proto_parser_destroy(&p);
	}
	/* The optional argument of SYNC-BEGIN may be left out before options. */
	const char *ok = "C1 SYNC-BEGIN 1 2 3 4 VIA (1)\r\n";
	struct proto_parser *p = proto_parser_create(NULL);
	size_t used, npos = 9;
	const struct proto_cmd *cmd;
	const char *error;
	CU_ASSERT_EQUAL_FATAL(proto_parser_parse(p, (const unsigned char *)ok, strlen(ok), &used, &cmd), 1);
	CU_ASSERT_EQUAL(proto_cmd_validate(cmd, &npos, &error), 0);
	CU_ASSERT_EQUAL(npos, 4);
	proto_parser_destroy(&p);
}

static void test_response_code_values_are_found_by_key(void)
{
	const char *in = "C7 OK [UID 17 MODSEQ 99 EXPUNGED MASTER 3 EPOCH 7 NAME \"INBOX\"] saved\r\n";
	struct proto_parser *p = proto_parser_create(NULL);
	size_t used;
	const struct proto_cmd *cmd;
	CU_ASSERT_EQUAL_FATAL(proto_parser_parse(p, (const unsigned char *)in, strlen(in), &used, &cmd), 1);
	uint32_t v;
	CU_ASSERT(proto_code_has(cmd, "UID"));
	CU_ASSERT(proto_code_has(cmd, "EXPUNGED"));
	CU_ASSERT_PTR_NULL(proto_code_value(cmd, "EXPUNGED"));
	CU_ASSERT_FALSE(proto_code_has(cmd, "GEN"));
	CU_ASSERT(proto_arg_u32(proto_code_value(cmd, "MASTER"), &v) == 0 && v == 3);
	CU_ASSERT(proto_arg_u32(proto_code_value(cmd, "EPOCH"), &v) == 0 && v == 7);
	CU_ASSERT(proto_arg_u32(proto_code_value(cmd, "MODSEQ"), &v) == 0 && v == 99);
	/* A quoted value that looks like a key is still a value. */
	CU_ASSERT_STRING_EQUAL(proto_code_value(cmd, "NAME")->str, "INBOX");
	CU_ASSERT_FALSE(proto_code_has(cmd, "INBOX"));
	CU_ASSERT_STRING_EQUAL(cmd->text, "saved");
	proto_parser_destroy(&p);
}

const struct test_case proto_parser_cases[] = {
	{ "response code values are found by key", test_response_code_values_are_found_by_key },
	{ "sample commands pass the command table", test_sample_commands_pass_the_command_table },
	{ "malformed arguments fail the command table", test_malformed_arguments_fail_the_command_table },
	{ "writer output parses back to every command", test_writer_output_parses_back_to_every_command },
	{ "every split point gives the same commands", test_every_split_point_gives_same_commands },
	{ "one byte at a time gives the same commands", test_one_byte_at_a_time_gives_same_commands },
	{ "parser needs more until the last byte", test_parser_needs_more_until_last_byte },
	{ "parser stops after one line", test_parser_stops_after_one_line },
	{ "parser accepts a bare LF", test_parser_accepts_bare_lf },
	{ "literal can be stolen without a copy", test_literal_can_be_stolen_without_copy },
	{ "a kept line outlives the parser", test_kept_line_outlives_the_parser },
	{ "malformed lines give a syntax error", test_malformed_lines_give_syntax_error },
	{ "line limit just under and over", test_line_limit_just_under_and_over },
	{ "literal limit just under and over", test_literal_limit_just_under_and_over },
	{ "argument count and depth limits", test_args_and_depth_limits },
	{ "an error is final", test_error_is_final },
	{ "typed arguments check their syntax", test_typed_arguments_check_syntax },
	{ "writer chooses atom, quoted or literal", test_writer_chooses_atom_quoted_or_literal },
	{ "auth proof depends on every input", test_auth_proof_depends_on_every_input },
	{ NULL, NULL },
};

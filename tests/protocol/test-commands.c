/* Unit tests of the command table (protocol/proto-commands.c) against
 * SPEC.md: every row has a well-formed line that passes the table and is
 * written back byte for byte from its parsed form, and malformed variants
 * that the table refuses; the rows are exactly the commands of section 12
 * and the MM messages exactly those of section 9.6. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/file.h"
#include "protocol/protocol.h"
#include "tests/protocol/tests.h"

#define G "0123456789abcdef0123456789abcdef"
#define D "1700000000+0100"

struct row_case {
	const char *name;
	const char *const *good; /* NULL-terminated; each ends with CRLF */
	const char *const *bad;
};

#define LINES(...) ((const char *const[]){ __VA_ARGS__, NULL })

static const struct row_case row_cases[] = {
	{ "STARTTLS", LINES("C1 STARTTLS\r\n"), LINES("C1 STARTTLS now\r\n") },
	{ "AUTH", LINES("C2 AUTH HMAC-SHA256 " G G "\r\n"),
	  LINES("C2 AUTH HMAC-SHA256\r\n", "C2 AUTH HMAC-SHA256 (" G ")\r\n") },
	{ "COMPRESS", LINES("C3 COMPRESS DEFLATE\r\n"),
	  LINES("C3 COMPRESS\r\n", "C3 COMPRESS (DEFLATE)\r\n") },
	{ "PING", LINES("S1 PING\r\n"), LINES("S1 PING 1\r\n") },
	{ "LOGOUT", LINES("C9 LOGOUT\r\n"), LINES("C9 LOGOUT now\r\n") },
	{ "MBOX", LINES("C4 MBOX 1 \"alice smith\" INBOX 1700000001 " G "\r\n"),
	  LINES("C4 MBOX 0 alice INBOX 1700000001 " G "\r\n",
		"C4 MBOX 1 alice INBOX 0 " G "\r\n") },
	{ "SELECT", LINES("C5 SELECT 1\r\n"), LINES("C5 SELECT x\r\n", "C5 SELECT 4294967296\r\n") },
	{ "CREATE",
	  LINES("C16 CREATE alice Archive " G " 1700000002\r\n",
		"C16 CREATE alice Archive " G " 1700000002 SPECIAL-USE (\\Archive) ORIGIN 3\r\n"),
	  LINES("C16 CREATE alice Archive " G " 0\r\n",
		"C16 CREATE alice Archive " G " 1700000002 ORIGIN 0\r\n",
		"C16 CREATE alice Archive " G " 1700000002 ORIGIN 3 ORIGIN 3\r\n") },
	{ "DELETE", LINES("C18 DELETE alice \"Old (2026)\" " G " ORIGIN 2\r\n"),
	  LINES("C18 DELETE alice Archive 0123\r\n", "C18 DELETE alice Archive " G " ORIGIN\r\n") },
	{ "RENAME", LINES("C17 RENAME alice Archive \"Old (2026)\" " G " VIA (1 2) ORIGIN 1\r\n",
			  "C17 RENAME alice Archive Old " G " ORIGIN 1 RSTAMP 117964800000000002\r\n"),
	  LINES("C17 RENAME alice Archive \"Old (2026)\"\r\n",
		"C17 RENAME alice Archive Old " G " RSTAMP 9223372036854775808\r\n",
		"C17 RENAME alice Archive Old " G " RSTAMP x\r\n",
		"C17 RENAME alice Archive Old " G " RSTAMP 1 RSTAMP 1\r\n") },
	{ "SUBSCRIBE", LINES("C19 SUBSCRIBE alice Archive ORIGIN 1\r\n"),
	  LINES("C19 SUBSCRIBE alice (Archive)\r\n", "C19 SUBSCRIBE alice Archive ORIGIN x\r\n") },
	{ "UNSUBSCRIBE", LINES("C20 UNSUBSCRIBE alice {2}\r\nA\n\r\n"),
	  LINES("C20 UNSUBSCRIBE alice\r\n",
		"C20 UNSUBSCRIBE alice Archive UNCHANGEDSINCE 5\r\n") },
	{ "SAVE",
	  LINES("C7 SAVE " D " 0 0 " G " (\\Seen $Label1) {5}\r\nhello\r\n",
		"S2 SAVE " D " 17 99 " G " () NIL ORIGIN 3 TO 2\r\n",
		"C7 SAVE " D " 0 0 " G " () NIL REQ 4294967295.18446744073709551615 TO 3\r\n",
		"C7 SAVE " D " 0 0 " G " () NIL HOLDER 4294967295 TO 3 VIA (1 2)\r\n"),
	  LINES("C7 SAVE " D " 17 9223372036854775808 " G " () NIL\r\n",
		"C7 SAVE " D " 17 99 " G " () NIL ORIGIN 4294967296\r\n",
		"C7 SAVE " D " 0 0 " G " () NIL REQ 0.1\r\n",
		"C7 SAVE " D " 0 0 " G " () NIL REQ 1\r\n",
		"C7 SAVE " D " 0 0 " G " () NIL REQ 1.2.3\r\n",
		"C7 SAVE " D " 0 0 " G " () NIL REQ 1.01\r\n",
		"C7 SAVE " D " 0 0 " G " () NIL REQ 1.18446744073709551616\r\n",
		"C7 SAVE " D " 0 0 " G " () NIL REQ 1.1 REQ 1.1\r\n",
		"C7 SAVE " D " 0 0 " G " () NIL REQ (1 1)\r\n",
		"C7 SAVE " D " 0 0 " G " () NIL HOLDER 0\r\n",
		"C7 SAVE " D " 0 0 " G " () NIL HOLDER 4294967296\r\n",
		"C7 SAVE " D " 0 0 " G " () NIL HOLDER 1 HOLDER 1\r\n",
		"C7 SAVE " D " 0 0 " G " () NIL HOLDER (1)\r\n",
		"C7 SAVE " D " 0 0 " G " () NIL HOLDER -1\r\n",
		"C7 SAVE " D " 0 0 " G " () NIL HOLDER\r\n",
		"S2 SAVE " D " 17 99 " G " () NIL ORIGIN 3 HOLDER 3\r\n") },
	{ "COPY", LINES("C8 COPY 2 15 " G " 16 100 1700000000+0000 (\\Flagged) ORIGIN 3\r\n",
			"C8 COPY 2 15 " G " 0 0 1700000000+0000 () REQ 7.12\r\n"),
	  LINES("C8 COPY 2 15 " G " 16 100 1700000000+0000 \\Flagged\r\n",
		"C8 COPY 2 15 " G " 0 0 1700000000+0000 () HOLDER 2\r\n",
		"C8 COPY 2 15 " G " 16 100\r\n") },
	{ "EXPUNGE", LINES("C9 EXPUNGE 1:5,7 120 ORIGIN 3\r\n",
			   "C9 EXPUNGE 4,9 120 ORIGIN 3 GUIDS (" G " " G ")\r\n",
			   "C9 EXPUNGE 4 120 ORIGIN 3 EPOCH 17179869185 GUIDS (" G ")\r\n",
			   "C9 EXPUNGE 4 120 ORIGIN 3 GUIDS (" G ") BY USER\r\n"),
	  LINES("C9 EXPUNGE 1:5,7 -1\r\n", "C9 EXPUNGE 0:5 120\r\n",
		"C9 EXPUNGE 4 120 EPOCH 0\r\n", "C9 EXPUNGE 4 120 EPOCH 1 EPOCH 2\r\n",
		"C9 EXPUNGE 4 120 GUIDS (0123)\r\n", "C9 EXPUNGE 4 120 GUIDS ()\r\n",
		"C9 EXPUNGE 4 120 BY ENGINE\r\n", "C9 EXPUNGE 4 120 BY USER BY USER\r\n") },
	{ "STORE", LINES("C10 STORE 1:5,7 1233 (\\Seen) ($Junk) UNCHANGEDSINCE 1200 ORIGIN 2\r\n",
			 "C10 STORE 4 1233 (\\Seen) (\\*) ORIGIN 2 GUIDS (" G ")\r\n",
			 "C10 STORE 4 0 (\\Seen) () GUIDS (" G ") EPOCH 18446744073709551615\r\n",
			 "C10 STORE 4 0 (\\Seen) () SEEN-OF bob GUIDS (" G ") UNCHANGEDSINCE 3\r\n"),
	  LINES("C10 STORE 1 1233 (\\Seen) ($Junk) SPECIAL-USE (\\Seen)\r\n",
		"C10 STORE 1 1233 (\\Seen)\r\n",
		"C10 STORE 1 1233 (\\Seen) () GUIDS " G "\r\n",
		"C10 STORE 1 0 (\\Seen) () EPOCH x\r\n",
		"C10 STORE 1 0 (\\Seen) () SEEN-OF .public GUIDS (" G ")\r\n",
		"C10 STORE 1 0 (\\Seen) () SEEN-OF (bob) GUIDS (" G ")\r\n",
		"C10 STORE 1 0 (\\Seen) () SEEN-OF bob SEEN-OF bob GUIDS (" G ")\r\n") },
	{ "PSEEN", LINES("C11 PSEEN bob " G " 1 1234 1765084800123 ORIGIN 1 EPOCH 17179869185\r\n",
			 "C12 PSEEN carol@x " G " 0 9 5\r\n"),
	  LINES("C11 PSEEN bob " G " 1 1234\r\n", "C11 PSEEN bob 0123 1 1234 5\r\n",
		"C11 PSEEN bob " G " 1 1234 5 GUIDS (" G ")\r\n",
		"C11 PSEEN bob " G " 1 9223372036854775808 5\r\n",
		"C11 PSEEN (bob) " G " 1 1234 5\r\n") },
	{ "PSEEN-MBOX", LINES("C13 PSEEN-MBOX zed " G " 7\r\n", "C14 PSEEN-MBOX .public " G " 1\r\n"),
	  LINES("C13 PSEEN-MBOX zed " G " 0\r\n", "C13 PSEEN-MBOX zed 0123 7\r\n",
		"C13 PSEEN-MBOX zed " G " 7 ORIGIN 1\r\n", "C13 PSEEN-MBOX zed " G "\r\n") },
	{ "FETCH", LINES("C13 FETCH 46,48\r\n"),
	  LINES("C13 FETCH 46 ORIGIN 2\r\n", "C13 FETCH (46)\r\n", "C13 FETCH 46 EPOCH 5\r\n") },
	{ "SYNC-BEGIN", LINES("C11 SYNC-BEGIN 1200 1300 40 45 (1:44 50)\r\n",
			      "C11 SYNC-BEGIN 1200 1300 40 45\r\n"),
	  LINES("C11 SYNC-BEGIN 1200 1300 0 45\r\n", "C11 SYNC-BEGIN 1200 1300 40 45 (x)\r\n") },
	{ "SYNC-END", LINES("C12 SYNC-END\r\n"), LINES("C12 SYNC-END 1\r\n") },
	{ "UIDFIX", LINES("C12 UIDFIX 41:42 47:48\r\n"), LINES("C12 UIDFIX 41:42\r\n") },
	{ "GONE", LINES("C14 GONE GUIDS (" G " " G ")\r\n"),
	  LINES("C14 GONE GUIDS ()\r\n", "C14 GONE GUIDS (0123)\r\n",
		"C14 GONE 4 GUIDS (" G ")\r\n", "C14 GONE GUIDS (" G ") BY USER\r\n") },
	{ "LIST", LINES("C3 LIST alice\r\n"), LINES("C3 LIST\r\n", "C3 LIST alice ORIGIN 1\r\n") },
	{ "MM",
	  LINES("C1 MM LINKS 1 8 30064771073 2,3\r\n",
		"C1 MM LINKS 4 1 30064771073 -\r\n",
		"C2 MM ROOT-ANNOUNCE 1 3 32 17179869185\r\n",
		"C3 MM DROPPED 3 1 31 17179869185\r\n",
		"C4 MM STALE-EPOCH 1 2 32 17179869185\r\n",
		"C5 MM MASTER-WHO 2 1 32 17179869185 u:alice\r\n",
		"C6 MM MASTER-IS 1 2 32 17179869185 \"m:alice smith/" G "\" 2 1\r\n",
		"C7 MM MASTER-MOVE 2 3 32 17179869185 g 2 2,1 FORCE 0\r\n",
		"C8 MM MASTER-RELEASE 3 1 32 17179869185 g 2 4 -\r\n",
		"C9 MM MASTER-MOVE-FAIL 3 2 32 17179869185 d:example.com 2 3 REFUSED\r\n"),
	  LINES("C1 MM\r\n",                                        /* no message */
		"C1 MM ROOT 1 8\r\n",                               /* not a message */
		"C1 MM MASTER-WHO 2 1 32 17179869185 u:alice VIA (1)\r\n", /* no options */
		"C1 MM root-announce 1 3 32 17179869185\r\n",       /* names are exact */
		"C1 MM ROOT-ANNOUNCE 1 3 32\r\n",                   /* epoch missing */
		"C1 MM ROOT-ANNOUNCE 0 3 32 17179869185\r\n",       /* SID 0 */
		"C1 MM LINKS 1 8 30064771073 2,,3\r\n",             /* empty SID */
		"C1 MM LINKS 1 8 30064771073 2,03\r\n",             /* leading zero */
		"C1 MM LINKS 1 8 30064771073 (2 3)\r\n",            /* a list */
		"C1 MM MASTER-WHO 2 1 32 17179869185 \"\"\r\n",     /* empty key */
		"C1 MM MASTER-WHO 2 1 32 17179869185 {7}\r\nu:alice\r\n", /* literal key */
		"C1 MM MASTER-MOVE 2 3 32 17179869185 g 2 - HARD 0\r\n",
		"C1 MM MASTER-MOVE-FAIL 3 2 32 17179869185 g 2 3 LATER\r\n",
		"C1 MM MASTER-RELEASE 3 1 32 17179869185 g 2 4\r\n") },
	{ "FLAGS", LINES("C10 FLAGS 3 1240 (\\Seen \\Answered)\r\n"),
	  LINES("C10 FLAGS 0 1240 ()\r\n", "C10 FLAGS 3 1240 (\\\\Seen)\r\n") },
	{ "TEXT", LINES("C13 TEXT 46 " G " {5}\r\nhello\r\n", "C13 TEXT 47 " G " NIL\r\n"),
	  LINES("C13 TEXT 46 " G " \"hello\"\r\n") },
	{ "MAILBOX", LINES("C3 MAILBOX \"Sent Items\" " G " 1700000003 7 88 " G " \\Sent\r\n",
			   "C3 MAILBOX INBOX " G " 1700000001 42 1234 " G " NIL\r\n"),
	  LINES("C3 MAILBOX INBOX " G " 1700000001 42 1234 NIL\r\n",
		"C3 MAILBOX INBOX " G " 1700000001 42 1234 " G " (\\Sent)\r\n") },
	{ "SUBSCRIBED", LINES("C3 SUBSCRIBED Archive\r\n"), LINES("C3 SUBSCRIBED\r\n") },
	{ "ACL", LINES("C3 ACL " G " bob lrs 1765084800123\r\n", "C3 ACL " G " -bob \"\" 5\r\n"),
	  LINES("C3 ACL " G " bob lrs\r\n", "C3 ACL bob lrs 5\r\n", "C3 ACL " G " bob lrs x\r\n") },
	{ "ACL-PUT",
	  LINES("C40 ACL-PUT alice " G " bob lrs 1765084800123\r\n",
		"C41 ACL-PUT alice " G " anyone \"\" 1765084900456 ORIGIN 1\r\n"),
	  LINES("C40 ACL-PUT alice " G " bob lrs\r\n", "C40 ACL-PUT alice nope bob lrs 5\r\n",
		"C40 ACL-PUT alice " G " bob lrs 5 UNCHANGEDSINCE 3\r\n") },
	{ "USER-PUT", LINES("C21 USER-PUT alice 1700000000123 2 \"{SHA512-CRYPT}$6$s$h\"\r\n",
			    "C22 USER-PUT bob 1700000000124 3 -\r\n"),
	  LINES("C21 USER-PUT alice 1700000000123 0 -\r\n", "C21 USER-PUT alice 1 2\r\n",
		"C21 USER-PUT alice 1 2 - ORIGIN 2\r\n") },
	{ "USER-LIST", LINES("C23 USER-LIST\r\n"), LINES("C23 USER-LIST alice\r\n") },
	{ "HIGHEST", LINES("C30 HIGHEST alice " G "\r\n"),
	  LINES("C30 HIGHEST alice\r\n", "C30 HIGHEST alice 0123\r\n",
		"C30 HIGHEST alice " G " " G "\r\n") },
	{ "USER-ENTRY", LINES("C23 USER-ENTRY alice 1700000000123 2 \"{SHA512-CRYPT}$6$s$h\"\r\n"),
	  LINES("C23 USER-ENTRY alice x 2 -\r\n") },
};

#define N_ROW_CASES (sizeof(row_cases) / sizeof(row_cases[0]))

static const struct proto_cmd *parse_one(struct proto_parser *p, const char *line)
{
	size_t used;
	const struct proto_cmd *cmd = NULL;
	int r = proto_parser_parse(p, (const unsigned char *)line, strlen(line), &used, &cmd);
	CU_ASSERT_EQUAL(r, 1);
	CU_ASSERT_EQUAL(used, strlen(line));
	if (r != 1) {
		fprintf(stderr, "\ndoes not parse: %s", line);
		return NULL;
	}
	return cmd;
}

/* Writes parsed arguments back with the writer, each in the form it came
 * in: what the writer produces for the same values, if the line was in
 * canonical form. */
static void write_args(struct proto_wr *w, const struct proto_arg *args, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const struct proto_arg *a = &args[i];
		switch (a->type) {
		case PROTO_ARG_ATOM:
		case PROTO_ARG_QUOTED:
			proto_wr_str(w, a->str, a->len);
			break;
		case PROTO_ARG_LITERAL:
			proto_wr_literal(w, a->str, a->len);
			break;
		case PROTO_ARG_LIST:
			proto_wr_list_begin(w);
			write_args(w, a->list, a->count);
			proto_wr_list_end(w);
			break;
		}
	}
}

static const struct row_case *row_case_find(const char *name)
{
	for (size_t i = 0; i < N_ROW_CASES; i++) {
		if (strcmp(row_cases[i].name, name) == 0)
			return &row_cases[i];
	}
	return NULL;
}

static void test_every_row_round_trips_and_refuses_a_malformed_variant(void)
{
	size_t rows = proto_cmd_info_count();
	CU_ASSERT(rows >= 25);
	CU_ASSERT_PTR_NULL(proto_cmd_info_get(rows));
	for (size_t r = 0; r < rows; r++) {
		const struct proto_cmd_info *info = proto_cmd_info_get(r);
		CU_ASSERT_PTR_NOT_NULL_FATAL(info);
		CU_ASSERT_PTR_EQUAL(proto_cmd_info_find(info->name), info);
		const struct row_case *c = row_case_find(info->name);
		CU_ASSERT_PTR_NOT_NULL(c);
		if (c == NULL) {
			fprintf(stderr, "\nno test lines for row %s\n", info->name);
			continue;
		}
		CU_ASSERT(c->good[0] != NULL && c->bad[0] != NULL);
		for (const char *const *g = c->good; *g != NULL; g++) {
			struct proto_parser *p = proto_parser_create(NULL);
			const struct proto_cmd *cmd = parse_one(p, *g);
			if (cmd != NULL) {
				size_t npos;
				const char *error = NULL;
				CU_ASSERT_PTR_EQUAL(proto_cmd_info_find(cmd->name), info);
				int v = proto_cmd_validate(cmd, &npos, &error);
				CU_ASSERT_EQUAL(v, 0);
				if (v != 0)
					fprintf(stderr, "\nrefused: %s%s\n", *g, error);
				CU_ASSERT(npos <= cmd->arg_count);
				struct buf out = BUF_INIT;
				struct proto_wr w;
				proto_wr_init(&w, &out);
				proto_wr_begin(&w, cmd->tag, cmd->name);
				write_args(&w, cmd->args, cmd->arg_count);
				proto_wr_end(&w);
				CU_ASSERT(out.len == strlen(*g) && memcmp(out.data, *g, out.len) == 0);
				if (out.len != strlen(*g) || memcmp(out.data, *g, out.len) != 0)
					fprintf(stderr, "\nwritten back as %.*s", (int)out.len,
						(const char *)out.data);
				buf_free(&out);
			}
			proto_parser_destroy(&p);
		}
		for (const char *const *b = c->bad; *b != NULL; b++) {
			struct proto_parser *p = proto_parser_create(NULL);
			const struct proto_cmd *cmd = parse_one(p, *b);
			if (cmd != NULL) {
				size_t npos;
				const char *error = NULL;
				int v = proto_cmd_validate(cmd, &npos, &error);
				CU_ASSERT_EQUAL(v, -1);
				CU_ASSERT_PTR_NOT_NULL(error);
				if (v != -1)
					fprintf(stderr, "\naccepted: %s", *b);
			}
			proto_parser_destroy(&p);
		}
	}
	/* No test lines for a row the table does not have. */
	for (size_t i = 0; i < N_ROW_CASES; i++)
		CU_ASSERT_PTR_NOT_NULL(proto_cmd_info_find(row_cases[i].name));
}

static void test_drafts_never_sent_are_not_in_the_table(void)
{
	static const char *const drafts[] = { "MASTER-WHO", "MASTER-MOVE", "MASTER-IS", "ROOT",
					      "DROPPED", "HELLO", "BYE", "OK" };
	for (size_t i = 0; i < sizeof(drafts) / sizeof(drafts[0]); i++)
		CU_ASSERT_PTR_NULL(proto_cmd_info_find(drafts[i]));
}

static void test_origin_is_an_option_of_exactly_the_changes(void)
{
	static const char *const changes[] = { "CREATE", "DELETE", "RENAME", "SUBSCRIBE",
					       "UNSUBSCRIBE", "SAVE", "COPY", "EXPUNGE", "STORE",
					       "ACL-PUT", "PSEEN" };
	size_t with_origin = 0;
	for (size_t r = 0; r < proto_cmd_info_count(); r++) {
		const struct proto_cmd_info *info = proto_cmd_info_get(r);
		bool is_change = false;
		for (size_t i = 0; i < sizeof(changes) / sizeof(changes[0]); i++)
			is_change = is_change || strcmp(changes[i], info->name) == 0;
		CU_ASSERT_EQUAL(proto_cmd_is_option(info, "ORIGIN"), is_change);
		CU_ASSERT_EQUAL(proto_cmd_is_option(info, "EPOCH"), is_change);
		CU_ASSERT_EQUAL((info->flags & PROTO_CMDF_OPT_ORIGIN) != 0, is_change);
		if (is_change)
			with_origin++;
	}
	CU_ASSERT_EQUAL(with_origin, sizeof(changes) / sizeof(changes[0]));
}

/* ---- SPEC.md ---- */

static char *read_spec(void)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/SPEC.md", TOP_SRCDIR);
	struct buf b = BUF_INIT;
	char *err = NULL;
	if (file_read(path, 4 * 1024 * 1024, &b, &err) < 0) {
		fprintf(stderr, "\n  %s\n", err);
		free(err);
		buf_free(&b);
		CU_FAIL("SPEC.md unreadable");
		return NULL;
	}
	buf_append_byte(&b, '\0');
	size_t len;
	return (char *)buf_steal(&b, &len);
}

/* The text from the line starting with heading up to the next "## " or
 * "### " heading, or NULL. */
static char *spec_section(const char *spec, const char *heading)
{
	const char *p = strstr(spec, heading);
	if (p == NULL)
		return NULL;
	const char *end = p + strlen(heading);
	for (;;) {
		end = strstr(end, "\n#");
		if (end == NULL) {
			end = p + strlen(p);
			break;
		}
		if (strncmp(end, "\n## ", 4) == 0 || strncmp(end, "\n### ", 5) == 0)
			break;
		end++;
	}
	return strndup(p, (size_t)(end - p));
}

static bool listed(const char *const *names, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++) {
		if (strcmp(names[i], name) == 0)
			return true;
	}
	return false;
}

/* Section 12's first column: "| `NAME` |" or "| `A`, `B` |".  Returns how
 * many names were stored. */
static size_t summary_names(const char *sec, char names[][32], size_t max)
{
	size_t n = 0;
	for (const char *line = sec; line != NULL && *line != '\0';) {
		const char *eol = strchr(line, '\n');
		size_t len = eol != NULL ? (size_t)(eol - line) : strlen(line);
		if (len > 3 && strncmp(line, "| `", 3) == 0) {
			const char *cell_end = memchr(line + 1, '|', len - 1);
			for (const char *q = line + 1; cell_end != NULL && q < cell_end;) {
				const char *open = memchr(q, '`', (size_t)(cell_end - q));
				if (open == NULL)
					break;
				const char *close = memchr(open + 1, '`', (size_t)(cell_end - open - 1));
				if (close == NULL)
					break;
				size_t nl = (size_t)(close - open - 1);
				if (n < max && nl > 0 && nl < 32) {
					memcpy(names[n], open + 1, nl);
					names[n][nl] = '\0';
					n++;
				}
				q = close + 1;
			}
		}
		line = eol != NULL ? eol + 1 : NULL;
	}
	return n;
}

static void test_table_rows_are_the_commands_of_spec_section_12(void)
{
	char *spec = read_spec();
	if (spec == NULL)
		return;
	char *sec = spec_section(spec, "## 12. Command summary");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sec);
	char names[64][32];
	size_t n = summary_names(sec, names, 64);
	CU_ASSERT(n >= 20);
	const char *ptrs[64];
	for (size_t i = 0; i < n; i++)
		ptrs[i] = names[i];
	/* Every command of the summary is a row (HELLO is an untagged line
	 * that proto-conn handles, not a command). */
	for (size_t i = 0; i < n; i++) {
		if (strcmp(names[i], "* HELLO") == 0)
			continue;
		const struct proto_cmd_info *info = proto_cmd_info_find(names[i]);
		CU_ASSERT(info != NULL && (info->flags & PROTO_CMDF_DATA) == 0);
		if (info == NULL)
			fprintf(stderr, "\nSPEC.md 12 has %s, the table does not\n", names[i]);
	}
	/* Every command row is in the summary; every data line is named after
	 * "data" in some row. */
	for (size_t r = 0; r < proto_cmd_info_count(); r++) {
		const struct proto_cmd_info *info = proto_cmd_info_get(r);
		if ((info->flags & PROTO_CMDF_DATA) == 0) {
			CU_ASSERT(listed(ptrs, n, info->name));
			if (!listed(ptrs, n, info->name))
				fprintf(stderr, "\nthe table has %s, SPEC.md 12 does not\n", info->name);
		} else {
			char pat[64];
			snprintf(pat, sizeof(pat), "data %s", info->name);
			bool found = strstr(sec, pat) != NULL;
			snprintf(pat, sizeof(pat), ", %s;", info->name);
			found = found || strstr(sec, pat) != NULL;
			CU_ASSERT(found);
			if (!found)
				fprintf(stderr, "\ndata line %s is not in SPEC.md 12\n", info->name);
		}
	}
	free(sec);
	free(spec);
}

/* The MM messages of section 9.6's wire form are those the table checks:
 * one good line per message type above, and each name in the spec. */
static void test_mm_messages_are_those_of_spec_section_9_6(void)
{
	char *spec = read_spec();
	if (spec == NULL)
		return;
	char *sec = spec_section(spec, "### 9.6 Wire form: MM");
	CU_ASSERT_PTR_NOT_NULL_FATAL(sec);
	const struct row_case *mm = row_case_find("MM");
	CU_ASSERT_PTR_NOT_NULL_FATAL(mm);
	size_t specced = 0, covered = 0;
	for (const char *line = strstr(sec, "\nMM "); line != NULL; line = strstr(line + 1, "\nMM ")) {
		char name[32];
		if (sscanf(line + 4, "%31[A-Z-]", name) != 1)
			continue;
		specced++;
		/* The spec's field count equals the one the table accepts. */
		const char *eol = strchr(line + 1, '\n');
		size_t spec_fields = 0;
		for (const char *q = line + 4; q < eol; q++)
			spec_fields += *q == ' ';
		bool found = false;
		for (const char *const *g = mm->good; *g != NULL; g++) {
			char gname[32];
			if (sscanf(*g, "%*s MM %31[A-Z-]", gname) != 1 || strcmp(gname, name) != 0)
				continue;
			size_t fields = 0;
			struct proto_parser *p = proto_parser_create(NULL);
			const struct proto_cmd *cmd = parse_one(p, *g);
			if (cmd != NULL)
				fields = cmd->arg_count - 1;
			proto_parser_destroy(&p);
			CU_ASSERT_EQUAL(fields, spec_fields);
			if (fields != spec_fields)
				fprintf(stderr, "\nMM %s: %zu fields in SPEC.md, %zu in the test\n", name,
					spec_fields, fields);
			found = true;
		}
		CU_ASSERT(found);
		if (!found)
			fprintf(stderr, "\nno test line for MM %s\n", name);
		covered += found;
	}
	CU_ASSERT_EQUAL(specced, 9);
	CU_ASSERT_EQUAL(covered, specced);
	free(sec);
	free(spec);
}

const struct test_case proto_command_cases[] = {
	{ "every row round trips and refuses a malformed variant",
	  test_every_row_round_trips_and_refuses_a_malformed_variant },
	{ "drafts never sent are not in the table", test_drafts_never_sent_are_not_in_the_table },
	{ "ORIGIN is an option of exactly the changes", test_origin_is_an_option_of_exactly_the_changes },
	{ "table rows are the commands of SPEC.md 12",
	  test_table_rows_are_the_commands_of_spec_section_12 },
	{ "MM messages are those of SPEC.md 9.6", test_mm_messages_are_those_of_spec_section_9_6 },
	{ NULL, NULL },
};

/* The log line format: one logfmt line per event, whatever a peer or a
 * client put into the message. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "lib/log.h"
#include "tests/lib/tests.h"

static int saved_fd = -1;
static FILE *capture_file;

/* Sends stderr (fd 2, where the log goes) to a temporary file. */
static void capture_begin(void)
{
	fflush(stderr);
	capture_file = tmpfile();
	CU_ASSERT_PTR_NOT_NULL_FATAL(capture_file);
	saved_fd = dup(2);
	CU_ASSERT_FATAL(saved_fd >= 0);
	CU_ASSERT_FATAL(dup2(fileno(capture_file), 2) == 2);
}

/* Restores stderr and returns what was written (in a static buffer, so a
 * failed fatal assertion leaks nothing); *len_r gets its length, since a
 * broken format could contain NUL bytes. */
static char *capture_end(size_t *len_r)
{
	static char text[16384];
	fflush(stderr);
	dup2(saved_fd, 2);
	close(saved_fd);
	saved_fd = -1;
	rewind(capture_file);
	size_t got = fread(text, 1, sizeof(text) - 1, capture_file);
	text[got] = '\0';
	fclose(capture_file);
	capture_file = NULL;
	*len_r = got;
	return text;
}

struct field {
	char key[32];
	char value[8192];
	size_t value_len;
	int quoted;
};

static size_t put_utf8(char *dst, uint32_t cp)
{
	if (cp < 0x80) {
		dst[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		dst[0] = (char)(0xc0 | (cp >> 6));
		dst[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	dst[0] = (char)(0xe0 | (cp >> 12));
	dst[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
	dst[2] = (char)(0x80 | (cp & 0x3f));
	return 3;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* A strict logfmt reader for one line without its newline: key=value
 * fields separated by one space; quoted values with the escapes log.h
 * lists.  Returns the number of fields, or -1 if the line is malformed. */
static int parse_line(const char *line, size_t len, struct field *fields, int max)
{
	size_t i = 0;
	int nf = 0;
	while (i < len) {
		if (nf == max)
			return -1;
		struct field *f = &fields[nf++];
		size_t k = 0;
		while (i < len && line[i] >= 'a' && line[i] <= 'z' && k < sizeof(f->key) - 1)
			f->key[k++] = line[i++];
		f->key[k] = '\0';
		if (k == 0 || i >= len || line[i++] != '=')
			return -1;
		f->value_len = 0;
		f->quoted = i < len && line[i] == '"';
		if (!f->quoted) {
			while (i < len && line[i] != ' ') {
				unsigned char c = (unsigned char)line[i];
				if (c < 0x21 || c >= 0x7f || c == '"' || c == '=' || c == '\\')
					return -1;
				f->value[f->value_len++] = line[i++];
			}
		} else {
			i++;
			for (;;) {
				if (i >= len || f->value_len + 4 > sizeof(f->value))
					return -1;
				unsigned char c = (unsigned char)line[i++];
				if (c == '"')
					break;
				if (c < 0x20 || c == 0x7f)
					return -1;
				if (c != '\\') {
					f->value[f->value_len++] = (char)c;
					continue;
				}
				if (i >= len)
					return -1;
				char e = line[i++];
				int h1, h2;
				switch (e) {
				case '"': f->value[f->value_len++] = '"'; break;
				case '\\': f->value[f->value_len++] = '\\'; break;
				case 'n': f->value[f->value_len++] = '\n'; break;
				case 'r': f->value[f->value_len++] = '\r'; break;
				case 't': f->value[f->value_len++] = '\t'; break;
				case 'x':
					if (i + 2 > len || (h1 = hexval(line[i])) < 0 ||
					    (h2 = hexval(line[i + 1])) < 0)
						return -1;
					f->value[f->value_len++] = (char)(h1 * 16 + h2);
					i += 2;
					break;
				case 'u': {
					uint32_t cp = 0;
					for (int d = 0; d < 4; d++) {
						if (i >= len || (h1 = hexval(line[i])) < 0)
							return -1;
						cp = cp * 16 + (uint32_t)h1;
						i++;
					}
					f->value_len += put_utf8(f->value + f->value_len, cp);
					break;
				}
				default:
					return -1;
				}
			}
		}
		f->value[f->value_len] = '\0';
		if (i < len && line[i++] != ' ')
			return -1;
		if (i == len && line[len - 1] == ' ')
			return -1;
	}
	return nf;
}

static const struct field *get(const struct field *fields, int n, const char *key)
{
	for (int i = 0; i < n; i++) {
		if (strcmp(fields[i].key, key) == 0)
			return &fields[i];
	}
	return NULL;
}

/* Captured output must be exactly one line; it is parsed into fields. */
static int one_line(const char *text, size_t len, struct field *fields, int max)
{
	const char *nl = memchr(text, '\n', len);
	if (nl == NULL || (size_t)(nl - text) != len - 1) {
		fprintf(stderr, "\n  not one line: [%.*s]\n", (int)len, text);
		return -1;
	}
	int n = parse_line(text, len - 1, fields, max);
	if (n < 0)
		fprintf(stderr, "\n  not logfmt: [%.*s]\n", (int)len, text);
	return n;
}

static struct field fields[8];

static void test_plain_line(void)
{
	size_t len;
	log_init(3, LOG_LEVEL_INFO);
	capture_begin();
	log_info("resync of %s with %u: %d mailboxes synced", "chaos", 2u, 0);
	char *text = capture_end(&len);
	int n = one_line(text, len, fields, 8);
	CU_ASSERT_EQUAL_FATAL(n, 4);
	CU_ASSERT_STRING_EQUAL(fields[0].key, "ts");
	CU_ASSERT_STRING_EQUAL(fields[1].key, "level");
	CU_ASSERT_STRING_EQUAL(fields[1].value, "info");
	CU_ASSERT_STRING_EQUAL(fields[2].key, "node");
	CU_ASSERT_STRING_EQUAL(fields[2].value, "3");
	CU_ASSERT_STRING_EQUAL(fields[3].key, "msg");
	CU_ASSERT_STRING_EQUAL(fields[3].value, "resync of chaos with 2: 0 mailboxes synced");
	/* 2026-12-07T11:19:34.873Z: UTC with milliseconds, unquoted. */
	const char *ts = fields[0].value;
	CU_ASSERT_EQUAL(strlen(ts), 24);
	CU_ASSERT(ts[4] == '-' && ts[10] == 'T' && ts[13] == ':' && ts[19] == '.' && ts[23] == 'Z');
	CU_ASSERT(strstr(text, " msg=\"resync of chaos with 2: 0 mailboxes synced\"\n") != NULL);

	/* A value without spaces is not quoted; no node before it is known. */
	log_init(0, LOG_LEVEL_INFO);
	capture_begin();
	log_errorx("ready");
	text = capture_end(&len);
	n = one_line(text, len, fields, 8);
	CU_ASSERT_EQUAL_FATAL(n, 3);
	CU_ASSERT_STRING_EQUAL(fields[1].value, "error");
	CU_ASSERT_STRING_EQUAL(fields[2].key, "msg");
	CU_ASSERT_STRING_EQUAL(fields[2].value, "ready");
	CU_ASSERT_FALSE(fields[2].quoted);

	/* Below the level: nothing at all. */
	capture_begin();
	log_debug("not shown");
	text = capture_end(&len);
	CU_ASSERT_EQUAL(len, 0);
}

/* What a hostile peer or client could put into a logged string. */
static const char hostile[] =
	"user \"a\" said: x\nts=2026-01-01T00:00:00.000Z level=error node=1 msg=forged\r\n"
	" \\\" node=9 a=b\tq\x01\x1b[31m\x7f \xff\xfe\xc0\xaf\xed\xa0\x80 caf\xc3\xa9 "
	"nel\xc2\x85 ls\xe2\x80\xa8 ps\xe2\x80\xa9 \xe6\x97\xa5 \xf0\x9f\x90\xa6 end\\";

static void test_hostile_message(void)
{
	size_t len;
	log_init(3, LOG_LEVEL_INFO);
	capture_begin();
	errno = ENOENT;
	log_warn("mailbox %s", hostile);
	char *text = capture_end(&len);
	int n = one_line(text, len, fields, 8);
	CU_ASSERT_EQUAL_FATAL(n, 5);
	CU_ASSERT_STRING_EQUAL(fields[1].value, "warn");
	CU_ASSERT_STRING_EQUAL(fields[2].key, "node");
	CU_ASSERT_STRING_EQUAL(fields[2].value, "3");
	const struct field *msg = get(fields, n, "msg");
	CU_ASSERT_PTR_NOT_NULL_FATAL(msg);
	char want[sizeof(hostile) + 16];
	snprintf(want, sizeof(want), "mailbox %s", hostile);
	/* Read back it is the very string logged, byte for byte. */
	CU_ASSERT_EQUAL(msg->value_len, strlen(want));
	CU_ASSERT(memcmp(msg->value, want, strlen(want)) == 0);
	const struct field *err = get(fields, n, "err");
	CU_ASSERT_PTR_NOT_NULL_FATAL(err);
	CU_ASSERT_STRING_EQUAL(err->value, strerror(ENOENT));
	CU_ASSERT_PTR_NULL(get(fields, n, "truncated"));
	/* Nothing a terminal or a log viewer takes for a line end or an
	 * escape sequence: no control byte, no C1, no U+2028/9, no invalid
	 * UTF-8 (the valid non-ASCII characters stay readable). */
	for (size_t i = 0; i + 1 < len; i++) {
		unsigned char c = (unsigned char)text[i];
		CU_ASSERT(c >= 0x20 && c != 0x7f);
	}
	CU_ASSERT(strstr(text, "\xc2\x85") == NULL);
	CU_ASSERT(strstr(text, "\xe2\x80\xa8") == NULL && strstr(text, "\xe2\x80\xa9") == NULL);
	CU_ASSERT(strstr(text, "\\xff\\xfe\\xc0\\xaf\\xed\\xa0\\x80") != NULL);
	CU_ASSERT(strstr(text, "caf\xc3\xa9") != NULL && strstr(text, "\xf0\x9f\x90\xa6") != NULL);
	CU_ASSERT(strstr(text, "nel\\u0085 ls\\u2028 ps\\u2029") != NULL);
}

static void test_long_message(void)
{
	/* Quotes double and control bytes grow six times when escaped: the
	 * line stays bounded, one line, well formed and says it was cut. */
	static const char fill[] = { '"', '\x01', 'a', '\n' };
	for (size_t k = 0; k < sizeof(fill); k++) {
		size_t len;
		char big[5000];
		memset(big, fill[k], sizeof(big) - 1);
		big[sizeof(big) - 1] = '\0';
		log_init(12, LOG_LEVEL_INFO);
		capture_begin();
		errno = EACCES;
		log_error("%s", big);
		char *text = capture_end(&len);
		int n = one_line(text, len, fields, 8);
		CU_ASSERT_EQUAL_FATAL(n, 6);
		CU_ASSERT(len <= 4096);
		const struct field *msg = get(fields, n, "msg");
		CU_ASSERT_PTR_NOT_NULL_FATAL(msg);
		CU_ASSERT(msg->value_len > 400 && msg->value_len < sizeof(big) - 1);
		CU_ASSERT(memcmp(msg->value, big, msg->value_len) == 0);
		const struct field *err = get(fields, n, "err");
		CU_ASSERT(err != NULL && strcmp(err->value, strerror(EACCES)) == 0);
		const struct field *cut = get(fields, n, "truncated");
		CU_ASSERT(cut != NULL && strcmp(cut->value, "true") == 0);
		}
}

static void test_format_value(void)
{
	char out[16];
	bool cut;
	CU_ASSERT_EQUAL(log_format_value(out, sizeof(out), "", &cut), 2);
	CU_ASSERT_STRING_EQUAL(out, "\"\"");
	CU_ASSERT_FALSE(cut);
	CU_ASSERT_EQUAL(log_format_value(out, sizeof(out), "INBOX", &cut), 5);
	CU_ASSERT_STRING_EQUAL(out, "INBOX");
	log_format_value(out, sizeof(out), "a=b", &cut);
	CU_ASSERT_STRING_EQUAL(out, "\"a=b\"");
	/* Cut between whole escapes, and the quote still closes. */
	log_format_value(out, 6, "\"\"\"", &cut);
	CU_ASSERT_STRING_EQUAL(out, "\"\\\"\"");
	CU_ASSERT_TRUE(cut);
	log_format_value(out, 8, "ab\x01", &cut);
	CU_ASSERT_STRING_EQUAL(out, "\"ab\"");
	CU_ASSERT_TRUE(cut);
	log_format_value(out, 7, "\xc3\xa9\xc3\xa9\xc3\xa9", &cut);
	CU_ASSERT_STRING_EQUAL(out, "\"\xc3\xa9\xc3\xa9\"");
	CU_ASSERT_TRUE(cut);
}

const struct test_case lib_log_cases[] = {
	{ "a plain line", test_plain_line },
	{ "a hostile message stays one line", test_hostile_message },
	{ "a long message is cut, still well formed", test_long_message },
	{ "values quoted and cut", test_format_value },
	{ NULL, NULL },
};

/* Unit tests of lmtp/lmtp-parse.c and of the lmtp_* configuration keys. */
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/config.h"
#include "lmtp/lmtp-parse.h"
#include "tests/lmtp/tests-lmtp.h"

static void test_cmd(void)
{
	const char *args;
	CU_ASSERT_EQUAL(lmtp_cmd_parse("LHLO host", &args), LMTP_CMD_LHLO);
	CU_ASSERT_STRING_EQUAL(args, "host");
	CU_ASSERT_EQUAL(lmtp_cmd_parse("mail from:<a@b> SIZE=3", &args), LMTP_CMD_MAIL);
	CU_ASSERT_STRING_EQUAL(args, "<a@b> SIZE=3");
	CU_ASSERT_EQUAL(lmtp_cmd_parse("RCPT TO: <a@b>", &args), LMTP_CMD_RCPT);
	CU_ASSERT_STRING_EQUAL(args, "<a@b>");
	CU_ASSERT_EQUAL(lmtp_cmd_parse("data", &args), LMTP_CMD_DATA);
	CU_ASSERT_STRING_EQUAL(args, "");
	CU_ASSERT_EQUAL(lmtp_cmd_parse("EHLO x", &args), LMTP_CMD_HELO);
	CU_ASSERT_EQUAL(lmtp_cmd_parse("STARTTLS", &args), LMTP_CMD_BDAT);
	/* A verb must end at a blank: "DATAX" and "MAIL FROM" without the
	 * colon are not commands. */
	CU_ASSERT_EQUAL(lmtp_cmd_parse("DATAX", &args), LMTP_CMD_UNKNOWN);
	CU_ASSERT_EQUAL(lmtp_cmd_parse("MAIL FROM <a@b>", &args), LMTP_CMD_UNKNOWN);
	CU_ASSERT_EQUAL(lmtp_cmd_parse("", &args), LMTP_CMD_UNKNOWN);
}

static void test_path(void)
{
	char addr[LMTP_MAX_ADDR + 1];
	const char *params;
	CU_ASSERT_EQUAL(lmtp_parse_path("<u@d> SIZE=1", addr, sizeof(addr), &params), 0);
	CU_ASSERT_STRING_EQUAL(addr, "u@d");
	CU_ASSERT_STRING_EQUAL(params, "SIZE=1");
	CU_ASSERT_EQUAL(lmtp_parse_path("<>", addr, sizeof(addr), &params), 0);
	CU_ASSERT_STRING_EQUAL(addr, "");
	CU_ASSERT_EQUAL(lmtp_parse_path("<@r1,@r2:u@d>", addr, sizeof(addr), &params), 0);
	CU_ASSERT_STRING_EQUAL(addr, "u@d");
	CU_ASSERT_EQUAL(lmtp_parse_path("u@d", addr, sizeof(addr), &params), -1);
	CU_ASSERT_EQUAL(lmtp_parse_path("<u@d", addr, sizeof(addr), &params), -1);
	CU_ASSERT_EQUAL(lmtp_parse_path("<u d>", addr, sizeof(addr), &params), -1);
	CU_ASSERT_EQUAL(lmtp_parse_path("<u@d>x", addr, sizeof(addr), &params), -1);
	CU_ASSERT_EQUAL(lmtp_parse_path("<\"q\"@d>", addr, sizeof(addr), &params), -1);
	char big[LMTP_MAX_ADDR + 8];
	big[0] = '<';
	memset(big + 1, 'a', LMTP_MAX_ADDR + 1);
	big[LMTP_MAX_ADDR + 2] = '>';
	big[LMTP_MAX_ADDR + 3] = '\0';
	CU_ASSERT_EQUAL(lmtp_parse_path(big, addr, sizeof(addr), &params), -1);
}

static void test_mail_params(void)
{
	uint64_t size;
	const char *bad;
	CU_ASSERT_EQUAL(lmtp_parse_mail_params("", &size, &bad), 0);
	CU_ASSERT_EQUAL(size, 0);
	CU_ASSERT_EQUAL(lmtp_parse_mail_params("SIZE=1234 BODY=8BITMIME", &size, &bad), 0);
	CU_ASSERT_EQUAL(size, 1234);
	CU_ASSERT_EQUAL(lmtp_parse_mail_params("body=7bit", &size, &bad), 0);
	CU_ASSERT_EQUAL(lmtp_parse_mail_params("BODY=BINARYMIME", &size, &bad), -1);
	CU_ASSERT_EQUAL(lmtp_parse_mail_params("SIZE=x", &size, &bad), -1);
	CU_ASSERT_EQUAL(lmtp_parse_mail_params("SIZE=99999999999999999999999", &size, &bad), -1);
	CU_ASSERT_EQUAL(lmtp_parse_mail_params("SIZE=1 RET=FULL", &size, &bad), -1);
	CU_ASSERT_STRING_EQUAL(bad, "RET=FULL");
}

static void test_split(void)
{
	char u[64], d[64], dom[64];
	CU_ASSERT_EQUAL(lmtp_split_rcpt("bob+lists@ex.org", u, d, dom, sizeof(u)), 0);
	CU_ASSERT_STRING_EQUAL(u, "bob");
	CU_ASSERT_STRING_EQUAL(d, "lists");
	CU_ASSERT_STRING_EQUAL(dom, "ex.org");
	CU_ASSERT_EQUAL(lmtp_split_rcpt("bob", u, d, dom, sizeof(u)), 0);
	CU_ASSERT_STRING_EQUAL(u, "bob");
	CU_ASSERT_STRING_EQUAL(d, "");
	CU_ASSERT_STRING_EQUAL(dom, "");
	/* Only the first '+' splits; '+' in the domain is not a detail. */
	CU_ASSERT_EQUAL(lmtp_split_rcpt("a+b+c@x+y", u, d, dom, sizeof(u)), 0);
	CU_ASSERT_STRING_EQUAL(u, "a");
	CU_ASSERT_STRING_EQUAL(d, "b+c");
	CU_ASSERT_STRING_EQUAL(dom, "x+y");
	CU_ASSERT_EQUAL(lmtp_split_rcpt("+x@d", u, d, dom, sizeof(u)), -1);
	CU_ASSERT_EQUAL(lmtp_split_rcpt("@d", u, d, dom, sizeof(u)), -1);
	CU_ASSERT_EQUAL(lmtp_split_rcpt("abcdef", u, d, dom, 4), -1);
}

/* Feeds s in pieces of step bytes, as the network might. */
static int feed(struct lmtp_data *d, struct buf *in, const char *s, size_t step, size_t *rest_r)
{
	size_t n = strlen(s);
	for (size_t off = 0; off < n; off += step) {
		size_t k = n - off < step ? n - off : step;
		buf_append(in, s + off, k);
		size_t used;
		int r = lmtp_data_feed(d, buf_rptr(in), buf_avail(in), &used);
		buf_consume(in, used);
		if (r) {
			*rest_r = buf_avail(in) + (n - off - k);
			return 1;
		}
	}
	return 0;
}

static void test_data(void)
{
	static const char input[] = "A: b\r\n\r\n..dot\r\n.\r\r\nbare\nend\r\n.\r\nQUIT\r\n";
	static const char want[] = "A: b\r\n\r\n.dot\r\n\r\r\nbare\r\nend\r\n";
	for (size_t step = 1; step <= sizeof(input); step++) {
		struct buf out = BUF_INIT, in = BUF_INIT;
		struct lmtp_data d;
		lmtp_data_init(&d, &out, 1000);
		size_t rest = 0;
		CU_ASSERT_EQUAL_FATAL(feed(&d, &in, input, step, &rest), 1);
		CU_ASSERT_EQUAL(rest, strlen("QUIT\r\n"));
		CU_ASSERT_FALSE(d.too_big);
		CU_ASSERT_EQUAL(out.len, strlen(want));
		CU_ASSERT(out.len == strlen(want) && memcmp(out.data, want, out.len) == 0);
		buf_free(&out);
		buf_free(&in);
	}
}

static void test_data_bare_lf_end(void)
{
	struct buf out = BUF_INIT, in = BUF_INIT;
	struct lmtp_data d;
	lmtp_data_init(&d, &out, 1000);
	size_t rest;
	CU_ASSERT_EQUAL(feed(&d, &in, "x\n.\n", 100, &rest), 1);
	CU_ASSERT_STRING_EQUAL(buf_cstr(&out), "x\r\n");
	buf_free(&out);
	buf_free(&in);
}

static void test_data_long_lines(void)
{
	/* A line longer than LMTP_MAX_LINE, starting with a stuffed dot and
	 * ending in CRLF split across feeds. */
	size_t n = 3 * LMTP_MAX_LINE;
	char *s = malloc(n + 16);
	s[0] = '.';
	s[1] = '.';
	memset(s + 2, 'z', n - 2);
	memcpy(s + n, "\r\n.\r\n", 6);
	for (size_t step = 700; step <= 5000; step += 1100) {
		struct buf out = BUF_INIT, in = BUF_INIT;
		struct lmtp_data d;
		lmtp_data_init(&d, &out, 100000);
		size_t rest;
		CU_ASSERT_EQUAL(feed(&d, &in, s, step, &rest), 1);
		CU_ASSERT_EQUAL(out.len, n - 1 + 2);
		CU_ASSERT(out.len > 2 && out.data[0] == '.' && out.data[1] == 'z');
		CU_ASSERT(out.len > 2 && memcmp(out.data + out.len - 2, "\r\n", 2) == 0);
		CU_ASSERT(memchr(out.data, '\r', out.len) == out.data + out.len - 2);
		buf_free(&out);
		buf_free(&in);
	}
	free(s);
}

static void test_data_too_big(void)
{
	struct buf out = BUF_INIT, in = BUF_INIT;
	struct lmtp_data d;
	lmtp_data_init(&d, &out, 10);
	size_t rest;
	CU_ASSERT_EQUAL(feed(&d, &in, "0123456789\r\nmore\r\n.\r\nNOOP\r\n", 3, &rest), 1);
	CU_ASSERT_TRUE(d.too_big);
	CU_ASSERT_EQUAL(out.len, 0);
	CU_ASSERT_EQUAL(rest, 6);
	/* Exactly the limit is fine. */
	buf_free(&in);
	lmtp_data_init(&d, &out, 10);
	CU_ASSERT_EQUAL(feed(&d, &in, "01234567\r\n.\r\n", 3, &rest), 1);
	CU_ASSERT_FALSE(d.too_big);
	CU_ASSERT_EQUAL(out.len, 10);
	buf_free(&out);
	buf_free(&in);
}

static void test_config(void)
{
	char *err = NULL;
	struct config *c = config_parse("t.conf",
					"node_id = 1\ndata_dir = /tmp/x\nlmtp_listen = /run/s/lmtp\n"
					"lmtp_detail_mailbox = yes\n", &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	CU_ASSERT_STRING_EQUAL(c->lmtp_socket, "/run/s/lmtp");
	CU_ASSERT_PTR_NULL(c->lmtp_listen.host);
	CU_ASSERT_TRUE(c->lmtp_detail_mailbox);
	config_free(&c);
	c = config_parse("t.conf", "node_id = 1\ndata_dir = /tmp/x\nlmtp_listen = 127.0.0.1:24\n",
			 &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(c);
	CU_ASSERT_STRING_EQUAL(c->lmtp_listen.host, "127.0.0.1");
	CU_ASSERT_EQUAL(c->lmtp_listen.port, 24);
	CU_ASSERT_PTR_NULL(c->lmtp_socket);
	CU_ASSERT_FALSE(c->lmtp_detail_mailbox);
	config_free(&c);
	c = config_parse("t.conf", "node_id = 1\ndata_dir = /tmp/x\nlmtp_listen = lmtp\n", &err);
	CU_ASSERT_PTR_NULL(c);
	CU_ASSERT(err != NULL && strstr(err, "t.conf:3") != NULL);
	free(err);
	err = NULL;
	c = config_parse("t.conf", "node_id = 1\ndata_dir = /tmp/x\nlmtp_detail_mailbox = 1\n",
			 &err);
	CU_ASSERT_PTR_NULL(c);
	free(err);
}

static const struct test_case parse_cases[] = {
	{ "commands", test_cmd },
	{ "paths", test_path },
	{ "MAIL parameters", test_mail_params },
	{ "recipient split", test_split },
	{ "DATA: unstuffing and line ends, any chunking", test_data },
	{ "DATA: bare LF terminator", test_data_bare_lf_end },
	{ "DATA: lines longer than LMTP_MAX_LINE", test_data_long_lines },
	{ "DATA: over the limit", test_data_too_big },
	{ "config keys", test_config },
	{ NULL, NULL },
};

int main(void)
{
	static const struct test_suite suites[] = {
		{ "lmtp", parse_cases, NULL, NULL },
		{ "lmtp server", lmtp_server_cases, NULL, NULL },
		{ NULL, NULL, NULL, NULL },
	};
	return test_run_suites("test-lmtp", suites);
}

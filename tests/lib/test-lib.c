/* Unit tests of lib/: buffers, strings, GUIDs. */
#include <stdlib.h>
#include <string.h>

#include "lib/base64.h"
#include "lib/buf.h"
#include "lib/crc32c.h"
#include "lib/guid.h"
#include "lib/str.h"
#include "tests/lib/tests.h"

static void test_buf_append_then_read_returns_same_bytes(void)
{
	struct buf b = BUF_INIT;
	buf_append(&b, "ab\0c", 4);
	buf_appendf(&b, "%d-%s", 42, "x");
	CU_ASSERT_EQUAL(b.len, 8);
	CU_ASSERT(memcmp(b.data, "ab\0c42-x", 8) == 0);
	CU_ASSERT_EQUAL(b.data[b.len], '\0');
	buf_consume(&b, 2);
	CU_ASSERT_EQUAL(buf_avail(&b), 6);
	CU_ASSERT(memcmp(buf_rptr(&b), "\0c42-x", 6) == 0);
	buf_free(&b);
}

static void test_buf_appendf_longer_than_stack_buffer(void)
{
	struct buf b = BUF_INIT;
	char big[1000];
	memset(big, 'z', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	buf_appendf(&b, "<%s>", big);
	CU_ASSERT_EQUAL(b.len, 1001);
	CU_ASSERT_EQUAL(b.data[0], '<');
	CU_ASSERT_EQUAL(b.data[1000], '>');
	buf_free(&b);
}

static void test_buf_getline_waits_for_lf_and_strips_crlf(void)
{
	struct buf b = BUF_INIT;
	size_t len;
	buf_append_str(&b, "one\r");
	CU_ASSERT_PTR_NULL(buf_getline(&b, &len));
	buf_append_str(&b, "\ntwo\nthr");
	char *l = buf_getline(&b, &len);
	CU_ASSERT_PTR_NOT_NULL_FATAL(l);
	CU_ASSERT_STRING_EQUAL(l, "one");
	CU_ASSERT_EQUAL(len, 3);
	l = buf_getline(&b, &len);
	CU_ASSERT_PTR_NOT_NULL_FATAL(l);
	CU_ASSERT_STRING_EQUAL(l, "two");
	CU_ASSERT_PTR_NULL(buf_getline(&b, &len));
	buf_append_str(&b, "ee\n");
	l = buf_getline(&b, &len);
	CU_ASSERT_PTR_NOT_NULL_FATAL(l);
	CU_ASSERT_STRING_EQUAL(l, "three");
	buf_free(&b);
}

static void test_buf_reader_space_is_reclaimed(void)
{
	struct buf b = BUF_INIT;
	size_t len;
	for (int i = 0; i < 10000; i++) {
		buf_append_str(&b, "a line of text\n");
		CU_ASSERT_PTR_NOT_NULL(buf_getline(&b, &len));
	}
	CU_ASSERT(b.cap < 1024);
	buf_free(&b);
}

static void test_buf_be_integers(void)
{
	struct buf b = BUF_INIT;
	buf_append_be32(&b, 0x01020304);
	buf_append_be64(&b, 0x0a0b0c0d0e0f1011ull);
	static const unsigned char want[] = { 1, 2, 3, 4, 10, 11, 12, 13, 14, 15, 16, 17 };
	CU_ASSERT_EQUAL(b.len, sizeof(want));
	CU_ASSERT(memcmp(b.data, want, sizeof(want)) == 0);
	buf_free(&b);
}

static void test_buf_append_quoted_escapes_quote_and_backslash(void)
{
	struct buf b = BUF_INIT;
	buf_append_str(&b, "x ");
	buf_append_quoted(&b, "a\"b\\c", 5);
	buf_append_quoted(&b, "", 0);
	CU_ASSERT_EQUAL(b.len, 2 + 9 + 2);
	CU_ASSERT(memcmp(b.data, "x \"a\\\"b\\\\c\"\"\"", b.len) == 0);
	buf_free(&b);
}

const struct test_case lib_buf_cases[] = {
	{ "append then read returns same bytes", test_buf_append_then_read_returns_same_bytes },
	{ "appendf longer than stack buffer", test_buf_appendf_longer_than_stack_buffer },
	{ "getline waits for LF and strips CRLF", test_buf_getline_waits_for_lf_and_strips_crlf },
	{ "reader space is reclaimed", test_buf_reader_space_is_reclaimed },
	{ "big-endian integers", test_buf_be_integers },
	{ "quoted strings escape '\"' and '\\'", test_buf_append_quoted_escapes_quote_and_backslash },
	{ NULL, NULL },
};

static void test_str_to_u64_rejects_junk_and_overflow(void)
{
	uint64_t v;
	CU_ASSERT_EQUAL(str_to_u64("123", 1000, &v), 0);
	CU_ASSERT_EQUAL(v, 123);
	CU_ASSERT_EQUAL(str_to_u64("", 1000, &v), -1);
	CU_ASSERT_EQUAL(str_to_u64("12a", 1000, &v), -1);
	CU_ASSERT_EQUAL(str_to_u64("-1", 1000, &v), -1);
	CU_ASSERT_EQUAL(str_to_u64("1001", 1000, &v), -1);
	CU_ASSERT_EQUAL(str_to_u64("18446744073709551615", UINT64_MAX, &v), 0);
	CU_ASSERT_EQUAL(v, UINT64_MAX);
	CU_ASSERT_EQUAL(str_to_u64("18446744073709551616", UINT64_MAX, &v), -1);
}

static void test_hex_round_trip(void)
{
	unsigned char in[3] = { 0x00, 0xab, 0xff }, out[3];
	char hex[7];
	hex_encode(in, 3, hex);
	CU_ASSERT_STRING_EQUAL(hex, "00abff");
	CU_ASSERT_EQUAL(hex_decode("00ABff", 6, out, 3), 0);
	CU_ASSERT(memcmp(in, out, 3) == 0);
	CU_ASSERT_EQUAL(hex_decode("00abf", 5, out, 3), -1);
	CU_ASSERT_EQUAL(hex_decode("00abgf", 6, out, 3), -1);
}

static void test_guid_generate_is_random_and_round_trips(void)
{
	struct guid a, b, c;
	char hex[GUID_HEX_SIZE];
	guid_generate(&a);
	guid_generate(&b);
	CU_ASSERT(guid_cmp(&a, &b) != 0);
	CU_ASSERT_FALSE(guid_is_zero(&a));
	guid_to_hex(&a, hex);
	CU_ASSERT_EQUAL(strlen(hex), 32);
	CU_ASSERT_EQUAL(guid_from_hex(hex, &c), 0);
	CU_ASSERT_EQUAL(guid_cmp(&a, &c), 0);
	CU_ASSERT_EQUAL(guid_from_hex("abc", &c), -1);
}

static void test_mem_equal_ct(void)
{
	CU_ASSERT_TRUE(mem_equal_ct("abcd", "abcd", 4));
	CU_ASSERT_FALSE(mem_equal_ct("abcd", "abce", 4));
}

static void test_str_trim_and_prefix(void)
{
	char s[] = "  \tkey = v \r\n";
	CU_ASSERT_STRING_EQUAL(str_trim(s), "key = v");
	CU_ASSERT_TRUE(str_has_prefix("INBOX/x", "INBOX"));
	CU_ASSERT_TRUE(str_has_prefix_ci("inbox/x", "INBOX"));
	CU_ASSERT_FALSE(str_has_prefix("INB", "INBOX"));
}

static void test_crc32c_known_values_and_both_ways_agree(void)
{
	/* The check value of CRC-32C, and RFC 3720's 32 zero bytes. */
	CU_ASSERT_EQUAL(crc32c(0, "123456789", 9), 0xe3069283u);
	CU_ASSERT_EQUAL(crc32c_portable(0, "123456789", 9), 0xe3069283u);
	unsigned char zeros[32] = { 0 };
	CU_ASSERT_EQUAL(crc32c(0, zeros, sizeof(zeros)), 0x8a9136aau);
	CU_ASSERT_EQUAL(crc32c(0, "", 0), 0);
	/* Every length and alignment, in one piece and in two. */
	unsigned char buf[300];
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (unsigned char)(i * 131 + 7);
	bool same = true;
	for (size_t off = 0; off < 9 && same; off++) {
		for (size_t len = 0; off + len <= sizeof(buf) && same; len += 7) {
			uint32_t a = crc32c(0, buf + off, len);
			same = a == crc32c_portable(0, buf + off, len) &&
			       a == crc32c(crc32c(0, buf + off, len / 3), buf + off + len / 3,
					   len - len / 3);
		}
	}
	CU_ASSERT_TRUE(same);
	/* Long buffers take three interleaved runs (stretches of 8 KiB and
	 * 256 bytes): lengths around their multiples, at every alignment. */
	size_t big = 3 * 8192 * 2 + 3 * 256 * 2 + 64;
	unsigned char *b = malloc(big + 8);
	for (size_t i = 0; i < big + 8; i++)
		b[i] = (unsigned char)(i * 2654435761u >> 13);
	const size_t lens[] = { 767, 768, 769, 3 * 8192 - 1, 3 * 8192, 3 * 8192 + 1,
				3 * 8192 + 3 * 256 + 5, 6 * 8192 + 8, big };
	same = true;
	for (size_t off = 0; off < 8; off++)
		for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++)
			same &= crc32c(0, b + off, lens[k]) == crc32c_portable(0, b + off, lens[k]) &&
				crc32c(0x12345678u, b + off, lens[k]) ==
					crc32c_portable(0x12345678u, b + off, lens[k]);
	CU_ASSERT_TRUE(same);
	free(b);
}

static void test_base64_strict(void)
{
	/* in_len and out_len 0: strlen().  out NULL: refused. */
	static const struct {
		const char *in;
		size_t in_len;
		const char *out;
		size_t out_len;
	} cases[] = {
		{ "", 0, "", 0 },
		{ "QUJD", 0, "ABC", 0 },
		{ "QUI=", 0, "AB", 0 },
		{ "QQ==", 0, "A", 0 },
		{ "AGFsaWNlAHNlY3JldA==", 0, "\0alice\0secret", 13 },
		{ "+/+/", 0, "\xfb\xff\xbf", 0 },
		/* RFC 4648 section 10 */
		{ "Zg==", 0, "f", 0 },
		{ "Zm8=", 0, "fo", 0 },
		{ "Zm9v", 0, "foo", 0 },
		{ "Zm9vYg==", 0, "foob", 0 },
		{ "Zm9vYmE=", 0, "fooba", 0 },
		{ "Zm9vYmFy", 0, "foobar", 0 },
		/* malformed */
		{ "Q===", 0, NULL, 0 },
		{ "QQ=A", 0, NULL, 0 },
		{ "A=BC", 0, NULL, 0 },
		{ " QUJ", 0, NULL, 0 },
		{ "QU JD", 0, NULL, 0 },
		{ "QUJD\n", 0, NULL, 0 },
		{ "QUJ", 0, NULL, 0 },
		{ "QUJ*", 0, NULL, 0 },
		{ "QUJD====", 0, NULL, 0 },
		{ "QQ==QUJD", 0, NULL, 0 },
		{ "====", 0, NULL, 0 },
		{ "=", 0, NULL, 0 },
		{ "QU\0D", 4, NULL, 0 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		unsigned char out[32];
		size_t in_len = cases[i].in_len != 0 ? cases[i].in_len : strlen(cases[i].in);
		long n = base64_decode(cases[i].in, in_len, out);
		if (cases[i].out == NULL) {
			CU_ASSERT_EQUAL(n, -1);
		} else {
			size_t want = cases[i].out_len != 0 ? cases[i].out_len : strlen(cases[i].out);
			CU_ASSERT_EQUAL(n, (long)want);
			CU_ASSERT_TRUE(n >= 0 && memcmp(out, cases[i].out, (size_t)n) == 0);
		}
	}
}

const struct test_case lib_str_cases[] = {
	{ "base64: strict decoding", test_base64_strict },
	{ "crc32c: known values, and the fast and portable ways agree",
	  test_crc32c_known_values_and_both_ways_agree },
	{ "str_to_u64 rejects junk and overflow", test_str_to_u64_rejects_junk_and_overflow },
	{ "hex round trip", test_hex_round_trip },
	{ "guid generate is random and round trips", test_guid_generate_is_random_and_round_trips },
	{ "constant-time compare", test_mem_equal_ct },
	{ "trim and prefix", test_str_trim_and_prefix },
	{ NULL, NULL },
};

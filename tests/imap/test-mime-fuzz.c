/* libFuzzer harness for the MIME layer: any bytes parse, and every output
 * function runs on the result without crashing, leaking or reading past the
 * text.  Not built by make (it needs clang); from the top of the tree:
 *   clang -g -O1 -D_GNU_SOURCE -I. -fsanitize=fuzzer,address,undefined \
 *     tests/imap/test-mime-fuzz.c imap/imap-mime*.c imap/imap-sortkeys.c lib/buf.c lib/str.c \
 *     lib/xalloc.c lib/log.c -lunistring -o /tmp/fuzz-mime
 *   /tmp/fuzz-mime -max_total_time=60 -timeout=5 -max_len=4096 CORPUS_DIR */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "imap/imap-mime.h"
#include "imap/imap-sortkeys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* a private copy so ASan catches reads past the end */
	unsigned char *text = malloc(size > 0 ? size : 1);
	if (size > 0)
		memcpy(text, data, size);
	struct imap_mime *m = imap_mime_parse(text, size);
	struct buf out = BUF_INIT;
	static const char *const fields[] = { "subject", "from" };
	static const char *const parts[] = { "", "1", "2", "1.1", "1.2", "2.1", "1.1.1" };

	imap_mime_bodystructure(m, true, &out);
	imap_mime_bodystructure(m, false, &out);
	imap_mime_envelope(m, &out);
	for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
		for (int k = IMAP_SECTION_ALL; k <= IMAP_SECTION_MIME; k++) {
			buf_reset(&out);
			(void)imap_mime_section(m, parts[i], (enum imap_section_kind)k, fields, 2, &out);
		}
	}
	for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
		buf_reset(&out);
		(void)imap_mime_binary(m, parts[i], &out);
	}
	buf_reset(&out);
	(void)imap_mime_binary_to_base64(text, size, &out);
	(void)imap_mime_header_contains(m, NULL, "a");
	(void)imap_mime_header_contains(m, "subject", "");
	(void)imap_mime_body_contains(m, "\xc3\xa9t\xc3\xa9");
	int64_t t;
	int32_t tz;
	(void)imap_mime_date(m, &t, &tz);
	(void)imap_mime_parse_date((const char *)text, size, &t, &tz);
	buf_reset(&out);
	imap_mime_decode_header(text, size, &out);
	/* the input as text in a charset picked by its first byte, among
	 * stateful, multibyte and wide ones: conversion ends, and within the
	 * documented bound */
	static const char *const charsets[] = {
		"ISO-2022-JP", "ISO-2022-JP-3", "ISO-2022-KR", "ISO-2022-CN-EXT", "UTF-7",
		"UTF-16", "UTF-32", "Shift_JIS", "GB18030", "BIG5-HKSCS", "EUC-JP", "EUC-TW",
		"UTF-8", "x-unknown",
	};
	const char *cs = charsets[size > 0 ? text[0] % (sizeof(charsets) / sizeof(charsets[0])) : 0];
	buf_reset(&out);
	(void)imap_mime_charset_to_utf8(cs, strlen(cs), text, size, &out);
	if (out.len > size * 8 + 64)
		abort();
	/* and its start as a charset name */
	(void)imap_mime_charset_known((const char *)text, size < 80 ? size : 80);
	/* sort keys of the message, bounded; the input as a Subject value */
	char *keys[] = {
		imap_sortkey_subject(m), imap_sortkey_address(m, "from", false),
		imap_sortkey_address(m, "to", true), imap_sortkey_address(m, "cc", false),
	};
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		if (strlen(keys[i]) > IMAP_SORTKEY_MAX)
			abort();
		free(keys[i]);
	}
	(void)imap_sent_date(m, 0);
	char *str = malloc(size + 1);
	memcpy(str, text, size);
	str[size] = '\0';
	bool reply;
	free(imap_base_subject(str, &reply));
	free(str);
	buf_free(&out);
	imap_mime_free(&m);
	free(text);
	return 0;
}

/* `starling status [--json]`: the running node's view of itself and the
 * cluster, as `key: value` lines (or one JSON object of them). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static void json_string(const char *s, size_t n)
{
	putchar('"');
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

/* Turns "key: value" lines into a flat JSON object.  Values that are plain
 * decimal numbers stay numbers. */
static void print_json(const char *text)
{
	const char *p = text;
	bool first = true;
	putchar('{');
	while (*p != '\0') {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);
		const char *sep = memchr(p, ':', len);
		if (sep != NULL) {
			const char *v = sep + 1;
			while (v < p + len && *v == ' ')
				v++;
			size_t vlen = (size_t)(p + len - v);
			bool numeric = vlen > 0 && vlen < 19 && strspn(v, "0123456789") >= vlen;
			printf("%s", first ? "" : ",");
			json_string(p, (size_t)(sep - p));
			putchar(':');
			if (numeric)
				fwrite(v, 1, vlen, stdout);
			else
				json_string(v, vlen);
			first = false;
		}
		p += len + (nl ? 1 : 0);
	}
	printf("}\n");
}

int cli_cmd_status(const struct config *cfg, int argc, char **argv)
{
	bool json = false;
	if (argc == 2 && strcmp(argv[1], "--json") == 0)
		json = true;
	else if (argc != 1) {
		cli_error("usage: starling -c FILE status [--json]");
		return 2;
	}
	struct buf out = BUF_INIT;
	char *text = NULL;
	const char *tokens[] = { "STATUS" };
	int ret = 0;
	switch (cli_admin_request(cfg, tokens, 1, NULL, 0, &out, &text, 30000)) {
	case CLI_ADMIN_OK:
		if (json)
			print_json(buf_cstr(&out));
		else
			fwrite(out.data ? (const void *)out.data : "", 1, out.len, stdout);
		break;
	case CLI_ADMIN_UNREACHABLE:
		cli_error("node not running (%s)", text);
		ret = 1;
		break;
	case CLI_ADMIN_NO:
	case CLI_ADMIN_FAILED:
		cli_error("%s", text);
		ret = 1;
		break;
	}
	free(text);
	buf_free(&out);
	return ret;
}

/* LMTP parsing without I/O (see lmtp-parse.h). */
#include "lmtp/lmtp-parse.h"

#include <string.h>
#include <strings.h>

#include "lib/str.h"

static const char *skip_blanks(const char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	return s;
}

/* verb followed by a blank or the end of the line. */
static bool verb_is(const char *line, const char *verb, const char **args_r)
{
	size_t n = strlen(verb);
	if (strncasecmp(line, verb, n) != 0)
		return false;
	if (line[n] != '\0' && line[n] != ' ' && line[n] != '\t')
		return false;
	*args_r = skip_blanks(line + n);
	return true;
}

/* "MAIL" blanks "FROM:" (RFC 5321 wants no blank around the colon, but
 * some clients put one after it). */
static bool verb_colon_is(const char *line, const char *verb, const char *word,
			  const char **args_r)
{
	size_t n = strlen(verb);
	if (strncasecmp(line, verb, n) != 0 || (line[n] != ' ' && line[n] != '\t'))
		return false;
	const char *p = skip_blanks(line + n);
	size_t w = strlen(word);
	if (strncasecmp(p, word, w) != 0 || p[w] != ':')
		return false;
	*args_r = skip_blanks(p + w + 1);
	return true;
}

enum lmtp_cmd lmtp_cmd_parse(const char *line, const char **args_r)
{
	static const struct {
		const char *verb;
		enum lmtp_cmd cmd;
	} plain[] = {
		{ "LHLO", LMTP_CMD_LHLO }, { "DATA", LMTP_CMD_DATA }, { "RSET", LMTP_CMD_RSET },
		{ "NOOP", LMTP_CMD_NOOP }, { "QUIT", LMTP_CMD_QUIT }, { "VRFY", LMTP_CMD_VRFY },
		{ "HELO", LMTP_CMD_HELO }, { "EHLO", LMTP_CMD_HELO }, { "BDAT", LMTP_CMD_BDAT },
		{ "STARTTLS", LMTP_CMD_BDAT }, { "AUTH", LMTP_CMD_BDAT }, { "EXPN", LMTP_CMD_BDAT },
		{ "ETRN", LMTP_CMD_BDAT }, { "TURN", LMTP_CMD_BDAT }, { "HELP", LMTP_CMD_BDAT },
	};
	*args_r = "";
	if (verb_colon_is(line, "MAIL", "FROM", args_r))
		return LMTP_CMD_MAIL;
	if (verb_colon_is(line, "RCPT", "TO", args_r))
		return LMTP_CMD_RCPT;
	for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
		if (verb_is(line, plain[i].verb, args_r))
			return plain[i].cmd;
	}
	return LMTP_CMD_UNKNOWN;
}

int lmtp_parse_path(const char *args, char *addr, size_t size, const char **params_r)
{
	const char *p = args;
	if (*p != '<')
		return -1;
	p++;
	const char *end = strchr(p, '>');
	if (end == NULL)
		return -1;
	/* A source route: "@a,@b:" before the mailbox, to be ignored. */
	if (*p == '@') {
		const char *colon = memchr(p, ':', (size_t)(end - p));
		if (colon == NULL)
			return -1;
		p = colon + 1;
	}
	size_t n = (size_t)(end - p);
	if (n > LMTP_MAX_ADDR || n >= size)
		return -1;
	for (const char *q = p; q < end; q++) {
		unsigned char c = (unsigned char)*q;
		/* Controls, blanks and brackets have no place in an address we
		 * can deliver to; quoted local parts are not supported. */
		if (c <= ' ' || c == 0x7f || c == '<' || c == '"' || c == '\\')
			return -1;
	}
	memcpy(addr, p, n);
	addr[n] = '\0';
	const char *after = end + 1;
	if (*after != '\0' && *after != ' ' && *after != '\t')
		return -1;
	*params_r = skip_blanks(after);
	return 0;
}

int lmtp_parse_mail_params(const char *params, uint64_t *size_r, const char **bad_r)
{
	*size_r = 0;
	const char *p = skip_blanks(params);
	while (*p != '\0') {
		const char *end = p;
		while (*end != '\0' && *end != ' ' && *end != '\t')
			end++;
		size_t n = (size_t)(end - p);
		bool ok = false;
		if (n > 5 && strncasecmp(p, "SIZE=", 5) == 0) {
			ok = str_to_u64_n(p + 5, n - 5, UINT64_MAX, size_r) == 0;
		} else if (n > 5 && strncasecmp(p, "BODY=", 5) == 0) {
			ok = (n - 5 == 4 && strncasecmp(p + 5, "7BIT", 4) == 0) ||
			     (n - 5 == 8 && strncasecmp(p + 5, "8BITMIME", 8) == 0);
		}
		if (!ok) {
			*bad_r = p;
			return -1;
		}
		p = skip_blanks(end);
	}
	return 0;
}

static int copy_part(char *dst, size_t size, const char *p, size_t n)
{
	if (n >= size)
		return -1;
	memcpy(dst, p, n);
	dst[n] = '\0';
	return 0;
}

int lmtp_split_rcpt(const char *addr, char *user, char *detail, char *domain, size_t size)
{
	const char *at = strrchr(addr, '@');
	size_t local_len = at != NULL ? (size_t)(at - addr) : strlen(addr);
	const char *plus = memchr(addr, '+', local_len);
	size_t user_len = plus != NULL ? (size_t)(plus - addr) : local_len;
	if (user_len == 0)
		return -1;
	if (copy_part(user, size, addr, user_len) < 0)
		return -1;
	if (plus != NULL) {
		if (copy_part(detail, size, plus + 1, local_len - user_len - 1) < 0)
			return -1;
	} else {
		detail[0] = '\0';
	}
	if (at != NULL)
		return copy_part(domain, size, at + 1, strlen(at + 1));
	domain[0] = '\0';
	return 0;
}

void lmtp_data_init(struct lmtp_data *d, struct buf *out, uint64_t max)
{
	memset(d, 0, sizeof(*d));
	d->out = out;
	d->max = max;
	d->line_start = true;
}

static void data_store(struct lmtp_data *d, const void *p, size_t n)
{
	d->size += n;
	if (d->too_big)
		return;
	if (d->size > d->max) {
		d->too_big = true;
		/* What was kept is of no use and may be large. */
		buf_free(d->out);
		return;
	}
	buf_append(d->out, p, n);
}

int lmtp_data_feed(struct lmtp_data *d, const unsigned char *p, size_t n, size_t *consumed_r)
{
	size_t pos = 0;
	while (pos < n) {
		const unsigned char *line = p + pos;
		size_t avail = n - pos;
		const unsigned char *lf = memchr(line, '\n', avail);
		if (lf == NULL) {
			/* No line end yet: wait for it unless the piece is long
			 * (it can then be neither the terminator nor end in a
			 * CR of a CRLF, except its last byte, kept back). */
			if (avail < LMTP_MAX_LINE)
				break;
			size_t take = avail - 1;
			if (line[take] != '\r')
				take = avail;
			const unsigned char *s = line;
			size_t len = take;
			if (d->line_start && s[0] == '.') {
				s++;
				len--;
			}
			data_store(d, s, len);
			d->line_start = false;
			pos += take;
			continue;
		}
		size_t len = (size_t)(lf - line);
		size_t next = pos + len + 1;
		if (len > 0 && line[len - 1] == '\r')
			len--;
		const unsigned char *s = line;
		if (d->line_start && len >= 1 && s[0] == '.') {
			if (len == 1) {
				*consumed_r = next;
				return 1;
			}
			s++;
			len--;
		}
		data_store(d, s, len);
		data_store(d, "\r\n", 2);
		d->line_start = true;
		pos = next;
	}
	*consumed_r = pos;
	return 0;
}

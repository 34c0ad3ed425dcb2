/* Logging: see log.h. */
#include "lib/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static unsigned log_node;
static enum log_level log_level = LOG_LEVEL_INFO;

static const char *const level_names[] = {
	[LOG_LEVEL_ERROR] = "error",
	[LOG_LEVEL_WARN] = "warn",
	[LOG_LEVEL_INFO] = "info",
	[LOG_LEVEL_DEBUG] = "debug",
};

void log_init(unsigned node_id, enum log_level level)
{
	log_node = node_id;
	log_level = level;
}

void log_set_level(enum log_level level) { log_level = level; }
enum log_level log_get_level(void) { return log_level; }
bool log_enabled(enum log_level level) { return level <= log_level; }

int log_level_parse(const char *s, enum log_level *level_r)
{
	for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
		if (strcmp(s, level_names[i]) == 0) {
			*level_r = (enum log_level)i;
			return 0;
		}
	}
	return -1;
}

/* Length of the UTF-8 sequence at s if it is valid (shortest form, no
 * surrogates, at most U+10FFFF), else 0; *cp_r gets the code point. */
static size_t utf8_char(const unsigned char *s, uint32_t *cp_r)
{
	size_t len;
	uint32_t cp, min;
	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		len = 2; cp = s[0] & 0x1f; min = 0x80;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		len = 3; cp = s[0] & 0x0f; min = 0x800;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		len = 4; cp = s[0] & 0x07; min = 0x10000;
	} else {
		return 0;
	}
	/* A NUL ends the string, and it is not a continuation byte: no overread. */
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	*cp_r = cp;
	return len;
}

static bool needs_quotes(const char *s)
{
	if (*s == '\0')
		return true;
	for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
		if (*p <= ' ' || *p >= 0x7f || *p == '"' || *p == '=' || *p == '\\')
			return true;
	}
	return false;
}

size_t log_format_value(char *dst, size_t size, const char *src, bool *truncated_r)
{
	size_t n = 0;
	*truncated_r = false;
	if (size < 3) {
		*truncated_r = *src != '\0';
		if (size > 0)
			dst[0] = '\0';
		return 0;
	}
	if (!needs_quotes(src)) {
		size_t len = strlen(src);
		if (len >= size) {
			len = size - 1;
			*truncated_r = true;
		}
		memcpy(dst, src, len);
		dst[len] = '\0';
		return len;
	}
	/* Room is kept for the closing quote and the NUL, so a cut value is
	 * still one well-formed quoted string and never swallows the next field. */
	size_t room = size - 2;
	dst[n++] = '"';
	const unsigned char *p = (const unsigned char *)src;
	while (*p != '\0') {
		char esc[8];
		size_t elen = 0, adv = 1;
		uint32_t cp = 0;
		switch (*p) {
		case '"': elen = (size_t)snprintf(esc, sizeof(esc), "\\\""); break;
		case '\\': elen = (size_t)snprintf(esc, sizeof(esc), "\\\\"); break;
		case '\n': elen = (size_t)snprintf(esc, sizeof(esc), "\\n"); break;
		case '\r': elen = (size_t)snprintf(esc, sizeof(esc), "\\r"); break;
		case '\t': elen = (size_t)snprintf(esc, sizeof(esc), "\\t"); break;
		default:
			if (*p < 0x20 || *p == 0x7f) {
				elen = (size_t)snprintf(esc, sizeof(esc), "\\u%04x", *p);
			} else if (*p < 0x80) {
				esc[0] = (char)*p;
				elen = 1;
			} else if ((adv = utf8_char(p, &cp)) == 0) {
				/* Not UTF-8: the byte itself, as Go and C write it. */
				elen = (size_t)snprintf(esc, sizeof(esc), "\\x%02x", *p);
				adv = 1;
			} else if (cp <= 0x9f || cp == 0x2028 || cp == 0x2029) {
				/* C1 controls (NEL) and the Unicode line and paragraph
				 * separators end a line for some log viewers. */
				elen = (size_t)snprintf(esc, sizeof(esc), "\\u%04x", (unsigned)cp);
			} else {
				memcpy(esc, p, adv);
				elen = adv;
			}
		}
		if (n + elen > room) {
			*truncated_r = true;
			break;
		}
		memcpy(dst + n, esc, elen);
		n += elen;
		p += adv;
	}
	dst[n++] = '"';
	dst[n] = '\0';
	return n;
}

/* The longest line written; a longer message is cut (and marked so). */
#define LOG_LINE_MAX 4096

static void log_vwrite(enum log_level level, int errnum, const char *fmt, va_list ap)
{
	struct timespec ts;
	struct tm tm;
	char msg[2048];
	char line[LOG_LINE_MAX];
	bool cut, errcut;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	int m = vsnprintf(msg, sizeof(msg), fmt, ap);
	bool msg_cut = m >= (int)sizeof(msg);
	if (m < 0)
		msg[0] = '\0';
	int n = snprintf(line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			 tm.tm_sec, ts.tv_nsec / 1000000, level_names[level]);
	size_t len = n > 0 && (size_t)n < sizeof(line) ? (size_t)n : 0;
	if (log_node != 0)
		len += (size_t)snprintf(line + len, sizeof(line) - len, " node=%u", log_node);
	/* strerror's text is short; keep room for it and the end of the line. */
	char err[160];
	err[0] = '\0';
	if (errnum != 0) {
		memcpy(err, " err=", 5);
		log_format_value(err + 5, sizeof(err) - 5, strerror(errnum), &errcut);
	}
	static const char trunc_field[] = " truncated=true";
	size_t tail = strlen(err) + sizeof(trunc_field) + 1;
	memcpy(line + len, " msg=", 5);
	len += 5;
	len += log_format_value(line + len, sizeof(line) - len - tail, msg, &cut);
	memcpy(line + len, err, strlen(err));
	len += strlen(err);
	if (cut || msg_cut) {
		memcpy(line + len, trunc_field, sizeof(trunc_field) - 1);
		len += sizeof(trunc_field) - 1;
	}
	/* One write per line so lines from concurrent processes don't mix. */
	line[len++] = '\n';
	fwrite(line, 1, len, stderr);
	fflush(stderr);
}

#define LOG_BODY(level, errnum) do { \
	if (!log_enabled(level)) return; \
	va_list ap; va_start(ap, fmt); \
	log_vwrite(level, errnum, fmt, ap); \
	va_end(ap); \
} while (0)

void log_debug(const char *fmt, ...) { LOG_BODY(LOG_LEVEL_DEBUG, 0); }
void log_info(const char *fmt, ...) { LOG_BODY(LOG_LEVEL_INFO, 0); }
void log_warnx(const char *fmt, ...) { LOG_BODY(LOG_LEVEL_WARN, 0); }
void log_errorx(const char *fmt, ...) { LOG_BODY(LOG_LEVEL_ERROR, 0); }
void log_warn(const char *fmt, ...) { int e = errno; LOG_BODY(LOG_LEVEL_WARN, e); }
void log_error(const char *fmt, ...) { int e = errno; LOG_BODY(LOG_LEVEL_ERROR, e); }

void fatal(const char *fmt, ...)
{
	int e = errno;
	va_list ap;
	va_start(ap, fmt);
	log_vwrite(LOG_LEVEL_ERROR, e, fmt, ap);
	va_end(ap);
	exit(1);
}

void fatalx(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vwrite(LOG_LEVEL_ERROR, 0, fmt, ap);
	va_end(ap);
	exit(1);
}

/* Logging: see log.h. */
#include "lib/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static char log_ident[64] = "starling";
static enum log_level log_level = LOG_LEVEL_INFO;

static const char *const level_names[] = {
	[LOG_LEVEL_ERROR] = "error",
	[LOG_LEVEL_WARN] = "warn",
	[LOG_LEVEL_INFO] = "info",
	[LOG_LEVEL_DEBUG] = "debug",
};

void log_init(const char *ident, enum log_level level)
{
	snprintf(log_ident, sizeof(log_ident), "%s", ident);
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

static void log_vwrite(enum log_level level, int errnum, const char *fmt, va_list ap)
{
	struct timespec ts;
	struct tm tm;
	char line[2048];
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s: ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			 tm.tm_sec, ts.tv_nsec / 1000000, level_names[level], log_ident);
	if (n < 0 || (size_t)n >= sizeof(line))
		n = 0;
	int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	if (m > 0)
		n = (size_t)(n + m) >= sizeof(line) ? (int)sizeof(line) - 1 : n + m;
	if (errnum != 0)
		n += snprintf(line + n, sizeof(line) - (size_t)n, ": %s", strerror(errnum));
	if ((size_t)n >= sizeof(line) - 1)
		n = (int)sizeof(line) - 2;
	/* One write per line so lines from concurrent processes don't mix. */
	line[n++] = '\n';
	fwrite(line, 1, (size_t)n, stderr);
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

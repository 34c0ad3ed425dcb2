/* Logging to stderr, one event per line in logfmt (key=value fields):
 *
 *   ts=2026-11-24T07:40:00.123Z level=info node=3 msg="peer 2: link up"
 *
 * node is there once log_init() knows it.  log_warn()/log_error() add
 * err="strerror(errno)"; the x variants don't.  A message that was cut to fit
 * the line ends with truncated=true.  Messages carry strings from peers and
 * clients, so a value is quoted when it holds a space, '=', '"', '\', a
 * control or a non-ASCII byte, and inside quotes '"' '\' newline CR tab are
 * escaped as in C, other controls (C0, DEL, C1, U+2028, U+2029) as \uXXXX and
 * bytes that are not UTF-8 as \xHH (Go's strconv.Unquote reads them all back):
 * no string can end a line or forge a field.
 * fatal()/fatalx() are for start-up and configuration errors only: a bad
 * packet from the network must never end the process.  Never log passwords. */
#ifndef LIB_LOG_H
#define LIB_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum log_level {
	LOG_LEVEL_ERROR,
	LOG_LEVEL_WARN,
	LOG_LEVEL_INFO,
	LOG_LEVEL_DEBUG,
};

/* node_id goes into every line as node=N; 0 (not known yet) leaves it out. */
void log_init(unsigned node_id, enum log_level level);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
bool log_enabled(enum log_level level);
/* Parses "error", "warn", "info" or "debug".  Returns 0 or -1. */
int log_level_parse(const char *s, enum log_level *level_r);

/* Writes src into dst (size bytes, NUL-terminated) as a logfmt value,
 * quoted and escaped when needed (see above).  A value that does not fit is
 * cut between whole characters, still closed by its quote, and
 * *truncated_r is set.  Returns the length written. */
size_t log_format_value(char *dst, size_t size, const char *src, bool *truncated_r);

#define LOG_PRINTF __attribute__((format(printf, 1, 2)))
void log_debug(const char *fmt, ...) LOG_PRINTF;
void log_info(const char *fmt, ...) LOG_PRINTF;
void log_warn(const char *fmt, ...) LOG_PRINTF;
void log_warnx(const char *fmt, ...) LOG_PRINTF;
void log_error(const char *fmt, ...) LOG_PRINTF;
void log_errorx(const char *fmt, ...) LOG_PRINTF;
void fatal(const char *fmt, ...) LOG_PRINTF __attribute__((noreturn));
void fatalx(const char *fmt, ...) LOG_PRINTF __attribute__((noreturn));

#endif

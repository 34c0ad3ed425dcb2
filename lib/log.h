/* Logging to stderr with levels and UTC timestamps.
 *
 * Lines look like "2026-11-24T07:40:00.123Z info starlingd[3]: message".
 * log_warn()/log_error() append ": strerror(errno)"; the x variants don't.
 * fatal()/fatalx() are for start-up and configuration errors only: a bad
 * packet from the network must never end the process.  Never log passwords. */
#ifndef LIB_LOG_H
#define LIB_LOG_H

#include <stdbool.h>

enum log_level {
	LOG_LEVEL_ERROR,
	LOG_LEVEL_WARN,
	LOG_LEVEL_INFO,
	LOG_LEVEL_DEBUG,
};

/* ident names the process in every line, e.g. "starlingd[2]"; it is copied. */
void log_init(const char *ident, enum log_level level);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
bool log_enabled(enum log_level level);
/* Parses "error", "warn", "info" or "debug".  Returns 0 or -1. */
int log_level_parse(const char *s, enum log_level *level_r);

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

/* Whole files: read under a size bound, replaced atomically, directories
 * made with their parents, and secrets that only their owner may read.
 *
 * Errors come back as one line in *error_r (caller frees) that names the
 * file, so a caller can print it as it is. */
#ifndef LIB_FILE_H
#define LIB_FILE_H

#include <stddef.h>
#include <sys/types.h>

struct buf;

/* Appends the regular file at path, at most max bytes, to out. */
int file_read(const char *path, size_t max, struct buf *out, char **error_r);

/* Appends what the open fd holds up to its end, at most max bytes, to out:
 * for what is not a regular file or is already open (stdin, a pipe, a file
 * opened with O_NOFOLLOW).  name stands for it in errors.  -1 with errno
 * set: EFBIG when there was more than max, so a caller can tell a refusal
 * from a failure. */
int file_read_fd(int fd, const char *name, size_t max, struct buf *out, char **error_r);

/* Replaces path with data: a temporary file beside it is written, synced
 * and renamed over path, then the directory is synced, so a crash leaves
 * the old file or the new one, never a torn one.  The new file gets mode. */
int file_write_atomic(const char *path, const void *data, size_t len, mode_t mode,
		      char **error_r);

/* mkdir -p: what it creates gets mode.  0 or -1 with errno set. */
int file_mkdir_p(const char *path, mode_t mode);

/* Reads a secret key file: a regular file that others can neither read
 * nor write, of min to max bytes once one trailing LF or CRLF is dropped.
 * what names it in errors (a config key).  *secret_r is malloc()ed; free
 * it after OPENSSL_cleanse(). */
int file_read_secret(const char *what, const char *path, size_t min, size_t max,
		     unsigned char **secret_r, size_t *len_r, char **error_r);

#endif

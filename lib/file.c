#include "lib/file.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <openssl/crypto.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/xalloc.h"

#define CHUNK 65536

/* Opens path for reading if it is a regular file; -1 with *error_r. */
static int open_regular(const char *what, const char *path, struct stat *st, char **error_r)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0 || fstat(fd, st) < 0) {
		*error_r = xasprintf("%s%s: %s", what, path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (!S_ISREG(st->st_mode)) {
		*error_r = xasprintf("%s%s is not a regular file", what, path);
		close(fd);
		return -1;
	}
	return fd;
}

/* Reads fd to its end into out, failing past max bytes (the file may grow
 * while it is read, so the size fstat() gave is not trusted). */
static int read_fd(int fd, const char *what, const char *path, size_t max, struct buf *out,
		   char **error_r)
{
	size_t start = out->len;
	for (;;) {
		unsigned char *dst = buf_reserve(out, CHUNK);
		ssize_t n = read(fd, dst, CHUNK);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int saved = errno;
			*error_r = xasprintf("%s%s: %s", what, path, strerror(errno));
			errno = saved;
			return -1;
		}
		/* Committing even nothing keeps the text NUL-terminated:
		 * buf_reserve() left garbage there. */
		buf_commit(out, (size_t)n);
		if (n == 0)
			return 0;
		if (out->len - start > max) {
			*error_r = xasprintf("%s%s is larger than %zu bytes", what, path, max);
			errno = EFBIG;
			return -1;
		}
	}
}

int file_read_fd(int fd, const char *name, size_t max, struct buf *out, char **error_r)
{
	return read_fd(fd, "", name, max, out, error_r);
}

int file_read(const char *path, size_t max, struct buf *out, char **error_r)
{
	struct stat st;
	int fd = open_regular("", path, &st, error_r);
	if (fd < 0)
		return -1;
	int ret = 0;
	if ((uint64_t)st.st_size > max) {
		*error_r = xasprintf("%s is larger than %zu bytes", path, max);
		errno = EFBIG;
		ret = -1;
	} else {
		ret = read_fd(fd, "", path, max, out, error_r);
	}
	close(fd);
	return ret;
}

static int write_all(int fd, const unsigned char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int file_write_atomic(const char *path, const void *data, size_t len, mode_t mode,
		      char **error_r)
{
	/* The pid keeps two writers of one file from sharing a temporary. */
	char *tmp = xasprintf("%s.tmp.%ld", path, (long)getpid());
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (fd < 0 || write_all(fd, data, len) < 0 || fsync(fd) < 0)
		goto fail;
	int r = close(fd);
	fd = -1;
	if (r < 0 || rename(tmp, path) < 0)
		goto fail;
	char *dircopy = xstrdup(path);
	int dfd = open(dirname(dircopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(dircopy);
	if (dfd >= 0) {
		/* The rename is done; a directory that cannot be synced
		 * (some filesystems refuse) leaves it as durable as it gets. */
		(void)fsync(dfd);
		close(dfd);
	}
	free(tmp);
	return 0;
fail:
	*error_r = xasprintf("writing %s: %s", path, strerror(errno));
	if (fd >= 0)
		close(fd);
	unlink(tmp);
	free(tmp);
	return -1;
}

int file_mkdir_p(const char *path, mode_t mode)
{
	char *p = xstrdup(path);
	int ret = 0;
	for (char *s = p + 1; *s != '\0' && ret == 0; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(p, mode) < 0 && errno != EEXIST)
			ret = -1;
		*s = '/';
	}
	if (ret == 0 && mkdir(p, mode) < 0 && errno != EEXIST)
		ret = -1;
	int saved = errno;
	free(p);
	errno = saved;
	return ret;
}

int file_read_secret(const char *what, const char *path, size_t min, size_t max,
		     unsigned char **secret_r, size_t *len_r, char **error_r)
{
	char *prefix = xasprintf("%s ", what);
	struct stat st;
	struct buf b = BUF_INIT;
	int ret = -1;
	int fd = open_regular(prefix, path, &st, error_r);
	if (fd < 0)
		goto out;
	if ((st.st_mode & (S_IROTH | S_IWOTH)) != 0) {
		*error_r = xasprintf("%s %s is accessible by everyone (run chmod 600 on it)", what,
				     path);
		goto out;
	}
	/* Room for every read read_fd makes, so the buffer never moves and
	 * leaves a copy of the secret behind in freed memory. */
	(void)buf_reserve(&b, max + 2 + CHUNK);
	if (read_fd(fd, prefix, path, max + 2, &b, error_r) < 0)
		goto out;
	size_t len = b.len;
	if (len > 0 && b.data[len - 1] == '\n') {
		len--;
		if (len > 0 && b.data[len - 1] == '\r')
			len--;
	}
	if (len == 0) {
		*error_r = xasprintf("%s %s is empty", what, path);
	} else if (len > max) {
		*error_r = xasprintf("%s %s is larger than %zu bytes", what, path, max);
	} else if (len < min) {
		*error_r = xasprintf("%s %s holds %zu bytes, at least %zu are needed "
				     "(e.g. openssl rand -hex 32)", what, path, len, min);
	} else {
		*secret_r = xmalloc(len);
		memcpy(*secret_r, b.data, len);
		*len_r = len;
		ret = 0;
	}
out:
	if (fd >= 0)
		close(fd);
	if (b.data != NULL)
		OPENSSL_cleanse(b.data, b.cap);
	buf_free(&b);
	free(prefix);
	return ret;
}

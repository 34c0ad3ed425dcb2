/* Client side of the admin socket: one request, DATA chunks, a final line.
 * The protocol is described at the top of replicator/repl-admin.c. */
#include "cli/cli.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "lib/str.h"
#include "lib/xalloc.h"

#define ADMIN_MAX_LINE 8192
/* A dump of a large user can be big, but not unbounded. */
#define ADMIN_MAX_DATA (4ull * 1024 * 1024 * 1024)

uint64_t cli_progress_interval_ms(void)
{
	const char *env = getenv("STARLING_PROGRESS_INTERVAL");
	if (env != NULL) {
		char *end;
		double v = strtod(env, &end);
		if (end != env && *end == '\0' && v >= 0.05 && v <= 3600)
			return (uint64_t)(v * 1000);
	}
	return 5000;
}

char *cli_admin_socket_path(const struct config *cfg)
{
	return xasprintf("%s/admin.sock", cfg->data_dir);
}

static void encode_token(struct buf *out, const char *tok)
{
	for (const unsigned char *p = (const unsigned char *)tok; *p != '\0'; p++) {
		if (*p < 0x21 || *p > 0x7e || *p == '%')
			buf_appendf(out, "%%%02X", *p);
		else
			buf_append_byte(out, *p);
	}
}

static int write_all(int fd, const void *p, size_t n)
{
	const unsigned char *c = p;
	while (n > 0) {
		ssize_t w = write(fd, c, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Reads more bytes into in; 0 on EOF, -1 on error or timeout. */
static ssize_t read_more(int fd, struct buf *in, int timeout_ms)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	int r;
	do {
		r = poll(&pfd, 1, timeout_ms);
	} while (r < 0 && errno == EINTR);
	if (r <= 0) {
		if (r == 0)
			errno = ETIMEDOUT;
		return -1;
	}
	unsigned char *dst = buf_reserve(in, 65536);
	ssize_t n;
	do {
		n = read(fd, dst, 65536);
	} while (n < 0 && errno == EINTR);
	if (n > 0)
		buf_commit(in, (size_t)n);
	return n;
}

enum cli_admin_result cli_admin_request(const struct config *cfg, const char *const *tokens,
					size_t token_count, const void *body, size_t body_len,
					struct buf *data_r, char **text_r, int timeout_ms)
{
	*text_r = NULL;
	char *path = cli_admin_socket_path(cfg);
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sun.sun_path)) {
		*text_r = xasprintf("%s: path too long for a UNIX socket", path);
		free(path);
		return CLI_ADMIN_FAILED;
	}
	strcpy(sun.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		*text_r = xasprintf("socket: %s", strerror(errno));
		free(path);
		return CLI_ADMIN_FAILED;
	}
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		int e = errno;
		close(fd);
		*text_r = xasprintf("%s: %s", path, strerror(e));
		free(path);
		return (e == ENOENT || e == ECONNREFUSED) ? CLI_ADMIN_UNREACHABLE : CLI_ADMIN_FAILED;
	}
	free(path);

	struct buf req = BUF_INIT, in = BUF_INIT;
	for (size_t i = 0; i < token_count; i++) {
		if (i > 0)
			buf_append_byte(&req, ' ');
		encode_token(&req, tokens[i]);
	}
	buf_append_byte(&req, '\n');
	enum cli_admin_result res = CLI_ADMIN_FAILED;
	/* The node may refuse a request (unknown user) before reading its body
	 * and close: a failed write is then not the error to report, the
	 * node's answer is, so read it anyway. */
	int write_errno = 0;
	if (write_all(fd, req.data, req.len) < 0 || (body_len > 0 && write_all(fd, body, body_len) < 0))
		write_errno = errno;
	uint64_t data_total = 0;
	for (;;) {
		size_t len;
		char *line = buf_getline(&in, &len);
		if (line == NULL) {
			if (buf_avail(&in) > ADMIN_MAX_LINE) {
				*text_r = xstrdup("admin socket: reply line too long");
				goto out;
			}
			ssize_t n = read_more(fd, &in, timeout_ms);
			if (n <= 0) {
				if (write_errno != 0)
					*text_r = xasprintf("admin socket: write failed: %s", strerror(write_errno));
				else if (n == 0)
					*text_r = xstrdup("admin socket: node closed the connection early");
				else
					*text_r = xasprintf("admin socket: %s", strerror(errno));
				goto out;
			}
			continue;
		}
		if (str_has_prefix(line, "DATA ")) {
			uint64_t size;
			if (str_to_u64(line + 5, ADMIN_MAX_DATA - data_total, &size) < 0) {
				*text_r = xstrdup("admin socket: bad DATA line");
				goto out;
			}
			data_total += size;
			while (buf_avail(&in) < size) {
				ssize_t n = read_more(fd, &in, timeout_ms);
				if (n <= 0) {
					*text_r = xstrdup("admin socket: truncated DATA");
					goto out;
				}
			}
			if (data_r != NULL)
				buf_append(data_r, buf_rptr(&in), (size_t)size);
			buf_consume(&in, (size_t)size);
		} else if (str_has_prefix(line, "PROGRESS ")) {
			/* Long work tells how far it is; stdout keeps the report. */
			for (char *p = line + 9; *p != '\0'; p++)
				if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f)
					*p = '?';
			fprintf(stderr, "progress: %s\n", line + 9);
			fflush(stderr);
		} else if (strcmp(line, "OK") == 0 || str_has_prefix(line, "OK ")) {
			*text_r = xstrdup(line[2] ? line + 3 : "");
			res = CLI_ADMIN_OK;
			goto out;
		} else if (str_has_prefix(line, "NO ")) {
			*text_r = xstrdup(line + 3);
			res = CLI_ADMIN_NO;
			goto out;
		} else {
			*text_r = xstrdup("admin socket: unexpected reply");
			goto out;
		}
	}
out:
	close(fd);
	buf_free(&req);
	buf_free(&in);
	return res;
}

int cli_admin_print(const struct config *cfg, const char *what, const char *const *tokens,
		    size_t token_count, int timeout_ms)
{
	struct buf out = BUF_INIT;
	char *text = NULL;
	enum cli_admin_result r = cli_admin_request(cfg, tokens, token_count, NULL, 0, &out, &text,
						     timeout_ms);
	if (r == CLI_ADMIN_OK || r == CLI_ADMIN_NO) {
		fwrite(out.data ? (const void *)out.data : "", 1, out.len, stdout);
		fflush(stdout);
	}
	if (r == CLI_ADMIN_UNREACHABLE)
		cli_error("node not running (%s)", text);
	else if (r == CLI_ADMIN_NO)
		cli_error("%s: %s", what, text);
	else if (r == CLI_ADMIN_FAILED)
		cli_error("%s", text);
	free(text);
	buf_free(&out);
	return r == CLI_ADMIN_OK ? 0 : 1;
}

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/file.h"
#include "lib/xalloc.h"
#include "tests/lib/tests.h"

static void put(const char *path, const char *text, mode_t mode)
{
	FILE *f = fopen(path, "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fputs(text, f);
	fclose(f);
	chmod(path, mode);
}

/* 1 when err names what and contains want; the error is freed. */
static int says(char *err, const char *path, const char *want)
{
	int ok = err != NULL && strstr(err, path) != NULL && strstr(err, want) != NULL;
	if (!ok)
		fprintf(stderr, "\n  error %s lacks %s or %s\n", err ? err : "(none)", path, want);
	free(err);
	return ok;
}

static void test_read_is_bounded(void)
{
	char *dir = test_mkdtemp();
	char *path = xasprintf("%s/f", dir);
	struct buf b = BUF_INIT;
	char *err = NULL;
	put(path, "0123456789", 0600);
	CU_ASSERT_EQUAL(file_read(path, 10, &b, &err), 0);
	CU_ASSERT_EQUAL(b.len, 10);
	CU_ASSERT_EQUAL(memcmp(b.data, "0123456789", 10), 0);
	buf_reset(&b);
	CU_ASSERT_EQUAL(file_read(path, 9, &b, &err), -1);
	CU_ASSERT_TRUE(says(err, path, "larger than 9 bytes"));
	err = NULL;
	/* An empty file is an empty string. */
	struct buf e = BUF_INIT;
	put(path, "", 0600);
	CU_ASSERT_EQUAL(file_read(path, 9, &e, &err), 0);
	CU_ASSERT_EQUAL(e.len, 0);
	CU_ASSERT_STRING_EQUAL(buf_cstr(&e), "");
	buf_free(&e);
	put(path, "0123456789", 0600);
	CU_ASSERT_EQUAL(file_read(path, 9, &b, &err), -1);
	CU_ASSERT_TRUE(says(err, path, "larger than 9 bytes"));
	err = NULL;
	CU_ASSERT_EQUAL(file_read(dir, 100, &b, &err), -1);
	CU_ASSERT_TRUE(says(err, dir, "not a regular file"));
	err = NULL;
	char *missing = xasprintf("%s/missing", dir);
	CU_ASSERT_EQUAL(file_read(missing, 100, &b, &err), -1);
	CU_ASSERT_TRUE(says(err, missing, "No such file"));
	buf_free(&b);
	free(missing);
	free(path);
	test_rmtree(dir);
	free(dir);
}

/* A pipe holding text, its writing end closed: what file_read refuses. */
static int pipe_with(const char *text)
{
	int p[2];
	CU_ASSERT_EQUAL_FATAL(pipe(p), 0);
	CU_ASSERT_EQUAL(write(p[1], text, strlen(text)), (ssize_t)strlen(text));
	close(p[1]);
	return p[0];
}

static void test_read_fd_is_bounded(void)
{
	struct buf b = BUF_INIT;
	char *err = NULL;
	int fd = pipe_with("0123456789");
	CU_ASSERT_EQUAL(file_read_fd(fd, "the pipe", 10, &b, &err), 0);
	CU_ASSERT_PTR_NULL(err);
	CU_ASSERT_EQUAL(b.len, 10);
	CU_ASSERT_STRING_EQUAL(buf_cstr(&b), "0123456789");
	close(fd);
	buf_reset(&b);
	fd = pipe_with("0123456789");
	errno = 0;
	CU_ASSERT_EQUAL(file_read_fd(fd, "the pipe", 9, &b, &err), -1);
	CU_ASSERT_EQUAL(errno, EFBIG);
	CU_ASSERT_TRUE(says(err, "the pipe", "larger than 9 bytes"));
	err = NULL;
	close(fd);
	fd = pipe_with("");
	buf_reset(&b);
	CU_ASSERT_EQUAL(file_read_fd(fd, "the pipe", 9, &b, &err), 0);
	CU_ASSERT_EQUAL(b.len, 0);
	close(fd);
	/* A failed read is not a refusal: errno says which. */
	errno = 0;
	CU_ASSERT_EQUAL(file_read_fd(fd, "the pipe", 9, &b, &err), -1);
	CU_ASSERT_EQUAL(errno, EBADF);
	CU_ASSERT_TRUE(says(err, "the pipe", "Bad file descriptor"));
	buf_free(&b);
}

static size_t entries(const char *dir)
{
	size_t n = 0;
	DIR *d = opendir(dir);
	for (struct dirent *de; d != NULL && (de = readdir(d)) != NULL;)
		n += de->d_name[0] != '.';
	if (d != NULL)
		closedir(d);
	return n;
}

static void test_write_atomic_replaces_and_leaves_nothing_else(void)
{
	char *dir = test_mkdtemp();
	char *path = xasprintf("%s/state", dir);
	char *err = NULL;
	struct buf b = BUF_INIT;
	CU_ASSERT_EQUAL(file_write_atomic(path, "first", 5, 0640, &err), 0);
	CU_ASSERT_EQUAL(file_write_atomic(path, "second", 6, 0640, &err), 0);
	CU_ASSERT_EQUAL(file_read(path, 100, &b, &err), 0);
	CU_ASSERT_EQUAL(b.len, 6);
	CU_ASSERT_EQUAL(memcmp(b.data, "second", 6), 0);
	struct stat st;
	CU_ASSERT_EQUAL(stat(path, &st), 0);
	CU_ASSERT_EQUAL(st.st_mode & 0777, 0640);
	CU_ASSERT_EQUAL(entries(dir), 1); /* no temporary left behind */
	/* A directory that does not exist: an error naming the file, and
	 * still nothing else written. */
	char *bad = xasprintf("%s/no/such/dir", dir);
	CU_ASSERT_EQUAL(file_write_atomic(bad, "x", 1, 0600, &err), -1);
	CU_ASSERT_TRUE(says(err, bad, "No such file"));
	CU_ASSERT_EQUAL(entries(dir), 1);
	/* A rename that fails once the temporary is written and synced (a
	 * directory is in the way) takes the temporary away with it. */
	char *in_way = xasprintf("%s/in-way", dir);
	char *inside = xasprintf("%s/in-way/x", dir);
	CU_ASSERT_EQUAL(mkdir(in_way, 0700), 0);
	put(inside, "x", 0600);
	CU_ASSERT_EQUAL(file_write_atomic(in_way, "x", 1, 0600, &err), -1);
	CU_ASSERT_TRUE(says(err, in_way, "writing"));
	CU_ASSERT_EQUAL(entries(dir), 2);
	CU_ASSERT_EQUAL(entries(in_way), 1);
	free(inside);
	free(in_way);
	buf_free(&b);
	free(bad);
	free(path);
	test_rmtree(dir);
	free(dir);
}

static void test_mkdir_p(void)
{
	char *dir = test_mkdtemp();
	char *deep = xasprintf("%s/a/b/c", dir);
	struct stat st;
	CU_ASSERT_EQUAL(file_mkdir_p(deep, 0700), 0);
	CU_ASSERT_EQUAL(stat(deep, &st), 0);
	CU_ASSERT_TRUE(S_ISDIR(st.st_mode));
	CU_ASSERT_EQUAL(st.st_mode & 0777, 0700);
	CU_ASSERT_EQUAL(file_mkdir_p(deep, 0700), 0); /* exists already */
	/* Partly there, with a trailing slash and a doubled one. */
	char *partial = xasprintf("%s/a/b//d/e/", dir);
	CU_ASSERT_EQUAL(file_mkdir_p(partial, 0750), 0);
	CU_ASSERT_EQUAL(stat(partial, &st), 0);
	CU_ASSERT_TRUE(S_ISDIR(st.st_mode));
	CU_ASSERT_EQUAL(st.st_mode & 0777, 0750);
	char *b_dir = xasprintf("%s/a/b", dir);
	CU_ASSERT_EQUAL(stat(b_dir, &st), 0);
	CU_ASSERT_EQUAL(st.st_mode & 0777, 0700); /* what existed keeps its mode */
	free(b_dir);
	free(partial);
	char *file = xasprintf("%s/plain", dir);
	put(file, "x", 0600);
	char *under = xasprintf("%s/sub", file);
	errno = 0;
	CU_ASSERT_EQUAL(file_mkdir_p(under, 0700), -1);
	CU_ASSERT_EQUAL(errno, ENOTDIR);
	free(under);
	free(file);
	free(deep);
	test_rmtree(dir);
	free(dir);
}

static void test_read_secret(void)
{
	char *dir = test_mkdtemp();
	char *path = xasprintf("%s/secret", dir);
	const char *key32 = "0123456789abcdef0123456789abcdef";
	unsigned char *s = NULL;
	size_t len = 0;
	char *err = NULL;
	static const char *const endings[] = { "", "\n", "\r\n" };
	for (size_t i = 0; i < 3; i++) {
		char *text = xasprintf("%s%s", key32, endings[i]);
		put(path, text, 0600);
		free(text);
		CU_ASSERT_EQUAL(file_read_secret("key", path, 32, 64, &s, &len, &err), 0);
		CU_ASSERT_EQUAL(len, 32);
		CU_ASSERT_TRUE(s != NULL && memcmp(s, key32, 32) == 0);
		free(s);
		s = NULL;
	}
	put(path, "\n", 0600);
	CU_ASSERT_EQUAL(file_read_secret("key", path, 32, 64, &s, &len, &err), -1);
	CU_ASSERT_TRUE(says(err, path, "is empty"));
	put(path, "short\n", 0600);
	CU_ASSERT_EQUAL(file_read_secret("key", path, 32, 64, &s, &len, &err), -1);
	CU_ASSERT_TRUE(says(err, path, "at least 32"));
	put(path, key32, 0644);
	CU_ASSERT_EQUAL(file_read_secret("key", path, 32, 64, &s, &len, &err), -1);
	CU_ASSERT_TRUE(says(err, path, "accessible by everyone"));
	char *big = xasprintf("%s%s%s\n", key32, key32, "x");
	put(path, big, 0600);
	free(big);
	CU_ASSERT_EQUAL(file_read_secret("key", path, 32, 64, &s, &len, &err), -1);
	CU_ASSERT_TRUE(says(err, path, "larger than 64"));
	CU_ASSERT_PTR_NULL(s);
	free(path);
	test_rmtree(dir);
	free(dir);
}

const struct test_case lib_file_cases[] = {
	{ "file_read is bounded and names the file in errors", test_read_is_bounded },
	{ "file_read_fd reads a pipe, bounded, EFBIG past the bound", test_read_fd_is_bounded },
	{ "file_write_atomic replaces the file and leaves no temporary",
	  test_write_atomic_replaces_and_leaves_nothing_else },
	{ "file_mkdir_p makes parents, accepts what exists", test_mkdir_p },
	{ "file_read_secret: endings, empty, short, public, large", test_read_secret },
	{ NULL, NULL },
};

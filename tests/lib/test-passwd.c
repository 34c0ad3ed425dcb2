/* Unit tests of the users file (lib/passwd.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/passwd.h"
#include "lib/xalloc.h"
#include "tests/lib/tests.h"

static char *write_tmp(const char *dir, const char *content)
{
	char *path = xasprintf("%s/users", dir);
	FILE *f = fopen(path, "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fputs(content, f);
	fclose(f);
	return path;
}

static void test_passwd_hash_then_verify(void)
{
	char *dir = test_mkdtemp();
	char *path = xasprintf("%s/users", dir);
	char *err = NULL;
	char *h = passwd_hash_sha512_crypt("s3cret pass");
	CU_ASSERT(strncmp(h, "{SHA512-CRYPT}$6$", 17) == 0);
	CU_ASSERT_EQUAL(passwd_set(path, "alice", h, &err), 0);
	CU_ASSERT_EQUAL(passwd_verify(path, "alice", "s3cret pass", &err), 1);
	CU_ASSERT_EQUAL(passwd_verify(path, "alice", "s3cret pas", &err), 0);
	CU_ASSERT_EQUAL(passwd_verify(path, "bob", "s3cret pass", &err), 0);
	free(h);
	free(path);
	test_rmtree(dir);
	free(dir);
}

static void test_passwd_set_replaces_only_that_user(void)
{
	char *dir = test_mkdtemp();
	char *path = write_tmp(dir, "# users\nalice:{PLAIN}a\nbob:{PLAIN}b::extra\n");
	char *err = NULL;
	CU_ASSERT_EQUAL(passwd_set(path, "alice", "{PLAIN}new", &err), 0);
	CU_ASSERT_EQUAL(passwd_verify(path, "alice", "new", &err), 1);
	CU_ASSERT_EQUAL(passwd_verify(path, "alice", "a", &err), 0);
	CU_ASSERT_EQUAL(passwd_verify(path, "bob", "b", &err), 1);
	CU_ASSERT_EQUAL(passwd_set(path, "carol", "{PLAIN}c", &err), 0);
	CU_ASSERT_EQUAL(passwd_verify(path, "carol", "c", &err), 1);
	CU_ASSERT_EQUAL(passwd_set(path, "bad:name", "{PLAIN}c", &err), -1);
	CU_ASSERT_PTR_NOT_NULL(err);
	free(err);
	free(path);
	test_rmtree(dir);
	free(dir);
}

static void test_passwd_dovecot_schemes(void)
{
	char *dir = test_mkdtemp();
	/* password "pass" in each scheme (made with openssl/doveadm-compatible tools) */
	char *path = write_tmp(dir,
		"s512:{SHA512}W3IrMH/ObJRJBdEyaR1eSiIUt/6StziSDrP846kEIKGVEcMBCg53ErBU2u9bV7rVnsvZOzKA8hBXj1R/Su1NJQ==\n"
		"s256:{SHA256}10/w7o2juYBrGMh32/KbveULW9jk2tejpyUAD+uC6PE=\n"
		"md5c:{MD5-CRYPT}$1$abcdefgh$1s0bv7.OjNizlrMAOIQD7.\n"
		"bare:$1$abcdefgh$1s0bv7.OjNizlrMAOIQD7.\n"
		"plain:{PLAIN}pass\n"
		"weird:{NOSUCH}pass\n");
	char *err = NULL;
	CU_ASSERT_EQUAL(passwd_verify(path, "s512", "pass", &err), 1);
	CU_ASSERT_EQUAL(passwd_verify(path, "s512", "pasS", &err), 0);
	CU_ASSERT_EQUAL(passwd_verify(path, "s256", "pass", &err), 1);
	CU_ASSERT_EQUAL(passwd_verify(path, "md5c", "pass", &err), 1);
	CU_ASSERT_EQUAL(passwd_verify(path, "bare", "pass", &err), 1);
	CU_ASSERT_EQUAL(passwd_verify(path, "plain", "pass", &err), 1);
	CU_ASSERT_EQUAL(passwd_verify(path, "weird", "pass", &err), 0);
	free(path);
	test_rmtree(dir);
	free(dir);
}

static void test_passwd_malformed_file_is_an_error(void)
{
	char *dir = test_mkdtemp();
	char *path = write_tmp(dir, "alice:{PLAIN}a\nno colon here\n");
	char *err = NULL;
	CU_ASSERT_EQUAL(passwd_verify(path, "zed", "x", &err), -1);
	CU_ASSERT_PTR_NOT_NULL_FATAL(err);
	CU_ASSERT(strstr(err, ":2: expected") != NULL);
	free(err);
	err = NULL;
	CU_ASSERT_EQUAL(passwd_verify("/nonexistent/users", "a", "b", &err), -1);
	free(err);
	free(path);
	test_rmtree(dir);
	free(dir);
}

static void test_passwd_user_names(void)
{
	CU_ASSERT_TRUE(passwd_user_name_valid("alice@example.com"));
	CU_ASSERT_TRUE(passwd_user_name_valid("a.b-c_d+e"));
	CU_ASSERT_FALSE(passwd_user_name_valid(""));
	CU_ASSERT_FALSE(passwd_user_name_valid(".hidden"));
	CU_ASSERT_FALSE(passwd_user_name_valid("a b"));
	CU_ASSERT_FALSE(passwd_user_name_valid("a/b"));
	CU_ASSERT_FALSE(passwd_user_name_valid("a:b"));
}

const struct test_case lib_passwd_cases[] = {
	{ "hash then verify", test_passwd_hash_then_verify },
	{ "set replaces only that user", test_passwd_set_replaces_only_that_user },
	{ "Dovecot schemes verify", test_passwd_dovecot_schemes },
	{ "malformed file is an error", test_passwd_malformed_file_is_an_error },
	{ "user name validation", test_passwd_user_names },
	{ NULL, NULL },
};

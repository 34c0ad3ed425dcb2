#include "tests/lib/tests.h"

int main(void)
{
	static const struct test_suite suites[] = {
		{ "buf", lib_buf_cases, NULL, NULL },
		{ "str+guid", lib_str_cases, NULL, NULL },
		{ "config", lib_config_cases, NULL, NULL },
		{ "passwd", lib_passwd_cases, NULL, NULL },
		{ "passwd-cache", lib_passwd_cache_cases, NULL, NULL },
		{ "file", lib_file_cases, NULL, NULL },
		{ "listen", lib_listen_cases, NULL, NULL },
		{ "log", lib_log_cases, NULL, NULL },
		{ NULL, NULL, NULL, NULL },
	};
	return test_run_suites("test-lib", suites);
}

#ifndef TESTS_LIB_TESTS_H
#define TESTS_LIB_TESTS_H
#include "tests/testutil.h"
extern const struct test_case lib_buf_cases[];
extern const struct test_case lib_str_cases[];
extern const struct test_case lib_config_cases[];
extern const struct test_case lib_passwd_cases[];
extern const struct test_case lib_passwd_cache_cases[];
extern const struct test_case lib_file_cases[];
extern const struct test_case lib_listen_cases[];
extern const struct test_case lib_log_cases[];
#endif

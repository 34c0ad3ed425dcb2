#ifndef TESTS_PROTOCOL_TESTS_H
#define TESTS_PROTOCOL_TESTS_H
#include "tests/testutil.h"
extern const struct test_case proto_parser_cases[];
extern const struct test_case proto_command_cases[];
extern const struct test_case proto_conn_cases[];
extern const struct test_case proto_codec_cases[];
int proto_conn_suite_init(void);
int proto_conn_suite_cleanup(void);
#endif

/* The suites of tests/lmtp/test-lmtp (one program). */
#ifndef TESTS_LMTP_TESTS_LMTP_H
#define TESTS_LMTP_TESTS_LMTP_H

#include "tests/testutil.h"

extern const struct test_case lmtp_server_cases[];

#endif

/* Runner of the protocol/ unit tests. */
#include "tests/protocol/tests.h"

int main(void)
{
	static const struct test_suite suites[] = {
		{ "parser+writer", proto_parser_cases, NULL, NULL },
		{ "command table", proto_command_cases, NULL, NULL },
		{ "command codecs", proto_codec_cases, NULL, NULL },
		{ "connection", proto_conn_cases, proto_conn_suite_init, proto_conn_suite_cleanup },
		{ NULL, NULL, NULL, NULL },
	};
	return test_run_suites("test-protocol", suites);
}

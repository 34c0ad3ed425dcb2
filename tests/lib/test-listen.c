/* lib/listen.c: the listener the IMAP and LMTP servers share. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/listen.h"
#include "tests/lib/tests.h"

static uint16_t port_of(int fd)
{
	struct sockaddr_in sin;
	socklen_t sl = sizeof(sin);
	CU_ASSERT_EQUAL_FATAL(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
	return ntohs(sin.sin_port);
}

static void test_listen_accept(void)
{
	char host[] = "127.0.0.1";
	struct config_addr addr = { host, 0 };
	char *err = NULL;
	int lfd = listen_tcp(&addr, &err);
	CU_ASSERT_FATAL(lfd >= 0);
	struct sockaddr_storage ss;
	/* nothing waiting: drained, not an error to pause on */
	CU_ASSERT_EQUAL(listen_accept(lfd, &ss), LISTEN_DRAINED);

	int cfd = socket(AF_INET, SOCK_STREAM, 0);
	CU_ASSERT_FATAL(cfd >= 0);
	struct sockaddr_in sin;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons(port_of(lfd));
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	CU_ASSERT_EQUAL_FATAL(connect(cfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	int afd = -1;
	for (int i = 0; i < 200 && afd < 0; i++) {
		afd = listen_accept(lfd, &ss);
		if (afd == LISTEN_DRAINED)
			usleep(5000);
	}
	CU_ASSERT(afd >= 0);
	CU_ASSERT_EQUAL(ss.ss_family, AF_INET);
	CU_ASSERT_EQUAL(listen_accept(lfd, &ss), LISTEN_DRAINED);
	if (afd >= 0)
		close(afd);

	/* the port is taken: an error naming it */
	struct config_addr taken = { host, port_of(lfd) };
	CU_ASSERT_EQUAL(listen_tcp(&taken, &err), -1);
	CU_ASSERT_PTR_NOT_NULL(err);
	if (err != NULL) {
		char want[64];
		snprintf(want, sizeof(want), "127.0.0.1:%u: ", taken.port);
		CU_ASSERT_EQUAL(strncmp(err, want, strlen(want)), 0);
	}
	free(err);
	close(cfd);
	close(lfd);
}

const struct test_case lib_listen_cases[] = {
	{ "listen_tcp binds loopback, listen_accept drains and accepts", test_listen_accept },
	{ NULL, NULL },
};

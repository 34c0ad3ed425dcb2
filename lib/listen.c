#include "lib/listen.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/xalloc.h"

#define LISTEN_BACKLOG 128

int listen_tcp(const struct config_addr *addr, char **error_r)
{
	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	char port[8];
	snprintf(port, sizeof(port), "%u", addr->port);
	int r = getaddrinfo(addr->host, port, &hints, &res);
	if (r != 0) {
		*error_r = xasprintf("%s:%u: %s", addr->host, addr->port, gai_strerror(r));
		return -1;
	}
	/* A name may resolve to an address family the host lacks (IPv6
	 * first on a host without it): the first address that binds wins. */
	int err = 0;
	for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
		int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			err = errno;
			continue;
		}
		int one = 1;
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, LISTEN_BACKLOG) < 0) {
			err = errno;
			close(fd);
			continue;
		}
		freeaddrinfo(res);
		return fd;
	}
	freeaddrinfo(res);
	*error_r = xasprintf("%s:%u: %s", addr->host, addr->port, strerror(err));
	return -1;
}

int listen_accept(int fd, struct sockaddr_storage *ss)
{
	socklen_t sl = sizeof(*ss);
	int cfd = accept4(fd, (struct sockaddr *)ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (cfd >= 0)
		return cfd;
	if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED)
		return LISTEN_DRAINED;
	return LISTEN_PAUSE;
}

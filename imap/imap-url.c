/* The server part of an absolute IMAP URL (RFC 5092 3):
 *
 *   "imap://" [enc-user [";AUTH=" ("*" / enc-auth-type)] "@"] host [":" port]
 *
 * CATENATE (RFC 4469 5) may name a message by such a URL.  It is one this
 * server resolves only when it names this server and the session's user:
 * the host is this machine's name, the address the client reached, or
 * imap_listen's or imaps_listen's host; a port, when given, is one of
 * this node's IMAP ports; a user, when given, is the session's.  Without
 * a user the URL is taken as the session's own, as a relative URL is.
 * Anything else (another server, another user, a URLAUTH URL) is a
 * [BADURL] for the caller: nothing is ever fetched from elsewhere. */
#include "imap/imap-commands.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/config.h"
#include "lib/xalloc.h"

static int hexval(int ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	ch = tolower(ch);
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	return -1;
}

/* Percent-decodes [s, s + len) into out (size out_size, NUL-terminated);
 * false on a bad escape, an encoded NUL or a result that does not fit. */
static bool decode(const char *s, size_t len, char *out, size_t out_size)
{
	size_t k = 0;
	for (size_t i = 0; i < len; i++) {
		int ch = (unsigned char)s[i];
		if (ch == '%') {
			int h, l;
			if (i + 2 >= len || (h = hexval((unsigned char)s[i + 1])) < 0 ||
			    (l = hexval((unsigned char)s[i + 2])) < 0 || (h == 0 && l == 0))
				return false;
			ch = h * 16 + l;
			i += 2;
		}
		if (k + 1 >= out_size)
			return false;
		out[k++] = (char)ch;
	}
	out[k] = '\0';
	return true;
}

static bool host_is_local_address(const struct imap_client *c, const char *host)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	if (getsockname(c->fd, (struct sockaddr *)&ss, &sl) < 0)
		return false;
	char text[INET6_ADDRSTRLEN];
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;
		if (inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text)) == NULL)
			return false;
		return strcmp(host, text) == 0;
	}
	if (ss.ss_family == AF_INET6) {
		/* an IPv6 literal is bracketed in a URL (RFC 3986 3.2.2) */
		size_t n = strlen(host);
		if (n < 3 || host[0] != '[' || host[n - 1] != ']')
			return false;
		struct in6_addr want;
		char inner[INET6_ADDRSTRLEN];
		if (n - 2 >= sizeof(inner))
			return false;
		memcpy(inner, host + 1, n - 2);
		inner[n - 2] = '\0';
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;
		return inet_pton(AF_INET6, inner, &want) == 1 &&
		       memcmp(&want, &in6->sin6_addr, sizeof(want)) == 0;
	}
	return false;
}

static bool host_is_ours(const struct imap_client *c, const char *host)
{
	const struct config *cfg = c->server->cfg;
	char name[256];
	if (gethostname(name, sizeof(name) - 1) == 0) {
		name[sizeof(name) - 1] = '\0';
		if (name[0] != '\0' && strcasecmp(host, name) == 0)
			return true;
	}
	if (cfg->imap_listen.host != NULL && strcasecmp(host, cfg->imap_listen.host) == 0)
		return true;
	if (cfg->imaps_listen.host != NULL && strcasecmp(host, cfg->imaps_listen.host) == 0)
		return true;
	return host_is_local_address(c, host);
}

static bool port_is_ours(const struct imap_client *c, unsigned long port)
{
	const struct config *cfg = c->server->cfg;
	if ((cfg->imap_listen.host != NULL && port == cfg->imap_listen.port) ||
	    (cfg->imaps_listen.host != NULL && port == cfg->imaps_listen.port))
		return true;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	if (getsockname(c->fd, (struct sockaddr *)&ss, &sl) < 0)
		return false;
	if (ss.ss_family == AF_INET)
		return port == ntohs(((const struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return port == ntohs(((const struct sockaddr_in6 *)&ss)->sin6_port);
	return false;
}

const char *imap_url_local_path(const struct imap_client *c, const char *url)
{
	if (strncasecmp(url, "imap://", 7) != 0)
		return url[0] == '/' && url[1] != '/' ? url : NULL;
	const char *auth = url + 7;
	const char *path = strchr(auth, '/');
	if (path == NULL)
		return NULL;
	const char *at = memchr(auth, '@', (size_t)(path - auth));
	const char *host = auth;
	if (at != NULL) {
		/* iuserinfo: enc-user [";AUTH=" ...]; the mechanism does not
		 * matter here, the session is already authenticated. */
		const char *semi = memchr(auth, ';', (size_t)(at - auth));
		const char *user_end = semi != NULL ? semi : at;
		if (semi != NULL && strncasecmp(semi, ";AUTH=", 6) != 0)
			return NULL;
		if (semi != NULL && semi + 6 == at)
			return NULL;
		if (user_end != auth) {
			char user[512];
			if (!decode(auth, (size_t)(user_end - auth), user, sizeof(user)) ||
			    c->user == NULL || strcmp(user, c->user) != 0)
				return NULL;
		}
		host = at + 1;
	}
	const char *host_end = path;
	const char *colon = NULL;
	if (host < path && host[0] == '[') {
		const char *rb = memchr(host, ']', (size_t)(path - host));
		if (rb == NULL)
			return NULL;
		if (rb + 1 < path) {
			if (rb[1] != ':')
				return NULL;
			colon = rb + 1;
		}
	} else {
		colon = memchr(host, ':', (size_t)(path - host));
	}
	if (colon != NULL) {
		host_end = colon;
		const char *p = colon + 1;
		if (p == path)
			return NULL;
		unsigned long port = 0;
		for (; p < path; p++) {
			if (!isdigit((unsigned char)*p) || (port = port * 10 + (unsigned long)(*p - '0')) > 65535)
				return NULL;
		}
		if (!port_is_ours(c, port))
			return NULL;
	}
	char hostname[256];
	if (host_end == host || !decode(host, (size_t)(host_end - host), hostname, sizeof(hostname)))
		return NULL;
	if (!host_is_ours(c, hostname))
		return NULL;
	return path;
}

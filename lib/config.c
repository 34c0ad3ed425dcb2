/* Configuration parser: a table of keys, each with its own value parser.
 * Parsing collects the first error with FILE:LINE and stops there. */
#include "lib/config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/file.h"
#include "lib/str.h"
#include "lib/xalloc.h"

#define CONFIG_MAX_SIZE (1024 * 1024)
#define CONFIG_MAX_LINE 4096

struct key_def {
	const char *name;
	/* Returns NULL on success or a static/allocated-by-xasprintf message. */
	char *(*parse)(struct config *cfg, const char *value);
	bool repeatable;
};

static char *dup_path(char **dst, const char *value)
{
	if (*value == '\0')
		return xstrdup("empty path");
	*dst = xstrdup(value);
	return NULL;
}

int config_parse_addr(const char *s, struct config_addr *addr_r)
{
	const char *colon;
	char *host;
	if (s[0] == '[') {
		const char *end = strchr(s, ']');
		if (end == NULL || end[1] != ':' || end == s + 1)
			return -1;
		host = xstrndup(s + 1, (size_t)(end - s - 1));
		colon = end + 1;
	} else {
		colon = strrchr(s, ':');
		if (colon == NULL || colon == s)
			return -1;
		host = xstrndup(s, (size_t)(colon - s));
		if (strchr(host, ':') != NULL) {
			free(host);
			return -1;
		}
	}
	uint64_t port;
	if (str_to_u64(colon + 1, 65535, &port) < 0 || port == 0) {
		free(host);
		return -1;
	}
	addr_r->host = host;
	addr_r->port = (uint16_t)port;
	return 0;
}

static char *parse_addr_key(struct config_addr *dst, const char *value)
{
	if (config_parse_addr(value, dst) < 0)
		return xasprintf("bad address '%s' (expected HOST:PORT)", value);
	return NULL;
}

static char *parse_size(const char *value, uint64_t *v_r)
{
	size_t n = strlen(value);
	uint64_t mult = 1;
	if (n > 0) {
		switch (value[n - 1]) {
		case 'K': case 'k': mult = 1024; n--; break;
		case 'M': case 'm': mult = 1024 * 1024; n--; break;
		case 'G': case 'g': mult = 1024ull * 1024 * 1024; n--; break;
		}
	}
	uint64_t v;
	if (str_to_u64_n(value, n, UINT64_MAX / mult, &v) < 0 || v == 0)
		return xasprintf("bad size '%s'", value);
	*v_r = v * mult;
	return NULL;
}

static char *k_node_id(struct config *c, const char *v)
{
	uint64_t id;
	if (str_to_u64(v, UINT32_MAX, &id) < 0 || id == 0)
		return xasprintf("node_id must be a positive integer, not '%s'", v);
	c->node_id = (uint32_t)id;
	return NULL;
}

static char *k_data_dir(struct config *c, const char *v) { return dup_path(&c->data_dir, v); }
static char *k_imap(struct config *c, const char *v) { return parse_addr_key(&c->imap_listen, v); }
static char *k_imaps(struct config *c, const char *v) { return parse_addr_key(&c->imaps_listen, v); }
static char *k_repl(struct config *c, const char *v) { return parse_addr_key(&c->repl_listen, v); }
static char *k_secret(struct config *c, const char *v) { return dup_path(&c->cluster_secret_file, v); }
static char *k_users(struct config *c, const char *v) { return dup_path(&c->users_file, v); }
static char *k_cert(struct config *c, const char *v) { return dup_path(&c->tls_cert, v); }
static char *k_key(struct config *c, const char *v) { return dup_path(&c->tls_key, v); }
static char *k_ca(struct config *c, const char *v) { return dup_path(&c->tls_ca, v); }

static char *k_peer(struct config *c, const char *v)
{
	char sid_s[16];
	const char *sp = strchr(v, ' ');
	if (sp == NULL || (size_t)(sp - v) >= sizeof(sid_s))
		return xasprintf("peer must be 'SID HOST:PORT', not '%s'", v);
	memcpy(sid_s, v, (size_t)(sp - v));
	sid_s[sp - v] = '\0';
	uint64_t sid;
	if (str_to_u64(sid_s, UINT32_MAX, &sid) < 0 || sid == 0)
		return xasprintf("bad peer SID '%s'", sid_s);
	while (*sp == ' ' || *sp == '\t')
		sp++;
	for (size_t i = 0; i < c->peers.count; i++) {
		if (c->peers.items[i].sid == sid)
			return xasprintf("peer %llu listed twice", (unsigned long long)sid);
	}
	if (c->peers.count >= CONFIG_MAX_PEERS)
		return xasprintf("too many peers (at most %d)", CONFIG_MAX_PEERS);
	struct config_peer p = { .sid = (uint32_t)sid };
	if (config_parse_addr(sp, &p.addr) < 0)
		return xasprintf("bad peer address '%s' (expected HOST:PORT)", sp);
	ARRAY_PUSH(&c->peers, p);
	return NULL;
}

static char *k_sync_replicas(struct config *c, const char *v)
{
	uint64_t n;
	if (str_to_u64(v, CONFIG_MAX_PEERS, &n) < 0)
		return xasprintf("sync_replicas must be a number from 0 to %d, not '%s'",
				 CONFIG_MAX_PEERS, v);
	c->sync_replicas = (unsigned)n;
	return NULL;
}

static const char *const gran_names[] = {
	[CONFIG_GRAN_MAILBOX] = "mailbox",
	[CONFIG_GRAN_USER] = "user",
	[CONFIG_GRAN_DOMAIN] = "domain",
	[CONFIG_GRAN_GLOBAL] = "global",
};

const char *config_granularity_name(enum config_granularity g)
{
	return gran_names[g];
}

static char *k_granularity(struct config *c, const char *v)
{
	for (size_t i = 0; i < sizeof(gran_names) / sizeof(gran_names[0]); i++) {
		if (strcmp(v, gran_names[i]) == 0) {
			c->master_granularity = (enum config_granularity)i;
			return NULL;
		}
	}
	return xasprintf("master_granularity must be mailbox, user, domain or global, not '%s'", v);
}

static char *k_log_level(struct config *c, const char *v)
{
	if (log_level_parse(v, &c->log_level) < 0)
		return xasprintf("log_level must be error, warn, info or debug, not '%s'", v);
	return NULL;
}

static char *k_max_msg(struct config *c, const char *v) { return parse_size(v, &c->max_message_size); }

static char *k_plaintext(struct config *c, const char *v)
{
	if (strcmp(v, "loopback") == 0)
		c->plaintext_auth = CONFIG_PLAINTEXT_LOOPBACK;
	else if (strcmp(v, "yes") == 0)
		c->plaintext_auth = CONFIG_PLAINTEXT_ALWAYS;
	else if (strcmp(v, "no") == 0)
		c->plaintext_auth = CONFIG_PLAINTEXT_NEVER;
	else
		return xasprintf("plaintext_auth must be loopback, yes or no, not '%s'", v);
	return NULL;
}

static char *k_repl_log_max(struct config *c, const char *v)
{
	uint64_t n;
	if (str_to_u64(v, UINT32_MAX, &n) < 0 || n == 0)
		return xasprintf("repl_log_max must be a positive number, not '%s'", v);
	c->repl_log_max = n;
	return NULL;
}

const char *config_degraded_writes_name(enum config_degraded_writes d)
{
	return d == CONFIG_DEGRADED_REFUSE ? "refuse" : "accept";
}

static char *k_degraded(struct config *c, const char *v)
{
	if (strcmp(v, "accept") == 0)
		c->degraded_writes = CONFIG_DEGRADED_ACCEPT;
	else if (strcmp(v, "refuse") == 0)
		c->degraded_writes = CONFIG_DEGRADED_REFUSE;
	else
		return xasprintf("degraded_writes must be accept or refuse, not '%s'", v);
	return NULL;
}

const char *config_read_consistency_name(enum config_read_consistency r)
{
	return r == CONFIG_READ_LOCAL ? "local" : "master";
}

static char *k_read_consistency(struct config *c, const char *v)
{
	if (strcmp(v, "master") == 0)
		c->read_consistency = CONFIG_READ_MASTER;
	else if (strcmp(v, "local") == 0)
		c->read_consistency = CONFIG_READ_LOCAL;
	else
		return xasprintf("read_consistency must be master or local, not '%s'", v);
	return NULL;
}

/* SPEC.md 7.7: private (the default) keeps each user's \Seen on other
 * users' and public mailboxes apart; shared shows the message's own. */
static char *k_shared_seen(struct config *c, const char *v)
{
	if (strcmp(v, "private") == 0)
		c->shared_seen_private = true;
	else if (strcmp(v, "shared") == 0)
		c->shared_seen_private = false;
	else
		return xasprintf("shared_seen must be private or shared, not '%s'", v);
	return NULL;
}

static char *k_acl_owner_rights(struct config *c, const char *v)
{
	c->acl_owner_rights = xstrdup(v);
	return NULL;
}

static char *k_lmtp(struct config *c, const char *v)
{
	if (v[0] == '/') {
		/* sun_path holds 108 bytes with its NUL. */
		if (strlen(v) >= 108)
			return xasprintf("lmtp_listen socket path too long: '%s'", v);
		return dup_path(&c->lmtp_socket, v);
	}
	return parse_addr_key(&c->lmtp_listen, v);
}

static char *k_lmtp_detail(struct config *c, const char *v)
{
	if (strcmp(v, "yes") == 0)
		c->lmtp_detail_mailbox = true;
	else if (strcmp(v, "no") == 0)
		c->lmtp_detail_mailbox = false;
	else
		return xasprintf("lmtp_detail_mailbox must be yes or no, not '%s'", v);
	return NULL;
}

static char *k_metrics(struct config *c, const char *v)
{
	return parse_addr_key(&c->metrics_listen, v);
}

static const struct key_def keys[] = {
	{ "node_id", k_node_id, false },
	{ "data_dir", k_data_dir, false },
	{ "imap_listen", k_imap, false },
	{ "imaps_listen", k_imaps, false },
	{ "repl_listen", k_repl, false },
	{ "peer", k_peer, true },
	{ "cluster_secret_file", k_secret, false },
	{ "users_file", k_users, false },
	{ "sync_replicas", k_sync_replicas, false },
	{ "master_granularity", k_granularity, false },
	{ "tls_cert", k_cert, false },
	{ "tls_key", k_key, false },
	{ "tls_ca", k_ca, false },
	{ "log_level", k_log_level, false },
	{ "max_message_size", k_max_msg, false },
	{ "plaintext_auth", k_plaintext, false },
	{ "repl_log_max", k_repl_log_max, false },
	{ "degraded_writes", k_degraded, false },
	{ "read_consistency", k_read_consistency, false },
	{ "shared_seen", k_shared_seen, false },
	{ "acl_owner_rights", k_acl_owner_rights, false },
	{ "lmtp_listen", k_lmtp, false },
	{ "lmtp_detail_mailbox", k_lmtp_detail, false },
	{ "metrics_listen", k_metrics, false },
};
#define N_KEYS (sizeof(keys) / sizeof(keys[0]))

/* Checks that belong to the file as a whole, after every line was read. */
static char *config_validate(const struct config *c)
{
	if (c->node_id == 0)
		return xstrdup("missing required key 'node_id'");
	if (c->data_dir == NULL)
		return xstrdup("missing required key 'data_dir'");
	for (size_t i = 0; i < c->peers.count; i++) {
		if (c->peers.items[i].sid == c->node_id)
			return xasprintf("peer %u has this node's own node_id", c->node_id);
	}
	if (c->peers.count > 0 && c->repl_listen.host == NULL)
		return xstrdup("peers are configured but 'repl_listen' is missing");
	if (c->peers.count > 0 && c->cluster_secret_file == NULL)
		return xstrdup("peers are configured but 'cluster_secret_file' is missing");
	if ((c->tls_cert == NULL) != (c->tls_key == NULL))
		return xstrdup("'tls_cert' and 'tls_key' must be set together");
	if (c->imaps_listen.host != NULL && c->tls_cert == NULL)
		return xstrdup("'imaps_listen' needs 'tls_cert' and 'tls_key'");
	if (c->sync_replicas > c->peers.count)
		return xasprintf("sync_replicas = %u but only %zu peers are configured",
				 c->sync_replicas, c->peers.count);
	return NULL;
}

struct config *config_parse(const char *path, const char *text, char **error_r)
{
	struct config *c = xcalloc(1, sizeof(*c));
	bool seen[N_KEYS] = { false };
	unsigned lineno = 0;
	char *err = NULL;
	const char *p = text;

	c->path = xstrdup(path);
	c->sync_replicas = 1;
	c->log_level = LOG_LEVEL_INFO;
	c->max_message_size = CONFIG_DEFAULT_MAX_MESSAGE_SIZE;
	c->repl_log_max = CONFIG_DEFAULT_REPL_LOG_MAX;
	c->shared_seen_private = true;
	bool sync_replicas_set = false;

	while (*p != '\0' && err == NULL) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);
		lineno++;
		if (len >= CONFIG_MAX_LINE) {
			err = xasprintf("line too long");
			break;
		}
		char line[CONFIG_MAX_LINE];
		memcpy(line, p, len);
		line[len] = '\0';
		p += len + (nl ? 1 : 0);

		char *hash = strchr(line, '#');
		if (hash != NULL)
			*hash = '\0';
		char *s = str_trim(line);
		if (*s == '\0')
			continue;
		char *eq = strchr(s, '=');
		if (eq == NULL) {
			err = xasprintf("expected 'key = value'");
			break;
		}
		*eq = '\0';
		char *key = str_trim(s), *value = str_trim(eq + 1);
		if (*value == '\0') {
			err = xasprintf("empty value for '%s'", key);
			break;
		}
		size_t i;
		for (i = 0; i < N_KEYS; i++) {
			if (strcmp(keys[i].name, key) == 0)
				break;
		}
		if (i == N_KEYS) {
			err = xasprintf("unknown key '%s'", key);
			break;
		}
		if (seen[i] && !keys[i].repeatable) {
			err = xasprintf("'%s' given twice", key);
			break;
		}
		seen[i] = true;
		if (strcmp(key, "sync_replicas") == 0)
			sync_replicas_set = true;
		if (strcmp(key, "acl_owner_rights") == 0)
			c->acl_owner_rights_line = lineno;
		err = keys[i].parse(c, value);
	}
	if (err != NULL) {
		*error_r = xasprintf("%s:%u: %s", path, lineno, err);
		free(err);
		config_free(&c);
		return NULL;
	}
	/* A lone node has nobody to replicate to; don't make it wait. */
	if (!sync_replicas_set && c->peers.count == 0)
		c->sync_replicas = 0;
	err = config_validate(c);
	if (err != NULL) {
		*error_r = xasprintf("%s: %s", path, err);
		free(err);
		config_free(&c);
		return NULL;
	}
	return c;
}

struct config *config_load(const char *path, char **error_r)
{
	/* Not file_read(): a config may come from a FIFO or a process
	 * substitution (starling -c <(...)), which is not a regular file. */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		*error_r = xasprintf("%s: %s", path, strerror(errno));
		return NULL;
	}
	struct buf b = BUF_INIT;
	int r = file_read_fd(fd, path, CONFIG_MAX_SIZE, &b, error_r);
	close(fd);
	if (r < 0) {
		buf_free(&b);
		return NULL;
	}
	if (memchr(buf_cstr(&b), '\0', b.len) != NULL) {
		buf_free(&b);
		*error_r = xasprintf("%s: contains a NUL byte", path);
		return NULL;
	}
	struct config *c = config_parse(path, buf_cstr(&b), error_r);
	buf_free(&b);
	return c;
}

static void addr_free(struct config_addr *a)
{
	free(a->host);
	a->host = NULL;
}

void config_free(struct config **cp)
{
	struct config *c = *cp;
	if (c == NULL)
		return;
	*cp = NULL;
	free(c->path);
	free(c->data_dir);
	addr_free(&c->imap_listen);
	addr_free(&c->imaps_listen);
	addr_free(&c->repl_listen);
	for (size_t i = 0; i < c->peers.count; i++)
		addr_free(&c->peers.items[i].addr);
	ARRAY_FREE(&c->peers);
	free(c->cluster_secret_file);
	free(c->users_file);
	free(c->tls_cert);
	free(c->tls_key);
	free(c->tls_ca);
	addr_free(&c->lmtp_listen);
	free(c->lmtp_socket);
	free(c->acl_owner_rights);
	addr_free(&c->metrics_listen);
	free(c);
}

static void print_addr(FILE *out, const char *key, const struct config_addr *a)
{
	if (a->host == NULL)
		return;
	if (strchr(a->host, ':') != NULL)
		fprintf(out, "%s = [%s]:%u\n", key, a->host, a->port);
	else
		fprintf(out, "%s = %s:%u\n", key, a->host, a->port);
}

static void print_str(FILE *out, const char *key, const char *v)
{
	if (v != NULL)
		fprintf(out, "%s = %s\n", key, v);
}

void config_print(const struct config *c, FILE *out)
{
	static const char *const levels[] = { "error", "warn", "info", "debug" };
	static const char *const plaintext[] = { "loopback", "yes", "no" };
	fprintf(out, "node_id = %u\n", c->node_id);
	print_str(out, "data_dir", c->data_dir);
	print_addr(out, "imap_listen", &c->imap_listen);
	print_addr(out, "imaps_listen", &c->imaps_listen);
	print_addr(out, "repl_listen", &c->repl_listen);
	for (size_t i = 0; i < c->peers.count; i++) {
		const struct config_addr *a = &c->peers.items[i].addr;
		fprintf(out, strchr(a->host, ':') != NULL ? "peer = %u [%s]:%u\n" : "peer = %u %s:%u\n",
			c->peers.items[i].sid, a->host, a->port);
	}
	print_str(out, "cluster_secret_file", c->cluster_secret_file);
	print_str(out, "users_file", c->users_file);
	fprintf(out, "sync_replicas = %u\n", c->sync_replicas);
	fprintf(out, "degraded_writes = %s\n", config_degraded_writes_name(c->degraded_writes));
	fprintf(out, "read_consistency = %s\n",
		config_read_consistency_name(c->read_consistency));
	fprintf(out, "shared_seen = %s\n", c->shared_seen_private ? "private" : "shared");
	fprintf(out, "acl_owner_rights = %s\n",
		c->acl_owner_rights != NULL ? c->acl_owner_rights : CONFIG_DEFAULT_ACL_OWNER_RIGHTS);
	fprintf(out, "master_granularity = %s\n", config_granularity_name(c->master_granularity));
	print_str(out, "tls_cert", c->tls_cert);
	print_str(out, "tls_key", c->tls_key);
	print_str(out, "tls_ca", c->tls_ca);
	if ((unsigned)c->log_level < sizeof(levels) / sizeof(levels[0]))
		fprintf(out, "log_level = %s\n", levels[c->log_level]);
	fprintf(out, "max_message_size = %llu\n", (unsigned long long)c->max_message_size);
	if ((unsigned)c->plaintext_auth < sizeof(plaintext) / sizeof(plaintext[0]))
		fprintf(out, "plaintext_auth = %s\n", plaintext[c->plaintext_auth]);
	fprintf(out, "repl_log_max = %llu\n", (unsigned long long)c->repl_log_max);
	print_addr(out, "lmtp_listen", &c->lmtp_listen);
	print_str(out, "lmtp_listen", c->lmtp_socket);
	fprintf(out, "lmtp_detail_mailbox = %s\n", c->lmtp_detail_mailbox ? "yes" : "no");
	print_addr(out, "metrics_listen", &c->metrics_listen);
}

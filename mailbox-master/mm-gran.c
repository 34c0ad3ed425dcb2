/* Granule keys, the per-node granule table, and the validation of
 * messages received from the network. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/xalloc.h"
#include "mailbox-master/mm-private.h"

int mm_granularity_parse(const char *s, enum mm_granularity *gran_r)
{
	static const char *const names[] = { "mailbox", "user", "domain", "global" };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (strcmp(s, names[i]) == 0) {
			*gran_r = (enum mm_granularity)i;
			return 0;
		}
	}
	return -1;
}

/* Keys travel as protocol atoms: printable, no spaces. */
static bool key_part_valid(const char *s)
{
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;
		if (c <= ' ' || c == 0x7f)
			return false;
	}
	return true;
}

bool mm_gkey_valid(const char *gkey)
{
	size_t len = strnlen(gkey, MM_GKEY_MAX + 1);
	return len > 0 && len <= MM_GKEY_MAX && key_part_valid(gkey);
}

int mm_granule_key(enum mm_granularity gran, const char *user,
		   const char *mailbox_guid, char *out, size_t size)
{
	int n;

	if (gran != MM_GRAN_GLOBAL && (user == NULL || *user == '\0' || !key_part_valid(user)))
		return -1;
	switch (gran) {
	case MM_GRAN_MAILBOX:
		if (mailbox_guid == NULL || *mailbox_guid == '\0' ||
		    !key_part_valid(mailbox_guid))
			return -1;
		n = snprintf(out, size, "m:%s/%s", user, mailbox_guid);
		break;
	case MM_GRAN_USER:
		n = snprintf(out, size, "u:%s", user);
		break;
	case MM_GRAN_DOMAIN: {
		const char *at = strrchr(user, '@');
		n = snprintf(out, size, "d:%s", at == NULL ? "" : at + 1);
		break;
	}
	case MM_GRAN_GLOBAL:
		n = snprintf(out, size, "g");
		break;
	default:
		return -1;
	}
	if (n < 0 || (size_t)n >= size || n > (int)MM_GKEY_MAX)
		return -1;
	return 0;
}

const char *mm_msg_type_name(enum mm_msg_type type)
{
	switch (type) {
	case MM_MSG_LINKS: return "LINKS";
	case MM_MSG_ANNOUNCE: return "ROOT-ANNOUNCE";
	case MM_MSG_DROPPED: return "DROPPED";
	case MM_MSG_STALE: return "STALE-EPOCH";
	case MM_MSG_WHO: return "MASTER-WHO";
	case MM_MSG_IS: return "MASTER-IS";
	case MM_MSG_MOVE: return "MASTER-MOVE";
	case MM_MSG_RELEASE: return "MASTER-RELEASE";
	case MM_MSG_MOVE_FAIL: return "MASTER-MOVE-FAIL";
	}
	return "?";
}

static bool sid_ok(uint32_t sid)
{
	return sid >= 1;
}

int mm_msg_validate(const struct mm_msg *msg, const char **error_r)
{
	bool needs_key = false;

	if (msg->type < MM_MSG_LINKS || msg->type > MM_MSG_MOVE_FAIL) {
		*error_r = "unknown message type";
		return -1;
	}
	if (!sid_ok(msg->src)) {
		*error_r = "SID out of range";
		return -1;
	}
	if (msg->type == MM_MSG_LINKS) {
		if (msg->dst != 0 || msg->n_nbrs > MM_MAX_NODES || msg->version == 0) {
			*error_r = "malformed LINKS";
			return -1;
		}
		for (uint32_t i = 0; i < msg->n_nbrs; i++) {
			if (!sid_ok(msg->nbrs[i])) {
				*error_r = "neighbour SID out of range";
				return -1;
			}
		}
		return 0;
	}
	if (msg->dst == 0 || msg->ttl == 0 || msg->ttl > MM_TTL_DEFAULT) {
		*error_r = "routed message without destination or TTL";
		return -1;
	}
	if (msg->epoch == 0 || MM_EPOCH_ROOT(msg->epoch) == 0) {
		*error_r = "epoch missing";
		return -1;
	}
	switch (msg->type) {
	case MM_MSG_WHO:
	case MM_MSG_IS:
	case MM_MSG_MOVE:
	case MM_MSG_RELEASE:
	case MM_MSG_MOVE_FAIL:
		needs_key = true;
		break;
	default:
		break;
	}
	if (needs_key) {
		if (memchr(msg->gkey, '\0', sizeof(msg->gkey)) == NULL ||
		    !mm_gkey_valid(msg->gkey)) {
			*error_r = "invalid granule key";
			return -1;
		}
	}
	if (msg->n_path > MM_MOVE_MAX_HOPS) {
		*error_r = "path or master out of range";
		return -1;
	}
	for (uint32_t i = 0; i < msg->n_path; i++) {
		if (!sid_ok(msg->path[i])) {
			*error_r = "path SID out of range";
			return -1;
		}
	}
	if ((msg->type == MM_MSG_MOVE || msg->type == MM_MSG_RELEASE ||
	     msg->type == MM_MSG_MOVE_FAIL) && !sid_ok(msg->requester)) {
		*error_r = "requester out of range";
		return -1;
	}
	if (msg->type == MM_MSG_IS && msg->gen == 0) {
		*error_r = "MASTER-IS without generation";
		return -1;
	}
	if (msg->type == MM_MSG_MOVE_FAIL &&
	    (msg->reason < MM_FAIL_REFUSED || msg->reason > MM_FAIL_HOPS)) {
		*error_r = "unknown failure reason";
		return -1;
	}
	return 0;
}

/* FNV-1a: keys are short and come from our own users' names. */
static size_t key_hash(const char *s)
{
	uint64_t h = 1469598103934665603ull;
	for (; *s != '\0'; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ull;
	}
	return (size_t)h;
}

struct mm_gran *mm_gran_lookup(const struct mm_node *node, const char *gkey)
{
	if (node->n_buckets == 0)
		return NULL;
	struct mm_gran *g = node->buckets[key_hash(gkey) % node->n_buckets];
	for (; g != NULL; g = g->next) {
		if (strcmp(g->key, gkey) == 0)
			return g;
	}
	return NULL;
}

static void grow(struct mm_node *node)
{
	size_t nb = node->n_buckets == 0 ? 64 : node->n_buckets * 2;
	struct mm_gran **b = xcalloc(nb, sizeof(*b));
	for (size_t i = 0; i < node->n_buckets; i++) {
		struct mm_gran *g = node->buckets[i], *next;
		for (; g != NULL; g = next) {
			next = g->next;
			size_t h = key_hash(g->key) % nb;
			g->next = b[h];
			b[h] = g;
		}
	}
	free(node->buckets);
	node->buckets = b;
	node->n_buckets = nb;
}

struct mm_gran *mm_gran_get(struct mm_node *node, const char *gkey)
{
	struct mm_gran *g = mm_gran_lookup(node, gkey);
	if (g != NULL)
		return g;
	if (node->n_gran >= node->n_buckets)
		grow(node);
	g = xcalloc(1, sizeof(*g));
	g->key = xstrdup(gkey);
	size_t h = key_hash(gkey) % node->n_buckets;
	g->next = node->buckets[h];
	node->buckets[h] = g;
	node->n_gran++;
	return g;
}

void mm_gran_free(struct mm_node *node, struct mm_gran *g)
{
	ARRAY_FREE(&g->reqs);
	free(g->key);
	free(g);
	node->n_gran--;
}

void mm_gran_free_all(struct mm_node *node)
{
	for (size_t i = 0; i < node->n_buckets; i++) {
		struct mm_gran *g = node->buckets[i], *next;
		for (; g != NULL; g = next) {
			next = g->next;
			ARRAY_FREE(&g->reqs);
			free(g->key);
			free(g);
		}
	}
	free(node->buckets);
	node->buckets = NULL;
	node->n_buckets = node->n_gran = 0;
}

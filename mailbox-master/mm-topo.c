/* Topology: the link state database, this node's connected component, the
 * root (lowest SID of the component) and next hops for routed messages.
 *
 * An edge u-v counts only when both u and v list each other: a crashed
 * node's last link state still lists its neighbours, but they no longer
 * list it, so it drops out of everyone's component without a timeout. */
#include <string.h>

#include "mailbox-master/mm-private.h"

bool mm_sids_contains(const uint32_t *sids, uint32_t n, uint32_t sid)
{
	for (uint32_t i = 0; i < n; i++) {
		if (sids[i] == sid)
			return true;
	}
	return false;
}

struct mm_lsa *mm_lsdb_find(struct mm_node *node, uint32_t sid)
{
	for (size_t i = 0; i < node->lsdb.count; i++) {
		if (node->lsdb.items[i].sid == sid)
			return &node->lsdb.items[i];
	}
	return NULL;
}

/* The neighbours u claims; for this node, its live links. */
static const uint32_t *claimed(struct mm_node *node, uint32_t u, uint32_t *n_r)
{
	if (u == node->sid) {
		*n_r = node->n_links;
		return node->links;
	}
	struct mm_lsa *l = mm_lsdb_find(node, u);
	if (l == NULL) {
		*n_r = 0;
		return NULL;
	}
	*n_r = l->n_nbrs;
	return l->nbrs;
}

void mm_topo_compute(struct mm_node *node)
{
	uint32_t queue[MM_MAX_NODES], hop[MM_MAX_NODES];
	uint32_t head = 0, tail = 0;

	queue[tail] = node->sid;
	hop[tail++] = 0;
	while (head < tail) {
		uint32_t u = queue[head], uhop = hop[head];
		head++;
		uint32_t n_u;
		const uint32_t *nu = claimed(node, u, &n_u);
		for (uint32_t i = 0; i < n_u; i++) {
			uint32_t v = nu[i], n_v;
			if (mm_sids_contains(queue, tail, v) || tail >= MM_MAX_NODES)
				continue;
			const uint32_t *nv = claimed(node, v, &n_v);
			if (!mm_sids_contains(nv, n_v, u))
				continue;
			queue[tail] = v;
			hop[tail++] = u == node->sid ? v : uhop;
		}
	}
	/* sort by SID (insertion sort: at most MM_MAX_NODES) */
	for (uint32_t i = 1; i < tail; i++) {
		uint32_t s = queue[i], h = hop[i], j = i;
		for (; j > 0 && queue[j - 1] > s; j--) {
			queue[j] = queue[j - 1];
			hop[j] = hop[j - 1];
		}
		queue[j] = s;
		hop[j] = h;
	}
	memcpy(node->comp, queue, tail * sizeof(queue[0]));
	memcpy(node->next_hop, hop, tail * sizeof(hop[0]));
	node->n_comp = tail;
	node->root = queue[0];
}

uint32_t mm_topo_next_hop(const struct mm_node *node, uint32_t dst)
{
	for (uint32_t i = 0; i < node->n_comp; i++) {
		if (node->comp[i] == dst)
			return node->next_hop[i];
	}
	return 0;
}

uint32_t mm_next_hop(const struct mm_node *node, uint32_t dst)
{
	if (dst == node->sid)
		return 0;
	return mm_topo_next_hop(node, dst);
}

bool mm_linked(struct mm_node *node, uint32_t a, uint32_t b)
{
	uint32_t na, nb;
	const uint32_t *la = claimed(node, a, &na), *lb = claimed(node, b, &nb);
	return mm_sids_contains(la, na, b) && mm_sids_contains(lb, nb, a);
}

uint32_t mm_tree_parent(struct mm_node *node, uint32_t root, uint32_t v)
{
	uint32_t queue[MM_MAX_NODES], level[MM_MAX_NODES];
	uint32_t head = 0, tail = 0;
	queue[tail] = root;
	level[tail++] = 0;
	while (head < tail) {
		uint32_t u = queue[head], ulevel = level[head];
		head++;
		uint32_t n_u;
		const uint32_t *nu = claimed(node, u, &n_u);
		for (uint32_t i = 0; i < n_u; i++) {
			uint32_t w = nu[i], n_w;
			if (mm_sids_contains(queue, tail, w) || tail >= MM_MAX_NODES)
				continue;
			const uint32_t *nw = claimed(node, w, &n_w);
			if (!mm_sids_contains(nw, n_w, u))
				continue;
			queue[tail] = w;
			level[tail++] = ulevel + 1;
		}
	}
	uint32_t vlevel = 0;
	bool found = false;
	for (uint32_t i = 0; i < tail; i++) {
		if (queue[i] == v) {
			vlevel = level[i];
			found = true;
		}
	}
	if (!found || vlevel == 0)
		return 0;
	/* The lowest SID one level up with an edge to v: every node with the
	 * same link state picks the same one. */
	uint32_t best = 0;
	for (uint32_t i = 0; i < tail; i++) {
		if (level[i] != vlevel - 1 || (best != 0 && queue[i] >= best))
			continue;
		if (mm_linked(node, queue[i], v))
			best = queue[i];
	}
	return best;
}

size_t mm_node_component(struct mm_node *node, uint32_t *sids, size_t max)
{
	for (uint32_t i = 0; i < node->n_comp && i < max; i++)
		sids[i] = node->comp[i];
	return node->n_comp;
}
